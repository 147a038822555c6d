"""The `drtool` program. Every command goes to the click CLI (drtool.cli), except the call that cron and Ansible
make on every serving host every night, `drtool --json snapshot create SRC --store URL --model M ...`: that one is
parsed here, without importing click or rich. The target (issue #15) is an unchanged re-run of a 2 GiB model in at
most 60 ms, whole process, on the agent install: through this path it takes ~36-39 ms, through click ~81-89 ms
(~60 ms even with rich left unimported; measured 2026-12-04, docs/benchmarks.md).

The fast path is taken only when every word of the command line is understood below, in the forms click accepts;
anything else (--help, a human-readable run, an unknown or malformed option, a missing required one) goes to click,
which parses it and reports errors as usual. tests/test_launch.py checks that this table matches the click
command's options and defaults, and that both paths print the same JSON and exit codes.
"""

import os
import sys

# option -> (parameter name, converter or None for a string). Converters return None for a value click would refuse.
_GLOBAL = {"--json": ("json", None), "--config": ("config_path", str)}


def _float_in(lo: float, hi: float | None):
    def conv(text: str) -> float | None:
        try:
            value = float(text)
        except ValueError:
            return None
        return value if value == value and lo <= value and (hi is None or value <= hi) else None

    return conv


def _int_in(lo: int, hi: int):
    def conv(text: str) -> int | None:
        try:
            value = int(text)
        except ValueError:
            return None
        return value if lo <= value <= hi else None

    return conv


SNAPSHOT_CREATE_OPTIONS = {
    "--store": ("store", str),
    "--model": ("model", str),
    "--version": ("model_version", str),
    "--version-from": ("version_from", str),
    "--source-host": ("source_host", str),
    "--wait": ("wait", _float_in(0, None)),
    "--recheck-share": ("recheck_share", _float_in(0, 1)),
    "--part-size": ("part_size_mib", _int_in(1, 1024)),
    "--verify-sample": ("verify_sample", _float_in(0, 100)),
    "--metrics-file": ("metrics_file", str),
    "--json": ("json", None),
}
SNAPSHOT_CREATE_DEFAULTS = {"model_version": None, "version_from": None, "source_host": None, "wait": 0.0,
                            "recheck_share": 1 / 7, "part_size_mib": 16, "verify_sample": None, "metrics_file": None}
REQUIRED = ("src", "store", "model")


def _take(words: list[str], i: int, table: dict, into: dict) -> int | None:
    """Parse the option at words[i] (`--opt value` or `--opt=value`, or a flag) into `into`; the next index, or None
    when it is not one this table knows, or its value is missing or not what click would accept."""
    name, eq, inline = words[i].partition("=")
    if name not in table:
        return None
    key, conv = table[name]
    if conv is None:  # a flag
        if eq:
            return None
        into[key] = True
        return i + 1
    if eq:
        text, nxt = inline, i + 1
    elif i + 1 < len(words):
        text, nxt = words[i + 1], i + 2
    else:
        return None
    value = conv(text)
    if value is None:
        return None
    into[key] = value
    return nxt


def parse_snapshot_create(argv: list[str]) -> dict | None:
    """The keyword arguments of a `--json snapshot create` call, or None when click must handle this command line."""
    opts: dict = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        nxt = _take(argv, i, _GLOBAL, opts)
        if nxt is None:
            return None
        i = nxt
    if argv[i:i + 2] != ["snapshot", "create"]:
        return None
    i += 2
    leaf: dict = dict(SNAPSHOT_CREATE_DEFAULTS)
    positional: list[str] = []
    while i < len(argv):
        word = argv[i]
        if word.startswith("-") and word != "-":
            nxt = _take(argv, i, SNAPSHOT_CREATE_OPTIONS, leaf)
            if nxt is None:
                return None
            i = nxt
        else:
            positional.append(word)
            i += 1
    if len(positional) != 1 or not (opts.pop("json", False) or leaf.pop("json", False)):
        return None  # a human-readable run (rich output, a progress bar) or a usage error: click's
    leaf.pop("json", None)
    leaf["src"] = positional[0]
    config_path = opts.get("config_path") or os.environ.get("DRTOOL_CONFIG") or None
    if config_path is not None and os.path.isdir(config_path):
        return None  # click refuses a directory as --config, with its own message
    leaf["config_path"] = config_path
    if any(leaf.get(k) in (None, "") for k in REQUIRED):
        return None
    return leaf


class _JsonOnly:
    """What the snapshot action needs of drtool.output.Output in --json mode: no progress bar, no notes."""

    json_mode = True
    verbose = 0

    def info(self, message: str) -> None:
        pass


def run_snapshot_create(kw: dict) -> int:
    from drtool.errors import DrtoolError
    from drtool.jsonout import error_json, result_json

    try:
        from drtool.actions.snapshot import create

        result = create(_JsonOnly(), kw["config_path"], kw["src"], kw["store"], kw["model"], kw["model_version"],
                        kw["source_host"], kw["wait"], kw["recheck_share"], kw["part_size_mib"],
                        kw["verify_sample"], kw["metrics_file"], kw["version_from"])
    except DrtoolError as err:
        sys.stdout.write(error_json(err))
        sys.stdout.flush()
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    sys.stdout.write(result_json(result))
    sys.stdout.flush()
    return 0


def main() -> None:
    kw = parse_snapshot_create(sys.argv[1:])
    if kw is not None:
        sys.exit(run_snapshot_create(kw))  # an ordinary exit: the interpreter flushes and tears down as usual
    from drtool.cli import main as cli_main

    cli_main()
