"""`qdeploy convert`, `evaluate` and `quickstart` commands."""

from qdeploy.cli.app import app  # noqa: F401
