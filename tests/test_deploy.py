"""deploy/: every manifest parses, and the fields that matter agree with the server.

No cluster and no image build here: the manifests are read with PyYAML, Kubernetes'
own kinds are checked field by field against the Kubernetes Python client's models
(a misspelt field fails), container command lines are parsed with netc's own
argument parser, and what the probes ask is asked of a real server on loopback.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
import yaml

from netc.cli import build_parser
from netc.serving.server import LIVENESS, BackgroundServer, ServerOptions

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
GRPC_PORT, METRICS_PORT = 8001, 8002  # netc serve's defaults, Triton's ports
HTTP_PORT = 8000  # Triton's REST port, netc serve's --http-port default


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((str(path.relative_to(ROOT)), doc))
    return docs


DOCS = _documents()


def _one(kind: str) -> dict:
    (doc,) = [doc for _, doc in DOCS if doc["kind"] == kind]
    return doc


def _serve_args(argv: list[str]):
    """netc serve's options from a container's command line, parsed as netc parses it."""
    assert argv[0] == "netc", argv
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve", argv
    return args


def _container_argv(container: dict) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def test_every_manifest_names_its_kind():
    kinds = sorted(doc["kind"] for _, doc in DOCS)
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "InferenceService",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "ServingRuntime",
    ]
    for path, doc in DOCS:
        assert doc["apiVersion"] and doc["metadata"]["name"], path


# Kubernetes' own kinds, field by field.


def _model_problems(value, kind: str, where: str) -> list[str]:
    """Where `value` does not fit the Kubernetes client's model `kind` ('V1Deployment',
    'List[V1Container]', 'Dict[str, str]', 'int', ...): unknown fields, wrong types."""
    from kubernetes import client

    if kind.startswith("List["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        inner = kind[5:-1]
        return [
            p for i, item in enumerate(value) for p in _model_problems(item, inner, f"{where}[{i}]")
        ]
    if kind.startswith("Dict["):
        inner = kind[5:-1].split(", ", 1)[1]
        return [
            p for k, item in value.items() for p in _model_problems(item, inner, f"{where}.{k}")
        ]
    model = getattr(client, kind, None)
    if model is not None and hasattr(model, "attribute_map"):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping ({kind})"]
        fields = {json_name: name for name, json_name in model.attribute_map.items()}
        problems = []
        for key, item in value.items():
            if key not in fields:
                problems.append(f"{where}.{key}: not a field of {kind}")
            else:
                problems += _model_problems(
                    item, model.openapi_types[fields[key]], f"{where}.{key}"
                )
        return problems
    types = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    wanted = types.get(kind)
    if wanted is None or (isinstance(value, wanted) and not (kind == "int" and value is True)):
        return []
    return [f"{where}: {value!r} is not a {kind}"]


@pytest.mark.parametrize(
    ("path", "doc"),
    [(path, doc) for path, doc in DOCS if "kserve" not in doc["apiVersion"]],
    ids=lambda x: x if isinstance(x, str) else x["kind"],
)
def test_kubernetes_manifests_use_only_real_fields(path, doc):
    pytest.importorskip("kubernetes.client")
    version = doc["apiVersion"].rsplit("/", 1)[-1]
    kind = f"{version.capitalize()}{doc['kind']}"
    assert _model_problems(doc, kind, doc["kind"]) == [], path


def test_the_model_checker_catches_a_misspelt_field():
    pytest.importorskip("kubernetes.client")
    deployment = json.loads(json.dumps(_one("Deployment")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    container["livenessProbe"]["grpc"]["port"] = "8001"
    problems = sorted(_model_problems(deployment, "V1Deployment", "Deployment"))
    where = "Deployment.spec.template.spec.containers[0]"
    assert problems == [
        f"{where}.livenessProbe.grpc.port: '8001' is not a int",
        f"{where}.readinesProbe: not a field of V1Container",
    ]


# The Deployment and its Services.


def _pod() -> tuple[dict, dict]:
    template = _one("Deployment")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return template, container


def test_the_deployment_runs_netc_serve_on_its_ports():
    _, container = _pod()
    args = _serve_args(_container_argv(container))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (args.port, args.metrics_port) == (ports["grpc"], ports["metrics"])
    assert (args.port, args.metrics_port) == (GRPC_PORT, METRICS_PORT)
    assert args.http_port == ports["http"] == HTTP_PORT and not args.no_http
    assert not args.no_metrics


def test_probes_ask_the_health_service_on_the_grpc_port():
    _, container = _pod()
    args = _serve_args(_container_argv(container))
    ready, alive = container["readinessProbe"]["grpc"], container["livenessProbe"]["grpc"]
    assert ready["port"] == alive["port"] == args.port
    assert ready.get("service", "") == ""  # every model served
    assert alive["service"] == LIVENESS  # the process answers


def test_the_repository_is_a_read_only_volume():
    template, container = _pod()
    args = _serve_args(_container_argv(container))
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(args.repository)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in template["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]
    assert (
        claim["readOnly"] is True
        and claim["claimName"] == _one("PersistentVolumeClaim")["metadata"]["name"]
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]]  # the server's temp file


def test_resources_are_requested():
    _, container = _pod()
    requests = container["resources"]["requests"]
    assert set(requests) == {"cpu", "memory"}


def test_the_services_reach_the_pods_ports():
    template, container = _pod()
    labels = template["metadata"]["labels"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    services = [doc for _, doc in DOCS if doc["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert named[port["targetPort"]] == port["port"]
    (main,) = [s for s in services if s["spec"].get("clusterIP") != "None"]
    assert {p["name"]: p["port"] for p in main["spec"]["ports"]} == {
        "grpc": GRPC_PORT,
        "http": HTTP_PORT,
        "metrics": METRICS_PORT,
    }


def test_the_autoscaler_scales_the_deployment():
    hpa, deployment = _one("HorizontalPodAutoscaler"), _one("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    _, container = _pod()  # utilisation is measured against the request
    metric = hpa["spec"]["metrics"][0]["resource"]["name"]
    assert metric in container["resources"]["requests"]


# KServe.


def test_the_serving_runtime_serves_onnx_over_grpc_v2_on_8001():
    runtime = _one("ServingRuntime")["spec"]
    assert [f["name"] for f in runtime["supportedModelFormats"]] == ["onnx"]
    assert runtime["protocolVersions"] == ["grpc-v2"]
    (container,) = runtime["containers"]
    args = _serve_args(_container_argv(container))
    assert str(args.repository) == "/mnt/models"  # where KServe's storage initializer puts it
    (port,) = container["ports"]  # KServe routes one port: gRPC's, and REST is off
    assert (port["name"], port["containerPort"], args.port) == ("h2c", GRPC_PORT, GRPC_PORT)
    assert args.no_http
    assert container["readinessProbe"]["grpc"]["port"] == args.port
    assert container["livenessProbe"]["grpc"] == {"port": args.port, "service": LIVENESS}
    assert _one("ServingRuntime")["spec"]["annotations"]["prometheus.kserve.io/port"] == str(
        args.metrics_port
    )


def test_the_inference_service_uses_the_runtime():
    service, runtime = _one("InferenceService"), _one("ServingRuntime")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] == "onnx"
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    # Knative refuses gRPC probes: the runtime's need KServe's RawDeployment mode
    mode = service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert mode == "RawDeployment"


# The Dockerfiles.


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_the_image_runs_netc_serve(name):
    steps = _instructions(DEPLOY / name)
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    entrypoint = [json.loads(arg) for op, arg in final if op == "ENTRYPOINT"][-1]
    cmd = [json.loads(arg) for op, arg in final if op == "CMD"][-1]
    args = _serve_args([*entrypoint, *cmd])
    exposed = {int(p) for op, arg in final if op == "EXPOSE" for p in arg.split()}
    assert exposed == {args.port, args.http_port, args.metrics_port}
    assert exposed == {GRPC_PORT, HTTP_PORT, METRICS_PORT} and not args.no_http
    assert any(op == "USER" for op, _ in final)  # not root
    for op, arg in steps:
        if op == "COPY" and not arg.startswith("--from"):
            source = shlex.split(arg)[0]
            assert source == "." or (ROOT / source).exists(), arg
    ignore = (DEPLOY / f"{name}.dockerignore").read_text()
    for needed in (
        "pyproject.toml",
        "README.md",
        "netc",
        "serving",
        "deploy/requirements-serve.txt",
    ):
        assert f"!{needed}\n" in ignore, needed


def _name(requirement: str) -> str:
    return re.split(r"[=<>~!\[;\s]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _installed() -> set[str]:
    """requirements-serve.txt's packages, the Dockerfile's onnxruntime and netc, and what
    pip installs with them (their own requirements, as this environment's metadata says)."""
    lines = (DEPLOY / "requirements-serve.txt").read_text().splitlines()
    wanted = [_name(line) for line in lines if line.strip() and not line.startswith("#")]
    wanted += ["onnxruntime", "onnxruntime-gpu", "netc"]
    found: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in found:
            continue
        found.add(name)
        if name == "netc":
            continue  # installed with --no-deps
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        wanted += [_name(r) for r in requires if "extra ==" not in r]
    return found


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    from netc.cli import main

    root = tmp_path_factory.mktemp("deploy_repo")
    assert (
        main(["export", "lenet5", "--repository", str(root), "--name", "lenet5", "--no-verify"])
        == 0
    )
    return root


IMAGE_SERVER = textwrap.dedent(
    """
    import importlib.abc, importlib.metadata, json, sys
    from pathlib import Path

    allowed = set(json.loads(sys.argv[2]))
    dists = importlib.metadata.packages_distributions()

    class OnlyTheImagesPackages(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in dists and not any(d.lower().replace("_", "-") in allowed for d in dists[top]):
                raise ModuleNotFoundError(f"No module named {top!r} (not in the image)", name=top)
            return None

    sys.meta_path.insert(0, OnlyTheImagesPackages())
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from netc.serving.server import BackgroundServer, ServerOptions

    options = ServerOptions(host="127.0.0.1", port=0, metrics_port=0)
    server = BackgroundServer(Path(sys.argv[1]), options)
    with grpc.insecure_channel(server.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    server.stop()
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    """
)


def test_the_server_runs_on_the_images_packages_alone(repository):
    """A server (gRPC, metrics, a model loaded and warmed) in a fresh interpreter that can
    import only what the image installs (requirements-serve.txt, onnxruntime, netc and their
    dependencies): it starts and reports SERVING, so the image, which has nothing else,
    does too. A package it needs beyond them fails here, by name."""
    allowed = sorted(_installed())
    done = subprocess.run(
        [sys.executable, "-c", IMAGE_SERVER, str(repository), json.dumps(allowed)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (
        f"netc serve needs a package deploy/requirements-serve.txt does not install:\n"
        f"{done.stderr[-3000:]}"
    )
    assert done.stdout.split()[-1] == "SERVING"


# What the probes ask, asked of a real server.


def test_liveness_holds_while_readiness_waits_for_every_model(repository, tmp_path):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    root = tmp_path / "repo"
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not a model")
    server = BackgroundServer(root, ServerOptions(host="127.0.0.1", port=0, metrics_port=None))
    try:
        with grpc.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest
            assert (
                health.Check(check(service="")).status == health_pb2.HealthCheckResponse.NOT_SERVING
            )
            assert (
                health.Check(check(service=LIVENESS)).status
                == health_pb2.HealthCheckResponse.SERVING
            )
    finally:
        server.stop()


# README's section on replicas.


def _replicas_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Running replicas")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_readme_commands_name_real_files_and_real_options():
    section = _replicas_section()
    for path in set(re.findall(r"\bdeploy/[\w./-]+\w", section)):
        assert (ROOT / path).exists(), path
    commands = [
        line.strip().removeprefix("$ ")
        for block in re.findall(r"```(?:sh|bash)?\n(.*?)```", section, re.S)
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("netc ")
    ]
    assert commands, "the section shows netc commands"
    for command in commands:
        build_parser().parse_args(shlex.split(command, comments=True)[1:])
