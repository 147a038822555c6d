"""Drill reports: report.json, junit.xml, report.html (with a real browser screenshot), metrics and history."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from drtool.drill import report as drill_report
from drtool.errors import OperationFailed

T0 = 1795000000.0
HOSTILE = "<script>alert(1)</script>"


def _steps(fault_at: float, failed_at: str | None = None) -> list[dict]:
    """Failover-like steps after the fault; from `failed_at` on, one failed step and the rest pending."""
    plan = [("detect", 12.1), ("decide", 0.4), ("preflight", 1.0), ("provision", 6.0), ("pull_image", 9.0),
            ("restore", 5.0), ("start", 2.0), ("wait_ready", 4.0), ("verify", 3.2), ("flip_dns", 1.1)]
    steps, t, state = [], fault_at, "done"
    for name, secs in plan:
        if name == failed_at:
            state = "failed"
        elif state == "failed":
            state = "pending"
        if state == "pending":
            steps.append({"name": name, "title": name.replace("_", " ").capitalize(), "start": None, "end": None,
                          "seconds": None, "outcome": "pending", "evidence": None, "error": None})
            continue
        evidence = {"host": "dr-gpu1"} if name == "provision" else {"ok": True}
        steps.append({"name": name, "title": name.replace("_", " ").capitalize(), "start": t, "end": t + secs,
                      "seconds": secs, "outcome": state, "evidence": evidence,
                      "error": "registry returned 503" if state == "failed" else None})
        t += secs
    return steps


def sample_report() -> dict:
    """A drill with two scenarios: primary-down passes; registry-down fails a check and a step."""
    fault1, fault2 = T0 + 10, T0 + 110
    primary_down = {
        "scenario": "primary-down", "passed": True, "error": None,
        "fault": "powered off pw-gpu1", "fault_at": fault1, "rto_s": 48.2, "rpo_s": 3600.5,
        "split": {"detection": 12.1, "decision": 0.4, "provisioning": 6.0, "image_pull": 9.0, "restore": 5.0,
                  "verify": 3.2, "dns": 1.1},
        "steps": _steps(fault1),
        "checks": [
            {"name": "steady_state_before", "passed": True, "evidence": {"status": 200, "version": "1.0.0"},
             "message": None},
            {"name": "canary_output", "passed": True, "evidence": HOSTILE, "message": None},
            {"name": "steady_state_after", "passed": True, "evidence": "200 OK from dr-gpu1", "message": None},
        ],
        "load": {"requests": 300, "concurrency": 8, "rps": 55.1, "p50_ms": 40, "p95_ms": 90, "p99_ms": 120,
                 "error_rate": 0.0, "canary_mismatches": 0, "slo": {"p95_ms": 500, "error_rate": 0.01, "min_rps": 5},
                 "passed": True},
        "services": {"asr-demo": {"status": "moved", "standby": "dr-gpu1", "record": "drill.model.drlab.test",
                                  "moved_s": 47.0, "rto_s": 48.2, "rpo_s": 3600.5, "snapshot": None, "capacity": None,
                                  "error": None, "standbys_tried": [], "fallback": None}},
        "cleanup": [{"action": "power on pw-gpu1", "ok": True, "detail": "ssh answered after 21 s"},
                    {"action": "power off dr-gpu1", "ok": True, "detail": None}],
        "not_cleaned": [],
    }
    registry_down = {
        "scenario": "registry-down", "passed": False, "error": "step pull_image failed: registry returned 503",
        "fault": "stopped the DR registry", "fault_at": fault2, "rto_s": None, "rpo_s": 3700.0,
        "split": {"detection": 12.1, "decision": 0.4, "provisioning": 6.0},
        "steps": _steps(fault2, failed_at="pull_image"),
        "checks": [
            {"name": "steady_state_before", "passed": True, "evidence": "200 OK", "message": None},
            {"name": "fails_safe", "passed": False, "evidence": {"dns": "unchanged", "served_by": None},
             "message": "the standby did not come up"},
        ],
        "load": None,
        "cleanup": [{"action": "start the DR registry", "ok": False, "detail": "docker: container not found"}],
        "not_cleaned": ["registry container on dr-reg1 still stopped"],
    }
    return {
        "schema": "drtool.drill.report/v1", "drill_id": "drill-dr-east-20261122T031500Z-ab12cd",
        "site": "dr-east", "primary": "prod-west", "live": False, "record": "drill.model.drlab.test",
        "model": "asr-demo", "version": "1.0.0", "started": T0, "ended": T0 + 200, "passed": False,
        "targets": {"rto_s": 120.0, "rpo_s": 93600.0},
        "scenarios": [primary_down, registry_down],
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[dict, dict[str, str]]:
    report = sample_report()
    return report, drill_report.write_reports(report, tmp_path_factory.mktemp("drill") / "out")


def test_report_json_round_trips(written):
    report, paths = written
    assert set(paths) == {"json", "junit", "html"}
    assert all(Path(p).is_file() for p in paths.values())
    loaded = json.loads(Path(paths["json"]).read_text())
    drill_report.validate(loaded)
    assert loaded == report
    assert not [p for p in Path(paths["json"]).parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_junit_counts(written):
    _, paths = written
    root = ET.parse(paths["junit"]).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"drill.primary-down", "drill.registry-down"}

    ok = suites["drill.primary-down"]
    names = [c.get("name") for c in ok.iter("testcase")]
    assert names == ["steady_state_before", "canary_output", "steady_state_after", "rto_within_target",
                     "rpo_within_target", "load_within_slo", "cleanup_complete"]
    assert (ok.get("tests"), ok.get("failures"), ok.get("errors")) == ("7", "0", "0")
    assert {c.get("classname") for c in ok.iter("testcase")} == {"drill.primary-down"}
    assert float(next(c for c in ok.iter("testcase") if c.get("name") == "rto_within_target").get("time")) == 48.2

    bad = suites["drill.registry-down"]
    # No RTO reached: no rto testcase; the failed check and the incomplete cleanup fail; the stop is an error.
    names = [c.get("name") for c in bad.iter("testcase")]
    assert names == ["steady_state_before", "fails_safe", "rpo_within_target", "cleanup_complete",
                     "scenario_completed"]
    assert (bad.get("tests"), bad.get("failures"), bad.get("errors")) == ("5", "2", "1")
    failure = next(c for c in bad.iter("testcase") if c.get("name") == "fails_safe").find("failure")
    assert failure.get("message") == "the standby did not come up"
    assert '"dns": "unchanged"' in failure.text
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("12", "2", "1")


def test_junit_one_failed_check(tmp_path):
    report = sample_report()
    del report["scenarios"][1]
    second = copy.deepcopy(report["scenarios"][0])
    second["scenario"] = "dns-stale"
    second["checks"][1] = {"name": "record_flipped", "passed": False, "evidence": "A 10.0.0.5", "message": None}
    report["scenarios"].append(second)
    paths = drill_report.write_reports(report, tmp_path)
    suites = {s.get("name"): s for s in ET.parse(paths["junit"]).getroot().iter("testsuite")}
    assert suites["drill.primary-down"].get("failures") == "0"
    assert suites["drill.dns-stale"].get("failures") == "1"
    failed = [c for c in suites["drill.dns-stale"].iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["record_flipped"]
    assert failed[0].find("failure").get("message") == "A 10.0.0.5"


def test_html_is_self_contained_and_escaped(written):
    _, paths = written
    html = Path(paths["html"]).read_text()
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'id="timeline-primary-down"' in html and 'id="timeline-registry-down"' in html
    assert html.count('class="timeline"') == 2
    assert "registry container on dr-reg1 still stopped" in html


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda r: r.pop("scenarios"), "scenarios"),
    (lambda r: r["scenarios"][0].update(rto_s="fast"), "scenarios.0.rto_s"),
    (lambda r: r["scenarios"][1]["steps"][0].update(outcome="finished"), "scenarios.1.steps.0.outcome"),
])
def test_schema_rejects_bad_reports(tmp_path, mutate, field):
    report = sample_report()
    mutate(report)
    with pytest.raises(OperationFailed) as exc:
        drill_report.write_reports(report, tmp_path / "out")
    assert field in exc.value.message
    assert any(field in d for d in exc.value.details)
    assert not (tmp_path / "out").exists()  # nothing written for an invalid report


def _samples(path: Path) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(path.read_text()) for s in f.samples}


def test_metrics(tmp_path):
    path = tmp_path / "drill.prom"
    report = sample_report()
    drill_report.write_metrics(report, path)
    m = _samples(path)
    ok = (("scenario", "primary-down"), ("site", "dr-east"))
    bad = (("scenario", "registry-down"), ("site", "dr-east"))
    assert m[("drtool_drill_last_run_timestamp_seconds", ok)] == T0 + 200
    assert m[("drtool_drill_last_run_timestamp_seconds", bad)] == T0 + 200
    assert m[("drtool_drill_last_success_timestamp_seconds", ok)] == T0 + 200
    assert ("drtool_drill_last_success_timestamp_seconds", bad) not in m
    assert m[("drtool_drill_passed", ok)] == 1.0 and m[("drtool_drill_passed", bad)] == 0.0
    assert m[("drtool_drill_rto_seconds", ok)] == 48.2
    assert ("drtool_drill_rto_seconds", bad) not in m
    assert m[("drtool_drill_rpo_seconds", bad)] == 3700.0
    # a standby is verified when a service's canary was served through its record there: fault + its RTO
    standby = {k: v for k, v in m.items() if k[0] == "drtool_standby_last_verified_timestamp_seconds"}
    assert standby == {("drtool_standby_last_verified_timestamp_seconds",
                        (("host", "dr-gpu1"), ("site", "dr-east"))): T0 + 10 + 48.2}

    # A later run where primary-down fails: its last success is kept, its RTO is gone, others carried over.
    later = sample_report()
    later["started"], later["ended"] = T0 + 1000, T0 + 1200
    later["scenarios"] = [later["scenarios"][0]]
    later["scenarios"][0].update(passed=False, rto_s=None)
    drill_report.write_metrics(later, path)
    m = _samples(path)
    assert m[("drtool_drill_last_success_timestamp_seconds", ok)] == T0 + 200
    assert m[("drtool_drill_last_run_timestamp_seconds", ok)] == T0 + 1200
    assert m[("drtool_drill_passed", ok)] == 0.0
    assert ("drtool_drill_rto_seconds", ok) not in m
    assert m[("drtool_drill_passed", bad)] == 0.0  # registry-down did not run: its series stay
    assert m[("drtool_drill_rpo_seconds", bad)] == 3700.0


def test_every_standby_a_region_moved_to_and_served_from_is_verified(tmp_path):
    report = sample_report()
    del report["scenarios"][1]
    sc = report["scenarios"][0]
    row = sc["services"]["asr-demo"]
    sc["services"] = {"asr": {**row, "standby": "de-gpu1", "rto_s": 30.0},
                      "tts": {**row, "standby": "de-gpu2", "rto_s": 35.0},
                      "vad": {**row, "standby": "de-gpu2", "rto_s": 31.0},
                      "emotion": {**row, "status": "failed", "standby": "de-gpu3", "rto_s": None}}
    drill_report.write_metrics(report, tmp_path / "drill.prom")
    standby = {dict(k[1])["host"]: v for k, v in _samples(tmp_path / "drill.prom").items()
               if k[0] == "drtool_standby_last_verified_timestamp_seconds"}
    assert standby == {"de-gpu1": T0 + 10 + 30.0, "de-gpu2": T0 + 10 + 35.0}   # de-gpu3 served nothing


def test_junit_has_a_check_once_with_the_rto_as_its_time(tmp_path):
    """A scenario that checks its RTO, RPO and load itself: each is one test case (once two, with one name)."""
    report = sample_report()
    del report["scenarios"][1]
    sc = report["scenarios"][0]
    sc["checks"] += [{"name": n, "passed": True, "evidence": "x", "message": None}
                     for n in ("rto_within_target", "rpo_within_target", "load_within_slo")]
    suite = next(ET.parse(drill_report.write_reports(report, tmp_path)["junit"]).getroot().iter("testsuite"))
    names = [c.get("name") for c in suite.iter("testcase")]
    assert len(names) == len(set(names)) and {"rto_within_target", "load_within_slo"} <= set(names)
    assert float(next(c for c in suite.iter("testcase") if c.get("name") == "rto_within_target").get("time")) == 48.2


def test_history_rows_trend():
    reports = []
    for i, rto in enumerate([50.0, 48.2, None, 60.5]):
        r = sample_report()
        r["drill_id"] = f"drill-dr-east-{i}"
        r["started"], r["ended"] = T0 + i * 86400, T0 + i * 86400 + 200
        r["scenarios"][0]["rto_s"] = rto
        reports.append(r)
    rows = drill_report.history_rows(list(reversed(reports)))  # input order does not matter
    pd = [r for r in rows if r["scenario"] == "primary-down"]
    assert [r["drill_id"] for r in pd] == [f"drill-dr-east-{i}" for i in range(4)]
    assert pd[0]["started"] == "2026-11-18T11:06:40Z"
    # the trend skips the run that reached no RTO and compares with the last one that did
    assert [r["rto_trend"] for r in pd] == [None, -1.8, None, 12.3]
    assert {r["rto_target"] for r in rows} == {120.0} and {r["rpo_target"] for r in rows} == {93600.0}
    assert all(r["rto_trend"] is None for r in rows if r["scenario"] == "registry-down")
    assert len(rows) == 8

    console = Console(width=200, record=True)
    console.print(drill_report.render_history_table(rows))
    text = console.export_text()
    assert "-1.8 s" in text and "+12.3 s" in text


def test_summary_table_renders():
    console = Console(width=200, record=True)
    for t in drill_report.summary_table(sample_report()):
        console.print(t)
    text = console.export_text()
    assert "drill.primary-down" in text and "drill.registry-down" in text
    assert "48.2 s / 120.0 s" in text and "over target" not in text
    assert "registry returned 503" in text and "check fails_safe" in text and "incomplete" in text


def _count(img: Image.Image, hex_colour: str) -> int:
    rgb = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return sum(n for n, c in img.getcolors(maxcolors=1 << 24) if c == rgb)


def test_html_screenshot_shows_timelines(written, tmp_path):
    """Render report.html in headless chromium and look for the step bars' exact colours."""
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        pytest.fail("chromium is not installed: run `make setup`")
    _, paths = written
    png = tmp_path / "report.png"
    proc = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-color-profile=srgb", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
         "--window-size=1280,1600", Path(paths["html"]).resolve().as_uri()],
        capture_output=True, text=True, timeout=60)
    assert png.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 1600)
    done = _count(img, drill_report.OUTCOME_COLOUR["done"])
    failed = _count(img, drill_report.OUTCOME_COLOUR["failed"])
    assert done > 2000, f"only {done} pixels of the 'done' bar colour: the timeline is not visible"
    assert failed > 500, f"only {failed} pixels of the 'failed' bar colour: registry-down's failed step is missing"


