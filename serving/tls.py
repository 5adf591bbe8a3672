"""TLS for the server's ports and netc's clients, from PEM files.

The server side is read and checked once, before anything listens (`ServerTls.load`):
a missing or unreadable file, a file that is not PEM, or a key that does not match
its certificate is a `UserError` naming the file. The same files then give gRPC's
credentials (`ServerTls.grpc_credentials`) and an `ssl.SSLContext` for an HTTP port
such as the metrics endpoint (`ServerTls.ssl_context`); with a client CA, both
refuse a client without a certificate signed by it at the handshake (mutual TLS).

```python
tls = ServerTls.load(Path("server.crt"), Path("server.key"), client_ca=Path("ca.crt"))
port = grpc_server.add_secure_port("0.0.0.0:8001", tls.grpc_credentials())
http = await asyncio.start_server(handle, "0.0.0.0", 8002, ssl=tls.ssl_context())
```

`channel_credentials` is the client side (`netc infer --tls-ca`, `VisionClient`).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from netc.errors import UserError

_LABELS = {"certificate": b"CERTIFICATE-----", "private key": b"PRIVATE KEY-----"}


def read_pem(path: Path, what: str, flag: str) -> bytes:
    """The file's bytes, or a UserError naming it (`flag` says which option gave it) when
    it cannot be read or holds no PEM block of the kind `what` ("certificate",
    "CA certificate", "private key")."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot read the {what}: {exc.strerror or exc}") from None
    label = _LABELS[what.removeprefix("CA ")]
    if b"-----BEGIN " not in data or label not in data:
        raise UserError(
            f"{flag} {path}: not a PEM {what} (expected a '-----BEGIN {label.decode()}' block)"
        )
    if what == "private key" and b"ENCRYPTED" in data:
        raise UserError(
            f"{flag} {path}: the private key is encrypted; netc reads unencrypted keys "
            f"(openssl pkey -in {path} -out plain.key), kept readable by the server only"
        )
    return data


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate chain and key, and the CA its clients must be signed
    by (None: any client may connect, as far as TLS goes)."""

    cert: Path
    key: Path
    client_ca: Path | None
    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None

    @classmethod
    def load(cls, cert: Path, key: Path, client_ca: Path | None = None) -> ServerTls:
        """Read and check the files: each readable PEM, the key the certificate's, the CA
        a certificate (a UserError naming the file otherwise)."""
        cert_pem = read_pem(cert, "certificate", "--tls-cert")
        key_pem = read_pem(key, "private key", "--tls-key")
        ca_pem = None
        if client_ca is not None:
            ca_pem = read_pem(client_ca, "CA certificate", "--tls-client-ca")
        _check_certificates(cert_pem, "--tls-cert", cert)
        if client_ca is not None and ca_pem is not None:
            _check_certificates(ca_pem, "--tls-client-ca", client_ca)
        tls = cls(Path(cert), Path(key), client_ca, cert_pem, key_pem, ca_pem)
        tls.ssl_context()  # the key read, and checked against the certificate
        return tls

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.client_ca_pem,
            require_client_auth=self.client_ca_pem is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for an HTTP port: TLS 1.2 or later, and with a client CA the
        client's certificate is required and checked against it."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key, password=_no_password)
        except ssl.SSLError as exc:  # the certificate parsed in load(): the key is wrong
            if "KEY_VALUES_MISMATCH" in str(exc).upper():
                raise UserError(
                    f"--tls-key {self.key} is not the private key of --tls-cert {self.cert}"
                ) from None
            raise UserError(f"--tls-key {self.key}: not a private key OpenSSL can read") from None
        except OSError as exc:  # a file gone since load() read it
            raise UserError(f"--tls-key {self.key}: {exc.strerror or exc}") from None
        if self.client_ca_pem is not None:
            context.load_verify_locations(cadata=self.client_ca_pem.decode("ascii"))
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def _no_password() -> bytes:
    """An encrypted key never prompts on the server's terminal (read_pem refuses those)."""
    return b""


def _check_certificates(pem: bytes, flag: str, path: Path) -> None:
    """A UserError naming the file unless OpenSSL reads every certificate in it."""
    try:
        ssl.create_default_context().load_verify_locations(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError):
        raise UserError(
            f"{flag} {path}: a certificate in it cannot be read (damaged PEM)"
        ) from None


def from_options(options) -> ServerTls | None:
    """The server's TLS from `ServerOptions` (tls_cert, tls_key, tls_client_ca), checked;
    None when no TLS flag is given."""
    cert, key, ca = options.tls_cert, options.tls_key, options.tls_client_ca
    if cert is None and key is None:
        if ca is not None:
            raise UserError("--tls-client-ca needs --tls-cert and --tls-key: mutual TLS is TLS")
        return None
    if cert is None or key is None:
        raise UserError("--tls-cert and --tls-key go together: give both")
    return ServerTls.load(cert, key, ca)


def channel_credentials(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """A client's TLS: trust `ca` (None: the system's root certificates) and, for mutual
    TLS, present `cert` with `key`. A file that cannot be read is a UserError naming it."""
    if (cert is None) != (key is None):
        raise UserError("--tls-cert and --tls-key go together: give both for mutual TLS")
    return grpc.ssl_channel_credentials(
        root_certificates=None if ca is None else read_pem(ca, "CA certificate", "--tls-ca"),
        private_key=None if key is None else read_pem(key, "private key", "--tls-key"),
        certificate_chain=None if cert is None else read_pem(cert, "certificate", "--tls-cert"),
    )
