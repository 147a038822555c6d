"""The start-up fast path (drtool.launch) for `--json snapshot create`: the same options, defaults, output and exit
codes as the click command it stands in for, anything else handed to click, and the lean imports that are its point.
The incremental cache's text format and the joined manifest encoding it relies on are checked here too."""

from __future__ import annotations

import json
import os
import random
import subprocess

import click
import pytest

from drtool import launch
from drtool.cli import main_group, snapshot_create
from drtool.snapshot.cache import entry_json
from drtool.snapshot.manifest import FileEntry, PartRef, SnapshotManifest, TensorRef, encode_manifest

from .conftest import REPO
from .snapshot_helpers import model_dir

PYTHON = str(REPO / ".venv" / "bin" / "python")


def test_the_table_matches_the_click_command():
    click_opts = {opt: p for p in snapshot_create.params if isinstance(p, click.Option) for opt in p.opts}
    assert set(click_opts) == set(launch.SNAPSHOT_CREATE_OPTIONS)
    for opt, (name, conv) in launch.SNAPSHOT_CREATE_OPTIONS.items():
        param = click_opts[opt]
        if opt == "--json":
            assert param.is_flag and conv is None
            continue
        assert param.name == name, opt
        assert param.required == (name in launch.REQUIRED), opt
    defaults = snapshot_create.make_context("create", ["/w", "--store", "file:///s", "--model", "m"]).params
    for name, value in launch.SNAPSHOT_CREATE_DEFAULTS.items():
        assert defaults[name] == value, name
    args = [p for p in snapshot_create.params if isinstance(p, click.Argument)]
    assert [a.name for a in args] == ["src"]
    group_opts = {opt for p in main_group.params for opt in p.opts}
    assert set(launch._GLOBAL) <= group_opts


@pytest.mark.parametrize("argv", [
    ["--json", "snapshot", "create", "/w", "--store", "file:///s", "--model", "m"],
    ["snapshot", "create", "/w", "--store=file:///s", "--model=m", "--json"],
    ["--json", "--config", "/nonexistent.yaml", "snapshot", "create", "--model", "m", "/w", "--store", "file:///s",
     "--recheck-share", "0", "--part-size", "8", "--wait", "1.5", "--version", "v2", "--verify-sample=5"],
])
def test_fast_path_parses_what_click_accepts(argv):
    kw = launch.parse_snapshot_create(argv)
    assert kw is not None and kw["src"] == "/w" and kw["store"] == "file:///s" and kw["model"] == "m"
    ctx = snapshot_create.make_context("create", [a for a in argv[argv.index("create") + 1:]])
    for name in ("src", "store", "model", "model_version", "wait", "recheck_share", "part_size_mib", "verify_sample",
                 "metrics_file", "source_host"):
        assert kw[name] == ctx.params[name], name


@pytest.mark.parametrize("argv", [
    ["snapshot", "create", "/w", "--store", "file:///s", "--model", "m"],  # not --json: rich output, a progress bar
    ["--json", "snapshot", "create", "--help"],
    ["--json", "snapshot", "create", "/w", "--store", "file:///s"],  # --model missing
    ["--json", "snapshot", "create", "/w", "/v", "--store", "file:///s", "--model", "m"],
    ["--json", "snapshot", "create", "/w", "--store", "file:///s", "--model", "m", "--recheck-share", "2"],
    ["--json", "snapshot", "create", "/w", "--store", "file:///s", "--model", "m", "--part-size", "0"],
    ["--json", "snapshot", "create", "/w", "--store", "file:///s", "--model", "m", "--wait", "nan"],
    ["--json", "snapshot", "create", "/w", "--store", "file:///s", "--model", "m", "--bogus"],
    ["--json", "snapshot", "create", "/w", "--store", "file:///s", "--model"],
    ["--json", "snapshot", "create", "/w", "--store", "file:///s", "--model", "m", "--json=1"],
    ["--json", "-v", "snapshot", "create", "/w", "--store", "file:///s", "--model", "m"],
    ["--version"],
    ["--json", "snapshot", "list", "--store", "file:///s"],
    ["--json", "snapshot", "create", "/w", "--store", "file:///s", "--model", "m", "--", "x"],
])
def test_anything_else_goes_to_click(argv):
    assert launch.parse_snapshot_create(argv) is None