def test_junit_never_green_for_a_failed_scenario(tmp_path):
    report = sample_report()
    del report["scenarios"][1]
    sc = report["scenarios"][0]
    sc["passed"] = False
    sc["load"]["passed"] = False
    quiet = copy.deepcopy(sc)
    quiet.update(scenario="quiet", load=None)  # failed, yet nothing recorded as failing
    report["scenarios"].append(quiet)
    suites = {s.get("name"): s for s in ET.parse(drill_report.write_reports(report, tmp_path)["junit"]).getroot()
              .iter("testsuite")}
    failed = {s: [c.get("name") for c in suites[s].iter("testcase") if c.find("failure") is not None]
              for s in suites}
    assert failed == {"drill.primary-down": ["load_within_slo"], "drill.quiet": ["scenario_passed"]}


def test_ladder_rungs_in_html_and_console():
    """gpu-degraded and process-crash carry the ladder's journal summary: every rung taken shows in the report."""
    report = sample_report()
    sc = report["scenarios"][0]
    sc["ladder"] = {"schema": 1, "sites": {"prod-west": {"failovers": []}}, "instances": {"pw-gpu1": {
        "site": "prod-west", "restarts": 0, "drained": True, "last_outcome": "ok", "rungs": [
            {"kind": "drain", "rung": "drain", "policy": "auto", "awaits": None, "decided_at": T0 + 11,
             "outcome": "ok", "outcome_at": T0 + 14, "detail": None,
             "reason": "degraded (gpu 0 temperature 95 °C above limit 85 °C): <b>straight to drain</b>"}]}}}
    html = drill_report.render_html(report)
    section = html[html.index("<h3>Escalation ladder</h3>"):]
    assert "pw-gpu1" in section and "drain" in section and "&lt;b&gt;straight to drain&lt;/b&gt;" in section
    console = Console(record=True, width=200)
    for t in drill_report.summary_table(report):
        console.print(t)
    text = console.export_text()
    assert "ladder drain" in text and "pw-gpu1" in text


