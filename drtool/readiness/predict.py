"""The RTO predictor: measured step times of recent failovers and drills in, a predicted RTO per service and for the
site's fleet out. Pure: no I/O, no clock.

The statistic is the **median of the last N runs** (`readiness.history_runs`, default 10) of each phase, of runs
of the same kind (a configuration with one service, or a service's journal of a run over several: there every
step shares the DR site with the other services, so its phases are longer; the other kind's runs count only while
there are none): one slow run (a cold cache, a busy host) moves a mean but not a median, and N bounds how far back
a changed site still counts. Phases (a failover's steps, as the recovery engine journals them per service):

| phase | steps |
|---|---|
| provision | preflight, lease, provision |
| pull | pull_image |
| restore | restore |
| start | start |
| verify | wait_ready, verify |
| dns | fence_primary, flip_dns, confirm_dns |

plus `detect`: fault to failover started (detection and decision of drills that went through the alert chain; 0
when none did). Adjusted per service:

- **pull**: a standby that already holds the image (a past run pulled or found that exact reference there) costs
  the median of the runs that found it present (~0: the play only checks); otherwise the median of the runs that
  really pulled it;
- **restore** scales with the snapshot's bytes: with runs of at least two sizes (10 % apart or more; closer pairs
  are left out of the slopes), a Theil-Sen line (the median of the pairwise slopes, the median intercept: robust
  like the median); with one size, each run's time scaled by bytes / its bytes, and the median of those;
- **waves** (drtool/recovery/): waves run one after the other; within a wave every step runs for all its services
  at once, and the pull and the restore at the same time, so a wave takes provision + max(pull, restore) + start +
  verify + dns, each the slowest service's; a service's RTO is detect + every wave up to its own; the fleet RTO is
  the last wave's end. One service is a wave of one.
"""

from __future__ import annotations  # PEP 563 (public), for RunSample in its own class

from dataclasses import dataclass, field
from statistics import median

SINGLE, FLEET = "single", "fleet"
DEFAULT_RUNS = 10
SIZE_STEP = 0.1                         # runs' snapshot sizes at least this share apart count as two sizes
PHASES = ("provision", "pull", "restore", "start", "verify", "dns")
STEPS = {"provision": ("preflight", "lease", "provision"), "pull": ("pull_image",), "restore": ("restore",),
         "start": ("start",), "verify": ("wait_ready", "verify"), "dns": ("fence_primary", "flip_dns", "confirm_dns")}


@dataclass(frozen=True)
class RunSample:
    """One finished failover (a drill's too), its steps grouped into phases."""

    run_id: str
    ended: float
    phases: dict
    host: str | None = None
    image: str | None = None
    pulled: bool | None = None          # the pull step really pulled (False: the engine held the image already)
    restore_bytes: int | None = None
    engine: str = "single"              # SINGLE, or FLEET: one service's journal of a fleet run


@dataclass(frozen=True)
class Need:
    """What one service needs in a failover: its standby and wave (the planner's), its image and snapshot size."""

    service: str
    host: str | None
    wave: int | None
    image: str | None
    snapshot_bytes: int | None


@dataclass(frozen=True)
class ServicePrediction:
    rto_s: float | None
    phases: dict
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prediction:
    engine: str
    statistic: str
    samples: int
    detection_s: float
    phases: dict                        # the medians every service starts from
    services: dict = field(default_factory=dict)   # service -> ServicePrediction
    wave_seconds: list = field(default_factory=list)
    fleet_rto_s: float | None = None
    notes: tuple[str, ...] = ()


# -- samples from documents ---------------------------------------------------------------------------------------
def _truthy(value) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def sample_from_run(doc: dict) -> RunSample | None:
    """One service's journal of a finished failover (`runs/<run>/<service>.json`, under the state dir and in the DR
    store) as one sample. None for anything else (failbacks, failed or unfinished runs, a run that found the
    service already serving)."""
    if not isinstance(doc, dict) or doc.get("kind") != "failover" or doc.get("status") != "done":
        return None
    ctx = doc.get("context") if isinstance(doc.get("context"), dict) else {}
    steps = {s.get("name"): s for s in doc.get("steps") or [] if isinstance(s, dict)}
    phases = {}
    for phase, names in STEPS.items():
        total = 0.0
        for n in names:
            s = steps.get(n)
            if s is None or s.get("status", s.get("outcome")) != "done" or not isinstance(s.get("seconds"),
                                                                                         int | float):
                return None
            total += s["seconds"]
        phases[phase] = round(total, 3)
    pull_ev = steps["pull_image"].get("evidence") or {}
    restore_ev = steps["restore"].get("evidence") or {}
    nbytes = (restore_ev.get("restore") or {}).get("bytes") if isinstance(restore_ev.get("restore"), dict) else None
    ended = doc.get("ended") or max((s.get("end") or s.get("ended") or 0) for s in steps.values())
    return RunSample(str(doc.get("run_id")), float(ended or 0), phases, host=ctx.get("host"),
                     image=ctx.get("image") or pull_ev.get("image"),
                     pulled=_truthy(pull_ev.get("pulled")),
                     restore_bytes=nbytes if isinstance(nbytes, int) and nbytes > 0 else None,
                     engine=FLEET if ctx.get("fleet") else SINGLE)


