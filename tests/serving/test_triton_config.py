"""Triton's config.pbtxt both ways: netc export writes one Triton reads, netc serve reads
a Triton user's, and both agree with what the ModelConfig RPC reports."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from netc.errors import UserError
from netc.model_card import LABELS
from netc.protos.generated import model_config_pb2
from netc.serving import triton_config
from netc.serving.config import ModelConfig, load_config
from netc.serving.server import BackgroundServer, ServerOptions

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as triton_pb2  # noqa: E402 (Triton's own)

CLASSES = ["cat", "dog", "no", "bird"]  # "no": YAML would read it as false; text does not


def _pbtxt(folder, proto_module=model_config_pb2):
    return text_format.Parse((folder / "config.pbtxt").read_text(), proto_module.ModelConfig())


def _doubler() -> onnx.ModelProto:
    """OUTPUT0 = 2·INPUT0, [N, 4] → [N, 4]: a model as another tool writes it (no card)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT0", "two"], ["OUTPUT0"])],
        "doubler",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


TRITON_CONFIG = """
# As a Triton user writes it: some settings netc uses, some it does not.
name: "doubler"
backend: "onnxruntime"
max_batch_size: 8
version_policy: { all { } }
input [
  { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] }
]
output [
  { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ], label_filename: "classes.txt" }
]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
  preserve_ordering: true
  default_queue_policy { max_queue_size: 32 }
}
instance_group [ { count: 2, kind: KIND_CPU }, { count: 1, kind: KIND_GPU, gpus: [ 0 ] } ]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
parameters { key: "execution_mode" value { string_value: "0" } }
optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
model_warmup [ { name: "zeros", batch_size: 1, inputs { key: "INPUT0" value {
  data_type: TYPE_FP32, dims: [ 4 ], zero_data: true } } } ]
"""


@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory):
    """A Triton user's repository: doubler (versions 1 and 2, config.pbtxt, classes.txt)."""
    root = tmp_path_factory.mktemp("triton_repo")
    folder = root / "doubler"
    for version in ("1", "2"):
        (folder / version).mkdir(parents=True)
        onnx.save(_doubler(), folder / version / "model.onnx")
    (folder / "config.pbtxt").write_text(TRITON_CONFIG)
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in CLASSES))
    return root


# Written by netc export.


@pytest.mark.parametrize("name", ["lenet5", "tinyseg"])
def test_export_writes_a_config_triton_parses(repository, name):
    ours, theirs = _pbtxt(repository / name), _pbtxt(repository / name, triton_pb2)
    assert text_format.MessageToString(ours) == text_format.MessageToString(theirs)
    assert (ours.name, ours.platform, ours.backend) == (name, "onnxruntime_onnx", "onnxruntime")
    assert ours.max_batch_size == 16
    assert ours.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert ours.dynamic_batching.max_queue_delay_microseconds == 1000  # auto's longest wait
    assert ours.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert ours.parameters[triton_config.AUTO_DELAY].string_value == "auto"
    (image,) = ours.input
    dims = {"lenet5": [1, 32, 32], "tinyseg": [3, -1, -1]}[name]
    assert (image.name, image.data_type, list(image.dims)) == (
        "image",
        model_config_pb2.TYPE_FP32,
        dims,
    )
    assert image.format == model_config_pb2.ModelInput.FORMAT_NCHW  # Triton's image clients
    assert [o.label_filename for o in ours.output] == [""]  # untrained: no class names
    assert [g.count for g in ours.instance_group] == [1]


def test_export_config_is_what_the_server_reports(repository):
    """The ModelConfig RPC and config.pbtxt come from one function: they differ only in
    where the instances run, which only the running server knows."""
    server = BackgroundServer(
        repository, ServerOptions(host="127.0.0.1", port=0, metrics_port=None)
    )
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            for name in ("lenet5", "tinyseg"):
                reported = client.get_model_config(name).config
                (group,) = reported.instance_group
                assert (group.name, group.kind) == (f"{name}_0", group.KIND_CPU)
                group.ClearField("name")
                group.ClearField("kind")
                written = _pbtxt(repository / name, triton_pb2)
                assert text_format.MessageToString(reported) == text_format.MessageToString(written)
    finally:
        server.stop()


