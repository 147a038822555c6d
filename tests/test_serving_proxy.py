"""The serving_proxy role for real on this machine: Debian's nginx in front of two tiny HTTP backends on 127.0.0.1.

The role runs through ansible-runner with a local connection (playbooks/serving_proxy.yml, validate.yml included),
into a temporary serving_proxy_dir and on a free loopback port. Not a lab test: it touches no namespace host.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from drtool.paths import playbooks_dir, roles_dir

from .conftest import wait_for

NGINX = "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """An HTTP server on 127.0.0.1 answering every GET and POST with its own name (HTTP/1.0: one request per
    connection, so stopping it really refuses the next request)."""

    def __init__(self, name: str, port: int):
        self.name, self.port = name, port
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        name = self.name

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                body = name.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _alive(pid: int) -> bool:
    """True while the process runs. A zombie has exited: nginx's master is reparented to PID 1 when it daemonizes,
    and a container's PID 1 may reap late or never, so /proc/<pid> alone does not say it still runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return not stat.rsplit(") ", 1)[1].startswith("Z")


def _request(port: int, path: str = "/predict") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=b'{"inputs": [1, 2, 3]}', headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()




def _answers(port: int, n: int) -> list[str]:
    """n requests through nginx; every one must succeed (200); returns who answered each."""
    out = []
    for _ in range(n):
        status, body = _request(port)
        assert status == 200, (status, body)
        out.append(body)
    return out


def _nginx_t(conf: Path, prefix: Path) -> None:
    proc = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", f"{prefix}/", "-e", str(prefix / "logs/error.log")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def _kill_nginx(pids: set[int]) -> None:
    """Stop nginx masters (fast shutdown), then kill their whole process group if one is still there."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        try:
            os.killpg(pid, signal.SIGKILL)  # nginx daemonizes with setsid: the group is the master and its workers
        except ProcessLookupError:
            pass


class Proxy:
    """A serving_proxy dir on a free port, driven through the playbook; remembers every nginx master it saw."""

    def __init__(self, base: Path, instances: list[dict], **extra):
        self.dir = base / "proxy"
        self.port = _free_port()
        self.instances = instances
        self.extra = extra
        self.pids: set[int] = set()
        self.private = base / "runner"
        self.private.mkdir()
        inventory = {"all": {"children": {
            "primary": {"hosts": {"localhost": {
                "ansible_connection": "local", "ansible_host": "127.0.0.1",
                "ansible_python_interpreter": sys.executable,
                "drtool_site": "test", "drtool_docker_host": "",
            }}},
            "dr": {"hosts": {}},
        }}}
        self.inventory = base / "hosts.yml"
        self.inventory.write_text(yaml.safe_dump(inventory))

    @property
    def conf(self) -> Path:
        return self.dir / "nginx.conf"

    def run(self, action: str, *, expect_failure: bool = False, **extra) -> dict:
        """Run the role; returns {'rc', 'events': [(task, status)], 'result': drtool_result msg}."""
        import ansible_runner

        events: list[tuple[str, str]] = []
        result: dict = {}

        def on_event(event: dict) -> bool:
            kind = event.get("event", "")
            data = event.get("event_data", {}) or {}
            res = data.get("res", {}) or {}
            status = {"runner_on_ok": "changed" if res.get("changed") else "ok", "runner_on_failed": "failed",
                      "runner_on_skipped": "skipped", "runner_item_on_ok": None}.get(kind)
            if status:
                events.append((data.get("task", ""), status))
                if data.get("task") == "drtool_result" and isinstance(res.get("msg"), dict):
                    result.update(res["msg"])
            return True

        extravars = {"drtool_targets": "localhost", "serving_proxy_action": action,
                     "serving_proxy_dir": str(self.dir), "serving_proxy_listen": f"127.0.0.1:{self.port}",
                     "serving_proxy_instances": self.instances, "serving_proxy_nginx": NGINX,
                     **self.extra, **extra}
        runner = ansible_runner.run(
            private_data_dir=str(self.private), project_dir=str(playbooks_dir()), playbook="serving_proxy.yml",
            inventory=str(self.inventory), extravars=extravars, event_handler=on_event, quiet=True,
            envvars={"PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
                     "ANSIBLE_ROLES_PATH": str(roles_dir()), "ANSIBLE_NOCOLOR": "True",
                     "ANSIBLE_RETRY_FILES_ENABLED": "False"},
        )
        pid_file = self.dir / "nginx.pid"
        if pid_file.is_file() and pid_file.read_text().strip():
            self.pids.add(int(pid_file.read_text().strip()))
        if expect_failure:
            assert runner.rc != 0, events
        else:
            assert runner.rc == 0, [e for e in events if e[1] == "failed"] or runner.stdout.read()[-3000:]
        return {"rc": runner.rc, "events": events, "result": result}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Backends a (primary) and b (backup) and a Proxy in front of them; nginx is killed at the end whatever
    happened."""
    if not Path(NGINX).is_file():
        pytest.fail(f"{NGINX} is missing: scripts/setup.sh installs Debian's nginx-light")
    if os.geteuid() != 0:
        pytest.fail("the serving_proxy role writes root-owned files: run the tests as root")
    base = tmp_path_factory.mktemp("serving-proxy")
    a, b = Backend("a", _free_port()), Backend("b", _free_port())
    a.start()
    b.start()
    instances = [
        {"name": "a", "address": "127.0.0.1", "port": a.port, "role": "primary"},
        {"name": "b", "address": "127.0.0.1", "port": b.port, "role": "backup"},
    ]
    # fail_timeout 2s: a stopped primary is tried again soon after it is back (default 10s).
    proxy = Proxy(base, instances, serving_proxy_fail_timeout="2s")
    try:
        yield proxy, a, b
    finally:
        _kill_nginx(proxy.pids)
        a.stop()
        b.stop()


