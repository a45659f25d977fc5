"""The one exception type for problems a user can fix.

Its message names the problem and the fix; the command-line edge prints it as
one line and exits non-zero, without a traceback. Host code (qdeploy) raises the
same type so both tools behave alike.
"""


class UserError(Exception):
    """A problem the user caused and can fix; the message is meant for them."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def run(app) -> None:
    """Run a typer app as a console script.

    A UserError becomes ``error: <message>`` on stderr and its exit code; Ctrl-C
    exits 130. Anything else is a bug and keeps its traceback.
    """
    import sys

    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
