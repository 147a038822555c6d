"""Where snapshots live: one BlobStore interface over a local directory (file://) or an S3 bucket (s3://)."""

from __future__ import annotations  # PEP 563 (public), for ObjectStore in its own class

import contextlib
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import namedtuple
from collections.abc import Iterator

from drtool.errors import OperationFailed, UsageError, VerificationError
from drtool.snapshot.directio import read_file_into, write_new_file

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time, docs/benchmarks.md)
if TYPE_CHECKING:  # drtool.config pulls in jsonschema and yaml: not needed to open a store
    from drtool.config import ObjectStore

BLOBS = "blobs/sha256"
SNAPSHOTS = "snapshots"
LEASES = "leases"
TEMP_PREFIX = ".tmp-"
SMALL_BLOB = 1 << 20  # S3: blobs up to this size are stored with one conditional PUT, no HEAD first
# A conditional PUT refused: 412, the key exists; 409, another conditional write to it is in flight (AWS): it wins.
_KEY_EXISTS = ("PreconditionFailed", "ConditionalRequestConflict")
UPLOADED, PRESENT, REPAIRED = "uploaded", "present", "repaired"  # what store_blob did
MISSING, INTACT, DAMAGED = "missing", "intact", "damaged"  # what check_blob found
BY_SIZE, BY_CHECKSUM, BY_READING = "size", "checksum", "read"  # how check_blob knew


def blob_key(digest: str) -> str:
    return f"{BLOBS}/{digest[:2]}/{digest}"


def manifest_key(model: str, snapshot_id: str) -> str:
    return f"{SNAPSHOTS}/{model}/{snapshot_id}.json"


def lease_key(name: str) -> str:
    return f"{LEASES}/{name}.json"


class StoredObject(namedtuple("StoredObject", "key size mtime")):
    """An object a store lists: its key, size and mtime (seconds since the epoch)."""

    __slots__ = ()


