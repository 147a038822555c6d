"""The model registry on the lab: build, push, register, promote, serve by digest, verify from the DR site."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from drtool.actions.registry import site_registry
from drtool.errors import BusyError
from drtool.execute.serving import base_url, predict, version
from drtool.model_registry.entries import AliasEntry, compare_output
from drtool.model_registry.registry import alias_key

from .conftest import MODEL, PROD_VERSION, run_cli

pytestmark = pytest.mark.lab


def test_production_serves_the_registered_canary_by_digest(lab, lab_config, production):
    prod = lab_config.site("prod-west")
    entry = production["entry"]
    image = production["image"]
    assert entry.image.digest == image["digest"]
    # Both registries got the same digest.
    assert set(image["pushed"]) == {"10.77.0.10:5000", "10.77.0.20:5000"}
    assert len({ref.split("@")[1] for ref in image["pushed"].values()}) == 1
    assert image["labels"]["io.drtool.model"] == MODEL and image["labels"]["io.drtool.image-version"] == PROD_VERSION
    url = base_url(prod.hosts[0].address, prod.serving_port)
    served = version(url)
    assert (served["model"], served["version"]) == (MODEL, PROD_VERSION)
    if served["snapshot_id"] != entry.snapshot_id:
        # Failover and failback restore the newest snapshot of the production version (`failover.snapshot:
        # newest`); earlier tests may have taken newer backups, so the primary may serve one of those.
        from drtool.snapshot import catalog
        from drtool.snapshot.stores import open_store

        store = open_store(prod.object_stores[0])
        manifest, _ = catalog.load(store, catalog.SnapshotRef(served["snapshot_id"], MODEL))
        registered, _ = catalog.load(store, catalog.SnapshotRef(entry.snapshot_id, MODEL))
        assert manifest.version == PROD_VERSION and manifest.created > registered.created
    ok, why = compare_output(entry.canary.expected, predict(url, entry.canary.input)["outputs"], 0.0)
    assert ok, why  # bit for bit on the same CPU
    # The container runs the image by digest.
    import docker

    eng = docker.DockerClient(base_url=lab.engine_url("pw-gpu1"))
    container = eng.containers.get(f"drtool-{MODEL}")
    assert container.attrs["Config"]["Image"] == entry.image.at(prod.registry_url)


def test_show_and_history(lab_config, production):
    show = json.loads(run_cli("--json", "registry", "show", MODEL).stdout)
    assert show["models"][MODEL]["production"] == PROD_VERSION
    hist = json.loads(run_cli("--json", "registry", "history", MODEL, "--site", "dr-east").stdout)
    assert hist["history"][-1]["version"] == PROD_VERSION  # the alias was replicated to the DR store


def test_verify_from_dr_passes_with_prod_services_cut_off(lab, production):
    lab.set_link("pw-svc", False)  # prod-west's registry and store unreachable
    try:
        proc = run_cli("--json", "registry", "verify", "--site", "dr-east", "--read-data")
        assert proc.returncode == 0, proc.stderr
        res = json.loads(proc.stdout)["models"][MODEL]
        assert res["version"] == PROD_VERSION and "complete" in res["snapshot"]
    finally:
        lab.set_link("pw-svc", True)


def _verify_dr() -> subprocess.CompletedProcess:
    return run_cli("registry", "verify", "--site", "dr-east")


def test_verify_fails_when_dr_registry_lacks_the_image(lab, production):
    digest = production["entry"].image.digest
    revisions = lab.state_dir / "registry" / "dr-east"
    links = [p for p in revisions.rglob(f"asr-demo-server/_manifests/revisions/sha256/{digest[7:]}")]
    assert links, f"no manifest revision for {digest} under {revisions}"
    hidden = [p.rename(p.with_name(p.name + ".hidden")) for p in links]
    try:
        proc = _verify_dr()
        assert proc.returncode == 3, proc.stderr
        assert "is not pullable from dr-east's registry" in proc.stderr
    finally:
        for p in hidden:
            p.rename(p.with_name(p.name.removesuffix(".hidden")))
    assert _verify_dr().returncode == 0


def test_verify_fails_when_a_snapshot_blob_is_missing_at_dr(lab_config, production):
    from drtool.execute import s3
    from drtool.snapshot.stores import blob_key

    dr = lab_config.site("dr-east")
    store = dr.object_stores[0]
    loc = s3.parse_s3_url(store.url)
    client = s3.client(store)
    manifest = json.loads(run_cli("--json", "snapshot", "show", production["snapshot"]["id"],
                                  "--store", store.url).stdout)
    digest = manifest["manifest"]["files"][0]["parts"][0]["sha256"]
    key = loc.key(blob_key(digest))
    saved = client.get_object(Bucket=loc.bucket, Key=key)["Body"].read()
    client.delete_object(Bucket=loc.bucket, Key=key)
    try:
        proc = _verify_dr()
        assert proc.returncode == 3, proc.stderr
        assert "snapshot" in proc.stderr and digest[:12] in proc.stderr
    finally:
        client.put_object(Bucket=loc.bucket, Key=key, Body=saved)
    assert _verify_dr().returncode == 0


def test_verify_fails_when_alias_points_at_unknown_version(lab_config, production):
    reg = site_registry(lab_config, lab_config.site("dr-east"))
    current = reg.alias(MODEL)
    bogus = AliasEntry(MODEL, "production", current.seq + 1000, "9.9.9", current.version, "test", "now", None)
    reg.store.put(alias_key(MODEL, "production", bogus.seq), bogus.to_bytes())
    try:
        proc = _verify_dr()
        assert proc.returncode == 3
        assert "production points at version '9.9.9'" in proc.stderr
    finally:
        reg.store.delete(alias_key(MODEL, "production", bogus.seq))


def test_unparseable_registry_object_exits_3(lab_config, production):
    reg = site_registry(lab_config, lab_config.site("dr-east"))
    key = alias_key(MODEL, "production", 999_999)
    reg.store.put(key, b"{not json")
    try:
        proc = _verify_dr()
        assert proc.returncode == 3 and "is not valid JSON" in proc.stderr
    finally:
        reg.store.delete(key)


def test_two_concurrent_promotes_never_lose_one(lab_config, production):
    # Deterministic race at the compare-and-swap: both movers computed the same next seq.
    reg = site_registry(lab_config, lab_config.site("prod-west"))
    current = reg.alias(MODEL)
    results = []
    barrier = threading.Barrier(2)

    def mover(by):
        barrier.wait()
        try:
            reg.move_alias(AliasEntry(MODEL, "production", current.seq + 1, PROD_VERSION, current.version, by, "t"))
            results.append("won")
        except BusyError as exc:
            results.append(exc.message)

    threads = [threading.Thread(target=mover, args=(f"op{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1
    assert any("another promote of asr-demo won" in r for r in results)


@pytest.mark.parametrize("args, code, text", [
    (["registry", "promote", "nomodel", "1.0.0"], 2, "unknown model 'nomodel'"),
    (["registry", "promote", MODEL, "7.7.7"], 2, "has no registered version '7.7.7'"),
    (["registry", "verify", "--site", "nowhere"], 2, "unknown site 'nowhere'"),
    (["registry", "register", "--model", MODEL, "--version", "2.0.0", "--snapshot", "ab" * 32,
      "--image", "10.77.0.10:5000/asr-demo-server:latest"], 2, "does not name a digest"),
])
def test_bad_input_is_refused_and_changes_nothing(production, args, code, text):
    proc = run_cli(*args)
    assert proc.returncode == code, proc.stderr
    assert text in proc.stderr


def test_malformed_canary_input_is_refused(tmp_path, production):
    bad = tmp_path / "canary.json"
    bad.write_text("[1, 2")
    proc = run_cli("registry", "register", "--model", MODEL, "--version", "2.0.1", "--snapshot",
                   production["snapshot"]["id"], "--image", production["image"]["pushed"]["10.77.0.10:5000"],
                   "--canary-input", str(bad))
    assert proc.returncode == 2 and "not readable JSON" in proc.stderr


def lab_ca() -> str:
    from drtool.config import load_config

    return load_config().ca_file


def test_rebuilding_unchanged_sources_gives_the_same_digest(production):
    again = json.loads(run_cli("--json", "image", "build", "--model", MODEL, "--version", PROD_VERSION,
                               "--push").stdout)
    assert again["digest"] == production["image"]["digest"]
    # Tagged by version and by source identifier (git describe), both naming that digest in each registry.
    import requests

    for registry in again["pushed"]:
        for tag in again["tags"]:
            resp = requests.head(f"https://{registry}/v2/asr-demo-server/manifests/{tag}", verify=lab_ca(),
                                 headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
                                 timeout=10)
            assert resp.headers.get("Docker-Content-Digest") == again["digest"], (registry, tag)
    assert again["labels"]["io.drtool.build-time"] == production["image"]["labels"]["io.drtool.build-time"] != "unknown"
