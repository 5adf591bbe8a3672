"""onnxruntime's and numpy's own lines stay off stderr while serving: netc says what matters."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from netc.serving import model as served
from netc.serving.config import ModelConfig
from netc.serving.images.scores import probabilities


def test_a_cuda_provider_that_does_not_start_is_said_once_by_netc(
    repository, monkeypatch, capfd, caplog
):
    """Asked for CUDA where it cannot start (no GPU here, or no cuDNN), onnxruntime logs
    an E and a W line and runs on the CPU; netc says so itself, once."""
    monkeypatch.setattr(
        served, "providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    served._fell_back.cache_clear()
    path = repository / "lenet5" / "1" / "model.onnx"
    with caplog.at_level(logging.WARNING, logger="netc.serving"):
        for version in ("1", "2"):
            model = served.ServedModel("lenet5", version, path, ModelConfig())
            if "CUDAExecutionProvider" in model.session.get_providers():
                pytest.skip("CUDA runs here: nothing to fall back from")
    assert "onnxruntime" not in capfd.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]
    assert warnings == [
        "warning: onnxruntime could not start CUDAExecutionProvider (its libraries did not "
        "load; NETC_DEBUG=1 shows onnxruntime's reason); models run on the CPU"
    ]


def test_infinite_scores_give_nan_probabilities_without_numpy_s_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would be a line on stderr
        scores = probabilities(np.array([np.inf, 1.0, 2.0], np.float32))
    assert np.isnan(scores).all()
