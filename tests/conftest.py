"""Shared test fixtures. Area-specific fixtures live in tests/fixtures/<area>.py."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
CORAL = DATA / "coral"
MNIST = ROOT / "models" / "mnist"

pytest_plugins = ["tests.fixtures.convert", "tests.fixtures.sshd", "tests.fixtures.pibox", "tests.fixtures.runner"]


@pytest.fixture(scope="session")
def coral_dir() -> Path:
    return CORAL


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return MNIST
