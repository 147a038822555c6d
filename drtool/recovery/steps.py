"""The steps of a recovery run, each for all the moves of a wave at once.

Each step takes the run and its moves and returns {service: evidence dict, or the exception that failed it}. Host
work is one Ansible play per round over the moves' hosts (at most one move per host and round; rounds run at the
same time); HTTP and DNS checks run in threads. Every step checks before it acts, so a resumed run redoes nothing
that is done: a host that already serves the production version correctly is kept, a record that already points
at its target is left alone.
"""

from __future__ import annotations  # PEP 563 (public)

import contextlib
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from drtool.actions import deploy, dnsrecord
from drtool.actions.deploy import store_vars
from drtool.actions.registry import site_registry
from drtool.actions.registry import verify as registry_verify
from drtool.config import Config, Host, ServiceSpec, Site
from drtool.errors import DrtoolError, OperationFailed, VerificationError
from drtool.execute.ansible import run_playbook
from drtool.execute.dns import dns_for
from drtool.execute.serving import answers_ready, base_url, version
from drtool.fleet.plan import home_hosts
from drtool.providers import get_provider
from drtool.providers.base import ssh_banner
from drtool.recovery.journal import DONE
from drtool.recovery.moves import FAILBACK, FAILOVER, AlreadyDone, Move, PrimaryServing, Run, place, split_rounds
from drtool.snapshot import catalog
from drtool.snapshot.lease import Lease

PROBE_TIMEOUT_S = 3.0
KEPT = "the primary already serves the production version correctly"


# -- views and helpers --------------------------------------------------------------------------------------------
def view(run: Run, m: Move, host: Host | None = None) -> Site:
    """The target site as this service sees it: its host(s), its port, its record, no proxy."""
    return dataclasses.replace(dnsrecord.record_view(run.site, m.spec), hosts=(host,) if host else m.hosts, proxy=None)


def behind_proxy(run: Run, m: Move) -> bool:
    """A failback of the service on the site's own record, at a site with Nginx: the record points at Nginx."""
    return run.kind == FAILBACK and run.site.proxy is not None and m.spec.record == run.site.dns.record


def target_address(run: Run, m: Move) -> str:
    return run.site.proxy.address if behind_proxy(run, m) else m.host.address


def served_entry(site: Site, host: Host, entry):
    """The production entry with the snapshot the host serves: the server checked those weights against that
    snapshot's manifest before turning ready; deploy.check then compares the version and the canary output."""
    served = version(base_url(host.address, site.serving_port)).get("snapshot_id")
    return dataclasses.replace(entry, snapshot_id=served) if served else entry


def entry_for(m: Move, host: Host, site: Site):
    if host.name in m.ctx.get("kept", []):
        return served_entry(site, host, m.entry)
    return dataclasses.replace(m.entry, snapshot_id=m.ctx["snapshot_id"])


def is_verification(exc: DrtoolError) -> bool:
    """A remote drtool that exited 3 (verification) surfaces through Ansible as a failed task naming the code."""
    return isinstance(exc, VerificationError) or failed_verifying(None, exc.message)


def failed_verifying(error_class: str | None, message: str | None) -> bool:
    """A journaled failure that is a verification (exit 3): its class, or a remote drtool's exit 3 in its text."""
    return error_class in ("VerificationError", "HostKeyError") or "(exit 3)" in (message or "")


def threads(fn: Callable, items: list) -> list:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(fn, items))


def each(moves: list[Move], fn: Callable[[Move], dict]) -> dict:
    """fn(move) for every move at once; an exception fails (or, AlreadyDone, settles) only its own move."""
    def one(m: Move):
        try:
            return fn(m)
        except Exception as exc:  # noqa: BLE001 - journaled as this move's outcome
            return exc
    return dict(zip((m.name for m in moves), threads(one, moves), strict=True))


