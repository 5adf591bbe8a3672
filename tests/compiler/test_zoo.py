"""The zoo matches torchvision's architectures: parameter and MAC counts at 3x224x224.

Reference numbers: torchvision's model docs (`num_params`, and the "GFLOPS"
column, which counts conv and fc multiply-accumulates).
"""

import json

import pytest

import netc
from netc.cli import main
from netc.compiler import zoo

TORCHVISION = {
    # name: (params, MACs or None where the docs give only a rounded figure)
    "alexnet": (61_100_840, 714_188_480),
    "vgg11": (132_863_336, 7_609_090_048),
    "vgg16": (138_357_544, 15_470_264_320),
    "vgg19": (143_667_240, 19_632_062_464),
    "resnet18": (11_689_512, 1_814_073_344),
    "resnet34": (21_797_672, 3_663_761_408),
    "resnet50": (25_557_032, 4_089_184_256),
    "densenet121": (7_978_856, None),
    "googlenet": (6_624_904, None),
}
# torchvision rounds these: densenet121 2.834 GFLOPS, googlenet 1.498 GFLOPS.
ROUNDED_GMACS = {"densenet121": 2.834, "googlenet": 1.498}


def test_zoo_lists_every_required_network():
    required = {
        "lenet5",
        "alexnet",
        "vgg11",
        "vgg16",
        "vgg19",
        "googlenet",
        "resnet18",
        "resnet34",
        "resnet50",
        "densenet121",
        "tinyseg",
        "fcn32s",
        "fcn8s",
        "sppnet",
    }
    assert required <= set(zoo.names())


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_counts_match_torchvision_via_cli_json(name, capsys):
    assert main(["compile", name, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    params, macs = TORCHVISION[name]
    assert data["params"] == params
    if macs is not None:
        assert data["macs"] == macs
    else:
        assert round(data["macs"] / 1e9, 3) == ROUNDED_GMACS[name]


@pytest.mark.parametrize("name", sorted(zoo.names()))
def test_every_zoo_network_compiles_and_verifies(name):
    network = netc.load(name)
    network.graph.verify()
    assert network.analysis.params > 0
    assert network.graph.outputs


def test_fcn_crop_offsets_match_the_caffe_reference_models():
    offsets = {
        node.name: node.attrs["offset"]
        for node in netc.load("fcn8s").graph.nodes
        if node.op == "crop"
    }
    assert offsets == {"score_pool4c": (5, 5), "score_pool3c": (9, 9), "score": (31, 31)}
    (crop,) = [node for node in netc.load("fcn32s").graph.nodes if node.op == "crop"]
    assert crop.attrs["offset"] == (19, 19)


@pytest.mark.parametrize("name", ["fcn8s", "fcn32s", "tinyseg"])
def test_segmentation_nets_keep_the_input_size(name):
    for size in (64, 224, 500):
        if name == "tinyseg" and size % 4:
            continue
        net = netc.load(name, input_shape=(3, size, size + 4 if name != "tinyseg" else size))
        (output,) = net.analysis.outputs.values()
        assert output.shape[2:] == net.graph.inputs["image"].shape[2:]


def test_sppnet_gives_a_fixed_vector_for_any_input_size():
    for size in (100, 224, 331):
        net = netc.load("sppnet", input_shape=(3, size, size))
        (output,) = net.analysis.outputs.values()
        assert output.shape[1:] == (1000,)
        assert net.analysis.params == 77_037_672


def test_num_classes_parameter_changes_the_head():
    net = netc.load("resnet18", params={"num_classes": 10})
    assert net.graph.node("fc").shape[1] == 10
    assert net.analysis.params == 11_689_512 - 990 * 512 - 990
