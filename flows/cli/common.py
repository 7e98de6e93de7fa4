"""What every ``pbf`` command shares: consoles, one-line errors, progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pbf_core.errors import PbfError

#: Progress, errors and tables for people go to stderr; results (JSON, reports) to stdout.
console = Console(stderr=True)
out_console = Console()


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors (bad input, bad config) into one clear line and exit code 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PbfError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """Yield a ``progress(done, total)`` callback drawing a bar on stderr."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def say(text: str) -> None:
    """A plain line on stdout (no markup, no highlighting)."""
    out_console.print(text, highlight=False, soft_wrap=True, markup=False)
