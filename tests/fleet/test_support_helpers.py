"""The shared test helpers other suites reuse: a real Mosquitto (plain and TLS) and throw-away databases."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.mosquitto import running_mosquitto
from tests.support.postgres import admin_url, temporary_database


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.mark.mosquitto
def test_mosquitto_helper_serves_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with running_mosquitto(tmp_path / "mosq", tls=(cert, key)) as broker:
        assert "max_queued_messages 100000" in broker.config.read_text()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tls-check")
        client.tls_set(ca_certs=str(cert), cert_reqs=ssl.CERT_REQUIRED)
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        try:
            assert connected.wait(10), broker.log()
        finally:
            client.disconnect()
            client.loop_stop()
    assert broker.process.poll() is not None  # stopped


@pytest.mark.postgres
def test_temporary_database_is_created_and_dropped() -> None:
    import psycopg

    with temporary_database() as url:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database()").fetchone() == (name,)
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        assert conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None
