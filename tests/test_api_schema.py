"""A bounded schemathesis run against the API's own OpenAPI document: generated requests for every operation (a few
examples each, valid and invalid data, a time limit per request), in-process over ASGI. A 5xx, a response that
does not match its documented schema, or an undocumented status code fails the test. The tiny random ChatGLM2
answers, so plain chat and generation are exercised too (with no model, plain chat is a deliberate 503)."""

from __future__ import annotations

import time

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from tiny_chatglm2 import tiny_dir, tiny_tokenizer_model  # noqa: F401 (fixtures)

KEY = "schema-key"
MAX_EXAMPLES = 15  # per operation and mode (valid, invalid data); 13 operations
TIME_LIMIT_S = 8.0  # per operation, generation included


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, embedder, tiny_dir):  # noqa: F811
    from kb_qa.api import create_app
    from kb_qa.app import App
    from kb_qa.settings import load_settings

    root = tmp_path_factory.mktemp("schema")
    s = load_settings(overrides={
        "paths": {"knowledge_base_root": str(root / "knowledge_base"), "vector_store_root": str(root / "vector_store")},
        "llm": {"model_path": str(tiny_dir), "device": "cpu", "dtype": "float32", "max_context_tokens": 2048,
                "max_new_tokens": 8},
        "api": {"api_key": KEY, "max_request_mb": 1.0},
        "ingest": {"max_file_mb": 0.2},
    })
    app = App(s)
    app.__dict__["embeddings"] = embedder
    app.add_uploads("kb", [("a.txt", b"Paris is the capital of France."), ("b.md", b"# Cats\n\nCats sleep a lot.")])
    api = create_app(app, preload=False, lock_timeout_s=0.2)
    return schemathesis.openapi.from_asgi("/openapi.json", api, headers={"Authorization": f"Bearer {KEY}"})


def hypothesis_run(operation, mode):
    """A hypothesis test that sends `operation`'s generated cases (valid or invalid data, per `mode`)."""
    from hypothesis import given

    examples = MAX_EXAMPLES if mode.is_positive else MAX_EXAMPLES // 2

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        started = time.perf_counter()
        case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"},
                               checks=[not_a_server_error, response_schema_conformance, status_code_conformance])
        assert time.perf_counter() - started < TIME_LIMIT_S, f"{operation.label} took too long"

    return run


def test_generated_requests_never_break_the_api(api_schema):
    """Each operation in turn (schemathesis' pytest plugin does not run under this pytest, so hypothesis drives
    the operations' strategies directly); every failure is collected, then reported together."""
    failures, timings = [], {}
    runs = [(result.ok(), mode) for result in api_schema.get_all_operations()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)]
    for operation, mode in runs:
        started = time.perf_counter()
        try:
            hypothesis_run(operation, mode)()
        except Unsatisfiable:  # nothing to make invalid (e.g. GET /health takes no input)
            assert not mode.is_positive
        except (Exception, FailureGroup) as exc:  # noqa: BLE001 - collect, report all at the end
            failures.append(f"{operation.label} ({mode.value}): {exc}")
        timings[f"{operation.label} ({mode.value})"] = round(time.perf_counter() - started, 2)
    print("schemathesis seconds per operation:", timings)
    assert len(runs) >= 24  # 12 operations x (valid, invalid)
    assert not failures, "\n\n".join(failures)
