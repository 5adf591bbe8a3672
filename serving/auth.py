"""Bearer tokens: who may call the server (a grpc.aio server interceptor).

Rules, in the order `AuthInterceptor` applies them:
1. `grpc.health.v1.Health` is open to all: probes (Kubernetes, load balancers) carry
   no credentials.
2. A method the server does not serve is left to gRPC (UNIMPLEMENTED).
3. Repository control (`RepositoryModelLoad`, `RepositoryModelUnload`), when an admin
   token file is given, needs one of its tokens: a client's plain token gets
   PERMISSION_DENIED, no token or an unknown one UNAUTHENTICATED.
4. Every other call, server reflection included (grpcurl's `-H` sends the header
   with its reflection calls too), needs a token of the token file (or an admin
   token), else UNAUTHENTICATED. Without a token file these calls are open.

A token travels as the metadata `authorization: Bearer <token>`. It is compared
with every token in constant time (`hmac.compare_digest` of SHA-256 digests, so
neither the token nor its length shows in the time taken), and never logged:
messages name the file and count tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc

from netc.errors import UserError

log = logging.getLogger("netc.serving")

OPEN_SERVICES = ("/grpc.health.v1.Health/",)
ADMIN_METHODS = frozenset(
    f"/inference.GRPCInferenceService/{name}"
    for name in ("RepositoryModelLoad", "RepositoryModelUnload")
)
SCHEME = "bearer"  # RFC 6750: the scheme's name is case-insensitive


def parse_tokens(text: str) -> list[str]:
    """The tokens of a token file: one a line, surrounding blanks stripped; blank lines
    and lines starting with '#' are skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_tokens(path: Path, flag: str) -> list[str]:
    """The tokens in `path`; a UserError naming the file (and `flag`, the option that gave
    it) when it cannot be read, is not text, or holds no token."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(
            f"{flag} {path}: cannot read the token file: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path}: a token file is UTF-8 text, one token a line") from None
    tokens = parse_tokens(text)
    if not tokens:
        raise UserError(
            f"{flag} {path}: no token in the file (one token a line; blank lines and "
            "'#' comments are skipped)"
        )
    for number, token in enumerate(tokens, 1):
        if any(c.isspace() for c in token) or not token.isprintable():
            # the line's content stays out of the message: it may be a secret
            raise UserError(
                f"{flag} {path}: token {number} holds a space or a control character; "
                "a token is one word a line"
            )
    return tokens


class TokenFile:
    """A token file's tokens, kept as SHA-256 digests; `reload` reads the file again."""

    def __init__(self, path: Path, flag: str) -> None:
        self.path, self.flag = Path(path), flag
        self._digests = _digests(read_tokens(self.path, flag))

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, token: str | None) -> bool:
        """Whether `token` is one of the file's: every digest compared, whatever matched."""
        if token is None:
            return False
        given = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(digest, given)
        return found

    def reload(self) -> str:
        """Read the file again; on a mistake (unreadable, empty) keep the tokens held.
        Returns what happened, in a line for the operator (no token in it)."""
        try:
            self._digests = _digests(read_tokens(self.path, self.flag))
        except UserError as exc:
            return f"tokens not reloaded, {len(self._digests)} kept: {exc}"
        return f"{self.flag} {self.path}: {_count(len(self._digests))} reloaded"


def _count(n: int) -> str:
    return f"{n} token{'s' * (n != 1)}"


def _digests(tokens: Sequence[str]) -> tuple[bytes, ...]:
    return tuple(hashlib.sha256(t.encode("utf-8")).digest() for t in tokens)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the first `authorization: Bearer <token>` entry, else None."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        return token.strip() if scheme.lower() == SCHEME and token.strip() else None
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through or refuses it, by the rules of this module's docstring.

    `tokens` (None: calls other than repository control need no token) and `admin`
    (None: any accepted token may control the repository) are `TokenFile`s.
    """

    def __init__(self, tokens: TokenFile | None, admin: TokenFile | None) -> None:
        self.tokens, self.admin = tokens, admin

    def files(self) -> list[TokenFile]:
        return [f for f in (self.tokens, self.admin) if f is not None]

    def reload(self) -> list[str]:
        """Read every token file again (SIGHUP); a file with a mistake keeps its tokens.
        Returns a line for each file saying what happened."""
        return [file.reload() for file in self.files()]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_SERVICES):  # Rules 1 and 2
            return handler
        token = bearer_token(details.invocation_metadata)
        refused = self.refusal(token, method.rsplit("/", 1)[-1], admin_call=method in ADMIN_METHODS)
        return handler if refused is None else _refusal(handler, *refused)

    def refusal(
        self, token: str | None, call: str, *, admin_call: bool, header: str = "metadata"
    ) -> tuple[grpc.StatusCode, str] | None:
        """Why a call bringing `token` is refused (its status and message), or None to let
        it through: Rules 3 and 4, for gRPC and the REST port (serving/http/) alike.
        `call` names the call; `admin_call`: it loads or unloads models; `header` is what
        carries the token on the caller's protocol (for the message)."""
        is_admin = self.admin is not None and self.admin.accepts(token)
        if admin_call and self.admin is not None:  # Rule 3
            if is_admin:
                return None
            if self.tokens is not None and self.tokens.accepts(token):
                return (
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"{call} needs an admin token; this token may not load or unload models",
                )
            return grpc.StatusCode.UNAUTHENTICATED, _unauthenticated(token, header)
        if self.tokens is None or is_admin or self.tokens.accepts(token):  # Rule 4
            return None
        return grpc.StatusCode.UNAUTHENTICATED, _unauthenticated(token, header)


def from_options(options) -> AuthInterceptor | None:
    """The interceptor for `ServerOptions` (auth_token_file, admin_token_file), its files
    read and checked; None when neither is given (every call open)."""
    tokens = options.auth_token_file
    admin = options.admin_token_file
    if tokens is None and admin is None:
        return None
    return AuthInterceptor(
        None if tokens is None else TokenFile(tokens, "--auth-token-file"),
        None if admin is None else TokenFile(admin, "--admin-token-file"),
    )


def _unauthenticated(token: str | None, header: str = "metadata") -> str:
    if token is None:
        if header != "metadata":  # the REST port
            return f"this server needs a token: send the {header} 'Authorization: Bearer <token>'"
        return (
            "this server needs a token: send the metadata 'authorization: Bearer <token>' "
            "(netc infer --token-file FILE, or NETC_TOKEN)"
        )
    return "the bearer token is not valid on this server"


def _refusal(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (unary or streaming on either side) that
    ends the call with `code`; a request is never parsed (no deserializer)."""

    async def refuse(_request, context: grpc.aio.ServicerContext):
        log.debug("refused %s from %s: %s", code.name, context.peer(), message)
        await context.abort(code, message)

    async def refuse_stream(_request, context: grpc.aio.ServicerContext):
        await refuse(_request, context)
        yield  # an async generator, as a streaming handler is

    kind = (
        grpc.stream_stream_rpc_method_handler
        if handler.request_streaming and handler.response_streaming
        else grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    behaviour = refuse_stream if handler.response_streaming else refuse
    return kind(behaviour)  # the request stays bytes: nothing of it is parsed
