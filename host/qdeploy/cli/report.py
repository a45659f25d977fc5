"""`qdeploy report` commands (to be written)."""

from qdeploy.cli.app import app  # noqa: F401
