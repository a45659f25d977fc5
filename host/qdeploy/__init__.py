"""qdeploy: the host side. Convert, compile, preflight, push and report.

The version is the runner's: host and device are released together.
"""

from qrun import __version__

__all__ = ["__version__"]
