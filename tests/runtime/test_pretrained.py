"""Pretrained weights into the zoo: torchvision's and timm's layouts, every file kind.

The reference networks are written in plain PyTorch with torchvision's
(tests/reference/torch_zoo.py) and timm's (tests/reference/timm_layouts.py)
module names, given random weights and random batch-norm statistics, and
saved as those libraries save them. netc's zoo net must then compute the
reference's outputs, as a PyTorch module (`--init-from`) and as the exported
ONNX (`netc export --weights`). One net of each family is compared in every
run (resnet18 of both libraries, densenet121, googlenet with its auxiliary
heads); AlexNet, the VGGs (60M-140M parameters), the deeper ResNets and the
rest take 5-40 s each on a CPU: their outputs are compared when
NETC_SLOW_TESTS=1. Every mapping's keys and shapes are checked in every run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm_layouts
import torch
import torch_zoo
from helpers import assert_fp32_close
from safetensors.torch import save_file

from netc.cli import main
from netc.compiler.network import load
from netc.errors import UserError
from netc.runtime.export import export_model
from netc.runtime.finetune import load_weights
from netc.runtime.module import build_module
from netc.runtime.weight_files import read_weights
from netc.runtime.weight_layouts import to_netc

SLOW = os.environ.get("NETC_SLOW_TESTS") == "1"
slow = pytest.mark.skipif(not SLOW, reason="10-40 s each: set NETC_SLOW_TESTS=1")

# Small inputs each net takes (fewer MACs; the weights' shapes do not depend on them)
SIZES = {"alexnet": 64, "googlenet": 32, "densenet121": 32, "resnet18": 32}
SIZES |= {"vgg11": 32, "vgg16": 32, "vgg19": 32, "resnet34": 32, "resnet50": 32}


def _randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and batch-norm statistics: a layer loaded in the wrong place, or
    left at its fresh state, changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.weight.uniform_(0.5, 1.5, generator=generator)
                layer.bias.normal_(0.0, 0.1, generator=generator)
                layer.running_mean.normal_(0.0, 0.1, generator=generator)
                layer.running_var.uniform_(0.5, 2.0, generator=generator)
            elif isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) and layer.bias is not None:
                layer.bias.normal_(0.0, 0.05, generator=generator)
    return module.eval()


def _reference(library: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the references initialise from the global generator
    build = torch_zoo.build if library == "torchvision" else timm_layouts.build
    return _randomised(build(name), seed=1)


def _check_reproduces(library: str, name: str, tmp_path) -> None:
    reference = _reference(library, name)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    size = SIZES[name]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
    del reference  # the VGGs hold 0.5 GB each

    graph = load(name, input_shape=(3, size, size)).graph
    module = build_module(graph, seed=0)
    report = load_weights(module, graph, str(path), None, "--init-from")
    assert not report.new and not report.skipped, report.lines()
    with torch.no_grad():
        assert_fp32_close(module.eval()(x), expected, what=f"{library} {name} in PyTorch")
    del module

    result = export_model(name, input_shape=(3, size, size), weights_file=str(path), quiet=True)
    assert result.trained
    session = ort.InferenceSession(
        result.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert_fp32_close(actual, expected, what=f"{library} {name} in onnxruntime")


@pytest.mark.parametrize(
    "library, name",
    [
        ("torchvision", "resnet18"),
        ("torchvision", "densenet121"),
        ("timm", "resnet18"),
    ],
)
def test_zoo_net_reproduces_the_library_net(library, name, tmp_path):
    _check_reproduces(library, name, tmp_path)


@slow
@pytest.mark.parametrize(
    "library, name",
    [
        ("torchvision", "googlenet"),  # its layers also in the default run, with aux heads
        ("timm", "densenet121"),  # the same renaming as torchvision's, in the default run
        ("torchvision", "alexnet"),
        ("torchvision", "vgg11"),
        ("torchvision", "vgg16"),
        ("torchvision", "vgg19"),
        ("torchvision", "resnet34"),
        ("torchvision", "resnet50"),
        ("timm", "resnet50"),
    ],
)
def test_large_zoo_net_reproduces_the_library_net(library, name, tmp_path):
    _check_reproduces(library, name, tmp_path)


LAYOUT_CASES = [
    ("torchvision", name)
    for name in ("alexnet", "vgg11", "vgg16", "vgg19", "googlenet", "resnet18", "resnet34")
] + [("torchvision", "resnet50"), ("torchvision", "densenet121")]
LAYOUT_CASES += [("timm", name) for name in ("resnet18", "resnet50", "densenet121")]


@pytest.mark.parametrize("library, name", LAYOUT_CASES)
def test_every_library_key_maps_to_a_zoo_parameter_of_its_shape(library, name):
    """Shapes only (the meta device allocates nothing): every tensor of the library's
    state_dict lands on a netc parameter of the same shape, and every netc tensor is
    covered; the layout is detected."""
    with torch.device("meta"):
        build = torch_zoo.build if library == "torchvision" else timm_layouts.build
        theirs = build(name).state_dict()
        graph = load(name).graph
        ours = build_module(graph).state_dict()
    mapped = to_netc(theirs, graph, ours)
    assert mapped.detected
    expected_layout = "torchvision" if name.startswith(("vgg", "densenet")) else "netc"
    assert mapped.layout == expected_layout
    assert sorted(mapped.tensors) == sorted(ours)
    for key, tensor in mapped.tensors.items():
        assert tensor.shape == ours[key].shape, key
    assert len(set(mapped.origin.values())) == len(theirs)


def test_vgg_layout_names_the_kth_module_of_features():
    graph = load("vgg16").graph
    with torch.device("meta"):
        ours = build_module(graph).state_dict()
    mapped = to_netc({"features.28.weight": torch.zeros(512, 512, 3, 3)}, graph, ours)
    assert list(mapped.tensors) == ["conv5.2.conv.weight"]  # 13th conv, after 4 pools


def test_old_torchvision_densenet_keys_read(tmp_path):
    """torchvision's first DenseNet files spell `norm1` as `norm.1`."""
    state = _reference("torchvision", "densenet121").state_dict()
    old = {
        key.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): value
        for key, value in state.items()
    }
    graph = load("densenet121", input_shape=(3, 32, 32)).graph
    module = build_module(graph, seed=0)
    torch.save(old, tmp_path / "old.pth")
    report = load_weights(module, graph, str(tmp_path / "old.pth"), None, "--init-from")
    assert not report.new and not report.skipped
    assert torch.equal(
        module.state_dict()["denseblock2.3.norm1.running_var"],
        state["features.denseblock2.denselayer4.norm1.running_var"],
    )


