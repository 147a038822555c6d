"""HTTP calls to a model server: readiness, /version, /predict (used by canary, failover checks and drills)."""

import time

import requests

from drtool.errors import OperationFailed


def base_url(address: str, port: int) -> str:
    return f"http://{address}:{port}"


def wait_ready(url: str, timeout: float = 180, poll: float = 0.5) -> dict:
    """Wait for /readyz to answer 200; returns its body. OperationFailed with the last reason otherwise."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            resp = requests.get(f"{url}/readyz", timeout=5)
            body = resp.json() if resp.headers.get("Content-Type", "").startswith("application/json") else {}
            if resp.status_code == 200:
                return body
            last = f"HTTP {resp.status_code}: {body.get('reason') or body.get('state') or resp.text[:200]}"
            if body.get("state") == "failed":  # the server gave up (weights mismatch): waiting will not help
                break
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(poll)
    raise OperationFailed(f"model server at {url} did not become ready within {timeout:.0f}s: {last}",
                          hint="see the container's log; /readyz stays 503 while weights do not match the manifest")


def answers_ready(address: str, port: int, timeout: float = 3.0) -> str | None:
    """What answered, when a model server (or the Nginx in front of one) at address:port answers /readyz with 200:
    a live primary that an unplanned failover must not take over. None when nothing ready answers."""
    try:
        resp = requests.get(f"{base_url(address, port)}/readyz", timeout=timeout)
    except requests.RequestException:
        return None
    return f"{address}:{port} answers /readyz 200" if resp.status_code == 200 else None


def version(url: str) -> dict:
    try:
        resp = requests.get(f"{url}/version", timeout=10)
        resp.raise_for_status()
        return resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise OperationFailed(f"GET {url}/version failed: {exc}") from None


def predict(url: str, inputs: dict, timeout: float = 60) -> dict:
    try:
        resp = requests.post(f"{url}/predict", json=inputs, timeout=timeout)
    except requests.RequestException as exc:
        raise OperationFailed(f"POST {url}/predict failed: {type(exc).__name__}") from None
    if resp.status_code != 200:
        raise OperationFailed(f"POST {url}/predict answered HTTP {resp.status_code}: {resp.text[:300]}")
    return resp.json()
