"""The command line: click commands that only copy parameters into an action call and print its result."""

import functools
import sys
import time
from pathlib import Path

import click

import drtool
from drtool.errors import EXIT_CODES, DrtoolError, UsageError, VerificationError
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


@click.group(cls=DrtoolGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="DRTOOL_CONFIG",
              help="Configuration file (default: $DRTOOL_CONFIG, ./drtool.yaml, then the running lab's).")
@click.option("--json", "json_mode", is_flag=True, help="Print results as JSON on stdout.")
@click.option("-v", "--verbose", count=True, help="More detail: every Ansible task, timings.")
@click.version_option(drtool.__version__, prog_name="drtool")
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


# -- backup and snapshots -----------------------------------------------------------------
@command(main_group, "backup")
@click.option("--site", help="Site whose serving hosts are snapshotted (default: the primary).")
@click.option("--model", help="Only this model (default: all).")
@click.option("--install-schedule", is_flag=True, help="Install the nightly snapshot job on the site's hosts instead.")
@click.option("--remove-schedule", is_flag=True, help="Remove the nightly snapshot job.")
@click.option("--dry-run", is_flag=True, help="Show what would be snapshotted and where it would be copied.")
def backup_cmd(app: App, site: str | None, model: str | None, install_schedule: bool, remove_schedule: bool,
               dry_run: bool):
    """Snapshot model weights on every serving host of a site (next to the weights, with drtool there), replicate
    each snapshot to the site's other stores and every DR site's store, and read back a sample at each."""
    from drtool.actions import backup

    if install_schedule or remove_schedule:
        result = backup.schedule(app.config, app.out, site, model, remove=remove_schedule)
        app.out.result(result, lambda c: c.print(f"nightly snapshot job {result['schedule']} on "
                                                   f"{', '.join(result['hosts'])}"))
        return
    result = backup.run(app.config, app.out, site, model, dry_run)

    def render(console):
        if result.get("dry_run"):
            console.print(f"[bold]dry run[/]: would snapshot {', '.join(m['name'] for m in result['models'])} on "
                          f"{', '.join(result['hosts'])} into {result['store']}, then copy to "
                          f"{', '.join(result['replicate_to']) or 'no other store'}")
            return
        console.print(table(f"Backup of {result['site']}", ["model", "host", "snapshot", "size", "uploaded", "s"],
                            [[s["model"], s["host"], s["id"][:16], _bytes(s["bytes_total"]),
                              _bytes(s["bytes_uploaded"]), f"{s['seconds']:.1f}"] for s in result["snapshots"]]))
        console.print(table("Copies", ["snapshot", "to", "copied", "verify"],
                            [[c["snapshot"][:16], c["to"], _bytes(c["bytes_copied"] or 0),
                              f"{c['verify']} ({c['blobs_checked']} blobs)"] for c in result["copies"]]))

    app.out.result(result, render)


@main_group.group("snapshot", cls=DrtoolGroup)
def snapshot_group():
    """Content-addressed weight snapshots with SHA-256 manifests (run where the weights are).

    STORE is file:///absolute/path or s3://bucket/prefix (endpoint from AWS_ENDPOINT_URL or the matching
    object_stores entry of the drtool config). ID is a snapshot id or a unique prefix of 8+ hex digits."""


store_option = click.option("--store", required=True, metavar="URL", help="file:///abs/path or s3://bucket/prefix")
wait_option = click.option("--wait", type=click.FloatRange(min=0), default=0, show_default=True, metavar="SECONDS",
                           help="Wait this long for a conflicting run's lease before exiting 4.")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@command(snapshot_group, "create")
@click.argument("src", type=click.Path())
@store_option
@click.option("--model", required=True, help="Model name (letters, digits, '.', '_', '-').")
@click.option("--version", "model_version", help="Model version recorded in the manifest.")
@click.option("--version-from", metavar="FILE",
              help="Take the version from this JSON file of the weights (relative to SRC, e.g. config.json): its "
                   "\"version\" (and \"model\", if any, must be --model). With --version too, both must agree.")
@click.option("--source-host", help="Host recorded as the source (default: this host's name).")
@wait_option
@click.option("--recheck-share", type=click.FloatRange(0, 1), default=1 / 7, show_default="1/7", metavar="F",
              help="Share of unchanged files re-read anyway (by path hash and day: all within 1/F days). 0: none.")
@click.option("--part-size", "part_size_mib", type=click.IntRange(1, 1024), default=16, show_default=True,
              metavar="MiB", help="Part size; changing it stops dedupe against snapshots made with another.")
@click.option("--verify-sample", type=click.FloatRange(0, 100), metavar="PCT",
              help="After writing, read back and hash this percentage of the snapshot's blobs.")
@click.option("--metrics-file", type=click.Path(dir_okay=False),
              help="Write Prometheus textfile metrics here (last success, duration, bytes, verify failures).")
@click.option("--follow-outside-links", is_flag=True,
              help="Read through symlinks whose target is outside SRC (refused by default, exit 2).")