def _run(argv: list[str], env: dict, via_click: bool) -> subprocess.CompletedProcess:
    entry = "drtool.cli" if via_click else "drtool.launch"
    code = f"import sys; sys.argv = ['drtool'] + sys.argv[1:]; from {entry} import main; main()"
    return subprocess.run([PYTHON, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DRTOOL_"))}
    return {**env, "DRTOOL_CACHE_DIR": str(tmp_path / "cache"), "DRTOOL_LAB_DIR": str(tmp_path / "no-lab")}


def test_fast_path_and_click_print_the_same_json_and_exit_codes(tmp_path, env):
    src = model_dir(tmp_path / "src")
    store = f"file://{tmp_path / 'store'}"
    results = {}
    for via_click in (False, True):
        # --recheck-share 0: otherwise the files in today's re-check bucket are read again whatever the cache says
        ok = _run(["--json", "snapshot", "create", str(src), "--store", store, "--model", "m", "--recheck-share", "0"],
                  env, via_click)
        assert ok.returncode == 0, ok.stderr
        missing = _run(["--json", "snapshot", "create", str(tmp_path / "nope"), "--store", store, "--model", "m"], env,
                       via_click)
        bad_model = _run(["--json", "snapshot", "create", str(src), "--store", store, "--model", "-x-"], env,
                         via_click)
        results[via_click] = (json.loads(ok.stdout), missing, bad_model)
    (fast, f_missing, f_bad), (slow, s_missing, s_bad) = results[False], results[True]
    assert set(fast) == set(slow)
    assert slow["bytes_read"] == 0 and slow["files_cached"] == slow["files"]  # the second run (click): cached
    for f, s in ((f_missing, s_missing), (f_bad, s_bad)):
        assert f.returncode == s.returncode == 2
        assert f.stdout == s.stdout and json.loads(f.stdout)["error"] == "UsageError"


def test_an_unchanged_rerun_imports_neither_click_rich_nor_what_only_other_commands_need(tmp_path, env):
    """Start-up time is the whole cost of an unchanged nightly re-run (docs/benchmarks.md): what it must not load."""
    src = model_dir(tmp_path / "src")
    argv = ["--json", "snapshot", "create", str(src), "--store", f"file://{tmp_path / 'store'}", "--model", "m",
            "--recheck-share", "0"]
    assert _run(argv, env, via_click=False).returncode == 0
    # The fast path ends with sys.exit: the probe reports what was loaded when main() raises SystemExit.
    probe = ("import sys; sys.argv = ['drtool'] + sys.argv[1:]\n"
             "heavy = ['click', 'rich', 'yaml', 'jsonschema', 'boto3', 'dataclasses', 'typing', 'concurrent.futures',"
             " 'socket', 'datetime', 'secrets', 'queue', 'drtool.config', 'drtool.output']\n"
             # what the interpreter loaded before drtool ran (the dev venv's editable-install finder imports re)
             "before = set(sys.modules)\n"
             "from drtool.launch import main\n"
             "try:\n"
             "    main()\n"
             "except SystemExit:\n"
             "    loaded = set(sys.modules) - before\n"
             "    print(repr(sorted(m for m in heavy if m in loaded)), file=sys.stderr, flush=True)\n"
             "    raise\n"
             "raise SystemExit('the fast path returned instead of exiting with its code')\n")
    proc = subprocess.run([PYTHON, "-c", probe, *argv], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["bytes_read"] == 0
    assert proc.stderr.strip().splitlines()[-1] == "[]"


def test_joined_manifest_bytes_equal_the_canonical_encoding():
    rng = random.Random(3)
    for _ in range(100):
        files = tuple(
            FileEntry(f"dir {i}/f\u00e9\"{i}", rng.randrange(1, 99), 0o644, f"{rng.getrandbits(256):064x}",
                      (PartRef(f"{rng.getrandbits(256):064x}", 5),),
                      None if rng.random() < 0.5 else (TensorRef('t"x', "F16", (2, 3), (0, 12), "c" * 64),))
            for i in range(rng.randrange(0, 6)))
        m = SnapshotManifest(model="m", version=rng.choice([None, "v1", '"files":[]', "\u00fc"]),
                             created="2026-11-22T00:00:00.000001Z", source_host='h"', source_path="/p", part_size=16,
                             files=files)
        meta = {k: v for k, v in m.to_json().items() if k not in ("files", "format")}
        assert encode_manifest(meta, [entry_json(f) for f in files]) == m.encode()


def _create(src, store, env) -> dict:
    proc = _run(["--json", "snapshot", "create", str(src), "--store", store, "--model", "m", "--recheck-share", "0"],
                env, via_click=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_cache_written_by_the_previous_format_is_read_so_an_upgrade_reads_no_data(tmp_path, env):
    src = model_dir(tmp_path / "src")
    store = f"file://{tmp_path / 'store'}"
    first = _create(src, store, env)
    (cache_file,) = (tmp_path / "cache" / "snapshots").glob("*.json")
    lines = cache_file.read_text().split("\n")
    header = json.loads(lines[1])
    files = {}
    for line in lines[2:-1]:
        path, sig, entry = line.split("\t")
        doc = json.loads(entry)
        del doc["path"]
        files[path] = {"stat": [int(x) for x in sig.split(",")], "entry": doc}
    old = {"format": 1, **{k: header[k] for k in ("store", "model", "source", "part_size", "snapshot")},
           "files": files}
    cache_file.write_text(json.dumps(old))
    again = _create(src, store, env)
    assert again["bytes_read"] == 0 and again["files_cached"] == first["files"] and again["cache_note"] is None
    assert cache_file.read_text().startswith("drtool-snapshot-cache 2\n")


@pytest.mark.parametrize("damage", ["truncate", "tab", "garbage"])
def test_a_damaged_cache_is_ignored_and_named_never_trusted(tmp_path, env, damage):
    src = model_dir(tmp_path / "src")
    store = f"file://{tmp_path / 'store'}"
    _create(src, store, env)
    (cache_file,) = (tmp_path / "cache" / "snapshots").glob("*.json")
    text = cache_file.read_text()
    cache_file.write_text({"truncate": text[:len(text) // 2].rstrip("\n"), "tab": text.replace("\t", "\t\t", 1),
                           "garbage": "\x00" * 100}[damage])
    again = _create(src, store, env)
    assert again["bytes_read"] == again["bytes_total"] and again["files_cached"] == 0
    assert "ignoring unreadable cache" in again["cache_note"]
    proc = _run(["--json", "snapshot", "verify", again["id"], "--store", store, "--read-data"], env, via_click=True)
    assert proc.returncode == 0, proc.stdout
