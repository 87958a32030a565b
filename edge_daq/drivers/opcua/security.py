"""What an OPC UA link presents to the server: its application certificate and key, and the user's password.

Files are read in a worker thread (never on the event loop), bounded in size, and parsed here with
``cryptography`` so that a wrong file is a clear error naming the key, not an ASN.1 message from deep inside
asyncua. The password is read at every connect (a rotated file takes effect at the next reconnect) and never
appears in an error: messages name ``password_file``, never its path or its content.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from edge_daq.drivers.opcua.config import OpcUaConfig
from edge_daq.errors import DriverConnectionError, RetriableSinkError
from edge_daq.sinks.secrets import read_secret

MAX_CERTIFICATE_FILE = 1 << 20
"""A certificate or key file is a few KiB: a larger one is the wrong file."""


@dataclass(frozen=True, slots=True)
class Credentials:
    certificate: bytes | None = None  # DER
    private_key: bytes | None = None  # DER (PKCS#8)
    server_certificate: bytes | None = None  # DER
    application_uri: str | None = None
    password: str | None = None


def _read(path: Path) -> bytes:
    with path.open("rb") as file:
        data = file.read(MAX_CERTIFICATE_FILE + 1)
    if len(data) > MAX_CERTIFICATE_FILE:
        raise ValueError(f"over {MAX_CERTIFICATE_FILE // 1024} KiB: not a certificate or key")
    return data


async def _read_file(path: Path, key: str) -> bytes:
    try:
        return await asyncio.to_thread(_read, path)
    except OSError as error:
        raise DriverConnectionError(f"cannot read {key} {path}: {error.strerror or type(error).__name__}") from None
    except ValueError as error:
        raise DriverConnectionError(f"{key} {path}: {error}") from None


def _certificate(data: bytes, key: str, path: Path) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise DriverConnectionError(f"{key} {path} is not an X.509 certificate (DER or PEM)") from None


def _private_key_der(data: bytes, path: Path) -> bytes:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise DriverConnectionError(f"private_key {path} is encrypted: give it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise DriverConnectionError(f"private_key {path} is not a private key (PEM or DER)") from None
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def certificate_uri(certificate: x509.Certificate) -> str | None:
    """The application URI a certificate names (its subjectAltName URI), which the client must present."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def load_credentials(config: OpcUaConfig) -> Credentials:
    """Read and check every file the link's config names; DriverConnectionError (naming the key) if one is wrong."""
    try:
        password = await read_secret(config.password, config.password_file, what="password_file")
    except RetriableSinkError as error:
        raise DriverConnectionError(str(error)) from None
    if config.security_policy == "None":
        return Credentials(password=password, application_uri=config.application_uri)
    assert config.certificate is not None
    assert config.private_key is not None
    certificate = _certificate(await _read_file(config.certificate, "certificate"), "certificate", config.certificate)
    private_key = _private_key_der(await _read_file(config.private_key, "private_key"), config.private_key)
    server = None
    if config.server_certificate is not None:
        data = await _read_file(config.server_certificate, "server_certificate")
        server = _certificate(data, "server_certificate", config.server_certificate).public_bytes(
            serialization.Encoding.DER
        )
    return Credentials(
        certificate=certificate.public_bytes(serialization.Encoding.DER),
        private_key=private_key,
        server_certificate=server,
        application_uri=config.application_uri or certificate_uri(certificate),
        password=password,
    )
