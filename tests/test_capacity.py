"""The drill's capacity check: real Locust (subprocess) against the real model server (server.py on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from drtool.drill.capacity import run_load
from drtool.errors import OperationFailed, UsageError
from drtool.model.demo import demo_inputs, load_demo_model, predict, write_demo_weights

from .conftest import REPO

SERVER = REPO / "images" / "model-server" / "server.py"
FRAMES = 20  # small requests keep the file fast on 2 CPUs shared by server and load
LOOSE_SLO = {"p95_ms": 5000, "error_rate": 0.0, "min_rps": 1}


def _write_manifest(weights: Path, dest: Path) -> None:
    """A snapshot manifest of every file in `weights` (copied in small from tests/test_model_server.py)."""
    files = [{"path": p.relative_to(weights).as_posix(), "size": p.stat().st_size,
              "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(weights.rglob("*")) if p.is_file()]
    dest.write_text(json.dumps({"schema": "drtool.snapshot/1", "model": "demo-asr", "version": "1.0.0",
                                "files": files}))


class _Server:
    """server.py as its own process on a free loopback port; stderr is drained so it never blocks."""

    def __init__(self, model_dir: Path, manifest: Path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_DIR", "SNAPSHOT_", "PORT", "HOST"))}
        env.update({"MODEL_DIR": str(model_dir), "SNAPSHOT_MANIFEST": str(manifest), "HOST": "127.0.0.1",
                    "PORT": "0", "VERIFY_RETRY_SECONDS": "0.2", "PYTHONPATH": str(REPO)})
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port: int | None = None
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "listening":
                self.port = event["port"]

    def wait_ready(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.port:
                url = f"http://127.0.0.1:{self.port}"
                try:
                    if requests.get(url + "/readyz", timeout=5).status_code == 200:
                        return url
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"model server not ready within {timeout}s:\n{''.join(self.log)[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weights")
    write_demo_weights(d, size_mb=4, seed=5, version="1.0.0")
    return d


@pytest.fixture(scope="module")
def server_url(weights, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("snapshot") / "manifest.json"
    _write_manifest(weights, manifest)
    server = _Server(weights, manifest)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def canary(weights) -> dict:
    """What the registry stores: the canary request body and the outputs drtool recorded for it."""
    body = {"inputs": demo_inputs(frames=FRAMES, seed=100)}
    expected = predict(load_demo_model(weights, device="cpu"), body["inputs"]).tolist()
    return {"input": body, "expected": expected, "tolerance": 0.0}


@pytest.fixture(scope="module")
def inputs() -> list[dict]:
    return [{"inputs": demo_inputs(frames=FRAMES, seed=s)} for s in range(5)]


def test_bounded_run_passes_a_loose_slo(server_url, canary, inputs, tmp_path):
    result = run_load(server_url, requests_total=200, concurrency=4, inputs=inputs, canary=canary,
                      slo=LOOSE_SLO, timeout_s=60, workdir=tmp_path)
    assert result["passed"], result["reasons"]
    assert result["reasons"] == []
    # The run stops itself once every claimed request is answered: the count is exact, not locust's rounding.
    assert result["requests"] == 200
    assert result["concurrency"] == 4
    assert result["error_rate"] == 0
    assert result["rps"] > 0 and result["seconds"] > 0 and result["ok_rps"] == result["rps"]
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["canary_checked"] == 20  # slots 0, 10, ..., 190
    assert result["canary_mismatches"] == 0
    assert result["slo"] == LOOSE_SLO
    # Locust's own final report agrees, row by row; the parameters file is private.
    report = {e["name"]: e for e in json.loads((tmp_path / "locust.json").read_text())}
    assert report["/predict [canary]"]["num_requests"] == 20
    assert sum(e["num_requests"] for e in report.values()) == 200
    assert sum(e["num_failures"] for e in report.values()) == 0
    assert (tmp_path / "capacity-params.json").stat().st_mode & 0o777 == 0o600


def test_wrong_canary_output_fails_the_check(server_url, canary, inputs, tmp_path):
    wrong = {**canary, "expected": [[v + 0.5 for v in frame] for frame in canary["expected"]]}
    result = run_load(server_url, requests_total=40, concurrency=2, inputs=inputs, canary=wrong,
                      slo={}, timeout_s=60, workdir=tmp_path)
    assert not result["passed"]
    assert result["canary_checked"] == 4
    assert result["canary_mismatches"] == 4
    assert result["error_rate"] == pytest.approx(4 / 40)  # mismatches are failures in locust's stats too
    assert len(result["reasons"]) == 1  # no SLO given: the canary alone fails the check
    reason = next(r for r in result["reasons"] if r.startswith("canary"))
    assert "4 of 4" in reason and "max abs difference" in reason
    assert any(f["error"].endswith("canary mismatch") and f["count"] == 4 for f in result["failures"])


def test_impossible_latency_target_fails_naming_p95(server_url, canary, inputs, tmp_path):
    result = run_load(server_url, requests_total=20, concurrency=2, inputs=inputs, canary=canary,
                      slo={"p95_ms": 0.001, "error_rate": 0.01}, timeout_s=60, workdir=tmp_path)
    assert not result["passed"]
    assert result["canary_mismatches"] == 0
    assert len(result["reasons"]) == 1 and "p95" in result["reasons"][0]
    assert "0.001" in result["reasons"][0]


def test_time_bound_stops_an_endless_run(server_url, canary, inputs, tmp_path):
    started = time.monotonic()
    result = run_load(server_url, requests_total=1_000_000, concurrency=2, inputs=inputs, canary=canary,
                      slo={}, timeout_s=4, workdir=tmp_path)
    assert time.monotonic() - started < 15
    assert not result["passed"]
    assert 0 < result["requests"] < 1_000_000
    assert result["reasons"] == [f"time bound reached: only {result['requests']} of 1000000 requests answered"]


def test_closed_port_is_a_failed_check_not_an_exception(canary, inputs, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: connections are refused
    started = time.monotonic()
    result = run_load(f"http://127.0.0.1:{port}", requests_total=30, concurrency=2, inputs=inputs,
                      canary=canary, slo={"error_rate": 0.01}, timeout_s=60, workdir=tmp_path)
    assert time.monotonic() - started < 20
    assert not result["passed"]
    assert result["requests"] == 30 and result["error_rate"] == 1.0
    assert result["canary_checked"] == 0
    assert any("every request failed" in r and "refused" in r.lower() for r in result["reasons"])
    assert any(r.startswith("error_rate 1") for r in result["reasons"])
    assert result["ok_rps"] == 0


def test_locust_failing_otherwise_raises_with_its_stderr(canary, inputs, tmp_path, monkeypatch):
    broken = tmp_path / "broken_locustfile.py"
    broken.write_text("raise RuntimeError('locustfile exploded on import')\n")
    monkeypatch.setattr("drtool.drill.capacity.LOCUSTFILE", broken)
    with pytest.raises(OperationFailed) as info:
        run_load("http://127.0.0.1:9", requests_total=5, concurrency=1, inputs=inputs, canary=canary,
                 slo={}, timeout_s=30, workdir=tmp_path / "run")
    assert "exited with code" in info.value.message
    assert any("locustfile exploded on import" in line for line in info.value.details)


def test_missing_locust_raises(canary, inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OperationFailed, match="locust is not installed"):
        run_load("http://127.0.0.1:9", requests_total=5, concurrency=1, inputs=inputs, canary=canary,
                 slo={}, workdir=tmp_path)


@pytest.mark.parametrize("bad", [{"slo": {"p95": 100}}, {"requests_total": 0}, {"inputs": []},
                                 {"canary": {"input": {"inputs": []}, "expected": None}},
                                 {"base_url": "127.0.0.1:8080"}])
def test_bad_parameters_are_usage_errors(bad, canary, inputs, tmp_path):
    args = {"base_url": "http://127.0.0.1:9", "requests_total": 5, "concurrency": 1, "inputs": inputs,
            "canary": canary, "slo": {}, "workdir": tmp_path, **bad}
    with pytest.raises(UsageError):
        run_load(args.pop("base_url"), **args)


def test_importing_the_capacity_check_keeps_gevent_out():
    """Locust monkeypatches with gevent; drtool's process must never import it."""
    code = "import sys, drtool.drill.capacity; print(sorted({'locust', 'gevent'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
