"""drtool watch on the lab's six-service prod-west (drtool-fleet.yaml): each service probed on its home hosts at its
own port. A crashed service is restarted in place and no other container is touched; the whole site down is one
site decision, not one per service."""

from __future__ import annotations

import json

import docker
import pytest
import requests
import yaml

from drtool.actions import watch
from drtool.config import load_config
from drtool.execute.serving import version
from drtool.lab.topology import FLEET_SERVICES, HOSTS
from drtool.output import Output

from .conftest import FRONT, PW_HOSTS, cli_json, dig, power_off_primary

# The six-service site's fixture alone sets up five more services (minutes), so the module runs nightly.
pytestmark = [pytest.mark.lab, pytest.mark.nightly]
PW_GPU1 = HOSTS["pw-gpu1"].address
VICTIM = next(s for s in FLEET_SERVICES if s.name == "tts")   # on pw-gpu1 only, not behind Nginx


@pytest.fixture(scope="module")
def fleet(lab, lab_config, production):
    """The five other services of drtool-fleet.yaml in production on pw-gpu1 (drtool/lab/fleet.py)."""
    from drtool.lab import fleet as lab_fleet

    image = production["image"]["pushed"][lab_config.site("prod-west").registry_url]
    lab_fleet.set_up(lab, image)
    return lab.layout.fleet_config


def _config(fleet, tmp_path, policy: str):
    doc = yaml.safe_load(fleet.read_text())
    doc["alerts"] = {"policy": policy, "firing_for_s": 0, "cooldown_s": 3600, "state_dir": str(tmp_path / "alerts")}
    doc["ha"] = {"restart_attempts": 2, "ready_timeout_s": 90}
    path = tmp_path / "drtool-fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _started(lab) -> dict[tuple[str, str], tuple[str, str]]:
    """Every serving container of prod-west: (host, name) -> (id, StartedAt)."""
    found = {}
    for host in PW_HOSTS:
        eng = docker.DockerClient(base_url=lab.engine_url(host))
        try:
            for c in eng.containers.list(all=True):
                if c.name.startswith("drtool-"):
                    found[(host, c.name)] = (c.id, c.attrs["State"]["StartedAt"])
        finally:
            eng.close()
    return found


def _ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def test_watch_restarts_only_the_crashed_service(lab, fleet, state, tmp_path):
    """tts's container on pw-gpu1 is killed (its engine leaves it stopped): the watch restarts that container in
    place, tts serves again, and no other service's container on either host was restarted."""
    cfg = load_config(_config(fleet, tmp_path, policy="approve"))
    container = f"drtool-{VICTIM.model}"
    before = _started(lab)
    assert ("pw-gpu1", container) in before and _ready(f"http://{PW_GPU1}:{VICTIM.port}/readyz")
    eng = docker.DockerClient(base_url=lab.engine_url("pw-gpu1"))
    try:
        eng.containers.get(container).stop(timeout=1)   # a kill may be restarted by Docker's own policy
        try:
            result = watch.run(cfg, Output(json_mode=True), "prod-west", failures=2, interval=0.5,
                               exit_on_trigger=True, max_probes=240, exit_on_recovery=True)
        finally:
            c = eng.containers.get(container)   # whatever happened, leave tts running for the next test
            if c.status != "running":
                c.start()
    finally:
        eng.close()
    assert result["decisions"] == [] and result["drains"] == [], result
    (recovery,) = result["recoveries"]
    assert recovery["instance"] == f"pw-gpu1/{VICTIM.name}" and recovery["rung"] == "restart"
    acted = {name: [r["kind"] for r in rec["rungs"] if r["kind"] != "none"]
             for name, rec in result["ladder"]["instances"].items()}
    assert {n: k for n, k in acted.items() if k} == {f"pw-gpu1/{VICTIM.name}": ["restart"]}
    served = version(f"http://{PW_GPU1}:{VICTIM.port}")
    assert served["model"] == VICTIM.model and served["ready"]
    after = _started(lab)
    assert after[("pw-gpu1", container)][0] == before[("pw-gpu1", container)][0]       # in place, not redeployed
    assert after[("pw-gpu1", container)][1] != before[("pw-gpu1", container)][1]       # started again
    others = {k: v for k, v in before.items() if k != ("pw-gpu1", container)}
    assert {k: after.get(k) for k in others} == others                                # nothing else restarted


def test_the_whole_site_down_is_one_site_decision(lab, fleet, state, tmp_path, back_to_production):
    """Both prod-west GPU hosts off: every instance of every service is down. The watch hands ONE alert for the
    site to the decision book (policy approve: queued, nothing moves), not one per service or instance."""
    path = _config(fleet, tmp_path, policy="approve")
    records = {svc.name: dig(svc.record) for svc in FLEET_SERVICES}
    power_off_primary(lab)
    result = cli_json("--config", str(path), "watch", "--site", "prod-west", "--failures", "3", "--interval", "0.3",
                      "--exit-on-trigger")
    assert [d["action"] for d in result["decisions"]] == ["awaiting_approval"], result["decisions"]
    assert result["decisions"][0]["target"] == "dr-east"
    (failover,) = result["ladder"]["sites"]["prod-west"]["failovers"]
    assert failover["kind"] == "failover" and "no healthy undrained instance" in failover["reason"]
    assert all(not [r for r in rec["rungs"] if r["kind"] == "restart"]
               for rec in result["ladder"]["instances"].values())                   # no host answers: no restart
    book = json.loads((tmp_path / "alerts" / "alerts" / "decisions.json").read_text())
    assert sum(1 for r in book["decisions"].values() if r["action"] == "awaiting_approval") == 1
    assert len(book["decisions"]) == 1
    assert dig() == FRONT and {svc.name: dig(svc.record) for svc in FLEET_SERVICES} == records   # nothing moved
