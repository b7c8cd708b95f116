"""A plain `pip install .` (no extras): the package and its synthetic world import, and each optional dependency is
asked for with the extra that installs it."""

import subprocess
import sys

import pytest

from zreward_diffusers.optional import import_optional

# everything the extras bring (pyproject.toml), hidden from a fresh interpreter
EXTRAS_ONLY = ("datasets", "trl", "tensorboard", "yaml", "matplotlib", "open_clip", "pytest", "nbclient")

PROGRAM = f"""
import importlib.abc, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Hide())
import zreward_diffusers, zreward_diffusers.synthetic, zreward_diffusers.evaluation
from zreward_diffusers.clip_student import ClipStudentScorer
from zreward_diffusers.rewards import CLIPScoreLoss
from zreward_diffusers.synthetic import SyntheticWorld
item = SyntheticWorld(0).generate(1)[0]
assert item.image.shape == (56, 56, 3)
for call in (lambda: ClipStudentScorer.tiny(), lambda: CLIPScoreLoss.tiny(),
             lambda: zreward_diffusers.evaluation.reliability_diagram({{}}, [], "x.png", "t")):
    try:
        call()
    except ImportError as error:
        print(error)
    else:
        raise SystemExit("no ImportError")
"""


def test_the_package_imports_without_any_extra():
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines == ['open_clip is needed here but is not installed: pip install "zreward-diffusers[clip]"'] * 2 + [
        'matplotlib is needed here but is not installed: pip install "zreward-diffusers[training]"']


def test_a_missing_optional_module_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import of a None entry raises ModuleNotFoundError
    with pytest.raises(ImportError, match=r'pip install "zreward-diffusers\[clip\]"'):
        import_optional("open_clip")
    with pytest.raises(ImportError, match="pip install no_such_module_here"):
        import_optional("no_such_module_here")
