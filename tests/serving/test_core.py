"""The execution layer without gRPC: repository, checks, batching, deadlines, queue bounds."""

import asyncio
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from helpers import assert_fp32_close

from netc.serving.errors import DeadlineExceeded, InvalidRequest, ModelNotFound, QueueFull
from netc.serving.metrics import render
from netc.serving.repository import ModelRepository
from netc.serving.triton_service import model_config


def _run(coroutine):
    return asyncio.run(coroutine)


async def _loaded(root):
    repo = ModelRepository(root)
    await repo.load_all()
    return repo


def test_repository_loads_describes_and_finds_models(repository):
    async def scenario():
        repo = await _loaded(repository)
        try:
            assert repo.ready()
            assert [(e.name, e.version, e.state) for e in repo.index()] == [
                ("lenet5", "1", "READY"),
                ("tinyseg", "1", "READY"),
            ]
            lenet = repo.get("lenet5")
            assert lenet.info.max_batch_size == 16 and lenet.info.task == "classification"
            assert lenet.info.max_queue_delay_us is None  # auto, by default
            # Triton's view of `auto`: the longest it makes a request wait
            assert model_config(lenet).dynamic_batching.max_queue_delay_microseconds == 1000
            assert lenet.info.inputs[0].dims == (1, 32, 32)
            assert repo.get("tinyseg").info.inputs[0].dims == (3, -1, -1)
            with pytest.raises(ModelNotFound, match="did you mean 'lenet5'"):
                repo.get("lenet")
            with pytest.raises(ModelNotFound, match="no version '7'"):
                repo.get("lenet5", "7")
        finally:
            await repo.close()

    _run(scenario())


def test_batched_results_equal_single_runs(repository):
    session = ort.InferenceSession(
        str(repository / "lenet5" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    images = [rng.random((1, 1, 32, 32), dtype=np.float32) for _ in range(24)]

    async def scenario():
        repo = await _loaded(repository)
        try:
            model = repo.get("lenet5")
            results = await asyncio.gather(*(model.infer({"image": x}) for x in images))
            return results, model.stats
        finally:
            await repo.close()

    results, stats = _run(scenario())
    for x, result in zip(images, results):
        (expected,) = session.run(None, {"image": x})
        # Batched and single runs use different kernels' blocking: fp32 noise only.
        assert_fp32_close(result["fc3"], expected)
    assert stats.inference_count == 24 and stats.execution_count < 24  # some batching happened
    assert stats.success.count == 24


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"image": np.zeros((1, 1, 32, 32), np.float64)}, "datatype FP64, expected FP32"),
        ({"image": np.zeros((1, 32, 32), np.float32)}, "expected [batch, 1, 32, 32]"),
        ({"image": np.zeros((1, 1, 28, 28), np.float32)}, "has shape [1, 1, 28, 28]"),
        ({}, "missing input 'image'"),
        (
            {"image": np.zeros((1, 1, 32, 32), np.float32), "extra": np.zeros(1)},
            "unexpected input 'extra'",
        ),
        ({"image": np.zeros((17, 1, 32, 32), np.float32)}, "batch size 17 is outside 1..16"),
    ],
)
def test_bad_requests_name_the_tensor(repository, inputs, message):
    async def scenario():
        repo = await _loaded(repository)
        try:
            with pytest.raises(InvalidRequest) as error:
                await repo.get("lenet5").infer(inputs)
            return str(error.value)
        finally:
            await repo.close()

    assert message in _run(scenario())


def test_segmentation_requests_of_different_sizes_are_never_mixed(repository):
    async def scenario():
        repo = await _loaded(repository)
        try:
            model = repo.get("tinyseg")
            shapes = [(32, 32), (48, 40), (32, 32), (48, 40)]
            outs = await asyncio.gather(
                *(model.infer({"image": np.zeros((1, 3, h, w), np.float32)}) for h, w in shapes)
            )
            return [tuple(o["upsample"].shape) for o in outs]
        finally:
            await repo.close()

    assert _run(scenario()) == [(1, 4, 32, 32), (1, 4, 48, 40), (1, 4, 32, 32), (1, 4, 48, 40)]


def test_full_queue_and_passed_deadline_fail_fast(repository, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(repository / "lenet5", root / "lenet5")
    (root / "lenet5" / "config.yaml").write_text(
        "max_batch_size: 1\ndynamic_batching: {max_queue_size: 2}\n"
    )

    async def scenario():
        repo = await _loaded(root)
        try:
            model = repo.get("lenet5")
            x = {"image": np.zeros((1, 1, 32, 32), np.float32)}

            async def call(timeout=None):
                return await model.infer(x, timeout=timeout)

            outcome = await asyncio.gather(*(call() for _ in range(40)), return_exceptions=True)
            late = await asyncio.gather(call(timeout=0.0), return_exceptions=True)
            return outcome, late
        finally:
            await repo.close()

    outcome, late = _run(scenario())
    assert any(isinstance(o, QueueFull) for o in outcome)
    assert any(isinstance(o, dict) for o in outcome)
    assert isinstance(late[0], (DeadlineExceeded, dict))


def test_broken_model_is_unavailable_and_others_serve(repository, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(repository / "lenet5", root / "lenet5")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not onnx")

    async def scenario():
        repo = await _loaded(root)
        try:
            states = {e.name: (e.state, e.reason) for e in repo.index()}
            await repo.get("lenet5").infer({"image": np.zeros((1, 1, 32, 32), np.float32)})
            return states, repo.ready(), render(repo)
        finally:
            await repo.close()

    states, ready, metrics = _run(scenario())
    assert states["lenet5"][0] == "READY"
    assert states["broken"][0] == "UNAVAILABLE" and "cannot load" in states["broken"][1]
    assert not ready
    assert 'nv_inference_request_success{model="lenet5",version="1"} 1' in metrics
    assert 'nv_model_ready{model="broken",version=""} 0' in metrics