def pairs(moves: list[Move], skip_kept: bool = True) -> list[tuple[Move, Host]]:
    return [(m, h) for m in moves for h in m.live() if not (skip_kept and h.name in m.ctx.get("kept", []))]


def play(config: Config, playbook: str, work: list[tuple], host_vars: Callable[[object, Host], dict],
         extravars: dict | None = None) -> dict[tuple[str, str], tuple[bool, object]]:
    """One play of `playbook` per round of (move or service, host) pairs, the rounds at the same time: {(service,
    host): (ok, its drtool_result or what failed)}."""
    out: dict[tuple[str, str], tuple[bool, object]] = {}

    def one(rnd: list[tuple]) -> None:
        hv = {h.name: host_vars(m, h) for m, h in rnd}
        res = run_playbook(config, playbook, raise_on_failure=False, forks=max(1, len(hv)),
                           extravars={"drtool_targets": ",".join(hv), **(extravars or {})}, host_vars=hv)
        per = res.per_host(list(hv))
        for m, h in rnd:
            out[(m.name, h.name)] = per[h.name]

    threads(one, split_rounds(work, key=lambda p: p[1].name))
    return out


def container_vars(config: Config, spec: ServiceSpec) -> dict:
    """A service's serving container and weights directory, as the stop and remove actions name them."""
    return {"model_server_model": spec.model, "model_server_container": f"drtool-{spec.model}",
            "model_weights_dest": config.model(spec.model).weights_path}


def outcome(run: Run, moves: list[Move], results: dict, evidence: Callable[[Move, dict], dict]) -> dict:
    """Each move's outcome from its hosts' results: done when every host is; failed when none is; else the
    failed hosts are drained (a site with several instances serves through the others) and it goes on."""
    out = {}
    for m in moves:
        got = {h: results[(m.name, h)] for (name, h) in results if name == m.name}
        if not got:
            out[m.name] = {"skipped": KEPT}
            continue
        bad = {h: str(data) for h, (ok, data) in got.items() if not ok}
        if len(bad) == len(got):
            out[m.name] = OperationFailed("; ".join(f"{h}: {d}" for h, d in sorted(bad.items())) if len(bad) > 1
                                          else next(iter(bad.values())))
            continue
        if bad:
            m.ctx.setdefault("drained", []).extend(sorted(bad))
            run.out.step(f"{m.name}: {', '.join(sorted(bad))} did not come back; drained at the proxy")
        out[m.name] = {**evidence(m, {h: data for h, (ok, data) in got.items() if ok}),
                       **({"failed": bad} if bad else {})}
    return out


def where_records_point(run: Run, specs: list[ServiceSpec]) -> dict[str, tuple[list[str], str | None]]:
    """Each service's record (its addresses) and what answers /readyz at the first one on the service's port."""
    def one(spec: ServiceSpec):
        addresses = dns_for(dataclasses.replace(run.site.dns, record=spec.record)).read_a(spec.record).addresses
        return addresses, answers_ready(addresses[0], spec.port, PROBE_TIMEOUT_S) if addresses else None
    return dict(zip((s.name for s in specs), threads(one, specs), strict=True))


# -- preflight and lease ------------------------------------------------------------------------------------------
def snapshot_candidates(config: Config, store, model: str, version_: str, registered: str) -> list[dict]:
    """Snapshots of `version_` of `model` in `store`, in the order a restore tries them: the newest first
    (failover.snapshot `newest`) or the registered one first (`registered`); older ones follow only when
    failover.fallback_to_older lets a failover fall back to them. Each {"id", "created"}."""
    refs = catalog.list_refs(store, model)
    found = []
    for ref, manifest, _err in catalog.load_many(store, refs):
        if manifest is not None and (manifest.version == version_ or ref.id == registered):
            found.append({"id": ref.id, "created": manifest.created})
    if not any(c["id"] == registered for c in found):  # unreadable manifest: restore names the problem
        found.append({"id": registered, "created": None})
    found.sort(key=lambda c: c["created"] or "", reverse=True)
    if config.failover.snapshot == "registered":
        found.sort(key=lambda c: c["id"] != registered)  # stable: the registered one first, then newest first
    return found if config.failover.fallback_to_older else found[:1]