def detections_from_drill(report: dict) -> list[tuple[float, float]]:
    """The detection + decision time of each passing scenario of a drill report that went through the alert chain,
    as (ended, seconds). A drill's failovers are samples through their journals, like every run's."""
    ended = float(report.get("ended") or report.get("started") or 0)
    splits = [sc.get("split") or {} for sc in report.get("scenarios") or [] if sc.get("passed")]
    return [(ended, float(s["detection"] + (s.get("decision") or 0))) for s in splits if s.get("detection")]


def dedupe(samples: list[RunSample]) -> list[RunSample]:
    """One sample per run id (a journal is read here and from its copy in the DR store), the most complete kept."""
    best: dict[str, RunSample] = {}
    for s in samples:
        have = best.get(s.run_id)
        if have is None or (have.image is None and s.image is not None) or (
                have.restore_bytes is None and s.restore_bytes is not None):
            best[s.run_id] = s
    return list(best.values())


# -- the predictor ------------------------------------------------------------------------------------------------
def _med(values: list[float]) -> float | None:
    return round(median(values), 3) if values else None


def restore_seconds(samples: list[RunSample], nbytes: int | None) -> tuple[float | None, str | None]:
    """Restore time for a snapshot of `nbytes` (see the module docstring); a note when it is not a scaled value."""
    times = [s.phases["restore"] for s in samples]
    sized = [(s.restore_bytes, s.phases["restore"]) for s in samples if s.restore_bytes]
    if not times:
        return None, None
    if not nbytes or not sized:
        return _med(times), "restore: the median, unscaled (snapshot size or run sizes unknown)"
    # Two sizes are two only when they differ by SIZE_STEP: snapshots a few bytes apart (a changed config file)
    # give a slope of noise over nothing, which times a snapshot's bytes would predict hours.
    slopes = [(t2 - t1) / (b2 - b1) for i, (b1, t1) in enumerate(sized) for b2, t2 in sized[i + 1:]
              if abs(b2 - b1) >= SIZE_STEP * max(b1, b2)]
    if slopes:
        slope = max(0.0, median(slopes))
        intercept = max(0.0, median(t - slope * b for b, t in sized))
        return round(intercept + slope * nbytes, 3), None
    return _med([t * nbytes / b for b, t in sized]), None


def predict(needs: list[Need], samples: list[RunSample], detections: list[tuple[float, float]], engine: str,
            runs: int = DEFAULT_RUNS) -> Prediction:
    """Predicted RTO of each placed service and of the fleet (see the module docstring). With no sample, every
    RTO is None."""
    known = dedupe(samples)
    # A phase of one service alone is not that phase in a fleet run, where every service's step shares the DR site
    # (its registry, its store, and on the lab two CPUs): each engine is predicted from its own runs, and from the
    # other's only while it has none.
    same = [s for s in known if s.engine == engine]
    every = sorted(same or known, key=lambda s: s.ended, reverse=True)
    recent = every[:runs]
    statistic = f"median of the last {runs} {engine} runs"
    detection = _med([d for _, d in sorted(detections, reverse=True)[:runs]]) or 0.0
    base = {p: _med([s.phases[p] for s in recent]) for p in PHASES}
    notes = [] if detections else ["detect: no drill went through the alert chain; counted as 0"]
    if known and not same:
        notes.append(f"no {engine} run in the history yet: the other engine's runs are used")
    if not recent:
        return Prediction(engine, statistic, 0, detection, base, {n.service: ServicePrediction(None, {}) for n in
                                                                  needs if n.wave is not None}, [], None,
                          ("no finished failover or drill in the history",))
    really = [s.phases["pull"] for s in recent if s.pulled] or [s.phases["pull"] for s in every if s.pulled]
    present = [s.phases["pull"] for s in recent if s.pulled is False]
    pull_absent = _med(really) if really else base["pull"]
    if not really:
        notes.append("pull: no measured pull of an absent image; the median pull step is used")
    pull_present = _med(present) if present else 0.0
    held = {(s.host, s.image) for s in known if s.host and s.image}

    per: dict[str, ServicePrediction] = {}
    for n in needs:
        if n.wave is None:
            continue
        own = []
        cached = (n.host, n.image) in held
        restore, note = restore_seconds(recent, n.snapshot_bytes)
        if note:
            own.append(note)
        phases = {"detect": detection, **base, "pull": pull_present if cached else pull_absent, "restore": restore}
        own.append(f"pull: {n.image} {'already on' if cached else 'not known on'} {n.host}")
        per[n.service] = ServicePrediction(None, phases, tuple(own))

    placed = [n for n in needs if n.wave is not None]
    waves: list[float] = []
    clock = detection
    for w in sorted({n.wave for n in placed}):
        slowest = {p: max(per[n.service].phases[p] for n in placed if n.wave == w) for p in PHASES}
        took = sum(slowest[p] for p in PHASES if p not in ("pull", "restore")) + max(slowest["pull"],
                                                                                    slowest["restore"])
        waves.append(round(took, 3))
        clock += took
        for n in placed:
            if n.wave == w:
                per[n.service] = ServicePrediction(round(clock, 3), per[n.service].phases, per[n.service].notes)
    return Prediction(engine, statistic, len(recent), detection, base, per, waves, round(clock, 3), tuple(notes))
