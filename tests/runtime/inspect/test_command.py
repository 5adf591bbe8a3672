"""`netc inspect` on a run folder: what it writes, and user errors with exit status 2."""

from __future__ import annotations

from nets import make_run, write_picture
from PIL import Image

from netc.cli import main


def test_every_picture_of_a_run(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    picture = write_picture(tmp_path / "bar.png")
    status = main(
        [
            "inspect",
            str(run),
            "--image",
            str(picture),
            "--filters",
            "--curves",
            "--receptive-field",
            "conv2",
            "--class-map",
        ]
    )
    assert status == 0
    out = capsys.readouterr().out
    written = sorted(p.name for p in (run / "inspect").iterdir())
    assert written == [
        "class_map.png",
        "curves.png",
        "features_conv1.png",
        "features_conv2.png",
        "features_pool1.png",
        "features_pool2.png",
        "filters_conv1.png",
        "receptive_field_conv2.png",
    ]
    assert f"wrote {run / 'inspect' / 'features_conv2.png'} (16 channels)" in out
    with Image.open(run / "inspect" / "features_conv1.png") as png:
        assert png.size[0] > 0


def test_top_activations_from_pictures(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    pictures = [write_picture(tmp_path / f"p{i}.png", (8 + i, 8)) for i in range(3)]
    args = [
        "inspect",
        str(run),
        "--top-activations",
        "conv1",
        "--channels",
        "2",
        "--out",
        str(tmp_path / "out"),
    ]
    for p in pictures:
        args += ["--image", str(p)]
    assert main(args) == 0
    assert "top_conv1.png (2 channels x 3 pictures)" in capsys.readouterr().out


def test_no_flag_lists_the_layers(tmp_path, capsys):
    assert main(["inspect", str(make_run(tmp_path / "run"))]) == 0
    out = capsys.readouterr().out
    assert "conv2                conv         16x10x10       field 14x14" in out


def test_user_errors(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "no run folder, checkpoint or ONNX file" in capsys.readouterr().err
    assert main(["inspect", str(run), "--class-map"]) == 2
    assert "give --image FILE or --data DATASET" in capsys.readouterr().err
    assert main(["inspect", str(run), "--image", str(tmp_path / "missing.png")]) == 2
    assert f"error: --image {tmp_path / 'missing.png'}: no such file" in capsys.readouterr().err
    picture = str(write_picture(tmp_path / "bar.png"))
    assert main(["inspect", str(run), "--layer", "conv3", "--image", picture]) == 2
    assert "--layer conv3: lenet5 has no layer 'conv3'" in capsys.readouterr().err
    assert main(["inspect", str(run), "--channels", "0", "--curves"]) == 2
    assert "--channels must be at least 1" in capsys.readouterr().err
