"""Build step that setuptools' pyproject.toml cannot express: ship the top-level configs/ folder inside the wheel.

configs/ (default.yaml, prompts/*.yaml) is the one copy in the repository, the folder users edit. A wheel needs it
inside the package, so building copies it to kb_qa/configs/ in the build tree (never into the source tree, so
there are never two copies to drift). A checkout or an editable install reads configs/ in place
(kb_qa.locations.packaged_configs). Everything else about the package is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads ./configs in place
        target = Path(self.build_lib) / "kb_qa" / "configs"
        for source in sorted((ROOT / "configs").rglob("*.yaml")):
            out = target / source.relative_to(ROOT / "configs")
            out.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(source), str(out))


setup(cmdclass={"build_py": BuildWithConfigs})
