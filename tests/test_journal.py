"""A recovery run's journal: saved atomically and mirrored, loaded back for a resume, and refused with a clear
error when it is missing or not JSON. (The engine that writes it: tests/test_recovery_engine.py.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from drtool.errors import OperationFailed, UsageError
from drtool.recovery.journal import DONE, Journal, StepRecord


def test_a_journal_saves_mirrors_and_loads_back(tmp_path: Path):
    mirrored = []
    j = Journal("r1", "failover", "dr-east", time.time(), path=tmp_path / "r1.json", context={"host": "de-gpu1"},
                mirror=mirrored.append)
    j.steps = [StepRecord("preflight", "Preflight", status=DONE, attempts=1, evidence={"ok": True})]
    j.save()
    assert json.loads(mirrored[-1]) == json.loads((tmp_path / "r1.json").read_text())
    back = Journal.load(tmp_path / "r1.json")
    assert back.record("preflight").evidence == {"ok": True} and back.context == {"host": "de-gpu1"}
    assert back.path == tmp_path / "r1.json" and back.mirror is None


def test_a_mirror_that_fails_is_recorded_and_the_local_journal_still_written(tmp_path: Path):
    def broken(_data):
        raise OperationFailed("store unreachable")

    j = Journal("r2", "failover", "dr-east", time.time(), path=tmp_path / "r2.json", mirror=broken)
    j.save()
    assert j.mirror_error == "store unreachable" and (tmp_path / "r2.json").exists()


def test_a_missing_or_broken_journal_is_a_usage_error_naming_it(tmp_path: Path):
    with pytest.raises(UsageError, match="no journal for run r3"):
        Journal.load(tmp_path / "r3.json")
    (tmp_path / "r4.json").write_text("{not json")
    with pytest.raises(UsageError, match="r4.json is not valid JSON"):
        Journal.load(tmp_path / "r4.json")
