"""Where kb_qa finds its files: the project folder (data, the user's settings) and the shipped configs.

The project folder is `$KB_QA_HOME` if set, else the current working directory. Relative data paths in the
settings (`knowledge_base/`, `vector_store/`) and `configs/default.yaml` are looked up there, never next to the
installed code (site-packages), so `pip install kb_qa` and a checkout behave the same: run the commands from the
project folder, or set KB_QA_HOME.

The shipped configs (prompt templates, the reference default.yaml) are package data: `kb_qa/configs/` in a
wheel, the top-level `configs/` folder in a checkout or an editable install (setup.py copies it into wheels).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

HOME_ENV = "KB_QA_HOME"
CONFIG_ENV = "KB_QA_CONFIG"
USER_CONFIG = Path("configs") / "default.yaml"  # relative to the project folder

_CHECKOUT_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def project_home() -> Path:
    """$KB_QA_HOME (absolute, ~ expanded) if set and non-empty, else the current working directory."""
    configured = os.environ.get(HOME_ENV, "").strip()
    return Path(configured).expanduser().resolve() if configured else Path.cwd()


def resolve_in_home(path: str | os.PathLike[str]) -> Path:
    """`path` with ~ expanded; a relative path is taken relative to the project folder."""
    value = Path(path).expanduser()
    return value if value.is_absolute() else project_home() / value


def packaged_configs() -> Path:
    """The configs shipped with the code: kb_qa/configs in an installed wheel, else the checkout's configs/."""
    installed = resources.files("kb_qa") / "configs"
    if installed.is_dir():
        return Path(str(installed))
    return _CHECKOUT_CONFIGS


def cache_home() -> Path:
    """Per-user cache for derived files (converted embedding models): $KB_QA_HOME/cache if KB_QA_HOME is set,
    else $XDG_CACHE_HOME/kb_qa, else ~/.cache/kb_qa."""
    configured = os.environ.get(HOME_ENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve() / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "kb_qa"
