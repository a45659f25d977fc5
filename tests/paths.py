"""Where the tests' data lives: the one definition every test and fixture imports."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CORAL = DATA / "coral"  # real Coral models, their compiled twins, images (see its LICENSE)
COMPILER_LOGS = DATA / "compiler-logs"  # real edgetpu_compiler outputs
DOUBLES = ROOT / "tests" / "doubles"
FAKE_COMPILER = DOUBLES / "fake_edgetpu_compiler"
MNIST = ROOT / "models" / "mnist"
