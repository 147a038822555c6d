#!/usr/bin/env python3
"""Ansible dynamic inventory built from drtool.yaml (the same one drtool uses on every run).

Usage: ansible-playbook -i inventory/drtool_inventory.py playbooks/status.yml
The config is found like drtool finds it: $DRTOOL_CONFIG, ./drtool.yaml, then the running lab's.
"""

import json
import sys

from drtool.config import load_config
from drtool.errors import DrtoolError
from drtool.inventory import build_inventory


def to_script_format(inv: dict) -> dict:
    """Convert the YAML-style inventory into Ansible's script (--list) format."""
    out: dict = {"_meta": {"hostvars": {}}, "all": {"vars": inv["all"]["vars"], "children": []}}
    for group, body in inv["all"]["children"].items():
        out["all"]["children"].append(group)
        hosts = body.get("hosts", {})
        out[group] = {"hosts": list(hosts), "vars": body.get("vars", {}), "children": list(body.get("children", {}))}
        for host, hv in hosts.items():
            out["_meta"]["hostvars"].setdefault(host, {}).update(hv)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        print("{}")
        sys.exit(0)
    try:
        print(json.dumps(to_script_format(build_inventory(load_config())), indent=2))
    except DrtoolError as err:
        print(f"drtool inventory: {err.message}", file=sys.stderr)
        for d in err.details:
            print(f"  - {d}", file=sys.stderr)
        sys.exit(err.exit_code)
