"""HTTPS and WSS with `mcu serve --cert --key`."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
from pathlib import Path

import aiohttp
from conftest import BIN, free_port, start_mcu, stop_process
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, as an operator would get one for their host name."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_https_and_wss(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    trust = ssl.create_default_context(cafile=str(cert))
    process = start_mcu(port, "--size", "320x180", "--cert", str(cert), "--key", str(key), tls=trust)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=trust) as ws:
                await ws.send_json({"type": "join", "room": "tls", "name": "Ana"})
                assert (await ws.receive_json(timeout=5))["type"] == "joined"
            # The certificate is what makes it trusted: without it the client refuses.
            try:
                async with session.get(f"https://127.0.0.1:{port}/healthz"):
                    raise AssertionError("an unknown certificate was accepted")
            except aiohttp.ClientConnectorCertificateError:
                pass
    finally:
        stop_process(process, grace=10)
    assert f"serving on https://127.0.0.1:{port}/" in process.communicate()[0]


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    refused = subprocess.run(
        [BIN / "mcu", "serve", "--port", str(free_port()), "--cert", str(cert)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2 and "--cert and --key go together" in refused.stderr
