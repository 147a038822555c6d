"""Locust load for the drill's capacity check: POST /predict, every Nth request the registry's canary, checked.

Run only as `locust -f` in a subprocess started by drtool.drill.capacity (never import it into drtool: locust
monkeypatches the process with gevent). Parameters come from a JSON file named by $DRTOOL_CAPACITY_PARAMS, not
argv; the run ends itself once `requests_total` answers are in (locust 2.47 has no iteration limit of its own),
and a `quitting` listener writes a summary JSON (locust's own final stats plus the canary counts) for the parent.
"""

import json
import os
import time
import traceback
from collections import Counter
from pathlib import Path

import gevent
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser

from drtool.model_registry.entries import compare_output

PARAMS_ENV = "DRTOOL_CAPACITY_PARAMS"
CANARY_NAME = "/predict [canary]"  # its own stats row, so canary failures are visible in locust's CSV too
PREDICT_NAME = "/predict"
EVIDENCE_KEPT = 5

_params_path = os.environ.get(PARAMS_ENV)
if not _params_path:
    raise SystemExit(f"{PARAMS_ENV} is not set: this locustfile is run by drtool's capacity check")
PARAMS = json.loads(Path(_params_path).read_text())
TOTAL: int = PARAMS["requests_total"]
EVERY: int = PARAMS["canary_every"]
# Bodies are encoded once: the client shares the CPU with the load it measures when run on the same host.
CANARY_BODY = json.dumps(PARAMS["canary"]["input"]).encode()
BODIES = [json.dumps(body).encode() for body in PARAMS["inputs"]]
HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
# Load "through the record": every request goes where the record answers now, as a resolver that honours the
# record's TTL would send it (a switch of the record is then followed within one TTL, as real clients do).
RESOLVE = PARAMS.get("resolve")  # {"record", "server", "port", "http_port"} or None: the --host as given
_resolved = {"address": None, "until": 0.0}

# Greenlets of one process share these; gevent switches only on I/O, so plain increments are safe.
RUN = {"claimed": 0, "done": 0, "canary_checked": 0, "canary_mismatches": 0, "mismatch_evidence": [],
       "task_errors": [], "first_sent": None, "last_done": None, "quit_requested": False}


def _claim() -> int | None:
    """The next request slot (0-based), or None once every slot is taken."""
    if RUN["claimed"] >= TOTAL:
        return None
    slot = RUN["claimed"]
    RUN["claimed"] += 1
    if RUN["first_sent"] is None:
        RUN["first_sent"] = time.monotonic()
    return slot


def _body_for(slot: int) -> tuple[str, bytes, bool]:
    if slot % EVERY == 0:
        return CANARY_NAME, CANARY_BODY, True
    # Non-canary slots cycle through the varied inputs in order: slot - canaries so far - 1 is their own index.
    return PREDICT_NAME, BODIES[(slot - slot // EVERY - 1) % len(BODIES)], False


def _error_text(resp) -> str:
    try:
        body = json.loads(resp.content)
        detail = body.get("error", "") if isinstance(body, dict) else ""
        if isinstance(body, dict) and body.get("reason"):
            detail += f" ({body['reason']})"
    except (ValueError, TypeError):
        detail = (resp.text or "")[:200]
    return f"HTTP {resp.status_code}: {detail}".rstrip(": ")


def _check(resp, is_canary: bool) -> None:
    """Judge one answer inside its catch_response block."""
    if resp.status_code == 0:
        return  # no HTTP answer (refused, reset, timeout): locust already records the connection error
    if resp.status_code != 200:
        resp.failure(_error_text(resp))
        return
    try:
        outputs = json.loads(resp.content)["outputs"]
    except (ValueError, TypeError, KeyError):
        if is_canary:
            RUN["canary_checked"] += 1
            RUN["canary_mismatches"] += 1
        resp.failure("HTTP 200 without JSON outputs")
        return
    if not is_canary:
        return
    canary = PARAMS["canary"]
    ok, evidence = compare_output(canary["expected"], outputs, canary["tolerance"])
    RUN["canary_checked"] += 1
    if not ok:
        RUN["canary_mismatches"] += 1
        if len(RUN["mismatch_evidence"]) < EVIDENCE_KEPT:
            RUN["mismatch_evidence"].append(evidence)
        # One fixed name, so _failures.csv counts mismatches in one row; the evidence goes to the summary.
        resp.failure("canary mismatch")


def _finish(environment) -> None:
    RUN["done"] += 1
    RUN["last_done"] = time.monotonic()
    if RUN["done"] >= TOTAL and not RUN["quit_requested"]:
        RUN["quit_requested"] = True
        # From a greenlet of its own: quit() kills every user greenlet, this one included.
        gevent.spawn(environment.runner.quit)


def _path() -> str:
    """/predict, or its absolute URL at the address the record answers (cached for the record's TTL)."""
    if not RESOLVE:
        return "/predict"
    now = time.monotonic()
    if _resolved["address"] is None or now >= _resolved["until"]:
        import dns.message
        import dns.query
        import dns.rdatatype

        query = dns.message.make_query(RESOLVE["record"], dns.rdatatype.A)
        answer = dns.query.udp(query, RESOLVE["server"], port=int(RESOLVE["port"]), timeout=2.0)
        rrset = next((r for r in answer.answer if r.rdtype == dns.rdatatype.A), None)
        if rrset is not None and len(rrset):
            _resolved["address"], _resolved["until"] = next(iter(rrset)).address, now + rrset.ttl
    return f"http://{_resolved['address']}:{RESOLVE['http_port']}/predict"


class PredictUser(FastHttpUser):
    """A closed loop: send, wait for the answer, send the next (concurrency = number of users)."""

    wait_time = constant(0)
    network_timeout = float(PARAMS["request_timeout_s"])
    connection_timeout = float(PARAMS["connect_timeout_s"])

    @task
    def predict(self) -> None:
        slot = _claim()
        if slot is None:
            raise StopUser()  # every request is sent; the last answer in ends the run
        name, body, is_canary = _body_for(slot)
        try:
            with self.client.post(_path(), data=body, headers=HEADERS, name=name, catch_response=True) as resp:
                _check(resp, is_canary)
        except Exception:
            # A bug here must not pass as a healthy endpoint: the parent turns these into an error.
            RUN["task_errors"].append(traceback.format_exc(limit=3))
            raise
        finally:
            _finish(self.environment)


@events.quitting.add_listener
def _write_summary(environment, **_kwargs) -> None:
    total = environment.stats.total
    n = total.num_requests
    failures = Counter()
    for err in environment.stats.errors.values():
        failures[str(err.error)] += err.occurrences
    seconds = (RUN["last_done"] - RUN["first_sent"]) if RUN["first_sent"] and RUN["last_done"] else 0.0
    summary = {
        "requests_total": TOTAL,
        "claimed": RUN["claimed"],
        "done": RUN["done"],
        "requests": n,
        "failures": total.num_failures,
        "p50_ms": total.get_response_time_percentile(0.5) if n else None,
        "p95_ms": total.get_response_time_percentile(0.95) if n else None,
        "p99_ms": total.get_response_time_percentile(0.99) if n else None,
        "rps": total.total_rps,
        "seconds": seconds,
        "canary_checked": RUN["canary_checked"],
        "canary_mismatches": RUN["canary_mismatches"],
        "mismatch_evidence": RUN["mismatch_evidence"],
        "failure_messages": [{"error": e, "count": c} for e, c in failures.most_common(5)],
        "task_errors": RUN["task_errors"][:3],
        "stopped_early": RUN["done"] < TOTAL,
    }
    path = Path(PARAMS["summary_path"])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
