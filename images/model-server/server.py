"""Model server: verifies mounted weights against a snapshot manifest, loads them, serves predictions over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

_log_lock = threading.Lock()


def log(event: str, level: str = "info", **fields) -> None:
    """One JSON object per line on stderr: what log collectors and the tests read."""
    line = json.dumps({"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": level,
                       "event": event, **fields}, default=str)
    with _log_lock:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _warning_to_log(message, category, filename, lineno, file=None, line=None) -> None:
    log("python_warning", level="warning", category=category.__name__, message=str(message),
        where=f"{filename}:{lineno}")


# Route warnings (torch warns at import time, e.g. when numpy is absent) into the JSON log before importing torch.
warnings.showwarning = _warning_to_log

import torch  # noqa: E402
from gpu_health import GpuMonitor, Limits, Reading, limit_violations  # noqa: E402 - beside this file (/app)
from prometheus_client import REGISTRY, Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest  # noqa: E402

# The model code: /app/drtool/model in the image (copied from the repo by prepare_context.sh), the repo on a host.
from drtool.model.demo import (  # noqa: E402
    InputError,
    configure_determinism,
    demo_inputs,
    load_demo_model,
    model_files,
    predict,
    read_config,
)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
ENDPOINTS = ("/healthz", "/readyz", "/version", "/predict", "/metrics")

REQUESTS = Counter("drtool_model_server_requests", "HTTP requests by endpoint, method and status code",
                   ["endpoint", "method", "code"])
LATENCY = Histogram("drtool_model_server_request_duration_seconds", "Time to answer a request, by endpoint",
                    ["endpoint"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
ERRORS = Counter("drtool_model_server_errors", "Requests answered with an error, by endpoint and kind",
                 ["endpoint", "kind"])
LOAD_SECONDS = Gauge("drtool_model_server_model_load_seconds", "Time to load the verified weights into the model")
VERIFY_SECONDS = Gauge("drtool_model_server_weights_verify_seconds", "Time to hash and check the weight files")
WEIGHT_BYTES = Gauge("drtool_model_server_weights_bytes", "Bytes of weight files verified against the manifest")
MISMATCHES = Gauge("drtool_model_server_weights_mismatched_files",
                   "Files that differ from the manifest, are missing, or are not in it")
READY = Gauge("drtool_model_server_ready", "1 when weights are verified and loaded, else 0")
INFO = Gauge("drtool_model_server_info", "What is being served (value 1)",
             ["model", "version", "snapshot_id", "image_version", "device", "torch"])
GPU_PRESENT = Gauge("drtool_model_server_gpu_present",
                    "1 when the server sees a GPU (or the drill fault hook simulates one), 0 when there is none")
GPU_INFO = Gauge("drtool_model_server_gpu_info", "Where the GPU reading comes from (value 1); source none: no GPU",
                 ["source", "simulated"])
GPU_MEMORY_USED = Gauge("drtool_model_server_gpu_memory_used_bytes", "GPU memory in use on the device", ["device"])
GPU_MEMORY_TOTAL = Gauge("drtool_model_server_gpu_memory_total_bytes", "GPU memory of the device", ["device"])
GPU_UTILIZATION = Gauge("drtool_model_server_gpu_utilization_ratio",
                        "Fraction of the last sample period the GPU was busy (0-1)", ["device"])
GPU_TEMPERATURE = Gauge("drtool_model_server_gpu_temperature_celsius", "GPU core temperature", ["device"])
_gpu_metrics_lock = threading.Lock()


def export_gpu(reading: Reading) -> None:
    """Replace the GPU series with this reading: a device or value that is not read has no series (never 0)."""
    with _gpu_metrics_lock:
        for g in (GPU_INFO, GPU_MEMORY_USED, GPU_MEMORY_TOTAL, GPU_UTILIZATION, GPU_TEMPERATURE):
            g.clear()
        GPU_PRESENT.set(1 if reading.present else 0)
        GPU_INFO.labels(reading.source, "1" if reading.simulated else "0").set(1)
        for d in reading.devices:
            for gauge, value in ((GPU_MEMORY_USED, d.memory_used_bytes), (GPU_MEMORY_TOTAL, d.memory_total_bytes),
                                 (GPU_UTILIZATION, d.utilization_ratio), (GPU_TEMPERATURE, d.temperature_c)):
                if value is not None:
                    gauge.labels(str(d.index)).set(value)


@dataclass
class Settings:
    model_dir: Path
    manifest: Path
    host: str
    port: int
    device: str
    threads: int
    retry_seconds: float
    max_body_bytes: int
    predict_concurrency: int
    image_version: str
    git_sha: str
    gpu_limits: Limits = field(default_factory=Limits)
    gpu_poll_seconds: float = 5.0

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Settings:
        model_dir = Path(env.get("MODEL_DIR", "/models"))
        device = env.get("DEVICE", "auto")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"DEVICE must be auto, cpu or cuda (got {device!r})")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(
            model_dir=model_dir,
            manifest=Path(env.get("SNAPSHOT_MANIFEST") or model_dir / "manifest.json"),
            host=env.get("HOST", "0.0.0.0"),  # noqa: S104 - a server in a container listens on all addresses
            port=_int_env(env, "PORT", 8080, 0, 65535),
            device=device,
            threads=_int_env(env, "TORCH_THREADS", 1, 1, 256),
            retry_seconds=float(env.get("VERIFY_RETRY_SECONDS", "5")),
            max_body_bytes=_int_env(env, "MAX_BODY_BYTES", 16 << 20, 1, 1 << 30),
            predict_concurrency=_int_env(env, "PREDICT_CONCURRENCY", os.cpu_count() or 1, 1, 1024),
            image_version=env.get("IMAGE_VERSION", "unknown"),
            git_sha=env.get("IMAGE_GIT_SHA", "unknown"),
            gpu_limits=Limits.from_env(env),
            gpu_poll_seconds=float(env.get("GPU_POLL_SECONDS", "5")),
        )


def _int_env(env: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer (got {raw!r})") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi} (got {value})")
    return value


# -- weight verification ---------------------------------------------------------------------------------------
class NotReady(Exception):
    """Why the server cannot serve; `snapshot_id` names the manifest checked, once it was read."""

    snapshot_id: str | None = None


class Waiting(NotReady):
    """Something is not there yet (a restore may be in progress): check again later."""

    def __init__(self, reason: str, details: list[dict] | None = None):
        super().__init__(reason)
        self.details = details or []  # one log line each, logged once per distinct reason (not every retry)


class Mismatch(NotReady):
    """The weights are not the snapshot: stay not ready until restarted with the right files."""

    def __init__(self, reason: str, problems: list[dict]):
        super().__init__(reason)
        self.problems = problems


@dataclass
class Verified:
    snapshot_id: str
    model: str
    version: str | None
    total_bytes: int
    stats: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns, inode)


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def read_manifest(manifest_path: Path) -> tuple[str, dict]:
    """Returns (snapshot id = SHA-256 of the manifest's exact bytes, parsed manifest); raises Waiting or Mismatch."""
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise Waiting(f"snapshot manifest {manifest_path} not found") from None
    except OSError as exc:
        raise Waiting(f"snapshot manifest {manifest_path} not readable: {exc}") from None
    snapshot_id = hashlib.sha256(raw).hexdigest()

    def bad(msg: str) -> Mismatch:
        return Mismatch(f"snapshot manifest {manifest_path} is invalid: {msg}", [{"file": str(manifest_path),
                                                                                  "problem": msg}])
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    if not isinstance(manifest.get("model"), str) or not manifest["model"]:
        raise bad("'model' must be a non-empty string")
    # drtool's snapshots may leave the version unset (null); config.json's version is reported then.
    if manifest.get("version") is not None and not isinstance(manifest["version"], str):
        raise bad("'version' must be a string or null")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise bad("'files' must be a non-empty list")
    seen = set()
    for i, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise bad(f"files[{i}] is not an object")
        path, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
        if not isinstance(path, str) or not path:
            raise bad(f"files[{i}].path must be a non-empty string")
        pure = PurePosixPath(path)
        # A manifest names files inside the model dir only: no absolute paths, no way out with '..'.
        if pure.is_absolute() or ".." in pure.parts or str(pure) != path:
            raise bad(f"files[{i}].path {path!r} must be a normalized relative path inside the model dir")
        if path in seen:
            raise bad(f"files[{i}].path {path!r} is listed twice")
        seen.add(path)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"files[{i}].size must be a non-negative integer")
        if not isinstance(digest, str) or not SHA256_RE.match(digest):
            raise bad(f"files[{i}].sha256 must be 64 lowercase hex digits")
    return snapshot_id, manifest


