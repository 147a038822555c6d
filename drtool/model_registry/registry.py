"""One site's copy of the model registry, on that site's object store.

Layout under the store's prefix:
  registry/<model>/versions/<version>.json            immutable version entries
  registry/<model>/aliases/<alias>/<seq:010d>.json    the alias log; the highest seq is current

Moving an alias is a compare-and-swap built on the one coordination primitive every S3 offers, a
conditional create: the next entry's key is seq+1, so of two concurrent promotes exactly one creates it."""

from drtool.errors import BusyError, UsageError
from drtool.model_registry.entries import AliasEntry, VersionEntry
from drtool.snapshot.stores import BlobStore

ROOT = "registry"
PRODUCTION = "production"


def version_key(model: str, version: str) -> str:
    return f"{ROOT}/{model}/versions/{version}.json"


def alias_key(model: str, alias: str, seq: int) -> str:
    return f"{ROOT}/{model}/aliases/{alias}/{seq:010d}.json"


class ModelRegistry:
    def __init__(self, store: BlobStore, site: str):
        self.store = store
        self.site = site

    def _where(self, key: str) -> str:
        return f"{self.store.url}/{key} (site {self.site})"

    # -- models and versions --------------------------------------------------------------------------
    def models(self) -> list[str]:
        names = {o.key.split("/")[1] for o in self.store.list(ROOT) if o.key.count("/") >= 3}
        return sorted(names)

    def _read_all(self, prefix: str, parse):
        """Every object under prefix, parsed (an object deleted between list and get is skipped)."""
        for obj in self.store.list(prefix):
            data = self.store.get(obj.key)
            if data is not None:
                yield parse(data, self._where(obj.key))

    def versions(self, model: str) -> list[VersionEntry]:
        entries = self._read_all(f"{ROOT}/{model}/versions", VersionEntry.from_bytes)
        return sorted(entries, key=lambda v: v.registered_at)

    def version(self, model: str, version: str) -> VersionEntry | None:
        key = version_key(model, version)
        data = self.store.get(key)
        return None if data is None else VersionEntry.from_bytes(data, self._where(key))

    def require_version(self, model: str, version: str) -> VersionEntry:
        entry = self.version(model, version)
        if entry is None:
            known = ", ".join(v.version for v in self.versions(model)) or "none"
            raise UsageError(f"model {model!r} has no registered version {version!r} at site {self.site}",
                             hint=f"registered versions: {known}")
        return entry

    def put_version(self, entry: VersionEntry) -> bool:
        """Create the entry; True if created, False if the identical entry was already there.
        A different entry under the same version is refused: versions are immutable."""
        key = version_key(entry.model, entry.version)
        if self.store.put_if_absent(key, entry.to_bytes()):
            return True
        existing = self.version(entry.model, entry.version)
        if existing is not None and existing.to_bytes() == entry.to_bytes():
            return False
        raise UsageError(f"{entry.model} version {entry.version} is already registered at site {self.site} "
                         "with different content", hint="versions are immutable: register a new version")

    # -- aliases -------------------------------------------------------------------------------------
    def alias_log(self, model: str, alias: str = PRODUCTION) -> list[AliasEntry]:
        return sorted(self._read_all(f"{ROOT}/{model}/aliases/{alias}", AliasEntry.from_bytes), key=lambda a: a.seq)

    def alias(self, model: str, alias: str = PRODUCTION) -> AliasEntry | None:
        log = self.alias_log(model, alias)
        return log[-1] if log else None

    def production(self, model: str) -> VersionEntry | None:
        """The version the `production` alias names, or None before the first promote."""
        alias = self.alias(model)
        return None if alias is None else self.require_version(model, alias.version)

    def move_alias(self, entry: AliasEntry) -> AliasEntry:
        """Create the alias entry at its seq; BusyError naming the winner when another move took that seq."""
        if self.store.put_if_absent(alias_key(entry.model, entry.alias, entry.seq), entry.to_bytes()):
            return entry
        winner = next((a for a in self.alias_log(entry.model, entry.alias) if a.seq == entry.seq), None)
        raise BusyError(
            f"another promote of {entry.model} won: {entry.alias} -> "
            f"{winner.version if winner else '?'} (seq {entry.seq}, by {winner.by if winner else '?'})",
            hint="check `drtool registry show` and promote again if this version should still win",
        )

    def copy_alias(self, entry: AliasEntry) -> None:
        """Replicate an alias entry decided elsewhere (same key, same bytes; idempotent)."""
        self.store.put_if_absent(alias_key(entry.model, entry.alias, entry.seq), entry.to_bytes())
