"""Progress reporting for long stages. The pipeline talks to this small protocol; the CLI
supplies a rich progress bar, tests and library users get the silent default."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Progress:
    """Silent progress: ``with progress.task("calibrating", total, "samples") as advance: advance(n)``
    (``unit``: what is counted, shown in the summary line; none for a stage without steps)."""

    @contextmanager
    def task(self, description: str, total: int | None, unit: str | None = None) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None

    def note(self, message: str) -> None:
        pass


class RichProgress(Progress):
    """A transient bar per stage; on success one summary line stays, on failure nothing does
    (so an error is the only line a failed build prints)."""

    def __init__(self, console):
        self.console = console

    @staticmethod
    def summary(description: str, done: int, unit: str | None, seconds: float) -> str:
        """``calibrating: 8 samples in 7.1 s`` (``building …: 41.0 s`` for a stage without a unit)."""
        return f"{description}: {done} {unit} in {seconds:.1f} s" if unit else f"{description}: {seconds:.1f} s"

    @contextmanager
    def task(self, description: str, total: int | None, unit: str | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichBar

        t0 = time.perf_counter()
        done = [0]
        if not self.console.is_terminal:  # logs and pipes: no live bar, just the summary line
            def count(n: int = 1) -> None:
                done[0] += n

            yield count
            self.console.print("✓ " + self.summary(description, done[0], unit, time.perf_counter() - t0))
            return
        with RichBar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     TimeRemainingColumn(), console=self.console, transient=True) as bar:
            tid = bar.add_task(description, total=total)

            def advance(n: int = 1) -> None:
                done[0] += n
                bar.advance(tid, n)

            yield advance
        self.console.print("[green]✓[/green] " + self.summary(description, done[0], unit, time.perf_counter() - t0))

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/dim]")
