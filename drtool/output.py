"""Everything drtool prints: progress on stderr, results on stdout as rich tables or --json."""

from __future__ import annotations  # PEP 563 (public), for TaskEvent, a type-checking import

import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from drtool.errors import DrtoolError
from drtool.jsonout import error_json, result_json

if TYPE_CHECKING:  # only a type: importing the Ansible layer costs every command's start-up
    from drtool.execute.ansible import TaskEvent

STATUS_STYLE = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red", "skipped": "dim"}


class Output:
    def __init__(self, json_mode: bool = False, verbose: int = 0):
        self.json_mode = json_mode
        self.verbose = verbose
        # Progress and diagnostics go to stderr so stdout stays a clean result (a table or JSON).
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = Console(highlight=False, soft_wrap=True)
        if not self.out.is_terminal:
            self.out.width = 160  # piped output: do not cut table cells at 80 columns
        self._status = None

    # -- progress ---------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.json_mode or self.verbose:
            self.err.print(message)

    def step(self, message: str) -> None:
        """A line of progress for long work (lab set-up, playbook plays)."""
        if self._status is not None:
            self._status.update(f"[bold]{escape(message)}")
        if self.verbose or not self.json_mode:
            self.err.print(f"[cyan]›[/] {escape(message)}")

    @contextmanager
    def working(self, message: str):
        """A spinner on stderr while long work runs (hidden when stderr is not a terminal)."""
        if self.err.is_terminal:
            with self.err.status(f"[bold]{escape(message)}") as status:
                self._status = status
                try:
                    yield
                finally:
                    self._status = None
        else:
            yield

    def ansible_progress(self) -> Callable[[str, TaskEvent | str], None]:
        """Feed ansible-runner events into the display: plays, and each host's task outcome."""

        def progress(kind: str, payload) -> None:
            if kind == "play":
                self.step(f"play: {payload}")
            elif kind == "task" and self._status is not None:
                self._status.update(f"[bold]task: {escape(str(payload))}")
            elif kind == "result":
                ev: TaskEvent = payload
                interesting = ev.status in ("failed", "unreachable", "changed")
                if self.verbose or (interesting and not self.json_mode):
                    style = STATUS_STYLE.get(ev.status, "")
                    self.err.print(f"  [{style}]{ev.status:<11}[/] {escape(ev.host):<10} {escape(ev.task)}"
                                   f" [dim]{ev.duration_s:.2f}s[/]")

        return progress

    # -- results ----------------------------------------------------------------------------------
    def result(self, data: dict, render: Callable[[Console], None] | None = None) -> None:
        if self.json_mode:
            self.out.file.write(result_json(data))
            self.out.file.flush()
        elif render is not None:
            render(self.out)

    def error(self, err: DrtoolError) -> None:
        if self.json_mode:
            sys.stdout.write(error_json(err))
            sys.stdout.flush()
            return
        self.err.print(f"[bold red]error:[/] {escape(err.message)}")
        for line in err.details:
            self.err.print(f"  - {escape(line)}")
        if err.hint:
            self.err.print(f"[yellow]hint:[/] {escape(err.hint)}")
        self.err.print(f"[dim]exit code {err.exit_code}[/]")


def table(title: str, columns: list[str], rows: list[list]):
    t = Table(title=title, title_justify="left", header_style="bold")
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*[escape(str(v)) if v is not None else "" for v in row])
    return t
