"""Two receivers, one outage, one decision: each outage is claimed in the DR site's object store (a conditional
create), so redundant `drtool serve` receivers (one per Alertmanager replica, each with its own state dir) launch or
queue exactly one failover and the others record a duplicate naming its run id."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from drtool.alerts.claims import OutageClaims, approval_key, claim_key, outage_name
from drtool.alerts.decisions import (
    APPROVED,
    AWAITING,
    CANCELLED,
    DUPLICATE,
    PENDING,
    STARTED,
    SUPPRESSED,
    DecisionBook,
    approved_reason,
)
from drtool.alerts.receiver import parse_webhook
from drtool.config import load_config
from drtool.errors import UsageError
from drtool.snapshot.stores import open_store

from .test_serve import Recorder, make_config, webhook


def config_with_store(tmp_path: Path, store: dict, **alerts):
    """The example configuration with dr-east's first object store replaced (where outages are claimed)."""
    path = make_config(tmp_path, **alerts)
    doc = yaml.safe_load(path.read_text())
    doc["sites"]["dr-east"]["object_stores"] = [store]
    path.write_text(yaml.safe_dump(doc))
    return load_config(path)


STARTS = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120))


def alerts(**kw):
    """The webhook's alerts, all starting at one fixed time: the same fingerprint is the same outage."""
    doc = webhook(**kw)
    doc["alerts"][0]["startsAt"] = STARTS
    return parse_webhook(json.dumps(doc).encode())


def two_receivers(tmp_path: Path, policy: str, store: dict | None = None, **alerts_settings):
    """Two decision books with their own state dirs, claiming in dr-east's store as `drtool serve` does."""
    (tmp_path / "dr-store").mkdir(exist_ok=True)
    cfg = config_with_store(tmp_path, store or {"url": f"file://{tmp_path / 'dr-store'}"}, policy=policy,
                            **alerts_settings)
    out = []
    for name in ("a", "b"):
        rec = Recorder()
        out.append((DecisionBook(cfg, tmp_path / name, rec, claims=OutageClaims.for_config(cfg)), rec))
    return cfg, out


def stored_claim(tmp_path: Path, outage: str) -> dict:
    return json.loads((tmp_path / "dr-store" / claim_key("dr-east", outage)).read_text())


@pytest.mark.parametrize("policy, first_action, claim_action", [("auto", STARTED, STARTED),
                                                                 ("approve", AWAITING, AWAITING)])
def test_two_receivers_hear_one_outage_one_decides_the_other_names_its_run(tmp_path, policy, first_action,
                                                                            claim_action):
    _, [(a, rec_a), (b, rec_b)] = two_receivers(tmp_path, policy)
    alert = alerts()
    (first,) = a.handle(alert)
    (second,) = b.handle(alert)
    assert first["action"] == first_action and first["run_id"].startswith("fo-dr-east-")
    assert second["action"] == DUPLICATE and second["run_id"] == first["run_id"], second
    assert str(tmp_path / "a") in second["why"] and "nothing launched here" in second["why"]
    assert len(rec_a.launched) == (1 if policy == "auto" else 0) and rec_b.launched == []
    claim = stored_claim(tmp_path, alert[0].key)
    assert claim["run_id"] == first["run_id"] and claim["action"] == claim_action
    assert claim["receiver"].endswith(str(tmp_path / "a")) and claim["at"] == first["decided_at"]
    # Alertmanager repeats: neither receiver decides again.
    assert [d["action"] for d in a.handle(alert) + b.handle(alert)] == [first_action, DUPLICATE]
    assert len(rec_a.launched) + len(rec_b.launched) == (1 if policy == "auto" else 0)


def test_the_receiver_that_lost_a_started_outage_keeps_its_cooldown(tmp_path):
    """A failover another receiver started starts this receiver's cooldown too: a second outage of the same site
    within it is suppressed by both, never launched by the one that did not launch the first."""
    _, [(a, rec_a), (b, rec_b)] = two_receivers(tmp_path, "auto", cooldown_s=3600)
    a.handle(alerts(fingerprint="aaaa"))
    b.handle(alerts(fingerprint="aaaa"))
    (again,) = b.handle(alerts(fingerprint="bbbb", name="PrimaryHighErrorRate"))
    assert again["action"] == SUPPRESSED and "cooldown" in again["why"]
    assert len(rec_a.launched) == 1 and rec_b.launched == []


