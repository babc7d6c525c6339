"""Nothing leaves the machine (issue 18 item 1): the test suite's socket guard catches outbound attempts, in this
process and in subprocesses; OpenVINO's telemetry phones home without kb_qa's opt-out and never with it; and a
fresh ingest + ask with the default (OpenVINO) embedding backend makes no outbound attempt at all."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DOCS = REPO / "tests" / "fixtures" / "docs"
TEST_NET = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never routed, safe to name


def test_guard_refuses_remote_hosts_and_records_them(netguard):
    with pytest.raises(netguard.OutboundConnectionBlocked):
        socket.create_connection((TEST_NET, 80), timeout=1)
    with pytest.raises(OSError):  # a DNS lookup of a remote name is data leaving the machine too
        socket.getaddrinfo("www.example.com", 443)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(OSError):
        udp.sendto(b"x", (TEST_NET, 53))
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as tcp6, pytest.raises(OSError):
        tcp6.connect(("2001:db8::1", 80))
    attempts = netguard.take_attempts()
    assert len(attempts) == 4, attempts
    assert TEST_NET in attempts[0] and "www.example.com" in attempts[1] and "2001:db8::1" in attempts[3]


def test_guard_fails_the_test_that_tried(pytester, monkeypatch):
    """The autouse fixture turns an attempt into a failure even when the code swallowed the exception."""
    pytester.makeconftest((REPO / "tests" / "conftest.py").read_text(encoding="utf-8")
                          .replace("REPO = Path(__file__).resolve().parents[1]", f"REPO = Path({str(REPO)!r})"))
    pytester.makepyfile(test_phones_home=f"""
import socket

def test_swallowed():
    try:
        socket.create_connection(({TEST_NET!r}, 80), timeout=1)
    except OSError:
        pass

def test_loopback_only():
    socket.getaddrinfo("localhost", 80)
""")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # a bare pytest starts in a second
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)  # the attempt fails test_swallowed at teardown
    result.stdout.fnmatch_lines(["*outbound network attempts*", f"*connect ('{TEST_NET}', 80)*"])


def test_guard_allows_loopback_and_unix_sockets(netguard, tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted = threading.Thread(target=lambda: server.accept()[0].close(), daemon=True)
    accepted.start()
    socket.create_connection(("localhost", port), timeout=5).close()
    accepted.join(5)
    server.close()
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as unix_server:
        unix_server.bind(path)
        unix_server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
    assert netguard.take_attempts() == []


def test_guard_covers_python_subprocesses(netguard):
    code = (f"import socket\ntry:\n    socket.create_connection(({TEST_NET!r}, 80), timeout=1)\n"
            "except OSError:\n    pass")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    attempts = netguard.take_attempts()
    assert len(attempts) == 1 and TEST_NET in attempts[0], attempts


def _need_openvino_telemetry() -> None:
    """Skip unless the package is installed (it cannot be imported here: this process has opted out)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("openvino-telemetry")
    except PackageNotFoundError:
        pytest.skip("openvino-telemetry is not installed")


def _attempts_in_subprocess(netguard, code: str, home: Path) -> tuple[list[str], subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}  # telemetry skips CI
    env["HOME"] = str(home)  # no OpenVINO consent file: its default (collect) applies
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            cwd=home)
    return netguard.take_attempts(), result


def test_openvino_telemetry_is_sent_without_the_opt_out_and_never_with_it(netguard, tmp_path):
    pytest.importorskip("openvino")
    _need_openvino_telemetry()
    # Before: plain `import openvino` in a fresh process tries to reach Google Analytics and writes a client id.
    before, result = _attempts_in_subprocess(netguard, "import openvino", tmp_path / "before")
    assert result.returncode == 0, result.stderr
    assert any("google-analytics" in a for a in before), before
    assert (tmp_path / "before" / "intel").is_dir()
    # After: importing kb_qa first (every entry point does) selects OpenVINO's no-op telemetry stub.
    code = ("import kb_qa, openvino, openvino.tools.ovc as ovc, sys\n"
            "print(type(ovc.telemetry).__module__)")
    after, result = _attempts_in_subprocess(netguard, code, tmp_path / "after")
    assert result.returncode == 0, result.stderr
    assert after == [] and result.stdout.strip() == "openvino.tools.ovc.telemetry_stub"
    assert not (tmp_path / "after" / "intel").exists(), "nothing of OpenVINO's telemetry is written either"
    print(json.dumps({"outbound_attempts_import_openvino": {"without_opt_out": len(before), "with_opt_out": 0}}))


def test_telemetry_opt_out_when_openvino_telemetry_was_imported_first(netguard, tmp_path):
    _need_openvino_telemetry()
    code = ("import openvino_telemetry as tm\nimport kb_qa\n"
            "assert tm.Telemetry.send_event(None, 'c', 'a', 'l') is None\n")
    attempts, result = _attempts_in_subprocess(netguard, code, tmp_path / "h")
    assert result.returncode == 0, result.stderr
    assert attempts == []


def test_ingest_and_ask_with_the_openvino_backend_attempt_nothing(app, netguard, tmp_path):
    """Ingest, then ask (retrieval-only: no LLM configured), with the default embedding backend, OpenVINO, whose
    model conversion (done once per run, into the run's cache) sent 42 events before the opt-out. The autouse
    guard fails this test on any attempt; the explicit check below says so in its name."""
    from kb_qa.qa.chain import answer

    assert app.embeddings.backend == "openvino"
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.txt").write_text("龙井茶产于浙江杭州西湖一带，是中国十大名茶之一。", encoding="utf-8")
    (docs / "paris.md").write_text("The Eiffel Tower stands in Paris and was finished in 1889.", encoding="utf-8")
    assert not app.ingest("offline", [docs]).failed
    result = answer(app, "When was the Eiffel Tower finished?", kbs="offline")
    assert result.mode == "retrieval-only" and result.sources[0].source == "paris.md"
    assert netguard.take_attempts() == []


def test_eval_and_the_api_with_the_openvino_backend_attempt_nothing(app, netguard, tmp_path):
    """The eval (BEIR folder -> KB -> every retrieval mode) and the HTTP API (upload, search, ask) on the default
    OpenVINO backend, each followed by an explicit check of the guard's log (the page: tests/test_webui.py runs
    webui.py in this process under the same autouse guard)."""
    from fastapi.testclient import TestClient
    from test_eval import make_bench

    from kb_qa.api import create_app
    from kb_qa.eval import evaluate, ingest_bench, load_bench

    assert app.embeddings.backend == "openvino"
    bench = load_bench(make_bench(tmp_path / "bench"))
    report, names = ingest_bench(app, bench, "evalkb", tmp_path / "evaldocs")
    assert not report.failed
    assert evaluate(app, bench, "evalkb", names)["modes"]["fused"]["questions"] == 6
    assert netguard.take_attempts() == []

    client = TestClient(create_app(app, preload=False), raise_server_exceptions=False)
    upload = client.post("/knowledge_bases/api/documents",
                         files=[("files", ("paris.md", b"The Eiffel Tower stands in Paris, finished in 1889."))])
    assert upload.status_code == 200, upload.text
    found = client.post("/knowledge_bases/api/search", json={"query": "When was the Eiffel Tower finished?"})
    assert found.status_code == 200 and found.json()["results"], found.text
    assert netguard.take_attempts() == []
