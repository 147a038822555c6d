"""drtool backup on the lab: snapshots taken on the serving host, copied to the DR store, sampled back;
the nightly job installed, run by hand (lock, log, Prometheus textfile), and removed."""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import MODEL, PROD_VERSION, cli_json, run_cli

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
    assert plan["dry_run"] and plan["hosts"] == ["pw-gpu1"] and plan["models"][0]["name"] == MODEL
    assert plan["replicate_to"] == [lab_config.site("dr-east").object_stores[0].url]
    after = cli_json("snapshot", "list", "--store", lab_config.site("prod-west").object_stores[0].url)
    assert len(after["snapshots"]) == len(before["snapshots"])


def test_backup_snapshots_on_the_host_and_copies_to_dr(lab_config, production):
    res = cli_json("backup")
    (snap,) = res["snapshots"]
    assert snap["host"] == "pw-gpu1" and snap["model"] == MODEL and snap["files"] >= 2
    assert snap["bytes_uploaded"] == 0  # same weights as the production snapshot: every blob deduplicated
    # Labelled with the registry's production version, which the weights' own config.json confirmed on the host.
    assert snap["version"] == PROD_VERSION and snap["version_from"] == "config.json"
    (copy,) = res["copies"]
    assert copy["to"] == lab_config.site("dr-east").object_stores[0].url and copy["verify"] == "sample"
    listed = cli_json("snapshot", "list", "--store", copy["to"])
    assert snap["id"] in {s["id"] for s in listed["snapshots"]}
    shown = cli_json("snapshot", "show", snap["id"], "--store", copy["to"])
    assert shown["manifest"]["source_host"] == "pw-gpu1"


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


def test_backup_of_a_standby_site_is_refused(production):
    proc = run_cli("--json", "backup", "--site", "dr-east")
    assert proc.returncode == 1
    assert "only cold standbys" in json.loads(proc.stdout)["message"]
