"""drtool serve: Alertmanager webhooks in, exactly one failover decision per outage out (real HTTP)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from drtool.alerts.decisions import APPROVED, AWAITING, CANCELLED, STARTED, SUPPRESSED, DecisionBook
from drtool.alerts.receiver import ReceiverServer
from drtool.config import load_config

from .conftest import REPO, run_cli

TOKEN = "t0ken-" + "x" * 32


def make_config(tmp_path: Path, **alerts) -> Path:
    doc = yaml.safe_load((REPO / "inventory" / "drtool.example.yaml").read_text())
    (tmp_path / "token").write_text(TOKEN + "\n")
    doc["alerts"] = {"policy": "auto", "token_file": str(tmp_path / "token"), "firing_for_s": 0,
                     "cooldown_s": 600, "state_dir": str(tmp_path / "state"), **alerts}
    path = tmp_path / "drtool.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def webhook(fingerprint="a1b2c3", status="firing", site="prod-west", starts_ago=120.0, name="PrimaryDown",
            starts_at: float | None = None):
    """One alert as Alertmanager posts it. Alertmanager keeps an alert's startsAt from firing to resolved: a test that
    posts both gives the same `starts_at` (computed once), or a second boundary crossed in between (a busy machine)
    would make the resolved post a different outage."""
    starts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(starts_at if starts_at is not None
                                                             else time.time() - starts_ago))
    return {"version": "4", "status": status, "receiver": "drtool", "groupKey": "{}:{}",
            "alerts": [{"status": status, "labels": {"alertname": name, "site": site},
                        "annotations": {}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
                        "fingerprint": fingerprint}]}


class Recorder:
    def __init__(self):
        self.launched: list[tuple[str, str, str]] = []

    def __call__(self, site, run_id, reason):
        self.launched.append((site, run_id, reason))


@pytest.fixture
def receiver(tmp_path):
    """A running receiver on loopback; yields (url, recorder, make_new_book)."""
    servers = []

    def start(**alerts):
        cfg = load_config(make_config(tmp_path, **alerts))
        rec = Recorder()
        book = DecisionBook(cfg, Path(cfg.alerts.state_dir), rec)
        srv = ReceiverServer(("127.0.0.1", 0), book, TOKEN)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}", rec, book

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def post(url, doc, token=TOKEN, raw=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}/alerts", data=raw if raw is not None else json.dumps(doc), headers=headers,
                         timeout=10)


def test_fifty_copies_and_a_restart_start_exactly_one_failover(receiver):
    url, rec, _ = receiver()
    for _ in range(25):
        assert post(url, webhook()).status_code == 200
    url2, rec2, _ = receiver()  # a restarted receiver: same state dir, fresh process state
    for _ in range(25):
        assert post(url2, webhook()).status_code == 200
    assert len(rec.launched) + len(rec2.launched) == 1
    site, run_id, reason = rec.launched[0]
    assert site == "dr-east" and run_id.startswith("fo-dr-east-") and "PrimaryDown" in reason


def test_unauthenticated_or_malformed_is_rejected_and_changes_nothing(receiver):
    url, rec, book = receiver()
    assert post(url, webhook(), token=None).status_code == 401
    assert post(url, webhook(), token="wrong" * 8).status_code == 401
    assert post(url, None, raw=b"{not json").status_code == 400
    bad = webhook()
    del bad["alerts"][0]["fingerprint"]
    r = post(url, bad)
    assert r.status_code == 400 and "fingerprint" in r.json()["error"]
    bad = webhook()
    bad["alerts"][0]["startsAt"] = "yesterday"
    assert post(url, bad).status_code == 400
    assert rec.launched == []
    assert book.load()["decisions"] == {}


def test_alert_must_keep_firing_before_failover(receiver):
    url, rec, book = receiver(firing_for_s=300)
    alert = webhook(starts_ago=10)
    r = post(url, alert).json()["decisions"][0]
    assert r["action"] == "pending" and "firing for" in r["why"]
    assert rec.launched == []
    # Alertmanager re-sends the same alert later: same fingerprint and start, now firing long enough.
    book.clock = lambda: time.time() + 400
    r = post(url, alert).json()["decisions"][0]
    assert r["action"] == STARTED and len(rec.launched) == 1


def test_resolved_alert_never_triggers(receiver):
    url, rec, _ = receiver()
    r = post(url, webhook(status="resolved")).json()["decisions"][0]
    assert r["action"] == "resolved" and rec.launched == []


def test_cooldown_suppresses_a_second_outage_to_the_same_site(receiver):
    url, rec, _ = receiver(cooldown_s=3600)
    post(url, webhook(fingerprint="aaaa"))
    r = post(url, webhook(fingerprint="bbbb", name="PrimaryHighErrorRate")).json()["decisions"][0]
    assert r["action"] == SUPPRESSED and "cooldown" in r["why"]
    assert len(rec.launched) == 1


def test_unknown_site_label_is_ignored(receiver):
    url, rec, _ = receiver()
    r = post(url, webhook(site="mars")).json()["decisions"][0]
    assert r["action"] == "ignored" and rec.launched == []


def test_policy_approve_records_and_waits(receiver):
    url, rec, book = receiver(policy="approve")
    r = post(url, webhook()).json()["decisions"][0]
    assert r["action"] == AWAITING and "--approve" in r["why"]
    assert rec.launched == []
    assert book.approval(r["run_id"])["target"] == "dr-east"


def test_receiver_killed_between_decision_and_launch_relaunches_same_run(tmp_path):
    cfg = load_config(make_config(tmp_path))

    def crash(site, run_id, reason):
        raise KeyboardInterrupt  # the process dies right after recording `starting`

    book = DecisionBook(cfg, Path(cfg.alerts.state_dir), crash)
    from drtool.alerts.receiver import parse_webhook

    with pytest.raises(KeyboardInterrupt):
        book.handle(parse_webhook(json.dumps(webhook()).encode()))
    run_id = next(iter(book.load()["decisions"].values()))["run_id"]
    rec = Recorder()
    book2 = DecisionBook(cfg, Path(cfg.alerts.state_dir), rec)
    assert book2.resume_interrupted() == [run_id]
    assert [r[1] for r in rec.launched] == [run_id]
    assert book2.resume_interrupted() == []  # and only once


def test_serve_refuses_to_start_without_token(tmp_path):
    path = make_config(tmp_path)
    doc = yaml.safe_load(path.read_text())
    del doc["alerts"]["token_file"]
    path.write_text(yaml.safe_dump(doc))
    proc = run_cli("--config", str(path), "serve", "--listen", "127.0.0.1:0")
    assert proc.returncode == 2
    assert "never accepts unauthenticated webhooks" in proc.stderr


def test_a_region_outage_alerting_for_every_service_starts_one_site_failover(receiver):
    """Issue #16: one Alertmanager group of a site outage carries an alert per service (each its own fingerprint
    and `service` label), in one notification and then again: one site failover (which moves every service of
    the site), never one per service."""
    url, rec, _ = receiver(cooldown_s=3600)
    doc = webhook()
    doc["alerts"] = [{**doc["alerts"][0], "fingerprint": f"f{i:03d}",
                      "labels": {"alertname": "PrimaryDown", "site": "prod-west", "service": svc}}
                     for i, svc in enumerate(("asr", "tts", "emotion", "llm-small", "llm-medium", "llm-large"))]
    first = post(url, doc).json()["decisions"]
    again = post(url, doc).json()["decisions"]
    assert [d["action"] for d in first].count("started") == 1
    assert all(d.get("duplicate") or d["action"] != "started" for d in again)  # the same decision, reported again
    assert len(rec.launched) == 1 and rec.launched[0][0] == "dr-east"


def _raw_exchange(url: str, request: bytes, shut_after_send: bool = False) -> bytes:
    """Send `request` on one connection and read everything the server answers until it closes (a reset after
    the answer counts as the end)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(request)
        if shut_after_send:
            sock.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return got


