"""The embedded secured broker's certificates, made with the JDK's ``keytool``.

One CA signs the broker's certificate (SAN 127.0.0.1 and localhost, so both
clients' hostname verification holds) and a client certificate for mTLS. Java
reads the broker's PKCS12 keystore; clients get PEM, which Java and librdkafka
both read: ``ca.pem`` (the truststore) and ``client.pem`` (key + chain, 0600).
The stores' password is generated and reaches keytool and openssl through the
environment (``-storepass:env``, ``-passin env:``), never their command lines.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from riverdelta.errors import RiverdeltaError

_STOREPASS_ENV = "RIVERDELTA_KEYSTORE_PASS"
_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\n?", re.S)
VALIDITY_DAYS = "825"


class CertError(RiverdeltaError, RuntimeError):
    pass


@dataclass(frozen=True)
class BrokerTls:
    dir: Path

    @property
    def ca_pem(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def broker_keystore(self) -> Path:
        return self.dir / "broker.p12"

    @property
    def client_pem(self) -> Path:
        return self.dir / "client.pem"

    @property
    def storepass_file(self) -> Path:
        return self.dir / "storepass"

    def storepass(self) -> str:
        return self.storepass_file.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _run(cmd: list[str], env: dict[str, str], stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, input=stdin)
    if proc.returncode != 0:
        raise CertError(f"{Path(cmd[0]).name} {cmd[1]} failed: {proc.stderr.strip()}")
    return proc.stdout


def _keytool(java: str) -> str:
    return str(Path(java).parent / "keytool")


def _signed_keystore(tool: str, tls: BrokerTls, alias: str, dname: str, san: str | None, env):
    """A PKCS12 keystore ``<alias>.p12`` whose key's certificate the CA signed."""
    store = str(tls.dir / f"{alias}.p12")
    common = ["-storetype", "PKCS12", "-storepass:env", _STOREPASS_ENV]
    _run(
        [
            tool,
            "-genkeypair",
            "-alias",
            alias,
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-dname",
            dname,
            "-validity",
            VALIDITY_DAYS,
            "-keystore",
            store,
            *common,
        ],
        env,
    )
    csr = _run([tool, "-certreq", "-alias", alias, "-keystore", store, *common], env)
    ext = ["-ext", f"SAN={san}"] if san else []
    signed = _run(
        [
            tool,
            "-gencert",
            "-alias",
            "ca",
            "-keystore",
            str(tls.dir / "ca.p12"),
            *common,
            "-rfc",
            "-validity",
            VALIDITY_DAYS,
            *ext,
        ],
        env,
        stdin=csr,
    )
    (tls.dir / f"{alias}.crt").write_text(signed)
    imports = [(["-alias", "ca", "-file", str(tls.ca_pem)]), (["-alias", alias, "-file"])]
    _run([tool, "-importcert", "-noprompt", *imports[0], "-keystore", store, *common], env)
    _run(
        [
            tool,
            "-importcert",
            "-noprompt",
            *imports[1],
            str(tls.dir / f"{alias}.crt"),
            "-keystore",
            store,
            *common,
        ],
        env,
    )
    return store


def _pem_of_keystore(store: str, leaf: Path, ca: Path, env: dict[str, str]) -> str:
    """The keystore's key, then its certificate, then the CA: the order Java requires."""
    out = _run(
        [
            "openssl",
            "pkcs12",
            "-in",
            store,
            "-nodes",
            "-nocerts",
            "-passin",
            f"env:{_STOREPASS_ENV}",
        ],
        env,
    )
    keys = [m.group(0) for m in _BLOCK.finditer(out) if "PRIVATE KEY" in m.group(1)]
    if len(keys) != 1:
        raise CertError(f"unexpected content in {store}: {len(keys)} private keys")
    certs = [m.group(0) for p in (leaf, ca) for m in _BLOCK.finditer(p.read_text())]
    return "".join([keys[0], *certs])


def ensure(tls_dir: Path, java: str) -> BrokerTls:
    """Make the CA, broker keystore and client PEM once; later starts reuse them."""
    tls = BrokerTls(tls_dir)
    if tls.ca_pem.exists() and tls.broker_keystore.exists() and tls.client_pem.exists():
        return tls
    tls_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(tls_dir, 0o700)
    _write_private(tls.storepass_file, secrets.token_urlsafe(18))
    env = {**os.environ, _STOREPASS_ENV: tls.storepass()}
    tool = _keytool(java)
    common = ["-storetype", "PKCS12", "-storepass:env", _STOREPASS_ENV]
    ca_store = str(tls_dir / "ca.p12")
    Path(ca_store).unlink(missing_ok=True)
    _run(
        [
            tool,
            "-genkeypair",
            "-alias",
            "ca",
            "-keyalg",
            "RSA",
            "-keysize",
            "2048",
            "-dname",
            "CN=Riverdelta embedded CA",
            "-ext",
            "bc:c",
            "-validity",
            VALIDITY_DAYS,
            "-keystore",
            ca_store,
            *common,
        ],
        env,
    )
    ca = _run([tool, "-exportcert", "-rfc", "-alias", "ca", "-keystore", ca_store, *common], env)
    tls.ca_pem.write_text(ca)
    for alias in ("broker", "client"):
        (tls_dir / f"{alias}.p12").unlink(missing_ok=True)
    _signed_keystore(tool, tls, "broker", "CN=localhost", "ip:127.0.0.1,dns:localhost", env)
    client_store = _signed_keystore(tool, tls, "client", "CN=riverdelta-client", None, env)
    pem = _pem_of_keystore(client_store, tls_dir / "client.crt", tls.ca_pem, env)
    _write_private(tls.client_pem, pem)
    return tls