def test_a_run_queued_by_one_receiver_is_approved_from_the_other_receivers_host(tmp_path):
    cfg, [(a, _), (b, _)] = two_receivers(tmp_path, "approve", cooldown_s=3600)
    (queued,) = a.handle(alerts())
    b.handle(alerts())
    run_id = queued["run_id"]
    got = b.approve(run_id, record=False)   # a dry run settles nothing
    assert got["action"] == APPROVED and got["reason"] == queued["reason"]
    assert not (tmp_path / "dr-store" / approval_key("dr-east", alerts()[0].key)).exists()
    approved = b.approve(run_id)
    assert approved["run_id"] == run_id and approved["target"] == "dr-east" and "PrimaryDown" in approved["reason"]
    settled = json.loads((tmp_path / "dr-store" / approval_key("dr-east", alerts()[0].key)).read_text())
    assert settled["action"] == APPROVED and settled["by"].endswith(str(tmp_path / "b"))
    # b's cooldown started with the approval: its next outage of the site is suppressed.
    (held,) = b.handle(alerts(fingerprint="cccc"))
    assert held["action"] == SUPPRESSED
    # Approving again from the queuing receiver's host goes on with the same run (as a local re-approval does).
    assert a.approve(run_id)["action"] == APPROVED
    # And from a third host that never received the alert (what `drtool failover --approve RUN` reads).
    third = DecisionBook(cfg, tmp_path / "laptop", Recorder(), claims=OutageClaims.for_config(cfg))
    assert third.approve(run_id)["reason"] == queued["reason"]


def test_failover_approve_finds_a_run_the_other_receiver_queued(tmp_path):
    """`drtool failover --approve RUN` reads the reason through approved_reason: from a host whose own book holds
    only the duplicate, the run is found in dr-east's store."""
    cfg, [(a, _), (b, _)] = two_receivers(tmp_path, "approve", state_dir=str(tmp_path / "b"))
    (queued,) = a.handle(alerts())
    b.handle(alerts())
    assert approved_reason(cfg, queued["run_id"]) == queued["reason"]
    with pytest.raises(UsageError, match="no failover awaiting approval with run id fo-dr-east-nope"):
        approved_reason(cfg, "fo-dr-east-nope")


def test_a_resolved_alert_cancels_the_shared_claim_and_either_host_refuses_the_approval(tmp_path):
    """The receiver that queued the failover is down when the alert resolves; the other one marks the shared claim
    cancelled (a second document, created once), and an approval from either host is refused."""
    _, [(a, _), (b, _)] = two_receivers(tmp_path, "approve")
    (queued,) = a.handle(alerts())
    b.handle(alerts())
    (resolved,) = b.handle(alerts(status="resolved"))
    assert resolved["action"] == DUPLICATE and resolved["claim_action"] == CANCELLED
    settled = json.loads((tmp_path / "dr-store" / approval_key("dr-east", alerts()[0].key)).read_text())
    assert settled["action"] == CANCELLED
    for book in (a, b):
        with pytest.raises(UsageError, match="was cancelled, nothing changed"):
            book.approve(queued["run_id"])
    assert next(iter(a.load()["decisions"].values()))["action"] == CANCELLED


def test_an_approval_that_came_first_stands_against_a_late_resolve(tmp_path):
    _, [(a, _), (b, _)] = two_receivers(tmp_path, "approve")
    (queued,) = a.handle(alerts())
    b.handle(alerts())
    b.approve(queued["run_id"])
    (resolved,) = a.handle(alerts(status="resolved"))
    assert resolved["action"] == APPROVED and "before its alert resolved" in resolved["why"]


def test_when_the_dr_store_cannot_be_reached_nothing_is_decided_and_the_why_says_so(tmp_path):
    """No claim, no decision: the outage stays pending, saying loudly why, and is decided at the next notification
    once the store answers (the failover needs that store too)."""
    missing = tmp_path / "dr-store-not-mounted"
    _, [(a, rec_a), _] = two_receivers(tmp_path, "auto", store={"url": f"file://{missing}"})
    (d,) = a.handle(alerts())
    assert d["action"] == PENDING and d["why"].startswith("NOT DECIDED: cannot claim this outage in dr-east's")
    assert str(missing) in d["why"] and "drtool failover --site dr-east" in d["why"]
    assert rec_a.launched == []
    missing.mkdir()
    a.claims = OutageClaims.for_config(a.config)   # a new notification; the store answers now
    (d,) = a.handle(alerts())
    assert d["action"] == STARTED and len(rec_a.launched) == 1 and "claim_error" not in d


