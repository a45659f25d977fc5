"""`qdeploy ansible export`: parse options, write the playbook directory
(qdeploy.ansible.export), say where it is and how to run it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

group = typer.Typer(name="ansible", no_args_is_help=True,
                    help="Run qdeploy's release protocol through Ansible (playbook export).")

SERIAL_HELP = ("Rolling batches, Ansible's `serial`: host counts or percentages, e.g. "
               "1,10%,50% (one host, then 10% of the fleet, then half at a time).")
MAX_FAIL_HELP = ("Failure budget per batch, Ansible's `max_fail_percentage` (e.g. 10%): once a "
                 "batch exceeds it, later batches do not start.")


@group.command("export")
def export_cmd(
    directory: Path = typer.Argument(Path("qdeploy-out"),
                                     help="A qdeploy convert/import/compile output directory."),
    out: Path = typer.Option(..., "--out", "-o", help="The playbook directory to write "
                             "(replaced if it is an earlier export)."),
    inventory: Optional[Path] = typer.Option(
        None, "--inventory", "-i", help="Inventory copied in as the playbook's default."),
    serial: str = typer.Option("100%", "--serial", help=SERIAL_HELP),
    max_fail: str = typer.Option("100%", "--max-fail", help=MAX_FAIL_HELP),
    bench: bool = typer.Option(True, "--bench/--no-bench",
                               help="Run qrun bench on each device and fetch the report."),
    bench_runs: Optional[int] = typer.Option(None, "--bench-runs", min=1,
                                             help="Timed runs for qrun bench."),
    verify: Optional[bool] = typer.Option(
        None, "--verify/--no-verify",
        help="Run qrun verify on each device and fetch its outputs (default: when the bench "
             "runs)."),
    wheelhouse: Optional[Path] = typer.Option(
        None, "--wheelhouse", help="Dependency wheels for offline devices, shipped along."),
):
    """Write DIRECTORY as a self-contained Ansible playbook directory: site.yml (push),
    rollback.yml, group_vars with the release's sha256s, the artifacts, the qrun wheel and
    the device agent. Run it with `ansible-playbook -i INVENTORY site.yml`."""
    from qdeploy.ansible import export

    options = export.ExportOptions(serial=serial, max_fail=max_fail, bench=bench,
                                   verify=verify, bench_runs=bench_runs, wheelhouse=wheelhouse,
                                   inventory=inventory)
    written = export.export(directory, out, options)
    typer.echo(f"playbook {written}: cd {written} && ansible-playbook "
               f"{'' if inventory else '-i INVENTORY '}site.yml  (rollback: rollback.yml)")
