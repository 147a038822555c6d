"""The lean S3 blob path signs exactly as botocore does, and is really used against S3 (SeaweedFS over HTTP)."""

from __future__ import annotations

import hashlib
import time

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from drtool.config import ObjectStore
from drtool.snapshot import s3blobs
from drtool.snapshot.s3blobs import BlobRequests
from drtool.snapshot.stores import MissingBlob, open_store

pytest_plugins = ["tests.snapshot_fixtures"]  # the snap_env fixture (seaweed_s3 is in conftest)


@pytest.mark.parametrize("token", [None, "session-token"])
@pytest.mark.parametrize("method, extra", [("PUT", {"x-amz-checksum-sha256": "q80=", "if-none-match": "*"}),
                                           ("GET", {})])
def test_signature_matches_botocores(monkeypatch, method, extra, token):
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    fixed = time.struct_time((2026, 11, 22, 3, 4, 5, 6, 326, 0))
    monkeypatch.setattr(s3blobs.time, "gmtime", lambda: fixed)
    fast = BlobRequests("https://bucket.s3.eu-west-1.amazonaws.com/", "eu-west-1", creds, True)
    path = "/w/blobs/sha256/ab/ab%20cd~x"
    headers = fast._sign(method, path, dict(extra))

    request = AWSRequest(method=method, url=f"https://bucket.s3.eu-west-1.amazonaws.com{path}",
                         headers={k: v for k, v in headers.items() if k not in ("Authorization", "User-Agent")})
    request.context["timestamp"] = "20261122T030405Z"
    signer = S3SigV4Auth(creds, "s3", "eu-west-1")
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    assert headers["Authorization"].endswith(f"Signature={expected}")
    assert f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}," in headers["Authorization"]


def test_blob_path_is_used_and_round_trips(snap_env, monkeypatch):
    for k, v in snap_env.vars.items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    store = open_store(ObjectStore(url=f"s3://{snap_env.bucket()}/w", endpoint_url=snap_env.endpoint))
    try:
        assert store._blob_requests() is not None, "the lean path should apply to a plain HTTP endpoint"
        small, big = b"x" * 1000, bytearray(b"y" * (3 << 20))
        ds, db = hashlib.sha256(small).hexdigest(), hashlib.sha256(big[: 2 << 20]).hexdigest()
        assert store.store_blob(ds, memoryview(small)) == "uploaded"
        assert store.store_blob(ds, memoryview(small)) == "present"
        store.put_blob(db, memoryview(big)[: 2 << 20])
        assert bytes(store.read_blob(ds)) == small
        assert bytes(store.read_blob(db)) == bytes(big[: 2 << 20])
        with pytest.raises(MissingBlob):
            store.read_blob("0" * 64)
    finally:
        store.close()


@pytest.mark.parametrize("env, expected", [
    ({"AWS_CA_BUNDLE": "/aws/ca.pem", "REQUESTS_CA_BUNDLE": "/requests/ca.pem"}, "/aws/ca.pem"),
    ({"REQUESTS_CA_BUNDLE": "/requests/ca.pem"}, "/requests/ca.pem"),
    ({}, True),
])
def test_session_credentials_and_tls_verify_are_the_clients(monkeypatch, env, expected):
    """s3blobs takes the credentials and TLS trust of the transfer client from its session, through public calls
    (botocore has none to read them back from a client). Checked here against the client's own (private) state, so
    that a botocore that changes how a client gets them fails this test instead of silently diverging."""
    from drtool.execute.s3 import transfer_client, transfer_credentials, transfer_session, transfer_tls_verify

    for k in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = ObjectStore(url="s3://b/p", endpoint_url="https://s3.example.test", region="eu-west-1")
    session = transfer_session(settings)
    client = transfer_client(settings, 4, session)
    assert transfer_tls_verify(session) == expected
    assert transfer_credentials(session).get_frozen_credentials().access_key == "AKIDEXAMPLE"
    signer, endpoint = getattr(client, "_request_signer", None), getattr(client, "_endpoint", None)
    if signer is None or endpoint is None:
        pytest.fail("botocore's client internals changed: check transfer_credentials and transfer_tls_verify anew")
    assert getattr(signer, "_credentials", None) is transfer_credentials(session)
    assert getattr(endpoint.http_session, "_verify", None) == expected