def test_deploy_renders_a_valid_config_and_serves_through_the_primary(site):
    proxy, a, b = site
    run = proxy.run("deploy")
    assert run["result"]["started"] is True
    assert run["result"]["serving"] == ["a"] and run["result"]["standby"] == ["b"]
    _nginx_t(proxy.conf, proxy.dir)
    text = proxy.conf.read_text()
    assert f"server 127.0.0.1:{a.port} max_fails=1 fail_timeout=2s;" in text
    assert f"server 127.0.0.1:{b.port} max_fails=1 fail_timeout=2s backup;" in text
    assert "proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;" in text
    assert _request(proxy.port, "/nginx-health") == (200, "ok\n")
    assert set(_answers(proxy.port, 20)) == {"a"}
    log = (proxy.dir / "logs/access.log").read_text()
    assert f'upstream="127.0.0.1:{a.port}" upstream_status="200"' in log


def test_second_deploy_changes_nothing(site):
    proxy, _, _ = site
    run = proxy.run("deploy")
    changed = [task for task, status in run["events"] if status == "changed"]
    assert changed == [], changed
    assert run["result"]["config_changed"] is False
    assert run["result"]["started"] is False and run["result"]["reloaded"] is False


def test_stopped_primary_fails_over_to_the_backup_without_failed_requests(site):
    proxy, a, _ = site
    assert set(_answers(proxy.port, 5)) == {"a"}
    a.stop()
    try:
        answers = _answers(proxy.port, 50)  # each must be 200: the failed attempt is retried on the backup
        assert set(answers) == {"b"}
        log = (proxy.dir / "logs/access.log").read_text()
        assert "upstream_status=\"502, 200\"" in log  # the retried attempt, as nginx logs it
    finally:
        a.start()
    # The primary is tried again once fail_timeout has passed.
    wait_for(lambda: _request(proxy.port)[1] == "a", what="the restarted primary to serve again")


def test_drain_sends_everything_to_the_backup_and_undrain_brings_the_primary_back(site):
    proxy, a, _ = site
    wait_for(lambda: _request(proxy.port)[1] == "a", what="the primary to serve")
    run = proxy.run("drain", serving_proxy_instance="a")
    assert run["result"]["reloaded"] is True and run["result"]["drained"] == ["a"]
    assert json.loads((proxy.dir / "instances.json").read_text())[0]["drained"] is True
    assert f"server 127.0.0.1:{a.port} max_fails=1 fail_timeout=2s down;" in proxy.conf.read_text()
    _nginx_t(proxy.conf, proxy.dir)
    # The reload is asynchronous: once new workers answer, every request goes to the backup.
    wait_for(lambda: _request(proxy.port)[1] == "b", what="the reload to take the primary out")
    assert set(_answers(proxy.port, 30)) == {"b"}

    # Draining the last instance still serving is refused, and an unknown name too; nothing changes.
    before = proxy.conf.read_text()
    proxy.run("drain", serving_proxy_instance="b", expect_failure=True)
    proxy.run("drain", serving_proxy_instance="nope", expect_failure=True)
    assert proxy.conf.read_text() == before

    run = proxy.run("undrain", serving_proxy_instance="a")
    assert run["result"]["reloaded"] is True and run["result"]["drained"] == []
    wait_for(lambda: _request(proxy.port)[1] == "a", what="the undrained primary to serve")
    assert set(_answers(proxy.port, 20)) == {"a"}


