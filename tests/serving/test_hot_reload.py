"""`netc serve --poll`: models that change on disk reload, models that go away unload."""

import shutil
import time

import numpy as np
import pytest

from netc.serving.client import VisionClient
from netc.serving.errors import ModelUnavailable
from netc.serving.server import BackgroundServer, ServerOptions

NO_PBTXT = shutil.ignore_patterns("config.pbtxt")


def _until(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_poll_reloads_changed_labels_and_unloads_removed_models(repository, tmp_path):
    root = tmp_path / "repo"
    # renamed copies: the config.pbtxt export writes names 'lenet5'
    shutil.copytree(repository / "lenet5", root / "digits", ignore=NO_PBTXT)
    shutil.copytree(repository / "lenet5", root / "spare", ignore=NO_PBTXT)
    labels = root / "digits" / "names.txt"
    labels.write_text("\n".join(f"a{i}" for i in range(10)))
    (root / "digits" / "config.yaml").write_text("labels_file: names.txt\n")
    server = BackgroundServer(
        root, ServerOptions(host="127.0.0.1", port=0, metrics_port=None, poll_seconds=0.2)
    )
    try:
        with VisionClient(server.address) as client:
            grey = np.zeros((32, 32), np.uint8)

            def first_label():
                return client.classify([grey], "digits", top_k=1)[0][0][0]

            assert first_label().startswith("a")
            time.sleep(0.05)  # a new modification time
            labels.write_text("\n".join(f"b{i}" for i in range(10)))
            assert _until(lambda: first_label().startswith("b")), "labels file not reloaded"

            shutil.rmtree(root / "spare")
            assert _until(lambda: "spare" not in {m.name for m in client.models()})
            assert first_label().startswith("b")  # the others keep serving
    finally:
        server.stop()


def test_a_failed_reload_keeps_serving_and_says_why(repository, tmp_path):
    import asyncio

    from netc.serving.repository import ModelRepository

    root = tmp_path / "repo"
    shutil.copytree(repository / "lenet5", root / "digits", ignore=NO_PBTXT)
    (root / "digits" / "config.yaml").write_text("version_policy: all\n")

    async def scenario():
        repo = ModelRepository(root)
        await repo.load_all()
        try:
            (root / "digits" / "2").mkdir()
            (root / "digits" / "2" / "model.onnx").write_bytes(b"not a model")
            with pytest.raises(ModelUnavailable, match="reload failed") as failed:
                await repo.load("digits")  # the failure is reported, not an OK
            assert "version 2" in str(failed.value) and str(root) not in str(failed.value)
            return repo.ready(), repo.index(), repo.get("digits").version
        finally:
            await repo.close()

    ready, index, serving = asyncio.run(scenario())
    assert ready and serving == "1"  # health stays SERVING: the model is served
    (entry,) = index
    assert (entry.version, entry.state) == ("1", "READY")
    assert "reload failed, still serving the loaded versions" in entry.reason
    assert "version 2" in entry.reason
