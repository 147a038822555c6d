"""Drill reports: validate the runner's report dict and write report.json, junit.xml, report.html and metrics."""

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from html import escape
from importlib import resources
from pathlib import Path

import jsonschema
from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families
from rich.markup import escape as rich_escape
from rich.table import Table

from drtool.errors import OperationFailed
from drtool.fsutil import write_atomic, write_json_atomic

SCHEMA_ID = "drtool.drill.report/v1"

# Timeline bar colours. They are used for step bars only (nothing else on the page has them), so the
# screenshot test can find the timeline by counting pixels of these exact colours.
OUTCOME_COLOUR = {"done": "#2e7d32", "failed": "#c62828", "skipped": "#9e9e9e", "pending": "#f9a825"}
OK_COLOUR, BAD_COLOUR = "#43a047", "#b71c1c"  # badges and RTO/RPO gauges

# --------------------------------------------------------------------------------------------------
# validation


def _schema() -> dict:
    return json.loads(resources.files("drtool").joinpath("schema/drill-report.schema.json").read_text())


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate(report: dict) -> None:
    """Raise OperationFailed listing every schema problem, each naming its field (e.g. scenarios.0.rto_s)."""
    errors = sorted(jsonschema.Draft202012Validator(_schema()).iter_errors(report),
                    key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        details = [f"{_dotted(e.absolute_path)}: {e.message}" for e in errors]
        raise OperationFailed(f"invalid drill report: {details[0]}" + (f" (and {len(details) - 1} more)"
                                                                         if len(details) > 1 else ""),
                              hint="the drill runner produced a report that does not match "
                                   "drtool/schema/drill-report.schema.json; see docs/drills.md",
                              details=details)


# --------------------------------------------------------------------------------------------------
# small helpers shared by the writers


def _secs(v) -> str:
    return "—" if v is None else f"{v:.1f} s"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _evidence_text(evidence) -> str:
    if evidence is None:
        return ""
    if isinstance(evidence, str):
        return evidence
    return json.dumps(evidence, indent=2, sort_keys=True, default=str)


def _within(value, target) -> bool | None:
    """True/False when both are known; None when either is missing (not judged)."""
    return None if value is None or target is None else value <= target


def _cleanup_complete(sc: dict) -> bool:
    return not sc.get("not_cleaned") and all(c.get("ok") for c in sc.get("cleanup") or [])


def _span(sc: dict) -> tuple[float | None, float | None]:
    starts = [s["start"] for s in sc["steps"] if s.get("start") is not None]
    ends = [s["end"] for s in sc["steps"] if s.get("end") is not None]
    return (min(starts) if starts else None), (max(ends) if ends else None)


def exit_code(report: dict) -> int:
    """The drill's exit code (docs/drills.md): 0 every scenario passed; 3 a scenario ran and failed (a check failed,
    or it stopped after its fault); otherwise the code of the error that kept the first scenario from running at
    all (1 the drill itself could not run, 2 bad input), nothing injected and no check failed."""
    if report["scenarios"] and report["passed"]:
        return 0
    could_not_run = []
    for sc in report["scenarios"]:
        if sc["passed"]:
            continue
        if sc.get("error") and sc.get("fault_at") is None and all(c["passed"] for c in sc["checks"]):
            could_not_run.append(sc.get("error_exit_code") or 1)
        else:
            return 3
    return could_not_run[0] if could_not_run else 1


def fallbacks(sc: dict) -> list[str]:
    """Every standby a failover refused before the one it used, one sentence per service: a fallback is never
    hidden."""
    out = []
    for name, p in (sc.get("services") or {}).items():
        refused = [t for t in p.get("standbys_tried") or [] if not t.get("ok")]
        if refused:
            out.append(f"service {name}: " + "; ".join(
                f"standby {t['host']} refused: {t.get('error') or 'no reason recorded'}" for t in refused)
                + (f"; moved to {p['standby']} instead" if p.get("status") == "moved" and p.get("standby")
                   else "; not moved"))
        elif p.get("fallback"):
            out.append(f"service {name}: {p['fallback']}")
    return out


def check_sentence(check: dict) -> str:
    """What a check saw, in one sentence: its summary; for a report written before summaries, a string evidence."""
    if check.get("summary"):
        return check["summary"]
    evidence = check.get("evidence")
    return evidence if isinstance(evidence, str) else ""


# --------------------------------------------------------------------------------------------------
# report.json, junit.xml, report.html


def write_reports(report: dict, out_dir: Path) -> dict[str, str]:
    """Validate, then write report.json, junit.xml and report.html atomically into out_dir."""
    validate(report)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "junit": out_dir / "junit.xml", "html": out_dir / "report.html"}
    # Reports are meant to be shared (CI artifacts, the game-day review), hence world-readable.
    write_json_atomic(paths["json"], report, mode=0o644)
    write_atomic(paths["junit"], junit_xml(report))
    write_atomic(paths["html"], render_html(report))
    return {k: str(v) for k, v in paths.items()}


