"""The command line: click commands that only copy parameters into an action call and print its result."""

from __future__ import annotations

import functools
import sys

import click

from drtool import __version__
from drtool.errors import EXIT_CODES, DrtoolError, OperationFailed
from drtool.output import Output, table

EXIT_CODES_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


class App:
    """Per-invocation state shared by commands: where the config is, how to print."""

    def __init__(self, config_path: str | None = None, json_mode: bool = False, verbose: int = 0):
        self.config_path = config_path
        self.out = Output(json_mode=json_mode, verbose=verbose)
        self._config = None

    @property
    def config(self):
        if self._config is None:
            from drtool.config import load_config

            self._config = load_config(self.config_path)
        return self._config


class DrtoolGroup(click.Group):
    """Catches drtool's errors in one place: prints what is wrong and what to do, exits with its code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DrtoolError as err:
            app = ctx.find_object(App) or App(None, "--json" in sys.argv, 0)
            app.out.error(err)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _set_json(ctx: click.Context, _param, value: bool):
    if value:
        ctx.ensure_object(App).out.json_mode = True
    return value


json_option = click.option("--json", "json_flag", is_flag=True, expose_value=False, callback=_set_json,
                           is_eager=True, help="Print the result as JSON on stdout (a stable contract).")


def command(group: click.Group, *args, **kwargs):
    """A leaf command: accepts --json after its name too, and lists exit codes in its help."""
    kwargs.setdefault("epilog", EXIT_CODES_HELP)

    def wrap(fn):
        @group.command(*args, **kwargs)
        @json_option
        @click.pass_obj
        @functools.wraps(fn)
        def cmd(app: App, *a, **kw):
            return fn(app, *a, **kw)

        return cmd

    return wrap


def not_built(what: str, issue: int) -> None:
    raise OperationFailed(f"{what} is not built yet in drtool {__version__}",
                          hint=f"it arrives with issue #{issue}; see docs/roadmap.md")


@click.group(cls=DrtoolGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="DRTOOL_CONFIG",
              help="Configuration file (default: $DRTOOL_CONFIG, ./drtool.yaml, then the running lab's).")
@click.option("--json", "json_mode", is_flag=True, help="Print results as JSON on stdout.")
@click.option("-v", "--verbose", count=True, help="More detail: every Ansible task, timings.")
@click.version_option(__version__, prog_name="drtool")
@click.pass_context
def main_group(ctx: click.Context, config_path: str | None, json_mode: bool, verbose: int):
    """drtool: get a model back, serving the right version, at another site, in minutes.

    Snapshots model weights with SHA-256 manifests, builds versioned serving images, keeps a model
    registry, fails over to a cold-standby GPU site (verified before DNS moves) and runs drills.
    """
    app = ctx.ensure_object(App)
    app.config_path = config_path
    app.out.json_mode = app.out.json_mode or json_mode
    app.out.verbose = verbose


# -- status ---------------------------------------------------------------------------------------
@command(main_group, "status")
@click.option("--no-probe", is_flag=True, help="Only show the configuration; do not contact hosts.")
def status_cmd(app: App, no_probe: bool):
    """Show each site, its hosts, and whether they answer (SSH + Docker engine, via Ansible)."""
    from drtool.actions import status

    result = status.run(app.config, app.out, probe=not no_probe)

    def render(console):
        console.print(table("Sites", ["site", "role", "hosts", "registry", "DNS record"],
                            [[s["site"], s["role"], ", ".join(s["hosts"]), s["container_registry"], s["dns_record"]]
                             for s in result["sites"]]))
        if result["hosts"]:
            console.print(table("Hosts", ["host", "site", "address", "reachable", "detail"],
                                [[h["host"], h["site"], h["address"], "yes" if h["reachable"] else "no", h["detail"]]
                                 for h in result["hosts"]]))

    app.out.result(result, render)


# -- lab ------------------------------------------------------------------------------------------
@main_group.group("lab", cls=DrtoolGroup)
def lab_group():
    """The embedded two-site lab on this machine (root): hosts in network namespaces with sshd and
    Docker engines, per-site registries and S3 stores, and an authoritative BIND for the service record."""


def _render_parts(result: dict):
    def render(console):
        console.print(table(f"Lab ({result['state_dir']})", ["part", "kind", "site", "address", "state", "detail"],
                            [[p["name"], p["kind"], p.get("site") or "", p["address"], "up" if p["up"] else "down",
                              p.get("detail", "")] for p in result["parts"]]))
        console.print(f"config: {result['config']}")

    return render


@command(lab_group, "up")
@click.option("--state-dir", envvar="DRTOOL_LAB_DIR", help="Lab state directory (default /var/lib/drtool-lab).")
def lab_up(app: App, state_dir: str | None):
    """Bring the lab up, or repair whatever is missing. Idempotent. Cold standbys stay off."""
    from drtool.actions import lab

    result = lab.up(app.out, state_dir)
    app.out.result(result, _render_parts(result))


@command(lab_group, "status")
@click.option("--state-dir", envvar="DRTOOL_LAB_DIR", help="Lab state directory (default /var/lib/drtool-lab).")
def lab_status(app: App, state_dir: str | None):
    """Show every part of the lab, up or down, with its address (probed, not assumed)."""
    from drtool.actions import lab

    result = lab.status(app.out, state_dir)
    app.out.result(result, _render_parts(result))


@command(lab_group, "down")
@click.option("--state-dir", envvar="DRTOOL_LAB_DIR", help="Lab state directory (default /var/lib/drtool-lab).")
@click.option("--purge", is_flag=True, help="Also delete the state directory (keys, caches, registry data).")
def lab_down(app: App, state_dir: str | None, purge: bool):
    """Stop every lab process and remove its namespaces, links and mounts."""
    from drtool.actions import lab

    result = lab.down(app.out, state_dir, purge)
    app.out.result(result, lambda c: c.print("lab is down" + (" and purged" if purge else "")))


@command(lab_group, "power")
@click.argument("host")
@click.argument("state", type=click.Choice(["on", "off"]))
@click.option("--state-dir", envvar="DRTOOL_LAB_DIR", help="Lab state directory (default /var/lib/drtool-lab).")
def lab_power(app: App, host: str, state: str, state_dir: str | None):
    """Switch a lab host's power (its sshd and Docker engine) on or off."""
    from drtool.actions import lab

    result = lab.power(app.out, host, state == "on", state_dir)
    app.out.result(result, lambda c: c.print(f"{host} is {'on' if result['powered'] else 'off'}"))