def test_netc_reads_back_what_export_wrote(repository):
    """A netc repository serves as before config.pbtxt existed: the defaults, with the
    layout the model card already gave."""
    for name in ("lenet5", "tinyseg"):
        config = load_config(repository / name)
        assert config.source.endswith(f"{name}/config.pbtxt")
        assert config == replace(ModelConfig(), input_format="NCHW")


def _with_labels(model_path, labels) -> bytes:
    model = onnx.load(model_path)
    model.metadata_props.add(key=LABELS, value=str(list(labels)).replace("'", '"'))
    return model.SerializeToString()


def test_a_classifier_gets_a_labels_file(repository, tmp_path):
    folder = tmp_path / "digits"
    files, note = triton_config.export_files(
        folder, "1", _with_labels(repository / "lenet5" / "1" / "model.onnx", range(10))
    )
    assert note == "" and sorted(files) == ["config.pbtxt", "labels.txt"]
    assert files["labels.txt"].splitlines() == [str(i) for i in range(10)]
    config = text_format.Parse(files["config.pbtxt"], triton_pb2.ModelConfig())
    assert [o.label_filename for o in config.output] == ["labels.txt"]
    assert config.name == "digits"


def test_export_keeps_a_config_already_there(repository, tmp_path):
    folder = tmp_path / "repo" / "lenet5"
    shutil.copytree(repository / "lenet5", folder)
    model = (folder / "1" / "model.onnx").read_bytes()
    assert triton_config.export_files(folder, "2", model) == ({}, "")
    text = (folder / "config.pbtxt").read_text().replace("dims: 10", "dims: 12")
    (folder / "config.pbtxt").write_text(text)
    files, note = triton_config.export_files(folder, "2", model)
    assert files == {} and "kept" in note and "other inputs or outputs than version 2" in note


def test_export_repository_writes_config_pbtxt(tmp_path, capsys):
    from netc.cli import main

    root = tmp_path / "repo"
    assert main(["export", "lenet5", "--repository", str(root), "--name", "a", "--no-verify"]) == 0
    assert f"wrote {root / 'a' / 'config.pbtxt'}" in capsys.readouterr().out
    assert _pbtxt(root / "a").name == "a"
    before = (root / "a" / "config.pbtxt").read_text()
    assert main(["export", "lenet5", "--repository", str(root), "--name", "a", "--no-verify"]) == 0
    assert "config.pbtxt" not in capsys.readouterr().out  # version 2 keeps it
    assert (root / "a" / "config.pbtxt").read_text() == before
    assert (root / "a" / "2" / "model.onnx").is_file()


def test_config_yaml_settings_go_into_config_pbtxt(repository, tmp_path):
    """Export writes what netc would serve: config.yaml's settings, in Triton's words."""
    folder = tmp_path / "lenet5"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        "max_batch_size: 8\ndynamic_batching: {max_queue_delay_us: 200, preferred_batch_sizes: "
        "[2, 4]}\ninstances: 2\nintra_op_threads: 1\nversion_policy: [1]\n"
    )
    files, _ = triton_config.export_files(
        folder, "1", (repository / "lenet5" / "1" / "model.onnx").read_bytes()
    )
    config = text_format.Parse(files["config.pbtxt"], triton_pb2.ModelConfig())
    assert config.max_batch_size == 8 and [g.count for g in config.instance_group] == [2]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 200
    assert triton_config.AUTO_DELAY not in config.parameters
    assert config.parameters["intra_op_thread_count"].string_value == "1"
    assert list(config.version_policy.specific.versions) == [1]
    (folder / "config.pbtxt").write_text(files["config.pbtxt"])
    (folder / "config.yaml").unlink()
    assert load_config(folder) == replace(load_config_yaml_twin(), input_format="NCHW")


def load_config_yaml_twin() -> ModelConfig:
    return ModelConfig(
        max_batch_size=8,
        max_queue_delay_us=200,
        preferred_batch_sizes=(2, 4),
        instances=2,
        intra_op_threads=1,
        version_policy=(1,),
    )


# Read by netc serve.


