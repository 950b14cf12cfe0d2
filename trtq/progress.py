"""Progress reporting for long stages. The pipeline talks to this small protocol; the CLI
supplies a rich progress bar, tests and library users get the silent default."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Progress:
    """Silent progress: ``with progress.task("calibrating", total) as advance: advance(n)``."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None

    def note(self, message: str) -> None:
        pass


class RichProgress(Progress):
    def __init__(self, console):
        self.console = console

    @contextmanager
    def task(self, description: str, total: int | None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as _P, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        with _P(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), console=self.console, transient=False) as bar:
            tid = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(tid, n)

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/dim]")
