"""A local certificate authority for the dev servers' TLS ports (PyPI ``cryptography``).

``ensure_ca(dir)`` makes ``ca.crt``/``ca.key`` once; ``ensure_server_cert(dir, ca_dir)``
signs ``server.crt``/``server.key`` for ``127.0.0.1`` and ``localhost`` with it. Clients
verify against ``ca.crt`` (``clickhouse.ca_file``). Keys are EC P-256 and never leave
the dev dir; certificates are valid for 10 years from their creation.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as exc:
        from streams.devenv.base import MissingDependencyError

        raise MissingDependencyError(
            "dev TLS certificates need the cryptography package (pip install -e '.[dev]')") from exc
    return x509, hashes, serialization, ec, NameOID


def _write_key(path: Path, key) -> None:
    _, _, serialization, _, _ = _crypto()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def ensure_ca(directory: Path, common_name: str = "streams dev CA") -> Path:
    """Create a self-signed CA in ``directory`` unless one is there; return the path of ``ca.crt``."""
    x509, hashes, serialization, ec, NameOID = _crypto()
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() and key_path.exists():
        return cert_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def ensure_server_cert(directory: Path, ca_dir: Path) -> tuple[Path, Path]:
    """Sign a server certificate for ``127.0.0.1``/``localhost`` with the CA in ``ca_dir``
    (created if missing), unless ``directory`` has one from that CA; return (cert, key) paths."""
    x509, hashes, serialization, ec, NameOID = _crypto()
    ca_cert_path = ensure_ca(ca_dir)
    cert_path, key_path = directory / SERVER_CERT, directory / SERVER_KEY
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    if cert_path.exists() and key_path.exists():
        if x509.load_pem_x509_certificate(cert_path.read_bytes()).issuer == ca_cert.subject:
            return cert_path, key_path
    ca_key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
