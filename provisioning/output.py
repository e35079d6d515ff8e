"""How the CLI prints: rich tables and progress for people, JSON for scripts.

Results go to stdout, notes and progress to stderr, so ``--json`` output stays parseable.
Progress bars show only on a terminal and never with ``--json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class Output:
    """Printing for one command run."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json
        # A pipe or a test capture has no width; do not wrap 32-hex-digit device ids.
        width = None if sys.stdout.isatty() else 200
        self.out = Console(width=width, highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        """Print ``value`` as JSON on stdout."""
        print(json.dumps(value, indent=2, sort_keys=True))

    def line(self, text: str) -> None:
        """Print one result line for people (ignored with --json)."""
        if not self.as_json:
            self.out.print(text, markup=False)

    def note(self, text: str) -> None:
        """Print a note on stderr (also with --json: it is not part of the result)."""
        self.err.print(text, markup=False, soft_wrap=True)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """Print a table for people (ignored with --json)."""
        if self.as_json:
            return
        table = Table(title=title, title_justify="left")
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self.out.print(table)

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Progress]:
        """Yield a progress bar on stderr; disabled off a terminal, with --json or for one item."""
        show = self.err.is_terminal and not self.as_json and total > 1
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), console=self.err, disable=not show, transient=False)
        with bar:
            bar.add_task(description, total=total)
            yield bar
