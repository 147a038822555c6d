"""drtool status: what each site is made of and whether its hosts answer."""

from drtool.config import Config
from drtool.execute.ansible import run_playbook
from drtool.output import Output
from drtool.providers.base import ssh_banner


def site_overview(config: Config) -> list[dict]:
    return [
        {
            "site": s.name,
            "role": s.role,
            "gpu": s.gpu,
            "hosts": [h.name for h in s.hosts],
            "standby_provider": s.standby_provider,
            "container_registry": s.registry_url,
            "object_stores": [o.url for o in s.object_stores],
            "dns_record": s.dns.record,
        }
        for s in config.sites.values()
    ]


def run(config: Config, out: Output, probe: bool = True) -> dict:
    hosts: list[dict] = []
    if probe:
        # Only hosts whose sshd answers are handed to Ansible: a cold standby is expected to be off.
        answering = [h for h in config.all_hosts() if ssh_banner(h.address, h.port)]
        results = None
        if answering:
            with out.working("probing hosts over SSH"):
                results = run_playbook(config, "status.yml",
                                       extravars={"drtool_targets": ",".join(h.name for h in answering)},
                                       progress=out.ansible_progress())
        for h in config.all_hosts():
            entry = {"host": h.name, "site": h.site, "address": h.address, "standby": h.standby}
            if h not in answering:
                entry.update(reachable=False, detail="powered off (cold standby)" if h.standby else "no SSH answer")
            elif h.name in (results.unreachable if results else {}):
                entry.update(reachable=False, detail=results.unreachable[h.name].splitlines()[0])
            else:
                data = results.results.get(h.name, {}) if results else {}
                entry.update(reachable=True, engine_version=data.get("engine_version"),
                             containers=data.get("containers", []),
                             detail=f"docker {data.get('engine_version')}, "
                                    f"{data.get('containers_running', 0)} container(s) running")
            hosts.append(entry)
    return {"config": str(config.path), "sites": site_overview(config), "hosts": hosts}
