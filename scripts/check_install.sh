#!/usr/bin/env bash
# Installs this checkout into a throwaway venv the way a user would, then runs the installed package from a
# folder outside the checkout: `python -m kb_qa...`, the `kb-qa` console script (once kb_qa.cli exists),
# the shipped configs, __version__, py.typed, and that data paths follow the current folder / KB_QA_HOME.
# Usage: bash scripts/check_install.sh [--editable] [--full]
#   default: the venv sees an existing environment's packages (a .pth to $DEPS_SITE, default .venv's) and the
#            package is installed with --no-deps, then `pip check` verifies pyproject's ranges against them;
#   --full:  pip install . with its dependencies from the index (slow: downloads torch and friends).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
MODE=regular; DEPS=linked
for arg in "$@"; do
  case "$arg" in --editable) MODE=editable ;; --full) DEPS=full ;; *) echo "unknown option $arg" >&2; exit 2 ;; esac
done
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d /tmp/kb_qa-install.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
VPY="$WORK/venv/bin/python"
if [ "$DEPS" = linked ]; then
  # No pip/setuptools of its own: the linked environment's (newer) ones are used, so nothing shadows them.
  "$PYTHON" -m venv --without-pip "$WORK/venv"
  DEPS_SITE="${DEPS_SITE:-$("$REPO/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')}"
  "$VPY" -c 'import sysconfig, sys; open(sysconfig.get_path("purelib") + "/_deps.pth", "w").write(sys.argv[1] + "\n")' "$DEPS_SITE"
  NODEPS=--no-deps
else
  "$PYTHON" -m venv "$WORK/venv"
  "$VPY" -m pip install --quiet --upgrade pip
  NODEPS=
fi
# A copy of the tracked and untracked-but-not-ignored files: what a fresh clone would hold, no build leftovers.
mkdir "$WORK/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$WORK/src/" 2>/dev/null || true
if [ "$MODE" = editable ]; then
  "$VPY" -m pip install --quiet $NODEPS -e "$WORK/src"
else
  "$VPY" -m pip install --quiet $NODEPS "$WORK/src"
fi
if [ "$DEPS" = linked ]; then "$VPY" -m pip check; fi
mkdir -p "$WORK/elsewhere"
cd "$WORK/elsewhere"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$VPY" - "$MODE" "$WORK" <<'PY'
import importlib.util, json, os, subprocess, sys
from pathlib import Path

mode, work = sys.argv[1], Path(sys.argv[2])
import kb_qa
from kb_qa.locations import packaged_configs
from kb_qa.settings import load_settings, render_yaml

where = Path(kb_qa.__file__).resolve().parent
configs = packaged_configs()
if mode == "regular":
    assert "site-packages" in str(where), where
    assert configs == where / "configs", configs  # shipped inside the wheel
    assert (where / "py.typed").is_file()
else:
    assert str(where).startswith(str(work / "src")), where
assert (configs / "default.yaml").is_file() and (configs / "prompts" / "zh.yaml").is_file(), configs
assert (configs / "default.yaml").read_text(encoding="utf-8") == render_yaml(), "shipped default.yaml is stale"
from importlib.metadata import version
assert kb_qa.__version__ == version("kb_qa"), kb_qa.__version__
settings = load_settings()
assert settings.paths.vector_store_root == Path.cwd() / "vector_store", settings.paths
os.environ["KB_QA_HOME"] = str(work / "home")
assert load_settings().paths.knowledge_base_root == work / "home" / "knowledge_base"
del os.environ["KB_QA_HOME"]
from kb_qa.qa.prompts import load_prompts
assert load_prompts("en").rag_template
out = subprocess.run([sys.executable, "-m", "kb_qa.ingest", "--help"], capture_output=True, text=True)
assert out.returncode == 0 and "examples:" in out.stdout, out.stderr
out = subprocess.run([sys.executable, "-m", "kb_qa.settings"], capture_output=True, text=True)
assert out.returncode == 0 and out.stdout == render_yaml(), out.stderr
script = Path(sys.executable).parent / "kb-qa"
assert script.is_file(), "console script kb-qa not installed"
if importlib.util.find_spec("kb_qa.cli") is not None:
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    print("kb-qa --help: ok")
else:
    print("kb-qa --help: skipped (kb_qa.cli not on this branch yet)")
print(json.dumps({"mode": mode, "package": str(where), "configs": str(configs), "version": kb_qa.__version__}))
PY
echo "install check ($MODE, deps $DEPS): ok"
