"""README.md's HTTP/REST commands, run as shown against a served repository.

The commands are read from README's `### HTTP/REST` section; only the address
changes (a free port instead of 8000). curl reads a ~/.curlrc that makes an HTTP
error fail the command (`fail-with-body`), so a command that "works" got a 2xx.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from netc.serving.server import BackgroundServer, ServerOptions

ROOT = Path(__file__).resolve().parents[3]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### HTTP/REST", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's HTTP/REST section has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def served(repository, tmp_path_factory):
    """README's repository: digits (a LeNet-5) and shapes (tinyseg)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed here")
    root = tmp_path_factory.mktemp("readme") / "repo"
    for exported, name in (("lenet5", "digits"), ("tinyseg", "shapes")):
        shutil.copytree(repository / exported, root / name)
        config = root / name / "config.pbtxt"  # Triton's: it names its model
        config.write_text(config.read_text().replace(f'"{exported}"', f'"{name}"'))
    options = ServerOptions(host="127.0.0.1", port=0, metrics_port=None, http_port=0)
    server = BackgroundServer(root, options)
    yield server
    server.stop()


def test_readme_http_commands_work_as_shown(served, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / ".curlrc").write_text("fail-with-body\nsilent\nshow-error\n")
    address = f"127.0.0.1:{served.running.http_port}"
    outputs = []
    for command in readme_commands():
        done = subprocess.run(
            ["bash", "-c", command.replace("localhost:8000", address)],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        outputs.append(done.stdout)
    health, metadata, _, infer, classify, form, _, segment, index, load = outputs
    assert health == ""
    assert json.loads(metadata)["name"] == "digits"
    (top3,) = json.loads(infer)["outputs"]
    assert top3["datatype"] == "BYTES" and top3["shape"] == [1, 3]
    assert all(re.fullmatch(r"-?[\d.]+:\d(:\w+)?", text) for text in top3["data"]), top3
    assert len(json.loads(classify)["results"][0]["labels"]) == 3
    assert len(json.loads(form)["results"]) == 2
    mask = Image.open(tmp_path / "scene_mask.png")
    assert (mask.size, mask.mode) == (Image.open(ROOT / "examples/images/scene.png").size, "L")
    answer = json.loads(segment)
    assert sum(answer["pixel_counts"]) == answer["width"] * answer["height"]
    assert Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))).size == (
        answer["width"],
        answer["height"],
    )
    assert {m["name"] for m in json.loads(index)} == {"digits", "shapes"}
    assert load == ""