# -- backup and snapshots (issue 3) -----------------------------------------------------------------
@command(main_group, "backup")
@click.option("--site", help="Site whose serving hosts are snapshotted (default: the primary).")
@click.option("--model", help="Only this model (default: all).")
@click.option("--install-schedule", is_flag=True, help="Install the nightly snapshot cron job instead.")
@click.option("--dry-run", is_flag=True, help="Show what would be snapshotted; change nothing.")
def backup_cmd(app: App, site: str | None, model: str | None, install_schedule: bool, dry_run: bool):
    """Snapshot model weights on every serving host of a site into its object stores, replicate, verify."""
    if site:
        app.config.site(site)
    if model:
        app.config.model(model)
    not_built("drtool backup", 3)


@main_group.group("snapshot", cls=DrtoolGroup)
def snapshot_group():
    """Content-addressed weight snapshots with SHA-256 manifests (run where the weights are)."""


@command(snapshot_group, "create")
@click.argument("src", type=click.Path())
@click.option("--store", required=True, help="file:///abs/path or s3://bucket/prefix")
@click.option("--model", required=True)
@click.option("--version", "model_version")
def snapshot_create(app: App, src, store, model, model_version):
    """Snapshot SRC into STORE; the manifest is written last, so a snapshot is visible only when complete."""
    not_built("snapshot create", 3)


@command(snapshot_group, "list")
@click.option("--store", required=True)
def snapshot_list(app: App, store):
    """List complete snapshots in a store."""
    not_built("snapshot list", 3)


@command(snapshot_group, "verify")
@click.argument("snapshot_id")
@click.option("--store", required=True)
@click.option("--read-data", is_flag=True, help="Read and hash every stored byte.")
def snapshot_verify(app: App, snapshot_id, store, read_data):
    """Check a snapshot's manifest and blobs (exit 3 on any mismatch)."""
    not_built("snapshot verify", 3)


