"""Build the Ansible inventory from the configuration: the config is the one source of truth."""

import sys
from pathlib import Path

from drtool.config import Config


def group_name(site: str) -> str:
    """Ansible group for a site (Ansible group names may not contain '-')."""
    return "site_" + site.replace("-", "_")


def build_inventory(config: Config) -> dict:
    """The inventory as a YAML-ready dict. Holds paths to secrets, never secret values."""
    ssh = config.ssh
    interpreter = ssh.python_interpreter or sys.executable
    all_vars: dict = {
        "ansible_user": ssh.user,
        "ansible_python_interpreter": interpreter,
        # drtool on the hosts: the agent `drtool agent install` put in agent.dir, else beside the Python that
        # Ansible uses there (the lab's hosts share the controller's venv).
        "drtool_bin": (f"{config.agent_dir}/venv/bin/drtool" if config.agent_dir
                       else str(Path(interpreter).parent / "drtool")),
        "drtool_ca_file": config.ca_file,
    }
    if config.lab_state_dir:
        # Lab hosts share the machine's root filesystem but each has its own /srv: keep what the nightly job
        # installs per host there instead of in the machine's /etc/cron.d.
        all_vars.update(weights_backup_cron_file="/srv/drtool/cron.d/drtool-backup",
                        weights_backup_script="/srv/drtool/sbin/drtool-nightly-snapshot",
                        weights_backup_log="/srv/drtool/log/drtool-backup.log",
                        weights_backup_lock="/srv/drtool/drtool-backup.lock",
                        weights_backup_textfile_dir="/srv/drtool/textfile")
    if ssh.private_key_file:
        all_vars["ansible_ssh_private_key_file"] = ssh.private_key_file
    children: dict = {}
    roles: dict[str, dict] = {"primary": {}, "dr": {}}
    serving: dict = {}
    standby: dict = {}
    proxies: dict = {}
    for site in config.sites.values():
        hosts = {h.name: {"ansible_host": h.address, "ansible_port": h.port} for h in site.hosts}
        for h in site.hosts:
            (standby if h.standby else serving)[h.name] = {}
        if site.proxy:
            # Its own group, not the site's: plays aimed at a site's serving hosts must not reach its Nginx.
            proxies[site.proxy.name] = {"ansible_host": site.proxy.address, "ansible_port": site.proxy.port,
                                        "drtool_site": site.name, "drtool_docker_host": "",
                                        "serving_proxy_dir": site.proxy.dir,
                                        "serving_proxy_listen": f"0.0.0.0:{site.serving_port}"}
        children[group_name(site.name)] = {
            "hosts": hosts,
            "vars": {
                "drtool_site": site.name,
                "drtool_site_role": site.role,
                "drtool_site_gpu": site.gpu,
                "drtool_docker_host": site.docker_host,
                "drtool_registry_url": site.registry_url,
                "drtool_serving_port": site.serving_port,
                "drtool_health_path": site.health_path,
            },
        }
        roles[site.role][group_name(site.name)] = {}
    children["primary"] = {"children": roles["primary"]}
    children["dr"] = {"children": roles["dr"]}
    children["serving"] = {"hosts": serving}
    children["standby"] = {"hosts": standby}
    children["proxy"] = {"hosts": proxies}
    return {"all": {"vars": all_vars, "children": children}}
