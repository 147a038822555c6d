"""The operations kit (ops/): alert rules, Alertmanager route, Grafana dashboard, EDA rulebook, cron and systemd
units, checked with the real tools (promtool, amtool, systemd-analyze, yamllint) where they exist."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

OPS = REPO / "ops"
BIN = Path(sys.executable).parent
RULES = OPS / "prometheus" / "drtool-rules.yml"
RULE_TESTS = OPS / "prometheus" / "drtool-rules.test.yml"
SCRAPE = OPS / "prometheus" / "scrape-example.yml"
AM = OPS / "alertmanager" / "drtool-receiver.yml"
DASHBOARD = OPS / "grafana" / "drtool-dashboard.json"
RULEBOOK = OPS / "eda" / "drtool-failover.rulebook.yml"
FAILOVER_PLAYBOOK = "playbooks/failover.yml"
DRTOOL = "/usr/local/bin/drtool"
CONFIG_ARGS = ["--config", "/etc/drtool/drtool.yaml"]

# What the drill runner writes to the controller's node_exporter textfile (issue #6): gauges labelled site and
# scenario, and the standby check labelled site and host.
DRILL_METRICS = {
    "drtool_drill_last_run_timestamp_seconds",
    "drtool_drill_last_success_timestamp_seconds",
    "drtool_drill_passed",
    "drtool_drill_rto_seconds",
    "drtool_drill_rpo_seconds",
    "drtool_standby_last_verified_timestamp_seconds",
}
ALERTS = {"ModelPrimaryDown", "ModelServerNotReady", "DrtoolBackupTooOld", "DrtoolBackupVerifyFailures",
          "DrtoolDrillOverdue", "DrtoolDrillFailed",
          # in-site alerts of one model server (issue #17)
          "ModelInstanceDown", "ModelGpuMemoryHigh", "ModelGpuTemperatureHigh", "ModelLatencyP95High",
          "ModelErrorRateHigh",
          # DR readiness (drtool readiness, nightly)
          "DrtoolDrNotReady", "DrtoolPredictedRtoOverTarget"}


def emitted_metrics() -> set[str]:
    """Every metric name the code base writes: the backup textfile, the model server, and the drill list."""
    names = set(DRILL_METRICS)
    for path in (REPO / "drtool" / "snapshot" / "metrics.py", REPO / "images" / "model-server" / "server.py",
                 REPO / "drtool" / "readiness" / "metrics.py"):
        found = set(re.findall(r"""["'](drtool_[a-z0-9_]+)["']""", path.read_text()))
        assert found, f"no metric names found in {path}: did the code move?"
        names |= found
    # prometheus_client exposes a Counter as <name>_total and a Histogram as _bucket, _sum and _count.
    return names | {n + suffix for n in names for suffix in ("_total", "_bucket", "_sum", "_count")}


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bdrtool_[a-z0-9_]+", expr))


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not path:
        pytest.fail(f"{name} is not installed: run `make setup` (Debian package prometheus / prometheus-alertmanager)")
    return path


def run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)


def load_rules() -> list[dict]:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    assert group["name"] == "drtool"
    return group["rules"]


