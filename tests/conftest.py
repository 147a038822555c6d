"""Shared fixtures. Lab tests use the real embedded lab, brought up once per test session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    """Tests that take the lab down or kill its daemons run last: the session's lab (and the production
    version set up on it) would not survive them."""
    items.sort(key=lambda item: item.get_closest_marker("lab_reset") is not None)


@pytest.fixture(scope="session")
def lab():
    """The embedded lab, up for the whole session and torn down at its end.

    Lab tests need root (namespaces, sshd, dockerd, BIND). CI runs as root; a developer without root
    gets a hard failure rather than a silent skip, so a broken lab never hides.
    """
    if os.geteuid() != 0:
        pytest.fail("lab tests need root: run `make test` as root")
    from drtool.lab import Lab

    the_lab = Lab()
    the_lab.down()  # start from the canonical lab: its stores keep objects only while it runs
    the_lab.up()
    yield the_lab
    if not os.environ.get("DRTOOL_KEEP_LAB"):
        the_lab.down()


@pytest.fixture(scope="session")
def lab_config(lab):
    from drtool.config import load_config

    return load_config(lab.config_path)


def run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `drtool` console script as a user would."""
    exe = shutil.which("drtool") or str(REPO / ".venv" / "bin" / "drtool")
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([exe, *args], capture_output=True, text=True, env=full_env, check=check, timeout=600)


