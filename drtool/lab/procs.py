"""Launches lab daemons inside namespaces, finds them again (pidfile, tag, namespace) and stops them."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from drtool.errors import LabError
from drtool.lab import netns
from drtool.lab.cmd import which
from drtool.lab.files import rotate, tail
from drtool.lab.layout import Layout

NSEXEC = str(Path(__file__).with_name("nsexec.py"))
TAG_VAR = "DRTOOL_LAB_STATE"     # every lab daemon carries DRTOOL_LAB_STATE=<state dir> in its environment


def _tag(layout: Layout) -> bytes:
    return f"{TAG_VAR}={layout.root}".encode()


def launch(layout: Layout, part: str, argv: list[str], *, ns: str | None = None,
           binds: Iterable[tuple[Path | str, str]] = (), tmpfs: Iterable[str] = (),
           env: dict[str, str] | None = None, cwd: Path | str = "/", hostname: str | None = None) -> int:
    """Start argv detached in namespace ns (and a private mount namespace when mounts are asked for).

    Output goes to $STATE/logs/<part>.log, the pid to $STATE/pids/<part>.pid; returns the pid."""
    log, pidfile = layout.log(part), layout.pidfile(part)
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.unlink(missing_ok=True)
    rotate(log)
    binds, tmpfs = list(binds), list(tmpfs)
    chain: list[str] = []
    if ns:
        chain += [which("nsenter"), f"--net={netns.ns_path(ns)}", "--"]
    if binds or tmpfs or hostname:
        chain += [which("unshare"), "--mount", "--propagation", "private"] + (["--uts"] if hostname else []) + ["--"]
    chain += [sys.executable, "-I", "-S", NSEXEC, "--pidfile", str(pidfile), "--log", str(log),
              "--cwd", str(cwd), "--env", _tag(layout).decode()]
    for key, value in (env or {}).items():
        chain += ["--env", f"{key}={value}"]
    if hostname:
        chain += ["--hostname", hostname]
    for dst in tmpfs:
        chain += ["--tmpfs", dst]
    for src, dst in binds:
        chain += ["--bind", str(src), dst]
    chain += ["--", *argv]
    try:
        proc = subprocess.run(chain, capture_output=True, text=True, timeout=30, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LabError(f"starting {part} did not return within 30s", hint=f"see {log}") from None
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        raise LabError(f"could not start {part}: {(proc.stderr or proc.stdout).strip()[-400:]}",
                       hint=f"log: {log}")
    return int(proc.stdout.strip())


# --- finding processes -----------------------------------------------------------------------------

def alive(pid: int) -> bool:
    """True for a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def net_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def is_tagged(pid: int, layout: Layout | None) -> bool:
    """True when pid carries this lab's tag (layout None: any lab's tag).

    sshd rewrites its process title over its environment, losing the tag; its title keeps the
    `-f <state dir>/hosts/<h>/sshd_config` though, so a command line naming the state dir counts too
    for a process in a lab namespace."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    if layout is None:
        return any(v.startswith(TAG_VAR.encode() + b"=") for v in env)
    if _tag(layout) in env:
        return True
    # Only inside another network namespace: in the machine's own, a command line naming the state dir
    # is someone's `tail -f .../logs/x.log` or an ssh client, never a lab daemon.
    return (net_inode(pid) != net_inode(os.getpid())
            and any(str(layout.root) + "/" in arg for arg in cmdline(pid)))


def tagged_pids(layout: Layout | None) -> list[int]:
    """Every live process started by this lab (layout None: by any lab), found by its environment tag,
    wherever it is, also in a namespace deleted underneath it."""
    me = os.getpid()
    return [int(d) for d in os.listdir("/proc")
            if d.isdigit() and int(d) != me and is_tagged(int(d), layout) and alive(int(d))]


def find(layout: Layout, part: str, token: str) -> int | None:
    """The pid of a running part, from its pidfile, if that process is alive, ours and really `token`."""
    try:
        pid = int(layout.pidfile(part).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if not alive(pid) or not is_tagged(pid, layout):
        return None
    if not matches(cmdline(pid), token):
        return None
    return pid


def matches(cmd: list[str], token: str) -> bool:
    """True when the command is `token`: a program basename (weed, dockerd), a module name, or a title
    rewritten by the daemon itself ("sshd: /usr/sbin/sshd ... [listener]")."""
    return any(Path(arg).name == token or arg.startswith(token + ":") for arg in cmd[:3])


def mnt_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def in_namespace(pid: int, ns: str) -> bool:
    ino = netns.inode(ns)
    return ino is not None and net_inode(pid) == ino


# --- stopping --------------------------------------------------------------------------------------

def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(pid: int) -> None:
    """Reap pid if it is our own child (tests that launch in-process); harmless otherwise."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            _reap(pid)
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def stop(pids: Iterable[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, wait up to grace seconds, SIGKILL whatever is left; return pids that still would not die."""
    pids = [p for p in set(pids) if p != os.getpid() and alive(p)]
    if not pids:
        return []
    _signal(pids, signal.SIGTERM)
    left = wait_gone(pids, grace)
    if left:
        _signal(left, signal.SIGKILL)
        left = wait_gone(left, 5.0)
    return left


def wait_reaped(pids: Iterable[int], timeout: float = 5.0) -> list[int]:
    """Dead daemons are re-parented to init, which may reap them only after a moment; until then they
    show up as <defunct> in ps/pgrep. Wait (bounded) until they are gone from /proc entirely."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            _reap(pid)
        left = [p for p in pids if os.path.exists(f"/proc/{p}")]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def same_netns(pid: int) -> list[int]:
    """Every process sharing pid's network namespace (a daemon's helpers: containerd, shims, host-network
    containers), also after its named namespace was deleted underneath it. Never the machine's own."""
    ino = net_inode(pid)
    if ino is None or ino == net_inode(os.getpid()):
        return [pid] if ino is not None else []
    return [int(d) for d in os.listdir("/proc") if d.isdigit() and net_inode(int(d)) == ino and alive(int(d))]


def wait_ready(part: str, check: Callable[[], bool], *, pid: int | None, log: Path,
               timeout: float, interval: float = 0.1) -> None:
    """Poll check() until it is true; fail early if the process died, or after timeout, quoting its log."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # alive after the check: the answer must not come from an older instance it lost to
            if check() and (pid is None or alive(pid)):
                return
        except Exception:  # noqa: BLE001, S110 - a probe that raises simply is not ready yet
            pass
        if pid is not None and not alive(pid):
            _reap(pid)
            raise LabError(f"{part} exited while starting; last lines of {log}:\n{tail(log)}",
                           hint=f"read {log}")
        if time.monotonic() >= deadline:
            raise LabError(f"{part} did not come up within {timeout:.0f}s; last lines of {log}:\n{tail(log)}",
                           hint=f"read {log}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)
