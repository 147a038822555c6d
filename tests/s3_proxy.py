"""An HTTP/1.1 forwarder in front of the test S3 server: logs each request (method, path, User-Agent, status) as the
server answered it, and can change request bodies on the way, to show what a real server does with them.

Each client connection gets its own upstream connection, so keep-alive behaves as it does without the proxy. Bytes
are forwarded as they are (the Host header and signature included: the server checks the signature over what the
client signed). Request bodies are framed by Content-Length (what botocore and s3blobs send); response bodies by
Content-Length or chunked encoding.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from urllib.parse import urlsplit


class S3Proxy:
    def __init__(self, upstream: str, mutate: Callable[[bytes], bytes] | None = None):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.mutate = mutate
        self.log: list[dict] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def requests(self) -> list[dict]:
        with self._lock:
            return list(self.log)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        cin, uin = client.makefile("rb"), upstream.makefile("rb")
        try:
            while True:
                head = _read_head(cin)
                if head is None:
                    return
                method, path, headers = _parse_request(head)
                upstream.sendall(head)
                reply = None
                if headers.get("expect", "").lower() == "100-continue":  # botocore's PutObject: wait for the server
                    reply = _read_head(uin)
                    if reply is None:
                        return
                    if _status(reply) == 100:
                        client.sendall(reply)
                        reply = None
                if reply is None:  # the body goes (unless the server answered before it)
                    body = cin.read(int(headers.get("content-length", "0")))
                    if self.mutate is not None and body:
                        body = self.mutate(body)
                    upstream.sendall(body)
                    reply = _read_head(uin)
                while reply is not None and 100 <= _status(reply) < 200:  # interim answers, passed on
                    client.sendall(reply)
                    reply = _read_head(uin)
                if reply is None:
                    return
                status = _status(reply)
                client.sendall(reply)
                _relay_body(uin, client, _parse_headers(reply), method, status)
                with self._lock:
                    self.log.append({"method": method, "path": path, "agent": headers.get("user-agent", ""),
                                     "status": status})
        except OSError:
            return
        finally:
            for s in (client, upstream):
                with contextlib.suppress(OSError):
                    s.close()


def _read_head(f) -> bytes | None:
    lines = []
    while True:
        line = f.readline()
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def _parse_headers(head: bytes) -> dict[str, str]:
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def _parse_request(head: bytes) -> tuple[str, str, dict[str, str]]:
    method, path, _ = head.decode("latin-1").split("\r\n", 1)[0].split(" ", 2)
    return method, path, _parse_headers(head)


def _relay_body(src, dst: socket.socket, headers: dict[str, str], method: str, status: int) -> None:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = src.readline()
            dst.sendall(size_line)
            size = int(size_line.split(b";")[0], 16)
            dst.sendall(src.read(size + 2))  # the chunk and its CRLF (the last: just the CRLF after trailers)
            if size == 0:
                return
    left = int(headers.get("content-length", "0"))
    while left:
        chunk = src.read(min(left, 1 << 20))
        if not chunk:
            return
        dst.sendall(chunk)
        left -= len(chunk)
