"""`qdeploy` command line: each sibling module registers the commands of one step."""

from qdeploy.cli import compile, convert, push, report  # noqa: F401  (register commands)
from qdeploy.cli.app import app, main

__all__ = ["app", "main"]
