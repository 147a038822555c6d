"""The embedded lab itself: real probes, per-host SSH/filesystem/engine, power, partition, repair, down.

Uses the session's lab (tests/conftest.py); tests that take parts down bring them back before they end.
DNS, registry and S3 are exercised through drtool's own code in tests/test_lab.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from drtool.lab.topology import HOSTS

pytestmark = pytest.mark.lab

STANDBY_PARTS = {p for h in ("de-gpu1", "de-gpu2", "de-gpu3", "de-gpu4") for p in (h, f"engine@{h}")}
ALL_PARTS = {"network", "dns", "registry@prod-west", "s3@prod-west", "registry@dr-east", "s3@dr-east",
             "pw-gpu1", "engine@pw-gpu1", "pw-gpu2", "engine@pw-gpu2", "pw-lb", "engine@pw-lb"} | STANDBY_PARTS


def _parts(lab) -> dict:
    return {p.name: p for p in lab.status()}


def _ssh(lab, address: str, command: str) -> subprocess.CompletedProcess:
    sd = lab.state_dir
    return subprocess.run(
        ["ssh", "-i", str(sd / "ssh/id_ed25519"), "-o", f"UserKnownHostsFile={sd / 'ssh/known_hosts'}",
         "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
         "-o", "ControlMaster=no", f"root@{address}", command],
        capture_output=True, text=True, timeout=60)


def test_all_but_standbys_are_up(lab):
    parts = _parts(lab)
    assert set(parts) == ALL_PARTS
    for name, part in parts.items():
        if name in STANDBY_PARTS:
            assert not part.up and part.detail == "powered off", part
        else:
            assert part.up, part
    assert parts["s3@dr-east"].detail == "bucket drtool-dr-east"
    assert parts["pw-gpu1"].address == "10.77.0.11:22"
    assert parts["registry@prod-west"].address == "https://10.77.0.10:5000"


def test_up_again_is_idempotent_and_fast(lab):
    parts = {p.name: p for p in lab.up()}
    assert all(p.up for n, p in parts.items() if n not in STANDBY_PARTS)


def test_config_and_secrets(lab):
    import yaml

    cfg = yaml.safe_load(lab.config_path.read_text())
    sd = str(lab.state_dir)
    assert cfg["ssh"]["known_hosts_file"] == f"{sd}/ssh/known_hosts"
    assert cfg["sites"]["dr-east"]["standby_pool"]["hosts"][1] == {"name": "de-gpu2", "address": "10.77.0.22"}
    assert cfg["sites"]["prod-west"]["container_registry"]["url"] == "10.77.0.10:5000"
    for secret in ("ssh/id_ed25519", "pki/ca.key", "dns/tsig.key", "s3/keys/prod-west.credentials",
                   "s3/keys/dr-east.credentials"):
        assert (lab.state_dir / secret).stat().st_mode & 0o077 == 0, secret
    assert re.match(r'key "drtool-key" \{\s*algorithm hmac-sha256;\s*secret "[^"]+";\s*\};',
                    (lab.state_dir / "dns/tsig.key").read_text())
    lines = (lab.state_dir / "ssh/known_hosts").read_text().splitlines()
    assert [ln.split()[:2] for ln in lines] == [[h.address, "ssh-ed25519"] for h in HOSTS.values()]


def test_each_site_store_knows_only_its_own_key(lab):
    """Least privilege between the sites: dr-east's key cannot list, overwrite or delete production's snapshots
    (prod-west's store does not know it), and the reverse; each key works on its own store."""
    import yaml
    from botocore.exceptions import ClientError

    from drtool.config import ObjectStore
    from drtool.execute import s3 as s3x

    cfg = yaml.safe_load(lab.config_path.read_text())
    stores = {name: site["object_stores"][0] for name, site in cfg["sites"].items()}
    assert stores["prod-west"]["credentials_file"] != stores["dr-east"]["credentials_file"]

    def client(store_of: str, key_of: str):
        """drtool's own client for `store_of`'s store, signed with `key_of`'s key."""
        return s3x.client(ObjectStore(**{**stores[store_of], "credentials_file": stores[key_of]["credentials_file"]}))

    def bucket(name: str) -> str:
        return stores[name]["url"].removeprefix("s3://").split("/")[0]

    for site in stores:
        client(site, site).list_objects_v2(Bucket=bucket(site), MaxKeys=1)
    for store_of, key_of in (("prod-west", "dr-east"), ("dr-east", "prod-west")):
        s3, name = client(store_of, key_of), bucket(store_of)
        for op, kwargs in (("list_objects_v2", {"MaxKeys": 1}),
                           ("put_object", {"Key": "drtool/intruder", "Body": b"x"}),
                           ("delete_object", {"Key": "drtool/anything"})):
            with pytest.raises(ClientError) as err:
                getattr(s3, op)(Bucket=name, **kwargs)
            assert err.value.response["Error"]["Code"] in ("InvalidAccessKeyId", "AccessDenied"), (op, store_of)


def test_ssh_reaches_a_host_with_its_own_srv_and_engine(lab):
    marker = f"smoke-{os.getpid()}"
    r = _ssh(lab, "10.77.0.11",
             f"hostname && touch /srv/{marker} && docker -H unix:///run/drtool/docker.sock info --format '{{{{.ID}}}}'")
    assert r.returncode == 0, r.stderr
    name, engine_id = r.stdout.split()[:2]
    assert name == "pw-gpu1" and engine_id
    own = lab.state_dir / "hosts/pw-gpu1/srv" / marker
    try:
        assert own.exists()
        assert not Path("/srv", marker).exists()
    finally:
        own.unlink(missing_ok=True)


def test_power_on_and_off_a_standby(lab):
    from drtool.lab import netns, probes

    assert not lab.is_powered("de-gpu1")
    lab.power_on("de-gpu1")
    try:
        assert lab.is_powered("de-gpu1")
        r = _ssh(lab, "10.77.0.21", "hostname && ls -d /srv && test -S /run/drtool/docker.sock")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == "de-gpu1"
        lab.up()                          # must keep it on, and keep de-gpu2 off
        assert lab.is_powered("de-gpu1") and not lab.is_powered("de-gpu2")
    finally:
        lab.power_off("de-gpu1")
    assert not lab.is_powered("de-gpu1")
    assert probes.ssh_banner("10.77.0.21", timeout=1) is None
    assert netns.pids("drlab-de-gpu1") == []


def test_partition_and_reconnect(lab):
    from drtool.lab import probes

    lab.set_link("pw-gpu1", False)
    try:
        assert probes.ssh_banner("10.77.0.11", timeout=1) is None
        assert "partitioned" in _parts(lab)["pw-gpu1"].detail
    finally:
        lab.set_link("pw-gpu1", True)
    assert probes.ssh_banner("10.77.0.11", timeout=3) is not None


@pytest.mark.lab_reset
def test_up_repairs_killed_daemons(lab):
    pids = lab.state_dir / "pids"
    for part in ("named", "registry-prod-west", "dockerd-pw-gpu1", "sshd-pw-gpu1"):
        os.kill(int((pids / f"{part}.pid").read_text()), signal.SIGKILL)
    time.sleep(0.5)
    down = {n for n, p in _parts(lab).items() if not p.up}
    assert {"dns", "registry@prod-west", "engine@pw-gpu1", "pw-gpu1"} <= down
    parts = {p.name: p for p in lab.up()}
    assert all(p.up for n, p in parts.items() if n not in STANDBY_PARTS), parts


@pytest.mark.lab_reset
def test_down_leaves_nothing_behind_and_repeats(lab):
    from drtool.lab import netns, procs

    lab.down()
    assert netns.list_namespaces("drlab-") == []
    assert netns.lab_veths() == []
    assert not netns.bridge_exists()
    assert procs.tagged_pids(None) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(lab.state_dir) not in mounts and " /run/drtool " not in mounts
    assert not any(p.up for p in lab.status())
    assert not lab.config_path.exists()   # no stale config pointing drtool at addresses that are gone
    lab.down()                            # twice is fine
    for _ in range(2):                    # and up twice in a row both succeed
        parts = {p.name: p for p in lab.up()}
        assert all(p.up for n, p in parts.items() if n not in STANDBY_PARTS), parts
    assert lab.config_path.exists()
