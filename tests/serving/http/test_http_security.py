"""Tokens and TLS on the REST port: gRPC's token files and rules, gRPC's certificate;
and HTTP inferences counted in the same Prometheus metrics as gRPC's."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import shutil
import ssl
import urllib.error
import urllib.request

import numpy as np
import pytest

from netc.serving.metrics import render
from netc.serving.server import BackgroundServer, ServerOptions

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

# tritonclient.http's __del__ closes the client again, which fails when the garbage
# collector runs it on another thread (a server's): clients are kept until exit.
KEPT: list = []

TOKEN = "user-token-5d1e"
ADMIN = "admin-token-9a0c"


def _self_signed(folder):
    """server.crt (for 127.0.0.1 and localhost, signing itself) and server.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "netc test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    addresses = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(addresses), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "server.crt", folder / "server.key"


@pytest.fixture(scope="module")
def secure(http_repo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("https")
    root = folder / "repo"
    shutil.copytree(http_repo / "lenet5", root / "lenet5")
    cert, key = _self_signed(folder)
    (folder / "tokens.txt").write_text(f"# who may call\n{TOKEN}\n")
    (folder / "admin.txt").write_text(f"{ADMIN}\n")
    options = ServerOptions(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        http_port=0,
        tls_cert=cert,
        tls_key=key,
        auth_token_file=folder / "tokens.txt",
        admin_token_file=folder / "admin.txt",
    )
    server = BackgroundServer(root, options)
    yield server, cert
    server.stop()


def _call(secure, path, token=None, method="GET", body=None):
    server, cert = secure
    context = ssl.create_default_context(cafile=str(cert))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        f"https://127.0.0.1:{server.running.http_port}{path}",
        data=body if body is not None else (b"" if method == "POST" else None),
        headers=headers,
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:
            return answer.status, answer.read(), answer.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def _error(answer) -> str:
    return json.loads(answer[1])["error"]


def test_health_and_the_page_are_open_the_rest_needs_a_token(secure):
    assert _call(secure, "/v2/health/live")[0] == 200
    assert _call(secure, "/v2/health/ready")[0] == 200
    assert _call(secure, "/")[0] == 200
    missing = _call(secure, "/v2/models/lenet5")
    assert missing[0] == 401 and missing[2]["WWW-Authenticate"] == "Bearer"
    assert "send the header 'Authorization: Bearer <token>'" in _error(missing)
    wrong = _call(secure, "/v2/models/lenet5", token="guess")
    assert (wrong[0], _error(wrong)) == (401, "the bearer token is not valid on this server")
    assert _call(secure, "/v2/models/lenet5", token=TOKEN)[0] == 200
    assert _call(secure, "/v2/models/lenet5", token=ADMIN)[0] == 200  # admin tokens pass too
    assert _call(secure, "/v2/vision/models")[0] == 401


def test_repository_control_needs_an_admin_token(secure):
    plain = _call(secure, "/v2/repository/models/lenet5/load", TOKEN, "POST")
    assert plain[0] == 403 and "load needs an admin token" in _error(plain)
    assert _call(secure, "/v2/repository/models/lenet5/unload", None, "POST")[0] == 401
    assert _call(secure, "/v2/repository/models/lenet5/load", ADMIN, "POST")[0] == 200
    assert _call(secure, "/v2/repository/index", TOKEN, "POST")[0] == 200  # reading is not control


def test_stock_tritonclient_http_over_tls_with_a_token(secure):
    server, cert = secure
    url = f"127.0.0.1:{server.running.http_port}"
    options = {"ca_certs": str(cert)}
    client = httpclient.InferenceServerClient(url, ssl=True, ssl_options=options)
    KEPT.append(client)
    image = np.zeros((1, 1, 32, 32), np.float32)
    tensor = httpclient.InferInput("image", [1, 1, 32, 32], "FP32")
    tensor.set_data_from_numpy(image)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("lenet5", [tensor])
    assert refused.value.status() == "401"
    result = client.infer("lenet5", [tensor], headers={"Authorization": f"Bearer {TOKEN}"})
    assert result.as_numpy("fc3").shape == (1, 10)


def _successes(text: str) -> float:
    match = re.search(
        r'^nv_inference_request_success\{model="lenet5",version="1"\} (\S+)$', text, re.M
    )
    return float(match.group(1)) if match else 0.0


def test_http_inferences_land_in_the_prometheus_metrics(secure):
    server, _ = secure
    before = _successes(render(server.running.repository))
    body = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [1, 1, 32, 32], "datatype": "FP32", "data": [0] * 1024}
            ]
        }
    ).encode()
    for _ in range(3):
        assert _call(secure, "/v2/models/lenet5/infer", TOKEN, "POST", body)[0] == 200
    assert _successes(render(server.running.repository)) == before + 3


def test_readme_security_curl_example(secure, tmp_path):
    """README's Security section's curl line, run with its files (ca.crt, tokens.txt) in
    place; only the port and the model (lenet5 here) change."""
    import subprocess
    from pathlib import Path

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed here")
    server, cert = secure
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("### Security", 1)[1].split("\n## ", 1)[0]
    (line,) = [x for x in section.splitlines() if x.startswith("curl ") and "8000" in x]
    shutil.copy(cert, tmp_path / "ca.crt")  # self-signed: its own CA
    (tmp_path / "tokens.txt").write_text(f"{TOKEN}\n")
    command = line.replace("localhost:8000", f"localhost:{server.running.http_port}")
    done = subprocess.run(
        ["bash", "-c", command.replace("/models/digits", "/models/lenet5") + " --fail-with-body"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert json.loads(done.stdout)["name"] == "lenet5"
