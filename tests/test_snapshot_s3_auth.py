"""The lean S3 blob path (s3blobs.py) against a server that checks SigV4 signatures: SeaweedFS (conftest.seaweed_s3).

s3blobs falls back to botocore on any refusal, so a wrong signature would only make snapshots slower, never fail a
test. SeaweedFS checks every request's signature and refuses a wrong one with 403 SignatureDoesNotMatch (an unknown
key with InvalidAccessKeyId); it also checks x-amz-checksum-sha256 against the body (tests/test_snapshot_damage.py).
A logging forwarder in front of it (tests/s3_proxy.py: bytes passed on unchanged, one upstream connection per client
connection) records each request's method, path, User-Agent and status, so the tests see from the server's side
which requests s3blobs made (User-Agent "drtool"; botocore's is "drtool/<version> botocore/<version>") and that none
was refused. Temporary credentials (a session token) are signed against moto's IAM mode instead:
tests/test_snapshot_s3_sts.py.

What SeaweedFS does not check (so neither do these tests): that the body matches a signed x-amz-content-sha256
(../shared/LAB-NOTES.md; drtool signs UNSIGNED-PAYLOAD and sends x-amz-checksum-sha256, which it does check).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from drtool.snapshot import s3blobs

from .s3_proxy import S3Proxy
from .snapshot_helpers import DRTOOL, MiB, lean_path, settle, write_random

BUCKET = "drtool-auth"
BLOB_PATH = "/blobs/sha256/"
LEAN_AGENT = "drtool"  # the User-Agent s3blobs sends


class AuthS3:
    def __init__(self, server, proxy: S3Proxy):
        self.server = server
        self.proxy = proxy
        self.endpoint = proxy.endpoint
        self.key_id = server.key_id
        self.secret = server.secret
        self.region = server.region

    def client(self, secret: str | None = None, key_id: str | None = None):
        """A client through the logging forwarder."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=key_id or self.key_id, aws_secret_access_key=secret or self.secret)

    def credentials(self) -> Credentials:
        """What client() signs with (given to s3blobs as drtool gives it its session's)."""
        return Credentials(self.key_id, self.secret)

    def requests(self) -> list[dict]:
        return self.proxy.requests()


def _wrong(secret: str) -> str:
    """A secret that differs from `secret` in its first character."""
    return ("y" if secret[0] == "x" else "x") + secret[1:]


