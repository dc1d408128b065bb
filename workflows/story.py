"""The terminal story of `make demo` / `make movielens`: one line per stage with its time, and
everything else - library warnings, Spark and log4j output, the feast CLI and the server
subprocesses, our own detailed prints - in a log file whose path is printed first.

The process's stdout and stderr file descriptors point at the log file while a story runs, so
output from the JVM and from child processes lands there too; nothing is filtered out, only
moved. The story itself is written to a duplicate of the original terminal descriptor.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

T = TypeVar("T")
LOG_TAIL_LINES = 25  # shown on the terminal when a stage fails


class StageFailed(RuntimeError):
    pass


class Story:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.terminal: Console | None = None
        self.seconds: dict[str, float] = {}
        self._saved_fds: tuple[int, int] | None = None

    def __enter__(self) -> Story:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        interactive = sys.stdout.isatty()
        self.terminal = Console(file=os.fdopen(os.dup(1), "w", buffering=1), force_terminal=interactive,
                                highlight=False)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._saved_fds = (os.dup(1), os.dup(2))
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        self._saved_streams = (sys.stdout, sys.stderr)  # e.g. pytest's capture, not fd 1 / 2
        sys.stdout, sys.stderr = _fd_stream(1), _fd_stream(2)
        self._saved_warning_filters = warnings.filters[:]
        self._log_handler = _send_warnings_and_logs_to_stderr()
        self.terminal.print(f"[dim]details (warnings, Spark, feast, server): {self.log_path}[/]", soft_wrap=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.getLogger().removeHandler(self._log_handler)
        logging.captureWarnings(False)
        warnings.filters[:] = self._saved_warning_filters
        sys.stdout, sys.stderr = self._saved_streams
        if self._saved_fds is not None:
            for target, saved in zip((1, 2), self._saved_fds):
                os.dup2(saved, target)
                os.close(saved)
            self._saved_fds = None
        if self.terminal is not None:
            self.terminal.file.close()

    def stage(self, name: str, run: Callable[[], T], detail: Callable[[T], str] | None = None) -> T:
        """Run one stage: a spinner while it runs, then `ok <name> <time> <detail>` on the terminal."""
        console = self.terminal
        print(f"\n===== stage {name} =====", flush=True)  # a landmark in the log file
        started = time.perf_counter()
        try:
            with _spinner(console, name) if console.is_terminal else nullcontext():
                result = run()
        except KeyboardInterrupt:
            console.print(f"[bold yellow]interrupted[/] {name:<12} {time.perf_counter() - started:7.1f}s")
            raise
        except Exception as error:
            seconds = time.perf_counter() - started
            traceback.print_exc()  # into the log
            sys.stdout.flush()
            sys.stderr.flush()
            console.print(f"[bold red]FAILED[/] {name:<12} {seconds:7.1f}s  {type(error).__name__}: {error}")
            console.print(f"[dim]last lines of {self.log_path}:[/]")
            console.print(tail(self.log_path, LOG_TAIL_LINES), markup=False, highlight=False)
            raise StageFailed(f"{name} failed: {error}") from error
        seconds = self.seconds[name] = time.perf_counter() - started
        note = detail(result) if detail else ""
        console.print(f"[green]ok[/] {name:<12} {seconds:7.1f}s  {note}", highlight=False)
        return result


def _spinner(console: Console, name: str) -> Progress:
    """A transient spinner with the elapsed time; it leaves sys.stdout alone (still the log file)."""
    progress = Progress(SpinnerColumn(), TextColumn(f"[bold]{name}[/]"), TimeElapsedColumn(), console=console,
                        transient=True, redirect_stdout=False, redirect_stderr=False)
    progress.add_task(name, total=None)
    return progress


def _fd_stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(open(fd, "wb", buffering=0, closefd=False), line_buffering=True,
                            errors="backslashreplace")


def _send_warnings_and_logs_to_stderr() -> logging.Handler:
    """Warnings (each once per place, as Python's "default" action) and log records go to stderr
    - now the log file - with their source."""
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    return handler


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def story_log(log_dir: Path, name: str) -> Iterator[Story]:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with Story(log_dir / f"{name}-{stamp}.log") as story:
        yield story
