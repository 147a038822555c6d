"""DNS records through RFC 2136 dynamic updates signed with TSIG (BIND, PowerDNS, Knot)."""

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

    def check_credentials(self) -> None:
        """Send a signed update that changes nothing (its only prerequisite is that the zone's SOA exists):
        the server checks the TSIG signature and the update policy, so a wrong key is found before a flip."""
        update = dns.update.UpdateMessage(self.zone, keyring=load_tsig_key(self.target.tsig_key_file))
        update.present(self.zone, "SOA")
        self._send(update, self.zone)

    def replace_a(self, addresses: list[str], ttl: int | None = None, record: str | None = None) -> None:
        """Replace the record's A set in one signed update (atomic on the server)."""
        name = dns.name.from_text(record) if record else self.fqdn
        update = dns.update.UpdateMessage(self.zone, keyring=load_tsig_key(self.target.tsig_key_file))
        rel = name.relativize(self.zone)
        update.delete(rel, "A")
        for addr in addresses:
            update.add(rel, ttl or self.target.ttl, "A", addr)
        self._send(update, name)

    def delete_a(self, record: str) -> None:
        """Remove the record's A set (drill records; never the production record)."""
        name = dns.name.from_text(record)
        update = dns.update.UpdateMessage(self.zone, keyring=load_tsig_key(self.target.tsig_key_file))
        update.delete(name.relativize(self.zone), "A")
        self._send(update, name)

    def _send(self, update: dns.update.UpdateMessage, name: dns.name.Name) -> None:
        key = update.keyring
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


class Route53Dns:
    """The same record operations against Route 53: UPSERT, then follow the change until INSYNC."""

    def __init__(self, target: DnsTarget, poll_s: float = 2.0, timeout: float = 300.0):
        if not target.zone_id:
            raise UsageError(f"Route 53 target for {target.record} needs zone_id")
        import boto3

        self.target = target
        self.poll_s = poll_s
        self.timeout = timeout
        # Endpoint and credentials the standard AWS ways (AWS_ENDPOINT_URL, profiles, instance roles).
        self.client = boto3.client("route53")
        self.fqdn = target.record.rstrip(".") + "."

    def check_credentials(self) -> None:
        """The zone can be read with these credentials (before anything changes)."""
        self._call("get_hosted_zone", Id=self.target.zone_id)

    def read_a(self, record: str | None = None) -> ARecord:
        name = (record.rstrip(".") + ".") if record else self.fqdn
        resp = self._call("list_resource_record_sets", HostedZoneId=self.target.zone_id, StartRecordName=name,
                          StartRecordType="A", MaxItems="1")
        for rrset in resp.get("ResourceRecordSets", []):
            if rrset["Name"] == name and rrset["Type"] == "A":
                addrs = sorted(r["Value"] for r in rrset.get("ResourceRecords", []))
                return ARecord(name.rstrip("."), addrs, rrset.get("TTL"))
        return ARecord(name.rstrip("."), [], None)

    def replace_a(self, addresses: list[str], ttl: int | None = None, record: str | None = None) -> str:
        """UPSERT the A set and wait until Route 53 reports the change INSYNC; returns the change id."""
        import time

        name = (record.rstrip(".") + ".") if record else self.fqdn
        batch = {"Comment": "drtool", "Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
            "Name": name, "Type": "A", "TTL": ttl or self.target.ttl,
            "ResourceRecords": [{"Value": a} for a in addresses]}}]}
        change = self._call("change_resource_record_sets", HostedZoneId=self.target.zone_id, ChangeBatch=batch)
        change_id = change["ChangeInfo"]["Id"]
        deadline = time.monotonic() + self.timeout
        while change["ChangeInfo"]["Status"] != "INSYNC":
            if time.monotonic() > deadline:
                raise OperationFailed(f"Route 53 change {change_id} for {name} not INSYNC after {self.timeout:.0f}s",
                                      hint="the change was accepted; check it in Route 53 before retrying")
            time.sleep(self.poll_s)
            change = self._call("get_change", Id=change_id)
        return change_id

    def delete_a(self, record: str) -> None:
        """Route 53 deletes only the exact current set: read it, then DELETE it (nothing to do when absent)."""
        current = self.read_a(record)
        if not current.addresses:
            return
        name = record.rstrip(".") + "."
        self._call("change_resource_record_sets", HostedZoneId=self.target.zone_id, ChangeBatch={
            "Comment": "drtool", "Changes": [{"Action": "DELETE", "ResourceRecordSet": {
                "Name": name, "Type": "A", "TTL": current.ttl,
                "ResourceRecords": [{"Value": a} for a in current.addresses]}}]})

    def _call(self, op: str, **kwargs):
        import botocore.exceptions

        try:
            return getattr(self.client, op)(**kwargs)
        except botocore.exceptions.ClientError as exc:
            err = exc.response.get("Error", {})
            raise OperationFailed(f"Route 53 {op} on zone {self.target.zone_id} failed: "
                                  f"{err.get('Code')}: {err.get('Message')}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise OperationFailed(f"Route 53 {op} failed: {exc}", hint="check AWS credentials and endpoint") from None


def dns_for(target: DnsTarget) -> Rfc2136Dns | Route53Dns:
    """The DNS provider client a site's configuration names."""
    if target.provider == "rfc2136":
        return Rfc2136Dns(target)
    if target.provider == "route53":
        return Route53Dns(target)
    raise UsageError(f"unknown DNS provider {target.provider!r}", hint="providers: rfc2136, route53")
