"""Certificates for trying mutual TLS between a driver and its workers: a local CA, a server and a client.

``make_certs(DIR)`` (or ``python -m fedlab certs DIR``) writes::

    ca.pem  ca-key.pem           the certificate authority both sides trust (--tls-ca)
    server.pem  server-key.pem   the workers' certificate, named for ``hosts`` (python -m fedlab worker --tls-*)
    client.pem  client-key.pem   the driver's certificate (python -m fedlab run --workers ... --tls-*)

Keys are ECDSA P-256 (what gRPC's BoringSSL accepts everywhere), files 0600; certificates 0644. Every
file is written to a temporary file, then renamed: never half a key. This is a test CA for one project:
for a real deployment, issue the certificates from your organisation's CA; the worker checks only that
the client's certificate chains to ``--tls-ca``, so anyone holding a certificate from that CA may connect.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import tempfile
from typing import Iterable, Sequence

FILES = ("ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_DAYS = 365


def parse_hosts(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"h1,h2"`` or a sequence to host names and IP addresses; ValueError for an empty or malformed list."""
    items = [h.strip() for h in text.split(",")] if isinstance(text, str) else [str(h).strip() for h in text]
    items = [h for h in items if h]
    if not items:
        raise ValueError("--hosts: give at least one host name or IP address the driver uses to reach the workers")
    for host in items:
        if not _is_ip(host) and not all(part and part.replace("-", "").replace("*", "").isalnum()
                                        for part in host.split(".")):
            raise ValueError(f"--hosts: {host!r} is neither an IP address nor a DNS name")
    return tuple(dict.fromkeys(items))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _write(path: pathlib.Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def make_certs(directory, *, hosts: Sequence[str] = DEFAULT_HOSTS, days: int = DEFAULT_DAYS,
               force: bool = False) -> dict[str, pathlib.Path]:
    """Writes a CA, a server certificate for ``hosts`` and a client certificate into ``directory``.

    ``days``: validity of all three. Returns file name -> path. Refuses (FileExistsError) to replace
    existing files unless ``force``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    hosts = parse_hosts(hosts)
    if not isinstance(days, int) or days < 1:
        raise ValueError(f"--days: must be an integer >= 1, got {days!r}")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        names = ", ".join(pathlib.Path(e).name for e in existing)
        raise FileExistsError(f"{directory} already holds {names}; pass --force to replace "
                              f"{'it' if len(existing) == 1 else 'them'}")

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)  # clock skew
    until = now + datetime.timedelta(days=days)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlab local CA"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("fedlab test CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(common: str, usage, sans=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(until)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    sans = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
    server_key, server = leaf(f"fedlab worker {hosts[0]}", ExtendedKeyUsageOID.SERVER_AUTH, sans)
    client_key, client = leaf("fedlab driver", ExtendedKeyUsageOID.CLIENT_AUTH)

    contents = {"ca-key.pem": (pem_key(ca_key), 0o600), "server-key.pem": (pem_key(server_key), 0o600),
                "client-key.pem": (pem_key(client_key), 0o600)}
    for file, cert in (("ca.pem", ca), ("server.pem", server), ("client.pem", client)):
        contents[file] = (cert.public_bytes(serialization.Encoding.PEM), 0o644)
    # the CA certificate last: if writing stops half-way, ca.pem is missing and the folder is visibly unusable
    for file in sorted(FILES, key=lambda f: f == "ca.pem"):
        data, mode = contents[file]
        _write(paths[file], data, mode)
    return paths
