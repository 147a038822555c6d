"""The demo model and the model server: real weights on disk, server.py as a real process on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from drtool.model.demo import (
    CONFIG_NAME,
    demo_inputs,
    load_demo_model,
    main,
    predict,
    read_config,
    write_demo_weights,
)

from .conftest import REPO

SERVER = REPO / "images" / "model-server" / "server.py"
MODEL, VERSION = "demo-asr", "2.1.0"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(weights: Path, dest: Path, model: str = MODEL, version: str = VERSION) -> str:
    """A snapshot manifest of every file in `weights` (but the manifest itself); returns the snapshot id."""
    files = [{"path": p.relative_to(weights).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(weights.rglob("*")) if p.is_file() and p != dest]
    raw = json.dumps({"schema": "drtool.snapshot/1", "model": model, "version": version, "files": files,
                      "created": "2026-01-01T00:00:00Z"}, indent=2).encode()
    dest.write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


class Server:
    """server.py in its own process; stderr JSON lines collected as they come."""

    def __init__(self, model_dir: Path, manifest: Path, **extra_env: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_DIR", "SNAPSHOT_", "PORT", "HOST"))}
        env.update({"MODEL_DIR": str(model_dir), "SNAPSHOT_MANIFEST": str(manifest), "HOST": "127.0.0.1",
                    "PORT": "0", "VERIFY_RETRY_SECONDS": "0.2", "IMAGE_VERSION": "test-1.2.3",
                    "IMAGE_GIT_SHA": "abc123", "PYTHONPATH": str(REPO), **extra_env})
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        listening = self.wait_event("listening", timeout=60)
        self.url = f"http://127.0.0.1:{listening['port']}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._lock:
                self.raw.append(line)
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.events.append({"event": "NOT_JSON", "line": line})

    def find(self, event: str) -> list[dict]:
        with self._lock:
            return [e for e in self.events if e.get("event") == event]

    def wait_event(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find(event)
            if found:
                return found[0]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {event!r} event within {timeout}s; log:\n{''.join(self.raw)[-4000:]}")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"not ready within {timeout}s; log:\n{''.join(self.raw)[-4000:]}")

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kwargs)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weights")
    write_demo_weights(d, size_mb=6, seed=3, shards=2, version=VERSION)
    return d


@pytest.fixture(scope="module")
def good(weights, tmp_path_factory):
    manifest = tmp_path_factory.mktemp("manifest") / "manifest.json"
    snapshot_id = write_manifest(weights, manifest)
    server = Server(weights, manifest)
    server.wait_ready()
    server.snapshot_id = snapshot_id
    yield server
    assert server.stop() == 0, "".join(server.raw)[-2000:]
    assert server.find("stopped"), "SIGTERM must end the server cleanly"


def _copy_weights(weights: Path, dest: Path) -> Path:
    shutil.copytree(weights, dest)
    return dest


# -- the demo model ------------------------------------------------------------------------------------------
def test_weights_are_deterministic_sized_and_sharded(tmp_path):
    # 12 MiB over 3 shards: the ~3.5 MiB network fits in shard 1, padding evens out the rest.
    a = write_demo_weights(tmp_path / "a", size_mb=12, seed=1, shards=3)
    b = write_demo_weights(tmp_path / "b", size_mb=12, seed=1, shards=3)
    c = write_demo_weights(tmp_path / "c", size_mb=12, seed=2, shards=3)
    assert [p.name for p in a] == [*(f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)), CONFIG_NAME]
    assert [sha256_file(p) for p in a] == [sha256_file(p) for p in b]
    assert all(sha256_file(x) != sha256_file(y) for x, y in zip(a[:3], c[:3], strict=True))
    config = read_config(tmp_path / "a")
    assert config["tensor_bytes"] == 12 * 2**20
    shard_bytes = sum(p.stat().st_size for p in a[:3])
    assert 12 * 2**20 <= shard_bytes < 12 * 2**20 + 64 * 1024  # tensor data plus small safetensors headers
    sizes = [p.stat().st_size for p in a[:3]]
    assert max(sizes) - min(sizes) < 64 * 1024, f"shards should be balanced: {sizes}"
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in a), "files must be readable by the server's user"


def test_weights_refuse_bad_requests(tmp_path):
    write_demo_weights(tmp_path / "w", size_mb=4, seed=0)
    with pytest.raises(FileExistsError):
        write_demo_weights(tmp_path / "w", size_mb=4, seed=0)
    write_demo_weights(tmp_path / "w", size_mb=4, seed=0, overwrite=True, shards=2)
    assert sorted(p.name for p in (tmp_path / "w").glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    with pytest.raises(ValueError, match="below the network"):
        write_demo_weights(tmp_path / "tiny", size_mb=1)


def test_predict_is_deterministic_and_load_checks_tensors(weights, tmp_path):
    model = load_demo_model(weights, device="cpu")
    x = demo_inputs(frames=40, seed=9)
    y1, y2 = predict(model, x), predict(load_demo_model(weights, device="cpu"), x)
    assert y1.shape == (40, 32) and y1.dtype == torch.float32
    assert torch.equal(y1, y2)
    batch = predict(model, [x, demo_inputs(frames=40, seed=10)])
    assert batch.shape == (2, 40, 32)

    broken = _copy_weights(weights, tmp_path / "broken")
    config = json.loads((broken / CONFIG_NAME).read_text())
    config["weight_map"]["conv.extra"] = config["shards"][0]
    (broken / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="conv.extra"):
        load_demo_model(broken, device="cpu")


def test_cli_write(tmp_path):
    assert main(["write", str(tmp_path / "w"), "--size-mb", "4", "--seed", "5", "--version", "9.9.9"]) == 0
    config = read_config(tmp_path / "w")
    assert (config["version"], config["seed"], config["model"]) == ("9.9.9", 5, "demo-asr")


# -- the server ----------------------------------------------------------------------------------------------
def test_ready_only_after_manifest_verified(weights, tmp_path):
    manifest = tmp_path / "later" / "manifest.json"
    server = Server(weights, manifest)
    try:
        assert server.get("/healthz").status_code == 200
        server.wait_event("not_ready")
        waiting = server.get("/readyz")
        assert waiting.status_code == 503
        assert waiting.json()["state"] == "waiting" and "manifest.json not found" in waiting.json()["reason"]
        assert server.post("/predict", json={"inputs": demo_inputs(4)}).status_code == 503

        manifest.parent.mkdir()
        snapshot_id = write_manifest(weights, manifest)
        server.wait_ready(timeout=60)
        ready = server.get("/readyz").json()
        assert ready == {"ready": True, "state": "ready", "reason": "weights verified and loaded",
                         "snapshot_id": snapshot_id}
        names = [e["event"] for e in server.events]
        assert names.index("weights_verified") < names.index("ready")
        assert server.find("weights_verified")[0]["snapshot_id"] == snapshot_id
        assert not server.find("NOT_JSON"), "every log line must be JSON"
    finally:
        server.stop()


def test_missing_file_waits_then_serves_once_restored(weights, tmp_path):
    model_dir = _copy_weights(weights, tmp_path / "w")
    manifest = tmp_path / "manifest.json"
    snapshot_id = write_manifest(model_dir, manifest)
    shard = model_dir / "model-00002-of-00002.safetensors"
    aside = shard.rename(tmp_path / shard.name)
    server = Server(model_dir, manifest)
    try:
        assert server.wait_event("not_ready")["phase"] == "waiting"
        time.sleep(1)  # several retries: each distinct reason is logged once, not on every retry
        missing = server.find("weights_missing")
        assert [(m["file"], m["snapshot_id"]) for m in missing] == [(shard.name, snapshot_id)]
        r = server.get("/readyz")
        assert r.status_code == 503 and r.json()["state"] == "waiting" and r.json()["snapshot_id"] == snapshot_id
        aside.rename(shard)  # the restore finishes: same bytes, now in place
        server.wait_ready()
    finally:
        server.stop()


def test_manifest_without_version_uses_config_version(weights, tmp_path):
    """drtool snapshots may leave version null and carry more fields per file (mode, parts, tensors)."""
    manifest = tmp_path / "manifest.json"
    write_manifest(weights, manifest)
    doc = json.loads(manifest.read_text())
    doc["version"] = None
    for f in doc["files"]:
        f.update({"mode": 0o644, "parts": [{"sha256": f["sha256"], "size": f["size"]}]})
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    manifest.write_bytes(raw)
    server = Server(weights, manifest)
    try:
        server.wait_ready()
        v = server.get("/version").json()
        assert (v["model"], v["version"]) == (MODEL, VERSION)
        assert v["snapshot_id"] == hashlib.sha256(raw).hexdigest()
        assert not server.find("manifest_config_differ")
    finally:
        server.stop()


def test_version_fields(good):
    v = good.get("/version").json()
    assert v["model"] == MODEL and v["version"] == VERSION
    assert v["snapshot_id"] == good.snapshot_id
    assert v["image_version"] == "test-1.2.3" and v["git_sha"] == "abc123"
    assert v["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert v["torch"] == torch.__version__
    assert v["ready"] is True


def test_predict_equals_in_process_bit_for_bit(good, weights):
    x = demo_inputs(frames=120, seed=5)
    r1 = good.post("/predict", json={"inputs": x})
    r2 = good.post("/predict", data=json.dumps({"inputs": x}), headers={"Content-Type": "application/json"})
    assert r1.status_code == 200, r1.text
    assert r1.content == r2.content
    body = r1.json()
    assert (body["model"], body["version"], body["snapshot_id"]) == (MODEL, VERSION, good.snapshot_id)
    reference = predict(load_demo_model(weights, device="cpu"), x)
    served = torch.tensor(body["outputs"], dtype=torch.float32)
    assert served.shape == reference.shape == (120, 32)
    assert torch.equal(served.view(torch.int32), reference.view(torch.int32)), "outputs must match bit for bit"

    xb = [demo_inputs(frames=10, seed=1), demo_inputs(frames=10, seed=2)]
    rb = good.post("/predict", json={"inputs": xb})
    assert torch.equal(torch.tensor(rb.json()["outputs"]), predict(load_demo_model(weights, device="cpu"), xb))


@pytest.mark.parametrize(("body", "needle"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "'inputs' key"),
    (b'{"input": [[0.0]]}', "'inputs' key"),
    (b'{"inputs": []}', "non-empty list"),
    (b'{"inputs": "abc"}', "non-empty list"),
    (b'{"inputs": [[1.0, 2.0]]}', "has 2 features; the model takes 80"),
    (json.dumps({"inputs": [[0.5] * 80, [0.5] * 79]}).encode(), "inputs[1] has 79 features"),
    (json.dumps({"inputs": [[0.5] * 79 + ["x"]]}).encode(), "inputs[0][79] is 'x'"),
    (json.dumps({"inputs": [[0.5] * 79 + [True]]}).encode(), "expected a number"),
    (b'{"inputs": [[NaN' + b", 0.5" * 79 + b"]]}", "NaN"),
    (json.dumps({"inputs": [[[0.1] * 80] * 3, [[0.1] * 80] * 2]}).encode(), "equal frame counts"),
])
def test_malformed_predict_is_400(good, body, needle):
    r = good.post("/predict", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_wrong_method_and_path(good):
    assert good.get("/predict").status_code == 405
    assert good.post("/version", data=b"").status_code == 405
    assert good.get("/nope").status_code == 404
    assert good.get("/healthz").json() == {"status": "alive"}


def test_metrics_expose_requests_and_load_time(good):
    assert good.post("/predict", json={"inputs": demo_inputs(4)}).status_code == 200
    assert good.post("/predict", data=b"{").status_code == 400
    text = good.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    ok = ("drtool_model_server_requests_total", (("code", "200"), ("endpoint", "/predict"), ("method", "POST")))
    bad = ("drtool_model_server_requests_total", (("code", "400"), ("endpoint", "/predict"), ("method", "POST")))
    assert samples[ok] >= 1 and samples[bad] >= 1
    assert samples[("drtool_model_server_errors_total", (("endpoint", "/predict"), ("kind", "bad_request")))] >= 1
    assert samples[("drtool_model_server_model_load_seconds", ())] > 0
    assert samples[("drtool_model_server_weights_verify_seconds", ())] > 0
    assert samples[("drtool_model_server_ready", ())] == 1
    assert samples[("drtool_model_server_request_duration_seconds_count", (("endpoint", "/predict"),))] >= 2
    info = [k for k in samples if k[0] == "drtool_model_server_info"]
    assert info and ("snapshot_id", good.snapshot_id) in info[0][1]


def test_flipped_byte_keeps_server_not_ready(weights, tmp_path):
    model_dir = _copy_weights(weights, tmp_path / "w")
    manifest = tmp_path / "manifest.json"
    snapshot_id = write_manifest(model_dir, manifest)
    shard = model_dir / "model-00002-of-00002.safetensors"
    expected = sha256_file(shard)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    actual = sha256_file(shard)

    server = Server(model_dir, manifest)
    try:
        failed = server.wait_event("not_ready")
        assert failed["phase"] == "failed"
        mismatch = server.find("weights_mismatch")
        assert len(mismatch) == 1
        assert mismatch[0]["file"] == shard.name
        assert (mismatch[0]["expected_sha256"], mismatch[0]["actual_sha256"]) == (expected, actual)
        time.sleep(1)  # several retry periods: a mismatch is final, not retried into readiness
        r = server.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["state"] == "failed" and shard.name in body["reason"] and actual in body["reason"]
        assert body["snapshot_id"] == snapshot_id == mismatch[0]["snapshot_id"]
        assert body["problems"][0]["expected_sha256"] == expected
        assert server.post("/predict", json={"inputs": demo_inputs(4)}).status_code == 503
        assert server.get("/healthz").status_code == 200
        assert not server.find("ready")
    finally:
        server.stop()


def test_extra_safetensors_file_keeps_server_not_ready(weights, tmp_path):
    model_dir = _copy_weights(weights, tmp_path / "w")
    manifest = tmp_path / "manifest.json"
    write_manifest(model_dir, manifest)
    stray = model_dir / "sub" / "stray.safetensors"
    stray.parent.mkdir()
    shutil.copy(model_dir / "model-00001-of-00002.safetensors", stray)
    server = Server(model_dir, manifest)
    try:
        assert server.wait_event("not_ready")["phase"] == "failed"
        mismatch = server.find("weights_mismatch")
        assert [m["file"] for m in mismatch] == ["sub/stray.safetensors"]
        assert mismatch[0]["expected_sha256"] is None and mismatch[0]["actual_sha256"] == sha256_file(stray)
        assert server.get("/readyz").status_code == 503
    finally:
        server.stop()


def test_manifest_path_escaping_model_dir_is_refused(weights, tmp_path):
    manifest = tmp_path / "manifest.json"
    write_manifest(weights, manifest)
    doc = json.loads(manifest.read_text())
    doc["files"].append({"path": "../outside.bin", "size": 1, "sha256": "0" * 64})
    manifest.write_text(json.dumps(doc))
    server = Server(weights, manifest)
    try:
        assert server.wait_event("not_ready")["phase"] == "failed"
        r = server.get("/readyz")
        assert r.status_code == 503 and "normalized relative path" in r.json()["reason"]
    finally:
        server.stop()
