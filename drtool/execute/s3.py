"""S3 clients for object stores: only standard S3 calls, so AWS S3, MinIO, Ceph RGW and R2 all work."""

import os
from dataclasses import dataclass
from urllib.parse import urlparse

import botocore.session
from botocore.config import Config as BotoConfig

from drtool.config import ObjectStore
from drtool.errors import UsageError


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing '/'

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)


def parse_s3_url(url: str) -> S3Location:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UsageError(f"{url!r} is not an s3://bucket/prefix URL")
    return S3Location(parsed.netloc, parsed.path.strip("/"))


def client(store: ObjectStore, max_pool: int = 16):
    """A boto3 S3 client for the store. Credentials come the standard AWS ways, or from the store's
    credentials_file (AWS shared-credentials format); they are never passed on a command line."""
    import boto3

    session = boto3.Session(botocore_session=transfer_session(store), region_name=store.region)
    cfg = BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=max_pool,
                     connect_timeout=5, read_timeout=60)
    return session.client("s3", endpoint_url=store.endpoint_url, config=cfg)


def transfer_session(store: ObjectStore) -> botocore.session.Session:
    """The session every client of this store is made from: also what the lean blob path (s3blobs.py) takes the
    client's credentials and TLS settings from, through public calls (transfer_credentials, transfer_tls_verify)."""
    bsession = botocore.session.Session(profile=store.profile)
    if store.credentials_file:
        bsession.set_config_variable("credentials_file", store.credentials_file)
    return bsession


def transfer_client(store: ObjectStore, max_pool: int, session: botocore.session.Session | None = None):
    """A client for bulk blob transfer, its connection pool sized to the transfer threads.

    The caller hashes every byte itself (SHA-256, the blob's name) and sends that digest as x-amz-checksum-sha256,
    which the server checks and the signature covers; so botocore's own extra passes over the data are turned off:
    the default CRC32 request checksum, response checksum validation, and payload hashing on plain-HTTP endpoints.
    A fixed User-Agent also skips botocore's per-request user-agent assembly (~0.4 ms of CPU per request, measured).
    A plain botocore client: the blob calls need none of boto3's additions, and not importing boto3 (and the
    s3transfer it loads) saves ~0.1 s of CPU per run.
    """
    import drtool

    cfg = BotoConfig(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=max_pool,
                     connect_timeout=5, read_timeout=60, tcp_keepalive=True,
                     request_checksum_calculation="when_required", response_checksum_validation="when_required",
                     s3={"payload_signing_enabled": False},
                     user_agent=f"drtool/{drtool.__version__} botocore/{botocore.__version__}")
    return (session or transfer_session(store)).create_client("s3", region_name=store.region,
                                                               endpoint_url=store.endpoint_url, config=cfg)


def transfer_credentials(session: botocore.session.Session):
    """The credentials object a client made by transfer_client(store, ..., session) signs with: botocore's
    create_client gives a client without explicit keys the session's own, get_credentials() (refreshable: botocore
    refreshes temporary credentials when get_frozen_credentials() is called). None when there are none."""
    return session.get_credentials()


def transfer_tls_verify(session: botocore.session.Session) -> str | bool:
    """What such a client verifies TLS with, in botocore's order for a client made without `verify` (drtool passes
    none): the session's ca_bundle (AWS_CA_BUNDLE or the profile's ca_bundle), else $REQUESTS_CA_BUNDLE, else True
    (verify against a default CA bundle: botocore's, or for s3blobs the system's)."""
    return session.get_config_variable("ca_bundle") or os.environ.get("REQUESTS_CA_BUNDLE") or True


def check_credentials(store: ObjectStore) -> str:
    """One read-only signed request with the credentials a failover restores with (the store's credentials_file or
    profile, else the standard AWS chain, as the transfer client takes them): ListObjectsV2 of at most one key under
    the store's prefix. Returns what was asked; raises UsageError (no usable credentials) or OperationFailed
    (refused, unreachable) naming the store. It reads one listing page and changes nothing."""
    import botocore.exceptions

    from drtool.errors import OperationFailed

    loc = parse_s3_url(store.url)
    where = f"store {store.url}"
    try:
        cli = transfer_client(store, max_pool=1)
        try:
            cli.list_objects_v2(Bucket=loc.bucket, Prefix=(loc.prefix + "/") if loc.prefix else "", MaxKeys=1)
        finally:
            cli.close()
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError,
            botocore.exceptions.ProfileNotFound) as exc:
        raise UsageError(f"{where}: no usable S3 credentials ({exc})",
                         hint="check the store's credentials_file and profile in drtool.yaml") from None
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        raise OperationFailed(f"{where}: {err.get('Code')}: {err.get('Message')}",
                              hint="check the credentials and the bucket policy") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise OperationFailed(f"{where}: {exc}", hint="check the endpoint and the network") from None
    return f"ListObjectsV2 s3://{loc.bucket}/{loc.prefix} (1 key)"