def preflight(run: Run, moves: list[Move]) -> dict:
    """Read-only: the target registry verified for each model, the DNS credentials checked (a wrong TSIG key fails
    here, before anything changes), each service's production entry, image and snapshot candidates. A failover
    whose record already points at its standby, serving the production version correctly, is already done."""
    registry = site_registry(run.config, run.site)
    try:
        def one(m: Move) -> dict:
            dns = dns_for(view(run, m).dns)
            record = dns.read_a()
            zone = ("dns", dataclasses.replace(dns.target, record=""))
            with run.lock:   # once per DNS server and key for the whole run, not once per record
                if zone not in run.cache:
                    dns.check_credentials()
                    run.cache[zone] = True
            info = registry_verify(run.config, run.out, run.site.name, m.spec.model,
                                   read_data=False)["models"][m.spec.model]
            m.entry = registry.require_version(m.spec.model, info["version"])
            m.ctx.setdefault("dns_before", {"addresses": record.addresses, "ttl": record.ttl})
            m.ctx.update(version=info["version"], image=m.entry.image.at(run.site.registry_url),
                         registered_snapshot_id=m.entry.snapshot_id)
            if "snapshot_candidates" not in m.ctx:
                m.ctx["snapshot_candidates"] = snapshot_candidates(run.config, run.store, m.spec.model,
                                                                   info["version"], m.entry.snapshot_id)
                m.ctx["snapshot_id"] = m.ctx["snapshot_candidates"][0]["id"]
            evidence = {"dns_before": record.addresses, "production": info, "target": [h.name for h in m.hosts],
                        "snapshot_candidates": m.ctx["snapshot_candidates"], "planned": run.planned}
            if run.kind == FAILOVER and record.addresses == [m.host.address] and m.rec("provision").status != DONE:
                try:
                    deploy.check(view(run, m), m.host, served_entry(view(run, m), m.host, m.entry))
                except DrtoolError:
                    pass   # the record points at a standby that does not serve correctly: fail over properly
                else:
                    raise AlreadyDone(f"{m.spec.record} already points at {m.host.name}, which serves "
                                      f"{m.spec.model} {info['version']} correctly")
            if m.ctx.get("primary_serving"):
                raise PrimaryServing(f"refusing an unplanned failover: {m.ctx['primary_serving']}; the primary "
                                     "serves")
            if run.kind == FAILOVER and record.addresses and record.addresses != [m.host.address]:
                answer = answers_ready(record.addresses[0], m.spec.port, PROBE_TIMEOUT_S)
                if answer:
                    evidence["primary_serving"] = f"{answer}: an unplanned failover would be refused (--planned " \
                                                  "moves it)"
            return evidence

        return each(moves, one)
    finally:
        registry.store.close()


def take_lease(run: Run, moves: list[Move]) -> dict:
    """The site's failover lease, once per run (a resumed run takes it again, over its dead holder), held until
    the run ends."""
    key = f"failover-{run.site.name}"
    if run.lease is None:
        lease = Lease(run.store, key, f"{run.kind} {run.run_id}")
        lease.acquire(wait=0)
        run.lease = lease
    return {m.name: {"lease": key} for m in moves}


# -- provision ----------------------------------------------------------------------------------------------------
def provision(run: Run, moves: list[Move]) -> dict:
    return provision_standbys(run, moves) if run.kind == FAILOVER else provision_home(run, moves)


