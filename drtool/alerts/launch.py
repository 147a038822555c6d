"""Runs one failover the decision book launched and records in its decision how it ended (the exit code).

`drtool serve` and `drtool watch` start `python -m drtool.alerts.launch --state DIR --run-id RUN -- ARGV...` in its
own session, so the record is written however long the run takes and whether or not the receiver still runs."""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from drtool.alerts.decisions import record_run_end, record_run_pid, run_outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drtool.alerts.launch")
    parser.add_argument("--state", required=True, help="the decision book's state dir")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the failover's argv")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except OSError as exc:
        print(f"drtool: cannot start {command[0]}: {exc.strerror}", flush=True)
        code = 127
    else:
        # Recorded so that serve, when it starts again, can tell a run that died (this process and the failover
        # both gone, no end recorded) from one that still runs, whichever of the two was killed.
        record_run_pid(Path(args.state), args.run_id, proc.pid)
        code = proc.wait()
    rec = record_run_end(Path(args.state), args.run_id, code, time.time())
    action, why = run_outcome(code)
    print(f"drtool: failover {args.run_id} {action} ({why})"
          + ("" if rec else "; no launched decision has this run id to record it in"), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