# -- Prometheus ---------------------------------------------------------------------------------------------
def test_promtool_check_rules():
    proc = run(tool("promtool"), "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules():
    proc = run(tool("promtool"), "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    firing, quiet = set(), set()
    for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in t.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    assert firing == ALERTS, f"no firing test for {sorted(ALERTS - firing)}"
    assert quiet == ALERTS, f"no not-firing test for {sorted(ALERTS - quiet)}"


def test_promtool_check_scrape_example():
    proc = run(tool("promtool"), "check", "config", str(SCRAPE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {j["job_name"]: j for j in yaml.safe_load(SCRAPE.read_text())["scrape_configs"]}
    assert {"drtool-model-server", "node", "drtool-controller"} <= set(jobs)
    for job in ("drtool-model-server", "node"):
        for sc in jobs[job]["static_configs"]:
            assert {"site", "site_role"} <= set(sc["labels"]), (job, sc)
    # The drill metrics carry their own `site`; a target label would rename it to exported_site.
    assert all("site" not in sc.get("labels", {}) for sc in jobs["drtool-controller"]["static_configs"])


def test_rules_are_the_expected_alerts_with_labels_and_runbooks():
    rules = load_rules()
    assert {r["alert"] for r in rules} == ALERTS
    runbooks = {"ModelPrimaryDown": "docs/failover.md", "DrtoolBackupTooOld": "docs/snapshots.md",
                "DrtoolBackupVerifyFailures": "docs/snapshots.md", "DrtoolDrillOverdue": "docs/drills.md",
                "DrtoolDrillFailed": "docs/drills.md", "DrtoolDrNotReady": "docs/readiness.md",
                "DrtoolPredictedRtoOverTarget": "docs/readiness.md",
                **{a: "docs/model-server.md" for a in ("ModelInstanceDown", "ModelGpuMemoryHigh",
                                                      "ModelGpuTemperatureHigh", "ModelLatencyP95High",
                                                      "ModelErrorRateHigh")}}
    for r in rules:
        assert r["labels"]["severity"] in ("page", "ticket"), r["alert"]
        assert {"summary", "description", "runbook"} <= set(r["annotations"]), r["alert"]
        assert r["annotations"]["runbook"].startswith("docs/") and r["annotations"]["runbook"].endswith(".md")
        if r["alert"] in runbooks:
            assert r["annotations"]["runbook"] == runbooks[r["alert"]], r["alert"]


def test_rule_metrics_are_emitted_by_the_code():
    known = emitted_metrics()
    for r in load_rules():
        unknown = metric_names(r["expr"]) - known
        assert not unknown, f"{r['alert']} uses metrics nothing emits: {sorted(unknown)}"


def test_runbook_docs_exist():
    missing = sorted({r["annotations"]["runbook"].split("#")[0] for r in load_rules()}
                     - {str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")})
    assert not missing, f"runbook annotations point at missing docs: {missing}"


def test_model_primary_down_reaches_drtool_serve_with_its_site():
    """The alert exactly as promtool's unit test expects it, in an Alertmanager v4 webhook, parsed by drtool
    serve's own parser: it reads `alertname` and `site`, so both must be on the alert."""
    from drtool.alerts.receiver import parse_webhook

    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = [(case["alertname"], alert["exp_labels"]) for t in tests for case in t.get("alert_rule_test", [])
              for alert in case.get("exp_alerts") or [] if case["alertname"] == "ModelPrimaryDown"]
    assert firing, "no promtool test shows ModelPrimaryDown firing"
    for name, labels in firing:
        payload = {"version": "4", "status": "firing", "alerts": [{
            "status": "firing", "labels": {"alertname": name, **labels}, "startsAt": "2026-01-01T00:00:00Z",
            "fingerprint": "0123456789abcdef"}]}
        (alert,) = parse_webhook(json.dumps(payload).encode())
        assert alert.name == "ModelPrimaryDown"
        assert alert.site == "prod-west"


# -- Alertmanager -------------------------------------------------------------------------------------------
def test_alertmanager_fragment_structure():
    doc = yaml.safe_load(AM.read_text())
    route, instances = [r for r in doc["route"]["routes"] if r["receiver"] == "drtool"]
    # drtool serve fails over whatever site a site-level alert names: only ModelPrimaryDown may reach it so.
    assert route["matchers"] == ['alertname = "ModelPrimaryDown"']
    assert route["group_by"] == ["alertname", "site"]
    # Alerts about one instance climb its ladder (restart, drain) first; grouped per instance.
    assert instances["group_by"] == ["alertname", "site", "instance"] and instances["continue"] is True
    (receiver,) = [r for r in doc["receivers"] if r["name"] == "drtool"]
    (hook,) = receiver["webhook_configs"]
    assert hook["url"].endswith("/alerts")
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"].startswith("/")
    assert "credentials" not in auth, "the token must come from credentials_file, never inline"
    assert "bearer_token" not in hook["http_config"]


def test_amtool_check_config_and_routing():
    amtool = shutil.which("amtool") or ("/usr/bin/amtool" if Path("/usr/bin/amtool").exists() else None)
    if not amtool:  # structure is asserted above; amtool ships with Debian's prometheus-alertmanager
        return
    proc = run(amtool, "check-config", str(AM))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for labels, drtool in ((["alertname=ModelPrimaryDown", "site=prod-west", "severity=page"], True),
                           (["alertname=ModelServerNotReady", "site=prod-west", "instance=10.0.1.11:8080",
                             "severity=page"], True),
                           (["alertname=ModelGpuTemperatureHigh", "site=prod-west", "instance=10.0.1.11:8080",
                             "severity=page"], True),
                           (["alertname=ModelLatencyP95High", "site=prod-west", "severity=page"], False),
                           (["alertname=DrtoolBackupTooOld", "site=prod-west", "severity=ticket"], False)):
        proc = run(amtool, "config", "routes", "test", f"--config.file={AM}", *labels)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        receivers = proc.stdout.strip().split(",")
        assert ("drtool" in receivers) is drtool, (labels, receivers)
        assert receivers != ["drtool"], "alerts routed to drtool must page people as well"


# -- Grafana ------------------------------------------------------------------------------------------------
def test_grafana_dashboard():
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 40
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    panels = dash["panels"]
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), titles
    assert len({p["id"] for p in panels}) == len(panels)
    known = emitted_metrics()
    used = set()
    for p in panels:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            names = metric_names(t["expr"])
            assert names, f"{p['title']}: {t['expr']} reads no drtool metric"
            assert not names - known, f"{p['title']} uses metrics nothing emits: {sorted(names - known)}"
            used |= names
    for wanted in ("drtool_backup_last_success_timestamp_seconds", "drtool_backup_bytes_total",
                   "drtool_backup_duration_seconds", "drtool_drill_rpo_seconds", "drtool_drill_rto_seconds",
                   "drtool_drill_passed", "drtool_standby_last_verified_timestamp_seconds",
                   "drtool_model_server_ready", "drtool_model_server_gpu_memory_used_bytes",
                   "drtool_model_server_gpu_memory_total_bytes", "drtool_model_server_gpu_temperature_celsius",
                   "drtool_model_server_gpu_utilization_ratio", "drtool_readiness_ready",
                   "drtool_readiness_fleet_predicted_rto_seconds", "drtool_readiness_rto_target_seconds"):
        assert wanted in used, f"no panel shows {wanted}"
    (rto,) = [p for p in panels if "drtool_drill_rto_seconds" in p["targets"][0]["expr"]]
    assert rto["type"] == "timeseries"
    steps = rto["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert any(s["value"] for s in steps), "the RTO trend shows the target as a threshold"
    assert rto["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"


# -- Event-Driven Ansible -----------------------------------------------------------------------------------
# Both rulebooks hand ModelPrimaryDown to drtool's decision book through playbooks/alert_ingest.yml. The webhook one
# runs for real in tests/test_eda_rulebook.py; the production one's source (the ansible.eda collection) cannot be
# installed here, so both are checked against ansible-rulebook's own ruleset schema and for the same rule.
WEBHOOK_RULEBOOK = OPS / "eda" / "drtool-failover-webhook.rulebook.yml"
EDA_INVENTORY = OPS / "eda" / "inventory.yml"
INGEST_PLAYBOOK = "playbooks/alert_ingest.yml"


def ruleset_schema() -> dict:
    from importlib.resources import files

    return json.loads(files("ansible_rulebook").joinpath("schema/ruleset_schema.json").read_text())


@pytest.mark.parametrize("path, source, event", [(RULEBOOK, "ansible.eda.alertmanager", "event.alert"),
                                                 (WEBHOOK_RULEBOOK, "eda.builtin.webhook", "event.payload")],
                         ids=["alertmanager-source", "webhook-source"])
def test_eda_rulebook_structure(path, source, event):
    import jsonschema

    rulesets = yaml.safe_load(path.read_text())
    jsonschema.validate(rulesets, ruleset_schema())
    (rs,) = rulesets
    assert rs["hosts"] == "localhost"
    (src,) = rs["sources"]
    args = src[source]
    if source == "ansible.eda.alertmanager":
        assert isinstance(args["port"], int) and args["host"] == "127.0.0.1"
        assert args["data_alerts_path"] == "alerts" and args["skip_original_data"] is True
    else:   # every setting from the vars file; no webhook without a token
        assert "drtool_eda_token" in args["token"] and "default" not in args["token"]
        assert "127.0.0.1" in args["host"]
    (rule,) = rs["rules"]
    assert "ModelPrimaryDown" in rule["condition"] and event in rule["condition"]
    assert "firing" not in rule["condition"], "a resolved alert must reach the book (it cancels a queued approval)"
    assert "throttle" not in rule, "the book needs Alertmanager's repeated notifications (firing_for_s)"
    play = rule["action"]["run_playbook"]
    assert play["name"] == INGEST_PLAYBOOK and (REPO / INGEST_PLAYBOOK).is_file()
    extra = play["extra_vars"]
    assert extra["drtool_alert_urlencoded"] == "{{ " + event + " | tojson | urlencode }}"
    assert "/etc/drtool/drtool.yaml" in extra["drtool_config"] and "drtool_bin" in extra


def test_eda_inventory_is_the_controller_only():
    inv = yaml.safe_load(EDA_INVENTORY.read_text())
    assert inv["all"]["hosts"] == {"localhost": {"ansible_connection": "local",
                                                 "ansible_python_interpreter": "{{ ansible_playbook_python }}"}}


def test_alert_ingest_playbook_runs_drtool_alerts_ingest_without_a_shell():
    """The rulebooks' playbook decodes the alert into `drtool alerts ingest -`'s stdin: argv form, the alert never
    on argv and never rendered as a template."""
    (play,) = yaml.safe_load((REPO / INGEST_PLAYBOOK).read_text())
    assert play["hosts"] == "localhost" and play["connection"] == "local"
    commands = [t["ansible.builtin.command"] for t in play["tasks"] if "ansible.builtin.command" in t]
    assert not [t for t in play["tasks"] if {"ansible.builtin.shell", "shell", "command"} & set(t)]
    (cmd,) = commands
    assert cmd["argv"][1:] == ["--config", "{{ drtool_config }}", "--json", "alerts", "ingest", "-"]
    assert cmd["stdin"] == "{{ drtool_alert_urlencoded | urldecode }}"


def test_failover_playbook_exists():
    """The manual entry point (AWX, a runbook button): `drtool failover --site {{ drtool_site }} --yes --reason ...`
    on the controller. Alerts do not take it: they go to the decision book (playbooks/alert_ingest.yml)."""
    playbook = REPO / FAILOVER_PLAYBOOK
    assert playbook.is_file(), f"{FAILOVER_PLAYBOOK} is missing"
    text = playbook.read_text()
    assert "drtool_site" in text and "drtool_reason" in text


# -- cron and systemd ---------------------------------------------------------------------------------------
CRON_ENV = re.compile(r"^[A-Z_]+=")


def cron_entries(path: Path) -> list[tuple[list[str], str, str]]:
    entries = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or CRON_ENV.match(line):
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"{path.name}: not 5 time fields + user + command: {line}"
        entries.append((fields[:5], fields[5], fields[6]))
    assert entries, f"{path.name} has no entry"
    return entries


@pytest.mark.parametrize("name", ["drtool-backup", "drtool-drill", "drtool-readiness"])
def test_cron_files(name):
    path = OPS / "cron" / name
    assert path.read_text().endswith("\n"), "cron ignores a last line without a newline"
    assert re.fullmatch(r"[a-z0-9-]+", name), "cron.d skips file names with dots"
    for times, user, command in cron_entries(path):
        for field in times:
            assert re.fullmatch(r"[0-9*,/-]+", field), field
        assert user == "root"
        assert "%" not in command.replace(r"\%", ""), "an unescaped % ends a cron command"
        shell = command.replace(r"\%", "%")
        proc = run("sh", "-n", "-c", shell)
        assert proc.returncode == 0, proc.stderr
        argv = drtool_argv(shell)
        assert argv[1:3] == CONFIG_ARGS
        assert argv[3] == name.removeprefix("drtool-")
        assert ">>/var/log/drtool/" in shell
        if name == "drtool-backup":
            assert "flock -n" in shell and "shuf" in shell  # one run at a time, random delay
        elif name == "drtool-readiness":   # nightly: keeps its result in the DR store, metrics to the textfile
            assert argv[4:6] == ["--site", "dr-east"] and "--record" in argv and "--textfile" in argv
            assert "flock -n" in shell
        else:
            assert argv[4:6] == ["--site", "dr-east"] and "--report" in argv


def drtool_argv(shell: str) -> list[str]:
    """The words from drtool on, looking into `sh -c '...'` strings too."""
    argv = shlex.split(shell)
    if DRTOOL in argv:
        return argv[argv.index(DRTOOL):]
    (inner,) = [word for word in argv if DRTOOL in word and word != DRTOOL]
    return drtool_argv(inner)


def unit(path: Path) -> configparser.ConfigParser:
    # systemd units are INI-like enough for configparser (keys kept case-sensitive, repeats allowed).
    cp = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    cp.optionxform = str
    cp.read_string(path.read_text())
    return cp


@pytest.mark.parametrize("name", ["drtool-backup", "drtool-drill", "drtool-readiness"])
def test_systemd_units_structure(name):
    service, timer = unit(OPS / "systemd" / f"{name}.service"), unit(OPS / "systemd" / f"{name}.timer")
    assert service["Service"]["Type"] == "oneshot"
    argv = drtool_argv(service["Service"]["ExecStart"])
    assert argv[1:4] == [*CONFIG_ARGS, name.removeprefix("drtool-")]
    assert "[Install]" not in (OPS / "systemd" / f"{name}.service").read_text(), "started by its timer only"
    t = timer["Timer"]
    assert t["OnCalendar"] and t["RandomizedDelaySec"] and t["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify works without systemd as PID 1 (checked in this container). It also checks that
    ExecStart's program exists: drtool is installed at /usr/local/bin on a controller but lives in .venv here, so
    copies of the units naming the venv's drtool are verified."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:  # then test_systemd_units_structure is what checks the units
        return
    venv_drtool = BIN / "drtool"
    assert venv_drtool.exists()
    for src in (OPS / "systemd").iterdir():
        (tmp_path / src.name).write_text(src.read_text().replace(DRTOOL, str(venv_drtool)))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["drtool-backup.service", "drtool-backup.timer", "drtool-drill.service", "drtool-drill.timer",
                     "drtool-readiness.service", "drtool-readiness.timer"]
    proc = run(analyze, "verify", *[f"./{n}" for n in names], cwd=tmp_path)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stdout + proc.stderr
    for name in names:
        if name.endswith(".timer"):
            spec = unit(tmp_path / name)["Timer"]["OnCalendar"]
            proc = run(analyze, "calendar", spec)
            assert proc.returncode == 0, proc.stdout + proc.stderr


# -- YAML lint ----------------------------------------------------------------------------------------------
def test_yamllint_ops():
    proc = run(str(BIN / "yamllint"), "-s", "ops")
    assert proc.returncode == 0, proc.stdout + proc.stderr
