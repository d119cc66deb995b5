"""What the user sees while a search runs: a live progress bar (or one line per trial), and Ctrl-C handling."""

from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

__all__ = ["Progress", "StageBar", "Interrupt", "Terminated", "sigterm_interrupts", "exit_code"]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster scheduler's stop, `kill`): the search stops at once, as on a second Ctrl-C."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """For the block, SIGTERM raises `Terminated` in the main thread, so every stage unwinds as on Ctrl-C: running
    trials cancelled, the run marked interrupted, Ray shut down."""
    def handler(signum, frame):
        raise Terminated

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)  # None: one set outside Python


def exit_code(e: BaseException) -> int:
    """The shell's exit status for a stop by this signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return 143 if isinstance(e, Terminated) else 130


class Progress:
    """A rich live progress bar: elapsed, trials done / failed, best trade-offs so far."""

    def __init__(self, total_trials: int | None, total_seconds: float | None, enabled: bool,
                 log: Callable[[str], None] = print) -> None:
        import sys

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        # --no-progress, or not a terminal (CI, a log file): no live bar, one line per finished trial instead.
        self.lines = not enabled or not sys.stderr.isatty()
        enabled = enabled and not self.lines
        self.log = log
        self.total_trials, self.total_seconds = total_trials, total_seconds
        cols = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                MofNCompleteColumn() if total_trials else TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(), TextColumn("{task.fields[status]}")]
        self.progress = RichProgress(*cols, transient=False, disable=not enabled, console=Console(stderr=True))
        self.task = self.progress.add_task("search", total=total_trials or total_seconds, status="")

    def __enter__(self) -> "Progress":
        self.progress.__enter__()
        return self

    def __exit__(self, *a) -> None:
        self.progress.__exit__(*a)

    def note(self, text: str) -> None:
        self.progress.update(self.task, status=text)

    def trial_line(self, text: str) -> None:
        if self.lines:
            self.log(text)

    def update(self, *, done: int, failed: int, elapsed: float, best: str) -> None:
        completed = done + failed if self.total_trials else min(elapsed, self.total_seconds or 0)
        self.progress.update(self.task, completed=completed, status=f"done {done}  failed {failed}  {best}")


class StageBar:
    """A live bar for a stage of known size (the funnel's candidates) in a terminal; elsewhere (--no-progress, a
    log file) `lines` is True and the stage logs its own progress lines instead."""

    def __init__(self, description: str, total: int, enabled: bool) -> None:
        import sys

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self.lines = not enabled or not sys.stderr.isatty()
        self.progress = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.fields[status]}"), transient=False,
                                     disable=self.lines, console=Console(stderr=True))
        self.task = self.progress.add_task(description, total=total, status="")

    def __enter__(self) -> "StageBar":
        self.progress.__enter__()
        return self

    def __exit__(self, *a) -> None:
        self.progress.__exit__(*a)

    def update(self, completed: int, status: str = "") -> None:
        self.progress.update(self.task, completed=completed, status=status)


class Interrupt:
    """First Ctrl-C: stop scheduling, let running trials finish, write the report. Second: stop now."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.count = 0
        self.log = log
        self._old = None

    def __enter__(self) -> "Interrupt":
        def handler(signum, frame):
            self.count += 1
            if self.count >= 2:
                raise KeyboardInterrupt
            self.log("Ctrl-C: no new trials; waiting for the running ones (Ctrl-C again to stop now, resumable)")

        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: leave signals alone
            self._old = None
        return self

    def __exit__(self, *a) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)

    @property
    def stopping(self) -> bool:
        return self.count >= 1
