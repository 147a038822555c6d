"""Real, bounded checks that a lab part answers: SSH banner, Docker API, registry /v2/, S3, DNS SOA."""

import http.client
import json
import socket
import ssl
from pathlib import Path


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def docker_request(socket_path: Path | str, method: str, path: str, timeout: float = 5) -> tuple[int, bytes]:
    """One Docker Engine API call over its unix socket; returns (status, body)."""
    conn = _UnixHTTPConnection(str(socket_path), timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def docker_ping(socket_path: Path | str, timeout: float = 2) -> bool:
    try:
        status, body = docker_request(socket_path, "GET", "/_ping", timeout)
    except OSError:
        return False
    return status == 200 and body.strip() == b"OK"


def docker_containers(socket_path: Path | str, timeout: float = 5) -> list[dict]:
    status, body = docker_request(socket_path, "GET", "/containers/json?all=1", timeout)
    if status != 200:
        raise OSError(f"listing containers answered HTTP {status}")
    return json.loads(body)


def ssh_banner(address: str, port: int = 22, timeout: float = 2) -> str | None:
    """The server's SSH identification line (e.g. 'SSH-2.0-OpenSSH_9.2p1 ...'), None if none came."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 512:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    line = data.split(b"\n", 1)[0].strip().decode(errors="replace")
    return line if line.startswith("SSH-") else None


def registry_v2(url: str, ca_file: Path | str, timeout: float = 3) -> tuple[bool, str]:
    """GET <url>/v2/ verifying TLS against the lab CA: a Distribution registry answers 200 (or 401)."""
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=timeout, context=ctx) as resp:  # noqa: S310
            api = resp.headers.get("Docker-Distribution-Api-Version", "")
            return resp.status == 200, f"GET /v2/ {resp.status} {api}".strip()
    except urllib.error.HTTPError as e:
        return e.code == 401, f"GET /v2/ {e.code}"
    except (OSError, ssl.SSLError) as e:
        return False, _short(e)


def s3_client(endpoint: str, key_id: str, secret: str, region: str, timeout: float = 3):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=key_id,
                        aws_secret_access_key=secret,
                        config=Config(connect_timeout=timeout, read_timeout=timeout,
                                      retries={"max_attempts": 1, "mode": "standard"}))


def s3_bucket(endpoint: str, bucket: str, key_id: str, secret: str, region: str,
              timeout: float = 3) -> tuple[bool, str]:
    """list_buckets on the store; up when it answers and holds the site's bucket."""
    try:
        names = [b["Name"] for b in s3_client(endpoint, key_id, secret, region, timeout)
                 .list_buckets().get("Buckets", [])]
    except Exception as e:  # noqa: BLE001 - botocore raises many kinds; all mean "not answering"
        return False, _short(e)
    if bucket in names:
        return True, f"bucket {bucket}"
    return False, f"answers, but bucket {bucket} is missing"


def dns_soa(server: str, zone: str, record: str, port: int = 53, timeout: float = 2) -> tuple[bool, str]:
    """SOA query for the zone (authoritative answer), plus the A record clients resolve, for the detail."""
    import dns.flags
    import dns.message
    import dns.query
    import dns.rdatatype

    try:
        q = dns.message.make_query(zone, dns.rdatatype.SOA)
        r = dns.query.udp(q, server, port=port, timeout=timeout)
        soa = [rr for rrset in r.answer for rr in rrset if rrset.rdtype == dns.rdatatype.SOA]
        if not soa or not r.flags & dns.flags.AA:
            return False, f"no authoritative SOA for {zone}"
        q = dns.message.make_query(record, dns.rdatatype.A)
        r = dns.query.udp(q, server, port=port, timeout=timeout)
        addrs = sorted(rr.address for rrset in r.answer for rr in rrset if rrset.rdtype == dns.rdatatype.A)
    except Exception as e:  # noqa: BLE001 - timeouts, refusals, bad replies: all "down"
        return False, _short(e)
    return True, f"SOA serial {soa[0].serial}; {record} A {','.join(addrs) or '(none)'}"


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    if isinstance(e, TimeoutError | socket.timeout) or "timed out" in text:
        return "timed out"
    return text if len(text) <= 120 else text[:117] + "..."