def snapshot_create(app: App, src, store, model, model_version, version_from, source_host, wait, recheck_share,
                    part_size_mib, verify_sample, metrics_file, follow_outside_links):
    """Snapshot SRC into STORE; the manifest is written last, so a snapshot is visible only when complete."""
    from drtool.actions import snapshot

    result = snapshot.create(app.out, app.config_path, src, store, model, model_version, source_host, wait,
                             recheck_share, part_size_mib, verify_sample, metrics_file, version_from,
                             follow_outside_links)
    app.out.result(result, lambda c: c.print(
        f"snapshot [bold]{result['id']}[/] of {result['model']}: {result['files']} files, "
        f"{_bytes(result['bytes_total'])}; read {_bytes(result['bytes_read'])}, "
        f"uploaded {_bytes(result['bytes_uploaded'])} in {result['seconds']:.2f}s"))


@command(snapshot_group, "list")
@store_option
@click.option("--model", help="Only this model's snapshots.")
def snapshot_list(app: App, store, model):
    """List complete snapshots in a store (oldest first per model)."""
    from drtool.actions import snapshot

    result = snapshot.list_snapshots(app.out, app.config_path, store, model)

    def render(console):
        console.print(table(f"Snapshots in {store}", ["id", "model", "version", "created", "host", "files", "size"],
                            [[s["id"][:16], s["model"], s["version"] or "", s["created"], s["source_host"],
                              s["files"], _bytes(s["bytes"])] for s in result["snapshots"]]))
        for bad in result["invalid"]:
            console.print(f"[red]invalid[/] {bad['id']} ({bad['model']}): {bad['error']}", markup=True)

    app.out.result(result, render)


@command(snapshot_group, "show")
@click.argument("snapshot_id", metavar="ID")
@store_option
def snapshot_show(app: App, snapshot_id, store):
    """Show a snapshot's manifest: model, version, source, and every file with its digest."""
    from drtool.actions import snapshot

    result = snapshot.show(app.out, app.config_path, store, snapshot_id)

    def render(console):
        console.print(f"snapshot {result['id']}\nmodel {result['model']} version {result['version'] or '-'}, "
                      f"created {result['created']} on {result['source_host']}")
        console.print(table("Files", ["path", "size", "sha256", "parts", "tensors"],
                            [[f["path"], _bytes(f["size"]), f["sha256"], len(f["parts"]),
                              len(f["tensors"]) if "tensors" in f else ""] for f in result["manifest"]["files"]]))

    app.out.result(result, render)


@command(snapshot_group, "diff")
@click.argument("a", metavar="ID_A")
@click.argument("b", metavar="ID_B")
@store_option
def snapshot_diff(app: App, a, b, store):
    """Files added, removed and changed from ID_A to ID_B; for safetensors files, the tensors that changed."""
    from drtool.actions import snapshot

    result = snapshot.diff(app.out, app.config_path, store, a, b)

    def render(console):
        rows = [["added", f["path"], ""] for f in result["added"]]
        rows += [["removed", f["path"], ""] for f in result["removed"]]
        for f in result["changed"]:
            t = f.get("tensors")
            detail = "" if t is None else "; ".join(
                [f"tensor {c['name']} ({c['change']})" for c in t["changed"]]
                + [f"tensor {n} added" for n in t["added"]] + [f"tensor {n} removed" for n in t["removed"]])
            rows.append(["changed", f["path"], detail])
        console.print(table(f"{result['from']['id'][:12]} -> {result['to']['id'][:12]} "
                            f"({result['unchanged']} files unchanged)", ["", "path", "detail"], rows))

    app.out.result(result, render)


@command(snapshot_group, "verify")
@click.argument("snapshot_id", metavar="ID")
@store_option
@click.option("--read-data", is_flag=True, help="Read and hash every stored byte.")
@click.option("--sample", type=float, metavar="PCT", help="Read and hash this percentage of the blobs, at random.")
@click.option("--dest", type=click.Path(file_okay=False), metavar="DIR",
              help="Instead, check that DIR holds exactly the snapshot: every file hashed, and no other entry.")
def snapshot_verify(app: App, snapshot_id, store, read_data, sample, dest):
    """Check a snapshot's manifest and blobs, or a restored directory (exit 3 on any mismatch or extra file)."""
    from drtool.actions import snapshot

    result = snapshot.verify(app.out, app.config_path, store, snapshot_id, read_data, sample, dest)
    app.out.result(result, lambda c: c.print(
        f"{result['dest']} holds exactly snapshot {result['id']}: {result['files']} files, "
        f"{_bytes(result['bytes_read'])} read, nothing else" if result["mode"] == "dest" else
        f"snapshot {result['id']} is intact ({result['mode']}): {result['files']} files, "
        f"{result['blobs_checked']} blobs, {_bytes(result['bytes_read'])} read"))


@command(snapshot_group, "restore")
@click.argument("snapshot_id", metavar="ID")
@click.argument("dest", type=click.Path())
@store_option
@click.option("--manifest-out", type=click.Path(dir_okay=False),
              help="Also write the snapshot's manifest (its exact bytes) here, for the model server to check against.")
