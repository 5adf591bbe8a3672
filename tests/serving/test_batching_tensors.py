"""Merging requests into a batch and splitting the outputs back, on their own."""

import numpy as np

from netc.serving.batching_tensors import array_nbytes, merge, split


def _strings(*items) -> np.ndarray:
    """An object array of `items`, as BYTES inputs decode to (str) or stay (bytes)."""
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


def test_merge_concatenates_every_input_in_request_order():
    requests = [
        {"x": np.full((batch, 3), float(i), np.float32), "n": np.full((batch,), i, np.int64)}
        for i, batch in enumerate((2, 1, 3))
    ]
    merged = merge(requests)
    assert set(merged) == {"x", "n"}
    assert merged["x"].shape == (6, 3) and merged["x"].dtype == np.float32
    assert merged["n"].tolist() == [0, 0, 1, 2, 2, 2]
    assert (merged["x"][:, 0] == [0, 0, 1, 2, 2, 2]).all()


def test_split_gives_each_request_its_rows_as_views():
    outputs = {"y": np.arange(12, dtype=np.float32).reshape(6, 2), "k": np.arange(6)}
    parts = split(outputs, [2, 1, 3])
    assert [part["k"].tolist() for part in parts] == [[0, 1], [2], [3, 4, 5]]
    assert [part["y"].shape for part in parts] == [(2, 2), (1, 2), (3, 2)]
    assert all(np.shares_memory(part["y"], outputs["y"]) for part in parts)


def test_split_undoes_merge():
    requests = [{"x": np.random.default_rng(i).normal(size=(i + 1, 4))} for i in range(4)]
    parts = split(merge(requests), [len(r["x"]) for r in requests])
    assert all((part["x"] == r["x"]).all() for part, r in zip(parts, requests))


def test_strings_merge_and_split_as_objects():
    """BYTES inputs decode to object arrays of str: they batch like numbers, each item
    kept as the same object, never truncated to a fixed width."""
    long = "h\u00e9llo w\u00f6rld " * 1000
    requests = [
        {"text": _strings("a").reshape(1, 1)},
        {"text": _strings(long, "").reshape(2, 1)},
        {"text": _strings(b"raw\x00bytes").reshape(1, 1)},
    ]
    merged = merge(requests)
    assert merged["text"].dtype == np.object_ and merged["text"].shape == (4, 1)
    assert merged["text"][1, 0] is requests[1]["text"][0, 0]
    parts = split({"labels": merged["text"]}, [1, 2, 1])
    assert [p["labels"].ravel().tolist() for p in parts] == [["a"], [long, ""], [b"raw\x00bytes"]]


def test_array_nbytes_counts_the_text_of_strings():
    numbers = np.zeros((2, 3, 4), np.float32)
    assert array_nbytes(numbers) == 96
    strings = _strings("x" * 1_000_000, b"yz")
    assert array_nbytes(strings) == strings.nbytes + 1_000_002
