"""Snapshots labelled from the weights themselves (`snapshot create --version-from config.json`): how the nightly job,
which has no registry at hand, labels what a failover restores. A label the weights contradict is refused."""

from __future__ import annotations

import json
import os
import time

import pytest

from .snapshot_helpers import model_dir, settle

pytest_plugins = ["tests.snapshot_fixtures"]


def _src(snap_env, config: str):
    src = model_dir(snap_env.tmp / "src")
    (src / "config.json").write_text(config)
    settle(src)
    return src


def _count(snap_env, store) -> int:
    return len(snap_env.json("snapshot", "list", "--store", store)["snapshots"])


def test_version_comes_from_the_weights_and_an_unchanged_rerun_still_reads_nothing(snap_env):
    src = _src(snap_env, json.dumps({"model": "m", "version": "v7", "hidden": 64}))
    store = snap_env.store("file")
    args = ("snapshot", "create", str(src), "--store", store, "--model", "m", "--version-from", "config.json",
            "--recheck-share", "0")
    first = snap_env.json(*args)
    assert first["version"] == "v7" and first["version_from"] == "config.json"
    config_size = (src / "config.json").stat().st_size
    assert first["bytes_read"] == first["bytes_total"] + config_size  # hashed, then read for its version
    again = snap_env.json(*args)
    assert again["version"] == "v7" and again["bytes_read"] == 0  # the cache keeps the label under the digest
    shown = snap_env.json("snapshot", "show", again["id"], "--store", store)
    assert shown["manifest"]["version"] == "v7"
    agreed = snap_env.json(*args, "--version", "v7")
    assert agreed["version"] == "v7"
    config = src / "config.json"
    config.write_text(json.dumps({"model": "m", "version": "v8", "hidden": 64}))
    os.utime(config, (time.time() - 60, time.time() - 60))  # only this file changes: the others stay cached
    bumped = snap_env.json(*args)
    assert bumped["version"] == "v8" and bumped["bytes_read"] == 2 * config.stat().st_size
    refused = snap_env.json(*args, "--version", "v7", code=3)
    assert "are version 'v8' (config.json), not 'v7'" in refused["message"]


@pytest.mark.parametrize(("config", "extra", "code", "words"), [
    ('{"model": "m", "version": "v7"}', ("--version", "v8"), 3, "are version 'v7' (config.json), not 'v8'"),
    ('{"model": "other", "version": "v7"}', (), 3, "is model 'other', not 'm'"),
    ('{"model": "m"}', (), 2, 'has no "version" string'),
    ('{"model": "m", "version": ""}', (), 2, 'has no "version" string'),
    ("not json", (), 2, 'has no "version" string'),
])
def test_a_label_the_weights_do_not_support_is_refused_and_nothing_is_recorded(snap_env, config, extra, code, words):
    src = _src(snap_env, config)
    store = snap_env.store("file")
    snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m")
    err = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--version-from",
                        "config.json", *extra, code=code)
    assert words in err["message"] and err["exit_code"] == code
    assert _count(snap_env, store) == 1


def test_a_missing_version_file_is_a_usage_error(snap_env):
    src = _src(snap_env, "{}")
    store = snap_env.store("file")
    err = snap_env.json("snapshot", "create", str(src), "--store", store, "--model", "m", "--version-from",
                        "meta/version.json", code=2)
    assert "--version-from meta/version.json: no such file" in err["message"]
