"""Run a playbook through ansible-runner: fresh private data dir, streamed events, timings, clear failures."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drtool.config import Config
from drtool.errors import AnsibleRunError, HostKeyError, UsageError
from drtool.inventory import build_inventory
from drtool.paths import playbooks_dir, roles_dir

# Tasks with this name hand structured data back to Python through their `debug: msg:`.
RESULT_TASK = "drtool_result"
HOST_KEY_FAILURE = "Host key verification failed"


@dataclass
class TaskEvent:
    """One host's outcome of one task, fed to progress displays and kept for reports."""

    play: str
    task: str
    host: str
    status: str  # ok | changed | failed | unreachable | skipped
    duration_s: float
    message: str = ""


@dataclass
class PlaybookResult:
    playbook: str
    status: str
    rc: int
    seconds: float
    events: list[TaskEvent] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)   # host -> data from `drtool_result` tasks
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> message
    failed: list[TaskEvent] = field(default_factory=list)

    def per_host(self, hosts: list[str]) -> dict[str, tuple[bool, object]]:
        """Per host of one play: (True, its drtool_result) or (False, what failed). A host counts as done only when
        its drtool_result arrived and no task failed on it (a play that never reached it is not a success)."""
        out = {}
        for h in hosts:
            failed = next((e for e in self.failed if e.host == h), None)
            if h in self.unreachable:
                out[h] = (False, f"unreachable: {_oneline(self.unreachable[h])}")
            elif failed is not None:
                out[h] = (False, f"{failed.task}: {_oneline(failed.message)}")
            elif h in self.results:
                out[h] = (True, self.results[h])
            else:
                out[h] = (False, f"{self.playbook} did not reach {h} (rc {self.rc})")
        return out


def _oneline(text: str, limit: int = 600) -> str:
    return "; ".join(line.strip() for line in (text or "").splitlines() if line.strip())[:limit]


ProgressFn = Callable[[str, TaskEvent | str], None]


def _ssh_args(config: Config, control_dir: Path | None = None) -> str:
    """SSH options for one playbook run. With `control_dir`, the tasks of the run share one connection per host (a
    master socket there, ControlPersist for the run's length only: close_masters ends them when the run ends), so
    each task costs a session, not a new TCP and key exchange; keepalives bound a link that dies under it."""
    ssh = config.ssh
    args = [
        "-o StrictHostKeyChecking=yes",  # never trust an unknown or changed host key
        "-o IdentitiesOnly=yes",
        "-o BatchMode=yes",
        "-o ConnectTimeout=10",
        "-o ServerAliveInterval=5",
        "-o ServerAliveCountMax=2",
    ]
    if control_dir is None:
        args += ["-o ControlMaster=no", "-o ControlPath=none"]
    else:
        args += ["-o ControlMaster=auto", "-o ControlPersist=120", f"-o ControlPath={control_dir}/%C"]
    if ssh.known_hosts_file:
        args.append(f"-o UserKnownHostsFile={ssh.known_hosts_file}")
        args.append("-o GlobalKnownHostsFile=/dev/null")
    return " ".join(args)


def close_masters(control_dir: Path) -> None:
    """End every SSH master of a run (and with it the host's sshd session): nothing of the run outlives it."""
    if not control_dir.is_dir():
        return
    for sock in control_dir.iterdir():
        try:
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "drtool-run"], capture_output=True,
                           timeout=10, check=False, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            pass   # best effort: a master whose host is gone exits on its keepalive timeout, or after ControlPersist


def _duration(event_data: dict, started: dict[str, float], key: str) -> float:
    dur = event_data.get("duration")
    if isinstance(dur, (int, float)):
        return float(dur)
    return round(time.monotonic() - started.get(key, time.monotonic()), 3)


def _failure_message(res: dict) -> str:
    if res.get("censored"):
        return "output hidden (no_log task); see the task's role for what it checks"
    parts = [str(res.get("msg", "")).strip()]
    if isinstance(res.get("rc"), int) and res["rc"] != 0:
        parts[0] += f" (exit {res['rc']})"
        out = str(res.get("stdout") or "").strip()
        if out.startswith("{") and '"message"' in out:  # a drtool --json error: its message says what was wrong
            try:
                import json

                parts.append(json.loads(out).get("message", ""))
            except ValueError:
                pass
    for key in ("stderr", "module_stderr"):
        text = str(res.get(key) or "").strip()
        if text and text not in parts[0]:
            parts.append(text[-800:])
    return "\n".join(p for p in parts if p) or "no message"