def junit_xml(report: dict) -> str:
    root = ET.Element("testsuites", name=f"drill {report['drill_id']}")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for sc in report["scenarios"]:
        suite_name = f"drill.{sc['scenario']}"
        cases = []  # (name, seconds, failure message or None, failure text)
        timed = {"rto_within_target": sc.get("rto_s"), "rpo_within_target": sc.get("rpo_s")}
        for ck in sc["checks"]:
            text = _evidence_text(ck.get("evidence"))
            first_line = text.strip().splitlines()[0][:200] if text.strip() else ""
            msg = ck.get("message") or ck.get("summary") or first_line or "check failed"
            cases.append((ck["name"], timed.get(ck["name"]) or 0.0, None if ck["passed"] else msg, text))
        checked = {ck["name"] for ck in sc["checks"]}   # a check of the scenario is its own case, never twice
        for key, label in (("rto_s", "RTO"), ("rpo_s", "RPO")):
            value, target = sc.get(key), report["targets"].get(key)
            if _within(value, target) is not None and f"{label.lower()}_within_target" not in checked:
                fail = None if value <= target else f"{label} {value:.1f} s is over the target {target:.1f} s"
                cases.append((f"{label.lower()}_within_target", value, fail, fail or ""))
        load = sc.get("load")
        if load is not None and "load_within_slo" not in checked:
            fail = None if load["passed"] else "load results outside the SLO"
            cases.append(("load_within_slo", 0.0, fail, json.dumps(load, sort_keys=True) if fail else ""))
        not_cleaned = list(sc.get("not_cleaned") or []) + [
            f"{c['action']}: {c.get('detail') or 'failed'}" for c in sc.get("cleanup") or [] if not c.get("ok")]
        cases.append(("cleanup_complete", 0.0, None if _cleanup_complete(sc) else "cleanup left things behind",
                      "\n".join(not_cleaned)))

        start, end = _span(sc)
        suite = ET.SubElement(root, "testsuite", name=suite_name, timestamp=_iso(start or report["started"]),
                              time=f"{end - start if start is not None and end is not None else 0.0:.3f}")
        props = ET.SubElement(suite, "properties")
        for key in ("site", "primary", "record", "live", "model", "version"):
            value = report[key]
            ET.SubElement(props, "property", name=key, value=json.dumps(value) if isinstance(value, bool) else value)
        if not sc["passed"] and not sc.get("error") and all(c[2] is None for c in cases):
            # never let a failed scenario look green in CI, even if the runner recorded no failing check
            cases.append(("scenario_passed", 0.0, "the scenario failed", ""))
        failures = errors = 0
        for name, secs, fail, text in cases:
            case = ET.SubElement(suite, "testcase", classname=suite_name, name=name, time=f"{secs:.3f}")
            if fail is not None:
                failures += 1
                ET.SubElement(case, "failure", message=fail, type="DrillCheckFailed").text = text
        if sc.get("error"):  # the scenario stopped early: say so, or its remaining checks look green
            errors += 1
            case = ET.SubElement(suite, "testcase", classname=suite_name, name="scenario_completed", time="0.000")
            ET.SubElement(case, "error", message=sc["error"], type="DrillError").text = sc["error"]
        tests = len(cases) + errors
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
        suite.set("skipped", "0")
        totals["tests"] += tests
        totals["failures"] += failures
        totals["errors"] += errors
    for k, v in totals.items():
        root.set(k, str(v))
    root.set("time", f"{report['ended'] - report['started']:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222}
h1{font-size:20px;margin:0 0 4px} h2{font-size:17px;margin:18px 0 6px;border-top:1px solid #ccc;padding-top:10px}
h3{font-size:14px;margin:10px 0 4px}
.badge{display:inline-block;padding:1px 8px;border-radius:3px;color:#fff;font-weight:bold}
.ok{background:#43a047} .bad{background:#b71c1c} .meta{color:#555}
table{border-collapse:collapse;margin:4px 0} td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;
vertical-align:top} th{background:#f3f3f3}
pre{margin:0;max-height:160px;overflow:auto;white-space:pre-wrap;font-size:12px}
.notclean{border:2px solid #b71c1c;background:#fdecea;padding:4px 10px}
.err{color:#b71c1c}
.fallback{border:2px solid #ef6c00;background:#fff3e0;padding:4px 10px;margin:6px 0}
details summary{cursor:pointer;color:#555;font-size:12px}
"""


def _badge(ok: bool, yes="PASSED", no="FAILED") -> str:
    return f'<span class="badge {"ok" if ok else "bad"}">{yes if ok else no}</span>'


def _ticks(lo: float, hi: float) -> list[float]:
    step = next((s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600) if (hi - lo) / s <= 10), 7200)
    first = int(lo // step) * step
    return [t for t in range(first, int(hi) + step, step) if lo <= t <= hi]


def timeline_svg(sc: dict, report: dict) -> str:
    """One bar per step, placed by start/end in seconds after the fault; markers at the fault and at RTO."""
    steps = sc["steps"]
    start, _ = _span(sc)
    t0 = sc.get("fault_at") or start or report["started"]
    rel = [(s.get("start") - t0 if s.get("start") is not None else None,
            s.get("end") - t0 if s.get("end") is not None else None) for s in steps]
    known = [x for pair in rel for x in pair if x is not None]
    rto, target = sc.get("rto_s"), report["targets"].get("rto_s")
    lo = min([0.0, *known])
    hi = max([1.0, *known, *(v for v in (rto, target) if v is not None)])
    hi += (hi - lo) * 0.03
    label_w, chart_w, row_h, top = 170, 950, 24, 22
    width, height = label_w + chart_w + 20, top + row_h * len(steps) + 26

    def x(t: float) -> float:
        return round(label_w + (t - lo) / (hi - lo) * chart_w, 1)

    out = [f'<svg id="timeline-{escape(sc["scenario"])}" class="timeline" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline of {escape(sc["scenario"])}" '
           f'font-family="system-ui,sans-serif" font-size="12">']
    axis_y = top + row_h * len(steps) + 4
    for t in _ticks(lo, hi):
        out.append(f'<line x1="{x(t)}" y1="{top - 4}" x2="{x(t)}" y2="{axis_y}" stroke="#e5e5e5"/>'
                   f'<text x="{x(t)}" y="{axis_y + 14}" text-anchor="middle" fill="#666">{t:g}s</text>')
    for i, (step, (a, b)) in enumerate(zip(steps, rel, strict=True)):
        y = top + i * row_h
        outcome = step["outcome"]
        out.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{escape(step["name"])}</text>')
        if a is None:
            out.append(f'<text x="{label_w + 4}" y="{y + 15}" fill="#888">{escape(outcome)}: not run</text>')
            continue
        b = a if b is None else b
        w = max(x(b) - x(a), 3)
        tip = f'{step.get("title") or step["name"]}: {outcome}, {a:.1f}s → {b:.1f}s'
        out.append(f'<rect x="{x(a)}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                   f'fill="{OUTCOME_COLOUR[outcome]}"><title>{escape(tip)}</title></rect>'
                   f'<text x="{x(a) + w + 4:.1f}" y="{y + 15}" fill="#444">{b - a:.1f}s {escape(outcome)}</text>')
    marks = [(0.0, "fault", "#000")]
    if target is not None:
        marks.append((target, "RTO target", "#888"))
    if rto is not None:
        marks.append((rto, f"RTO {rto:.1f}s", BAD_COLOUR if target is not None and rto > target else "#1565c0"))
    for t, label, colour in marks:
        dash = ' stroke-dasharray="4 3"' if label == "RTO target" else ""
        # labels near the right edge go left of their line so they are not cut off
        anchor = ('end', x(t) - 3) if x(t) > label_w + chart_w * 0.85 else ('start', x(t) + 3)
        out.append(f'<line x1="{x(t)}" y1="{top - 8}" x2="{x(t)}" y2="{axis_y}" stroke="{colour}" '
                   f'stroke-width="2"{dash}/><text x="{anchor[1]:.1f}" y="{top - 10}" text-anchor="{anchor[0]}" '
                   f'fill="{colour}">{escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _gauge(label: str, value, target) -> str:
    """A horizontal bar for value against target: green when within, red when over."""
    if value is None:
        return f"<div><b>{label}</b> not reached (target {_secs(target)})</div>"
    scale = max(value, target or 0, 1e-9) * 1.1
    within = _within(value, target)
    colour = BAD_COLOUR if within is False else OK_COLOUR
    w = 400
    svg = (f'<svg width="{w + 2}" height="18" role="img" aria-label="{label}">'
           f'<rect x="1" y="3" width="{w}" height="12" fill="#eee"/>'
           f'<rect x="1" y="3" width="{value / scale * w:.1f}" height="12" fill="{colour}"/>')
    if target is not None:
        svg += f'<line x1="{1 + target / scale * w:.1f}" y1="0" x2="{1 + target / scale * w:.1f}" y2="18" ' \
               f'stroke="#000" stroke-width="2"/>'
    verdict = "" if within is None else (" within target" if within else " <b class='err'>OVER TARGET</b>")
    return (f"<div><b>{label}</b> {svg}</svg> {value:.1f} s (target {_secs(target)}){verdict}</div>")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _service_capacity_html(cap: dict | None) -> str:
    if not cap:
        return "—"
    return (escape(f"{cap.get('rps')} rps, p95 {cap.get('p95_ms')} ms, errors {cap.get('error_rate')} ")
            + _badge(bool(cap.get("passed")), "pass", "fail"))


def _scenario_html(sc: dict, report: dict) -> str:
    name = escape(sc["scenario"])
    parts = [f'<h2 id="scenario-{name}">drill.{name} {_badge(sc["passed"])}</h2>',
             f'<div class="meta">fault: {escape(sc.get("fault") or "—")} at {_iso(sc.get("fault_at")) or "—"}</div>']
    if sc.get("error"):
        parts.append(f'<div class="err">error: {escape(sc["error"])}</div>')
    refused = fallbacks(sc)
    if refused:
        parts.append('<div class="fallback"><b>Standby refused, fallback used:</b><ul>'
                     + "".join(f"<li>{escape(x)}</li>" for x in refused) + "</ul></div>")
    parts.append(timeline_svg(sc, report))
    parts += [f'<div class="err">step {escape(s["name"])} failed: {escape(s["error"])}</div>'
              for s in sc["steps"] if s.get("error")]
    parts.append(_gauge("RTO", sc.get("rto_s"), report["targets"].get("rto_s")))
    parts.append(_gauge("RPO", sc.get("rpo_s"), report["targets"].get("rpo_s")))
    if sc.get("split"):
        parts.append('<div class="meta">RTO split: ' + ", ".join(
            f"{escape(k)} {v:.1f} s" for k, v in sc["split"].items()) + "</div>")
    parts.append("<h3>Checks</h3>" + _table(["check", "result", "what was seen", "evidence"], [
        [escape(c["name"]), _badge(c["passed"], "pass", "fail"),
         escape(check_sentence(c) or "—")
         + (f'<div class="err">{escape(c["message"])}</div>' if c.get("message") and not c["passed"] else ""),
         f"<details><summary>raw</summary><pre>{escape(_evidence_text(c.get('evidence')))}</pre></details>"]
        for c in sc["checks"]]))
    load = sc.get("load")
    if load:
        slo = load.get("slo") or {}
        parts.append("<h3>Load</h3>" + _table(
            ["requests", "concurrency", "rps", "p50 ms", "p95 ms", "p99 ms", "error rate", "canary mismatches",
             "SLO", "result"],
            [[escape(str(load.get(k, "—"))) for k in ("requests", "concurrency", "rps", "p50_ms", "p95_ms",
                                                       "p99_ms", "error_rate", "canary_mismatches")]
             + [escape(", ".join(f"{k} {v}" for k, v in slo.items())), _badge(load["passed"], "pass", "fail")]]))
    if sc.get("services"):   # a failover scenario: one row per service it recovered
        parts.append("<h3>Services</h3>" + _table(
            ["service", "status", "standby", "record", "record moved", "RTO", "RPO", "capacity", "error"],
            [[escape(n), escape(str(p.get("status"))), escape(str(p.get("standby") or "—"))
              + "".join(f'<div class="err">{escape(t["host"])} refused</div>'
                        for t in p.get("standbys_tried") or [] if not t.get("ok")),
              escape(p["record"]), escape(_secs(p.get("moved_s"))), escape(_secs(p.get("rto_s"))),
              escape(_secs(p.get("rpo_s"))), _service_capacity_html(p.get("capacity")), escape(p.get("error") or "")]
             for n, p in sc["services"].items()]))
    rungs = ladder_rungs(sc)
    if rungs:
        parts.append("<h3>Escalation ladder</h3>" + _table(
            ["instance", "rung", "action", "policy", "decided", "outcome", "reason"],
            [[escape(r["instance"]), escape(r["rung"]), escape(r["kind"]), escape(r["policy"]),
              escape(_iso(r["decided_at"]) or "—"), escape(r["outcome"] or "—"), escape(r["reason"])]
             for r in rungs]))
    parts.append("<h3>Cleanup</h3><ul>" + "".join(
        f'<li>{"✔" if c["ok"] else "<b class=err>✘</b>"} {escape(c["action"])}'
        f'{" — " + escape(c["detail"]) if c.get("detail") else ""}</li>' for c in sc.get("cleanup") or [])
        + "</ul>")
    if sc.get("not_cleaned"):
        parts.append('<div class="notclean"><b>Not cleaned up — undo by hand:</b><ul>'
                     + "".join(f"<li>{escape(x)}</li>" for x in sc["not_cleaned"]) + "</ul></div>")
    return f'<section class="scenario">{"".join(parts)}</section>'


def render_html(report: dict) -> str:
    """One self-contained page: inline CSS and SVG, no scripts, no external references."""
    r = {k: escape(str(report[k])) for k in ("drill_id", "site", "primary", "record", "model", "version")}
    live = "<b class='err'>LIVE (production record)</b>" if report["live"] else "rehearsal (drill record)"
    header = (f"<h1>Drill {r['drill_id']} {_badge(report['passed'])}</h1>"
              f"<div class='meta'>site <b>{r['site']}</b> (primary {r['primary']}) · record <b>{r['record']}</b> · "
              f"{live} · model {r['model']} {r['version']} · {_iso(report['started'])} → {_iso(report['ended'])}"
              f" · targets RTO {_secs(report['targets'].get('rto_s'))}, RPO {_secs(report['targets'].get('rpo_s'))}"
              "</div>")
    body = "".join(_scenario_html(sc, report) for sc in report["scenarios"])
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>Drill {r['drill_id']}</title>"
            f"<style>{CSS}</style></head><body>{header}{body}</body></html>\n")


# --------------------------------------------------------------------------------------------------
# Prometheus textfile

SCENARIO_GAUGES = {
    "drtool_drill_last_run_timestamp_seconds": "When the scenario last ran (drill end).",
    "drtool_drill_last_success_timestamp_seconds": "When the scenario last passed (kept across failed runs).",
    "drtool_drill_passed": "1 if the scenario passed in its last run, else 0.",
    "drtool_drill_rto_seconds": "RTO measured in the scenario's last run (absent when not reached).",
    "drtool_drill_rpo_seconds": "RPO measured in the scenario's last run (absent when not reached).",
}
STANDBY_VERIFIED = "drtool_standby_last_verified_timestamp_seconds"
LAST_SUCCESS = "drtool_drill_last_success_timestamp_seconds"


def _previous_samples(path: Path) -> list[tuple[str, dict, float]]:
    try:
        text = path.read_text()
        return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]
    except (OSError, ValueError):  # absent or damaged: rewritten whole below
        return []


def write_metrics(report: dict, path: Path) -> None:
    """Write the drill gauges; series of scenarios and hosts this run did not touch are carried over, and
    the last success survives a failed run (so `time() - last_success` alerts keep working)."""
    path = Path(path)
    site = report["site"]
    values: dict[tuple[str, tuple], float] = {}
    this_run = {sc["scenario"] for sc in report["scenarios"]}
    verified = {}   # each standby that served a service's canary through its record, and when
    for sc in report["scenarios"]:
        for p in (sc.get("services") or {}).values():
            if p.get("standby") and p.get("rto_s") is not None and sc.get("fault_at") is not None:
                verified[p["standby"]] = max(sc["fault_at"] + p["rto_s"], verified.get(p["standby"], 0.0))
    for name, labels, value in _previous_samples(path):
        if name in SCENARIO_GAUGES and labels.keys() == {"site", "scenario"}:
            if name == LAST_SUCCESS or labels["site"] != site or labels["scenario"] not in this_run:
                values[(name, (labels["site"], labels["scenario"]))] = value
        elif name == STANDBY_VERIFIED and labels.keys() == {"site", "host"}:
            if labels["site"] != site or labels["host"] not in verified:
                values[(name, (labels["site"], labels["host"]))] = value
    for sc in report["scenarios"]:
        key = (site, sc["scenario"])
        values[("drtool_drill_last_run_timestamp_seconds", key)] = report["ended"]
        values[("drtool_drill_passed", key)] = 1.0 if sc["passed"] else 0.0
        if sc["passed"]:
            values[(LAST_SUCCESS, key)] = report["ended"]
        for metric, field in (("drtool_drill_rto_seconds", "rto_s"), ("drtool_drill_rpo_seconds", "rpo_s")):
            if sc.get(field) is not None:
                values[(metric, key)] = sc[field]
    for host, ts in verified.items():
        values[(STANDBY_VERIFIED, (site, host))] = ts

    reg = CollectorRegistry()
    gauges = {name: Gauge(name, doc, ["site", "scenario"], registry=reg) for name, doc in SCENARIO_GAUGES.items()}
    gauges[STANDBY_VERIFIED] = Gauge(STANDBY_VERIFIED, "When a standby last served the verified model in a drill.",
                                     ["site", "host"], registry=reg)
    for (name, labels), value in values.items():
        gauges[name].labels(*labels).set(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), reg)  # temp file + rename: never seen half-written


# --------------------------------------------------------------------------------------------------
# history and console tables


def history_rows(reports: list[dict]) -> list[dict]:
    """One row per (drill, scenario), oldest first; rto_trend is the RTO change since the previous run of the
    same scenario at the same site that reached an RTO (negative = faster)."""
    rows = []
    for rep in sorted(reports, key=lambda r: r["started"]):
        for sc in rep["scenarios"]:
            rows.append({"drill_id": rep["drill_id"], "site": rep["site"], "started": _iso(rep["started"]),
                         "scenario": sc["scenario"], "passed": sc["passed"],
                         "rto_s": sc.get("rto_s"), "rpo_s": sc.get("rpo_s"),
                         "rto_target": rep["targets"].get("rto_s"), "rpo_target": rep["targets"].get("rpo_s"),
                         "rto_trend": None})
    last_rto: dict[tuple[str, str], float] = {}
    for row in rows:
        key = (row["site"], row["scenario"])
        if row["rto_s"] is not None:
            if key in last_rto:
                row["rto_trend"] = round(row["rto_s"] - last_rto[key], 3)
            last_rto[key] = row["rto_s"]
    return rows


def _vs(value, target) -> str:
    within = _within(value, target)
    text = f"{_secs(value)} / {_secs(target)}"
    return text if within is None else f"[{'green' if within else 'red'}]{text}[/]"


def render_history_table(rows: list[dict]) -> Table:
    t = Table(title="Drill history", title_justify="left", header_style="bold")
    for col in ("started", "drill", "site", "scenario", "result", "RTO / target", "RTO trend", "RPO / target"):
        t.add_column(col)
    for r in rows:
        trend = r["rto_trend"]
        trend_s = "" if trend is None else f"[{'red' if trend > 0 else 'green'}]{trend:+.1f} s[/]"
        t.add_row(r["started"], rich_escape(r["drill_id"]), rich_escape(r["site"]), rich_escape(r["scenario"]),
                  "[green]passed[/]" if r["passed"] else "[red]FAILED[/]",
                  _vs(r["rto_s"], r["rto_target"]), trend_s, _vs(r["rpo_s"], r["rpo_target"]))
    return t


OUTCOME_STYLE = {"done": "green", "failed": "red", "skipped": "dim", "pending": "yellow"}


def ladder_rungs(sc: dict) -> list[dict]:
    """The escalation ladder's rungs taken in a scenario (its journal summary), instance by instance, then the
    site's failover decisions."""
    ladder = sc.get("ladder") or {}
    rows = [{"instance": name, **r} for name, inst in (ladder.get("instances") or {}).items()
            for r in inst.get("rungs", [])]
    rows += [{"instance": f"site {site}", **r} for site, rec in (ladder.get("sites") or {}).items()
             for r in rec.get("failovers", [])]
    return rows


def summary_table(report: dict) -> list[Table]:
    """One table per scenario for the console: steps, RTO/RPO against targets, checks, load, cleanup."""
    tables = []
    for sc in report["scenarios"]:
        verdict = "[green]PASSED[/]" if sc["passed"] else "[red]FAILED[/]"
        t = Table(title=f"drill.{rich_escape(sc['scenario'])} at {rich_escape(report['site'])} {verdict}",
                  title_justify="left", header_style="bold")
        for col in ("", "value", "result", "detail"):
            t.add_column(col)
        for s in sc["steps"]:
            style = OUTCOME_STYLE[s["outcome"]]
            t.add_row(f"step {rich_escape(s['name'])}", _secs(s.get("seconds")), f"[{style}]{s['outcome']}[/]",
                      rich_escape(s.get("error") or ""))
        t.add_section()
        for label, key in (("RTO", "rto_s"), ("RPO", "rpo_s")):
            within = _within(sc.get(key), report["targets"].get(key))
            t.add_row(label, _vs(sc.get(key), report["targets"].get(key)),
                      {True: "[green]within target[/]", False: "[red]over target[/]", None: "not judged"}[within], "")
        t.add_section()
        for c in sc["checks"]:
            said = check_sentence(c)
            if c.get("message") and not c["passed"]:
                said = f"{said} ({c['message']})" if said else c["message"]
            t.add_row(f"check {rich_escape(c['name'])}", "", "[green]passed[/]" if c["passed"] else "[red]failed[/]",
                      rich_escape(said))
        for line in fallbacks(sc):
            t.add_row("fallback", "", "[yellow]standby refused[/]", rich_escape(line))
        for r in ladder_rungs(sc):
            t.add_row(f"ladder {rich_escape(r['kind'])}", rich_escape(r["instance"]),
                      rich_escape(r["outcome"] or "decided"), rich_escape(f"{r['policy']}: {r['reason']}"))
        for n, p in (sc.get("services") or {}).items():
            cap = p.get("capacity") or {}
            ok = p.get("status") == "moved" and p.get("rto_s") is not None and cap.get("passed")
            t.add_row(f"service {rich_escape(n)}", f"RTO {_secs(p.get('rto_s'))}, RPO {_secs(p.get('rpo_s'))}",
                      "[green]moved, served[/]" if ok else f"[red]{rich_escape(str(p.get('status')))}[/]",
                      rich_escape(f"{p.get('standby') or '—'}; {cap.get('rps')} rps p95 {cap.get('p95_ms')} ms"
                                  if cap else (p.get("error") or "")))
        if sc.get("load"):
            ld = sc["load"]
            t.add_row("load", f"{ld.get('rps')} rps, p95 {ld.get('p95_ms')} ms, errors {ld.get('error_rate')}",
                      "[green]passed[/]" if ld["passed"] else "[red]failed[/]", "")
        t.add_row("cleanup", f"{len(sc.get('cleanup') or [])} action(s)",
                  "[green]complete[/]" if _cleanup_complete(sc) else "[red]incomplete[/]",
                  rich_escape("; ".join(sc.get("not_cleaned") or [])))
        if sc.get("error"):
            t.add_row("error", "", "[red]error[/]", rich_escape(sc["error"]))
        tables.append(t)
    return tables