@click.option("--exact", is_flag=True,
              help="Make DEST exactly the snapshot: entries it does not have are moved to DEST.drtool-strays/<time>/ "
                   "(kept, outside DEST) before writing. Without it they are left and reported.")
def snapshot_restore(app: App, snapshot_id, dest, store, manifest_out, exact):
    """Restore a snapshot into DEST; every file is hash-checked before it is renamed into place."""
    from drtool.actions import snapshot

    result = snapshot.restore(app.out, app.config_path, store, snapshot_id, dest, manifest_out, exact)
    app.out.result(result, lambda c: c.print(
        f"restored {result['id']} into {result['dest']}: {result['files']} files, {_bytes(result['bytes'])}, "
        f"all verified, in {result['seconds']:.2f}s"
        + ("" if result["exact"] else f"; {len(result['strays'])} entries not in the snapshot left in DEST")))


@command(snapshot_group, "sums")
@click.argument("snapshot_id", metavar="ID")
@store_option
def snapshot_sums(app: App, snapshot_id, store):
    """Print `sha256sum -c` lines for the snapshot's files, relative to the restore destination."""
    from drtool.actions import snapshot

    result = snapshot.sums(app.out, app.config_path, store, snapshot_id)
    app.out.result(result, lambda c: c.file.write("".join(line + "\n" for line in result["lines"])))


@command(snapshot_group, "prune")
@store_option
@click.option("--model", help="Apply the policy to this model only (blobs are freed store-wide).")
@click.option("--keep-last", type=click.IntRange(min=0), default=0, metavar="N", help="Keep the N newest.")
@click.option("--keep-daily", type=click.IntRange(min=0), default=0, metavar="N",
              help="Keep the newest of each of the last N days that have one (UTC).")
@click.option("--keep-weekly", type=click.IntRange(min=0), default=0, metavar="N", help="Likewise per ISO week.")
@click.option("--keep-monthly", type=click.IntRange(min=0), default=0, metavar="N", help="Likewise per month.")
@click.option("--protect", multiple=True, metavar="ID", help="Keep this snapshot whatever the policy (repeatable).")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@wait_option
def snapshot_prune(app: App, store, model, keep_last, keep_daily, keep_weekly, keep_monthly, protect, dry_run, wait):
    """Delete snapshots the retention policy does not keep, then the blobs no remaining snapshot uses."""
    from drtool.actions import snapshot

    result = snapshot.prune(app.out, app.config_path, store, model, keep_last, keep_daily, keep_weekly,
                            keep_monthly, tuple(protect), dry_run, wait)

    def render(console):
        rows = [["keep", s["id"][:16], s["model"], s["created"], ", ".join(s["reasons"])] for s in result["kept"]]
        rows += [["would delete" if dry_run else "deleted", s["id"][:16], s["model"], s["created"], ""]
                 for s in result["removed"]]
        console.print(table(f"Prune {store}", ["", "id", "model", "created", "why kept"], rows))
        console.print(f"{'would free' if dry_run else 'freed'} {result['blobs_deleted']} blobs, "
                      f"{_bytes(result['bytes_freed'])}")

    app.out.result(result, render)


@command(snapshot_group, "replicate")
@click.argument("snapshot_id", metavar="ID")
@click.option("--from", "source", required=True, metavar="URL", help="Store holding the snapshot.")
@click.option("--to", "target", required=True, metavar="URL", help="Store to copy it to.")
@click.option("--to-endpoint", metavar="URL",
              help="S3 endpoint of the --to store, when it is not the one of --from (AWS_ENDPOINT_URL).")