def test_a_bad_config_never_replaces_the_running_one(site):
    proxy, _, _ = site
    before = proxy.conf.read_text()
    proxy.run("deploy", serving_proxy_connect_timeout="not-a-time", expect_failure=True)
    assert proxy.conf.read_text() == before
    assert set(_answers(proxy.port, 5)) == {"a"}


def test_reloads_under_keepalive_clients_fail_no_request(site):
    """A drain is a reload. Clients that keep connections alive (as Locust and most HTTP libraries do) must not
    see a single failed request while nginx reloads again and again under their load: with the role's default
    (client keep-alive off) no idle connection exists for a reload to close under a client's next request.
    Clients here never retry; any connection error or non-200 is counted."""
    proxy, _, _ = site
    wait_for(lambda: _request(proxy.port)[1] in ("a", "b"), what="the proxy to serve")
    master = int((proxy.dir / "nginx.pid").read_text())
    stop = threading.Event()
    sent, failures = [0], []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)  # HTTP/1.1: keep-alive when allowed
        try:
            while not stop.is_set():
                try:
                    conn.request("POST", "/predict", body=b'{"inputs": [1]}',
                                 headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        failures.append(f"HTTP {resp.status}")
                except (OSError, http.client.HTTPException) as exc:
                    failures.append(repr(exc))
                    conn.close()
                sent[0] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    reloads = 0
    try:
        while reloads < 60:
            time.sleep(0.05)
            os.kill(master, signal.SIGHUP)
            reloads += 1
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert 'keepalive_timeout 0;' in proxy.conf.read_text()
    assert sent[0] > 200, sent  # the load really ran across the reloads
    assert failures == [], f"{len(failures)} of {sent[0]} requests failed across {reloads} reloads: {failures[:5]}"


def test_remove_stops_nginx_and_deletes_the_config(site):
    proxy, _, _ = site
    pid = int((proxy.dir / "nginx.pid").read_text())
    run = proxy.run("remove")
    assert run["result"]["stopped"] is True
    assert not _alive(pid)
    assert not proxy.conf.exists() and not (proxy.dir / "instances.json").exists()
    assert (proxy.dir / "logs/access.log").exists()
    with pytest.raises(OSError):
        _request(proxy.port, "/nginx-health")
    assert proxy.run("remove")["result"]["stopped"] is False  # removing again is a no-op


LAYOUTS = {
    "one-primary": [("p1", "primary", False)],
    "primary-and-backup": [("p1", "primary", False), ("b1", "backup", False)],
    "two-primaries-and-a-backup": [("p1", "primary", False), ("p2", "primary", False), ("b1", "backup", False)],
    "one-drained": [("p1", "primary", True), ("p2", "primary", False), ("b1", "backup", False)],
}


def test_every_layout_renders_a_config_nginx_accepts(tmp_path):
    if not Path(NGINX).is_file():
        pytest.fail(f"{NGINX} is missing: scripts/setup.sh installs Debian's nginx-light")
    proxy = Proxy(tmp_path, [])
    try:
        for layout, members in LAYOUTS.items():
            proxy.instances = [{"name": n, "address": "127.0.0.1", "port": 20000 + i, "role": r, "drained": d}
                               for i, (n, r, d) in enumerate(members)]
            run = proxy.run("deploy")
            assert run["result"]["drained"] == [n for n, _, d in members if d], layout
            _nginx_t(proxy.conf, proxy.dir)
            text = proxy.conf.read_text()
            assert text.count("max_fails=1") == len(members), layout
            assert text.count(" backup;") == sum(r == "backup" for _, r, _ in members), layout
            assert text.count(" down;") == sum(d for *_, d in members), layout
            assert _request(proxy.port, "/nginx-health") == (200, "ok\n")
        proxy.run("remove")
    finally:
        _kill_nginx(proxy.pids)
