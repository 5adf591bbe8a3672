"""Every training loss matches a direct numpy reference, passes gradients, and rejects
bad settings (ConfigError on the dotted key) and bad targets (UserError, expected vs found)."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

from netc.errors import ConfigError, UserError, render
from netc.runtime.losses import build_loss

# --- numpy references (float64, loops where that is the clearest statement) ---


def _log_softmax(scores: np.ndarray, axis: int = 1) -> np.ndarray:
    shifted = scores - scores.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def ref_cross_entropy(scores, labels, smoothing=0.0, weights=None):
    """torch's definition: target q = (1-ε)·onehot + ε/K; l_n = -Σ_c w_c q_c log p_c;
    the mean divides by Σ_n w_{y_n}."""
    n, k = scores.shape
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64)
    q = np.full((n, k), smoothing / k) + (1 - smoothing) * np.eye(k)[labels]
    per_example = -(w * q * _log_softmax(scores)).sum(axis=1)
    return per_example.sum() / w[labels].sum()


def ref_hinge(scores, labels, margin=1.0, p=1):
    total = 0.0
    for i, y in enumerate(labels):
        for j in range(scores.shape[1]):
            if j != y:
                total += max(0.0, scores[i, j] - scores[i, y] + margin) ** p
    return total / len(labels)


def ref_contrastive(x, labels, margin=1.0):
    pairs = list(itertools.combinations(range(len(x)), 2))
    total = 0.0
    for i, j in pairs:
        d = np.linalg.norm(x[i] - x[j])
        total += d**2 if labels[i] == labels[j] else max(0.0, margin - d) ** 2
    return total / len(pairs)


def ref_triplet(x, labels, margin=0.2):
    losses = []
    n = len(x)
    for a, p, q in itertools.product(range(n), repeat=3):
        if a != p and labels[a] == labels[p] and labels[q] != labels[a]:
            d_ap, d_an = np.linalg.norm(x[a] - x[p]), np.linalg.norm(x[a] - x[q])
            losses.append(max(0.0, d_ap - d_an + margin))
    positive = [value for value in losses if value > 0]
    return sum(positive) / len(positive) if positive else 0.0


def ref_pixel_cross_entropy(scores, masks, ignore_index=255, weights=None):
    k = scores.shape[1]
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64)
    log_p = _log_softmax(scores, axis=1)
    total = weight_sum = 0.0
    for n, h, x in np.ndindex(*masks.shape):
        c = masks[n, h, x]
        if c != ignore_index:
            total -= w[c] * log_p[n, c, h, x]
            weight_sum += w[c]
    return total / weight_sum if weight_sum else 0.0


def _scores(n=8, k=5, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, spread, (n, k)).astype(np.float32), rng.integers(0, k, n)


def _value(loss, outputs, targets) -> float:
    return float(loss(torch.from_numpy(outputs), torch.from_numpy(targets)))


# --- each loss against its reference ---


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 3.0, 1.5]])
def test_cross_entropy_matches_reference(smoothing, weights):
    scores, labels = _scores(seed=1)
    config = {"type": "cross_entropy", "label_smoothing": smoothing}
    if weights:
        config["class_weights"] = weights
    loss = build_loss(config, task="classification", num_classes=5)
    assert_close(
        _value(loss, scores, labels),
        ref_cross_entropy(scores.astype(np.float64), labels, smoothing, weights),
        rtol=1e-5,
        atol=1e-6,
    )


def test_class_weights_favour_the_weighted_class():
    scores, labels = _scores(n=64, seed=2)
    plain = build_loss("cross_entropy", task="classification", num_classes=5)
    heavy = build_loss(
        {"type": "cross_entropy", "class_weights": [100, 1, 1, 1, 1]},
        task="classification",
        num_classes=5,
    )
    # Raising class 0's score lowers the weighted loss more than the plain one.
    better = scores.copy()
    better[labels == 0, 0] += 2.0
    assert (
        _value(heavy, scores, labels) - _value(heavy, better, labels)
        > _value(plain, scores, labels) - _value(plain, better, labels)
        > 0
    )


def test_label_smoothing_penalises_overconfidence():
    scores = np.array([[20.0, 0.0, 0.0]], dtype=np.float32)
    labels = np.array([0])
    plain = build_loss("cross_entropy", task="classification", num_classes=3)
    smooth = build_loss(
        {"type": "cross_entropy", "label_smoothing": 0.3}, task="classification", num_classes=3
    )
    assert _value(plain, scores, labels) < 1e-6
    assert _value(smooth, scores, labels) > 1.0


@pytest.mark.parametrize(("margin", "p"), [(1.0, 1), (0.5, 2), (2.0, 1)])
def test_hinge_matches_reference(margin, p):
    scores, labels = _scores(seed=3, spread=1.0)
    loss = build_loss(
        {"type": "hinge", "margin": margin, "p": p}, task="classification", num_classes=5
    )
    assert_close(
        _value(loss, scores, labels),
        ref_hinge(scores.astype(np.float64), labels, margin, p),
        rtol=1e-5,
        atol=1e-6,
    )
    # The documented scale: C times torch's multi_margin_loss.
    torch_value = 5 * F.multi_margin_loss(
        torch.from_numpy(scores), torch.from_numpy(labels), p=p, margin=margin
    )
    assert_close(_value(loss, scores, labels), float(torch_value), rtol=1e-5, atol=1e-6)


def test_hinge_cs231n_example():
    # CS231n's worked example: scores (3.2, 5.1, -1.7) for a cat (class 0) → 2.9.
    loss = build_loss("hinge", task="classification", num_classes=3)
    assert_close(
        _value(loss, np.array([[3.2, 5.1, -1.7]], np.float32), np.array([0])),
        2.9,
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_regression_onto_one_hot_labels(name):
    scores, labels = _scores(seed=4, spread=1.0)
    diff = scores.astype(np.float64) - np.eye(5)[labels]
    expected = np.abs(diff).mean() if name == "l1" else (diff**2).mean()
    loss = build_loss(name, task="classification", num_classes=5)
    assert_close(_value(loss, scores, labels), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["l1", "l2"])
def test_regression_onto_float_targets(name):
    rng = np.random.default_rng(5)
    outputs = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    targets = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    diff = outputs.astype(np.float64) - targets
    expected = np.abs(diff).mean() if name == "l1" else (diff**2).mean()
    loss = build_loss(name, task="segmentation", num_classes=3)
    assert_close(_value(loss, outputs, targets), expected, rtol=1e-5, atol=1e-6)


def test_l2_onto_segmentation_masks():
    rng = np.random.default_rng(6)
    outputs = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    masks = rng.integers(0, 3, (2, 4, 5))
    one_hot = np.eye(3)[masks].transpose(0, 3, 1, 2)
    loss = build_loss("l2", task="segmentation", num_classes=3)
    assert_close(
        _value(loss, outputs, masks), ((outputs - one_hot) ** 2).mean(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("margin", [1.0, 3.0])
def test_contrastive_matches_reference(margin):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 10)
    loss = build_loss({"type": "contrastive", "margin": margin}, task="embedding", num_classes=3)
    assert_close(
        _value(loss, x, labels),
        ref_contrastive(x.astype(np.float64), labels, margin),
        rtol=1e-5,
        atol=1e-6,
    )


def test_contrastive_by_hand():
    # Pairs: (0,1) same, d=5 → 25; (0,2) different, d=1 → (2-1)² = 1; (1,2) d=√18 > 2 → 0.
    x = np.array([[0, 0], [3, 4], [0, 1]], np.float32)
    loss = build_loss({"type": "contrastive", "margin": 2.0}, task="embedding", num_classes=2)
    assert_close(_value(loss, x, np.array([0, 0, 1])), 26 / 3, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("margin", [0.2, 1.0, 5.0])
def test_triplet_matches_reference(margin):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 12)
    loss = build_loss({"type": "triplet", "margin": margin}, task="embedding", num_classes=3)
    assert_close(
        _value(loss, x, labels),
        ref_triplet(x.astype(np.float64), labels, margin),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        # Triplets (a, p, n): (0, 1, 2): 1 - 1.5 + m; (1, 0, 2): 1 - 0.5 + m.
        (1.0, (0.5 + 1.5) / 2),
        (0.2, 0.7),  # (0, 1, 2) gives max(0, -0.3) = 0 and is not counted in the mean
    ],
)
def test_triplet_by_hand(margin, expected):
    x = np.array([[0.0], [1.0], [1.5]], np.float32)
    loss = build_loss({"type": "triplet", "margin": margin}, task="embedding", num_classes=2)
    assert_close(_value(loss, x, np.array([0, 0, 1])), expected, rtol=1e-5, atol=1e-6)


def test_triplet_without_triplets_is_zero():
    loss = build_loss("triplet", task="embedding", num_classes=4)
    x = torch.randn(4, 3, requires_grad=True)
    value = loss(x, torch.arange(4))  # no positives
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0, 4.0]])
def test_pixel_cross_entropy_matches_reference(weights):
    rng = np.random.default_rng(9)
    scores = rng.normal(0, 2, (2, 4, 5, 6)).astype(np.float32)
    masks = rng.integers(0, 4, (2, 5, 6))
    masks[rng.random(masks.shape) < 0.3] = 255
    config = {"type": "pixel_cross_entropy"} | ({"class_weights": weights} if weights else {})
    loss = build_loss(config, task="segmentation", num_classes=4)
    assert_close(
        _value(loss, scores, masks),
        ref_pixel_cross_entropy(scores.astype(np.float64), masks, 255, weights),
        rtol=1e-5,
        atol=1e-6,
    )


def test_pixel_cross_entropy_ignores_pixels():
    rng = np.random.default_rng(10)
    scores = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    masks = rng.integers(0, 3, (1, 4, 4))
    masks[0, :2] = 7
    loss = build_loss(
        {"type": "pixel_cross_entropy", "ignore_index": 7}, task="segmentation", num_classes=3
    )
    changed = scores.copy()
    changed[0, :, :2] = 100 * rng.normal(size=(3, 2, 4))
    assert _value(loss, scores, masks) == _value(loss, changed, masks)
    masks[:] = 7
    assert _value(loss, scores, masks) == 0.0  # not NaN


def test_pixel_cross_entropy_shape_mismatch():
    loss = build_loss(None, task="segmentation", num_classes=3)
    with pytest.raises(UserError, match="shape mismatch") as error:
        loss(torch.zeros(2, 3, 12, 16), torch.zeros(2, 24, 32, dtype=torch.long))
    assert "12x16" in str(error.value) and "24x32" in str(error.value)


# --- gradients ---

GRADIENT_CASES = [
    ("cross_entropy", "classification", (6, 4), lambda: torch.randint(0, 4, (6,))),
    (
        {"type": "cross_entropy", "label_smoothing": 0.1, "class_weights": [1, 2, 3, 4]},
        "classification",
        (6, 4),
        lambda: torch.randint(0, 4, (6,)),
    ),
    ({"type": "hinge", "p": 2}, "classification", (6, 4), lambda: torch.randint(0, 4, (6,))),
    ("l1", "classification", (6, 4), lambda: torch.randint(0, 4, (6,))),
    ("l2", "segmentation", (2, 4, 3, 3), lambda: torch.randn(2, 4, 3, 3)),
    ("contrastive", "embedding", (6, 4), lambda: torch.tensor([0, 0, 1, 1, 2, 2])),
    ("triplet", "embedding", (6, 4), lambda: torch.tensor([0, 0, 1, 1, 2, 2])),
    ("pixel_cross_entropy", "segmentation", (2, 4, 3, 3), lambda: torch.randint(0, 4, (2, 3, 3))),
]


@pytest.mark.parametrize(("config", "task", "shape", "targets"), GRADIENT_CASES)
def test_gradients_flow(config, task, shape, targets):
    torch.manual_seed(0)
    outputs = torch.randn(*shape, requires_grad=True)
    loss = build_loss(config, task=task, num_classes=4)
    value = loss(outputs, targets())
    assert value.shape == ()
    value.backward()
    assert torch.isfinite(outputs.grad).all() and outputs.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["contrastive", "triplet"])
def test_identical_embeddings_give_finite_gradients(name):
    # d = 0 between copies: sqrt's derivative is infinite there without the eps guard.
    base = torch.randn(3, 4)
    outputs = torch.cat([base, base]).requires_grad_()
    labels = torch.tensor([0, 1, 2, 1, 0, 2])  # copies across classes: d(a, n) = 0
    value = build_loss(name, task="embedding", num_classes=3)(outputs, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(outputs.grad).all()


# --- defaults and names ---


@pytest.mark.parametrize(
    ("task", "name"),
    [
        ("classification", "cross_entropy"),
        ("segmentation", "pixel_cross_entropy"),
        ("embedding", "triplet"),
    ],
)
def test_default_loss_by_task(task, name):
    assert build_loss(None, task=task, num_classes=3).name == name
    assert build_loss({}, task=task, num_classes=3).name == name


def test_options_without_type_use_the_task_default():
    loss = build_loss({"label_smoothing": 0.2}, task="classification", num_classes=3)
    assert loss.name == "cross_entropy" and loss.label_smoothing == 0.2


def test_triplet_default_margin():
    assert build_loss("triplet", task="embedding", num_classes=2).margin == 0.2
    assert build_loss("contrastive", task="embedding", num_classes=2).margin == 1.0


# --- bad targets: UserError naming expected and found ---


@pytest.mark.parametrize(
    ("config", "task", "outputs", "targets", "words"),
    [
        (
            "cross_entropy",
            "classification",
            torch.zeros(4, 3),
            torch.zeros(5, dtype=torch.long),
            ["wrong shape", "(N,) = (4,)", "found (5,)"],
        ),
        (
            "cross_entropy",
            "classification",
            torch.zeros(4, 3),
            torch.zeros(4),
            ["integer class labels", "torch.float32 (4,)"],
        ),
        (
            "cross_entropy",
            "classification",
            torch.zeros(4, 3),
            torch.tensor([0, 1, 3, 2]),
            ["not a class index", "labels in 0..2", "label 3"],
        ),
        (
            "cross_entropy",
            "classification",
            torch.zeros(4, 5),
            torch.zeros(4, dtype=torch.long),
            ["5 scores", "3 classes"],
        ),
        (
            "hinge",
            "classification",
            torch.zeros(4, 3, 2),
            torch.zeros(4, dtype=torch.long),
            ["(N, K)", "found (4, 3, 2)"],
        ),
        (
            "l2",
            "classification",
            torch.zeros(4, 3),
            torch.zeros(4, 2),
            ["outputs' shape", "expected (4, 3)", "found (4, 2)"],
        ),
        (
            "triplet",
            "embedding",
            torch.zeros(4, 3),
            torch.zeros(4, 1, dtype=torch.long),
            ["wrong shape", "found (4, 1)"],
        ),
        (
            "pixel_cross_entropy",
            "segmentation",
            torch.zeros(2, 3, 4, 4),
            torch.full((2, 4, 4), 9),
            ["label 9", "255 (ignore_index)"],
        ),
        (
            "pixel_cross_entropy",
            "segmentation",
            torch.zeros(2, 3, 4, 4),
            torch.zeros(2, 1, 4, 4, dtype=torch.long),
            ["(N, H, W)", "found (2, 1, 4, 4)"],
        ),
    ],
)
def test_bad_targets(config, task, outputs, targets, words):
    loss = build_loss(config, task=task, num_classes=3)
    with pytest.raises(UserError) as error:
        loss(outputs, targets)
    assert not isinstance(error.value, ConfigError)
    message = render(error.value)
    assert message.startswith(f"error: loss {loss.name}:")
    for word in words:
        assert word in message, message


# --- bad settings: ConfigError on the dotted key ---


@pytest.mark.parametrize(
    ("config", "task", "key", "words"),
    [
        (
            "crossentropy",
            "classification",
            "training.loss",
            ["unknown loss", "did you mean 'cross_entropy'"],
        ),
        ({"type": "tripplet"}, "embedding", "training.loss.type", ["did you mean 'triplet'"]),
        (7, "classification", "training.loss", ["integer 7"]),
        (
            {"type": "cross_entropy", "smoothing": 0.1},
            "classification",
            "training.loss.smoothing",
            ["unknown option", "did you mean 'label_smoothing'"],
        ),
        (
            {"type": "cross_entropy", "label_smoothing": 1.5},
            "classification",
            "training.loss.label_smoothing",
            ["[0, 1)", "number 1.5"],
        ),
        (
            {"type": "cross_entropy", "label_smoothing": 1.0},  # uniform targets: nothing to learn
            "classification",
            "training.loss.label_smoothing",
            ["[0, 1)", "number 1.0"],
        ),
        (
            {"type": "cross_entropy", "label_smoothing": "0.1"},
            "classification",
            "training.loss.label_smoothing",
            ["must be a number", "string '0.1'"],
        ),
        (
            {"type": "cross_entropy", "class_weights": [1, 2]},
            "classification",
            "training.loss.class_weights",
            ["expected 3 entries", "found 2 entries"],
        ),
        (
            {"type": "cross_entropy", "class_weights": [1, 0, 2]},
            "classification",
            "training.loss.class_weights[1]",
            ["> 0", "integer 0"],
        ),
        (
            {"type": "cross_entropy", "class_weights": 2},
            "classification",
            "training.loss.class_weights",
            ["a list of 3 numbers"],
        ),
        ({"type": "hinge", "p": 3}, "classification", "training.loss.p", ["[1, 2]", "integer 3"]),
        ({"type": "hinge", "p": 1.5}, "classification", "training.loss.p", ["an integer"]),
        ({"type": "hinge", "margin": -1}, "classification", "training.loss.margin", ["> 0"]),
        (
            {"type": "hinge", "margin": True},
            "classification",
            "training.loss.margin",
            ["boolean true"],
        ),
        ({"type": "triplet", "margin": "1e-3"}, "embedding", "training.loss.margin", ["1.0e-3"]),
        (
            {"type": "contrastive", "margin": float("nan")},
            "embedding",
            "training.loss.margin",
            ["finite"],
        ),
        (
            {"type": "l1", "margin": 1},
            "classification",
            "training.loss.margin",
            ["expected no options"],
        ),
        (
            {"type": "pixel_cross_entropy", "ignore_index": 2.5},
            "segmentation",
            "training.loss.ignore_index",
            ["an integer"],
        ),
        (
            "cross_entropy",
            "segmentation",
            "training.loss",
            ["does not fit a segmentation network", "pixel_cross_entropy"],
        ),
        ({"type": "triplet"}, "classification", "training.loss.type", ["does not fit"]),
        ("pixel_cross_entropy", "embedding", "training.loss", ["expected contrastive or triplet"]),
    ],
)
def test_bad_settings(config, task, key, words):
    with pytest.raises(ConfigError) as error:
        build_loss(config, task=task, num_classes=3)
    message = render(error.value)
    assert error.value.key == key
    assert f"error: {key}: " in message
    for word in words:
        assert word in message, message


def test_setting_errors_carry_the_file_location():
    from netc.yaml_loader import load_located

    config = load_located("type: cross_entropy\nlabel_smoothing: 2.0\n", "net.yaml")
    with pytest.raises(ConfigError, match=r"^net\.yaml:2:18: training\.loss\.") as error:
        build_loss(config, task="classification", num_classes=3)
    assert render(error.value).startswith("net.yaml:2:18: error: training.loss.")