# Small nets for the file kinds and the report: the same code paths at a fraction of the time

TINY = """\
name: tiny
params: {num_classes: 5}
inputs: {image: [3, 16, 16]}
layers:
  - {name: conv1, op: conv, channels: 4, kernel: 3, padding: 1, bias: false}
  - {name: bn1, op: batch_norm}
  - {name: relu1, op: relu}
  - {name: pool, op: adaptive_avg_pool, output: 1}
  - {name: flatten, op: flatten}
  - {name: fc, op: fc, units: $num_classes}
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


def _tiny_state(seed: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "conv1.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "bn1.weight": torch.rand(4, generator=generator) + 0.5,
        "bn1.bias": torch.randn(4, generator=generator),
        "bn1.running_mean": torch.randn(4, generator=generator),
        "bn1.running_var": torch.rand(4, generator=generator) + 0.5,
        "fc.weight": torch.randn(5, 4, generator=generator),
        "fc.bias": torch.randn(5, generator=generator),
    }


def _loaded(spec: str, path, layout: str | None = None):
    graph = load(spec).graph
    module = build_module(graph, seed=0)
    report = load_weights(module, graph, str(path), layout, "--init-from")
    return module.state_dict(), report


def test_safetensors_and_onnx_initializers_load(tiny, tmp_path):
    state = _tiny_state()
    save_file(state, str(tmp_path / "w.safetensors"))
    loaded, report = _loaded(tiny, tmp_path / "w.safetensors")
    assert report.source.startswith("read 7 tensors (safetensors)")
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key

    torch.save(state, tmp_path / "w.pth")
    result = export_model(tiny, weights_file=str(tmp_path / "w.pth"), quiet=True)
    onnx.save(result.model, str(tmp_path / "w.onnx"))
    loaded, report = _loaded(tiny, tmp_path / "w.onnx")
    assert "(ONNX initializers)" in report.source
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_training_script_checkpoints_and_ddp_prefixes_unwrap(tiny, tmp_path):
    state = _tiny_state()
    wrapped = {
        "epoch": 90,
        "arch": "tiny",
        "state_dict": {f"module.{key}": value for key, value in state.items()},
        "optimizer": {"lr": 0.1},
    }
    torch.save(wrapped, tmp_path / "ckpt.pth.tar")
    loaded, _ = _loaded(tiny, tmp_path / "ckpt.pth.tar")
    assert torch.equal(loaded["fc.weight"], state["fc.weight"])


def test_report_names_new_shape_mismatched_and_unknown_layers(tiny, tmp_path):
    state = _tiny_state()
    state["fc.weight"] = torch.zeros(1000, 4)  # an ImageNet head
    state["fc.bias"] = torch.zeros(1000)
    state["aux1.conv.weight"] = torch.zeros(2, 2)  # not a layer of this net
    del state["conv1.weight"]
    torch.save(state, tmp_path / "w.pth")
    _, report = _loaded(tiny, tmp_path / "w.pth")
    assert report.loaded == ["bn1"]
    assert report.new == ["conv1"]
    assert ("fc", "shape (1000, 4) in the checkpoint, (5, 4) here (weight)") in report.skipped
    assert ("aux1.conv", "unknown key (no layer of that name here)") in report.skipped


def test_a_file_with_nothing_that_matches_is_an_error_not_a_fresh_start(tiny, tmp_path):
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "w.pth")
    with pytest.raises(UserError, match="no layer of tiny matches the checkpoint") as caught:
        _loaded(tiny, tmp_path / "w.pth")
    assert "skipped encoder: unknown key" in str(caught.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a pickle at all", "not a PyTorch weights file torch.load can read"),
        (None, "holds a list, not a state_dict"),
    ],
)
def test_unreadable_weights_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "w.pth"
    if content is None:
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_weights(path)
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(UserError, match=r"not a readable \.safetensors file"):
        read_weights(tmp_path / "w.safetensors")
    with pytest.raises(UserError, match="no such weights file"):
        read_weights(tmp_path / "missing.pth")


def test_a_dict_without_tensors_names_its_keys(tmp_path):
    torch.save({"epoch": 3, "arch": "x"}, tmp_path / "w.pth")
    with pytest.raises(UserError, match="its keys: 'epoch', 'arch'"):
        read_weights(tmp_path / "w.pth")


def test_export_and_train_take_weights_from_the_command_line(tiny, tmp_path, capsys):
    state = _tiny_state()
    torch.save(state, tmp_path / "w.pth")
    out = tmp_path / "m.onnx"
    code = main(["export", tiny, "--weights", str(tmp_path / "w.pth"), "-o", str(out)])
    assert code == 0
    err = capsys.readouterr().err
    assert "read 7 tensors (PyTorch state_dict), layout netc (detected)" in err
    assert "warning: exporting untrained" not in err
    model = onnx.load(str(out))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_array_equal(weights["fc.weight"], state["fc.weight"].numpy())

    layout = ["--weights-layout", "timm"]
    code = main(["export", tiny, "--weights", str(tmp_path / "w.pth"), *layout, "-o", str(out)])
    assert code == 0
    assert "layout timm (given)" in capsys.readouterr().err


class InceptionAux(torch.nn.Module):
    """torchvision's InceptionAux (GoogLeNet with aux_logits=True), its module names."""

    def __init__(self, in_channels: int, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv = torch_zoo.BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = torch.nn.Linear(2048, 1024)
        self.fc2 = torch.nn.Linear(1024, num_classes)
        self.dropout = torch.nn.Dropout(p=0.7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.conv(torch.nn.functional.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


def _googlenet_with_aux_outputs(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision's GoogLeNet.forward with its auxiliary outputs (eval mode)."""
    x = net.maxpool2(net.conv3(net.conv2(net.maxpool1(net.conv1(x)))))
    x = net.inception4a(net.maxpool3(net.inception3b(net.inception3a(x))))
    aux1 = net.aux1(x)
    x = net.inception4d(net.inception4c(net.inception4b(x)))
    aux2 = net.aux2(x)
    x = net.inception5b(net.inception5a(net.maxpool4(net.inception4e(x))))
    logits = net.fc(torch.flatten(net.avgpool(x), 1))
    return {"logits": logits, "aux1": aux1, "aux2": aux2}


def test_googlenet_with_its_auxiliary_heads_loads_torchvisions_whole_file(tmp_path):
    """examples/googlenet_aux.yaml: torchvision's GoogLeNet file holds aux1 and aux2; all
    of it loads, and the three outputs are torchvision's, in PyTorch and in ONNX."""
    torch.manual_seed(0)
    reference = torch_zoo.build("googlenet")
    reference.aux1, reference.aux2 = InceptionAux(512), InceptionAux(528)
    reference = _randomised(reference, seed=1)
    torch.save(reference.state_dict(), tmp_path / "googlenet.pth")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = _googlenet_with_aux_outputs(reference, x)

    example = str(Path(__file__).parents[2] / "examples" / "googlenet_aux.yaml")
    graph = load(example, input_shape=(3, 64, 64)).graph
    module = build_module(graph, seed=0)
    report = load_weights(module, graph, str(tmp_path / "googlenet.pth"), None, "--init-from")
    assert not report.new and not report.skipped, report.lines()
    with torch.no_grad():
        actual = module.eval()(x)
    assert list(actual) == ["logits", "aux1", "aux2"]
    for name in actual:
        assert_fp32_close(actual[name], expected[name], what=name)

    result = export_model(
        example, input_shape=(3, 64, 64), weights_file=str(tmp_path / "googlenet.pth"), quiet=True
    )
    session = ort.InferenceSession(
        result.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    outputs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert [o.name for o in session.get_outputs()] == ["logits", "aux1", "aux2"]
    for name, value in zip(["logits", "aux1", "aux2"], outputs):
        assert_fp32_close(value, expected[name], what=f"{name} in onnxruntime")


def test_an_onnx_file_without_batch_norm_tensors_says_they_may_be_folded(tiny, tmp_path):
    """torch.onnx.export's optimizer folds batch norms into the convs before them."""
    from onnx import helper, numpy_helper

    state = _tiny_state()
    initializers = [
        numpy_helper.from_array(state[key].numpy(), key)
        for key in ("conv1.weight", "fc.weight", "fc.bias")
    ]
    graph = helper.make_graph([], "folded", [], [], initializer=initializers)
    onnx.save(helper.make_model(graph), str(tmp_path / "folded.onnx"))
    _, report = _loaded(tiny, tmp_path / "folded.onnx")
    assert report.new == ["bn1"]
    assert any("no tensors for the batch norms bn1" in line for line in report.lines())


def test_weights_go_with_a_description_not_a_run(tiny, tmp_path, capsys):
    torch.save(_tiny_state(), tmp_path / "w.pth")
    (tmp_path / "run").mkdir()
    torch.save({}, tmp_path / "run" / "last.pt")
    out = ["-o", str(tmp_path / "m.onnx")]
    code = main(["export", str(tmp_path / "run"), "--weights", str(tmp_path / "w.pth"), *out])
    assert code == 2
    assert "--weights loads weights into a description" in capsys.readouterr().err
    code = main(
        ["export", tiny, "--weights", str(tmp_path / "none.pth"), "-o", str(tmp_path / "m.onnx")]
    )
    assert code == 2
    assert "no such weights file or run directory" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_another_networks_checkpoint_is_said_to_be_one(tmp_path):
    """resnet50's file into resnet18: the stem's conv1 and bn1 fit, little else."""
    with torch.device("meta"):
        theirs = torch_zoo.build("resnet50").state_dict()
    torch.save(
        {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in theirs.items()}, tmp_path / "r50.pth"
    )
    graph = load("resnet18", input_shape=(3, 32, 32)).graph
    module = build_module(graph, seed=0)
    report = load_weights(module, graph, str(tmp_path / "r50.pth"), None, "--init-from")
    assert report.loaded[:2] == ["conv1", "bn1"] and len(report.loaded) == 26
    assert any("41 layers loaded and 15 have other shapes" in line for line in report.lines())


def test_train_takes_a_given_layout(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY.replace("[3, 16, 16]", "[1, 8, 8]").replace("[4, 3, 3, 3]", ""))
    state = _tiny_state()
    state["conv1.weight"] = state["conv1.weight"][:, :1].contiguous()
    save_file(state, str(tmp_path / "w.safetensors"))
    args = ["train", str(spec), "--data", "digits", "--epochs", "1", "--set", "num_classes=10"]
    init = ["--init-from", str(tmp_path / "w.safetensors"), "--weights-layout", "torchvision"]
    assert main([*args, *init, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "read 7 tensors (safetensors), layout torchvision (given)" in err
    assert "loaded 2 layers: conv1, bn1" in err and "skipped fc: shape (5, 4)" in err


def test_a_netc_checkpoint_file_reads_as_one(tmp_path):
    from netc.runtime import checkpoint

    state = _tiny_state()
    checkpoint.save(tmp_path / "last.pt", {"model": state, "description": TINY, "params": {}})
    weights = read_weights(tmp_path / "last.pt")
    assert weights.kind == "netc checkpoint" and torch.equal(
        weights.tensors["fc.bias"], state["fc.bias"]
    )
    checkpoint.save(tmp_path / "broken.pt", {"model": state})
    with pytest.raises(UserError, match="not a complete netc checkpoint: 'description' is missing"):
        read_weights(tmp_path / "broken.pt")


def test_the_report_names_only_layouts_that_name_the_layers_alike():
    def detected(name: str, library_names: bool) -> tuple[str, list[str]]:
        graph = load(name).graph
        with torch.device("meta"):
            ours = build_module(graph).state_dict()
            theirs = torch_zoo.build(name).state_dict() if library_names else ours
        mapped = to_netc(theirs, graph, ours)
        return mapped.layout, mapped.same_as

    assert detected("vgg11", library_names=False) == ("netc", [])
    assert detected("vgg11", library_names=True) == ("torchvision", [])
    assert detected("densenet121", library_names=True) == ("torchvision", ["timm"])
    assert detected("resnet18", library_names=True) == ("netc", ["torchvision", "timm"])
    assert detected("alexnet", library_names=True) == ("netc", ["torchvision"])


def test_a_file_that_leaves_layers_out_exports_them_freshly_initialised(tiny, tmp_path, capsys):
    state = {k: v for k, v in _tiny_state().items() if not k.startswith("bn1.")}
    torch.save(state, tmp_path / "w.pth")
    result = export_model(tiny, weights_file=str(tmp_path / "w.pth"))
    assert "new (freshly initialised): bn1" in capsys.readouterr().err
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in result.model.graph.initializer}
    np.testing.assert_array_equal(weights["fc.bias"], state["fc.bias"].numpy())
    np.testing.assert_array_equal(weights["bn1.running_var"], np.ones(4, np.float32))
    assert result.max_error is not None and result.max_error < 1e-4
