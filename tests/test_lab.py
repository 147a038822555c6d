"""The foundation on the real lab: Ansible over SSH, engines, a standby's power, DNS, S3, registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from drtool.errors import HostKeyError, OperationFailed
from drtool.execute import docker as dockerx
from drtool.execute import s3
from drtool.execute.ansible import run_playbook
from drtool.execute.dns import Rfc2136Dns
from drtool.providers import get_provider

from .conftest import run_cli

pytestmark = pytest.mark.lab


def test_runner_reaches_primary_and_reads_its_engine(lab_config):
    res = run_playbook(lab_config, "status.yml", extravars={"drtool_targets": "pw-gpu1"})
    info = res.results["pw-gpu1"]
    assert info["engine_version"].startswith("20.10")
    assert info["models_dir"] == "/srv/models"
    # Per-task timings are recorded for reports.
    tasks = {e.task for e in res.events if e.host == "pw-gpu1"}
    assert "Read the Docker engine" in tasks
    assert all(e.duration_s >= 0 for e in res.events)


def test_standby_unreachable_until_its_provider_powers_it_on(lab, lab_config):
    site = lab_config.site("dr-east")
    host = site.hosts[0]
    provider = get_provider(lab_config, site)
    assert provider.state(host) == "off"
    res = run_playbook(lab_config, "status.yml", extravars={"drtool_targets": host.name}, raise_on_failure=False)
    assert host.name in res.unreachable
    try:
        provider.power_on(host)
        assert provider.wait_ready(host, timeout=60) >= 0
        res = run_playbook(lab_config, "status.yml", extravars={"drtool_targets": host.name})
        assert res.results[host.name]["engine_version"].startswith("20.10")
        # Each host has its own model directory and engine: nothing of pw-gpu1's shows here.
        assert res.results[host.name]["containers"] == []
    finally:
        provider.power_off(host)
    assert provider.state(host) == "off"


def test_status_command_reports_hosts_as_json(lab):
    proc = run_cli("--config", str(lab.config_path), "--json", "status")
    assert proc.returncode == 0, proc.stderr
    hosts = {h["host"]: h for h in json.loads(proc.stdout)["hosts"]}
    assert hosts["pw-gpu1"]["reachable"] is True
    assert hosts["de-gpu1"]["reachable"] is False and "cold standby" in hosts["de-gpu1"]["detail"]


def _dig(server: str, name: str) -> str:
    return subprocess.run(["dig", f"@{server}", name, "A", "+short"], capture_output=True, text=True,
                          timeout=20, check=True).stdout.strip()


def test_tsig_update_changes_record_and_dig_reads_it(lab_config, tmp_path):
    target = lab_config.site("prod-west").dns
    dns = Rfc2136Dns(target)
    before = dns.read_a()
    assert before.addresses == ["10.77.0.13"]
    try:
        dns.replace_a(["10.77.0.21"])
        assert _dig(target.server, target.record) == "10.77.0.21"
    finally:
        dns.replace_a(before.addresses, before.ttl)
    assert _dig(target.server, target.record) == "10.77.0.13"

    # A wrong key is refused by the server and nothing changes.
    bad = tmp_path / "bad.key"
    wrong_secret = "A" * 43 + "="
    bad.write_text(f'key "drtool-key" {{ algorithm hmac-sha256; secret "{wrong_secret}"; }};\n')
    from dataclasses import replace

    with pytest.raises(OperationFailed) as info:
        Rfc2136Dns(replace(target, tsig_key_file=str(bad))).replace_a(["10.77.0.22"])
    assert "refused the TSIG signature" in info.value.message
    assert _dig(target.server, target.record) == "10.77.0.13"


@pytest.mark.parametrize("site_name", ["prod-west", "dr-east"])
def test_s3_write_and_read_in_each_sites_bucket(lab_config, site_name):
    store = lab_config.site(site_name).object_stores[0]
    loc = s3.parse_s3_url(store.url)
    assert loc.bucket == f"drtool-{site_name}"
    cli = s3.client(store)
    key = loc.key("lab-test", uuid.uuid4().hex)
    body = uuid.uuid4().bytes * 1000
    cli.put_object(Bucket=loc.bucket, Key=key, Body=body)
    assert cli.get_object(Bucket=loc.bucket, Key=key)["Body"].read() == body
    cli.delete_object(Bucket=loc.bucket, Key=key)


def test_image_pushed_to_prod_registry_is_pulled_by_digest_on_primary(lab, lab_config):
    site = lab_config.site("prod-west")
    eng = dockerx.engine(lab.engine_url("pw-gpu1"))
    busybox = Path("/bin/busybox")
    assert busybox.exists(), "busybox-static is installed by scripts/setup.sh"
    tag = uuid.uuid4().hex[:12]
    repo = f"{site.registry_url}/drtool-test/busybox"
    tar = dockerx.tar_of_files({"bin/busybox": (busybox.read_bytes(), 0o755),
                                "etc/drtool-test": (tag.encode(), 0o644)})
    dockerx.import_tarball(eng, tar, repo, tag, changes=['CMD ["/bin/busybox", "true"]'])
    pushed = dockerx.push(eng, repo, tag)
    eng.images.remove(f"{repo}:{tag}", force=True)  # the pull below must really fetch it

    res = run_playbook(lab_config, "pull_image.yml",
                       extravars={"drtool_targets": "pw-gpu1", "serving_image_ref": pushed.by_digest})
    assert res.results["pw-gpu1"]["image_ref"] == pushed.by_digest
    assert res.results["pw-gpu1"]["pulled"] is True
    repo_digests = eng.images.get(pushed.by_digest).attrs["RepoDigests"]
    assert pushed.by_digest in repo_digests


def test_pull_refuses_a_tag_without_digest(lab_config):
    res = run_playbook(lab_config, "pull_image.yml", raise_on_failure=False,
                       extravars={"drtool_targets": "pw-gpu1", "serving_image_ref": "10.77.0.10:5000/x:latest"})
    assert res.failed and "must be REGISTRY/REPO@sha256" in res.failed[0].message


def test_a_playbook_run_shares_one_connection_per_host_and_leaves_none_behind(lab, lab_config):
    """Each task of a run reuses one SSH connection per host (a master socket in the run's private dir); when the run
    ends its masters are gone, so no ssh process or remote session outlives it."""
    from pathlib import Path as P

    def masters() -> list[str]:
        found = []
        for proc in P("/proc").iterdir():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "drtool-ansible-" in cmd and "[mux]" in cmd:
                found.append(cmd)
        return found

    seen: list[str] = []

    def progress(kind, what):
        if kind == "result" and not seen:
            seen.extend(masters())

    res = run_playbook(lab_config, "status.yml", extravars={"drtool_targets": "pw-gpu1:pw-gpu2"}, progress=progress)
    assert not res.failed and not res.unreachable
    assert seen, "no SSH master while the run went on"
    assert masters() == []


def test_changed_host_key_is_refused(lab, lab_config, tmp_path):
    # A known_hosts whose entry for pw-gpu1 is some other host's key: SSH must refuse to connect.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = (tmp_path / "impostor.pub").read_text().split()[:2]
    lines = []
    for line in Path(lab_config.ssh.known_hosts_file).read_text().splitlines():
        lines.append(f"10.77.0.11 {' '.join(impostor)}" if line.startswith("10.77.0.11 ") else line)
    (tmp_path / "known_hosts").write_text("\n".join(lines) + "\n")
    doc = yaml.safe_load(lab.config_path.read_text())
    doc["ssh"]["known_hosts_file"] = str(tmp_path / "known_hosts")
    cfg_path = tmp_path / "drtool.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))

    from drtool.config import load_config

    with pytest.raises(HostKeyError) as info:
        run_playbook(load_config(cfg_path), "status.yml", extravars={"drtool_targets": "pw-gpu1"})
    assert "pw-gpu1" in info.value.message

    proc = run_cli("--config", str(cfg_path), "status")
    assert proc.returncode == 3, proc.stderr
    assert "host key of pw-gpu1 does not match" in proc.stderr


def test_lab_status_cli_json(lab):
    proc = run_cli("lab", "status", "--json", env={"DRTOOL_LAB_DIR": str(lab.state_dir)})
    assert proc.returncode == 0, proc.stderr
    parts = {p["name"]: p for p in json.loads(proc.stdout)["parts"]}
    assert parts["dns"]["up"] and parts["dns"]["address"].startswith("10.77.0.2")
    assert shutil.which("dig")
