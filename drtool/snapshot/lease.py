"""Leases: one running writer per model, and prune excluded while any create runs, via conditional puts."""

from __future__ import annotations  # PEP 563 (public), for LeaseHolder in its own class

import json
import os
import threading
import time

from drtool.errors import BusyError, OperationFailed
from drtool.pids import boot_id, process_alive
from drtool.snapshot.stores import LEASES, BlobStore, lease_key

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time, docs/benchmarks.md)
if TYPE_CHECKING:
    from collections.abc import Callable

# A lease is renewed every TTL/3 while its run is alive; a run that died stops renewing and its lease
# expires TTL later. A holder on this host whose pid is gone is known dead at once and taken over.
LEASE_TTL = 120.0
PRUNE_LEASE = "_prune"  # model names start with a letter or digit, so this never collides with a model's lease
# After taking over an expired lease, wait this long and read it back: a second taker racing the same
# delete + conditional put would have overwritten it by then, and the loser backs off.
TAKEOVER_SETTLE = 0.5


def hostname() -> str:
    return os.uname().nodename  # what socket.gethostname() returns, without importing socket


class LeaseHolder:
    """Who holds a lease (the lease object's JSON fields), and which lease: `key`, when read from the store."""

    FIELDS = ("purpose", "host", "pid", "boot_id", "started", "expires", "token")
    __slots__ = (*FIELDS, "key")

    def __init__(self, purpose: str, host: str, pid: int, boot_id: str, started: str, expires: float, token: str,
                 key: str | None = None):
        self.purpose = purpose
        self.host = host
        self.pid = pid
        self.boot_id = boot_id
        self.started = started
        self.expires = expires  # epoch seconds
        self.token = token
        self.key = key  # not part of the lease's JSON: where it was read from, for messages

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LeaseHolder) and self.to_json() == other.to_json()

    __hash__ = None  # mutable fields, compared by value

    def describe(self) -> str:
        return f"{self.purpose} on {self.host} (pid {self.pid}, started {self.started})"

    def is_stale(self, now: float) -> bool:
        """Expired, or a process of this machine that no longer runs: gone, a zombie (killed, not yet reaped), or
        from before its last boot."""
        if now > self.expires:
            return True
        if self.host == hostname() and self.boot_id:
            return self.boot_id != boot_id() or not process_alive(self.pid)
        return False

    @classmethod
    def parse(cls, data: bytes, key: str | None = None) -> LeaseHolder | None:
        try:
            doc = json.loads(data.decode())
            return cls(purpose=str(doc["purpose"]), host=str(doc["host"]), pid=int(doc["pid"]),
                       boot_id=str(doc.get("boot_id", "")), started=str(doc["started"]),
                       expires=float(doc["expires"]), token=str(doc["token"]), key=key)
        except (ValueError, KeyError, TypeError):
            return None


