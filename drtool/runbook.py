"""Ordered, individually timed, journaled steps: the engine under failover, failback and drills.

Every step's outcome is written to the run's journal (atomically, locally, and mirrored to a store) before
the next step starts, so a run killed at any step boundary can be resumed: finished steps are skipped,
the interrupted one runs again. Steps therefore check before they act (idempotent)."""

from __future__ import annotations  # PEP 563 (public), for Journal in its own class

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from drtool.errors import DrtoolError, UsageError
from drtool.fsutil import write_json_atomic

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"
KILL_AFTER_ENV = "DRTOOL_FAULT_KILL_AFTER_STEP"


@dataclass
class StepRecord:
    name: str
    title: str
    status: str = PENDING
    started: float | None = None
    ended: float | None = None
    seconds: float | None = None
    evidence: dict = field(default_factory=dict)
    error: str | None = None
    error_class: str | None = None
    attempts: int = 0


@dataclass
class Step:
    name: str
    title: str
    run: Callable[[dict], dict | None]   # receives the run context, returns evidence
    changes_things: bool = True          # read-only steps run in --dry-run
    group: str | None = None             # consecutive steps of one group run at the same time (independent work)


@dataclass
class Journal:
    run_id: str
    kind: str                 # failover | failback | drill
    site: str
    started: float
    status: str = RUNNING     # running | done | failed
    reason: str | None = None
    ended: float | None = None
    steps: list[StepRecord] = field(default_factory=list)
    context: dict = field(default_factory=dict)   # facts later steps need (chosen standby, image, snapshot)
    path: Path | None = None
    mirror: Callable[[bytes], None] | None = None
    mirror_error: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("path", "mirror"):
            d.pop(k)
        return d

    def save(self) -> None:
        doc = self.to_dict()
        if self.path:
            write_json_atomic(self.path, doc)
        if self.mirror:
            try:
                self.mirror(json.dumps(doc, sort_keys=True, default=str).encode())
                self.mirror_error = None
            except DrtoolError as exc:  # the local journal is the one resume relies on
                self.mirror_error = exc.message

    @classmethod
    def load(cls, path: Path) -> Journal:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"no journal for run {path.stem} in {path.parent}",
                             hint="list runs with `ls` there, or start a new run without --resume") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"journal {path} is not valid JSON: {exc}") from None
        steps = [StepRecord(**s) for s in doc.pop("steps", [])]
        doc.pop("mirror_error", None)
        return cls(**doc, steps=steps, path=path)

    def record(self, name: str) -> StepRecord:
        return next(s for s in self.steps if s.name == name)

    def seconds_until(self, step_name: str) -> float | None:
        rec = self.record(step_name)
        return None if rec.ended is None else round(rec.ended - self.started, 3)


ProgressFn = Callable[[str, StepRecord], None]


def crash_point(step_name: str) -> None:
    """Fault injection for drills and tests: die like a crashed host right after `step_name` finished (journaled),
    when $DRTOOL_FAULT_KILL_AFTER_STEP names it. Every recovery run calls it at each step boundary."""
    if os.environ.get(KILL_AFTER_ENV) == step_name:
        os.kill(os.getpid(), signal.SIGKILL)


def run_steps(journal: Journal, steps: list[Step], ctx: dict, progress: ProgressFn | None = None,
              dry_run: bool = False) -> Journal:
    """Run the steps not yet done, in order, journaling each outcome. Raises the first step's error.
    Consecutive steps of one `group` run in threads at once, each journaled on its own; when one fails, the
    others still finish (and are journaled) before the first error is raised."""
    known = {s.name for s in journal.steps}
    for s in steps:
        if s.name not in known:
            journal.steps.append(StepRecord(s.name, s.title))
    journal.save()
    lock = threading.Lock()

    def save() -> None:
        with lock:
            journal.save()

    def one(step: Step) -> BaseException | None:
        rec = journal.record(step.name)
        rec.status, rec.started, rec.error, rec.error_class = RUNNING, time.time(), None, None
        rec.attempts += 1
        save()
        if progress:
            progress("start", rec)
        try:
            rec.evidence = step.run(ctx) or {}
        except BaseException as exc:
            rec.status, rec.ended = FAILED, time.time()
            rec.seconds = round(rec.ended - rec.started, 3)
            if isinstance(exc, DrtoolError):  # the details name what failed (a file and its digests, a host ...)
                rec.error = "; ".join([exc.message, *(d for d in exc.details if d and d not in exc.message)])
            else:
                rec.error = f"{type(exc).__name__}: {exc}"
            rec.error_class = type(exc).__name__
            save()
            if progress:
                progress("failed", rec)
            return exc
        rec.status, rec.ended = DONE, time.time()
        rec.seconds = round(rec.ended - rec.started, 3)
        save()
        if progress:
            progress("done", rec)
        return None

    batches: list[list[Step]] = []
    for step in steps:
        if batches and step.group and batches[-1][0].group == step.group:
            batches[-1].append(step)
        else:
            batches.append([step])
    for batch in batches:
        todo = []
        for step in batch:
            rec = journal.record(step.name)
            if rec.status in (DONE, SKIPPED):
                continue
            if dry_run and step.changes_things:
                rec.status = SKIPPED
                rec.evidence = {"dry_run": "would run"}
                continue
            todo.append(step)
        if len(todo) == 1:
            errors = [one(todo[0])]
        else:
            with ThreadPoolExecutor(len(todo) or 1) as pool:
                errors = list(pool.map(one, todo))
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            journal.status, journal.ended = FAILED, time.time()
            journal.save()
            raise first
        for step in todo:
            crash_point(step.name)
    if not dry_run:
        journal.status, journal.ended = DONE, time.time()
    journal.save()
    return journal
