"""Outage claims in the DR site's object store: of several receivers that hear one outage, exactly one decides it.

Alertmanager in HA sends every notification from each of its replicas, and a careful team runs two `drtool serve`
receivers, each with its own state dir. Each outage (alert fingerprint + start time, what a decision book dedupes
on) is claimed with one conditional create in the target DR site's first object store, the store the failover's
lease lives in:

- `alerts/outages/<dr site>/<outage>.json`: the claim. The receiver that creates it launches (or queues for
  approval) under its run id; every other receiver reads it and records a `duplicate` of that run id.
- `alerts/outages/<dr site>/<outage>.approval.json`: how a queued failover was settled, `approved` or `cancelled`
  (its alert resolved first), by another conditional create: whichever comes first stands, so an approval and a
  cancellation can never both win. Nothing is ever overwritten.
- `alerts/runs/<run id>.json`: which claim a run id belongs to, so that `drtool failover --approve RUN` finds a run
  queued by either receiver from any host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

from drtool.errors import DrtoolError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable

    from drtool.config import Config
    from drtool.snapshot.stores import BlobStore

OUTAGES = "alerts/outages"
RUNS = "alerts/runs"
_SAFE = re.compile(r"[A-Za-z0-9_.@-]{1,100}")


class ClaimsUnavailable(Exception):
    """The DR site's object store could not be read or written: nothing was claimed or settled."""


def outage_name(outage: str) -> str:
    """An outage key (fingerprint@startsAt) as one safe object name: a fingerprint comes from a webhook body, so
    anything but plain characters (a `/`, `..`) is replaced by its hash rather than used as a path."""
    if _SAFE.fullmatch(outage) and not outage.startswith("."):
        return outage
    return "h-" + hashlib.sha256(outage.encode()).hexdigest()[:32]


def claim_key(target: str, outage: str) -> str:
    return f"{OUTAGES}/{outage_name(target)}/{outage_name(outage)}.json"


def approval_key(target: str, outage: str) -> str:
    return f"{OUTAGES}/{outage_name(target)}/{outage_name(outage)}.approval.json"


def run_key(run_id: str) -> str:
    return f"{RUNS}/{outage_name(run_id)}.json"


def receiver_name(state_dir) -> str:
    """Who decided: this host and the decision book's state dir (two receivers may share a host)."""
    return f"{os.uname().nodename}:{state_dir}"


class OutageClaims:
    """The claims of every DR site, each in that site's store (`store_for(site)`, opened once)."""

    def __init__(self, store_for: Callable[[str], BlobStore]):
        self._store_for = store_for
        self._stores: dict[str, BlobStore] = {}

    @classmethod
    def for_config(cls, config: Config) -> OutageClaims:
        """The DR site's first object store, opened as the failover opens it for its lease."""
        from drtool.snapshot.stores import open_store

        return cls(lambda site: open_store(config.sites[site].object_stores[0]))

    def where(self, target: str) -> str:
        store = self._stores.get(target)
        return f"{target}'s object store" + (f" {store.url}" if store is not None else "")

    def _store(self, target: str) -> BlobStore:
        if target not in self._stores:
            try:
                self._stores[target] = self._store_for(target)
            except (DrtoolError, OSError, KeyError) as exc:
                raise ClaimsUnavailable(f"cannot open {target}'s object store: {_say(exc)}") from None
        return self._stores[target]

    def _io(self, target: str, what: str, call):
        store = self._store(target)
        try:
            return call(store)
        except (DrtoolError, OSError) as exc:
            raise ClaimsUnavailable(f"cannot {what} in {store.url}: {_say(exc)}") from None

    def claim(self, target: str, outage: str, doc: dict) -> tuple[bool, dict]:
        """(True, doc) when this call created the outage's claim; (False, the first receiver's claim) otherwise.
        ClaimsUnavailable when the store cannot be asked."""
        key = claim_key(target, outage)
        won, stands = self._first(target, key, {**doc, "target": target, "outage": outage}, f"claim outage {outage}")
        if won:
            # The index that finds the claim by run id; a receiver killed before writing it leaves the claim
            # findable by listing (find_run).
            self._io(target, f"index run {doc['run_id']}",
                     lambda s: s.put(run_key(doc["run_id"]), json.dumps({"claim": key}).encode()))
        return won, stands

    def settle(self, target: str, outage: str, action: str, by: str, at: float | None = None) -> dict:
        """Record how a queued failover was settled (`approved` or `cancelled`) unless it already was: the record
        that stands, ours or the earlier one."""
        doc = {"action": action, "by": by, "at": time.time() if at is None else at}
        return self._first(target, approval_key(target, outage), doc, f"settle outage {outage}")[1]

    def _first(self, target: str, key: str, doc: dict, what: str) -> tuple[bool, dict]:
        """Create `key` holding `doc` unless it exists: (True, doc) when this call created it, (False, the document
        that was there first) otherwise. A key seen to exist but gone or unreadable at once is tried again."""
        body = json.dumps(doc, sort_keys=True).encode()
        for _ in range(3):
            if self._io(target, what, lambda s: s.put_if_absent(key, body)):
                return True, json.loads(body)
            first = self._read(target, key)
            if first is not None:
                return False, first
        raise ClaimsUnavailable(f"{key} in {self.where(target)} exists but cannot be read")

    def settled(self, target: str, outage: str) -> dict | None:
        return self._read(target, approval_key(target, outage))

    def find_run(self, run_id: str, targets: list[str]) -> dict | None:
        """The claim that `run_id` was decided under, searched in the stores of `targets`; None when none has it."""
        for target in targets:
            index = self._read(target, run_key(run_id))
            if index is not None:
                found = self._read(target, str(index.get("claim", "")))
                if found is not None and found.get("run_id") == run_id:
                    return found
            prefix = f"{OUTAGES}/{outage_name(target)}"
            for obj in self._io(target, f"list {prefix}", lambda s, p=prefix: list(s.list(p))):
                if not obj.key.endswith(".approval.json"):
                    found = self._read(target, obj.key)
                    if found is not None and found.get("run_id") == run_id:
                        return found
        return None

    def _read(self, target: str, key: str) -> dict | None:
        data = self._io(target, f"read {key}", lambda s: s.get(key))
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            raise ClaimsUnavailable(f"{key} in {self.where(target)} is not JSON") from None
        return doc if isinstance(doc, dict) else None


def _say(exc: Exception) -> str:
    if isinstance(exc, DrtoolError):
        return exc.message
    return getattr(exc, "strerror", None) or str(exc)
