"""drtool agent install: drtool on a site's hosts (serving hosts snapshot next to their weights, standbys
restore and verify), in its own venv, from a wheelhouse the controller builds once per drtool source: the hosts
need no package index. Standbys are powered on for the install and powered off again."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from drtool.config import Config
from drtool.errors import DrtoolError, OperationFailed
from drtool.execute.ansible import run_playbook
from drtool.fsutil import write_atomic
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
    """drtool's wheel and the agent's dependencies for this interpreter's Python, cached per source digest."""
    root = project_root()
    dest = Path(config.build_cache_dir) / "agent-wheelhouse" / source_digest(root)
    if (dest / "requirements.txt").exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pins = _pinned()
    with out.working("building the agent wheelhouse (drtool's wheel and its runtime dependencies)"):
        for argv in ([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp), str(root)],
                     [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(tmp), *pins]):
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                raise OperationFailed(f"building the agent wheelhouse failed: {' '.join(argv[2:5])}",
                                      details=proc.stderr.strip().splitlines()[-5:],
                                      hint="pip needs an index or a warm pip cache on the controller")
    write_atomic(tmp / "requirements.txt", "\n".join(pins) + "\n", 0o644)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


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
    results = {}
    for site, host in hosts:
        provider = None
        if site.is_standby:
            from drtool.providers import get_provider

            provider = get_provider(config, site)
            was_on = provider.state(host) == "on"
            if not was_on:
                provider.power_on(host)
                provider.wait_ready(host, timeout=120)
        try:
            res = run_playbook(config, "agent.yml", progress=out.ansible_progress(), extravars={
                "drtool_targets": host.name, "drtool_agent_action": "install", "drtool_agent_dir": config.agent_dir,
                "drtool_agent_wheelhouse": str(wh)})
            changed = [e.task for e in res.events if e.host == host.name and e.status == "changed"]
            results[host.name] = {**res.results.get(host.name, {}), "changed": changed}
        except DrtoolError as exc:
            results[host.name] = {"error": exc.message}
        finally:
            if provider is not None and not was_on:
                provider.power_off(host)
    failed = {h: r["error"] for h, r in results.items() if "error" in r}
    if failed:
        raise OperationFailed(f"the agent could not be installed on {', '.join(failed)}",
                              details=[f"{h}: {e}" for h, e in failed.items()])
    return {**plan, "wheelhouse": str(wh), "hosts": results}
