"""TLS, mutual TLS and bearer tokens: real servers on loopback, certificates made here.

One server (TLS, tokens, admin tokens) takes the token rules and the stock
tritonclient; a second asks for client certificates (mutual TLS); `netc serve`
itself shows SIGHUP reloading its token file and `netc infer` connecting to it.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from netc.cli import main
from netc.protos.generated import grpc_service_pb2 as pb
from netc.protos.generated import grpc_service_pb2_grpc as pb_grpc
from netc.serving.auth import parse_tokens
from netc.serving.client import RequestFailed, VisionClient
from netc.serving.server import BackgroundServer, ServerOptions

TOKEN = "user-token-3f9a1c"
ADMIN = "admin-token-77b2e0"
OTHER = "rotated-token-c41d9e"


# --- a throwaway PKI ----------------------------------------------------------------


def _name(text: str):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _issue(name: str, issuer=None, *, ca: bool = False):
    """(certificate, key) for `name`, signed by `issuer` (certificate, key) or by itself.
    Leaf certificates are valid for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(signer_cert.subject if signer_cert else _name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        addresses = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(addresses), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def _write(folder: Path, stem: str, cert, key) -> None:
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.crt signs server.crt and client.crt; other-ca.crt signs other-client.crt."""
    folder = tmp_path_factory.mktemp("pki")
    ca = _issue("netc test CA", ca=True)
    other = _issue("another CA", ca=True)
    _write(folder, "ca", *ca)
    _write(folder, "other-ca", *other)
    _write(folder, "server", *_issue("netc server", ca))
    _write(folder, "client", *_issue("netc client", ca))
    _write(folder, "other-client", *_issue("stranger", other))
    return folder


def _tokens(path: Path, *tokens: str) -> Path:
    path.write_text("# who may call\n\n" + "".join(f"  {t}\n" for t in tokens))
    return path


@pytest.fixture(scope="module")
def repo(repository, tmp_path_factory) -> Path:
    """lenet5 alone: quick to load."""
    root = tmp_path_factory.mktemp("secure") / "repo"
    shutil.copytree(repository / "lenet5", root / "lenet5")
    return root


def _options(**settings) -> ServerOptions:
    return ServerOptions(**{"host": "127.0.0.1", "port": 0, "metrics_port": None, **settings})


@pytest.fixture(scope="module")
def secure(repo, pki, tmp_path_factory):
    """TLS (no client certificates), tokens and admin tokens."""
    folder = tmp_path_factory.mktemp("tokens")
    server = BackgroundServer(
        repo,
        _options(
            tls_cert=pki / "server.crt",
            tls_key=pki / "server.key",
            auth_token_file=_tokens(folder / "tokens.txt", TOKEN),
            admin_token_file=_tokens(folder / "admin.txt", ADMIN),
        ),
    )
    yield server
    server.stop()


def _channel(server: BackgroundServer, ca: Path, cert: Path | None = None, key: Path | None = None):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(server.address, credentials)


def _bearer(token: str | None):
    return None if token is None else (("authorization", f"Bearer {token}"),)


def _code(call) -> grpc.StatusCode:
    """The status a call ends with (OK when it returns)."""
    try:
        result = call()
        if hasattr(result, "__next__"):  # a response stream: read it to its end
            list(result)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _infer_request() -> pb.ModelInferRequest:
    image = np.zeros((1, 1, 32, 32), np.float32)
    return pb.ModelInferRequest(
        model_name="lenet5",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="image", datatype="FP32", shape=[1, 1, 32, 32]
            )
        ],
        raw_input_contents=[image.tobytes()],
    )


# --- tokens ---------------------------------------------------------------------------


def test_token_file_format():
    assert parse_tokens("# comment\n\n  abc \n#x\ndef\n") == ["abc", "def"]


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("not-a-token", grpc.StatusCode.UNAUTHENTICATED),
        (TOKEN[:-1], grpc.StatusCode.UNAUTHENTICATED),
        (TOKEN, grpc.StatusCode.OK),
        (ADMIN, grpc.StatusCode.OK),  # an admin token passes everywhere
    ],
)
def test_every_call_but_health_needs_a_token(secure, pki, token, expected):
    with _channel(secure, pki / "ca.crt") as channel:
        triton = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = _bearer(token)
        calls = {
            "ServerLive": lambda: triton.ServerLive(pb.ServerLiveRequest(), metadata=metadata),
            "ModelInfer": lambda: triton.ModelInfer(_infer_request(), metadata=metadata),
            "ModelStreamInfer": lambda: triton.ModelStreamInfer(
                iter([_infer_request()]), metadata=metadata
            ),
            "reflection": lambda: reflection_pb2_grpc.ServerReflectionStub(
                channel
            ).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                metadata=metadata,
            ),
        }
        assert {name: _code(call) for name, call in calls.items()} == dict.fromkeys(calls, expected)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_refusals_say_what_is_missing_and_log_no_token(secure, pki, caplog):
    caplog.set_level(logging.DEBUG)  # the server's refusals are logged at debug
    with _channel(secure, pki / "ca.crt") as channel:
        triton = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as missing:
            triton.ServerReady(pb.ServerReadyRequest())
        with pytest.raises(grpc.RpcError) as wrong:
            triton.ServerReady(pb.ServerReadyRequest(), metadata=_bearer(OTHER))
        with pytest.raises(grpc.RpcError) as scheme:  # a Basic header is no token
            triton.ServerReady(pb.ServerReadyRequest(), metadata=(("authorization", TOKEN),))
        with pytest.raises(grpc.RpcError) as denied:
            request = pb.RepositoryModelUnloadRequest(model_name="lenet5")
            triton.RepositoryModelUnload(request, metadata=_bearer(TOKEN))
    assert "authorization: Bearer <token>" in missing.value.details()
    assert wrong.value.details() == "the bearer token is not valid on this server"
    assert scheme.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "refused UNAUTHENTICATED" in caplog.text and "refused PERMISSION_DENIED" in caplog.text
    for token in (TOKEN, OTHER, ADMIN):
        assert token not in caplog.text


def test_repository_control_needs_an_admin_token(secure, pki):
    with _channel(secure, pki / "ca.crt") as channel:
        triton = pb_grpc.GRPCInferenceServiceStub(channel)

        def load(token):
            request = pb.RepositoryModelLoadRequest(model_name="lenet5")
            return _code(lambda: triton.RepositoryModelLoad(request, metadata=_bearer(token)))

        def unload(token):
            request = pb.RepositoryModelUnloadRequest(model_name="lenet5")
            return _code(lambda: triton.RepositoryModelUnload(request, metadata=_bearer(token)))

        assert load(TOKEN) == unload(TOKEN) == grpc.StatusCode.PERMISSION_DENIED
        assert load(None) == unload("nope") == grpc.StatusCode.UNAUTHENTICATED
        assert load(ADMIN) == grpc.StatusCode.OK  # a reload of the served model
        with pytest.raises(grpc.RpcError) as denied:
            triton.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name="lenet5"), metadata=_bearer(TOKEN)
            )
        assert "needs an admin token" in denied.value.details()
        ready = triton.ModelReady(pb.ModelReadyRequest(name="lenet5"), metadata=_bearer(TOKEN))
        assert ready.ready  # the plain token's unload did nothing


def test_admin_tokens_alone_guard_repository_control_only(repo, tmp_path):
    server = BackgroundServer(repo, _options(admin_token_file=_tokens(tmp_path / "a", ADMIN)))
    try:
        with grpc.insecure_channel(server.address) as channel:
            triton = pb_grpc.GRPCInferenceServiceStub(channel)
            assert _code(lambda: triton.ModelInfer(_infer_request())) == grpc.StatusCode.OK
            unload = pb.RepositoryModelUnloadRequest(model_name="lenet5")
            assert (
                _code(lambda: triton.RepositoryModelUnload(unload))
                == grpc.StatusCode.UNAUTHENTICATED
            )
            load = pb.RepositoryModelLoadRequest(model_name="lenet5")
            assert (
                _code(lambda: triton.RepositoryModelLoad(load, metadata=_bearer(ADMIN)))
                == grpc.StatusCode.OK
            )
    finally:
        server.stop()


# --- TLS ------------------------------------------------------------------------------


def test_stock_tritonclient_with_tls_and_a_token(secure, pki):
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    headers = {"authorization": f"Bearer {TOKEN}"}
    with grpcclient.InferenceServerClient(
        secure.address, ssl=True, root_certificates=str(pki / "ca.crt")
    ) as client:
        assert client.is_server_ready(headers=headers)
        image = grpcclient.InferInput("image", [2, 1, 32, 32], "FP32")
        image.set_data_from_numpy(np.zeros((2, 1, 32, 32), np.float32))
        result = client.infer("lenet5", [image], headers=headers)
        assert result.as_numpy("fc3").shape == (2, 10)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("lenet5", [image])
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"


def test_vision_client_with_tls_and_a_token(secure, pki, tmp_path, monkeypatch):
    monkeypatch.delenv("NETC_TOKEN", raising=False)
    (tmp_path / "token").write_text(f"# mine\n{TOKEN}\n")
    with VisionClient(secure.address, tls_ca=pki / "ca.crt", token_file=tmp_path / "token") as c:
        assert len(c.classify([np.zeros((32, 32), np.uint8)], "lenet5", top_k=2)[0]) == 2
    monkeypatch.setenv("NETC_TOKEN", TOKEN)
    with VisionClient(secure.address, tls_ca=pki / "ca.crt") as client:
        assert [m.name for m in client.models()] == ["lenet5"]
    monkeypatch.delenv("NETC_TOKEN")
    with VisionClient(secure.address, tls_ca=pki / "ca.crt") as client:
        with pytest.raises(RequestFailed) as refused:
            client.models()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "--token-file" in str(refused.value)


def test_a_client_trusting_another_ca_is_refused(secure, pki):
    with VisionClient(secure.address, tls_ca=pki / "other-ca.crt", token=TOKEN) as client:
        with pytest.raises(RequestFailed) as refused:
            client.models()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert "--tls-ca must be the CA that signed the server's certificate" in str(refused.value)


def test_a_plain_text_client_is_refused_by_a_tls_server(secure):
    with VisionClient(secure.address, token=TOKEN, timeout=10) as client:
        with pytest.raises(RequestFailed) as refused:
            client.models()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert "if the server uses TLS, give its CA with --tls-ca" in str(refused.value)


def test_a_tls_client_is_told_when_the_server_is_plain_text(pki, repo):
    server = BackgroundServer(repo, _options())
    try:
        with VisionClient(server.address, tls_ca=pki / "ca.crt", timeout=10) as client:
            with pytest.raises(RequestFailed) as refused:
                client.models()
    finally:
        server.stop()
    assert "the server does not speak TLS" in str(refused.value)


@pytest.fixture(scope="module")
def mutual(repo, pki):
    server = BackgroundServer(
        repo,
        _options(
            tls_cert=pki / "server.crt",
            tls_key=pki / "server.key",
            tls_client_ca=pki / "ca.crt",
        ),
    )
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        (None, grpc.StatusCode.UNAVAILABLE),  # no certificate: refused at the handshake
        ("other-client", grpc.StatusCode.UNAVAILABLE),  # signed by another CA
        ("client", grpc.StatusCode.OK),
    ],
)
def test_mutual_tls_needs_a_client_certificate_from_the_ca(mutual, pki, stem, expected):
    cert = key = None
    if stem:
        cert, key = pki / f"{stem}.crt", pki / f"{stem}.key"
    with _channel(mutual, pki / "ca.crt", cert, key) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert _code(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)) == expected


def test_vision_client_with_a_client_certificate(mutual, pki):
    with VisionClient(
        mutual.address,
        tls_ca=pki / "ca.crt",
        tls_cert=pki / "client.crt",
        tls_key=pki / "client.key",
    ) as client:
        assert [m.name for m in client.models()] == ["lenet5"]
    with VisionClient(mutual.address, tls_ca=pki / "ca.crt", timeout=10) as client:
        with pytest.raises(RequestFailed) as refused:
            client.models()
    assert "give --tls-cert and --tls-key" in str(refused.value)


def test_the_metrics_port_gets_the_same_tls(repo, pki):
    server = BackgroundServer(
        repo,
        _options(
            metrics_port=0,
            tls_cert=pki / "server.crt",
            tls_key=pki / "server.key",
            tls_client_ca=pki / "ca.crt",
        ),
    )
    url = f"https://127.0.0.1:{server.running.metrics_port}/metrics"
    try:
        trusting = ssl.create_default_context(cafile=pki / "ca.crt")
        with pytest.raises(OSError):  # no client certificate: refused at the handshake
            urllib.request.urlopen(url, context=trusting, timeout=10).read()
        with pytest.raises(OSError):  # plain HTTP
            urllib.request.urlopen(url.replace("https:", "http:"), timeout=10).read()
        trusting.load_cert_chain(pki / "client.crt", pki / "client.key")
        with urllib.request.urlopen(url, context=trusting, timeout=10) as answer:
            assert answer.status == 200 and b"nv_model_ready" in answer.read()
    finally:
        server.stop()


# --- netc serve and netc infer as a user runs them ----------------------------------------

# --no-http: these servers run beside others (tests/serving/http/ tests the REST port)
SERVE = [sys.executable, "-m", "netc", "serve", "--no-http", "--repository"]


def _start(repo: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [*SERVE, str(repo), "--host", "127.0.0.1", "--port", "0", "--no-metrics", *flags],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if match := re.search(r"netc serving gRPC on ([\d.]+:\d+)", line):
            return process, match.group(1)
    process.kill()
    raise AssertionError("netc serve did not start:\n" + "".join(lines))


def _wait_for_line(process: subprocess.Popen, text: str) -> list[str]:
    lines = []
    while line := process.stderr.readline():
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"no line with {text!r}:\n" + "".join(lines))


def test_sighup_reloads_the_token_file_and_tokens_are_never_logged(repo, pki, tmp_path):
    tokens = _tokens(tmp_path / "tokens.txt", TOKEN)
    process, address = _start(
        repo,
        "--tls-cert",
        str(pki / "server.crt"),
        "--tls-key",
        str(pki / "server.key"),
        "--auth-token-file",
        str(tokens),
    )
    try:
        output = []
        with _channel_to(address, pki / "ca.crt") as channel:
            triton = pb_grpc.GRPCInferenceServiceStub(channel)

            def live(token):
                return _code(
                    lambda: triton.ServerLive(pb.ServerLiveRequest(), metadata=_bearer(token))
                )

            assert live(TOKEN) == grpc.StatusCode.OK
            assert live(OTHER) == grpc.StatusCode.UNAUTHENTICATED
            _tokens(tokens, OTHER)
            process.send_signal(signal.SIGHUP)
            output += _wait_for_line(process, "1 token reloaded")
            assert live(OTHER) == grpc.StatusCode.OK
            assert live(TOKEN) == grpc.StatusCode.UNAUTHENTICATED
            tokens.write_text("# nobody\n")  # a mistake: the tokens held stay
            process.send_signal(signal.SIGHUP)
            output += _wait_for_line(process, "tokens not reloaded, 1 kept")
            assert live(OTHER) == grpc.StatusCode.OK

        tokens.write_text(f"{OTHER}\n")
        token_file = tmp_path / "mine"
        token_file.write_text(f"{OTHER}\n")
        picture = Path(__file__).parents[2] / "examples" / "images" / "three.png"
        infer = [sys.executable, "-m", "netc", "infer", "--model", "lenet5", str(picture)]
        infer += ["--url", address, "--tls-ca", str(pki / "ca.crt")]
        environment = {**os.environ, "NETC_TOKEN": "wrong"}
        done = subprocess.run(
            [*infer, "--token-file", str(token_file)],
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{picture}: ")
        refused = subprocess.run(
            infer, capture_output=True, text=True, timeout=120, env=environment
        )
        assert refused.returncode == 2
        assert "UNAUTHENTICATED: the bearer token is not valid" in refused.stderr
        assert "wrong" not in refused.stderr.replace("is not valid", "")
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    log = "".join(output) + (rest or "")
    assert "Traceback" not in log
    for token in (TOKEN, OTHER, "wrong"):
        assert token not in log


def _channel_to(address: str, ca: Path):
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.secure_channel(address, credentials)


# --- mistakes in the flags: exit 2, one line naming the file, nothing started -------------


@pytest.fixture
def files(pki, tmp_path) -> dict[str, Path]:
    (tmp_path / "empty.txt").write_text("# no token yet\n\n")
    (tmp_path / "tokens.txt").write_text(f"{TOKEN}\n")
    (tmp_path / "spaced.txt").write_text("two words\n")
    return {
        "cert": pki / "server.crt",
        "key": pki / "server.key",
        "other_key": pki / "client.key",
        "missing": tmp_path / "missing.pem",
        "folder": tmp_path,
        "empty": tmp_path / "empty.txt",
        "tokens": tmp_path / "tokens.txt",
        "spaced": tmp_path / "spaced.txt",
    }


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--tls-cert", "{missing}", "--tls-key", "{key}"], "--tls-cert {missing}: cannot read"),
        (["--tls-cert", "{cert}", "--tls-key", "{folder}"], "--tls-key {folder}: cannot read"),
        (["--tls-cert", "{key}", "--tls-key", "{key}"], "--tls-cert {key}: not a PEM certificate"),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{other_key}"],
            "--tls-key {other_key} is not the private key of --tls-cert {cert}",
        ),
        (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
        (
            ["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{missing}"],
            "--tls-client-ca {missing}: cannot read",
        ),
        (["--tls-client-ca", "{cert}"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--auth-token-file", "{missing}"], "--auth-token-file {missing}: cannot read"),
        (["--auth-token-file", "{folder}"], "--auth-token-file {folder}: cannot read"),
        (["--auth-token-file", "{empty}"], "--auth-token-file {empty}: no token in the file"),
        (["--auth-token-file", "{spaced}"], "token 1 holds a space"),
        (
            ["--auth-token-file", "{tokens}", "--admin-token-file", "{empty}"],
            "--admin-token-file {empty}: no token",
        ),
    ],
)
def test_bad_security_flags_are_one_line_errors(repo, files, flags, says, capsys):
    given = [flag.format(**files) for flag in flags]
    assert main(["serve", "--repository", str(repo), "--port", "0", "--no-metrics", *given]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: "), error
    assert says.format(**files) in error
    assert "two words" not in error


def test_infer_flag_mistakes_name_the_file(files, capsys):
    picture = Path(__file__).parents[2] / "examples" / "images" / "three.png"
    for flags, says in (
        (["--tls-ca", str(files["missing"])], f"--tls-ca {files['missing']}: cannot read"),
        (["--token-file", str(files["empty"])], f"--token-file {files['empty']}: no token"),
        (["--tls-cert", str(files["cert"])], "--tls-cert and --tls-key go together"),
    ):
        assert main(["infer", "--model", "m", str(picture), *flags]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and says in error, error