def _clean_env() -> dict:
    """This process's environment without AWS, drtool or proxy settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "DRTOOL_", "MOTO_")) and k.lower() not in
            ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}


@pytest.fixture(scope="module")
def auth_s3(seaweed_s3) -> AuthS3:
    proxy = S3Proxy(seaweed_s3.endpoint)
    try:
        auth = AuthS3(seaweed_s3, proxy)
        with contextlib.suppress(ClientError):  # made by an earlier module of the session
            auth.client().create_bucket(Bucket=BUCKET)
        yield auth
    finally:
        proxy.close()


def _head_missing(client, key: str) -> None:
    with contextlib.suppress(ClientError):
        client.head_object(Bucket=BUCKET, Key=key)


def _error_code(call) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    return exc.value.response["Error"]["Code"]


def test_server_checks_signatures(auth_s3):
    assert auth_s3.client().list_objects_v2(Bucket=BUCKET)["KeyCount"] >= 0
    assert _error_code(lambda: auth_s3.client(secret=_wrong(auth_s3.secret)).put_object(
        Bucket=BUCKET, Key="k", Body=b"x")) == "SignatureDoesNotMatch"
    assert _error_code(lambda: auth_s3.client(key_id="testing", secret="testing").list_objects_v2(
        Bucket=BUCKET)) == "InvalidAccessKeyId"


def _lean(auth_s3, prefix: str, credentials: Credentials | None = None) -> s3blobs.BlobRequests:
    return lean_path(auth_s3, BUCKET, prefix, credentials)


def test_corrupted_signature_is_refused(auth_s3, monkeypatch):
    """The same request is accepted when s3blobs signs it and refused once one digit of its signature is changed,
    or when it is signed with a wrong secret."""
    fast = _lean(auth_s3, "corrupt")
    body = b"a blob" * 100
    digest = hashlib.sha256(body).hexdigest()
    extra = {"x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(digest)).decode()}
    try:
        assert fast._send("PUT", "corrupt/ok", dict(extra), body)[0] == 200
        assert bytes(fast.get("corrupt/ok")) == body

        sign = fast._sign

        def corrupted(method, path, headers):
            signed = sign(method, path, headers)
            auth = signed["Authorization"]
            signed["Authorization"] = auth[:-1] + ("0" if auth[-1] != "0" else "1")
            return signed

        monkeypatch.setattr(fast, "_sign", corrupted)
        for method, key, body_sent in (("PUT", "corrupt/refused", body), ("GET", "corrupt/ok", None)):
            status, reply, _ = fast._send(method, key, dict(extra) if body_sent else {}, body_sent)
            assert status == 403, reply
            assert b"<Code>SignatureDoesNotMatch</Code>" in reply
        assert fast.put("corrupt/refused", memoryview(body), digest, if_none_match=True) is None  # -> botocore
        assert fast.get("corrupt/ok") is None
        assert fast.size("corrupt/ok") is None  # a refused HEAD (403) is not "absent": botocore is asked
    finally:
        fast.close()
    wrong_secret = _lean(auth_s3, "corrupt", Credentials(auth_s3.key_id, _wrong(auth_s3.secret)))
    try:
        status, reply, _ = wrong_secret._send("GET", "corrupt/ok", {}, None)
        assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in reply, reply
    finally:
        wrong_secret.close()
    assert "corrupt/refused" not in [o["Key"] for o in auth_s3.client().list_objects_v2(
        Bucket=BUCKET, Prefix="corrupt/").get("Contents", [])]


def test_lean_path_signs_for_the_server(auth_s3):
    """Conditional and plain PUTs, GETs and HEADs all accepted, for keys with characters that need encoding.
    (Temporary credentials: tests/test_snapshot_s3_sts.py.)"""
    prefix = "lean-user with space+plus~"
    fast = _lean(auth_s3, prefix)
    small, big = os.urandom(1000), os.urandom(MiB + 7)
    try:
        for data in (small, big):
            digest = hashlib.sha256(data).hexdigest()
            key = f"{prefix}/blobs/sha256/{digest[:2]}/{digest}"
            assert fast.size(key) is False  # absent
            assert fast.put(key, memoryview(data), digest, if_none_match=True) == "created"
            assert fast.size(key) == len(data)
            # the server keeps the SHA-256 sent with the upload, and a HEAD asking for it gets it back
            assert fast.head(key) == (len(data), base64.b64encode(bytes.fromhex(digest)).decode())
            assert fast.put(key, memoryview(data), digest, if_none_match=True) == "exists"
            assert fast.put(key, memoryview(data), digest, if_none_match=False) == "created"
            assert bytes(fast.get(key)) == data
    finally:
        fast.close()


# -- the CLI, end to end ---------------------------------------------------------------------------------------------

def _cli_env(auth_s3, tmp_path: Path, secret: str | None = None) -> dict:
    return {**_clean_env(), "AWS_ENDPOINT_URL": auth_s3.endpoint, "AWS_ACCESS_KEY_ID": auth_s3.key_id,
            "AWS_SECRET_ACCESS_KEY": secret or auth_s3.secret, "AWS_DEFAULT_REGION": auth_s3.region,
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "DRTOOL_CACHE_DIR": str(tmp_path / "cache"), "DRTOOL_LAB_DIR": str(tmp_path / "no-lab")}


def _drtool(env: dict, cwd: Path, *args: str, code: int = 0) -> dict:
    proc = subprocess.run([DRTOOL, *args, "--json"], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    assert proc.returncode == code, f"drtool {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def _weights(root: Path) -> Path:
    """A 3 MiB file in 1 MiB parts plus a few bytes, smaller files, the same bytes twice (the second conditional PUT
    may be refused: 412), an empty file. Every part is at most the 1 MiB small-blob threshold, so each is stored with
    one conditional PUT and no HEAD first (a HEAD in flight while s3blobs learns its shape turns it off: see
    test_learn_is_not_confused_by_concurrent_heads)."""
    write_random(root / "model.bin", 3 * MiB + 123)
    write_random(root / "tokenizer" / "vocab.bin", 300_000)
    (root / "config.json").write_text('{"hidden": 64}\n')
    (root / "tokenizer" / "config-copy.json").write_text('{"hidden": 64}\n')
    (root / "EMPTY").write_bytes(b"")
    settle(root)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_blob_requests_all_signed_by_s3blobs(auth_s3, tmp_path):
    src = _weights(tmp_path / "src")
    env = _cli_env(auth_s3, tmp_path)
    store = f"s3://{BUCKET}/cli"
    first = len(auth_s3.requests())

    made = _drtool(env, tmp_path, "snapshot", "create", str(src), "--store", store, "--model", "demo",
                   "--version", "1", "--part-size", "1")
    assert (made["files"], made["bytes_total"]) == (5, 3 * MiB + 123 + 300_000 + 2 * 15)
    manifest = _drtool(env, tmp_path, "snapshot", "show", made["id"], "--store", store)["manifest"]
    digests = {p["sha256"] for f in manifest["files"] for p in f["parts"]}
    assert len(digests) == 6  # four parts of model.bin, vocab.bin, config.json (twice)
    # config.json's bytes twice: both conditional PUTs may win (a server need not serialise them): count calls.
    assert made["blobs_uploaded"] + made["blobs_present"] == 7 and made["blobs_repaired"] == 0

    restored = _drtool(env, tmp_path, "snapshot", "restore", made["id"], str(tmp_path / "dest"), "--store", store)
    assert (restored["id"], restored["files"]) == (made["id"], 5)
    assert _files(tmp_path / "dest") == _files(src)

    checked = _drtool(env, tmp_path, "snapshot", "verify", made["id"], "--store", store, "--read-data")
    assert (checked["ok"], checked["mode"], checked["blobs_checked"]) == (True, "read-data", len(digests))

    # From the server's side: every blob PUT and GET was made by s3blobs and accepted, none by botocore.
    blob_calls = [r for r in auth_s3.requests()[first:]
                  if r["method"] in ("PUT", "GET") and r["path"].startswith(f"/{BUCKET}/cli{BLOB_PATH}")]
    by_botocore = [r for r in blob_calls if r["agent"] != LEAN_AGENT]
    assert not by_botocore, f"blob requests made through botocore (the lean path failed): {by_botocore}"
    refused = [r for r in blob_calls if r["status"] not in (200, 412)]
    assert not refused, f"blob requests refused: {refused}"
    put = {r["path"].rsplit("/", 1)[1] for r in blob_calls if r["method"] == "PUT"}
    got = {r["path"].rsplit("/", 1)[1] for r in blob_calls if r["method"] == "GET"}
    assert put == got == digests
    gets = sum(r["method"] == "GET" for r in blob_calls)
    assert gets >= 2 * len(digests)  # restore, then verify --read-data


def test_wrong_secret_fails_and_writes_nothing(auth_s3, tmp_path):
    src = _weights(tmp_path / "src")
    store = f"s3://{BUCKET}/wrong-secret"
    env = _cli_env(auth_s3, tmp_path, secret=_wrong(auth_s3.secret))
    first = len(auth_s3.requests())

    err = _drtool(env, tmp_path, "snapshot", "create", str(src), "--store", store, "--model", "demo",
                  "--part-size", "1", code=1)
    assert (err["error"], err["exit_code"]) == ("OperationFailed", 1)
    assert err["message"] == (f"store {store} ({auth_s3.endpoint}): access refused (SignatureDoesNotMatch) "
                              f"on s3://{BUCKET}/wrong-secret/leases/demo.json")
    assert err["hint"] == "check the credentials and the bucket policy"
    made = auth_s3.requests()[first:]  # botocore's lease PUT is the first write, refused before any blob is sent
    assert made and all(r["status"] == 403 for r in made), f"a request signed with a wrong key passed: {made}"

    listed = _drtool(_cli_env(auth_s3, tmp_path), tmp_path, "snapshot", "list", "--store", store)
    assert (listed["snapshots"], listed["invalid"]) == ([], [])
    assert auth_s3.client().list_objects_v2(Bucket=BUCKET, Prefix="wrong-secret/")["KeyCount"] == 0


def test_learn_is_not_confused_by_concurrent_heads(auth_s3):
    """Deterministic form of the race: while the probe HEAD is being sent, another thread HEADs another key
    (as store_blob does for every part over 1 MiB, from the other upload threads)."""
    client = auth_s3.client()
    probe = f"race/blobs/sha256/00/{'0' * 64}"

    def other_thread_heads(request, **_):
        if request.url.endswith("/" + probe):
            t = threading.Thread(target=_head_missing, args=(client, "race/x"))
            t.start()
            t.join()

    client.meta.events.register_last("before-send.s3.HeadObject", other_thread_heads)
    try:
        fast = s3blobs.BlobRequests.learn(client, BUCKET, probe, credentials=auth_s3.credentials(), ca_bundle=True)
    finally:
        client.meta.events.unregister("before-send.s3.HeadObject", other_thread_heads)
    assert fast is not None
    fast.close()


def test_learn_refuses_credentials_that_are_not_the_clients(auth_s3):
    """s3blobs is handed the credentials drtool made the client with (botocore has no public way to read them back
    from a client): if the access key botocore signed the probe HEAD with is another one, every call stays with
    botocore."""
    other = Credentials("AKIDNOTTHECLIENTS", auth_s3.secret)
    probe = f"other-key/blobs/sha256/00/{'0' * 64}"
    assert s3blobs.BlobRequests.learn(auth_s3.client(), BUCKET, probe, credentials=other, ca_bundle=True) is None
    assert s3blobs.BlobRequests.learn(auth_s3.client(), BUCKET, probe, credentials=None, ca_bundle=True) is None