def test_an_oversized_body_is_answered_413_and_the_connection_closed(receiver):
    """A 5 MB POST: the client (Python's http.client, which sends the whole body before it reads) reads the 413,
    not a reset or a broken pipe; the answer says the connection closes, and it does."""
    import http.client

    url, rec, book = receiver()
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=20)
    try:
        conn.request("POST", "/alerts", body=b"x" * (5 << 20),
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 413 and "body over" in json.loads(resp.read())["error"]
        assert resp.getheader("Connection") == "close"
        assert conn.sock is None   # http.client closed its side, as the answer asked
    finally:
        conn.close()
    assert rec.launched == [] and book.load()["decisions"] == {}


def test_a_refused_body_is_never_read_as_the_next_request(receiver):
    """The bytes of a refused request's body (too big, or unauthenticated) never reach the server as a request
    of their own: exactly one answer, then the connection ends."""
    url, rec, _ = receiver()
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    too_big = (f"POST /alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               f"Content-Length: {2 << 20}\r\n\r\n").encode() + smuggled
    got = _raw_exchange(url, too_big, shut_after_send=True)
    assert got.startswith(b"HTTP/1.1 413") and got.count(b"HTTP/1.1 ") == 1, got
    unauthenticated = (f"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Length: {len(smuggled)}\r\n\r\n").encode() \
        + smuggled
    got = _raw_exchange(url, unauthenticated)
    assert got.startswith(b"HTTP/1.1 401") and got.count(b"HTTP/1.1 ") == 1, got
    assert b"Connection: close" in got
    assert rec.launched == []


def test_an_approval_is_cancelled_when_its_alert_resolves_first_and_then_refused(receiver, tmp_path):
    """policy approve: the outage ends (its alert resolves) before anyone approves the queued failover. The decision
    becomes cancelled, saying why and when, and `drtool failover --approve RUN` refuses it (exit 2, nothing
    changed): approving it now would move a site that serves again."""
    url, rec, book = receiver(policy="approve")
    starts_at = time.time() - 120
    queued = post(url, webhook(starts_at=starts_at)).json()["decisions"][0]
    assert queued["action"] == AWAITING
    cancelled = post(url, webhook(status="resolved", starts_at=starts_at)).json()["decisions"][0]
    assert cancelled["action"] == CANCELLED and cancelled["run_id"] == queued["run_id"]
    (stored,) = book.load()["decisions"].values()
    assert stored["action"] == CANCELLED and stored["cancelled_at"] >= stored["decided_at"]
    assert "resolved before the failover was approved" in stored["why"]
    proc = run_cli("--config", str(tmp_path / "drtool.yaml"), "failover", "--site", "dr-east", "--approve",
                   queued["run_id"], env={"DRTOOL_STATE_DIR": str(tmp_path / "drtool-state")})
    assert proc.returncode == 2, proc.stderr
    assert "cancelled" in proc.stderr and "resolved before the failover was approved" in proc.stderr
    assert not (tmp_path / "drtool-state" / "runs").exists()   # no step of a failover ran
    assert rec.launched == []


def test_a_failover_only_queued_for_approval_does_not_start_the_cooldown(receiver):
    """The cooldown counts failovers that started. A queued one holds a second outage only while it still awaits
    approval (pointing at it); once cancelled, the next outage is decided afresh; an approval starts the cooldown."""
    url, _, book = receiver(policy="approve", cooldown_s=3600)
    starts_at = time.time() - 120
    first = post(url, webhook(fingerprint="aaaa", starts_at=starts_at)).json()["decisions"][0]
    held = post(url, webhook(fingerprint="bbbb")).json()["decisions"][0]
    assert held["action"] == SUPPRESSED and f"awaits approval as {first['run_id']}" in held["why"]
    assert post(url, webhook(fingerprint="aaaa", status="resolved", starts_at=starts_at)).json()["decisions"][0][
        "action"] == CANCELLED
    second = post(url, webhook(fingerprint="cccc", name="PrimaryHighErrorRate")).json()["decisions"][0]
    assert second["action"] == AWAITING, second          # not "a failover to dr-east started Ns ago"
    assert book.approve(second["run_id"])["action"] == APPROVED
    third = post(url, webhook(fingerprint="dddd")).json()["decisions"][0]
    assert third["action"] == SUPPRESSED and "started" in third["why"]


@pytest.mark.parametrize("policy", ["auto", "approve"])
def test_an_alert_naming_the_dr_site_or_an_unknown_site_is_refused_and_recorded(receiver, policy):
    """The failing site must be a configured primary with a DR site: an alert about the DR site itself (it would
    fail dr-east over to dr-east) or about an unknown site is refused with its reason, recorded, never queued or
    launched."""
    url, rec, book = receiver(policy=policy)
    for site, why in (("dr-east", "names a DR site, not a primary"), ("mars", "names no configured site")):
        d = post(url, webhook(fingerprint=f"f{len(site)}", site=site)).json()["decisions"][0]
        assert d["action"] == "ignored" and why in d["why"] and "run_id" not in d, d
    assert rec.launched == []
    assert sorted(r["action"] for r in book.load()["decisions"].values()) == ["ignored", "ignored"]


def _ended(book: DecisionBook, run_id: str, within: float = 60.0) -> dict:
    deadline = time.time() + within
    while time.time() < deadline:
        rec = next(r for r in book.load()["decisions"].values() if r.get("run_id") == run_id)
        if "exit_code" in rec:
            return rec
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never recorded how it ended: {rec}")


def test_a_launched_failover_records_in_its_decision_how_it_ended(tmp_path, monkeypatch):
    """serve's launcher starts the real `drtool failover` in its own process; when it ends, its decision records
    the exit code (here 1: the example configuration's TSIG key file does not exist, so preflight fails), not
    `started` for ever."""
    from drtool.actions.serve import subprocess_launcher
    from drtool.alerts.receiver import parse_webhook

    cfg = load_config(make_config(tmp_path))
    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "drtool-state"))
    base = Path(cfg.alerts.state_dir)
    book = DecisionBook(cfg, base, subprocess_launcher(cfg, base / "runs"))
    (d,) = book.handle(parse_webhook(json.dumps(webhook()).encode()))
    assert d["action"] == STARTED
    rec = _ended(book, d["run_id"])
    assert rec["action"] == "failed" and rec["exit_code"] == 1 and rec["ended_at"] >= rec["decided_at"]
    assert "exit 1" in rec["why"]
    assert "failed" in (base / "runs" / f"{d['run_id']}.log").read_text()


def test_a_launched_failover_that_finds_the_lease_held_is_recorded_busy(tmp_path):
    """A launched run that exits 4 (another run holds the site's failover lease) is recorded as busy with its exit
    code. The failover is stood in for by a process that exits as the lease refusal does."""
    import sys

    from drtool.actions.serve import subprocess_launcher
    from drtool.alerts.receiver import parse_webhook

    cfg = load_config(make_config(tmp_path))
    base = Path(cfg.alerts.state_dir)

    def busy_failover(config, site, run_id, reason):
        return [sys.executable, "-c", f"import sys; print('busy: failover {run_id} holds failover-{site}'); "
                                      "sys.exit(4)"]

    book = DecisionBook(cfg, base, subprocess_launcher(cfg, base / "runs", command=busy_failover))
    (d,) = book.handle(parse_webhook(json.dumps(webhook()).encode()))
    rec = _ended(book, d["run_id"])
    assert rec["action"] == "busy" and rec["exit_code"] == 4 and "another run holds" in rec["why"]