def provision_standbys(run: Run, moves: list[Move]) -> dict:
    """Power every standby of the wave on at once, then one status play over all of them. A standby that does not
    boot, or whose host key does not match, is never used again in this run (nor by its resume): its services are
    placed by the planner on the free slots left, and those standbys are provisioned in turn."""
    provider = get_provider(run.config, run.site)
    failed = run.doc["failed_standbys"]
    out: dict = {}
    todo = [m for m in moves if m.host.name not in failed] + fall_back(run, [m for m in moves
                                                                          if m.host.name in failed], out)

    def power(host: Host) -> str | None:
        try:
            provider.power_on(host)
            provider.wait_ready(host, timeout=120)
        except DrtoolError as exc:
            return exc.message
        return None

    while todo:
        t0 = time.monotonic()
        hosts = {m.host.name: m.host for m in todo}
        errors = dict(zip(hosts, threads(power, list(hosts.values())), strict=True))
        up = [h for h in hosts if errors[h] is None]
        seen = run_playbook(run.config, "status.yml", raise_on_failure=False, forks=max(1, len(up)),
                            extravars={"drtool_targets": ",".join(up)}).per_host(up) if up else {}
        bad: dict[str, str] = {}
        for h in hosts:
            err = errors[h] or (None if seen[h][0] else str(seen[h][1]))
            if err:
                bad[h] = err
        for m in todo:
            if m.host.name not in bad:
                m.ctx["tried"].append({"host": m.host.name, "ok": True, "seconds": round(time.monotonic() - t0, 3)})
                out[m.name] = {"host": m.host.name, "address": m.host.address, "tried": m.ctx["tried"]}
        failed.update(bad)
        for name in bad:
            run.out.step(f"standby {name} failed: {bad[name]}; its services go to the next free standby")
            with contextlib.suppress(DrtoolError):
                provider.power_off(hosts[name])
        todo = fall_back(run, [m for m in todo if m.host.name in bad], out)
    run.save_doc()
    return out


def fall_back(run: Run, moves: list[Move], out: dict) -> list[Move]:
    """Moves whose standby failed, placed again by the planner on the standbys that have not failed, counting the
    GPUs the other moves hold there. Returns the moves that got a new standby; each other one gets its failure
    in `out`, naming every standby tried."""
    if not moves:
        return []
    failed = run.doc["failed_standbys"]
    for m in moves:
        m.ctx["tried"].append({"host": m.host.name, "ok": False, "error": failed[m.host.name]})
    held: dict[str, int] = {}
    for other in run.moves.values():
        if all(other is not m for m in moves) and other.host.name not in failed and not other.failed():
            held[other.host.name] = held.get(other.host.name, 0) + other.spec.gpus
    placed, _left = place([m.spec for m in moves], list(run.site.hosts), run.site.name, len(moves),
                          refused=failed, held=held)
    again = []
    for m in moves:
        tried = ", ".join(f"{t['host']} ({t['error']})" for t in m.ctx["tried"] if not t["ok"])
        if m.name not in placed:
            out[m.name] = OperationFailed(f"no standby of {run.site.name} could take {m.name}: tried {tried}")
            continue
        new = placed[m.name][0]
        run.out.step(f"{m.name}: standby {m.host.name} failed ({failed[m.host.name]}); moving it to {new.name}")
        m.hosts = (new,)
        m.ctx["host"], m.ctx["hosts"] = new.name, [new.name]
        run.save(m)
        again.append(m)
    return again


