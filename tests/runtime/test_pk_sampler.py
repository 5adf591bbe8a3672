"""P×K batches and in-batch triplet mining."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from helpers import assert_close

from netc.errors import ConfigError
from netc.runtime.losses import build_loss
from netc.runtime.pk_sampler import PK, choose_pk, pk_batches
from netc.runtime.train import train


def _labels() -> torch.Tensor:
    """Ten classes of 3 to 30 samples, shuffled."""
    sizes = [3, 5, 8, 12, 15, 18, 20, 24, 27, 30]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def test_every_batch_holds_exactly_k_of_each_of_p_classes():
    labels = _labels()
    batches = pk_batches(labels, PK(4, 3), len(labels) // 12, torch.Generator().manual_seed(1))
    assert len(batches) == len(labels) // 12
    for batch in batches:
        counts = Counter(labels[batch].tolist())
        assert len(counts) == 4 and set(counts.values()) == {3}
        for c in counts:  # every class here has at least 3 samples: no repeats in a batch
            chosen = batch[labels[batch] == c]
            assert len(set(chosen.tolist())) == 3


def test_no_sample_repeats_within_an_epoch_while_its_class_has_unused_ones():
    labels = _labels()
    drawn = torch.cat(pk_batches(labels, PK(4, 3), 16, torch.Generator().manual_seed(2)))
    for c in range(10):
        from_class = drawn[labels[drawn] == c].tolist()
        size = int((labels == c).sum())
        first_round = from_class[:size]
        assert len(set(first_round)) == len(first_round), c
    # the classes with the most unused samples go first: 192 draws of 162 samples cover
    # every sample, and none of a class larger than K·2 is drawn more than twice
    times = Counter(drawn.tolist())
    assert set(times) == set(range(len(labels)))
    large = [i for i in times if int((labels == labels[i]).sum()) > 6]
    assert max(times[i] for i in large) <= 2


def test_batches_are_seeded():
    labels = _labels()
    first = pk_batches(labels, PK(4, 3), 5, torch.Generator().manual_seed(3))
    again = pk_batches(labels, PK(4, 3), 5, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_pair_losses_get_pk_batches_by_default():
    assert choose_pk(None, 64, 10, "embedding", "triplet") == PK(8, 8)
    assert choose_pk(None, 32, 100, "embedding", {"type": "contrastive"}) == PK(16, 2)
    assert choose_pk(None, 64, 10, "classification", None) is None
    assert choose_pk(0, 64, 10, "embedding", "triplet") is None
    assert choose_pk(4, 32, 10, "classification", None) == PK(8, 4)
    with pytest.raises(ConfigError, match="does not divide the batch size 30"):
        choose_pk(4, 30, 10, "embedding", "triplet")
    with pytest.raises(ConfigError, match="needs 16 classes; the training split has 10"):
        choose_pk(2, 32, 10, "embedding", "triplet")


def _brute_force(x: np.ndarray, labels: np.ndarray, margin: float, mining: str) -> float:
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1) + 1e-12)
    losses = []
    n = len(labels)
    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [m for m in range(n) if labels[m] != labels[a]]
        if not positives or not negatives:
            continue
        if mining == "hard":
            hardest = max(d[a, p] for p in positives) - min(d[a, m] for m in negatives)
            losses.append(max(0.0, hardest + margin))
            continue
        for p in positives:
            farther = [d[a, m] for m in negatives if d[a, m] > d[a, p]]
            chosen = min(farther) if farther else max(d[a, m] for m in negatives)
            losses.append(max(0.0, d[a, p] - chosen + margin))
    return float(np.mean(losses))


@pytest.mark.parametrize("mining", ["hard", "semi_hard"])
def test_triplet_mining_matches_a_brute_force_search(mining):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    loss = build_loss(
        {"type": "triplet", "margin": 0.5, "mining": mining}, task="embedding", num_classes=4
    )
    expected = _brute_force(x.numpy(), labels.numpy(), 0.5, mining)
    assert_close(loss(x, labels), expected, rtol=1e-9, atol=1e-12)


def test_an_unknown_mining_is_named():
    with pytest.raises(ConfigError, match="did you mean 'semi_hard'"):
        build_loss({"type": "triplet", "mining": "semihard"}, task="embedding", num_classes=4)


def test_an_embedding_run_trains_on_pk_batches(tmp_path, capsys):
    spec = tmp_path / "embed.yaml"
    spec.write_text(
        "name: embed\ntask: embedding\ninputs: {image: [1, 8, 8]}\nlayers:\n"
        "  - {name: flatten, op: flatten}\n  - {name: fc, op: fc, units: 8}\n"
        "training: {epochs: 1, batch_size: 40, loss: {type: triplet, mining: semi_hard}}\n"
    )
    train(str(spec), "digits", tmp_path / "run", quiet=False)
    assert "P×K batches: 4 samples of each of 10 classes" in capsys.readouterr().err
