"""The whole path a user takes: train → export → serve → query, with real processes
where a user would have them (the CLI) and the stock Triton client."""

import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image

from netc.cli import main
from netc.runtime import checkpoint
from netc.runtime.datasets import load_dataset, split
from netc.serving.server import BackgroundServer, ServerOptions


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    assert (
        main(
            [
                "train",
                "lenet5",
                "--data",
                "digits",
                "--out",
                str(root / "digits"),
                "--epochs",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "tinyseg",
                "--data",
                "shapes",
                "--out",
                str(root / "shapes"),
                "--epochs",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    for run, name in (("digits", "digits"), ("shapes", "shapes")):
        assert (
            main(["export", str(root / run), "--repository", str(root / "repo"), "--name", name])
            == 0
        )
    server = BackgroundServer(
        root / "repo", ServerOptions(host="127.0.0.1", port=0, metrics_port=None)
    )
    yield root, server
    server.stop()


def _held_out(run_dir):
    config = checkpoint.load(run_dir)["config"]
    return split(load_dataset("digits"), config["val_fraction"], config["seed"])[1]


def test_tritonclient_classifies_the_held_out_digits(served):
    root, server = served
    state = checkpoint.load(root / "digits" / "best.pt")
    val = _held_out(root / "digits")
    # The client does what the model's metadata says: resize to 32x32, normalise.
    import torch.nn.functional as F

    x = F.interpolate(val.images, size=(32, 32), mode="bilinear", align_corners=False)
    mean, std = state["preprocessing"]["mean"][0], state["preprocessing"]["std"][0]
    x = ((x - mean) / std).numpy().astype(np.float32)
    client = triton.InferenceServerClient(server.address)
    predictions = []
    for start in range(0, len(x), 16):
        batch = x[start : start + 16]
        tensor = triton.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        predictions.append(client.infer("digits", [tensor]).as_numpy("fc3").argmax(1))
    accuracy = float((np.concatenate(predictions) == val.targets.numpy()).mean())
    # what training measured on the same images (best.pt is the exported checkpoint)
    assert accuracy == pytest.approx(
        state["history"][state["best_epoch"] - 1]["val_accuracy"], abs=0.005
    )
    assert accuracy > 0.9


def test_netc_infer_labels_pngs_and_writes_masks(served, tmp_path, capsys):
    root, server = served
    val = _held_out(root / "digits")
    paths = []
    for i in range(5):
        path = tmp_path / f"digit{i}_{int(val.targets[i])}.png"
        Image.fromarray((val.images[i, 0].numpy() * 255).round().astype(np.uint8)).save(path)
        paths.append(str(path))
    assert (
        main(["infer", "--model", "digits", "--url", server.address, "--top-k", "1", *paths]) == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    right = sum(
        line.split(": ")[1].split(" ")[0] == line.split("_")[-1].split(".")[0] for line in lines
    )
    assert len(lines) == 5 and right >= 4
    scene = tmp_path / "scene.png"
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(scene)
    assert (
        main(
            [
                "infer",
                "--model",
                "shapes",
                "--url",
                server.address,
                "--out",
                str(tmp_path / "masks"),
                str(scene),
            ]
        )
        == 0
    )
    mask = Image.open(tmp_path / "masks" / "scene_mask.png")
    assert mask.size == (70, 50) and mask.mode == "P"  # class indices, VOC colours
    assert np.asarray(mask).max() <= 3