def test_a_triton_config_becomes_netc_settings(triton_repo, caplog, monkeypatch):
    monkeypatch.setattr(triton_config, "_told", set())
    caplog.set_level(logging.WARNING, logger="netc.serving")
    config = triton_config.read_config(triton_repo / "doubler" / "config.pbtxt")
    assert config == ModelConfig(
        max_batch_size=8,
        dynamic_batching=True,
        max_queue_delay_us=500,
        preferred_batch_sizes=(4, 8),
        max_queue_size=32,
        instances=3,
        intra_op_threads=1,
        labels=tuple(CLASSES),
        version_policy="all",
    )
    ignored = (  # in the order of Triton's field numbers
        "instance_group.gpus, dynamic_batching.preserve_ordering, optimization, model_warmup, "
        "parameters.execution_mode, instance_group.kind"
    )
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.endswith(f"sets Triton settings netc does not use, ignored: {ignored}"), line
    caplog.clear()
    assert load_config(triton_repo / "doubler") == config  # once a file: not again
    assert not caplog.records


def test_config_yaml_wins_over_config_pbtxt(triton_repo, tmp_path):
    folder = tmp_path / "doubler"
    shutil.copytree(triton_repo / "doubler", folder)
    (folder / "config.yaml").write_text("max_batch_size: 2\n")
    assert load_config(folder) == ModelConfig(max_batch_size=2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "other"', ":1:1: the configuration names model 'other', but its folder is 'm'"),
        ('platform: "tensorrt_plan"', ":1:1: platform 'tensorrt_plan': netc serves ONNX models"),
        ('backend: "python"', ":1:1: backend 'python'"),
        ("max_batch_size: 4\nsequence_batching {}", ":2:1: sequence_batching: netc does not"),
        ("ensemble_scheduling {}", "netc does not serve ensemble models"),
        ('default_model_filename: "m.onnx"', "hint: rename the files to model.onnx"),
        ("max_batch_size: -1", ":1:1: max_batch_size must be 0 or more, found -1"),
        ("instance_group [{ count: -2 }]", ":1:19: instance_group count must be 1 or more"),
        ("dynamic_batching { max_queue_delay_microseconds: 70000000 }", "more than a minute"),
        ("dynamic_batching { preferred_batch_size: [0] }", "must be positive, found [0]"),
        ('output [{ name: "y", label_filename: "../x" }]', "must be in the model's folder"),
        ('output [{ name: "y", label_filename: "gone.txt" }]', "cannot read label_filename"),
        ('parameters { key: "intra_op_thread_count" value { string_value: "two" } }', "'two'"),
        ("version_policy { specific { } }", "needs versions 1 or above"),
        ("max_batch_size: 4\nmax_batch_sise: 4", ":2:1: not a Triton model configuration: "),
        ("max_batch_size: four", ":1:17: not a Triton model configuration: "),
    ],
)
def test_what_netc_cannot_serve_is_refused_at_its_line(tmp_path, text, message):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.pbtxt").write_text(text + "\n")
    with pytest.raises(UserError) as caught:
        load_config(folder)
    assert str(caught.value).startswith(str(folder / "config.pbtxt")), str(caught.value)
    assert message in str(caught.value), str(caught.value)


def test_a_triton_repository_serves_unchanged(triton_repo, caplog, monkeypatch):
    """Triton's layout and config.pbtxt, served by netc and queried with tritonclient."""
    monkeypatch.setattr(triton_config, "_told", set())
    caplog.set_level(logging.WARNING, logger="netc.serving")
    server = BackgroundServer(
        triton_repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=None)
    )
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            assert client.is_server_ready()
            assert client.is_model_ready("doubler", "1") and client.is_model_ready("doubler", "2")
            config = client.get_model_config("doubler").config
            assert config.max_batch_size == 8
            assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
            assert config.dynamic_batching.max_queue_delay_microseconds == 500
            assert config.dynamic_batching.default_queue_policy.max_queue_size == 32
            assert [g.count for g in config.instance_group] == [3]
            assert config.version_policy.WhichOneof("policy_choice") == "all"
            x = np.array([[0.5, 3.0, -1.0, 2.0]], dtype=np.float32)
            tensor = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            top = grpcclient.InferRequestedOutput("OUTPUT0", class_count=2)
            result = client.infer("doubler", [tensor], outputs=[top])
            assert [v.decode() for v in result.as_numpy("OUTPUT0")[0]] == [
                "6.000000:1:dog",
                "4.000000:3:bird",
            ]
    finally:
        server.stop()
    ignored = [r.getMessage() for r in caplog.records if "netc does not use" in r.getMessage()]
    assert len(ignored) == 1 and "optimization, model_warmup" in ignored[0]
