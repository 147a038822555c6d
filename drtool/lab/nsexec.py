"""Starts one lab daemon detached: private mounts first (if asked), then a new session, a log and a pidfile.

Run as a script (stdlib only, no drtool import) at the end of a `nsenter --net=... [unshare --mount
--propagation private] --` chain, so the daemon ends up in the host's network and mount namespaces:

    nsexec.py --pidfile P --log L [--tmpfs DST]... [--bind SRC DST]... [--env K=V]... [--hostname H] -- ARGV...

It forks once: the child (the daemon) is re-parented to init, so the caller never has to reap it.
The parent prints the daemon's pid on stdout and exits 0 once the exec has succeeded, or prints why
it failed and exits 127.
"""

import argparse
import os
import subprocess
import sys
import time

MOUNT = "/bin/mount"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _private_mount_ns() -> bool:
    """True when this process has a mount namespace of its own (never touch the machine's mounts).

    Compared with the parent (the drtool process that ran the nsenter/unshare chain), since PID 1's
    namespaces may not be readable even by root in a sandbox."""
    return os.stat("/proc/self/ns/mnt").st_ino != os.stat(f"/proc/{os.getppid()}/ns/mnt").st_ino


def _mount(argv: list[str]) -> None:
    proc = subprocess.run([MOUNT, *argv], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"nsexec: mount {' '.join(argv)} failed: {proc.stderr.strip()}")


def _write_pidfile(path: str, pid: int) -> None:
    tmp = f"{path}.tmp{pid}"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nsexec")
    p.add_argument("--pidfile", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--cwd", default="/")
    p.add_argument("--tmpfs", action="append", default=[], metavar="DST")
    p.add_argument("--bind", action="append", default=[], nargs=2, metavar=("SRC", "DST"))
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--hostname", help="set in a UTS namespace of its own (unshare --uts)")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("no command given")

    if args.tmpfs or args.bind:
        if not _private_mount_ns():
            print("nsexec: refusing to mount in the machine's own mount namespace", file=sys.stderr)
            return 127
        for dst in args.tmpfs:
            _mount(["-t", "tmpfs", "-o", "mode=0755,size=256m", "tmpfs", dst])
        for src, dst in args.bind:
            _mount(["--bind", src, dst])

    if args.hostname:
        if os.stat("/proc/self/ns/uts").st_ino == os.stat(f"/proc/{os.getppid()}/ns/uts").st_ino:
            print("nsexec: refusing to rename the machine itself", file=sys.stderr)
            return 127
        import socket

        socket.sethostname(args.hostname)

    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    env.update(kv.split("=", 1) for kv in args.env)

    r, w = os.pipe()                      # both ends close-on-exec: EOF in the parent means exec worked
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setsid()
            os.chdir(args.cwd)
            log = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            os.write(log, f"=== {stamp} drtool lab starts: {' '.join(cmd)}\n".encode())
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(null)
            os.close(log)
            _write_pidfile(args.pidfile, os.getpid())
            os.execvpe(cmd[0], cmd, env)  # noqa: S606 - an argv list, no shell
        except BaseException as e:  # noqa: BLE001 - report anything to the parent, then die
            os.write(w, f"{cmd[0]}: {type(e).__name__}: {e}".encode())
            # os._exit, underscore and all, is the documented way out of a forked child that failed to exec: it
            # must not run the parent's atexit handlers or flush the parent's buffers a second time.
            os._exit(127)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    if chunks:
        os.waitpid(pid, 0)
        print(f"nsexec: could not start {b''.join(chunks).decode(errors='replace')}", file=sys.stderr)
        return 127
    print(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