def provision_home(run: Run, moves: list[Move]) -> dict:
    """The home hosts answer SSH and their engine (one play over all of them). A host that already serves the
    production version correctly is kept as it is (its container came back with the host): redeploying it would
    only replace a verified container by an equal one. A running container gets a bounded time to turn ready (it
    hashes its weights first); a stopped or missing one is redeployed."""
    provider = get_provider(run.config, run.site) if run.site.is_standby else None
    hosts = {h.name: h for m in moves for h in m.live()}
    if provider:
        for h in hosts.values():
            provider.power_on(h)
    seen = run_playbook(run.config, "status.yml", raise_on_failure=False, forks=max(1, len(hosts)),
                        extravars={"drtool_targets": ",".join(hosts)}).per_host(list(hosts))
    results = {(m.name, h.name): seen[h.name] for m in moves for h in m.live()}
    ok_pairs = [(m, h) for m in moves for h in m.live() if seen[h.name][0]]

    def serving(pair: tuple[Move, Host]) -> tuple[bool, float | None]:
        m, h = pair
        site = view(run, m, h)
        if check_serving(site, h, m.entry):
            return True, None
        if not deploy.probe(run.config, h, run.config.model(m.spec.model)).get("running"):
            return False, None
        t0 = time.monotonic()
        with contextlib.suppress(DrtoolError):
            deploy.wait(site, h, timeout=run.config.failover.primary_ready_wait_s)
        return check_serving(site, h, m.entry), round(time.monotonic() - t0, 3)

    kept = dict(zip(((m.name, h.name) for m, h in ok_pairs), threads(serving, ok_pairs), strict=True))
    for m in moves:
        m.ctx["kept"] = [h.name for h in m.live() if kept.get((m.name, h.name), (False,))[0]]

    def evidence(m: Move, _data: dict) -> dict:
        m.ctx["primary_ok"] = all(h.name in m.ctx["kept"] for h in m.live())
        return {"hosts": {h.name: h.address for h in m.live()}, "already_serving": m.ctx["primary_ok"],
                "kept": m.ctx["kept"],
                "waited_for_ready_s": {h: w for (name, h), (_ok, w) in kept.items() if name == m.name and w}}

    return outcome(run, moves, results, evidence)


def check_serving(site: Site, host: Host, entry) -> bool:
    try:
        deploy.check(site, host, served_entry(site, host, entry))
    except DrtoolError:
        return False
    return True


# -- image, weights, container ------------------------------------------------------------------------------------
def pull_image(run: Run, moves: list[Move]) -> dict:
    """Each image once per host, by digest from the target site's registry."""
    work = pairs(moves)
    first: dict[tuple[str, str], tuple[Move, Host]] = {}
    for m, h in work:
        first.setdefault((h.name, m.ctx["image"]), (m, h))
    got = play(run.config, "pull_image.yml", list(first.values()), lambda m, h: {"serving_image_ref": m.ctx["image"]})
    by_image = {(h.name, m.ctx["image"]): got[(m.name, h.name)] for m, h in first.values()}
    results = {(m.name, h.name): by_image[(h.name, m.ctx["image"])] for m, h in work}
    return outcome(run, moves, results, lambda m, data: {
        "image": m.ctx["image"], "pulled": one_or_each(data, "pulled")})


