"""Settings: precedence (flags > KB_QA_* environment > YAML file > defaults), configs/default.yaml is exactly what
kb_qa/settings.py renders, bad settings are one ConfigError line naming the file or variable and the field, and
data paths follow KB_QA_HOME / the current folder, never the installed code."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from kb_qa.errors import EXIT_USAGE, ConfigError
from kb_qa.settings import Settings, load_settings, render_yaml

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "python -m kb_qa.settings > configs/default.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- the documented file --------------------------------------------------------------------------------------
def test_default_yaml_is_what_settings_py_renders():
    shipped = (REPO / "configs" / "default.yaml").read_text(encoding="utf-8")
    assert shipped == render_yaml(), f"configs/default.yaml is stale: regenerate it with `{REGENERATE}`"
    assert REGENERATE in render_yaml()  # the file says how it is made


def test_default_yaml_loads_to_the_defaults(_project_home):
    assert load_settings(REPO / "configs" / "default.yaml") == load_settings()


def test_render_reflects_a_new_field():
    """What the staleness test relies on: a field someone adds to a section shows up in the rendering."""
    from pydantic import Field

    from kb_qa.settings import QASettings

    class GrownQA(QASettings):
        new_knob: int = Field(7, description="A field someone just added.")

    class Grown(Settings):
        qa: GrownQA = Field(default_factory=GrownQA)

    rendered = render_yaml(Grown.model_construct())
    assert "  # A field someone just added.\n  new_knob: 7\n" in rendered and rendered != render_yaml()


def test_python_m_kb_qa_settings_prints_the_rendering(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kb_qa.settings"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == render_yaml()


def _sections(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield prefix + name, annotation
            yield from _sections(annotation, f"{prefix}{name}.")


def test_every_section_refuses_unknown_keys():
    sections = dict(_sections(Settings))
    assert {"paths", "ingest", "embedding", "retrieval", "llm", "qa", "api"} <= set(sections)
    for name, section in sections.items():
        assert section.model_config.get("extra") == "forbid", \
            f"settings section {name!r} ignores typos: derive it from kb_qa.settings.Section"


# -- precedence -----------------------------------------------------------------------------------------------
def test_precedence_flags_over_environment_over_file_over_defaults(tmp_path, monkeypatch):
    config = write(tmp_path / "my.yaml", "retrieval:\n  top_k: 7\n  candidates: 30\nqa:\n  language: en\n")
    assert load_settings().retrieval.top_k == 5  # default
    from_file = load_settings(config)
    assert (from_file.retrieval.top_k, from_file.retrieval.candidates, from_file.qa.language) == (7, 30, "en")
    monkeypatch.setenv("KB_QA_RETRIEVAL__TOP_K", "9")
    from_env = load_settings(config)
    assert (from_env.retrieval.top_k, from_env.retrieval.candidates) == (9, 30)  # merged field by field
    flagged = load_settings(config, {"retrieval.top_k": 11, "retrieval.candidates": None})  # None = flag unset
    assert (flagged.retrieval.top_k, flagged.retrieval.candidates, flagged.qa.language) == (11, 30, "en")
    assert load_settings(config, {"retrieval": {"top_k": 12}}).retrieval.top_k == 12


def test_kb_qa_config_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KB_QA_CONFIG", str(write(tmp_path / "env.yaml", "default_kb: from_env\n")))
    assert load_settings().default_kb == "from_env"
    assert load_settings(write(tmp_path / "flag.yaml", "default_kb: from_flag\n")).default_kb == "from_flag"


def test_settings_file_in_the_project_folder_is_read(_project_home):
    write(_project_home / "configs" / "default.yaml", "default_kb: projects_own\n")
    assert load_settings().default_kb == "projects_own"


def test_loaded_settings_are_plain_settings():
    settings = load_settings(overrides={"retrieval.top_k": 3})
    assert type(settings) is Settings
    assert pickle.loads(pickle.dumps(settings)) == settings  # e.g. for a worker process


# -- errors ---------------------------------------------------------------------------------------------------
def one_line_error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and "pydantic" not in message.lower(), message
    assert info.value.exit_code == EXIT_USAGE
    return message


def test_missing_kb_qa_config_file_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("KB_QA_CONFIG", str(missing))
    assert one_line_error() == f"KB_QA_CONFIG={missing}: settings file not found"
    monkeypatch.delenv("KB_QA_CONFIG")
    assert one_line_error(config=missing) == f"{missing}: settings file not found"


@pytest.mark.parametrize(("text", "expected"), [
    ("retrieval:\n  top_k: [1,\n", "not valid YAML at line 3"),
    ("retrieval:\n\ttop_k: 3\n", "not valid YAML at line 2"),
    ("- a\n- b\n", "expected a mapping of settings at the top level, not list"),
    ("retrieval:\n  topk: 3\n", "unknown setting 'retrieval.topk'"),
    ("retreival:\n  top_k: 3\n", "unknown setting 'retreival'"),
    ("retrieval:\n  top_k: many\n", "retrieval.top_k: Input should be a valid integer"),
    ("retrieval:\n  top_k: 0\n", "retrieval.top_k: Input should be greater than or equal to 1 (got 0)"),
    ("embedding:\n  backend: tensorflow\n", "embedding.backend: Input should be 'torch', 'openvino'"),
    ("retrieval: 5\n", "retrieval: Input should be a valid dictionary"),
])
def test_bad_file_names_the_file_and_the_field(tmp_path, text, expected):
    config = write(tmp_path / "bad.yaml", text)
    message = one_line_error(config=config)
    assert message.startswith(f"{config}: ") and expected in message, message


def test_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("KB_QA_RETRIEVAL__TOP_K", "lots")
    assert one_line_error().startswith("environment variable KB_QA_RETRIEVAL__TOP_K: retrieval.top_k: ")
    monkeypatch.delenv("KB_QA_RETRIEVAL__TOP_K")
    monkeypatch.setenv("KB_QA_INGEST__EXTENSIONS", ".txt,.md")  # lists are JSON in the environment
    assert one_line_error().startswith("environment variable KB_QA_INGEST__EXTENSIONS: cannot parse the value")


def test_bad_override_is_named_as_a_flag():
    message = one_line_error(overrides={"retrieval.top_k": -1})
    assert message.startswith("command-line option: retrieval.top_k: "), message


def test_several_errors_are_counted_in_the_one_line(tmp_path):
    config = write(tmp_path / "bad.yaml", "retrieval:\n  top_k: 0\n  candidates: 0\n")
    assert one_line_error(config=config).endswith("(and 1 more)")


# -- where data lives ---------------------------------------------------------------------------------------
def test_data_paths_follow_kb_qa_home(_project_home, tmp_path):
    settings = load_settings()
    assert settings.paths.knowledge_base_root == _project_home / "knowledge_base"
    assert settings.paths.vector_store_root == _project_home / "vector_store"
    config = write(tmp_path / "rel.yaml", "paths:\n  vector_store_root: stores/here\n")
    assert load_settings(config).paths.vector_store_root == _project_home / "stores" / "here"
    absolute = tmp_path / "abs"
    assert load_settings(overrides={"paths.vector_store_root": str(absolute)}).paths.vector_store_root == absolute


def test_without_kb_qa_home_data_is_in_the_current_folder(tmp_path, monkeypatch):
    import kb_qa

    monkeypatch.delenv("KB_QA_HOME")
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.paths.vector_store_root == tmp_path / "vector_store"
    package = Path(kb_qa.__file__).resolve().parent
    assert package not in settings.paths.vector_store_root.parents  # never beside the installed code


def test_model_cache_follows_kb_qa_home(_project_home, monkeypatch):
    from kb_qa.embeddings import model_cache_root
    from kb_qa.settings import EmbeddingSettings

    monkeypatch.delenv("KB_QA_MODEL_CACHE")
    assert model_cache_root(EmbeddingSettings()) == _project_home / "cache" / "models"
    assert model_cache_root(EmbeddingSettings(cache_dir="converted")) == _project_home / "converted"
    monkeypatch.delenv("KB_QA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/someone")
    assert model_cache_root(EmbeddingSettings()) == Path("/var/cache/someone/kb_qa/models")
