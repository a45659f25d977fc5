"""Terminal output shared by qdeploy commands: progress bars and step lines (rich)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

WIDTH_WHEN_PIPED = 132  # rich would wrap tables at 80 columns in logs and CI

console = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=None if sys.stdout.isatty() else WIDTH_WHEN_PIPED)


@contextlib.contextmanager
def progress_bar(title: str, total: Optional[int] = None) -> Iterator:
    """A progress bar for one long step; yields a callback `tick(done, total)`."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False,
                  disable=not console.is_terminal) as bar:
        task = bar.add_task(title, total=total)

        def tick(done: int, of: Optional[int] = None) -> None:
            bar.update(task, completed=done, total=of or total)

        yield tick
    if not console.is_terminal:
        console.print(f"{title}: done")


class StepUI:
    """The quickstart's UI: one progress bar per step, notes as plain lines."""

    def step(self, title: str, total: Optional[int] = None):
        return progress_bar(title, total)

    def note(self, text: str) -> None:
        out.print(text)


def print_json(data) -> None:
    """One JSON object on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
