"""Whether a process named by pid (a lease's holder, a restore's temp file) still runs on this host."""

import os


def boot_id() -> str:
    """This boot's id: a pid recorded under another boot id names a process that is gone ("" if unknown)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    """True while `pid` is a process of this host that can still run. A zombie (killed or exited, not yet reaped
    by its parent) is dead: `os.kill(pid, 0)` still succeeds on it, but it will never run again, so whatever it
    held must be taken over at once rather than when its parent gets round to reaping it."""
    if pid <= 0:
        return False  # 0 and negatives address process groups in kill(2), never one process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user: its state below still tells
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False  # gone between the two looks
    except OSError:
        return True  # no readable /proc: kill(2)'s answer stands
    # "pid (comm) S ...": comm may hold spaces and ')', so the state is the field after the last ')'.
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")
