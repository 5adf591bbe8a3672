"""Inspecting an exported ONNX model: its intermediate outputs are the run's layers."""

from __future__ import annotations

from helpers import assert_fp32_close
from nets import make_run, write_picture
from PIL import Image

from netc.cli import main
from netc.runtime.export import export_model, write_model
from netc.runtime.inspect import onnx_outputs, source
from netc.runtime.inspect.activations import record


def exported(tmp_path):
    run = make_run(tmp_path / "run")
    path = tmp_path / "lenet5.onnx"
    write_model(export_model(str(run), verify=False).model, path)
    return run, path


def test_intermediate_outputs_equal_the_run_layers(tmp_path):
    run, path = exported(tmp_path)
    picture = write_picture(tmp_path / "bar.png")
    model = source.load_run(run)
    pictures = source.pictures_from_files(model, [picture])
    onnx_model = onnx_outputs.load(path)
    shown, x = onnx_outputs.prepare(onnx_model, source.read_picture(picture, 1))
    assert_fp32_close(shown, pictures.shown[0])
    assert_fp32_close(x, pictures.inputs)
    layers = ["conv1", "relu1", "pool2", "fc1"]
    expected = record(model, pictures.inputs, layers)
    actual = onnx_outputs.intermediate(onnx_model, x, layers)
    for layer in layers:
        assert_fp32_close(actual[layer], expected[layer].detach())


def test_a_pixel_input_model_is_fed_what_the_server_feeds_it(tmp_path):
    """`--pixel-input` moves the normalisation into the graph and says value_range
    [0, 255] on the card: inspect scales the picture to that range, so the first conv's
    maps equal those of the ordinary export on the normalised picture."""
    from netc.compiler.pixel_input import take_pixels

    _, path = exported(tmp_path)
    pixels_path = tmp_path / "pixels.onnx"
    write_model(take_pixels(onnx_outputs.load(path).proto), pixels_path)
    picture = source.read_picture(write_picture(tmp_path / "bar.png"), 1)
    plain, pixels = onnx_outputs.load(path), onnx_outputs.load(pixels_path)
    _, x_plain = onnx_outputs.prepare(plain, picture)
    shown, x_pixels = onnx_outputs.prepare(pixels, picture)
    assert_fp32_close(x_pixels, shown[None].numpy() * 255)
    expected = onnx_outputs.intermediate(plain, x_plain, ["conv1"])["conv1"]
    actual = onnx_outputs.intermediate(pixels, x_pixels, ["conv1"])["conv1"]
    assert_fp32_close(actual, expected)


def test_cli_on_onnx(tmp_path, capsys):
    _, path = exported(tmp_path)
    picture = str(write_picture(tmp_path / "bar.png"))
    assert main(["inspect", str(path)]) == 0
    assert "conv2                    Conv                 -> conv2" in capsys.readouterr().out
    assert main(["inspect", str(path), "--image", picture, "--filters"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "lenet5_inspect"
    for name in ("filters_conv1.png", "features_conv1.png", "features_conv2.png"):
        assert f"wrote {folder / name}" in out
    assert main(["inspect", str(path), "--image", picture, "--layer", "pool1"]) == 0
    with Image.open(folder / "features_pool1.png") as png:
        assert png.size[0] > 0


def test_run_only_flags_are_user_errors(tmp_path, capsys):
    _, path = exported(tmp_path)
    assert main(["inspect", str(path), "--class-map"]) == 2
    assert "--class-map needs the run directory" in capsys.readouterr().err
    picture = str(write_picture(tmp_path / "bar.png"))
    assert main(["inspect", str(path), "--image", picture, "--layer", "conv_2"]) == 2
    assert "has no node 'conv_2'\n  hint: did you mean 'conv2'?" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "missing.onnx")]) == 2
    assert "no ONNX file" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["inspect", str(tmp_path / "junk.onnx")]) == 2
    assert "is not a readable ONNX model" in capsys.readouterr().err
