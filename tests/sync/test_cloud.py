"""The cloud client's TLS: verified by default, trusting sync.ca_file when given."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edged.sync.queue import TICKET
from tests.sync.fakecloud import FakeCloud
from tests.sync.test_uploader import rig


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cloud.pem", folder / "cloud.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_is_verified_and_ca_file_is_trusted(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    cloud = FakeCloud(ssl_context=context)
    await cloud.start()
    try:
        async with rig(tmp_path / "a", cloud.url) as r:
            await r.tickets(1)
            refused = await r.uploader.drain()
            assert refused.error and "certificate" in refused.error.lower()
            assert cloud.stored == {}
        async with rig(tmp_path / "b", cloud.url, ca_file=str(cert)) as r:
            await r.tickets(1)
            assert (await r.uploader.drain()).sent == {TICKET: 1}
    finally:
        await cloud.stop()
