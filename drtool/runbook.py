"""Ordered, individually timed, journaled steps: the engine under failover, failback and drills.

Every step's outcome is written to the run's journal (atomically, locally, and mirrored to a store) before
the next step starts, so a run killed at any step boundary can be resumed: finished steps are skipped,
the interrupted one runs again. Steps therefore check before they act (idempotent)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
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


def run_steps(journal: Journal, steps: list[Step], ctx: dict, progress: ProgressFn | None = None,
              dry_run: bool = False) -> Journal:
    """Run the steps not yet done, in order, journaling each outcome. Raises the first step's error."""
    known = {s.name for s in journal.steps}
    for s in steps:
        if s.name not in known:
            journal.steps.append(StepRecord(s.name, s.title))
    journal.save()
    for step in steps:
        rec = journal.record(step.name)
        if rec.status in (DONE, SKIPPED):
            continue
        if dry_run and step.changes_things:
            rec.status = SKIPPED
            rec.evidence = {"dry_run": "would run"}
            continue
        rec.status, rec.started, rec.error, rec.error_class = RUNNING, time.time(), None, None
        rec.attempts += 1
        journal.save()
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
            journal.status, journal.ended = FAILED, rec.ended
            journal.save()
            if progress:
                progress("failed", rec)
            raise
        rec.status, rec.ended = DONE, time.time()
        rec.seconds = round(rec.ended - rec.started, 3)
        journal.save()
        if progress:
            progress("done", rec)
        if os.environ.get(KILL_AFTER_ENV) == step.name:
            # Fault injection for drills and tests: die like a crashed host right after a step boundary.
            os.kill(os.getpid(), signal.SIGKILL)
    if not dry_run:
        journal.status, journal.ended = DONE, time.time()
    journal.save()
    return journal