@command(snapshot_group, "restore")
@click.argument("snapshot_id")
@click.argument("dest", type=click.Path())
@click.option("--store", required=True)
def snapshot_restore(app: App, snapshot_id, dest, store):
    """Restore a snapshot into DEST; every file is hash-checked before it is renamed into place."""
    not_built("snapshot restore", 3)


# -- images and the model registry (issue 4) ------------------------------------------------------
@main_group.group("image", cls=DrtoolGroup)
def image_group():
    """Versioned model-serving images, pushed to every site's registry and recorded by digest."""


@command(image_group, "build")
@click.option("--model", required=True)
@click.option("--version", "model_version")
@click.option("--push", is_flag=True, help="Push to every site's registry and record the digest.")
def image_build(app: App, model, model_version, push):
    """Build <registry>/<model>-server:<version> from images/model-server."""
    app.config.model(model)
    not_built("image build", 4)


@main_group.group("registry", cls=DrtoolGroup)
def registry_group():
    """The model registry: versions (image digest, snapshot, canary) and the production alias."""


@command(registry_group, "show")
@click.argument("model", required=False)
def registry_show(app: App, model):
    """Show registered versions and which one is production."""
    not_built("registry show", 4)


@command(registry_group, "verify")
@click.option("--site", required=True)
@click.option("--read-data", is_flag=True)
def registry_verify(app: App, site, read_data):
    """From SITE alone: the production alias resolves, image and snapshot are there, the canary exists."""
    app.config.site(site)
    not_built("registry verify", 4)


# -- failover, failback, drills, alerts (issues 5 and 6) -------------------------------------------
@command(main_group, "failover")
@click.option("--site", required=True, help="The DR site to fail over to.")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and run read-only preflight only.")
@click.option("--yes", is_flag=True, help="Do not ask before the first change.")
@click.option("--resume", "resume_run", metavar="RUN", help="Finish an interrupted failover run.")
@click.option("--reason", help="Why (recorded in the journal and report).")
@click.option("--run-id", help="Use this run id (set by `drtool serve` so a re-launch resumes the same run).")
@click.option("--approve", "approve_run", metavar="RUN",
              help="Start a failover that `drtool serve` queued for approval.")
def failover_cmd(app: App, site, dry_run, yes, resume_run, reason, run_id, approve_run):
    """Provision a standby at SITE, restore and verify the production model, then flip DNS to it."""
    app.config.site(site)
    not_built("drtool failover", 5)


@command(main_group, "failback")
@click.option("--site", required=True, help="The primary site to return to.")
@click.option("--dry-run", is_flag=True)
@click.option("--yes", is_flag=True)
def failback_cmd(app: App, site, dry_run, yes):
    """Bring the primary back to the production version, verify it, flip DNS back, cool the standby."""
    app.config.site(site)
    not_built("drtool failback", 5)


@command(main_group, "drill")
@click.option("--site", required=True, help="The DR site to drill.")
@click.option("--scenario", multiple=True, help="primary-down, region-partition, corrupt-latest-snapshot, ...")
@click.option("--live", is_flag=True, help="Flip the real record (then fail back) instead of a drill record.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="Directory for the reports.")
def drill_cmd(app: App, site, scenario, live, report_dir):
    """Game-day drill: inject a fault, fail over, measure RTO and RPO, clean up, report."""
    app.config.site(site)
    not_built("drtool drill", 6)


@command(main_group, "serve")
@click.option("--listen", default="127.0.0.1:9095", show_default=True, help="ADDR:PORT for Alertmanager webhooks.")
def serve_cmd(app: App, listen):
    """Receive Alertmanager webhooks and start (or queue for approval) failovers.

    Requires a bearer token (alerts.token_file); deduplicates by alert fingerprint, waits until an alert
    has fired for alerts.firing_for_s, honours a per-site cooldown, and persists its decisions so a
    restart never triggers twice."""
    from drtool.actions import serve

    serve.run(app.config, app.out, listen)


def main() -> None:
    main_group(prog_name="drtool")
