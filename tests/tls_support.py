"""Certificates for the TLS tests, from `trustme`: laid out as certbot does, and clients that trust them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

from .conftest import make_jpeg
from .test_mjpeg import PartReader


@dataclass(frozen=True)
class CertFiles:
    """A certificate as certbot leaves it: `fullchain.pem` and `privkey.pem` in one folder."""

    folder: Path
    der: bytes  # the leaf certificate, as a client sees it in the handshake

    @property
    def cert(self) -> Path:
        return self.folder / "fullchain.pem"

    @property
    def key(self) -> Path:
        return self.folder / "privkey.pem"

    @property
    def flags(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


def issue(ca: trustme.CA, folder: Path) -> CertFiles:
    """A new leaf certificate for 127.0.0.1 and localhost, written (or rewritten) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(folder / "fullchain.pem")
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(folder / "fullchain.pem", append=True)
    leaf.private_key_pem.write_to_path(folder / "privkey.pem")
    return CertFiles(folder, ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode()))


def encrypt_key(key: Path, passphrase: bytes = b"x") -> None:
    """Rewrite the private key in `key` encrypted with `passphrase`, as `openssl pkey -aes256` does."""
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """What a browser or agent that trusts `ca` uses: certificate and host name checked."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def camera_frames(count: int) -> list[bytes]:
    """Distinct 720p JPEGs of about 120 kB: each spans several TLS records."""
    frames = [
        make_jpeg((i * 40 % 255, 90, 160), size=(1280, 720), text=str(i), noise=i + 1) for i in range(count)
    ]
    assert min(map(len, frames)) > 64 * 1024
    return frames


async def next_new_part(parts: PartReader, previous: bytes) -> bytes:
    """The next MJPEG part that is not a keep-alive repeat of `previous`."""
    while (part := await parts.next_part()) == previous:
        pass
    return part
