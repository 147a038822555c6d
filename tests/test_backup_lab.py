"""drtool backup on the lab: snapshots taken on the serving host, copied to the DR store, sampled back;
the nightly job installed, run by hand (lock, log, Prometheus textfile), and removed."""

from __future__ import annotations

import json
import subprocess

import pytest

from drtool.actions import failover

from .conftest import MODEL, PROD_VERSION, cli_json, largest_blob, run_cli

pytestmark = pytest.mark.lab


def ssh(lab, command: str) -> subprocess.CompletedProcess:
    sd = lab.state_dir
    return subprocess.run(
        ["ssh", "-i", str(sd / "ssh/id_ed25519"), "-o", f"UserKnownHostsFile={sd / 'ssh/known_hosts'}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ControlMaster=no", "root@10.77.0.11",
         command], capture_output=True, text=True, timeout=300)


def test_dry_run_names_what_would_happen_and_does_nothing(lab_config, production):
    before = cli_json("snapshot", "list", "--store", lab_config.site("prod-west").object_stores[0].url)
    plan = cli_json("backup", "--dry-run")
    assert plan["dry_run"] and plan["hosts"] == ["pw-gpu1", "pw-gpu2"] and plan["models"][0]["name"] == MODEL
    assert plan["replicate_to"] == [lab_config.site("dr-east").object_stores[0].url]
    after = cli_json("snapshot", "list", "--store", lab_config.site("prod-west").object_stores[0].url)
    assert len(after["snapshots"]) == len(before["snapshots"])


def test_backup_snapshots_on_the_host_and_copies_to_dr(lab_config, production):
    res = cli_json("backup")
    by_host = {s["host"]: s for s in res["snapshots"]}
    assert sorted(by_host) == ["pw-gpu1", "pw-gpu2"]  # each GPU host's own weights, each its own snapshot
    for snap in by_host.values():
        assert snap["model"] == MODEL and snap["files"] >= 2
        assert snap["bytes_uploaded"] == 0  # same weights as the production snapshot: every blob deduplicated
        # Labelled with the registry's production version, which the weights' own config.json confirmed there.
        assert snap["version"] == PROD_VERSION and snap["version_from"] == "config.json"
    dr_url = lab_config.site("dr-east").object_stores[0].url
    assert {c["snapshot"] for c in res["copies"]} == {s["id"] for s in by_host.values()}
    assert all(c["to"] == dr_url and c["verify"] == "sample" for c in res["copies"])
    listed = {s["id"] for s in cli_json("snapshot", "list", "--store", dr_url)["snapshots"]}
    for host, snap in by_host.items():
        assert snap["id"] in listed
        assert cli_json("snapshot", "show", snap["id"], "--store", dr_url)["manifest"]["source_host"] == host


def test_nightly_job_installs_runs_with_lock_and_metrics_and_uninstalls(lab, lab_config, production):
    store = lab_config.site("prod-west").object_stores[0].url
    before = {s["id"] for s in cli_json("snapshot", "list", "--store", store, "--model", MODEL)["snapshots"]}
    cli_json("backup", "--install-schedule")
    srv = lab.state_dir / "hosts" / "pw-gpu1" / "srv" / "drtool"
    cron = (srv / "cron.d" / "drtool-backup").read_text()
    assert "/srv/drtool/sbin/drtool-nightly-snapshot" in cron and cron.split("\n")[3].startswith("15 2 ")
    # Run it on the host as cron would (no jitter): first while another run holds the lock (this shell holds it, so
    # the outcome does not hang on how long a run takes), then with the lock free.
    log_path = srv / "log" / "drtool-backup.log"
    seen = log_path.read_text() if log_path.exists() else ""
    r = ssh(lab, "set -e; exec 8>/srv/drtool/drtool-backup.lock; flock -n 8; "
                 "DRTOOL_NO_JITTER=1 /srv/drtool/sbin/drtool-nightly-snapshot; exec 8>&-; "
                 "DRTOOL_NO_JITTER=1 /srv/drtool/sbin/drtool-nightly-snapshot")
    assert r.returncode == 0, r.stderr
    log = log_path.read_text()
    assert log.startswith(seen)
    held, _, rest = log[len(seen):].partition("another snapshot run holds")
    assert rest, log
    assert " start" not in held and f"snapshot {MODEL} end" in rest  # refused outright, then the free run ran
    metrics = (srv / "textfile" / f"drtool_backup_{MODEL}.prom").read_text()
    line = next(ln for ln in metrics.splitlines() if ln.startswith("drtool_backup_last_success_timestamp_seconds"))
    assert float(line.split()[-1]) > 0
    assert f'drtool_backup_verify_failures_total{{model="{MODEL}"}} 0.0' in metrics
    # No registry on the host: the job labels its snapshot from the weights' config.json, so a failover (which
    # restores the newest snapshot of the production version) can choose it.
    (new,) = [s for s in cli_json("snapshot", "list", "--store", store, "--model", MODEL)["snapshots"]
              if s["id"] not in before]
    assert new["version"] == PROD_VERSION
    cli_json("backup", "--remove-schedule")
    assert not (srv / "cron.d" / "drtool-backup").exists()