@click.option("--to-region", metavar="REGION", help="S3 region of the --to store.")
@click.option("--to-credentials-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="AWS shared-credentials file for the --to store (a path: never a secret on the command line).")
@click.option("--verify-sample", type=click.FloatRange(0, 100), metavar="PCT",
              help="Then read back and hash this percentage of the copy's blobs in the --to store.")
@wait_option
def snapshot_replicate(app: App, snapshot_id, source, target, to_endpoint, to_region, to_credentials_file,
                       verify_sample, wait):
    """Copy a snapshot to another store: missing blobs first (each hash-checked), the manifest last.

    The --to store's endpoint, region and credentials come from --to-* when given (a serving host copying its
    nightly snapshot to the DR site's store), else from the drtool config's object_stores, else from the AWS
    variables."""
    from drtool.actions import snapshot

    result = snapshot.replicate(app.out, app.config_path, snapshot_id, source, target, wait,
                                target_endpoint=to_endpoint, target_region=to_region,
                                target_credentials_file=to_credentials_file, verify_sample=verify_sample)
    app.out.result(result, lambda c: c.print(
        f"replicated {result['id']} to {result['to']}: {result['blobs_copied']} blobs copied "
        f"({_bytes(result['bytes_copied'])}), {result['blobs_present']} already there"
        + (f"; {result['verify']['blobs_checked']} blobs read back" if result.get("verify") else "")))


# -- images and the model registry ------------------------------------------------------
@main_group.group("image", cls=DrtoolGroup)
def image_group():
    """Versioned model-serving images, pushed to every site's registry and recorded by digest."""


@command(image_group, "build")
@click.option("--model", required=True)
@click.option("--version", "model_version", help="Version tag (default: `git describe` of this checkout).")
@click.option("--push", is_flag=True, help="Push to every site's registry and report the digest.")
def image_build(app: App, model, model_version, push):
    """Build <registry>/<image>:<version> from images/model-server with no network (offline base image, pinned
    wheels), label it (model, version, git sha, build time), and with --push send it to every site's registry.
    Weights are not in the image: they come from snapshots."""
    from drtool.actions import image

    result = image.build(app.config, app.out, model, model_version, push)

    def render(console):
        console.print(f"built {result['repository']}:{result['version']} ({result['image_id']}) "
                      f"in {result['seconds']:.0f}s")
        for ref in result["pushed"].values():
            console.print(f"  pushed {ref}")

    app.out.result(result, render)


@main_group.group("registry", cls=DrtoolGroup)
def registry_group():
    """The model registry: versions (image digest, snapshot, canary) and the production alias, kept in every
    site's object store so a DR site can check what to serve with the primary gone."""


@command(registry_group, "register")
@click.option("--model", required=True)
@click.option("--version", "model_version", required=True)
@click.option("--snapshot", "snapshot_id", required=True, help="Snapshot id (complete in the primary's store).")
@click.option("--image", required=True, help="REGISTRY/REPO@sha256:... as printed by `image build --push`.")
@click.option("--canary-input", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON input for the canary (default: the demo model's canary input).")
@click.option("--tolerance", type=float, default=1e-5, show_default=True,
              help="Largest absolute difference accepted between canary outputs.")
def registry_register(app: App, model, model_version, snapshot_id, image, canary_input, tolerance):
    """Register a version: runs the image with the snapshot's weights on the canary input and records the
    output, then writes the entry to every site's store. Versions are immutable."""
    from drtool.actions import canary, registry

    result = registry.register(app.config, app.out, model, model_version, snapshot_id, image, canary_input,
                               tolerance, canary.run_canary)
    app.out.result(result, lambda c: c.print(f"registered {model} {model_version} at {', '.join(result['sites'])}"))


@command(registry_group, "promote")
@click.argument("model")
@click.argument("model_version", metavar="VERSION")
@click.option("--force", is_flag=True, help="Promote even if a DR site lacks the image or the snapshot.")
@click.option("--reason", help="Recorded in the alias history.")
def registry_promote(app: App, model, model_version, force, reason):
    """Point `production` at VERSION (compare-and-swap: of two concurrent promotes exactly one wins, the other
    exits 4). Refuses a version a DR site could not serve, unless --force."""
    from drtool.actions import registry

    result = registry.promote(app.config, app.out, model, model_version, force, reason)
    app.out.result(result, lambda c: c.print(
        f"{model}: production -> {result['production']} (was {result['previous']}), "
        f"replicated to {', '.join(result['replicated_to']) or 'no other site'}"))


@command(registry_group, "show")
@click.argument("model", required=False)
@click.option("--site", help="Read this site's copy (default: the primary's).")
def registry_show(app: App, model, site):
    """Show registered versions and which one is production."""
    from drtool.actions import registry

    result = registry.show(app.config, model, site)

    def render(console):
        for m, info in result["models"].items():
            console.print(table(f"{m} at {result['site']} (production: {info['production']})",
                                ["version", "image", "snapshot", "registered"],
                                [[("* " if v["version"] == info["production"] else "  ") + v["version"], v["image"],
                                  v["snapshot_id"][:12], f"{v['registered_at']} by {v['registered_by']}"]
                                 for v in info["versions"]]))

    app.out.result(result, render)


@command(registry_group, "history")
@click.argument("model")
@click.option("--site", help="Read this site's copy (default: the primary's).")
def registry_history(app: App, model, site):
    """Every move of the production alias, oldest first."""
    from drtool.actions import registry

    result = registry.history(app.config, model, site)
    app.out.result(result, lambda c: c.print(table(
        f"{model} production history at {result['site']}", ["seq", "version", "previous", "by", "at", "reason"],
        [[h["seq"], h["version"], h["previous"], h["by"], h["at"], h["reason"]] for h in result["history"]])))


@command(registry_group, "verify")
@click.option("--site", required=True, help="Check from this site's own registry copy, image registry and store.")
@click.option("--model", help="Only this model (default: every configured model).")
@click.option("--read-data", is_flag=True, help="Read and hash every byte of the snapshot.")
def registry_verify(app: App, site, model, read_data):
    """From SITE alone: the production alias resolves, its image digest is pullable from the site's registry,
    its snapshot is complete in the site's store, and its canary exists. Exit 3 naming any mismatch."""
    from drtool.actions import registry

    result = registry.verify(app.config, app.out, site, model, read_data)
    app.out.result(result, lambda c: c.print(table(
        f"registry verify at {site}: OK", ["model", "check", "result"],
        [[m, k, v] for m, checks in result["models"].items() for k, v in checks.items()])))


# -- failover, failback, drills, alerts -------------------------------------------
@command(main_group, "failover")
@click.option("--site", required=True, help="The DR site to fail over to.")
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and run read-only preflight only.")
@click.option("--yes", is_flag=True, help="Do not ask before the first change.")
@click.option("--resume", "resume_run", metavar="RUN", help="Finish an interrupted failover run (its run id).")
@click.option("--reason", help="Why (recorded in the journal and report).")
@click.option("--run-id", help="Use this run id (set by `drtool serve` so a re-launch resumes the same run).")
@click.option("--approve", "approve_run", metavar="RUN",
              help="Start a failover that `drtool serve` queued for approval.")
@click.option("--model", help="Only the services of this model.")
@click.option("--prepare", is_flag=True, help="Only lower the record's TTL now (dns.prepare_ttl), ahead of a failover.")
@click.option("--ttl", type=click.IntRange(1, 86400), help="With --prepare: the TTL to set (default dns.prepare_ttl).")
@click.option("--service", "services", metavar="NAME", multiple=True,
              help="Move (or with --dry-run plan) only this service; repeatable (default: every service of the "
                   "failed site whose record's target does not answer).")
@click.option("--all", "all_services", is_flag=True,
              help="Move every service, also those whose primary still serves (as planned moves).")
@click.option("--parallel", type=click.IntRange(min=1),
              help="Services brought up at once per wave (default failover.parallel).")
@click.option("--planned", is_flag=True,
              help="A planned move of a primary that still serves: flip and confirm first, then wait out the old "
                   "record's TTL and stop the old primary. Without it, a failover refuses while the primary serves.")
def failover_cmd(app: App, site, dry_run, yes, resume_run, reason, run_id, approve_run, model, prepare, ttl,
                 services, all_services, parallel, planned):
    """Bring the services of a failed site up at the DR site SITE, verified, and only then point their records there.

    One service is a fleet of one: every service that needs it (the named ones with --service, every one with
    --all) gets a standby from the planner, in waves of at most --parallel, most important first, and the same
    steps: preflight, lease, provision, pull_image and restore (at the same time), start, wait_ready, verify,
    fence_primary, flip_dns, confirm_dns. Each step runs for all of a wave's services at once and is journaled per
    service, so `--resume RUN` finishes an interrupted run without doing anything twice; a resumed run takes the
    site's failover lease again before any step. A record never points at a standby that has not passed verify, and
    the record a flip replaces is saved (`drtool dns show`, `drtool dns restore`). A service that fails never moves
    its record and never stops the others; the command then exits 1 (3 when every failure was a verification) with
    a table per service. A standby that fails to boot or whose host key does not match is never used again; its
    services go to the next free one.

    A failover is for a primary that does not serve: services whose record's target still answers ready are left
    where they are, and when nothing else would move (or a named one answers) it refuses (exit 2) and names what
    answered. A planned move of a healthy site takes --planned (or --all): it flips and confirms first, then waits
    out the old record's TTL (lower it ahead with --prepare) and only then stops the old primary.

    --dry-run runs the read-only preflight and prints where each service would go and what it would restore.
    With --prepare, nothing fails over: the TTL of the record of every service that would fail over to SITE (or
    of each --service) is lowered now (addresses unchanged, each old record saved) so that resolvers follow a
    later flip quickly."""
    if prepare:
        from drtool.actions import dnsrecord

        if any([resume_run, run_id, approve_run]):
            raise UsageError("--prepare only lowers the TTL; it takes no --resume, --run-id or --approve")
        result = dnsrecord.prepare(app.config, app.out, site, ttl, dry_run, list(services) or None)
        app.out.result(result, lambda c: c.print("\n".join(
            f"{r['record']}: TTL {r['ttl_before']} -> {r['ttl_after'] if r['changed'] else r['ttl_before']}"
            f"{' (dry run)' if dry_run else ''}" for r in result["records"])))
        return
    if ttl:
        raise UsageError("--ttl goes with --prepare")
    if model and (services or parallel):
        raise UsageError("--model names one model; to move several services name each with --service NAME")
    if all_services and dry_run:
        raise UsageError("--all moves services: it goes without --dry-run")
    from drtool.actions import failover
    from drtool.recovery.moves import FAILOVER, Request

    if approve_run:
        from drtool.alerts.decisions import approved_reason

        run_id, reason = approve_run, reason or approved_reason(app.config, approve_run, record=not dry_run)
    req = Request(FAILOVER, site, failover.services_of_model(app.config, model, tuple(services) or None),
                  everything=all_services, planned=planned, parallel=parallel, dry_run=dry_run, resume=resume_run,
                  run_id=run_id, reason=reason)
    _recover(app, req, yes)


def _recover(app: App, req, yes: bool) -> None:
    """Hand the request to the engine, asking before the first change, and print its result (or its table with
    the error)."""
    from drtool.actions import failover

    def confirm(plan: dict) -> None:
        if yes:
            return
        app.out.err.print(_fleet_table(plan))
        if not sys.stdin.isatty():
            raise UsageError(f"{req.kind} changes things and needs confirmation",
                             hint="re-run with --yes (non-interactive), or --dry-run to see the plan")
        if not click.confirm(f"{req.kind.capitalize()} to {req.site}? Records move only for verified services",
                             err=True):
            raise UsageError(f"{req.kind} not confirmed; nothing was changed")

    try:
        result = failover.run(app.config, app.out, req, confirm)
    except DrtoolError as err:
        if getattr(err, "result", None) and not app.out.json_mode:
            app.out.err.print(_fleet_table(err.result))
        raise
    app.out.result(result, _render_run(result))


def _fleet_table(result: dict):
    """Every service of a run (a plan, a dry run or a result) in one table; a column empty in every row is left out."""
    rto = result.get("rto_s")
    columns = ["service", "priority", "to", "wave", "status", "record", "was", "version / snapshot", "RTO", "reason"]
    rows = [[r["service"], r["priority"], ", ".join(r.get("hosts") or []),
             r["wave"] + 1 if r.get("wave") is not None else "", r["status"], r["record"],
             ", ".join(((r.get("dns") or {}).get("before") or {}).get("addresses") or []),
             " / ".join(filter(None, [(r.get("production") or {}).get("version"),
                                      ((r.get("production") or {}).get("snapshot_id") or "")[:12]])),
             f"{r['rto_s']:.1f}s" if r.get("rto_s") is not None else "",
             "; ".join(filter(None, [r.get("reason"), r.get("fallback")]))] for r in result["services"]]
    keep = [i for i in range(len(columns)) if any(row[i] not in ("", None) for row in rows)]
    return table(f"{result['kind'].capitalize()} {result['run_id']} to {result['site']}: {result['status']}"
                 + (f", RTO {rto:.1f}s" if rto is not None else ""), [columns[i] for i in keep],
                 [[row[i] for i in keep] for row in rows])


def _render_run(result: dict):
    """The table of every service; for a run of one service, its steps and their evidence too."""
    def render(console):
        console.print(_fleet_table(result))
        if len(result["services"]) == 1 and result["services"][0].get("steps"):
            r = result["services"][0]
            console.print(table(f"{r['service']} on {r['standby']}", ["step", "status", "seconds", "evidence"],
                                [[s["name"], s["status"], f"{s['seconds']:.2f}" if s["seconds"] is not None else "",
                                  _summary(s["evidence"])] for s in r["steps"]]))

    return render


def _summary(evidence: dict) -> str:
    text = ", ".join(f"{k}={v}" for k, v in evidence.items() if not isinstance(v, (dict, list)))
    return text[:100]


@command(main_group, "failback")
@click.option("--site", required=True, help="The primary site to return to.")
@click.option("--dry-run", is_flag=True, help="Print the plan and run read-only preflight only.")
@click.option("--yes", is_flag=True, help="Do not ask before the first change.")
@click.option("--resume", "resume_run", metavar="RUN", help="Finish an interrupted failback run.")
@click.option("--reason", help="Why (recorded in the journal and report).")
@click.option("--model", help="Only the services of this model.")
@click.option("--service", "services", multiple=True, metavar="NAME",
              help="Bring back only this service (repeatable).")
def failback_cmd(app: App, site, dry_run, yes, resume_run, reason, model, services):
    """Bring the services of the primary site SITE home, verified the same way, point their records back, and return
    the standbys to cold.

    The same engine and steps as a failover, in the other direction: every home host of every service comes back
    in the same plays (an instance that already serves the production version correctly is kept), the site's
    Nginx is deployed over the verified instances, each record moves home only after its service verified there
    (the record it replaces saved first), and a standby is powered off only once no record points at it.
    --service NAME (repeatable) brings back only those; `--resume RUN` finishes an interrupted failback."""
    from drtool.actions import failover
    from drtool.recovery.moves import FAILBACK, Request

    if model and services:
        raise UsageError("--model and --service do not go together: name services with --service NAME, not --model")
    req = Request(FAILBACK, site, failover.services_of_model(app.config, model, tuple(services) or None),
                  dry_run=dry_run, resume=resume_run, reason=reason)
    _recover(app, req, yes)


@main_group.group("agent", cls=DrtoolGroup)
def agent_group():
    """drtool on the hosts (snapshot next to the weights, restore and verify on standbys)."""


@command(agent_group, "install")
@click.option("--site", help="Only this site's hosts (default: every site; standbys are powered on and off).")
@click.option("--dry-run", is_flag=True, help="List the hosts; install nothing.")
def agent_install(app: App, site, dry_run):
    """Install drtool in agent.dir/venv on the hosts from a wheelhouse built here (no index needed there).
    Idempotent: a second run changes nothing unless drtool's source changed."""
    from drtool.actions import agent

    result = agent.install(app.config, app.out, site, dry_run)
    app.out.result(result, lambda c: c.print(table("drtool agent", ["host", "version", "changed"], [
        [h, r.get("version", ""), ", ".join(r.get("changed", [])) or "nothing"]
        for h, r in (result["hosts"].items() if isinstance(result["hosts"], dict) else [])])))


@main_group.group("dns", cls=DrtoolGroup)
def dns_group():
    """The service record: what it answers, the records failovers replaced, and putting one back."""


@command(dns_group, "show")
@click.option("--site", required=True, help="Site whose DNS target to read.")
@click.option("--service", metavar="NAME", help="This service's record (default: the site's own record).")
def dns_show(app: App, site, service):
    """The record as the authoritative server answers it now, and every saved previous record."""
    from drtool.actions import dnsrecord

    result = dnsrecord.show(app.config, site, service)

    def render(console):
        console.print(f"{result['record']}: {result['current']['addresses']} TTL {result['current']['ttl']}")
        console.print(table("Saved previous records (newest first)", ["#", "saved", "addresses", "ttl", "by run"],
                            [[i, time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(d["saved_at"])), d["addresses"],
                              d["ttl"], d["run_id"]] for i, d in enumerate(result["saved"])]))

    app.out.result(result, render)


@command(dns_group, "restore")
@click.option("--site", required=True, help="Site whose record to restore.")
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True,
              help="Which saved record (0 = the newest; see `drtool dns show`).")
@click.option("--model", help="The model that must be served there (default: the only one configured).")
@click.option("--service", metavar="NAME",
              help="This service's record, checked for its model at its port (default: the site's own record).")
@click.option("--dry-run", is_flag=True, help="Check the saved record's target serves; change nothing.")
def dns_restore(app: App, site, index, model, service, dry_run):
    """Put a saved previous record back. Refused (exit 3) unless every address in it serves the production
    version and canary correctly: the record never points where no site would be serving."""
    from drtool.actions import dnsrecord
    from drtool.actions.failover import pick_model

    if model and service:
        raise UsageError("--service names the record and its model: give --service or --model, not both")
    result = dnsrecord.restore(app.config, app.out, site, None if service else pick_model(app.config, model).name,
                               index, dry_run, service)
    app.out.result(result, lambda c: c.print(
        f"{result['record']}: {result['current']['addresses']} -> {result['restoring']['addresses']} "
        f"({'changed' if result['changed'] else 'nothing changed'})"))


@command(main_group, "watch")
@click.option("--site", required=True, help="The primary site to probe.")
@click.option("--failures", type=click.IntRange(min=1),
              help="Consecutive failures before the alert path (default watch.failures).")
@click.option("--interval", type=click.FloatRange(min=0.1), help="Seconds between probes (watch.interval_s).")
@click.option("--exit-on-trigger", is_flag=True, help="Stop once a failover was started or queued for approval.")
@click.option("--exit-on-recovery", is_flag=True,
              help="Stop once every instance the ladder restarted serves again, or once it drained one.")
def watch_cmd(app: App, site, failures, interval, exit_on_trigger, exit_on_recovery):
    """Probe the primary's instances from here and climb the escalation ladder for one that fails N consecutive
    probes: restart it in place (ha.restart_attempts), drain it, and only when the site has no healthy instance
    left decide a failover like `drtool serve` does for an alert (policy, firing time, cooldown, exactly once)."""
    from drtool.actions import watch

    result = watch.run(app.config, app.out, site, failures, interval, exit_on_trigger,
                       exit_on_recovery=exit_on_recovery)
    app.out.result(result, lambda c: c.print(f"{result['probes']} probes; decisions: "
                                              f"{[d['action'] for d in result['decisions']]}"))


def _drill_scenarios_help() -> str:
    """--scenario's help, from the registry of scenarios (drtool/drill/scenarios/): every one is listed."""
    from drtool.drill.scenarios import DEFAULT, REGISTRY

    names = [f"{n} (default)" if n == DEFAULT else n for n in REGISTRY]
    return f"{', '.join(names)}; repeatable. What each does: docs/drills.md."


@main_group.group("drill", cls=DrtoolGroup, invoke_without_command=True)
@click.option("--site", help="The DR site to drill.")
@click.option("--scenario", "scenarios", multiple=True, metavar="NAME", help=_drill_scenarios_help())
@click.option("--live", is_flag=True, help="Flip the real record (then fail back) instead of a drill record.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Directory for report.json, junit.xml, report.html (default: the state dir).")
@click.option("--model", help="Only the services of this model.")
@json_option
@click.pass_context
def drill_group(ctx: click.Context, site, scenarios, live, report_dir, model):
    """Game-day drill: inject a fault, fail over, measure RTO and RPO, load the DR site, clean up, report.

    Without --live, the drill fails over a drill record (drill.<record>) and leaves production alone.
    Cleanup always runs, also after a failure or Ctrl-C, and undoes exactly what the drill changed; production
    DNS and the primary are compared with what they were before. Exit 0 when every scenario passed, 3 when a
    scenario ran and failed (a check, the steady state before included), 1 when the drill itself could not run
    (nothing injected), 2 for bad input."""
    if ctx.invoked_subcommand is not None:
        return
    app: App = ctx.obj
    if not site:
        raise UsageError("drill needs --site", hint="e.g. `drtool drill --site dr-east`")
    from drtool.actions import drill
    from drtool.drill.report import summary_table

    result = drill.run(app.config, app.out, site, tuple(scenarios), live, report_dir, model)

    def render(console):
        tables = summary_table(result)
        for t in tables if isinstance(tables, list) else [tables]:
            console.print(t)
        console.print(f"[bold]{'PASSED' if result['passed'] else 'FAILED'}[/]  report: "
                      f"{result.get('paths', {}).get('html', '(not written)')}")

    app.out.result(result, render)
    code = result.get("exit_code", 0 if result["passed"] else VerificationError.exit_code)
    if code == 0:
        return
    if app.out.json_mode:
        ctx.exit(code)  # the result is the one JSON document; it says what failed
    report = result.get("paths", {}).get("html", "the report")
    if code == VerificationError.exit_code:
        failed = [c["name"] for s in result["scenarios"] for c in s["checks"] if not c["passed"]]
        errors = [s["error"] for s in result["scenarios"] if s["error"]]
        raise VerificationError(f"drill {result['drill_id']} failed: " + ", ".join(failed + errors),
                                hint=f"see {report}")
    from drtool.errors import BusyError, OperationFailed

    stopped = next(s for s in result["scenarios"] if s["error"])
    raise {UsageError.exit_code: UsageError, BusyError.exit_code: BusyError}.get(code, OperationFailed)(
        f"drill {result['drill_id']} could not run {stopped['scenario']}: {stopped['error']}",
        hint=stopped.get("error_hint") or f"see {report}")


@command(drill_group, "history")
@click.option("--site", required=True, help="The DR site whose drills to list.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
def drill_history(app: App, site, limit):
    """Past drills from the reports kept in the DR store, with their RTO/RPO and the trend."""
    from drtool.actions import drill
    from drtool.drill.report import render_history_table

    rows = drill.history(app.config, site, limit)
    app.out.result({"site": site, "drills": rows}, lambda c: c.print(render_history_table(rows)))


@command(main_group, "serve")
@click.option("--listen", default="127.0.0.1:9095", show_default=True, help="ADDR:PORT for Alertmanager webhooks.")
def serve_cmd(app: App, listen):
    """Receive Alertmanager webhooks and start (or queue for approval) failovers.

    Requires a bearer token (alerts.token_file); deduplicates by alert fingerprint, waits until an alert
    has fired for alerts.firing_for_s, honours a per-site cooldown, and persists its decisions so a
    restart never triggers twice."""
    from drtool.actions import serve

    serve.run(app.config, app.out, listen)


@main_group.group("alerts", cls=DrtoolGroup)
def alerts_group():
    """Alertmanager alerts handed to drtool's decision book by other means than `drtool serve`."""


@command(alerts_group, "ingest")
@click.argument("source", default="-", metavar="[FILE]")
def alerts_ingest_cmd(app: App, source):
    """Decide the alerts in FILE (default `-`: stdin) as `drtool serve` decides a webhook's: an Alertmanager v4
    webhook payload, or one of its alerts, as JSON. Same decision book, policy (auto launches the failover in the
    background, approve queues it), firing time, cooldown and exactly-once dedupe. What the Event-Driven Ansible
    rulebook (ops/eda/) runs. Exit 0 once every alert is decided (a duplicate or suppressed one included); exit 1
    when an outage could not be claimed in its DR site's object store (left pending, as serve leaves it); exit 2,
    nothing recorded, for a malformed payload or an alert that names no primary site (unknown, a DR site, no site
    label) or one instance."""
    from drtool.actions import alerts

    result = alerts.ingest(app.config, app.out, source)
    app.out.result(result, alerts.render(result))


# -- DR readiness ---------------------------------------------------------------------------------
@command(main_group, "readiness")
@click.option("--site", required=True, help="The DR site whose readiness to check.")
@click.option("--record", is_flag=True, help="Keep the result in the DR store's readiness history (the nightly job).")
@click.option("--textfile", type=click.Path(dir_okay=False),
              help="Write Prometheus metrics there, atomically (node_exporter textfile; default readiness.textfile).")
def readiness_cmd(app: App, site, record, textfile):
    """Check, read-only, that failover to SITE would work and how long it would take: per service, the image in the
    DR registry, the snapshot in the DR store (and its age against the RPO target), the DR registry copy, standby
    capacity, DNS TTL and credentials, the DR store's credentials, a recent passing drill, and the predicted RTO
    against its target. Powers nothing on, changes nothing. Exit 0 ready, 3 not ready (each failing rule says what
    to do), 2 configuration error."""
    from drtool.actions import readiness

    result = readiness.run(app.config, app.out, site, record, textfile)
    app.out.result(result, readiness.render(result))
    if not result["ready"]:
        if app.out.json_mode:
            click.get_current_context().exit(VerificationError.exit_code)  # the result is the one JSON document
        raise VerificationError(f"{site} is not ready: {', '.join(result['summary']['failed'])}",
                                hint="each failing rule's fix is in the table above")


def main() -> None:
    main_group(prog_name="drtool")
