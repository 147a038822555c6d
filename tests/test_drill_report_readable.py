"""Drill reports a person reads: one sentence per check (the raw evidence folded in report.html, whole in
report.json), every refused standby named with its reason in the console summary and in report.html, and a real
browser screenshot of a region-down report with its per-service table."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from rich.console import Console

from drtool.drill import report as drill_report

from .test_drill_report import T0, sample_report

HOST_KEY = ("host key of de-gpu1 (10.77.0.21) changed: REMOTE HOST IDENTIFICATION HAS CHANGED; refusing to "
            "connect")
RECORD_SENTENCE = "record drill.model.drlab.test answers 10.77.0.22, the standby that passed verify (de-gpu2)"


def _console(report: dict) -> str:
    console = Console(width=400, record=True)
    for t in drill_report.summary_table(report):
        console.print(t)
    return console.export_text()


def fallback_report() -> dict:
    """primary-down whose failover refused de-gpu1 (its host key changed) and used de-gpu2."""
    report = sample_report()
    del report["scenarios"][1]
    sc = report["scenarios"][0]
    prov = next(s for s in sc["steps"] if s["name"] == "provision")
    prov["evidence"] = {"host": "de-gpu2", "address": "10.77.0.22",
                        "tried": [{"host": "de-gpu1", "ok": False, "error": HOST_KEY},
                                  {"host": "de-gpu2", "ok": True, "seconds": 7.5}]}
    sc["failover"] = {"run_id": "failover-dr-east-1", "status": "done", "error": None, "services": ["asr-demo"]}
    sc["services"] = {"asr-demo": {"status": "moved", "standby": "de-gpu2", "record": "drill.model.drlab.test",
                                   "moved_s": 30.1, "rto_s": 31.0, "rpo_s": 120.0, "snapshot": None,
                                   "capacity": None, "error": None, "standbys_tried": prov["evidence"]["tried"],
                                   "fallback": None}}
    sc["checks"].append({"name": "record_points_at_verified_standby", "passed": True, "summary": RECORD_SENTENCE,
                         "evidence": {"record": "drill.model.drlab.test", "answer": ["10.77.0.22"],
                                      "standby": "de-gpu2"}, "message": None})
    return report


def region_down_report() -> dict:
    """region-down: three services moved (tts after de-gpu1 refused it), one not moved, with readable checks."""
    report = sample_report()
    del report["scenarios"][1]
    sc = report["scenarios"][0]
    sc.update(scenario="region-down", fault="powered off every host of prod-west: pw-gpu1, pw-gpu2, pw-lb",
              load=None, rto_s=33.9, rpo_s=216.0, passed=False)
    sc["steps"] = [s for s in sc["steps"] if s["name"] in ("preflight", "provision", "restore", "verify", "flip_dns")]

    def svc(standby, moved, rto, rpo, rps, tried=(), status="moved", error=None):
        cap = None if rps is None else {"requests": 200, "rps": rps, "p95_ms": 40, "error_rate": 0.0,
                                        "passed": True, "reasons": []}
        refused = [{"host": h, "ok": False, "error": e} for h, e in tried]
        return {"status": status, "standby": standby, "record": "", "moved_s": moved, "rto_s": rto, "rpo_s": rpo,
                "snapshot": "ab" * 32, "capacity": cap, "error": error, "standbys_tried": refused,
                "fallback": "; ".join(f"{h} refused ({e})" for h, e in tried) + f"; moved to {standby}"
                if tried else None}

    sc["services"] = {
        "asr": svc("de-gpu2", 33.3, 33.5, 91.0, 403.0),
        "tts": svc("de-gpu3", 33.3, 33.7, 120.0, 350.0, tried=[("de-gpu1", HOST_KEY)]),
        "llm-large": svc("de-gpu4", 33.3, 33.9, 216.0, 306.0),
        "emotion": svc(None, None, None, None, None, status="failed",
                       error="restore: no snapshot of emotion-demo 1.0.0 verifies"),
    }
    for name, p in sc["services"].items():
        p["record"] = "drill.model.drlab.test" if name == "asr" else f"drill.{name}.drlab.test"
    sc["checks"] = [
        {"name": "steady_state_before", "passed": True, "message": None,
         "summary": "asr serves asr-demo 1.0.0 and its canary through model.drlab.test (10.77.0.10:8080); "
                    "tts serves tts-demo 1.0.0 and its canary through tts.drlab.test (10.77.0.11:8081)",
         "evidence": {"asr": {"version": {"model": "asr-demo", "version": "1.0.0"}, "canary": {"max_abs": 0}}}},
        {"name": "failover_completed", "passed": False, "message": None,
         "summary": "failover fo-dr-east-1 ended partial: 1 of 4 service(s) did not move (emotion)",
         "evidence": {"emotion": {"status": "failed", "reason": "restore: no snapshot verifies"}}},
        {"name": "canary_served_through_record", "passed": False, "message": None,
         "summary": "not served through its record: emotion (restore: no snapshot of emotion-demo 1.0.0 verifies)",
         "evidence": {"asr": "RTO 33.5s", "emotion": "restore: no snapshot of emotion-demo 1.0.0 verifies"}},
        {"name": "production_dns_unchanged", "passed": True, "message": None,
         "summary": "all 4 production records answer as before the drill",
         "evidence": {"before": {"model.drlab.test": ["10.77.0.10"]}, "after": {"model.drlab.test": ["10.77.0.10"]}}},
    ]
    return report


def test_each_check_reads_as_a_sentence_with_its_raw_evidence_folded():
    report = fallback_report()
    html = drill_report.render_html(report)
    checks = html[html.index("<h3>Checks</h3>"):html.index("<h3>Load</h3>")]
    assert RECORD_SENTENCE in checks
    row = checks[checks.index("record_points_at_verified_standby"):]
    row = row[:row.index("</tr>")]
    assert "<details><summary>raw</summary><pre>" in row and "&quot;standby&quot;: &quot;de-gpu2&quot;" in row
    assert checks.count("<details>") == len(report["scenarios"][0]["checks"])
    # report.json keeps the evidence whole
    drill_report.validate(report)
    assert report["scenarios"][0]["checks"][-1]["evidence"]["answer"] == ["10.77.0.22"]
    assert RECORD_SENTENCE in _console(report)


def test_a_check_from_an_older_report_without_a_sentence_still_reads():
    report = sample_report()
    html = drill_report.render_html(report)
    assert "200 OK from dr-gpu1" in html                 # a string evidence is its own sentence
    assert "200 OK from dr-gpu1" in _console(report)


def test_a_refused_standby_is_named_with_its_reason_in_the_console_and_the_html():
    report = fallback_report()
    text = " ".join(_console(report).split())
    assert "service asr-demo: standby de-gpu1 refused: host key of de-gpu1 (10.77.0.21) changed" in text
    assert "moved to de-gpu2 instead" in text
    html = drill_report.render_html(report)
    box = html[html.index('<div class="fallback">'):]
    box = box[:box.index("</div>")]
    assert "service asr-demo: standby de-gpu1 refused: host key of de-gpu1 (10.77.0.21) changed" in box
    assert "moved to de-gpu2 instead" in box
    # no fallback, no box
    quiet = copy.deepcopy(report)
    quiet["scenarios"][0]["services"]["asr-demo"]["standbys_tried"] = [{"host": "de-gpu2", "ok": True}]
    assert 'class="fallback"' not in drill_report.render_html(quiet)
    assert "refused" not in _console(quiet)


def test_a_fleet_fallback_is_named_per_service():
    report = region_down_report()
    drill_report.validate(report)
    text = " ".join(_console(report).split())
    assert "service tts: standby de-gpu1 refused: host key of de-gpu1 (10.77.0.21) changed" in text
    assert "moved to de-gpu3 instead" in text
    html = drill_report.render_html(report)
    box = html[html.index('<div class="fallback">'):]
    assert "service tts: standby de-gpu1 refused" in box[:box.index("</div>")]
    services = html[html.index("<h3>Services</h3>"):]
    tts = services[services.index("<td>tts</td>"):]
    assert 'de-gpu3<div class="err">de-gpu1 refused</div>' in tts[:tts.index("</tr>")]


def _chromium() -> str:
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        pytest.fail("chromium is not installed: run `make setup`")
    return chromium


def screenshot(html_path: Path, png: Path, size=(1280, 1400)) -> Image.Image:
    proc = subprocess.run(
        [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--force-color-profile=srgb", f"--user-data-dir={png.parent / 'profile'}", f"--screenshot={png}",
         f"--window-size={size[0]},{size[1]}", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=60)
    assert png.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return Image.open(png).convert("RGB")


def _count(img: Image.Image, hex_colour: str) -> int:
    rgb = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return sum(n for n, c in img.getcolors(maxcolors=1 << 24) if c == rgb)


def test_screenshot_of_a_region_down_report_shows_services_fallback_and_sentences(tmp_path):
    """report.html of a region-down drill, rendered by headless Chromium: the page is drawn (not blank, the size
    asked for), the fallback box and the per-service table are on it, and the sentences are in the page."""
    report = region_down_report()
    paths = drill_report.write_reports(report, tmp_path / "out")
    html = Path(paths["html"]).read_text()
    sc = report["scenarios"][0]
    for c in sc["checks"]:
        assert c["summary"] in html.replace("&#x27;", "'"), c["name"]
    for name in sc["services"]:
        assert f"<td>{name}</td>" in html
    assert "service tts: standby de-gpu1 refused" in html
    img = screenshot(Path(paths["html"]), tmp_path / "report.png")
    assert img.size == (1280, 1400)
    grey = img.convert("L")
    assert ImageStat.Stat(grey).stddev[0] > 20, "the page is (nearly) one colour: nothing was drawn"
    dark = sum(grey.histogram()[:100])
    assert dark > 20_000, f"only {dark} dark pixels: too little text on the page"
    assert _count(img, "#fff3e0") > 10_000, "the fallback box (its background) is not on the page"
    assert _count(img, drill_report.OUTCOME_COLOUR["done"]) > 1000, "the timeline's bars are not on the page"
    assert _count(img, "#f3f3f3") > 5_000, "no table header row (checks, services) is on the page"
    json.loads(Path(paths["json"]).read_text())   # and report.json is whole
    assert T0 > 0
