"""`qdeploy` command line: the typer app (qdeploy.cli.app) and the commands of each step.

Each sibling module holds the commands of one step in its own `commands` Typer. They are
added to the app here in pipeline order, which is the order `qdeploy --help` lists them in.
"""

from qdeploy.cli import ansible, compile, convert, import_cmd, push, quickstart, report
from qdeploy.cli.app import app, main

STEPS = (
    convert,  # convert, evaluate
    import_cmd,  # import
    quickstart,  # quickstart
    compile,  # compile, preflight
    push,  # push, rollback
    report,  # report
)

for step in STEPS:
    app.registered_commands.extend(step.commands.registered_commands)
app.add_typer(ansible.group)  # qdeploy ansible export

__all__ = ["app", "main"]
