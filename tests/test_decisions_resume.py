"""A failover serve launched that died (SIGKILL) before recording how it ended is resumed under the same run id when
serve starts again, once; one that still runs is left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drtool.alerts.decisions import RESUME_LIMIT, STARTED, DecisionBook, record_run_pid, run_alive
from drtool.alerts.receiver import parse_webhook
from drtool.config import load_config

from .test_serve import Recorder, make_config, webhook


class Spawner(Recorder):
    """A launcher standing in for serve's: starts a `sleep` per run and returns its pid."""

    def __init__(self):
        super().__init__()
        self.procs: list[subprocess.Popen] = []

    def __call__(self, site, run_id, reason):
        super().__call__(site, run_id, reason)
        self.procs.append(subprocess.Popen(["sleep", "60"]))
        return self.procs[-1].pid

    def kill(self, i: int = -1, reap: bool = True) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        if reap:
            self.procs[i].wait()
        else:   # wait until it is dead, leaving it a zombie (not reaped)
            os.waitid(os.P_PID, self.procs[i].pid, os.WEXITED | os.WNOWAIT)

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def spawn():
    s = Spawner()
    yield s
    s.close()


def started(tmp_path: Path, launcher) -> tuple[DecisionBook, dict]:
    cfg = load_config(make_config(tmp_path))
    book = DecisionBook(cfg, Path(cfg.alerts.state_dir), launcher)
    (d,) = book.handle(parse_webhook(json.dumps(webhook()).encode()))
    assert d["action"] == STARTED
    return book, next(iter(book.load()["decisions"].values()))


def book_with(book: DecisionBook, launcher, resumer) -> DecisionBook:
    """The same book as a restarted serve opens it."""
    return DecisionBook(book.config, book.path.parent.parent, launcher, resumer=resumer)


@pytest.mark.parametrize("reap", [True, False], ids=["gone", "zombie"])
def test_a_launched_run_that_died_is_resumed_once_under_its_run_id(tmp_path, spawn, reap):
    book, rec = started(tmp_path, spawn)
    assert rec["pid"] == spawn.procs[0].pid and rec["host"] == os.uname().nodename and "boot_id" in rec
    spawn.kill(0, reap=reap)   # not reaped: a zombie, which never runs again
    fresh, resumer = Recorder(), Spawner()
    try:
        again = book_with(book, fresh, resumer)
        assert again.resume_interrupted() == [rec["run_id"]]
        assert fresh.launched == [] and [r[1] for r in resumer.launched] == [rec["run_id"]]
        (now,) = again.load()["decisions"].values()
        assert now["action"] == STARTED and now["pid"] == resumer.procs[0].pid and len(now["resumes"]) == 1
        assert now["resumes"][0]["dead"] == f"pid {rec['pid']}" and f"pid {rec['pid']} gone" in now["why"]
        assert "resumed under the same run id" in now["why"]
        # serve restarted while the resumed run still runs: left alone.
        assert book_with(book, fresh, resumer).resume_interrupted() == []
        # The resumed run dies as well: not resumed a second time, and the decision says what to do.
        resumer.kill(0)
        assert RESUME_LIMIT == 1
        assert book_with(book, fresh, resumer).resume_interrupted() == []
        (now,) = again.load()["decisions"].values()
        assert len(resumer.launched) == 1 and "not resumed again automatically" in now["why"]
        assert f"--resume {rec['run_id']}" in now["why"]
    finally:
        resumer.close()


def test_a_launched_run_still_alive_is_left_alone(tmp_path, spawn):
    book, rec = started(tmp_path, spawn)
    resumer = Recorder()
    assert book_with(book, Recorder(), resumer).resume_interrupted() == []
    assert resumer.launched == [] and "resumes" not in next(iter(book.load()["decisions"].values()))


def test_a_run_whose_launcher_died_but_whose_failover_runs_is_left_alone(tmp_path, spawn):
    """The launcher (drtool.alerts.launch) was killed alone; the failover it started still runs (its pid recorded
    as run_pid): resuming would race it for the lease."""
    book, rec = started(tmp_path, spawn)
    failover = subprocess.Popen(["sleep", "60"])
    try:
        record_run_pid(book.path.parent.parent, rec["run_id"], failover.pid)
        spawn.kill(0)
        assert book_with(book, Recorder(), Recorder()).resume_interrupted() == []
        failover.kill()
        failover.wait()
        assert book_with(book, Recorder(), Recorder()).resume_interrupted() == [rec["run_id"]]
    finally:
        failover.kill()
        failover.wait()


def test_a_run_with_no_pid_recorded_or_of_another_host_is_left_alone(tmp_path):
    book, rec = started(tmp_path, Recorder())   # a launcher that returns no pid
    assert "pid" not in rec and run_alive(rec) is None
    assert run_alive({**rec, "pid": 1 << 22, "host": "another-host"}) is None
    assert run_alive({**rec, "pid": os.getpid(), "boot_id": "a-boot-before-this-one"}) is False
    assert book_with(book, Recorder(), Recorder()).resume_interrupted() == []


def test_serve_launcher_records_both_pids_and_a_sigkilled_run_is_resumed(tmp_path):
    """serve's own launcher (drtool.alerts.launch around a stand-in failover that sleeps): the decision records the
    launcher's pid and the failover's; SIGKILL to the run's whole session (both processes, nothing recorded) leaves
    it `started`, and the next start of serve resumes it."""
    from drtool.actions.serve import subprocess_launcher

    def sleeper(config, site, run_id, reason):
        return [sys.executable, "-c", "import time; time.sleep(60)"]

    cfg = load_config(make_config(tmp_path))
    base = Path(cfg.alerts.state_dir)
    book = DecisionBook(cfg, base, subprocess_launcher(cfg, base / "runs", command=sleeper))
    (d,) = book.handle(parse_webhook(json.dumps(webhook()).encode()))
    deadline = time.time() + 30
    while "run_pid" not in (rec := next(iter(book.load()["decisions"].values()))) and time.time() < deadline:
        time.sleep(0.05)
    assert rec["pid"] != rec["run_pid"] and run_alive(rec) is True
    os.killpg(rec["pid"], signal.SIGKILL)   # the launcher ran in its own session: pgid == its pid
    deadline = time.time() + 10
    while run_alive(rec) and time.time() < deadline:
        time.sleep(0.05)
    resumer = Recorder()
    assert DecisionBook(cfg, base, Recorder(), resumer=resumer).resume_interrupted() == [d["run_id"]]
    assert [r[1] for r in resumer.launched] == [d["run_id"]]
    (now,) = book.load()["decisions"].values()
    assert now["action"] == STARTED and "run_pid" not in now and len(now["resumes"]) == 1


def test_the_resume_command_resumes_a_journaled_run_and_restarts_one_that_journaled_nothing(tmp_path, monkeypatch):
    from drtool.actions.serve import resume_command

    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    cfg = load_config(make_config(tmp_path))
    argv = resume_command(cfg, "dr-east", "fo-dr-east-1", "why")
    assert argv[argv.index("failover"):] == ["failover", "--site", "dr-east", "--yes", "--run-id", "fo-dr-east-1",
                                             "--reason", "why"]
    (tmp_path / "state" / "runs" / "fo-dr-east-1").mkdir(parents=True)
    (tmp_path / "state" / "runs" / "fo-dr-east-1" / "asr-demo.json").write_text("{}")
    argv = resume_command(cfg, "dr-east", "fo-dr-east-1", "why")
    assert argv[argv.index("failover"):] == ["failover", "--site", "dr-east", "--resume", "fo-dr-east-1", "--yes"]