def verify_weights(model_dir: Path, manifest_path: Path, workers: int = 2) -> Verified:
    """Hash every listed file and compare size and SHA-256; also refuse .safetensors files the manifest lacks."""
    snapshot_id, manifest = read_manifest(manifest_path)
    try:
        return _verify_files(model_dir, snapshot_id, manifest, workers)
    except NotReady as exc:
        exc.snapshot_id = snapshot_id
        raise


def _verify_files(model_dir: Path, snapshot_id: str, manifest: dict, workers: int) -> Verified:
    entries = manifest["files"]
    missing = [e["path"] for e in entries if not (model_dir / e["path"]).is_file()]
    if missing:
        raise Waiting(f"{len(missing)} file(s) of snapshot {snapshot_id} missing from {model_dir}: "
                      f"{', '.join(missing[:5])}",
                      [{"event": "weights_missing", "snapshot_id": snapshot_id, "file": path} for path in missing])

    def digest(path: str) -> str | OSError:
        try:
            return _file_sha256(model_dir / path)
        except OSError as exc:
            return exc

    stats = {e["path"]: _stat_key(model_dir / e["path"]) for e in entries}
    with ThreadPoolExecutor(max_workers=workers) as pool:  # hashlib releases the GIL: files hash in parallel
        digests = dict(zip(stats, pool.map(digest, stats), strict=True))
    unreadable = {path: d for path, d in digests.items() if isinstance(d, OSError)}
    if unreadable:
        # Usually file modes: the server runs as uid 10001 in the image. Fixable in place, so check again later.
        first, exc = next(iter(unreadable.items()))
        raise Waiting(f"{len(unreadable)} file(s) of snapshot {snapshot_id} not readable by uid {os.getuid()}; "
                      f"first: {first}: {exc.strerror or exc}",
                      [{"event": "weights_unreadable", "snapshot_id": snapshot_id, "file": path, "error": str(e),
                        "uid": os.getuid()} for path, e in unreadable.items()])
    problems = []
    for e in entries:
        path = e["path"]
        size, actual = stats[path][0], digests[path]
        if size != e["size"] or actual != e["sha256"]:
            problems.append({"file": path, "problem": "content differs from the manifest",
                             "expected_sha256": e["sha256"], "actual_sha256": actual,
                             "expected_size": e["size"], "actual_size": size})
    listed = {e["path"] for e in entries}
    for dirpath, _dirs, names in os.walk(model_dir):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(model_dir).as_posix()
            if name.endswith(".safetensors") and rel not in listed:
                problems.append({"file": rel, "problem": "weight file not in the manifest",
                                 "expected_sha256": None, "actual_sha256": _file_sha256(model_dir / rel),
                                 "expected_size": None, "actual_size": (model_dir / rel).stat().st_size})
    if not problems:
        # Only now is config.json trusted; every file the loader will read must be one that was just checked.
        try:
            needed = model_files(model_dir)
        except ValueError as exc:
            raise Mismatch(f"weights of snapshot {snapshot_id} match the manifest but are not loadable: {exc}",
                           [{"file": "config.json", "problem": str(exc)}]) from None
        for rel in needed:
            if rel not in listed:
                problems.append({"file": rel, "problem": "the model reads this file but the manifest does not list it",
                                 "expected_sha256": None, "actual_sha256": _file_sha256(model_dir / rel),
                                 "expected_size": None, "actual_size": (model_dir / rel).stat().st_size})
    if problems:
        for p in problems:
            log("weights_mismatch", level="error", snapshot_id=snapshot_id, **p)
        first = problems[0]
        raise Mismatch(f"{len(problems)} file(s) do not match snapshot {snapshot_id}; first: {first['file']}: "
                       f"{first['problem']} (sha256 {first['actual_sha256']}, manifest {first['expected_sha256']})",
                       problems)
    return Verified(snapshot_id, manifest["model"], manifest["version"], sum(s[0] for s in stats.values()), stats)


