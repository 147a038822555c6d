"""The S3 blob hot path: PutObject and GetObject of blobs as plain SigV4-signed HTTP requests, learnt from botocore.

Why: botocore spends ~3 ms of CPU on every request (events, endpoint rules, parameter validation, its request and
response models; measured in docs/benchmarks.md), which for a model's ~1,000 small files costs as much CPU as hashing
every byte. These two calls are always the same shape, so after botocore has made one of them (a HEAD of a blob
key, watched through its public `before-send` event), this module repeats that shape itself: the same URL prefix (so
the endpoint, addressing style and bucket are botocore's), the same signing region, and the credentials object the
client was made with (the botocore session's, refreshed by botocore as usual; the caller passes it, and the access
key botocore signed the HEAD with must be its). About 0.5 ms per request. Only public botocore interfaces are used:
the client's events and `meta.config`, the session's credentials and configuration (drtool/execute/s3.py).

It only ever does the simple thing. Anything else -- a status other than 200, 404 or a conditional refusal, a
network error, a proxy, an unsigned or SigV4a client -- returns None and the caller makes the same call through
botocore, which retries, follows redirects and maps errors as everywhere else. Every byte is still checked by
drtool's own SHA-256 (the blob's name), and uploads carry x-amz-checksum-sha256 for the server to check.
"""

from __future__ import annotations  # PEP 563 (public), for BlobRequests in its own class

import base64
import hashlib
import hmac
import http.client
import re
import socket
import ssl
import threading
import time
import urllib.request
from urllib.parse import quote, urlsplit

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"  # as botocore sends with payload_signing_enabled=False
_CREDENTIAL_SCOPE = re.compile(r"Credential=([^/]+)/\d{8}/([^/]+)/s3/aws4_request")