class BlobStore(ABC):
    """Immutable content-addressed blobs plus small objects (manifests, leases) under one root.

    Every write is atomic: a reader sees a whole object or none. `put_if_absent` is the only coordination
    primitive (a conditional create), as S3 offers nothing stronger across AWS, MinIO, Ceph RGW and R2.
    """

    url: str

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` unless it exists; True when this call created it."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete `key`; a key that is already gone is not an error."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[StoredObject]: ...

    @abstractmethod
    def size(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""

    def blob_size(self, digest: str) -> int | None:
        """The stored blob's size, or None when it is not there."""
        return self.size(blob_key(digest))

    @abstractmethod
    def put_blob(self, digest: str, data: memoryview) -> None: ...

    def store_blob(self, digest: str, data: memoryview, scrub: bool = False) -> str:
        """Store the blob unless the store holds it intact: UPLOADED, PRESENT, or REPAIRED (it was there but damaged,
        and was overwritten). A present blob of the wrong size is always replaced; with `scrub` (the files of the
        rotating re-check) the stored copy is also read back and hashed, and replaced when it does not match."""
        size = self.blob_size(digest)
        if size == len(data) and (not scrub or self.stored_blob_matches(digest)):
            return PRESENT
        self.put_blob(digest, data)
        return UPLOADED if size is None else REPAIRED

    def check_blob(self, digest: str, size: int) -> tuple[str, str]:
        """Whether the store holds the blob intact: (MISSING, INTACT or DAMAGED, how it was told: BY_SIZE,
        BY_CHECKSUM or BY_READING). Soundly and as cheaply as the store allows: absent or of the wrong size needs one
        HEAD or stat; the content then needs a SHA-256 the server computed and keeps (S3Store), else reading the
        blob back and hashing it (here: a directory store keeps no checksum a later write could not leave behind)."""
        stored = self.blob_size(digest)
        if stored is None:
            return MISSING, BY_SIZE
        if stored != size:
            return DAMAGED, BY_SIZE
        return (INTACT if self.stored_blob_matches(digest) else DAMAGED), BY_READING

    def stored_blob_matches(self, digest: str) -> bool:
        import hashlib  # not at start-up: see manifest.sha256

        try:
            return hashlib.sha256(self.read_blob(digest)).hexdigest() == digest
        except MissingBlob:
            return False

    @abstractmethod
    def read_blob(self, digest: str, into: bytearray | None = None) -> bytes | memoryview:
        """The blob's bytes as stored (not checked here); MissingBlob when it is not there. With `into`, a blob that
        fits is read into that buffer and a view of it returned: a restore reuses its buffers instead of faulting in
        fresh memory for every part (docs/benchmarks.md)."""

    @abstractmethod
    def flush(self) -> None:
        """Make every blob written so far durable before a manifest may reference it."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class MissingBlob(Exception):
    def __init__(self, digest: str):
        super().__init__(digest)
        self.digest = digest


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore(BlobStore):
    """A directory tree: one file per object. Writes go to a temp file in the same directory, are fsynced,
    then renamed (or hard-linked, for a conditional create) into place. Paths are plain strings (no pathlib:
    start-up time of an unchanged re-run, docs/benchmarks.md)."""

    def __init__(self, url: str, root: str, create: bool):
        self.url = url
        self.root = root
        if not os.path.isdir(root):
            if not create:
                raise UsageError(f"store {url}: {root} does not exist",
                                 hint="check --store, or create a snapshot first")
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as exc:
                raise OperationFailed(f"store {url}: cannot create {root}: {exc.strerror}") from None
        self._made_dirs: set[str] = set()
        self._dirty_dirs: set[str] = set()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key)

    def _parent(self, path: str) -> str:
        parent = os.path.dirname(path)
        if parent not in self._made_dirs:
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)
        return parent

    def _write_temp(self, path: str, data: memoryview | bytes) -> str:
        """A new temp file beside `path` holding `data`, fsynced (large aligned parts written with O_DIRECT)."""
        tmp = os.path.join(self._parent(path), f"{TEMP_PREFIX}{os.urandom(8).hex()}")
        write_new_file(tmp, data)
        return tmp

    def get(self, key):
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put(self, key, data):
        path = self._path(key)
        os.replace(self._write_temp(path, data), path)
        _fsync_dir(os.path.dirname(path))

    def put_if_absent(self, key, data):
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists: a conditional create
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(os.path.dirname(path))
        return True

    def delete(self, key):
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            self._dirty_dirs.add(os.path.dirname(path))

    def list(self, prefix):
        for dirpath, _dirs, names in os.walk(self._path(prefix)):
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                yield StoredObject(os.path.relpath(path, self.root).replace(os.sep, "/"), st.st_size, st.st_mtime)

    def size(self, key):
        try:
            return os.stat(self._path(key)).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put_blob(self, digest, data):
        path = self._path(blob_key(digest))
        os.replace(self._write_temp(path, data), path)
        self._dirty_dirs.add(os.path.dirname(path))

    def read_blob(self, digest, into=None):
        try:
            with open(self._path(blob_key(digest)), "rb", buffering=0) as f:
                if into is not None:
                    view = read_file_into(f.fileno(), os.fstat(f.fileno()).st_size, into)
                    if view is not None:
                        return view
                return f.readall()
        except FileNotFoundError:
            raise MissingBlob(digest) from None

    def flush(self):
        # Blob files were fsynced before their rename; the renames become durable with their directories.
        for d in sorted(self._dirty_dirs):
            with contextlib.suppress(FileNotFoundError):
                _fsync_dir(d)
        self._dirty_dirs.clear()

    def close(self):
        pass  # nothing held open between calls

    def remove_stale_temps(self, older_than: float) -> int:
        """Delete temp files that crashed writers left behind (they are never visible as objects)."""
        removed = 0
        cutoff = time.time() - older_than
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    if name.startswith(TEMP_PREFIX) and os.stat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
        return removed


class S3Store(BlobStore):
    """An S3 bucket and prefix, through standard calls only (PutObject with If-None-Match for conditional creates)."""

    def __init__(self, url: str, settings: ObjectStore, max_pool: int):
        from drtool.execute.s3 import parse_s3_url, transfer_client, transfer_session

        self.url = url
        self.location = parse_s3_url(url)
        self.endpoint = settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL") or "AWS S3"
        self._session = transfer_session(settings)
        self.client = transfer_client(settings, max_pool, self._session)
        self._fast_lock = threading.Lock()
        self._fast_learnt = False
        self._fast = None

    def _key(self, key: str) -> str:
        return self.location.key(key)

    def _blob_requests(self):
        """The lean path for blob PUT/GET (s3blobs.py), learnt from botocore on first use; None when it does not
        apply. Each call it cannot answer simply is made again through botocore."""
        if not self._fast_learnt:
            with self._fast_lock:
                if not self._fast_learnt:
                    from drtool.execute.s3 import transfer_credentials, transfer_tls_verify
                    from drtool.snapshot.s3blobs import BlobRequests

                    if os.environ.get("DRTOOL_S3_BOTOCORE_ONLY") != "1":
                        self._fast = BlobRequests.learn(self.client, self.location.bucket,
                                                        self._key(blob_key("0" * 64)),
                                                        credentials=transfer_credentials(self._session),
                                                        ca_bundle=transfer_tls_verify(self._session))
                    self._fast_learnt = True
        return self._fast

    def get(self, key):
        with s3_errors(self, self._key(key)):
            try:
                return self.client.get_object(Bucket=self.location.bucket, Key=self._key(key))["Body"].read()
            except self.client.exceptions.NoSuchKey:
                return None

    def put(self, key, data):
        with s3_errors(self, self._key(key)):
            self.client.put_object(Bucket=self.location.bucket, Key=self._key(key), Body=data,
                                   ChecksumSHA256=_b64_sha256(data))

    def put_if_absent(self, key, data):
        from botocore.exceptions import ClientError

        with s3_errors(self, self._key(key)):
            try:
                self.client.put_object(Bucket=self.location.bucket, Key=self._key(key), Body=data, IfNoneMatch="*",
                                       ChecksumSHA256=_b64_sha256(data))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _KEY_EXISTS:
                    return False
                raise
            return True

    def delete(self, key):
        with s3_errors(self, self._key(key)):
            self.client.delete_object(Bucket=self.location.bucket, Key=self._key(key))

    def list(self, prefix):
        base = self._key("")
        strip = len(base) + 1 if base else 0
        with s3_errors(self, self._key(prefix) + "/"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self._key(prefix) + "/")
            for page in pages:
                for obj in page.get("Contents", []):
                    yield StoredObject(obj["Key"][strip:], obj["Size"], obj["LastModified"].timestamp())

    def size(self, key):
        head = self._head(self._key(key))
        return None if head is None else head[0]

    def _head(self, full_key: str) -> tuple[int, str | None] | None:
        """(size, the SHA-256 checksum the server keeps, base64, or None) of an object, or None when it is absent."""
        from botocore.exceptions import ClientError

        with s3_errors(self, full_key):
            try:
                reply = self.client.head_object(Bucket=self.location.bucket, Key=full_key, ChecksumMode="ENABLED")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        return reply["ContentLength"], reply.get("ChecksumSHA256")

    def _blob_head(self, digest: str) -> tuple[int, str | None] | None:
        fast = self._blob_requests()
        answer = fast.head(self._key(blob_key(digest))) if fast is not None else None
        if answer is None:
            return self._head(self._key(blob_key(digest)))
        return None if answer is False else answer

    def blob_size(self, digest):
        head = self._blob_head(digest)
        return None if head is None else head[0]

    def check_blob(self, digest, size):
        """One HEAD that asks for the object's checksum: every blob drtool uploads carries x-amz-checksum-sha256, which
        a server that supports checksums (AWS S3, SeaweedFS, MinIO, ...) checks on arrival and keeps, and a blob's name
        is its SHA-256, so comparing the two reads no data. An object without a SHA-256 checksum (written by another
        client, or a server that keeps none) is read back and hashed: sound, not cheap."""
        head = self._blob_head(digest)
        if head is None:
            return MISSING, BY_SIZE
        stored_size, checksum = head
        if stored_size != size:
            return DAMAGED, BY_SIZE
        if _full_object_sha256(checksum):
            return (INTACT if checksum == _b64(bytes.fromhex(digest)).decode() else DAMAGED), BY_CHECKSUM
        return (INTACT if self.stored_blob_matches(digest) else DAMAGED), BY_READING

    def put_blob(self, digest, data):
        fast = self._blob_requests()
        if fast is not None and fast.put(self._key(blob_key(digest)), data, digest, if_none_match=False):
            return
        # botocore takes bytes or a bytearray, not a memoryview; a view of a whole pooled bytearray is sent as is
        # (measured: the cheapest body botocore sends), a partial one is copied once.
        body = data.obj if isinstance(data.obj, bytearray) and data.nbytes == len(data.obj) else bytes(data)
        with s3_errors(self, self._key(blob_key(digest))):
            self.client.put_object(Bucket=self.location.bucket, Key=self._key(blob_key(digest)), Body=body,
                                   ContentLength=len(data),
                                   ChecksumSHA256=_b64(bytes.fromhex(digest)).decode())

    def store_blob(self, digest, data, scrub=False):
        if len(data) > SMALL_BLOB:
            return self._store_if_damaged(digest, data, scrub)  # a HEAD is cheap next to re-sending a big part
        # Small: one conditional PUT instead of HEAD + PUT (botocore spends ~3 ms of CPU per request, which
        # dominates for small files). A store that ignores If-None-Match rewrites identical bytes: harmless.
        fast = self._blob_requests()
        outcome = fast.put(self._key(blob_key(digest)), data, digest, if_none_match=True) if fast else None
        if outcome == "created":
            return UPLOADED
        if outcome is None:
            outcome = self._put_small_through_botocore(digest, data)
            if outcome == "created":
                return UPLOADED
        # It was there already: a damaged copy (wrong size or checksum; with scrub, wrong content) must not stay.
        # This HEAD is paid only for blobs that exist and were read again (changed files, dedupe, the re-check).
        return self._store_if_damaged(digest, data, scrub)

    def _store_if_damaged(self, digest, data, scrub: bool) -> str:
        """BlobStore.store_blob, with the stored SHA-256 checksum (when the server keeps one) compared as well: a
        present blob whose content differs is replaced by every create that reads its file, not only in the
        re-check share. The same one HEAD, asking for the checksum too."""
        head = self._blob_head(digest)
        if head is not None and head[0] == len(data):
            checksum = head[1]
            known = _full_object_sha256(checksum)
            if known and checksum != _b64(bytes.fromhex(digest)).decode():
                self.put_blob(digest, data)
                return REPAIRED
            if not scrub or self.stored_blob_matches(digest):  # the re-check reads back even so: rot at rest
                return PRESENT
        self.put_blob(digest, data)
        return UPLOADED if head is None else REPAIRED

    def _put_small_through_botocore(self, digest, data) -> str:
        body = bytes(data)
        with s3_errors(self, self._key(blob_key(digest))):
            try:
                self.client.put_object(Bucket=self.location.bucket, Key=self._key(blob_key(digest)), Body=body,
                                       IfNoneMatch="*", ChecksumSHA256=_b64(bytes.fromhex(digest)).decode())
            except self.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _KEY_EXISTS:
                    raise
                return "exists"
        return "created"

    def read_blob(self, digest, into=None):
        fast = self._blob_requests()
        if fast is not None:
            data = fast.get(self._key(blob_key(digest)), into)
            if data is not None:
                return data
        with s3_errors(self, self._key(blob_key(digest))):
            try:
                return self.client.get_object(Bucket=self.location.bucket,
                                              Key=self._key(blob_key(digest)))["Body"].read()
            except self.client.exceptions.NoSuchKey:
                raise MissingBlob(digest) from None

    def flush(self):
        pass  # a completed PutObject is durable

    def close(self):
        if self._fast is not None:
            self._fast.close()
        self.client.close()


def _b64(raw: bytes) -> bytes:
    import base64  # S3 only: a file store never needs it

    return base64.b64encode(raw)


def _full_object_sha256(checksum: str | None) -> bool:
    """Whether a stored ChecksumSHA256 is the SHA-256 of the whole object (a multipart upload's is a checksum of its
    parts' checksums, written with a -N suffix; drtool never uploads blobs in parts, but another client might)."""
    return bool(checksum) and "-" not in checksum


def _b64_sha256(data: bytes) -> str:
    import hashlib  # not at start-up: see manifest.sha256

    return _b64(hashlib.sha256(data).digest()).decode()


# The server refused a body that did not match the checksum or content hash sent with it.
_BAD_DIGEST = ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch")


@contextlib.contextmanager
def s3_errors(store: S3Store, key: str | None = None):
    """Turn botocore's exceptions into drtool errors that say which store, bucket and key, and what to check."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    where = f"store {store.url} ({store.endpoint})"
    what = f" on s3://{store.location.bucket}/{key}" if key is not None else ""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise UsageError(f"{where}: no usable S3 credentials",
                         hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the store's "
                              "credentials_file in drtool.yaml") from None
    except EndpointConnectionError:
        raise OperationFailed(f"{where}: cannot reach the S3 endpoint",
                              hint="check AWS_ENDPOINT_URL (or the store's endpoint_url) and the network") from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code == "NoSuchBucket":
            raise UsageError(f"{where}: bucket {store.location.bucket!r} does not exist",
                             hint="create the bucket, or fix --store") from None
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            raise OperationFailed(f"{where}: access refused ({code}){what}",
                                  hint="check the credentials and the bucket policy") from None
        if code in _BAD_DIGEST:
            raise VerificationError(f"{where}: the server refused the upload{what}: the bytes it received do not "
                                    f"match the SHA-256 sent with them ({code})",
                                    hint="the data changed between drtool hashing it and the server receiving it "
                                         "(memory, disk, a proxy or the network); nothing was stored under that key. "
                                         "Run the command again; if it recurs, check that host") from None
        raise OperationFailed(f"{where}: S3 error {code}{what}: {message}") from None
    except BotoCoreError as exc:
        raise OperationFailed(f"{where}{what}: {exc}") from None


def open_store(settings: ObjectStore | str, *, create: bool = False, workers: int = 8) -> BlobStore:
    """The store for a `file:///abs/path` or `s3://bucket/prefix` URL (or an object_stores entry, which S3 needs for
    its endpoint and credentials). `create` makes a missing file:// root."""
    url = settings if isinstance(settings, str) else settings.url
    if url.startswith("file:///") and not any(c in url for c in "%?#\t\r\n"):
        return FileStore(url, url[7:], create)  # the common plain form, without urllib's import (start-up time)
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise UsageError(f"{url!r}: a file store URL is file:///absolute/path")
        return FileStore(url, unquote(parsed.path), create)
    if parsed.scheme == "s3":
        if isinstance(settings, str):
            from drtool.config import ObjectStore

            settings = ObjectStore(url=url)
        return S3Store(url, settings, max_pool=workers + 2)
    raise UsageError(f"{url!r} is not a store URL", hint="use file:///absolute/path or s3://bucket/prefix")
