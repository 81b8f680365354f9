"""TLS_CERT / TLS_KEY: the gateway serves HTTPS with the given certificate."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import assert_ok, spawn_gateway, wait_until, with_test_defaults


def self_signed(folder) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


def test_gateway_serves_https(tmp_path):
    cert, key = self_signed(tmp_path)
    gw = spawn_gateway(tmp_path / "gw", with_test_defaults(
        {"TLS_CERT": cert, "TLS_KEY": key, "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}}))
    try:
        base = f"https://127.0.0.1:{gw.port}"

        def ready() -> bool:
            return requests.get(base + "/health/ready", verify=cert, timeout=2).status_code == 200

        wait_until(ready, timeout=30, message="the HTTPS gateway is ready")
        with requests.Session() as session:
            for i in range(3):  # kept alive over TLS
                body = assert_ok(session.post(base + "/run", json={"SIGNATURE": "echo", "I": i},
                                              verify=cert, timeout=10))
                assert body["echo"] == {"I": i}
        # No certificate check passes without the certificate.
        try:
            requests.get(base + "/health/live", timeout=5)
            raise AssertionError("an unknown certificate was accepted")
        except requests.exceptions.SSLError:
            pass
        served = ssl.get_server_certificate(("127.0.0.1", gw.port))
        assert served.strip() == Path(cert).read_text(encoding="ascii").strip()
    finally:
        gw.stop()
