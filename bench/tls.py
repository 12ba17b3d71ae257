"""TLS for the wss scenario: a throwaway certificate for the broker the bench starts, and what trusts it.

The certificate is made at run time and deleted afterwards (no key is ever kept): with
the `trustme` package when it is installed (the test extra has it), else with the
`openssl` command. Both make an ECDSA P-256 key, as certbot does by default.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import BenchError

__all__ = [
    "WOULD_BLOCK",
    "TlsFiles",
    "client_context",
    "openssl_certificate",
    "throwaway_certificate",
    "trustme_certificate",
]

HOST = "127.0.0.1"  # the servers the bench starts listen there; the certificate names it

# What a non-blocking TLS socket raises where a plain one raises BlockingIOError.
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


@dataclass(frozen=True)
class TlsFiles:
    """The broker's certificate chain and key, and the CA its clients trust (PEM files)."""

    cert: Path
    key: Path
    ca: Path


@contextlib.contextmanager
def throwaway_certificate() -> Iterator[TlsFiles]:
    """A certificate for 127.0.0.1 in a temporary folder, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as folder:
        if importlib.util.find_spec("trustme") is not None:
            yield trustme_certificate(Path(folder))
        else:
            yield openssl_certificate(Path(folder))


def client_context(ca_file: str) -> ssl.SSLContext:
    """A client context that trusts `ca_file` and checks the certificate, as a browser does."""
    return ssl.create_default_context(cafile=ca_file)


def trustme_certificate(folder: Path) -> TlsFiles:
    """A certificate from a throwaway CA of `trustme`."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert(HOST)
    files = TlsFiles(folder / "fullchain.pem", folder / "privkey.pem", folder / "ca.pem")
    leaf.private_key_pem.write_to_path(files.key)
    for index, pem in enumerate(leaf.cert_chain_pems):
        pem.write_to_path(files.cert, append=bool(index))
    ca.cert_pem.write_to_path(files.ca)
    return files


def openssl_certificate(folder: Path) -> TlsFiles:
    """A self-signed certificate made by the `openssl` command (it is its own CA)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise BenchError("the wss scenario needs a certificate: install trustme (pip) or openssl (apt)")
    files = TlsFiles(folder / "cert.pem", folder / "key.pem", folder / "cert.pem")
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "1", "-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}",
        "-keyout", str(files.key), "-out", str(files.cert),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise BenchError(f"openssl could not make a certificate: {result.stderr.strip()}")
    return files