@pytest.mark.nightly   # a drill through the alert chain and its failback: about 2 minutes
def test_nightly_snapshot_reaches_dr_and_a_drill_restores_it_and_measures_rpo_from_it(lab, lab_config, production,
                                                                                       tmp_path, monkeypatch):
    """The nightly job is what sets the RPO: its snapshot carries the served version, is copied to the DR store and
    read back there, and the next failover (here a primary-down drill through the alert chain) restores it."""
    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    prod_store = lab_config.site("prod-west").object_stores[0].url
    dr_store = lab_config.site("dr-east").object_stores[0].url
    before = {s["id"] for s in cli_json("snapshot", "list", "--store", prod_store, "--model", MODEL)["snapshots"]}
    cli_json("backup", "--install-schedule")
    try:
        script = (lab.state_dir / "hosts" / "pw-gpu1" / "srv" / "drtool" / "sbin" / "drtool-nightly-snapshot")
        text = script.read_text()
        assert f"--to {dr_store}" in text and "http://127.0.0.1:8080/version" in text
        r = ssh(lab, "DRTOOL_NO_JITTER=1 /srv/drtool/sbin/drtool-nightly-snapshot")
        assert r.returncode == 0, r.stderr
    finally:
        cli_json("backup", "--remove-schedule")
    log = (lab.state_dir / "hosts" / "pw-gpu1" / "srv" / "drtool" / "log" / "drtool-backup.log").read_text()
    assert "did not say its version" not in log and "has no version label" not in log
    (nightly,) = [s for s in cli_json("snapshot", "list", "--store", prod_store, "--model", MODEL)["snapshots"]
                  if s["id"] not in before]
    assert nightly["version"] == PROD_VERSION
    copy = cli_json("snapshot", "show", nightly["id"], "--store", dr_store)["manifest"]
    assert copy["version"] == PROD_VERSION and copy["source_host"] == "pw-gpu1"
    newest_at_dr = max((s for s in cli_json("snapshot", "list", "--store", dr_store, "--model", MODEL)["snapshots"]
                        if s["version"] == PROD_VERSION), key=lambda s: s["created"])
    assert newest_at_dr["id"] == nightly["id"]

    proc = run_cli("--json", "drill", "--site", "dr-east", "--scenario", "primary-down",
                   "--report", str(tmp_path / "report"))
    result = json.loads(proc.stdout)
    assert proc.returncode == 0, json.dumps(result, indent=1)[:4000]
    (sc,) = result["scenarios"]
    assert sc["services"][MODEL]["snapshot"]["restored"] == nightly["id"]
    assert sc["services"][MODEL]["snapshot"]["created"] == copy["created"]
    expected_rpo = failover.snapshot_age(copy["created"], sc["fault_at"])
    assert sc["rpo_s"] == expected_rpo and 0 < sc["rpo_s"] < 3600


def test_backup_of_a_standby_site_is_refused(production):
    proc = run_cli("--json", "backup", "--site", "dr-east")
    assert proc.returncode == 1
    assert "only cold standbys" in json.loads(proc.stdout)["message"]


def test_a_blob_damaged_at_dr_is_found_and_repaired_by_the_next_backup(lab_config, production):
    """One blob the production snapshots share, overwritten in dr-east's bucket with random bytes of the same length:
    the next `drtool backup` finds it (the server's SHA-256 of the object, or a read-back where it keeps none), sends
    it again in the same run, names it, and each new DR snapshot then verifies with every byte read."""
    import os

    dr = lab_config.site("dr-east").object_stores[0]
    blob = largest_blob(dr, production["snapshot"]["id"])
    blob.overwrite(os.urandom(len(blob.good)))
    try:
        res = cli_json("backup")
        repaired = {d for c in res["copies"] for d in c.get("repaired", [])}
        assert blob.digest in repaired, res["copies"]
        for copy in res["copies"]:
            proc = run_cli("--json", "snapshot", "verify", copy["snapshot"], "--store", dr.url, "--read-data")
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert blob.read() == blob.good
    finally:
        blob.put_back()
