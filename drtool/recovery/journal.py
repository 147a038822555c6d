"""A recovery run's journal, one per service: each step's outcome, timed, with its evidence.

Every step's outcome is written (atomically, locally, and mirrored to a store) before the next step starts, so a
run killed at any step boundary can be resumed: finished steps are skipped, the interrupted one runs again. Steps
therefore check before they act (idempotent)."""

from __future__ import annotations  # PEP 563 (public), for Journal in its own class

import json
import os
import signal
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


def crash_point(step_name: str) -> None:
    """Fault injection for drills and tests: die like a crashed host right after `step_name` finished (journaled),
    when $DRTOOL_FAULT_KILL_AFTER_STEP names it. Every recovery run calls it at each step boundary."""
    if os.environ.get(KILL_AFTER_ENV) == step_name:
        os.kill(os.getpid(), signal.SIGKILL)
