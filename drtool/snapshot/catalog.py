"""Finding snapshots in a store: list complete ones, resolve id prefixes, load manifests verified against their id."""

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from drtool.errors import DrtoolError, UsageError, VerificationError
from drtool.snapshot.manifest import MODEL_NAME_PATTERN, SnapshotManifest, is_model_name, parse_manifest
from drtool.snapshot.stores import SNAPSHOTS, BlobStore, manifest_key

MIN_PREFIX = 8
_KEY_RE = re.compile(rf"^{SNAPSHOTS}/({MODEL_NAME_PATTERN[1:-1]})/([0-9a-f]{{64}})\.json$")


@dataclass(frozen=True)
class SnapshotRef:
    id: str
    model: str

    @property
    def key(self) -> str:
        return manifest_key(self.model, self.id)


def list_refs(store: BlobStore, model: str | None = None) -> list[SnapshotRef]:
    """Every manifest in the store. A manifest exists only once its snapshot is complete (it is written last)."""
    if model is not None and not is_model_name(model):
        raise UsageError(f"model name {model!r} is not valid")
    prefix = f"{SNAPSHOTS}/{model}" if model else SNAPSHOTS
    refs = []
    for obj in store.list(prefix):
        m = _KEY_RE.fullmatch(obj.key)
        if m:
            refs.append(SnapshotRef(id=m.group(2), model=m.group(1)))
    return refs


def resolve(store: BlobStore, id_or_prefix: str) -> SnapshotRef:
    """The one snapshot whose id starts with `id_or_prefix` (at least 8 hex digits)."""
    wanted = id_or_prefix.strip().lower()
    if not re.fullmatch(rf"[0-9a-f]{{{MIN_PREFIX},64}}", wanted):
        raise UsageError(f"{id_or_prefix!r} is not a snapshot id",
                         hint=f"give the id or a unique prefix of at least {MIN_PREFIX} hex digits "
                              "(see `drtool snapshot list`)")
    matches = [r for r in list_refs(store) if r.id.startswith(wanted)]
    if not matches:
        raise UsageError(f"no snapshot {wanted} in {store.url}", hint="see `drtool snapshot list --store ...`")
    if len({r.id for r in matches}) > 1:
        raise UsageError(f"snapshot id prefix {wanted} is ambiguous in {store.url}",
                         details=sorted(f"{r.id} ({r.model})" for r in matches), hint="give more digits")
    return matches[0]


def load(store: BlobStore, ref: SnapshotRef) -> tuple[SnapshotManifest, bytes]:
    """The manifest and its exact stored bytes, verified: its SHA-256 is its id, it parses, it is safe."""
    data = store.get(ref.key)
    if data is None:
        raise UsageError(f"no snapshot {ref.id} in {store.url}", hint="it may have just been pruned")
    manifest = parse_manifest(data, ref.id, ref.key)
    if manifest.model != ref.model:
        raise VerificationError(f"manifest {ref.key} names model {manifest.model!r}, not {ref.model!r}",
                                hint="the manifest was moved or altered in the store")
    return manifest, data


def load_many(store: BlobStore, refs: list[SnapshotRef], workers: int = 8
              ) -> list[tuple[SnapshotRef, SnapshotManifest | None, DrtoolError | None]]:
    """Load manifests in parallel; each comes back with its manifest or the error that refused it."""

    def one(ref: SnapshotRef):
        try:
            return ref, load(store, ref)[0], None
        except (VerificationError, UsageError) as err:
            return ref, None, err

    with ThreadPoolExecutor(max(1, min(workers, len(refs)))) as ex:
        return list(ex.map(one, refs))