def run_playbook(
    config: Config,
    playbook: str,
    *,
    extravars: dict | None = None,
    limit: str | None = None,
    progress: ProgressFn | None = None,
    check: bool = False,
    raise_on_failure: bool = True,
    host_vars: dict[str, dict] | None = None,
    forks: int | None = None,
) -> PlaybookResult:
    """Run playbooks/<playbook> against the inventory built from `config`. `host_vars` (host -> variables) go into
    the inventory, so one play over many hosts gives each its own values; `forks` bounds how many hosts Ansible
    works on at once (default: Ansible's own, 5)."""
    pb_path = playbooks_dir() / playbook
    if not pb_path.is_file():
        raise UsageError(f"playbook {playbook} not found in {playbooks_dir()}")
    if config.ssh.known_hosts_file and not Path(config.ssh.known_hosts_file).is_file():
        raise UsageError(f"known_hosts file {config.ssh.known_hosts_file} (ssh.known_hosts_file) does not exist",
                         hint="pin every host's key there; drtool never connects to an unverified host")

    import ansible_runner  # slow import: only when a playbook actually runs

    private = Path(tempfile.mkdtemp(prefix="drtool-ansible-"))
    os.chmod(private, 0o700)
    (private / "inventory").mkdir()
    control_dir = private / "cp"   # short: a unix socket path has a 108-byte limit
    control_dir.mkdir()
    inventory = build_inventory(config)
    for group in inventory["all"]["children"].values():
        for name, hv in (group.get("hosts") or {}).items():
            if host_vars and name in host_vars:
                group["hosts"][name] = {**(hv or {}), **host_vars[name]}
    (private / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    envvars = {
        # ansible-runner executes `ansible-playbook`: it must be found next to this Python.
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "ANSIBLE_ROLES_PATH": str(roles_dir()),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": _ssh_args(config, control_dir),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
    }
    if forks:
        envvars["ANSIBLE_FORKS"] = str(forks)

    result = PlaybookResult(playbook=playbook, status="unknown", rc=-1, seconds=0.0)
    task_started: dict[str, float] = {}
    current = {"play": "", "task": ""}

    def on_event(event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {}) or {}
        if kind == "playbook_on_play_start":
            current["play"] = data.get("play", "")
            if progress:
                progress("play", current["play"])
        elif kind == "playbook_on_task_start":
            current["task"] = data.get("task", "")
            task_started[data.get("task_uuid", "")] = time.monotonic()
            if progress:
                progress("task", current["task"])
        elif kind.startswith("runner_on_") and kind not in ("runner_on_start",):
            res = data.get("res", {}) or {}
            status = {
                "runner_on_ok": "changed" if res.get("changed") else "ok",
                "runner_on_failed": "failed",
                "runner_on_unreachable": "unreachable",
                "runner_on_skipped": "skipped",
            }.get(kind)
            if status is None:
                return True
            if kind == "runner_on_failed" and data.get("ignore_errors"):
                status = "ok"
            host = data.get("host", "?")
            ev = TaskEvent(
                play=data.get("play", current["play"]),
                task=data.get("task", current["task"]),
                host=host,
                status=status,
                duration_s=_duration(data, task_started, data.get("task_uuid", "")),
            )
            if status in ("failed", "unreachable"):
                ev.message = _failure_message(res)
                if status == "unreachable":
                    result.unreachable[host] = ev.message
                else:
                    result.failed.append(ev)
            if status in ("ok", "changed") and ev.task == RESULT_TASK and isinstance(res.get("msg"), dict):
                result.results.setdefault(host, {}).update(res["msg"])
            result.events.append(ev)
            if progress:
                progress("result", ev)
        return True

    started = time.monotonic()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(playbooks_dir()),
            playbook=playbook,
            inventory=str(private / "inventory" / "hosts.yml"),
            extravars=extravars or {},
            envvars=envvars,
            limit=limit,
            cmdline="--check" if check else None,
            event_handler=on_event,
            quiet=True,
        )
        result.status, result.rc = runner.status, runner.rc
        if result.rc == 127 or (result.status == "failed" and not result.events):
            try:
                stdout = runner.stdout.read()[-2000:]
            except (OSError, AttributeError):  # best-effort diagnostic only
                stdout = ""
            raise AnsibleRunError(
                f"ansible-playbook did not run ({playbook}, rc {result.rc})",
                hint=f"is ansible installed next to {sys.executable}? output: {stdout.strip()[-600:]}",
            )
    finally:
        result.seconds = round(time.monotonic() - started, 3)
        close_masters(control_dir)
        if not os.environ.get("DRTOOL_KEEP_ANSIBLE_ARTIFACTS"):
            shutil.rmtree(private, ignore_errors=True)

    if raise_on_failure:
        _raise_for(result, config)
    return result


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def _raise_for(result: PlaybookResult, config: Config) -> None:
    for host, msg in result.unreachable.items():
        if HOST_KEY_FAILURE in msg or "REMOTE HOST IDENTIFICATION HAS CHANGED" in msg:
            raise HostKeyError(
                f"host key of {host} does not match the pinned key in {config.ssh.known_hosts_file}",
                hint="someone may be intercepting the connection, or the host was rebuilt; verify the new key "
                "out of band and update known_hosts before retrying",
                details=[_first_line(msg)],
            )
    if result.failed:
        ev = result.failed[0]
        raise AnsibleRunError(
            f"{result.playbook}: task '{ev.task}' failed on {ev.host}: {_first_line(ev.message)}",
            hint="see the message above; re-run with -v for every task's outcome",
            host=ev.host, task=ev.task, output=ev.message,
            details=[f"{e.host}: {e.task}: {e.message}" for e in result.failed],
        )
    if result.unreachable and result.rc != 0:
        host, msg = next(iter(result.unreachable.items()))
        raise AnsibleRunError(
            f"{result.playbook}: host {host} is unreachable: {_first_line(msg)}",
            hint="check that the host is powered on and its sshd answers",
            host=host, output=msg,
        )
    if result.rc != 0:
        raise AnsibleRunError(f"{result.playbook} failed (status {result.status}, rc {result.rc})")
