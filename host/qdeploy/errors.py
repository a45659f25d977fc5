"""qdeploy raises the runner's UserError, so both tools have one error type."""

from qrun.errors import UserError

__all__ = ["UserError"]