def restore(run: Run, moves: list[Move]) -> dict:
    """Restore the first candidate that verifies, on every target host of the move. A snapshot refused by
    verification (a corrupt blob, a bad manifest) is recorded and the next older one of the same version is
    tried in another play, when the policy allows."""
    out: dict = {}
    todo = [m for m in moves if pairs([m])]
    for m in moves:
        if m not in todo:
            out[m.name] = {"skipped": KEPT}
        m.ctx.setdefault("snapshots_refused", [])
    while todo:
        for m in todo:
            refused = {r["id"] for r in m.ctx["snapshots_refused"]}
            m.ctx["snapshot_id"] = next(c["id"] for c in m.ctx["snapshot_candidates"] if c["id"] not in refused)
        got = play(run.config, "restore_weights.yml", pairs(todo), lambda m, h: {
            "model_weights_snapshot_id": m.ctx["snapshot_id"],
            "model_weights_dest": run.config.model(m.spec.model).weights_path},
            extravars=store_vars(run.site, "model_weights"))
        again = []
        for m in todo:
            mine = {h: got[(m.name, h.name)] for _, h in pairs([m])}
            refused = next((str(d) for ok, d in mine.values() if not ok and is_verification(DrtoolError(str(d)))),
                           None)
            if refused is None:
                out.update(outcome(run, [m], {(m.name, h.name): r for h, r in mine.items()}, lambda m, data: {
                    "snapshot_id": m.ctx["snapshot_id"], "created": created(m), "refused": m.ctx["snapshots_refused"],
                    "fallback": bool(m.ctx["snapshots_refused"]),
                    "restore": one_or_each(data, "restore")}))
                if out[m.name] and not isinstance(out[m.name], Exception):
                    m.ctx["snapshot_created"] = created(m)
                continue
            m.ctx["snapshots_refused"].append({"id": m.ctx["snapshot_id"], "created": created(m), "error": refused})
            left = [c["id"] for c in m.ctx["snapshot_candidates"]
                    if c["id"] not in {r["id"] for r in m.ctx["snapshots_refused"]}]
            if not left:
                out[m.name] = VerificationError(
                    f"no snapshot of {m.spec.model} {m.ctx['version']} in {run.store.url} verifies: "
                    + "; ".join(f"{r['id'][:12]}: {r['error']}" for r in m.ctx["snapshots_refused"]),
                    hint="the copy is damaged: replicate a good snapshot again (`drtool backup`) before failing over")
                continue
            run.out.step(f"{m.name}: snapshot {m.ctx['snapshot_id'][:12]} refused; trying {left[0][:12]}")
            again.append(m)
        todo = again
    return out


def one_or_each(data: dict[str, dict], key: str):
    """A result field of the hosts of one move: the value itself for one host, else {host: value}."""
    values = {h: d.get(key) for h, d in data.items()}
    return next(iter(values.values())) if len(values) == 1 else values


def created(m: Move) -> str | None:
    return next((c["created"] for c in m.ctx["snapshot_candidates"] if c["id"] == m.ctx["snapshot_id"]), None)


def start(run: Run, moves: list[Move]) -> dict:
    """The serving container, with the same variables for every service and direction (GPU limits included)."""
    def host_vars(m: Move, h: Host) -> dict:
        return deploy.server_vars(view(run, m, h), run.config.model(m.spec.model), m.ctx["image"], m.ctx["version"],
                                  m.ctx["snapshot_id"], port=m.spec.port, service=m.spec.name)

    got = play(run.config, "model_server.yml", pairs(moves), host_vars)
    return outcome(run, moves, got, lambda m, data: {
        "started": data, "gpu_requested": view(run, m).gpu})


def per_host(run: Run, moves: list[Move], check: Callable[[Move, Host], dict], skip_kept: bool) -> dict:
    """check(move, host) for each live (move, host) at once: {(service, host): (ok, evidence or error)}."""
    work = pairs(moves, skip_kept=skip_kept)

    def one(pair):
        m, h = pair
        try:
            return True, check(m, h)
        except DrtoolError as exc:
            return False, exc
    return dict(zip(((m.name, h.name) for m, h in work), threads(one, work), strict=True))


def http_outcome(run: Run, moves: list[Move], got: dict) -> dict:
    """Like outcome(), keeping the first error's class (VerificationError: exit 3) when every host failed."""
    out = outcome(run, moves, {k: (ok, v if ok else v.message) for k, (ok, v) in got.items()},
                  lambda m, data: data if len(data) > 1 else next(iter(data.values())))
    for m in moves:
        errs = [v for (name, _h), (ok, v) in got.items() if name == m.name and not ok]
        if isinstance(out[m.name], Exception) and errs:
            out[m.name] = errs[0]
    return out


def wait_ready(run: Run, moves: list[Move]) -> dict:
    return http_outcome(run, moves, per_host(run, moves, lambda m, h: deploy.wait(view(run, m, h), h), True))


