"""drtool failover and failback: one request to the recovery engine (drtool/recovery/engine.py), its result, and
the documented exit code when something did not move.

A failover brings every service that needs it (one, for a configuration with one model) from a primary that does
not serve to a DR site's standbys; a failback brings a primary site's services home. Both are the same engine:
every service verified before its record moves, journaled per step, resumed by run id, and exit 1 (3 when the
target did not verify) naming what stopped, with the table of every service."""

from collections.abc import Callable

from drtool.config import Config, Model
from drtool.errors import OperationFailed, UsageError, VerificationError
from drtool.output import Output
from drtool.recovery.engine import (
    ALREADY,
    BACK,
    FAILED_S,
    HOME,
    LEFT,
    MOVED,
    PRIMARY_UP,
    RUNS,
    Recovery,
    new_run_id,
    snapshot_age,
)
from drtool.recovery.moves import FAILBACK, FAILOVER, PrimaryServing, Request
from drtool.recovery.steps import cool_standbys, failed_verifying, served_entry, snapshot_candidates

__all__ = ["ALREADY", "BACK", "FAILBACK", "FAILED_S", "FAILOVER", "HOME", "LEFT", "MOVED", "PRIMARY_UP", "RUNS",
           "PrimaryServing", "Request", "cool_standbys", "new_run_id", "pick_model", "run", "served_entry",
           "snapshot_age", "snapshot_candidates"]

VERIFYING = {"verify", "wait_ready", "proxy"}


def pick_model(config: Config, name: str | None) -> Model:
    if name:
        return config.model(name)
    if len(config.models) != 1:
        raise UsageError("this configuration has several models", hint="choose one with --model")
    return next(iter(config.models.values()))


def services_of_model(config: Config, model: str | None, services: tuple[str, ...] | None):
    """`--model NAME`: the services that serve that model (a configuration with one model: its only service)."""
    if model is None:
        return services
    config.model(model)   # UsageError naming an unknown model
    return tuple(s.name for s in config.services.values() if s.model == model)


def run(config: Config, out: Output, req: Request, confirm: Callable[[dict], None] | None = None) -> dict:
    """Plan (or load, for --resume) and run; `confirm(plan)` is called with the plan before the first change."""
    if req.resume and req.run_id and req.resume != req.run_id:
        raise UsageError("--resume and --run-id name two runs", hint="give one")
    rec = Recovery(config, out, req)
    if req.resume:
        rec.load()
    else:
        rec.plan()
        if not rec.moves and not rec.doc["left"]:
            raise UsageError(f"nothing to {req.kind} at {rec.site.name}", hint="check the service names")
    where = "dry run: nothing is written" if req.dry_run else f"report {rec.report_path}"
    out.info(f"{rec.kind} run [bold]{rec.run_id}[/] to {rec.site.name} ({', '.join(rec.moves) or 'no service'}); "
             f"{where}")
    if confirm and not req.dry_run and not req.resume:
        confirm({**rec.doc, "status": "plan, nothing changed yet", "services": rec.rows()})
    return check(rec, rec.execute())


def check(rec: Recovery, report: dict) -> dict:
    """The report, or the error (and exit code) that names what did not move."""
    failed = [(m, next(s for s in m.journal.steps if s.status == "failed")) for m in rec.moves.values()
              if m.failed()]
    left = rec.doc["left"]
    if not failed and not left:
        return report
    refused = [step.error for _m, step in failed if step.error_class == PrimaryServing.__name__]
    if refused:
        raise PrimaryServing(
            f"{rec.kind} {rec.run_id} refused, nothing changed: {refused[0]}",
            hint=f"if this is a planned move of a healthy site, run `drtool failover --site {rec.site.name} "
                 "--planned` (it flips first, then drains and stops the old primary); a failing instance behind a "
                 "serving site is cured in the site (drtool watch)", details=refused[1:])
    verification = bool(failed) and all(step.name in VERIFYING or failed_verifying(step.error_class, step.error)
                                        for _m, step in failed)
    cls = VerificationError if verification else OperationFailed
    bad = [r for r in report["services"] if r["status"] in (FAILED_S, LEFT)]
    changed = [m.name for m, _ in failed if m.rec("flip_dns").status == "done" and m.rec("flip_dns").evidence.get(
        "changed")]
    first = f"; {failed[0][0].name} stopped at step {failed[0][1].name}: {failed[0][1].error}" if failed else ""
    raise cls(f"{rec.kind} {rec.run_id}: {len(bad)} of {len(report['services'])} service(s) did not "
              f"{'move' if rec.kind == FAILOVER else 'come back'}{first}",
              hint=(f"DNS was changed for {', '.join(changed)}, NOT for the others" if changed else
                    "DNS was NOT changed for them") + f"; fix the cause and run `drtool {rec.kind} --site "
                   f"{rec.site.name} --resume {rec.run_id}` (only what did not finish runs again)",
              details=[f"{r['service']}: {r['status']}: {r['reason']}" for r in bad] + [f"report: {rec.report_path}"],
              result=report)