class Lease:
    """A named lease in a store, held by this process until released; renewed by a background thread."""

    def __init__(self, store: BlobStore, name: str, purpose: str, ttl: float = LEASE_TTL):
        self.store = store
        self.name = name
        self.key = lease_key(name)
        self.purpose = purpose
        self.ttl = ttl
        self._token = os.urandom(16).hex()  # as secrets.token_hex(16)
        self._started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._renewed_at = 0.0  # monotonic time of the last successful write
        self._lost: str | None = None
        self._renew_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        holder = LeaseHolder(self.purpose, hostname(), os.getpid(), boot_id(), self._started,
                             time.time() + self.ttl, self._token)
        return json.dumps(holder.to_json(), sort_keys=True).encode()

    def holder(self) -> LeaseHolder | None:
        data = self.store.get(self.key)
        return None if data is None else LeaseHolder.parse(data, self.key)

    def try_acquire(self) -> LeaseHolder | None:
        """Take the lease if it is free or stale; None on success, else the live holder."""
        while True:
            written_at = time.monotonic()
            if self.store.put_if_absent(self.key, self._body()):
                self._renewed_at = written_at
                return None
            data = self.store.get(self.key)
            if data is None:
                continue  # released between our put and our get: try again
            current = LeaseHolder.parse(data, self.key)
            if current is not None and not current.is_stale(time.time()):
                return current
            # Dead holder (or an unreadable lease): take it over. Delete + conditional put, then confirm we won.
            self.store.delete(self.key)
            written_at = time.monotonic()
            if not self.store.put_if_absent(self.key, self._body()):
                continue
            time.sleep(TAKEOVER_SETTLE)
            now_holder = self.holder()
            if now_holder is not None and now_holder.token == self._token:
                self._renewed_at = written_at
                return None
            if now_holder is not None:
                return now_holder

    def acquire(self, wait: float, blocked_by: Callable[[], LeaseHolder | None] = lambda: None) -> None:
        """Take the lease, waiting up to `wait` seconds for a live holder to finish; BusyError naming it if not.

        `blocked_by` is asked after taking the lease: a live holder it returns (a conflicting run) makes us give
        the lease back and wait too. Both sides write their own lease before looking for the other's, so with
        S3's read-after-write consistency two conflicting runs can never both go ahead."""
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            holder = self.try_acquire()
            if holder is None:
                holder = blocked_by()
                if holder is None:
                    self._start_heartbeat()
                    return
                self.store.delete(self.key)
            left = deadline - time.monotonic()
            if left <= 0:
                # The holder found by `blocked_by` holds another lease (a create blocked by a prune): name that one.
                raise busy(holder.key or self.key, holder)
            time.sleep(min(1.0, left))

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                current = self.holder()
                if current is None or current.token != self._token:
                    self._lost = f"lease {self.key} was taken over by " + (current.describe() if current else "nobody")
                    return
                written_at = time.monotonic()
                self.store.put(self.key, self._body())
                self._renewed_at = written_at
            except Exception as exc:  # a failed renewal is retried next beat; check_held() judges a lapse
                self._renew_error = str(exc)

    def check_held(self) -> None:
        """Before an irreversible step (writing a manifest, deleting blobs): fail if the lease was lost, or lapsed:
        not renewed for most of its TTL (a paused or cut-off process), so that others may have seen it expired
        and acted (a prune freeing our unreferenced blobs). The next run redoes only what is missing."""
        if self._lost:
            raise OperationFailed(self._lost, hint="another run took over; run again")
        if time.monotonic() - self._renewed_at > self.ttl * 0.8:
            raise OperationFailed(f"lease {self.key} was not renewed for {self.ttl * 0.8:.0f}s and may have been "
                                  "seen as expired; stopping before the irreversible step",
                                  hint="run again" + (f" (last renewal error: {self._renew_error})"
                                                      if self._renew_error else ""))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        current = self.holder()
        if current is not None and current.token == self._token:
            self.store.delete(self.key)


def busy(key: str, holder: LeaseHolder) -> BusyError:
    left = max(0, int(holder.expires - time.time()))
    return BusyError(f"busy: {holder.describe()} holds {key}",
                     hint=f"wait for it (--wait SECONDS); if that run is dead its lease expires in {left}s "
                          "(or at once, when it ran on this host)")


def live_holders(store: BlobStore, exclude: str) -> list[LeaseHolder]:
    """Live leases in the store other than `exclude`: what a prune must wait for."""
    now = time.time()
    found = []
    for obj in store.list(LEASES):
        if obj.key == lease_key(exclude):
            continue
        data = store.get(obj.key)
        holder = LeaseHolder.parse(data, obj.key) if data is not None else None
        if holder is not None and not holder.is_stale(now):
            found.append(holder)
    return found


def live_prune(store: BlobStore) -> LeaseHolder | None:
    """The running prune's lease, if any: what a create must wait for."""
    key = lease_key(PRUNE_LEASE)
    data = store.get(key)
    holder = LeaseHolder.parse(data, key) if data is not None else None
    return holder if holder is not None and not holder.is_stale(time.time()) else None


def first_live_writer(store: BlobStore) -> LeaseHolder | None:
    holders = live_holders(store, exclude=PRUNE_LEASE)
    return holders[0] if holders else None