@pytest.fixture(scope="session")
def moto_server():
    """moto's AWS API server over real HTTP on loopback (EC2, Route 53, S3 ...); yields its endpoint URL."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns test output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@dataclass(frozen=True)
class S3Server:
    """A real S3 server for the tests (SeaweedFS): its endpoint and one identity allowed everything."""

    endpoint: str
    key_id: str
    secret: str
    region: str = "us-east-1"

    def client(self, *, key_id: str | None = None, secret: str | None = None, **config):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=key_id or self.key_id, aws_secret_access_key=secret or self.secret,
                            config=Config(**config) if config else None)


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory):
    """SeaweedFS (`weed mini`) on 127.0.0.1, free ports, for the whole session; the S3 server of the snapshot tests.
    Unlike moto it checks signatures and checksums and keeps connections alive. Killed at the end (its data is
    throwaway; a graceful stop takes ~10 s)."""
    import secrets

    from drtool.lab import seaweed

    tmp = tmp_path_factory.mktemp("seaweed")
    key_id, secret = "drtool-tests", secrets.token_urlsafe(24)
    identities = seaweed.write_identities(tmp / "s3.json", {
        "tests": (key_id, secret, ["Admin", "Read", "List", "Tagging", "Write"])})
    server = seaweed.start(tmp / "server", identities)
    yield S3Server(server.endpoint, key_id, secret)
    server.stop(graceful=False)


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """Point the standard AWS environment at the moto server (what an operator's env would do for AWS)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


def cli_json(*args: str, env: dict | None = None) -> dict:
    """Run a drtool command with --json and return its result; fail the test with its stderr otherwise."""
    import json

    proc = run_cli("--json", *args, env=env)
    assert proc.returncode == 0, (f"drtool {' '.join(args)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


MODEL = "asr-demo"
PROD_VERSION = "1.0.0"
FRONT = "10.77.0.13"                 # pw-lb: prod-west's Nginx, where the production record points
PW_HOSTS = ("pw-gpu1", "pw-gpu2")    # prod-west's two GPU hosts behind it
STANDBYS = ("de-gpu1", "de-gpu2", "de-gpu3", "de-gpu4")  # dr-east's cold standbys


@pytest.fixture(scope="session")
def production(lab, lab_config):
    """The lab serving a real production version, built and registered the way an operator would:
    image built offline and pushed to both registries, weights on both prod-west GPU hosts, snapshotted there and
    replicated to dr-east, the version registered (its canary computed by running the image) and promoted, and
    `drtool failback --site prod-west` bringing both instances and their Nginx (pw-lb) up, each checked against
    the registry, with the record at the Nginx."""
    from drtool.actions.registry import site_registry
    from drtool.model.demo import write_demo_weights

    image = cli_json("image", "build", "--model", MODEL, "--version", PROD_VERSION, "--push")
    prod, dr = lab_config.site("prod-west"), lab_config.site("dr-east")
    for h in prod.hosts:
        write_demo_weights(lab.state_dir / "hosts" / h.name / "srv" / "models" / MODEL, size_mb=20, seed=0,
                           model=MODEL, version=PROD_VERSION, overwrite=True)
    weights = lab.state_dir / "hosts" / "pw-gpu1" / "srv" / "models" / MODEL
    snap = cli_json("snapshot", "create", str(weights), "--store", prod.object_stores[0].url, "--model", MODEL,
                    "--version", PROD_VERSION)
    cli_json("snapshot", "replicate", snap["id"], "--from", prod.object_stores[0].url,
             "--to", dr.object_stores[0].url)
    cli_json("registry", "register", "--model", MODEL, "--version", PROD_VERSION, "--snapshot", snap["id"],
             "--image", image["pushed"][prod.registry_url])
    cli_json("registry", "promote", MODEL, PROD_VERSION, "--reason", "lab production")
    entry = site_registry(lab_config, prod).require_version(MODEL, PROD_VERSION)
    back = cli_json("failback", "--site", "prod-west", "--yes")
    assert back["status"] == "done", back
    assert dig() == FRONT
    return {"image": image, "snapshot": snap, "entry": entry, "weights": weights}


def power_off_primary(lab) -> None:
    """prod-west down: both GPU hosts off (with one left, its Nginx keeps the site serving)."""
    for h in PW_HOSTS:
        lab.power_off(h)


def dig(name: str = "model.drlab.test") -> str:
    """The record as the lab's authoritative server answers it."""
    return subprocess.run(["dig", "@10.77.0.2", name, "A", "+short"], capture_output=True, text=True,
                          timeout=20, check=True).stdout.strip()


@pytest.fixture
def state(tmp_path, monkeypatch):
    """drtool's own state (journals, reports) in a fresh directory per test."""
    monkeypatch.setenv("DRTOOL_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def back_to_production(lab, production):
    """After each test: the primary on and serving, DNS at it, standbys cold, faults undone."""
    yield
    for h in STANDBYS:
        lab.break_engine(h, False)
    for h in (*PW_HOSTS, "pw-lb"):
        lab.set_link(h, True)
        lab.power_on(h)
    proc = run_cli("failback", "--site", "prod-west", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for h in STANDBYS:  # failback cools only standbys it finds on; make sure
        if lab.is_powered(h):
            lab.power_off(h)
    assert dig() == FRONT


def wait_for(predicate, timeout: float = 60, what: str = "condition", poll: float = 0.02):
    """Call predicate() until it returns something truthy, and return that; fail at the deadline (no fixed
    sleeps as synchronisation: the poll only paces the loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ended_report(path: Path, timeout: float) -> dict:
    """A run's report (`runs/RUN.report.json`, written when the run starts and again when it ends) once it ended."""
    def ended():
        doc = json.loads(path.read_text()) if path.exists() else {}
        return doc if doc.get("ended") else None
    return wait_for(ended, timeout=timeout, poll=1, what=f"{path.name} to say the run ended")


@dataclass
class StoredBlob:
    """A snapshot's largest blob, as an object of an S3 store: read, damaged and put back by lab tests."""

    client: object
    bucket: str
    key: str
    digest: str
    good: bytes

    def read(self) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()

    def overwrite(self, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data)

    def flip_one_bit(self) -> None:
        bad = bytearray(self.good)
        bad[len(bad) // 2] ^= 0x01
        self.overwrite(bytes(bad))

    def put_back(self) -> None:
        self.overwrite(self.good)


def largest_blob(store, snapshot_id: str) -> StoredBlob:
    """The largest blob of `snapshot_id` in the S3 store `store` (config ObjectStore), with its good bytes."""
    from drtool.execute import s3
    from drtool.snapshot.stores import blob_key

    loc, client = s3.parse_s3_url(store.url), s3.client(store)
    manifest = cli_json("snapshot", "show", snapshot_id, "--store", store.url)["manifest"]
    digest = max((p for f in manifest["files"] for p in f["parts"]), key=lambda p: p["size"])["sha256"]
    key = loc.key(blob_key(digest))
    good = client.get_object(Bucket=loc.bucket, Key=key)["Body"].read()
    return StoredBlob(client, loc.bucket, key, digest, good)