class _Connection(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers then body: no Nagle stall


class _TLSConnection(http.client.HTTPSConnection):
    def connect(self):
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BlobRequests:
    """Signed blob PUT/GET on per-thread keep-alive connections. Build with `learn`, which returns None when the
    client's setup is not the plain one this covers."""

    def __init__(self, base_url: str, region: str, credentials, ca_bundle: str | bool):
        parts = urlsplit(base_url)
        self.scheme = parts.scheme
        default_port = {"http": 80, "https": 443}[parts.scheme]
        # The Host header botocore signs leaves out a default port; so must ours.
        self.host = parts.hostname if parts.port == default_port else parts.netloc
        if ":" in (self.host or "") and parts.port == default_port:
            self.host = f"[{self.host}]"  # an IPv6 literal
        self.base_path = parts.path  # percent-encoded, ends with "/"
        self.region = region
        self.credentials = credentials
        self.ssl_context = None
        if self.scheme == "https":
            self.ssl_context = ssl.create_default_context(cafile=ca_bundle if isinstance(ca_bundle, str) else None)
            if ca_bundle is False:
                self.ssl_context.check_hostname = False
                self.ssl_context.verify_mode = ssl.CERT_NONE
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._connections_lock = threading.Lock()
        self._signing_keys: dict[tuple[str, str], bytes] = {}

    @classmethod
    def learn(cls, client, bucket: str, probe_key: str, *, credentials, ca_bundle: str | bool) -> BlobRequests | None:
        """Watch botocore send one HEAD of `probe_key` and take its URL prefix and signing region. Only this thread's
        request counts: the client is shared, and upload threads send HEADs of their own parts meanwhile.
        `credentials` and `ca_bundle` are what the client was made with (execute/s3.py: transfer_credentials and
        transfer_tls_verify of its session); botocore offers no public way to read them back from a client."""
        seen = {}
        me = threading.get_ident()

        def watch(request, **_):
            if threading.get_ident() != me:
                return
            seen["url"] = request.url
            seen["auth"] = request.headers.get("Authorization", b"")

        client.meta.events.register("before-send.s3.HeadObject", watch)
        try:
            try:
                client.head_object(Bucket=bucket, Key=probe_key)
            except Exception:  # noqa: S110 - a 404 is the expected answer; any other failure shows up later
                pass
        finally:
            client.meta.events.unregister("before-send.s3.HeadObject", watch)
        auth = seen.get("auth", b"")
        auth = auth.decode() if isinstance(auth, bytes) else auth
        url = seen.get("url", "")
        encoded_key = quote(probe_key, safe="/~")
        match = _CREDENTIAL_SCOPE.search(auth)
        if (not auth.startswith("AWS4-HMAC-SHA256 ") or not match or credentials is None
                or client.meta.config.proxies or "?" in url or not url.endswith("/" + encoded_key)):
            return None
        try:
            access_key = credentials.get_frozen_credentials().access_key
        except Exception:  # credentials that cannot be had now: botocore reports it on its own call
            return None
        if access_key != match.group(1):  # not what botocore signs with: leave every call to botocore
            return None
        base = url[: -len(encoded_key)]
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or _proxied(parts.scheme, parts.hostname or ""):
            return None
        return cls(base, match.group(2), credentials, ca_bundle)

    # -- requests -----------------------------------------------------------------------------------------------
    def put(self, key: str, body, digest: str, if_none_match: bool) -> str | None:
        """'created', 'exists' (a conditional PUT refused), or None: make the call through botocore instead."""
        headers = {"x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(digest)).decode()}
        if if_none_match:
            headers["if-none-match"] = "*"
        response = self._send("PUT", key, headers, body)
        if response is None:
            return None
        status, _, _ = response
        if status == 200:
            return "created"
        if if_none_match and status in (409, 412):
            return "exists"
        return None

    def get(self, key: str, into: bytearray | None = None) -> bytearray | memoryview | None:
        """The object's bytes, or None: make the call through botocore instead (a 404 too: botocore tells a missing
        key from a missing bucket). With `into`, a body that fits is read into it (a view of it is returned)."""
        response = self._send("GET", key, {}, None, into)
        if response is None:
            return None
        status, body, _ = response
        if status == 200:
            return body
        return None

    def size(self, key: str) -> int | None | bool:
        """The object's size (HEAD); False when there is none (404); None: ask botocore instead. A HEAD answers a
        missing bucket with a bare 404 as well, to botocore too: the PUT that follows is what reports it."""
        answer = self.head(key)
        return answer if answer is None or answer is False else answer[0]

    def head(self, key: str) -> tuple[int, str | None] | None | bool:
        """(size, the SHA-256 checksum the server keeps for the object, base64, or None), from one HEAD that asks for
        checksums (x-amz-checksum-mode: ENABLED); False when there is no object (404); None: ask botocore instead."""
        response = self._send("HEAD", key, {"x-amz-checksum-mode": "ENABLED"}, None)
        if response is None:
            return None
        status, _, headers = response
        if status == 404:
            return False
        length = headers.get("Content-Length") if status == 200 else None  # a HEAD's has no body
        if length is None or not length.isdigit():
            return None
        return int(length), headers.get("x-amz-checksum-sha256")

    def _send(self, method: str, key: str, extra: dict, body,
              into: bytearray | None = None) -> tuple[int, bytearray | memoryview, http.client.HTTPMessage] | None:
        """(status, body, response headers), or None when the request failed."""
        path = self.base_path + quote(key, safe="/~")
        headers = self._sign(method, path, extra)
        conn = self._connection()
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(memoryview(body) if body is not None else None)
            response = conn.getresponse()
            data = _read_body(response, into if response.status == 200 else None)
            if response.will_close:
                conn.close()
            return response.status, data, response.headers
        except (OSError, http.client.HTTPException):
            conn.close()
            return None

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.scheme == "https":
                conn = _TLSConnection(self.host, timeout=60, context=self.ssl_context)
            else:
                conn = _Connection(self.host, timeout=60)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def _sign(self, method: str, path: str, extra: dict) -> dict:
        creds = self.credentials.get_frozen_credentials()  # botocore refreshes temporary credentials here
        now = time.gmtime()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
        day = amz_date[:8]
        headers = {"host": self.host, "x-amz-content-sha256": UNSIGNED_PAYLOAD, "x-amz-date": amz_date, **extra}
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join([method, path, "", "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
                               signed, UNSIGNED_PAYLOAD])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = self._signing_keys.get((day, creds.secret_key))
        if key is None:
            key = ("AWS4" + creds.secret_key).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._signing_keys = {(day, creds.secret_key): key}
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        headers["User-Agent"] = "drtool"
        return headers


def _read_body(response: http.client.HTTPResponse, into: bytearray | None = None) -> bytearray | memoryview:
    """The whole body, read straight into one buffer when its length is known (no chunk list to join): `into` when
    the body fits in it (a view of it is returned), else a new one."""
    length = response.length
    if length is None:
        return bytearray(response.read())
    if length == 0:
        # read() even so: only that marks the response done, and a keep-alive connection takes no next request
        # until it is (http.client's ResponseNotReady). A PUT's 200 and every HEAD have no body.
        response.read()
        return bytearray()
    if into is not None and length <= len(into):
        buf, view = None, memoryview(into)[:length]
    else:
        buf = bytearray(length)
        view = memoryview(buf)
    got = 0
    while got < length:
        n = response.readinto(view[got:])
        if not n:
            raise http.client.IncompleteRead(bytes(view[:got]), length - got)
        got += n
    return view if buf is None else buf


def _proxied(scheme: str, host: str) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)