# -- server state ----------------------------------------------------------------------------------------------
class ServerState:
    """What the handlers read: phase, reason, the loaded model and its identity (one lock guards all)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.Lock()
        self.phase = "starting"
        self.reason = "starting"
        self.problems: list[dict] = []
        self.model = None
        self.verified: Verified | None = None
        self.checking: str | None = None  # snapshot id of the manifest being verified, before it is served
        self.stop = threading.Event()
        self.predict_slots = threading.BoundedSemaphore(settings.predict_concurrency)
        self.gpu = GpuMonitor(torch, dict(os.environ), settings.gpu_poll_seconds,
                              on_error=lambda msg: log("gpu_read_failed", level="warning", error=msg))
        self._gpu_violations: list[str] = []

    def gpu_violations(self) -> list[str]:
        """The GPU limits crossed now (empty without limits); logs each change (gpu_degraded, gpu_recovered)."""
        limits = self.settings.gpu_limits
        if limits.memory_pct is None and limits.temperature_c is None:
            return []
        reading = self.gpu.read()
        now = limit_violations(reading, limits)
        with self.lock:
            before, self._gpu_violations = self._gpu_violations, now
        if now and now != before:
            log("gpu_degraded", level="error", reasons=now, source=reading.source, simulated=reading.simulated)
        elif before and not now:
            log("gpu_recovered", source=reading.source, simulated=reading.simulated)
        return now

    def set(self, phase: str, reason: str, problems: list[dict] | None = None, checking: str | None = None) -> None:
        with self.lock:
            self.phase, self.reason, self.problems = phase, reason, problems or []
            self.checking = checking or self.checking
        READY.set(1 if phase == "ready" else 0)

    def snapshot(self) -> dict:
        with self.lock:
            v = self.verified
            return {"phase": self.phase, "reason": self.reason, "problems": list(self.problems),
                    "model": v.model if v else None, "version": v.version if v else None,
                    "snapshot_id": v.snapshot_id if v else None, "checking": self.checking}


def prepare(state: ServerState) -> None:
    """Verify, then load; retry while files are missing; stop for good on a mismatch or a load error."""
    s = state.settings
    last_wait = None
    while not state.stop.is_set():
        try:
            configure_determinism(s.threads)
            if last_wait is None:  # a look again while `waiting` stays `waiting` until it ends: /readyz never flickers
                state.set("verifying", f"hashing weight files in {s.model_dir}")
            t0 = time.perf_counter()
            verified = verify_weights(s.model_dir, s.manifest, workers=min(4, os.cpu_count() or 1))
            VERIFY_SECONDS.set(time.perf_counter() - t0)
            WEIGHT_BYTES.set(verified.total_bytes)
            MISMATCHES.set(0)
            log("weights_verified", snapshot_id=verified.snapshot_id, model=verified.model, version=verified.version,
                files=len(verified.stats), bytes=verified.total_bytes, seconds=round(time.perf_counter() - t0, 3))

            state.set("loading", f"loading snapshot {verified.snapshot_id} onto {s.device}",
                      checking=verified.snapshot_id)
            t1 = time.perf_counter()
            model = load_demo_model(s.model_dir, device=s.device, threads=s.threads)
            predict(model, demo_inputs(frames=8))  # warm-up: the first request should not pay for lazy init
            load_seconds = time.perf_counter() - t1
            changed = [p for p, st in verified.stats.items() if _stat_key(s.model_dir / p) != st]
            if changed:
                exc = Waiting(f"weight files changed while loading: {', '.join(changed[:5])}")
                exc.snapshot_id = verified.snapshot_id
                raise exc

            config = read_config(s.model_dir)
            if verified.version is None:
                verified.version = config.get("version")
            if config.get("model") != verified.model or config.get("version") != verified.version:
                log("manifest_config_differ", level="warning", manifest_model=verified.model,
                    manifest_version=verified.version, config_model=config.get("model"),
                    config_version=config.get("version"))
            with state.lock:
                state.model, state.verified = model, verified
            LOAD_SECONDS.set(load_seconds)
            INFO.labels(verified.model, verified.version, verified.snapshot_id, s.image_version, s.device,
                        torch.__version__).set(1)
            state.set("ready", "weights verified and loaded")
            log("ready", snapshot_id=verified.snapshot_id, model=verified.model, version=verified.version,
                device=s.device, load_seconds=round(load_seconds, 3))
            return
        except Waiting as exc:
            state.set("waiting", str(exc), checking=exc.snapshot_id)
            if str(exc) != last_wait:
                for detail in exc.details:
                    log(level="error", **detail)
                log("not_ready", level="warning", phase="waiting", reason=str(exc), retry_seconds=s.retry_seconds)
                last_wait = str(exc)
            state.stop.wait(s.retry_seconds)
        except Mismatch as exc:
            MISMATCHES.set(len(exc.problems))
            state.set("failed", str(exc), exc.problems, checking=exc.snapshot_id)
            log("not_ready", level="error", phase="failed", reason=str(exc))
            return
        except Exception as exc:
            state.set("failed", f"could not load the model: {type(exc).__name__}: {exc}")
            log("not_ready", level="error", phase="failed", reason=state.reason, traceback=traceback.format_exc())
            return


# -- HTTP ------------------------------------------------------------------------------------------------------
class BadRequest(Exception):
    """Answer with this status and message instead of a result."""

    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.kind = status, kind


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


class Handler(BaseHTTPRequestHandler):
    server_version = "drtool-model-server"
    protocol_version = "HTTP/1.1"
    timeout = 60  # a client that stalls mid-request does not hold a thread for ever
    state: ServerState  # set on the subclass made by serve()

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without NODELAY, Nagle + delayed ACK add ~40 ms per response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def log_message(self, format: str, *args) -> None:
        pass  # requests are logged as JSON by _dispatch

    def _dispatch(self, method: str) -> None:
        start = time.perf_counter()
        path = urlsplit(self.path).path
        endpoint = path if path in ENDPOINTS else "other"
        ctype = "application/json"
        try:
            if endpoint == "other":
                raise BadRequest(404, f"no endpoint {path}; try {', '.join(ENDPOINTS)}", "not_found")
            allowed = "POST" if endpoint == "/predict" else "GET"
            if method != allowed:
                raise BadRequest(405, f"{endpoint} takes {allowed}, not {method}", "method")
            if endpoint == "/metrics":
                export_gpu(self.state.gpu.read())
                code, body, ctype = 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST
            else:
                code, payload = getattr(self, "_" + endpoint.strip("/"))()
                body = json.dumps(payload).encode()
        except BadRequest as exc:
            code, body, kind = exc.status, json.dumps({"error": str(exc)}).encode(), exc.kind
            ERRORS.labels(endpoint, kind).inc()
        except Exception as exc:
            log("request_failed", level="error", path=path, error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc())
            code, body = 500, json.dumps({"error": f"internal error: {type(exc).__name__}"}).encode()
            ERRORS.labels(endpoint, "internal").inc()
        else:
            if code == 503:
                ERRORS.labels(endpoint, "not_ready").inc()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if code == 405:
            self.send_header("Allow", "POST" if endpoint == "/predict" else "GET")
        self.end_headers()
        self.wfile.write(body)
        elapsed = time.perf_counter() - start
        REQUESTS.labels(endpoint, method, str(code)).inc()
        LATENCY.labels(endpoint).observe(elapsed)
        # Probes and scrapes every few seconds would drown the log; log them only when they fail.
        if endpoint in ("/predict", "other") or (code >= 400 and endpoint != "/readyz"):
            log("request", method=method, path=path, code=code, ms=round(elapsed * 1000, 2))

    def _healthz(self) -> tuple[int, dict]:
        return 200, {"status": "alive"}

    def _readyz(self) -> tuple[int, dict]:
        snap = self.state.snapshot()
        # The snapshot served once ready; before that, the one being checked (null until its manifest is read).
        body = {"ready": snap["phase"] == "ready", "state": snap["phase"], "reason": snap["reason"],
                "snapshot_id": snap["snapshot_id"] or snap["checking"]}
        if snap["problems"]:
            body["problems"] = snap["problems"]
        if body["ready"]:
            gpu = self.state.gpu_violations()
            if gpu:  # the weights are served, but this GPU should take no traffic until it is back under its limits
                body.update(ready=False, state="degraded", reason="; ".join(gpu))
        return (200 if body["ready"] else 503), body

    def _version(self) -> tuple[int, dict]:
        snap, s = self.state.snapshot(), self.state.settings
        return 200, {"model": snap["model"], "version": snap["version"], "snapshot_id": snap["snapshot_id"],
                     "image_version": s.image_version, "git_sha": s.git_sha, "device": s.device,
                     "cuda_available": torch.cuda.is_available(), "torch": torch.__version__,
                     "python": sys.version.split()[0], "ready": snap["phase"] == "ready"}

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise BadRequest(411, "send the body with a Content-Length, not chunked", "bad_request")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise BadRequest(411, "a Content-Length header is required", "bad_request")
        if int(length) > self.state.settings.max_body_bytes:
            self.close_connection = True  # the unread body would otherwise be parsed as the next request
            raise BadRequest(413, f"body of {length} bytes exceeds {self.state.settings.max_body_bytes}", "too_large")
        return self.rfile.read(int(length))

    def _predict(self) -> tuple[int, dict]:
        raw = self._read_body()
        with self.state.lock:
            model, verified, phase, reason = self.state.model, self.state.verified, self.state.phase, self.state.reason
        if model is None or phase != "ready":
            return 503, {"error": "not ready", "state": phase, "reason": reason}
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(400, f"body is not valid JSON: {exc}", "bad_request") from None
        if not isinstance(body, dict) or "inputs" not in body:
            raise BadRequest(400, "body must be a JSON object with an 'inputs' key: "
                             "frames [T][F] or a batch of them [B][T][F]", "bad_request")
        with self.state.predict_slots:
            try:
                outputs = predict(model, body["inputs"])
            except InputError as exc:
                raise BadRequest(400, str(exc), "bad_request") from None
        return 200, {"outputs": outputs.tolist(), "model": verified.model, "version": verified.version,
                     "snapshot_id": verified.snapshot_id}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(settings: Settings) -> int:
    state = ServerState(settings)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server_cls = _Server
    if ":" in settings.host:
        server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    httpd = server_cls((settings.host, settings.port), handler)
    READY.set(0)
    log("listening", host=settings.host, port=httpd.server_address[1], model_dir=str(settings.model_dir),
        manifest=str(settings.manifest), device=settings.device, torch=torch.__version__,
        image_version=settings.image_version, threads=settings.threads)
    gpu = state.gpu.read()
    log("gpu", source=gpu.source, present=gpu.present, simulated=gpu.simulated, devices=len(gpu.devices),
        memory_limit_pct=settings.gpu_limits.memory_pct, temperature_limit_c=settings.gpu_limits.temperature_c,
        fault_hook=str(state.gpu.fault_file) if state.gpu.fault_file else None)

    def stop(signum, _frame):
        log("stopping", signal=signal.Signals(signum).name)
        state.stop.set()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    # As PID 1 in a container, SIGTERM does nothing without a handler: `docker stop` would wait 10 s, then kill.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=prepare, args=(state,), name="prepare", daemon=True).start()
    httpd.serve_forever()
    httpd.server_close()
    log("stopped")
    return 0


def main() -> int:
    try:
        settings = Settings.from_env(dict(os.environ))
    except ValueError as exc:
        log("bad_settings", level="error", error=str(exc))
        return 2
    try:
        return serve(settings)
    except OSError as exc:
        log("cannot_listen", level="error", host=settings.host, port=settings.port, error=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
