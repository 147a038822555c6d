"""drtool watch without the lab: probes and remedies stood in for, the real ladder, state dir and decision book."""

from __future__ import annotations

import json
from pathlib import Path

from drtool.actions import deploy, proxy, watch
from drtool.config import load_config
from drtool.output import Output

from .test_serve_ladder import CONFIG, TOKEN


def test_restart_counts_survive_a_restarted_watch(tmp_path, monkeypatch):
    """A watch restarts a down instance once and is restarted itself; the next watch reads the ladder's saved state
    and counts that restart: the second of two is the last, then the instance is drained (not restarted twice more
    because the new process forgot)."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    path = tmp_path / "drtool.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, restart="auto").replace("ready_timeout_s: 120", "ready_timeout_s: 0"))
    cfg = load_config(path)
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(watch, "probe", lambda site, timeout: {"pw-gpu1": "ConnectionError", "pw-gpu2": None})
    monkeypatch.setattr(watch, "ssh_banner", lambda *a, **kw: "SSH-2.0-OpenSSH")
    monkeypatch.setattr(deploy, "restart", lambda config, host, model: calls.append(("restart", host.name)))
    monkeypatch.setattr(proxy, "drain", lambda config, site, name: calls.append(("drain", name)))
    monkeypatch.setattr(proxy, "undrain", lambda config, site, name: calls.append(("undrain", name)))
    first = watch.run(cfg, Output(json_mode=True), "prod-west", failures=1, interval=0.01, exit_on_trigger=False,
                      max_probes=1)
    assert calls == [("restart", "pw-gpu1")] and first["decisions"] == []
    state = json.loads((Path(cfg.alerts.state_dir) / "ladder" / "prod-west.state.json").read_text())
    assert len(state["ladder"]["instances"]["pw-gpu1"]["restarts"]) == 1
    second = watch.run(cfg, Output(json_mode=True), "prod-west", failures=1, interval=0.01, exit_on_trigger=False,
                       max_probes=3)
    assert calls == [("restart", "pw-gpu1"), ("restart", "pw-gpu1"), ("drain", "pw-gpu1")]
    assert second["decisions"] == [] and [d["instance"] for d in second["drains"]] == ["pw-gpu1"]
