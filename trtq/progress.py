"""Progress reporting for long stages. The pipeline talks to this small protocol; the CLI
supplies a rich progress bar, tests and library users get the silent default."""

from __future__ import annotations

import time
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
    """A transient bar per stage; on success one summary line stays, on failure nothing does
    (so an error is the only line a failed build prints)."""

    def __init__(self, console):
        self.console = console

    @contextmanager
    def task(self, description: str, total: int | None):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichBar

        t0 = time.perf_counter()
        done = [0]
        if not self.console.is_terminal:  # logs and pipes: no live bar, just the summary line
            def count(n: int = 1) -> None:
                done[0] += n

            yield count
            self.console.print(f"✓ {description}: {done[0]} in {time.perf_counter() - t0:.1f} s")
            return
        with RichBar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     TimeRemainingColumn(), console=self.console, transient=True) as bar:
            tid = bar.add_task(description, total=total)

            def advance(n: int = 1) -> None:
                done[0] += n
                bar.advance(tid, n)

            yield advance
        self.console.print(f"[green]✓[/green] {description}: {done[0]} in {time.perf_counter() - t0:.1f} s")

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/dim]")
