"""A picture → the model's input: training's preprocessing, channels, padding, limits."""

import numpy as np
import pytest
import torch
from helpers import assert_close, assert_fp32_close

from netc import model_card
from netc.runtime.preprocess import Preprocessing
from netc.serving.errors import InvalidRequest, Unsupported
from netc.serving.images import decode, prepare
from netc.serving.model_info import ModelInfo, TensorSpec


def _info(dims, *, mean=None, std=None, max_batch_size=8, name="m") -> ModelInfo:
    return ModelInfo(
        name=name,
        version="1",
        inputs=(TensorSpec("image", "FP32", tuple(dims)),),
        outputs=(TensorSpec("out", "FP32", (10,)),),
        max_batch_size=max_batch_size,
        preprocessing=model_card.Preprocessing.from_json(
            {
                "mean": mean,
                "std": std,
                "layout": "NCHW",
                "value_range": [0, 1],
                "channels": dims[-3] if len(dims) > 2 else None,
            }
        ),
    )


RNG = np.random.default_rng(0)


def test_prepare_matches_training_preprocessing_for_a_fixed_size_model():
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    picture = RNG.random((3, 45, 61), dtype=np.float32)
    prepared = prepare.prepare(picture, _info((3, 32, 32), mean=mean, std=std))
    reference = Preprocessing(mean=mean, std=std, input_size=(32, 32)).apply(
        torch.from_numpy(picture)
    )
    assert prepared.original == (45, 61) and prepared.content == (32, 32)
    assert prepared.tensor.shape == (1, 3, 32, 32) and prepared.tensor.dtype == np.float32
    assert_fp32_close(prepared.tensor[0], reference)


def test_prepare_converts_channels_and_skips_missing_normalisation():
    picture = RNG.random((3, 8, 8), dtype=np.float32)
    prepared = prepare.prepare(picture, _info((1, 1, -1, -1), max_batch_size=0))
    assert prepared.tensor.shape == (1, 1, 8, 8)
    assert_close(prepared.tensor[0], decode.to_channels(picture, 1), rtol=0, atol=0)


def test_models_the_service_cannot_feed_are_unsupported():
    with pytest.raises(Unsupported, match="needs an image input"):
        prepare.image_input(_info((3, 32)))
    with pytest.raises(Unsupported, match=r"std .* does not fit 3 channels"):
        prepare.image_input(_info((3, 8, 8), std=[1.0, 2.0]))


def test_the_pixel_limit_counts_the_padding_the_model_runs_on():
    rules = (model_card.size_rule("4*(H//4)", "H"), model_card.size_rule("4*(W//4)", "W"))
    spec = prepare.ImageInput("x", np.dtype(np.float32), 1, (None, None), None, None)
    thin = np.zeros((1, 1, 60), np.float32)  # 60 pixels, run as 4 x 60 = 240
    with pytest.raises(InvalidRequest, match=r"60x1; the model runs it padded to 60x4"):
        prepare.prepare(thin, spec, rules=rules, max_pixels=239)
    assert prepare.prepare(thin, spec, rules=rules, max_pixels=240).tensor.shape == (1, 1, 4, 60)
