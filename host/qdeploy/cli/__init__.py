"""`qdeploy` command line: each sibling module registers the commands of one step.

They are imported in pipeline order, which is the order `qdeploy --help` lists them in.
"""

from qdeploy.cli import convert  # noqa: F401, I001  (convert, evaluate, quickstart)
from qdeploy.cli import compile  # noqa: F401  (compile, preflight)
from qdeploy.cli import push  # noqa: F401  (push, rollback)
from qdeploy.cli import report  # noqa: F401  (report)
from qdeploy.cli.app import app, main

__all__ = ["app", "main"]
