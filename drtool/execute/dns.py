"""DNS records through RFC 2136 dynamic updates signed with TSIG (BIND, PowerDNS, Knot)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from drtool.config import DnsTarget
from drtool.errors import OperationFailed, UsageError

_KEY_RE = re.compile(
    r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{[^}]*?algorithm\s+(?P<alg>[\w-]+)\s*;[^}]*?secret\s+"(?P<secret>[^"]+)"\s*;',
    re.S,
)


def load_tsig_key(path: str | Path) -> dns.tsig.Key:
    """Read a key file as `tsig-keygen` writes it. The secret never leaves this object."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read TSIG key file {path}: {exc.strerror}",
                         hint="check dns.tsig_key_file in the configuration") from None
    m = _KEY_RE.search(text)
    if not m:
        raise UsageError(f"TSIG key file {path} is not in tsig-keygen format",
                         hint='expected: key "NAME" { algorithm hmac-sha256; secret "BASE64"; };')
    return dns.tsig.Key(m["name"], m["secret"], m["alg"])


@dataclass
class ARecord:
    name: str
    addresses: list[str]
    ttl: int | None


class Rfc2136Dns:
    def __init__(self, target: DnsTarget, timeout: float = 5.0):
        if not (target.server and target.zone and target.tsig_key_file):
            raise UsageError(f"DNS target for {target.record} needs server, zone and tsig_key_file")
        self.target = target
        self.timeout = timeout
        self.zone = dns.name.from_text(target.zone)
        self.fqdn = dns.name.from_text(target.record)
        if not self.fqdn.is_subdomain(self.zone):
            raise UsageError(f"record {target.record} is not inside zone {target.zone}")

    def _where(self) -> str:
        return f"{self.target.server}:{self.target.port}"

    def read_a(self, record: str | None = None) -> ARecord:
        """Ask the authoritative server directly (no resolver cache in between)."""
        name = dns.name.from_text(record) if record else self.fqdn
        query = dns.message.make_query(name, dns.rdatatype.A)
        try:
            resp = dns.query.udp(query, self.target.server, port=self.target.port, timeout=self.timeout)
        except (dns.exception.Timeout, OSError) as exc:
            raise OperationFailed(f"DNS server {self._where()} did not answer for {name}: {exc or 'timeout'}",
                                  hint="check that the authoritative server is up and reachable") from None
        if resp.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise OperationFailed(f"DNS server {self._where()} answered {dns.rcode.to_text(resp.rcode())} for {name}")
        addrs, ttl = [], None
        for rrset in resp.answer:
            if rrset.rdtype == dns.rdatatype.A:
                addrs += [r.address for r in rrset]
                ttl = rrset.ttl
        return ARecord(name.to_text(omit_final_dot=True), sorted(addrs), ttl)

    def replace_a(self, addresses: list[str], ttl: int | None = None, record: str | None = None) -> None:
        """Replace the record's A set in one signed update (atomic on the server)."""
        name = dns.name.from_text(record) if record else self.fqdn
        key = load_tsig_key(self.target.tsig_key_file)
        update = dns.update.UpdateMessage(self.zone, keyring=key)
        rel = name.relativize(self.zone)
        update.delete(rel, "A")
        for addr in addresses:
            update.add(rel, ttl or self.target.ttl, "A", addr)
        try:
            resp = dns.query.tcp(update, self.target.server, port=self.target.port, timeout=self.timeout)
        except dns.tsig.PeerError as exc:
            raise OperationFailed(
                f"DNS server {self._where()} refused the TSIG signature of key {key.name} ({type(exc).__name__})",
                hint=f"the key in {self.target.tsig_key_file} does not match the server's; nothing was changed",
            ) from None
        except (dns.exception.Timeout, OSError) as exc:
            raise OperationFailed(f"DNS update to {self._where()} failed: {exc or 'timeout'}",
                                  hint="check that the authoritative server is up and reachable") from None
        if resp.rcode() != dns.rcode.NOERROR:
            raise OperationFailed(
                f"DNS server {self._where()} refused the update of {name}: {dns.rcode.to_text(resp.rcode())}",
                hint="check the server's update-policy for this key and record",
            )
