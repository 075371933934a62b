"""A throwaway certificate authority and a server certificate, made with the openssl CLI.

The CA certificate carries ``basicConstraints=CA:TRUE`` and key identifiers; the server certificate
carries ``subjectAltName`` (by default ``DNS:localhost,IP:127.0.0.1``) and
``extendedKeyUsage=serverAuth``, so Python's ``ssl`` (used by paho-mqtt) verifies it with hostname
checking on. Keys are P-256 EC keys (made in milliseconds). Nothing is read from the system's
openssl.cnf: the configuration is written next to the certificates.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from collector.testbed._process import TestbedError, find_binary

__all__ = ["TlsFiles", "find_openssl", "make_tls_files"]


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files made by :func:`make_tls_files`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = ecoflow-collector testbed

[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash

[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
"""


def find_openssl() -> str:
    return find_binary("openssl")


def _run(argv: Sequence[str], cwd: Path) -> None:
    result = subprocess.run(
        list(argv), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise TestbedError(
            f"{' '.join(argv)} failed ({result.returncode}):\n"
            + result.stderr.decode("utf-8", "replace")[-3000:]
        )


def make_tls_files(
    directory: Path,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1",),
    common_name: str = "localhost",
    days: int = 825,
    openssl: str | None = None,
) -> TlsFiles:
    """Make ``ca.crt``/``ca.key`` and ``server.crt``/``server.key`` in ``directory``.

    Key files are mode 0600 (the servers here read them as the user that started them).
    """
    if not dns_names and not ip_addresses:
        raise ValueError("at least one DNS name or IP address is needed for subjectAltName")
    exe = openssl or find_openssl()
    directory.mkdir(parents=True, exist_ok=True)
    san = ",".join([f"DNS:{name}" for name in dns_names] + [f"IP:{ip}" for ip in ip_addresses])
    cnf = directory / "openssl.cnf"
    cnf.write_text(_OPENSSL_CNF.format(san=san))
    files = TlsFiles(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
    )
    csr = directory / "server.csr"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(
        [
            exe,
            "req",
            "-x509",
            "-new",
            *ec,
            "-keyout",
            str(files.ca_key),
            "-out",
            str(files.ca_cert),
            "-days",
            str(days + 1),
            "-config",
            str(cnf),
            "-extensions",
            "v3_ca",
            "-subj",
            "/CN=ecoflow-collector testbed CA",
        ],
        directory,
    )
    _run(
        [
            exe,
            "req",
            "-new",
            *ec,
            "-keyout",
            str(files.server_key),
            "-out",
            str(csr),
            "-config",
            str(cnf),
            "-subj",
            f"/CN={common_name}",
        ],
        directory,
    )
    _run(
        [
            exe,
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(files.ca_cert),
            "-CAkey",
            str(files.ca_key),
            "-set_serial",
            "0x" + secrets.token_hex(16),
            "-days",
            str(days),
            "-extfile",
            str(cnf),
            "-extensions",
            "server",
            "-out",
            str(files.server_cert),
        ],
        directory,
    )
    csr.unlink(missing_ok=True)
    for key in (files.ca_key, files.server_key):
        os.chmod(key, 0o600)
    return files
