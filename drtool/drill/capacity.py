"""Capacity check: a bounded Locust load on a model server's /predict, canary-checked, judged against an SLO."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from urllib.parse import urlsplit

from drtool.errors import OperationFailed, UsageError

# Locust runs only as a subprocess: importing it here would let gevent monkeypatch drtool's own process.
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PARAMS_ENV = "DRTOOL_CAPACITY_PARAMS"  # the same name is read by locustfile.py
CANARY_EVERY = 10  # 1 request in 10 is the canary
SLO_KEYS = ("p50_ms", "p95_ms", "p99_ms", "error_rate", "min_rps")
EXIT_ON_FAILURES = 1  # passed as --exit-code-on-error: locust's exit code when some request failed
START_GRACE_S = 60  # on top of the --run-time bound: locust's import, start-up and shutdown
REQUEST_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0


def run_load(base_url: str, *, requests_total: int, concurrency: int, inputs: list[dict], canary: dict,
             slo: dict, timeout_s: float = 300, workdir: Path, canary_every: int = CANARY_EVERY,
             resolve: dict | None = None) -> dict:
    """Send `requests_total` POST /predict to `base_url` from `concurrency` Locust users; judge them against `slo`.

    `canary` is the registry's {"input", "expected"[, "tolerance"]} (or a `Canary`): every `canary_every`-th
    request sends its input and compares the answer's outputs as `drtool verify` does. Other requests cycle
    through `inputs` (request bodies). `timeout_s` bounds the load itself (locust --run-time); locust's
    start-up and shutdown get START_GRACE_S more. An unreachable endpoint is a failed check, not an error;
    OperationFailed when locust is missing or fails for another reason.

    The figures come from locust's own final stats (`stats.total`: count, failures, percentiles, rps), written by
    the locustfile's `quitting` listener. Not from `--csv`: locust 2.47 rewrites `_stats.csv` once a second and
    does not write it again at exit, so a short run's file misses its last second (0 requests for a 1 s run).
    `--json-file` is complete (written after the run) and stays in `workdir` with locust's stdout and stderr.

    `resolve` ({"record", "server", "port"}): send each request to the address the record answers at that DNS
    server, re-read once its TTL has passed (load through the record, across a switch); `base_url`'s port is kept.
    """
    canary = _check_args(base_url, requests_total, concurrency, inputs, canary, slo, timeout_s, canary_every)
    locust = _find_locust()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    params_path, summary_path = workdir / "capacity-params.json", workdir / "capacity-summary.json"
    summary_path.unlink(missing_ok=True)  # a summary left by an earlier run must not pass for this one's
    _write_private(params_path, {
        "requests_total": requests_total, "canary_every": canary_every, "canary": canary, "inputs": inputs,
        "request_timeout_s": min(REQUEST_TIMEOUT_S, timeout_s), "connect_timeout_s": min(CONNECT_TIMEOUT_S, timeout_s),
        "summary_path": str(summary_path),
        "resolve": {**resolve, "http_port": urlsplit(base_url).port or 80} if resolve else None,
    })
    run_time = max(1, math.ceil(timeout_s))
    argv = [locust, "-f", str(LOCUSTFILE), "--headless", "-u", str(concurrency), "-r", str(concurrency),
            "--host", base_url.rstrip("/"), "--run-time", f"{run_time}s",
            "--json-file", str(workdir / "locust"),  # locust adds ".json"
            "--only-summary", "--exit-code-on-error", str(EXIT_ON_FAILURES)]
    # Operators' LOCUST_* variables and a locust.conf in the current directory must not change the run.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env[PARAMS_ENV] = str(params_path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                      env.get("PYTHONPATH")]))
    stdout_path, stderr_path = workdir / "locust.stdout", workdir / "locust.stderr"
    started = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=workdir,
                                  timeout=run_time + START_GRACE_S, check=False)
        except subprocess.TimeoutExpired:
            raise OperationFailed(f"locust did not finish within {run_time + START_GRACE_S}s against {base_url}",
                                  hint=f"see {stderr_path}", details=_tail(stderr_path)) from None
    wall = time.monotonic() - started
    summary = _read_summary(summary_path)
    if proc.returncode not in (0, EXIT_ON_FAILURES) or summary is None:
        tail = _tail(stderr_path)
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        raise OperationFailed(f"locust exited with code {proc.returncode} during the capacity check of {base_url}"
                              f"{'' if summary else ' without a summary'}: {last}",
                              hint=f"see {stderr_path}", details=tail)
    if summary["task_errors"]:
        raise OperationFailed("the capacity check's locustfile raised an exception",
                              details=summary["task_errors"][0].splitlines()[-5:])
    return _judge(summary, concurrency, slo, wall)


def _judge(s: dict, concurrency: int, slo: dict, wall: float) -> dict:
    n, failures = s["requests"], s["failures"]
    result = {
        "requests": n,
        "concurrency": concurrency,
        "seconds": round(s["seconds"] or wall, 3),
        "rps": round(s["rps"], 2),
        # Fast errors would inflate locust's rps: min_rps is judged on answers that succeeded.
        "ok_rps": round(s["rps"] * (n - failures) / n, 2) if n else 0.0,
        "p50_ms": s["p50_ms"],
        "p95_ms": s["p95_ms"],
        "p99_ms": s["p99_ms"],
        "error_rate": round(failures / n, 4) if n else None,
        "canary_checked": s["canary_checked"],
        "canary_mismatches": s["canary_mismatches"],
        "slo": dict(slo),
        "failures": s["failure_messages"],
    }
    reasons = []
    top = s["failure_messages"][0] if s["failure_messages"] else None
    if n and failures == n:
        reasons.append(f"every request failed ({n} of {n}); endpoint unreachable or not serving: "
                       f"{top['error']} x{top['count']}" if top else f"every request failed ({n} of {n})")
    if s["stopped_early"]:
        reasons.append(f"time bound reached: only {n} of {s['requests_total']} requests answered")
    if s["canary_mismatches"]:
        first = s["mismatch_evidence"][0] if s["mismatch_evidence"] else "no evidence kept"
        reasons.append(f"canary: {s['canary_mismatches']} of {s['canary_checked']} canary answers differ from "
                       f"the registry's expected output; first: {first}")
    elif s["canary_checked"] == 0 and failures < n:
        reasons.append("canary: no canary request was answered, so the served model was never checked")
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        if key in slo:
            measured = result[key]
            if measured is None or measured > slo[key]:
                reasons.append(f"{key[:3]} latency {_fmt(measured, ' ms')} > target {slo[key]:g} ms")
    if "error_rate" in slo:
        rate = result["error_rate"]
        if rate is None or rate > slo["error_rate"]:
            reasons.append(f"error_rate {_fmt(rate)} ({failures} of {n} failed) > target {slo['error_rate']:g}")
    if "min_rps" in slo and result["ok_rps"] < slo["min_rps"]:
        reasons.append(f"rps of successful requests {result['ok_rps']:g} < target min_rps {slo['min_rps']:g}")
    result["passed"] = not reasons
    result["reasons"] = reasons
    return result


def _fmt(value, unit: str = "") -> str:
    return "n/a (no requests)" if value is None else f"{value:g}{unit}"


def _check_args(base_url, requests_total, concurrency, inputs, canary, slo, timeout_s, canary_every) -> dict:
    """UsageError naming the bad parameter; returns the canary as a plain dict with a tolerance."""
    url = urlsplit(base_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise UsageError(f"base_url {base_url!r} must be http(s)://HOST:PORT")
    for name, value in (("requests_total", requests_total), ("concurrency", concurrency),
                        ("canary_every", canary_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name} must be a positive integer (got {value!r})")
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise UsageError(f"timeout_s must be a positive number (got {timeout_s!r})")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(b, dict) for b in inputs):
        raise UsageError("inputs must be a non-empty list of /predict request bodies ({\"inputs\": ...})")
    if is_dataclass(canary):
        canary = asdict(canary)
    if not isinstance(canary, dict) or not isinstance(canary.get("input"), dict) or canary.get("expected") is None:
        raise UsageError("canary must be the registry's {\"input\": {...}, \"expected\": <outputs>} "
                         "with an expected output recorded")
    tolerance = canary.get("tolerance", 0.0)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise UsageError(f"canary tolerance must be a number >= 0 (got {tolerance!r})")
    unknown = sorted(set(slo) - set(SLO_KEYS))
    if unknown:
        raise UsageError(f"unknown SLO key(s) {', '.join(unknown)}", hint=f"known: {', '.join(SLO_KEYS)}")
    for key, value in slo.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise UsageError(f"SLO {key} must be a number >= 0 (got {value!r})")
    return {"input": canary["input"], "expected": canary["expected"], "tolerance": float(tolerance)}


def _find_locust() -> str:
    """The locust script next to drtool's Python (its venv), else on PATH."""
    beside = Path(sys.executable).parent / "locust"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("locust")
    if found:
        return found
    raise OperationFailed("locust is not installed: the capacity check runs it as a subprocess",
                          hint="install drtool's dependencies (pip install locust) in drtool's environment")


def _write_private(path: Path, doc: dict) -> None:
    """Mode 0600 through a temporary name: the parameters may hold production inputs."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # a leftover temporary file keeps its mode otherwise
        json.dump(doc, f)
    os.replace(tmp, path)


def _read_summary(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
