"""Shared test fixtures. Area-specific fixtures live in tests/fixtures/<area>.py."""

from pathlib import Path

import pytest

from tests.paths import CORAL, MNIST

# Every fixture module, registered once: tests use their fixtures by name, never import them.
pytest_plugins = [
    "tests.fixtures.ansible",
    "tests.fixtures.compile",
    "tests.fixtures.convert",
    "tests.fixtures.detectors",
    "tests.fixtures.layers",
    "tests.fixtures.multi_io",
    "tests.fixtures.multi_io_models",
    "tests.fixtures.onnx_graphs",
    "tests.fixtures.onnx_yolo",
    "tests.fixtures.pibox",
    "tests.fixtures.reports",
    "tests.fixtures.runner",
    "tests.fixtures.sshd",
    "tests.fixtures.two_io",
    "tests.fixtures.yolo",
    "tests.fixtures.ultralytics82",
    "tests.fixtures.evalsets",  # after yolo, which it imports
]


@pytest.fixture(scope="session")
def coral_dir() -> Path:
    return CORAL


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return MNIST


def pytest_collection_modifyitems(config, items):
    """Tests on the emulated Pi run last: on a fresh machine its rootfs is still being built
    (scripts/test starts the build in the background) while the others run."""
    items.sort(key=lambda item: "pibox" in getattr(item, "fixturenames", ()))
