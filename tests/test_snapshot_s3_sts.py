"""The lean S3 blob path (s3blobs.py) signing with temporary credentials (an assumed role's session token), against
moto's IAM mode: the one server here that issues them (SeaweedFS, which the other signing tests use, needs a role
configuration for its STS; see tests/test_snapshot_s3_auth.py).

moto does not check signatures by default, and s3blobs falls back to botocore on any refusal, so a wrong signature
would only make snapshots slower, never fail a test. Here moto runs in its IAM mode (the count of unauthenticated
actions, set through /moto-api/reset-auth once the IAM user and the bucket exist): every S3 request is then signed
again with the IAM user's secret (botocore's S3SigV4Auth over the received method, raw path, signed headers and the
declared x-amz-content-sha256) and refused with 403 SignatureDoesNotMatch when it differs. A thin WSGI wrapper logs
each request's method, path, User-Agent and status, so the tests see from the server's side which requests s3blobs
made (User-Agent "drtool"; botocore's is "drtool/<version> botocore/<version>") and that none was refused.

What moto's IAM mode does not check (so neither do these tests): that the body matches x-amz-content-sha256 or
x-amz-checksum-sha256, the request's age, and the signing region (it signs again with the region the request names).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests
from botocore.credentials import Credentials

from drtool.snapshot import s3blobs

from .snapshot_helpers import MiB, lean_path

REGION = "us-east-1"
BUCKET = "drtool-auth"

# moto's own WSGI app, served like `moto_server` does, with one JSON line per request written when its status is set.
SERVER = r"""
import json, sys, threading
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

port, log_path = int(sys.argv[1]), sys.argv[2]
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
log = open(log_path, "a", buffering=1)

def logged(environ, start_response):
    def start(status, headers, exc_info=None):
        line = json.dumps({"method": environ["REQUEST_METHOD"], "path": environ.get("RAW_URI", environ["PATH_INFO"]),
                           "agent": environ.get("HTTP_USER_AGENT", ""), "status": int(status.split()[0])})
        with lock:
            log.write(line + "\n")
        return start_response(status, headers, exc_info)
    return app(environ, start)

make_server("127.0.0.1", port, logged, threaded=True, request_handler=MotoRequestHandler).serve_forever()
"""


class AuthS3:
    def __init__(self, endpoint: str, log: Path, key_id: str, secret: str, role_arn: str):
        self.endpoint = endpoint
        self.log = log
        self.key_id = key_id
        self.secret = secret
        self.role_arn = role_arn

    def client(self, service: str = "s3", secret: str | None = None, key_id: str | None = None):
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key_id or self.key_id, aws_secret_access_key=secret or self.secret)

    def credentials(self) -> Credentials:
        """What client() signs with (given to s3blobs as drtool gives it its session's)."""
        return Credentials(self.key_id, self.secret)

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env() -> dict:
    """This process's environment without AWS, drtool or proxy settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "DRTOOL_", "MOTO_")) and k.lower() not in
            ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "initial_no_auth_action_count")}


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory) -> AuthS3:
    tmp = tmp_path_factory.mktemp("moto-auth")
    port, log = _free_port(), tmp / "requests.jsonl"
    endpoint = f"http://127.0.0.1:{port}"
    with open(tmp / "server.stderr", "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(log)], stdout=subprocess.DEVNULL,
                                stderr=stderr, env=_clean_env())
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"moto exited {proc.returncode}: {(tmp / 'server.stderr').read_text()}"
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "moto did not start in 30 s"
                time.sleep(0.05)
        # Setup while nothing is authenticated yet: a user allowed s3:* (and to assume the role), its key, a role
        # allowed s3:*, the bucket.
        anon = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
                    aws_secret_access_key="testing")
        iam = boto3.client("iam", **anon)
        allow = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:*", "sts:AssumeRole"], "Resource": "*"}]})
        iam.create_user(UserName="drtool-backup")
        iam.put_user_policy(UserName="drtool-backup", PolicyName="s3", PolicyDocument=allow)
        key = iam.create_access_key(UserName="drtool-backup")["AccessKey"]
        role = iam.create_role(RoleName="drtool-restore", AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}))["Role"]
        iam.put_role_policy(RoleName="drtool-restore", PolicyName="s3", PolicyDocument=allow)
        boto3.client("s3", **anon).create_bucket(Bucket=BUCKET)
        # From now on every action is authenticated (moto's server-mode switch for INITIAL_NO_AUTH_ACTION_COUNT).
        reply = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
        assert reply.status_code == 200, reply.text
        yield AuthS3(endpoint, log, key["AccessKeyId"], key["SecretAccessKey"], role["Arn"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lean(auth_s3, prefix: str, credentials: Credentials | None = None) -> s3blobs.BlobRequests:
    return lean_path(auth_s3, BUCKET, prefix, credentials)


@pytest.mark.parametrize("principal", ["user", "assumed-role"])
def test_lean_path_signs_for_moto_iam(auth_s3, principal):
    """Conditional and plain PUTs and GETs all accepted, with an IAM user's key and with temporary credentials
    (the session token is signed too)."""
    credentials = None
    if principal == "assumed-role":
        c = auth_s3.client("sts").assume_role(RoleArn=auth_s3.role_arn, RoleSessionName="drtool-test")["Credentials"]
        assert c["AccessKeyId"].startswith("ASIA")
        credentials = Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
    prefix = f"lean-{principal} with space+plus~"
    fast = _lean(auth_s3, prefix, credentials)
    small, big = os.urandom(1000), os.urandom(MiB + 7)
    try:
        for data in (small, big):
            digest = hashlib.sha256(data).hexdigest()
            key = f"{prefix}/blobs/sha256/{digest[:2]}/{digest}"
            assert fast.size(key) is False  # absent
            assert fast.put(key, memoryview(data), digest, if_none_match=True) == "created"
            assert fast.size(key) == len(data)
            assert fast.put(key, memoryview(data), digest, if_none_match=True) == "exists"
            assert fast.put(key, memoryview(data), digest, if_none_match=False) == "created"
            assert bytes(fast.get(key)) == data
    finally:
        fast.close()
