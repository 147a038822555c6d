"""Creates and keeps the lab's secrets: CA and server certs, SSH keys, TSIG key, S3 credentials."""

import configparser
import datetime as dt
import io
import ipaddress
import secrets
from pathlib import Path

from drtool.errors import LabError
from drtool.fsutil import write_atomic
from drtool.lab.cmd import run
from drtool.lab.files import write_if_changed
from drtool.lab.layout import Layout
from drtool.lab.topology import HOSTS, SITES, SUBNET, TSIG_KEY_NAME

SECRET = 0o600
PUBLIC = 0o644
RENEW_BEFORE = dt.timedelta(days=30)


def ensure_all(layout: Layout) -> None:
    """Create whatever secret is missing; keep every existing one (they persist across down/up)."""
    for d in (layout.pki, layout.ssh_key.parent, layout.dns, layout.s3_secrets):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    ensure_ca(layout)
    for site in SITES.values():
        ensure_server_cert(layout, site.services.address)
        ca_copy = layout.certs_d / site.registry / "ca.crt"
        ca_copy.parent.mkdir(parents=True, exist_ok=True)
        write_if_changed(ca_copy, layout.ca_crt.read_text(), PUBLIC)
    layout.certs_d.chmod(0o755)
    layout.pki.chmod(0o755)       # engines read certs.d; the keys inside stay 0600
    ensure_ssh_keys(layout)
    ensure_tsig_key(layout)
    for site in SITES:
        ensure_s3_credentials(layout, site)


# --- TLS -------------------------------------------------------------------------------------------

def _crypto():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, NameOID, ExtendedKeyUsageOID


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key) -> bytes:
    _, _, serialization, _, _, _ = _crypto()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _fresh(cert) -> bool:
    return cert.not_valid_after_utc - _now() > RENEW_BEFORE


def ensure_ca(layout: Layout) -> None:
    x509, hashes, serialization, ec, NameOID, _ = _crypto()
    if layout.ca_crt.exists() and layout.ca_key.exists():
        try:
            if _fresh(x509.load_pem_x509_certificate(layout.ca_crt.read_bytes())):
                return
        except ValueError:
            pass        # unreadable: make a new one
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "drtool lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "drtool lab CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.NameConstraints(permitted_subtrees=[
                x509.IPAddress(ipaddress.ip_network(SUBNET))], excluded_subtrees=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_atomic(layout.ca_key, _pem_key(key), SECRET)
    write_atomic(layout.ca_crt, cert.public_bytes(serialization.Encoding.PEM), PUBLIC)


def ensure_server_cert(layout: Layout, address: str) -> None:
    """A cert for one lab address (IP SAN), issued by the lab CA; reissued if the CA changed or it expires."""
    x509, hashes, serialization, ec, NameOID, EKU = _crypto()
    crt_path, key_path = layout.server_crt(address), layout.server_key(address)
    ca_cert = x509.load_pem_x509_certificate(layout.ca_crt.read_bytes())
    if crt_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(crt_path.read_bytes())
            cert.verify_directly_issued_by(ca_cert)
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if _fresh(cert) and key.public_key() == cert.public_key():
                return
        except Exception:  # noqa: BLE001, S110 - unreadable, foreign or tampered: reissue
            pass
    ca_key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_atomic(key_path, _pem_key(key), SECRET)
    write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), PUBLIC)


# --- SSH -------------------------------------------------------------------------------------------

def _ed25519_keypair(path: Path, comment: str) -> str:
    """Create an OpenSSH ed25519 key at path (0600) and path.pub if missing; return the public line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub_path = path.with_name(path.name + ".pub")
    if path.exists():
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    else:
        key = Ed25519PrivateKey.generate()
        write_atomic(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()), SECRET)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH).decode()
    write_if_changed(pub_path, f"{pub} {comment}\n", PUBLIC)
    return pub


def ensure_ssh_keys(layout: Layout) -> None:
    """Client key, one persistent host key per serving host, authorized_keys and a pinned known_hosts."""
    client_pub = _ed25519_keypair(layout.ssh_key, "drtool-lab")
    # The client key is only honoured from inside the lab network.
    write_if_changed(layout.authorized_keys, f'from="{SUBNET}" {client_pub} drtool-lab\n', PUBLIC)
    lines = []
    for host in HOSTS.values():
        layout.host_dir(host.name).mkdir(parents=True, exist_ok=True)
        pub = _ed25519_keypair(layout.host_key(host.name), f"root@{host.name}")
        lines.append(f"{host.address} {pub}\n")
    write_if_changed(layout.known_hosts, "".join(lines), PUBLIC)


# --- DNS / S3 --------------------------------------------------------------------------------------

def ensure_tsig_key(layout: Layout) -> None:
    if layout.tsig_key.exists() and f'"{TSIG_KEY_NAME}"' in layout.tsig_key.read_text():
        layout.tsig_key.chmod(SECRET)
        return
    out = run(["tsig-keygen", "-a", "hmac-sha256", TSIG_KEY_NAME], what="tsig-keygen").stdout
    if "secret" not in out:
        raise LabError("tsig-keygen printed no key", hint="check the bind9 installation")
    write_atomic(layout.tsig_key, out, SECRET)


def ensure_s3_credentials(layout: Layout, site: str) -> None:
    """The site's own key pair, made once and kept across down/up."""
    path = layout.s3_credentials(site)
    if path.exists():
        path.chmod(SECRET)
        return
    cp = configparser.ConfigParser()
    cp["default"] = {
        "aws_access_key_id": "DRLAB" + secrets.token_hex(8).upper(),
        "aws_secret_access_key": secrets.token_urlsafe(30),
    }
    buf = io.StringIO()
    cp.write(buf)
    write_atomic(path, buf.getvalue(), SECRET)


def s3_credentials(layout: Layout, site: str) -> tuple[str, str]:
    """The site's (access key, secret key)."""
    path = layout.s3_credentials(site)
    cp = configparser.ConfigParser()
    cp.read(path)
    try:
        return cp["default"]["aws_access_key_id"], cp["default"]["aws_secret_access_key"]
    except KeyError:
        raise LabError(f"{path} has no [default] key pair",
                       hint="delete it and run `drtool lab up` to make a new one") from None