def test_a_load_that_errored_still_gives_a_valid_failed_report(tmp_path):
    """Locust missing, crashed or gone without its summary: the scenario fails with the reason, and the report is
    still written (it once failed the schema: a load without `requests` sent the whole drill to
    report.invalid.json)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    from drtool.actions.drill import Drill, ScenarioRun

    future: Future = Future()
    future.set_exception(OperationFailed("locust exited with code 0 during the capacity check without a summary"))
    sc = ScenarioRun("gpu-degraded")
    sc.doc.update(fault_at=T0 + 5, drained_at=T0 + 15)
    Drill.finish_load(None, sc, {"future": future, "pool": ThreadPoolExecutor(1), "started": T0,
                                 "flowing_at": T0 + 1, "requests": 1200, "concurrency": 4})
    check = next(c for c in sc.doc["checks"] if c["name"] == "zero_errors_and_p95_within_slo_under_load")
    assert check["passed"] is False and "without a summary" in check["message"]
    assert sc.doc["load"]["passed"] is False and sc.doc["load"]["requests"] == 0
    report = sample_report()
    report["scenarios"][0]["load"] = sc.doc["load"]
    drill_report.validate(report)


def test_region_down_services_in_console_html_and_schema(tmp_path):
    """region-down reports one row per service: where it moved, RTO, RPO, capacity; a failed one in red with its
    reason. The report stays schema-valid and the service names are escaped in HTML."""
    report = sample_report()
    sc = report["scenarios"][0]
    sc["scenario"] = "region-down"
    sc["services"] = {
        "tts": {"status": "moved", "standby": "de-gpu2", "record": "drill.tts.drlab.test", "moved_s": 20.5,
                "rto_s": 21.25, "rpo_s": 300.0, "snapshot": "ab" * 32, "error": None,
                "capacity": {"requests": 200, "rps": 150.0, "p95_ms": 30, "error_rate": 0.0, "passed": True,
                             "reasons": []}},
        HOSTILE: {"status": "failed", "standby": None, "record": "drill.x.drlab.test", "moved_s": None,
                  "rto_s": None, "rpo_s": None, "snapshot": None, "capacity": None,
                  "error": "restore: no snapshot verifies"},
    }
    drill_report.validate(report)
    console = Console(width=220, record=True)
    for t in drill_report.summary_table(report):
        console.print(t)
    text = console.export_text()
    assert "service tts" in text and "RTO 21.2 s, RPO 300.0 s" in text and "moved, served" in text
    assert "restore: no snapshot verifies" in text
    paths = drill_report.write_reports(report, tmp_path / "out")
    html = Path(paths["html"]).read_text()
    assert "<h3>Services</h3>" in html and "de-gpu2" in html and "21.2 s" in html
    assert HOSTILE not in html and "&lt;script&gt;" in html