def race(a, b, alert) -> dict[str, dict]:
    """Books a and b handle `alert` at the same instant, from two threads: each one's decision."""
    gate = threading.Barrier(2)
    got: dict[str, dict] = {}

    def handle(name, book):
        gate.wait()
        got[name] = book.handle(alert)[0]

    threads = [threading.Thread(target=handle, args=(n, book)) for n, book in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return got


def test_two_receivers_at_the_same_instant_launch_exactly_once(tmp_path):
    """Both books handle each alert at the same instant from two threads: one launches, the other records the
    winner's run id. Twenty outages in a row."""
    _, [(a, rec_a), (b, rec_b)] = two_receivers(tmp_path, "auto", cooldown_s=0)
    for i in range(20):
        alert = alerts(fingerprint=f"f{i:03d}")
        got = race(a, b, alert)
        actions = sorted(d["action"] for d in got.values())
        assert actions == [DUPLICATE, STARTED], got
        assert got["a"]["run_id"] == got["b"]["run_id"]
    assert len(rec_a.launched) + len(rec_b.launched) == 20
    assert len({r[1] for r in rec_a.launched + rec_b.launched}) == 20


def test_a_fingerprint_is_never_used_as_a_path():
    assert outage_name("a1b2c3@1700000000") == "a1b2c3@1700000000"
    assert "/" not in outage_name("../../etc@1") and outage_name("../../etc@1").startswith("h-")
    assert claim_key("dr-east", "a1@2") == "alerts/outages/dr-east/a1@2.json"


@pytest.fixture
def seaweed_store(seaweed_s3, monkeypatch, tmp_path):
    """dr-east's store as an S3 bucket on the SeaweedFS test server, credentials in the environment."""
    import secrets

    bucket = f"claims-{secrets.token_hex(6)}"
    seaweed_s3.client().create_bucket(Bucket=bucket)
    for k, v in (("AWS_ACCESS_KEY_ID", seaweed_s3.key_id), ("AWS_SECRET_ACCESS_KEY", seaweed_s3.secret),
                 ("AWS_DEFAULT_REGION", seaweed_s3.region), ("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config")),
                 ("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))):
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {"url": f"s3://{bucket}/drtool", "endpoint_url": seaweed_s3.endpoint, "region": seaweed_s3.region}


@pytest.mark.parametrize("policy", ["auto", "approve"])
def test_on_a_real_s3_server_two_racing_receivers_decide_once(tmp_path, seaweed_store, policy):
    """The same against SeaweedFS: the conditional create (PutObject If-None-Match) holds on a real server, for
    receivers racing at the same instant, and a run queued by one is approved from the other's host."""
    cfg, [(a, rec_a), (b, rec_b)] = two_receivers(tmp_path, policy, store=seaweed_store, cooldown_s=0)
    winners = []
    for i in range(5):
        alert = alerts(fingerprint=f"5{i:03d}")
        got = race(a, b, alert)
        first = STARTED if policy == "auto" else AWAITING
        assert sorted(d["action"] for d in got.values()) == sorted([DUPLICATE, first]), got
        assert got["a"]["run_id"] == got["b"]["run_id"]
        winners.append(got["a"] if got["a"]["action"] == first else got["b"])
    assert len(rec_a.launched) + len(rec_b.launched) == (5 if policy == "auto" else 0)
    store = open_store(cfg.sites["dr-east"].object_stores[0])
    claim = json.loads(store.get(claim_key("dr-east", alerts(fingerprint="5000")[0].key)))
    assert claim["run_id"] == winners[0]["run_id"]
    if policy == "approve":
        run_id = winners[-1]["run_id"]
        loser = a if got["a"]["action"] == DUPLICATE else b
        assert loser.approve(run_id)["action"] == APPROVED


def test_an_approval_that_cannot_be_written_to_the_dr_store_is_refused(tmp_path):
    from drtool.errors import OperationFailed

    _, [(a, _), _] = two_receivers(tmp_path, "approve")
    (queued,) = a.handle(alerts())
    (tmp_path / "dr-store").rename(tmp_path / "dr-store-away")
    a.claims = OutageClaims.for_config(a.config)
    with pytest.raises(OperationFailed, match=f"cannot record the approval of failover {queued['run_id']}"):
        a.approve(queued["run_id"])
    assert next(iter(a.load()["decisions"].values()))["action"] == AWAITING   # nothing changed