def verify(run: Run, moves: list[Move]) -> dict:
    """/version equals the registry's production entry (with the snapshot restored) and the canary output matches,
    on every target host (kept ones included)."""
    def check(m: Move, h: Host) -> dict:
        site = view(run, m, h)
        return deploy.check(site, h, entry_for(m, h, site))

    got = per_host(run, moves, check, False)
    out = http_outcome(run, moves, got)
    for m in moves:
        if not isinstance(out[m.name], Exception) and m.ctx.get("kept") and m.ctx.get("primary_ok"):
            site = view(run, m, m.host)
            m.ctx["snapshot_id"] = served_entry(site, m.host, m.entry).snapshot_id
    return out


# -- Nginx, fence, DNS, cool --------------------------------------------------------------------------------------
def proxy(run: Run, moves: list[Move]) -> dict:
    """The site's Nginx over its verified instances (the failed ones drained), checked through it."""
    from drtool.actions import proxy as nginx

    out = {}
    for m in moves:
        if not behind_proxy(run, m):
            out[m.name] = {"skipped": "not behind the site's Nginx"}
            continue
        try:
            drained = m.ctx.get("drained", [])
            deployed = nginx.deploy(run.config, run.site, drained=drained)
            front = nginx.front(run.site)
            site = dataclasses.replace(run.site, serving_port=m.spec.port)
            deploy.wait(site, front, timeout=60)
            checked = deploy.check(site, front, served_entry(site, front, m.entry))
            out[m.name] = {"proxy": front.name, "address": front.address, "drained": drained,
                           "config_changed": deployed.get("config_changed"), "started": deployed.get("started"),
                           "reloaded": deployed.get("reloaded"), "through_proxy": checked}
        except DrtoolError as exc:
            out[m.name] = exc
    return out


def fence_primary(run: Run, moves: list[Move]) -> dict:
    """Best effort (failover.fence): each service's serving container stopped on each home host that still answers
    SSH, so a returning primary does not serve beside the standby. In a region outage the hosts are down: each is
    recorded unreachable and the record moves anyway. A planned move first waits out the old record's TTL."""
    if not run.config.failover.fence:
        return {m.name: {"fenced": {}, "skipped": "failover.fence is off"} for m in moves}
    homes = {m.name: home_hosts(run.config.site(m.spec.site), m.spec) for m in moves}
    hosts = {h.name: h for hs in homes.values() for h in hs}
    up = dict(zip(hosts, threads(lambda h: bool(ssh_banner(h.address, h.port, timeout=3)), list(hosts.values())),
                  strict=True))
    drained = drain_old_records(run, moves) if run.planned and any(up.values()) else None
    fenced = {m.name: {h.name: "unreachable: not fenced (down or partitioned); DNS moves anyway"
                       for h in homes[m.name] if not up[h.name]} for m in moves}
    got = play(run.config, "model_server.yml", [(m, h) for m in moves for h in homes[m.name] if up[h.name]],
               lambda m, h: container_vars(run.config, m.spec), extravars={"model_server_action": "stop"})
    for (name, host), (ok, data) in got.items():
        fenced[name][host] = "serving container stopped" if ok else f"fencing failed: {data}"
    for m in moves:
        m.ctx["fenced"] = fenced[m.name]
    return {m.name: {"primary": m.spec.site, "fenced": fenced[m.name],
                     **({"drained_s": drained} if drained is not None else {})} for m in moves}


def drain_old_records(run: Run, moves: list[Move]) -> float:
    """A planned move: resolvers may hold the old record for its TTL after the flip, so the old primary keeps
    serving until that TTL has passed since the record moved (lower it ahead with `failover --prepare`)."""
    left = 0.0
    for m in moves:
        ttl = (m.ctx.get("dns_before") or {}).get("ttl") or 0
        moved_at = m.rec("flip_dns").ended or time.time()
        left = max(left, moved_at + ttl - time.time())
    if left > 0:
        run.out.step(f"draining: the old record may be cached for {left:.0f}s more")
        time.sleep(left)
    return round(max(0.0, left), 3)


