"""drtool agent install: drtool on a site's hosts (serving hosts snapshot next to their weights, standbys
restore and verify), in its own venv, from a wheelhouse the controller builds once per drtool source: the hosts
need no package index. Standbys are powered on for the install and powered off again."""

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from drtool.config import Config
from drtool.errors import DrtoolError, OperationFailed
from drtool.execute.ansible import run_playbook
from drtool.output import Output
from drtool.paths import project_root

# What the agent imports on the snapshot / restore / verify path (drtool's own wheel goes in with --no-deps).
AGENT_REQUIREMENTS = ("boto3", "click", "rich", "requests", "pyyaml", "jsonschema", "prometheus-client")


def source_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted([root / "pyproject.toml", *(root / "drtool").rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _pinned() -> list[str]:
    """The agent's requirements at the versions the controller runs (tested together)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in AGENT_REQUIREMENTS]


def wheelhouse(config: Config, out: Output) -> Path:
    """drtool's wheel and the agent's dependencies for this interpreter's Python, as one tar archive with
    requirements.txt: one file to copy to each host, where a directory of wheels cost one remote checksum per file
    (24 s of an unchanged install's 29 s on the lab). Cached per source digest."""
    root = project_root()
    archive = Path(config.build_cache_dir) / "agent-wheelhouse" / f"{source_digest(root)}.tar"
    if archive.exists():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    pins = _pinned()
    with tempfile.TemporaryDirectory(prefix="wheelhouse-", dir=archive.parent) as tmp_dir:
        tmp = Path(tmp_dir)
        with out.working("building the agent wheelhouse (drtool's wheel and its runtime dependencies)"):
            for argv in ([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), str(root)],
                         [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(tmp),
                          *pins]):
                proc = subprocess.run(argv, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise OperationFailed(f"building the agent wheelhouse failed: {' '.join(argv[2:5])}",
                                          details=proc.stderr.strip().splitlines()[-5:],
                                          hint="pip needs an index or a warm pip cache on the controller")
        (tmp / "requirements.txt").write_text("\n".join(pins) + "\n")
        part = tmp / "wheelhouse.tar"
        with tarfile.open(part, "w") as tar:
            # requirements.txt last: the host unpacks until it exists, so an unpack cut short is done again
            for path in [*sorted(tmp.glob("*.whl")), tmp / "requirements.txt"]:
                tar.add(path, arcname=path.name)
        os.chmod(part, 0o644)
        part.rename(archive)  # whole or absent: a broken build leaves nothing behind
    return archive


def install(config: Config, out: Output, site_name: str | None, dry_run: bool) -> dict:
    if not config.agent_dir:
        from drtool.errors import UsageError

        raise UsageError("agent.dir is not set: drtool runs on the hosts from ssh.python_interpreter's venv",
                         hint="set agent.dir (e.g. /opt/drtool) in the configuration to install the agent there")
    sites = [config.site(site_name)] if site_name else list(config.sites.values())
    hosts = [(s, h) for s in sites for h in s.hosts]
    plan = {"hosts": [h.name for _, h in hosts], "dir": config.agent_dir, "dry_run": dry_run}
    if dry_run:
        return plan
    wh = wheelhouse(config, out)
    results: dict[str, dict] = {}
    powered: list[tuple] = []  # (provider, host) of the standbys powered on for this install, to power off after
    from drtool.providers import get_provider

    try:
        for site, host in hosts:
            if not site.is_standby:
                continue
            provider = get_provider(config, site)
            try:
                if provider.state(host) != "on":
                    provider.power_on(host)
                    powered.append((provider, host))
                    provider.wait_ready(host, timeout=120)
            except DrtoolError as exc:
                results[host.name] = {"error": exc.message}
        targets = [h.name for _, h in hosts if h.name not in results]
        if targets:  # one play over every host: Ansible works on them at once
            res = run_playbook(config, "agent.yml", progress=out.ansible_progress(), raise_on_failure=False,
                               extravars={"drtool_targets": ",".join(targets), "drtool_agent_action": "install",
                                          "drtool_agent_dir": config.agent_dir,
                                          "drtool_agent_wheelhouse": str(wh)})
            for name, (ok, data) in res.per_host(targets).items():
                changed = [e.task for e in res.events if e.host == name and e.status == "changed"]
                results[name] = {**data, "changed": changed} if ok else {"error": data}
    finally:
        for provider, host in powered:
            provider.power_off(host)
    failed = {h: r["error"] for h, r in results.items() if "error" in r}
    if failed:
        raise OperationFailed(f"the agent could not be installed on {', '.join(failed)}",
                              details=[f"{h}: {e}" for h, e in failed.items()])
    return {**plan, "wheelhouse": str(wh), "hosts": {h.name: results[h.name] for _, h in hosts}}
