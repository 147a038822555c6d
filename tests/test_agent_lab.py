"""The drtool agent on lab hosts, for real: built into a wheelhouse here, installed by the drtool_agent role over
SSH into each host's own /srv (no package index there), idempotent, and used by `drtool backup` on the host."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from .conftest import MODEL, cli_json, run_cli

pytestmark = pytest.mark.lab
AGENT_DIR = "/srv/drtool/agent"  # each lab host has its own /srv


@pytest.fixture
def agent_config(lab_config, tmp_path):
    doc = yaml.safe_load(lab_config.path.read_text())
    doc["agent"] = {"dir": AGENT_DIR}
    path = tmp_path / "drtool.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_agent_installed_idempotent_and_used_by_backup(lab, production, agent_config):
    shutil.rmtree(lab.state_dir / "hosts" / "pw-gpu1" / "srv" / "drtool" / "agent", ignore_errors=True)  # from scratch
    first = cli_json("--config", str(agent_config), "agent", "install", "--site", "prod-west")
    host = first["hosts"]["pw-gpu1"]
    assert host["version"].startswith("drtool") and "Install drtool itself when its wheel changed" in host["changed"]
    agent = lab.state_dir / "hosts" / "pw-gpu1" / "srv" / "drtool" / "agent" / "venv" / "bin" / "drtool"
    assert agent.exists()
    # The agent's venv holds drtool's runtime only: none of the controller's Ansible, Locust or torch.
    # (Seen from here, not from inside the host: run pip through the venv's python; its scripts' shebangs name
    # the host's /srv path.)
    frozen = subprocess.run([str(agent.parent / "python"), "-m", "pip", "freeze"], capture_output=True, text=True,
                            check=True).stdout
    assert "boto3" in frozen and "ansible" not in frozen and "locust" not in frozen and "torch" not in frozen

    again = cli_json("--config", str(agent_config), "agent", "install", "--site", "prod-west")
    assert again["hosts"]["pw-gpu1"]["changed"] == []  # a second run changes nothing

    # drtool backup now runs the agent on the host (drtool_bin points into agent.dir).
    proc = run_cli("--config", str(agent_config), "--json", "backup")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    snap = json.loads(proc.stdout)["snapshots"][0]
    assert snap["model"] == MODEL and snap["host"] == "pw-gpu1"
    assert snap["drtool"] == f"{AGENT_DIR}/venv/bin/drtool"  # the snapshot ran with the agent on the host


def test_agent_install_without_agent_dir_is_a_usage_error(lab, lab_config):
    proc = run_cli("agent", "install")
    assert proc.returncode == 2 and "agent.dir is not set" in proc.stderr