def verified(run: Run, m: Move) -> bool:
    """Never point DNS at an unverified target: the steps that prove the target must all be done."""
    steps = {s.name: s.status for s in m.journal.steps}
    return steps.get("verify") == DONE and (not behind_proxy(run, m) or steps.get("proxy") == DONE)


def flip_dns(run: Run, moves: list[Move]) -> dict:
    """Each verified service's record to its target, the record it replaces saved first."""
    def one(m: Move) -> dict:
        if not verified(run, m):
            raise VerificationError("refusing to flip DNS: the target has not passed verify")
        site, target = view(run, m), target_address(run, m)
        dns = dns_for(site.dns)
        before = dns.read_a()
        evidence = {"record": m.spec.record, "before": before.addresses, "after": [target],
                    "fenced": m.ctx.get("fenced", {})}
        if before.addresses == [target]:
            return {**evidence, "changed": False}
        saved = dnsrecord.save_previous(site, run.store, before, run.run_id)
        dns.replace_a([target], site.dns.ttl)
        return {**evidence, "changed": True, "previous_saved": saved}
    return each(moves, one)


def confirm_dns(run: Run, moves: list[Move]) -> dict:
    def one(m: Move) -> dict:
        site, target = view(run, m), target_address(run, m)
        dns = dns_for(site.dns)
        deadline = time.monotonic() + 30
        while True:
            got = dns.read_a()
            if got.addresses == [target]:
                return {"server": f"{site.dns.server}:{site.dns.port}", "answer": got.addresses, "ttl": got.ttl}
            if time.monotonic() > deadline:
                raise OperationFailed(f"{site.dns.server} still answers {got.addresses} for {m.spec.record}, "
                                      f"expected {target}")
            time.sleep(0.5)
    return each(moves, one)


def cool_standby(run: Run, moves: list[Move]) -> dict:
    """Every DR standby that is on: these services' containers stopped and their weights removed (unless another
    service's record still points there for the same model), then powered off unless a record still points at it
    (a service not failed back still serves from it)."""
    cooled = cool_standbys(run.config, [m.spec for m in moves],
                           {m.name: set((m.ctx.get("dns_before") or {}).get("addresses") or []) for m in moves})
    run.doc["cooled"] = {**run.doc.get("cooled", {}), **cooled}
    return {m.name: {"cooled": cooled} for m in moves}


def cool_standbys(config: Config, specs: list[ServiceSpec], served_from: dict[str, set[str]] | None = None) -> dict:
    """`served_from`: each service's standby addresses (where its record pointed before the failback): only there
    are its container and weights removed; without it, on every standby that is on."""
    mine = {s.name for s in specs}
    in_use = dnsrecord.standbys_in_use(config, exclude=mine)
    users = {a: {config.services[n].model for n in names} for a, names in in_use.items()}
    cooled = {}
    for dr in (s for s in config.sites.values() if s.role == "dr" and s.is_standby):
        provider = get_provider(config, dr)
        on = [h for h in dr.hosts if provider.state(h) == "on"]
        up = [h for h in on if ssh_banner(h.address, h.port, timeout=3)]
        work = [(s, h) for s in specs for h in up if s.model not in users.get(h.address, set())
                and (served_from is None or h.address in served_from.get(s.name, set()))]
        play(config, "model_server.yml", work, lambda s, h: container_vars(config, s), {"model_server_action": "stop"})
        play(config, "restore_weights.yml", work, lambda s, h: container_vars(config, s),
             {"model_weights_action": "remove"})
        done: dict[str, list[str]] = {}
        for s, h in work:
            done.setdefault(h.name, []).append(s.name)
        for h in on:
            what = [f"{', '.join(sorted(done[h.name]))}: container stopped, weights removed"] if h.name in done else []
            if h.address in in_use:
                cooled[h.name] = "; ".join([*what, f"left on: {', '.join(in_use[h.address])} still served from it"])
                continue
            provider.power_off(h)
            cooled[h.name] = "; ".join([*what, "powered off"])
    return cooled
