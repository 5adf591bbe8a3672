"""Score maps → the picture's own size, and probabilities."""

import numpy as np
import torch
from helpers import assert_close, assert_fp32_close

from netc.model_card import size_rule
from netc.serving.images.geometry import resample
from netc.serving.images.prepare import ImageInput, Prepared, prepare
from netc.serving.images.scores import dense_scores, output_mapping, probabilities

RNG = np.random.default_rng(0)


def test_padding_round_trip_returns_a_mask_of_the_pictures_size():
    """An identity 'model' on a padded picture: the mask is the picture's own argmax."""
    scores = RNG.random((4, 50, 70), dtype=np.float32)
    rules = (size_rule("4*(H//4)", "H"), size_rule("4*(W//4)", "W"))
    prepared = prepare(
        scores,
        ImageInput("x", np.dtype(np.float32), 4, (None, None), None, None),
        rules=rules,
    )
    assert prepared.tensor.shape == (1, 4, 52, 72) and prepared.content == (50, 70)
    assert_close(
        prepared.tensor[0, :, 50:, :70], np.repeat(scores[:, -1:], 2, axis=1), rtol=0, atol=0
    )
    mask, probs = dense_scores(prepared.tensor[0], prepared, want_scores=True)
    assert mask.shape == (50, 70) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, scores.argmax(axis=0))
    assert_fp32_close(probs, torch.softmax(torch.from_numpy(scores), 0))


def test_coarse_score_maps_are_sampled_through_stride_and_offset():
    """Output pixel i looks at input offset + i·stride: a map of those centres reads back
    each pixel's own coordinate (inside the covered range)."""
    stride, offset, height = 4.0, 15.5, 60
    prepared = Prepared(
        np.zeros((1, 1, height, height), np.float32), (height, height), (height, height)
    )
    centres = offset + stride * np.arange(8, dtype=np.float32)  # (60 - 28)//4 = 8 outputs
    output = np.stack([np.broadcast_to(centres[:, None], (8, 8))])
    scale, shift = output_mapping(prepared, (8, 8), (stride, stride), (offset, offset))
    sampled = resample(output, (height, height), scale, shift)[0]
    inside = np.arange(16, 44)
    assert_close(sampled[inside, 0], inside, rtol=0, atol=1e-4)
    assert sampled[:15].max() == centres[0] and sampled[45:].min() == centres[-1]


def test_scores_pass_through_when_already_probabilities():
    p = np.array([0.7, 0.2, 0.1], np.float32)
    assert probabilities(p) is p or np.array_equal(probabilities(p), p)
    logits = np.array([1.0, 2.0, 3.0], np.float32)
    assert_close(
        probabilities(logits),
        torch.softmax(torch.from_numpy(logits), 0),
        rtol=1e-6,
        atol=1e-7,
    )


def test_one_logit_is_two_classes_through_the_sigmoid():
    """A binary cross-entropy head's single score is the logit of class 1: a softmax over
    it would say 1.0 whatever it is."""
    from netc.serving.images.scores import score_classes

    logits = np.array([-3.0, 0.0, 2.5], np.float32)
    for value in logits:
        p = probabilities(np.array([value]))
        sigmoid = 1 / (1 + np.exp(-value))
        assert_fp32_close(p, np.array([1 - sigmoid, sigmoid], np.float32))
    assert score_classes(1) == 2 and score_classes(2) == 2 and score_classes(7) == 7
    edges = RNG.standard_normal((1, 30, 40)).astype(np.float32)  # a one-channel score map
    prepared = Prepared(edges[None], (30, 40), (30, 40))
    mask, probs = dense_scores(edges, prepared, want_scores=True)
    np.testing.assert_array_equal(mask, (edges[0] > 0).astype(np.uint8))
    assert probs.shape == (2, 30, 40)
    assert_fp32_close(probs[1], torch.sigmoid(torch.from_numpy(edges[0])))
    assert_fp32_close(probs.sum(axis=0), np.ones((30, 40), np.float32))
