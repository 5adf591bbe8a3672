"""Wire ⇄ numpy conversion without a server: raw and typed inputs, BYTES, outputs, top-k."""

from __future__ import annotations

import numpy as np
import pytest

from netc.protos.generated import grpc_service_pb2 as pb
from netc.serving.errors import InvalidRequest, Unsupported
from netc.serving.tensors import (
    add_output,
    classify,
    common_request,
    decode_bytes,
    decode_inputs,
    encode_bytes,
)


def _request(*tensors, raw=None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, contents in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if contents:
            tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    request.raw_input_contents.extend(raw or [])
    return request


def test_raw_inputs_of_every_numeric_type_round_trip():
    for datatype, dtype in [
        ("FP32", np.float32),
        ("FP16", np.float16),
        ("INT64", np.int64),
        ("UINT8", np.uint8),
        ("BOOL", np.bool_),
        ("FP64", np.float64),
    ]:
        array = (np.arange(6) % 3).astype(dtype).reshape(2, 3)
        (decoded,) = decode_inputs(
            _request(("x", datatype, [2, 3], None), raw=[array.tobytes()])
        ).values()
        assert decoded.dtype == dtype and np.array_equal(decoded, array), datatype


def test_bytes_inputs_and_outputs_use_length_prefixes():
    items = [b"", b"a", "\u00e9t\u00e9".encode()]
    data = encode_bytes(np.array(items, dtype=np.object_))
    assert data[:4] == b"\x00\x00\x00\x00" and data[4:9] == b"\x01\x00\x00\x00a"
    (decoded,) = decode_inputs(_request(("s", "BYTES", [3], None), raw=[data])).values()
    assert list(decoded) == ["", "a", "\u00e9t\u00e9"]  # str: onnxruntime's strings are text
    assert encode_bytes(decoded) == data
    with pytest.raises(
        InvalidRequest,
        match=r"input 's': raw BYTES content holds 3 elements, "
        r"expected 2",
    ):
        decode_inputs(_request(("s", "BYTES", [2], None), raw=[data]))
    with pytest.raises(InvalidRequest, match="claims 9 bytes, but only 1 remain"):
        decode_bytes(b"\x09\x00\x00\x00x", 1, "input 's'")


def test_typed_contents():
    request = _request(
        ("a", "FP32", [2], {"fp32_contents": [1.5, -2]}),
        ("b", "INT8", [1, 2], {"int_contents": [-3, 4]}),
        ("c", "BYTES", [1], {"bytes_contents": [b"xy"]}),
    )
    tensors = decode_inputs(request)
    assert tensors["a"].dtype == np.float32 and list(tensors["a"]) == [1.5, -2.0]
    assert tensors["b"].dtype == np.int8 and tensors["b"].tolist() == [[-3, 4]]
    assert tensors["c"].tolist() == ["xy"]


def test_bytes_that_are_not_utf8_name_their_element():
    data = encode_bytes(np.array([b"ok", b"x", b"fine", b"ab\xe9"], dtype=np.object_))
    with pytest.raises(InvalidRequest) as caught:
        decode_inputs(_request(("s", "BYTES", [2, 2], None), raw=[data]))
    assert str(caught.value).startswith(
        "input 's': BYTES element [1, 1] is not valid UTF-8 (byte 2 of 3, 0xe9: "
    )
    typed = _request(("t", "BYTES", [2], {"bytes_contents": [b"\xc3", b"y"]}))
    with pytest.raises(InvalidRequest, match=r"input 't': BYTES element \[0\] is not valid"):
        decode_inputs(typed)


@pytest.mark.parametrize(
    "request_, error, message",
    [
        (
            _request(("x", "FP32", [1, 4], None), raw=[b"\x00" * 12]),
            InvalidRequest,
            r"input 'x': raw content has 12 bytes, expected 16 for FP32 \[1, 4\]",
        ),
        (
            _request(("x", "FP32", [1], None), ("y", "FP32", [1], None), raw=[b"\x00" * 4]),
            InvalidRequest,
            r"1 raw_input_contents for 2 inputs \('x', 'y'\)",
        ),
        (
            _request(("x", "FP32", [3], {"fp32_contents": [1.0]})),
            InvalidRequest,
            r"input 'x': 1 fp32_contents values, expected 3 for FP32 \[3\]",
        ),
        (
            _request(("x", "INT8", [1], {"int_contents": [300]})),
            InvalidRequest,
            r"input 'x': int_contents has values outside the INT8 range -128..127",
        ),
        (
            _request(("x", "FP16", [1], {"fp32_contents": [1.0]})),
            InvalidRequest,
            r"input 'x': FP16 data must be sent in raw_input_contents",
        ),
        (
            _request(("x", "FP32", [2], None)),
            InvalidRequest,
            r"input 'x': no data; expected FP32 \[2\]",
        ),
        (
            _request(("x", "FLOAT", [1], None), raw=[b"\x00" * 4]),
            InvalidRequest,
            r"input 'x': unknown or unsupported datatype 'FLOAT'",
        ),
        (
            _request(("x", "FP32", [-1, 2], None), raw=[b""]),
            InvalidRequest,
            r"input 'x': shape \[-1, 2\] has a negative dimension",
        ),
        (
            _request(("x", "FP32", [1], None), ("x", "FP32", [1], None), raw=[b"\0" * 4] * 2),
            InvalidRequest,
            r"input 'x' appears more than once",
        ),
        (
            _request(("x", "FP32", [1], {"fp32_contents": [1.0]}), raw=[b"\x00" * 4]),
            InvalidRequest,
            r"input 'x': typed contents given together with raw_input_contents",
        ),
    ],
)
def test_bad_inputs_name_the_tensor(request_, error, message):
    with pytest.raises(error, match=message):
        decode_inputs(request_)


def test_shared_memory_inputs_are_unsupported():
    request = _request(("x", "FP32", [1], None))
    request.inputs[0].parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(Unsupported, match="input 'x': shared-memory inputs"):
        decode_inputs(request)


def test_outputs_go_raw_in_order():
    response = pb.ModelInferResponse()
    add_output(response, "scores", np.array([[1.0, 2.0]], np.float32))
    add_output(response, "labels", np.array([b"a", b"bc"], dtype=np.object_))
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("scores", "FP32", [1, 2]),
        ("labels", "BYTES", [2]),
    ]
    assert response.raw_output_contents[0] == np.array([1.0, 2.0], np.float32).tobytes()
    assert response.raw_output_contents[1] == b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"


def test_classify_takes_the_top_k_of_each_item():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4]], np.float32)
    top = classify(scores, 2, ["cat", "dog", "eel"], batched=True)
    assert top.tolist() == [
        [b"0.700000:1:dog", b"0.200000:2:eel"],
        [b"0.500000:0:cat", b"0.400000:2:eel"],
    ]
    assert classify(np.array([3, 9], np.int64), 5, None, batched=False).tolist() == [
        b"9:1",
        b"3:0",
    ]  # k beyond the class count gives every class; no labels, no third part


def _image(shape=(1, 1, 32, 32), datatype="FP32", name="image", data=None, **extra):
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    request = _request((name, datatype, list(shape), None), raw=[array.tobytes()])
    if data is not None:
        request.raw_input_contents[0] = data
    for key, value in extra.items():
        if key == "parameter":
            request.inputs[0].parameters[value].bool_param = True
        elif key == "contents":
            request.inputs[0].contents.fp32_contents.extend(value)
        elif key == "second":
            request.inputs.add(name=value, datatype="FP32", shape=[1])
            request.raw_input_contents.append(b"\0" * 4)
    return request


COMMON_CASES = {
    "batch of 1": _image(),
    "batch of 3": _image((3, 1, 32, 32)),
    "batch of 16 (the most)": _image((16, 1, 32, 32)),
    "batch of 17": _image((17, 1, 32, 32)),
    "wrong size": _image((1, 1, 28, 28)),
    "no batch dim": _image((1, 32, 32)),
    "wrong datatype": _image(datatype="FP64"),
    "unknown input": _image(name="picture"),
    "short data": _image(data=b"\0" * 100),
    "a parameter": _image(parameter="shared_memory_region"),
    "typed contents too": _image(contents=[1.0]),
    "a second input": _image(second="extra"),
}


@pytest.fixture(scope="module")
def lenet(repository):
    from netc.serving.config import ModelConfig
    from netc.serving.model import ServedModel

    return ServedModel("lenet5", "1", repository / "lenet5" / "1" / "model.onnx", ModelConfig())


@pytest.mark.parametrize("case", sorted(COMMON_CASES))
def test_common_request_agrees_with_the_general_path(lenet, case):
    """The one-pass decoding gives exactly what decode + check give for every request the
    model takes as it is, and declines every request the general path refuses (which
    then names the mistake)."""
    request = COMMON_CASES[case]
    common = common_request(request, lenet.expected, lenet.info.max_batch_size)
    try:
        inputs = decode_inputs(request)
        general = lenet.check(inputs)
    except (InvalidRequest, Unsupported):
        assert common is None, f"{case}: the general path refuses what the fast one takes"
        return
    assert common is not None, f"{case}: declined a request the model takes as it is"
    fast_inputs, fast_batch, fast_key = common
    assert (fast_batch, fast_key) == (general.batch, general.key)
    assert fast_inputs.keys() == inputs.keys()
    for name in inputs:
        assert fast_inputs[name].dtype == inputs[name].dtype
        np.testing.assert_array_equal(fast_inputs[name], inputs[name])


@pytest.mark.parametrize("case", sorted(COMMON_CASES))
def test_checked_is_the_one_decoder(lenet, case):
    """`ServedModel.checked` takes every request the general path takes, with the same
    CheckedRequest, and refuses every other, naming the input at fault."""
    from netc.serving.batching_tensors import CheckedRequest

    request = COMMON_CASES[case]
    try:
        general = lenet.check(decode_inputs(request))
    except (InvalidRequest, Unsupported):
        # refused too, naming the input (its headers are judged before its data)
        with pytest.raises((InvalidRequest, Unsupported), match="input '"):
            lenet.checked(request)
        return
    checked = lenet.checked(request)
    assert isinstance(checked, CheckedRequest)
    assert (checked.batch, checked.key) == (general.batch, general.key)
    for name, array in general.inputs.items():
        np.testing.assert_array_equal(checked.inputs[name], array)


@pytest.mark.parametrize(
    ("dims", "max_batch", "shape"),
    [
        ((), 8, ()),  # a [batch] input sent without even the batch dim
        ((3, -1, -1), 8, (1, 3, -1, -1)),  # open sizes, the request repeating the -1s
        ((3, -1, -1), 8, (1, 3, 4, 4)),  # open sizes always take the general path
        ((2,), 0, (1, 2)),  # an unbatched model sent a batch dim
    ],
)
def test_common_request_declines_what_only_the_general_path_can_judge(dims, max_batch, shape):
    from netc.serving.model_info import TensorSpec

    expected = {"x": (TensorSpec("x", "FP32", dims), np.dtype(np.float32))}
    count = int(np.prod(shape)) if shape else 1
    request = _request(("x", "FP32", list(shape), None), raw=[b"\0" * 4 * max(count, 0)])
    assert common_request(request, expected, max_batch) is None


def test_the_top_k_without_a_full_sort_equals_a_stable_sort():
    from netc.serving.tensors import _top

    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        values = rng.integers(0, 6, n).astype(np.float32)  # many ties
        if trial % 3 == 0:
            values[rng.integers(0, n, max(1, n // 2))] = np.nan
        for k in {1, 2, n // 3 or 1, n}:
            expected = np.argsort(-values.astype(np.float64), kind="stable")[:k]
            np.testing.assert_array_equal(_top(values, k), expected, err_msg=f"{values} k={k}")


def test_a_classification_of_a_dense_map_is_refused_not_spelled_out():
    from netc.serving.tensors import MAX_CLASSIFICATION, classify

    dense = np.zeros((1, 4, 64, 64), np.float32)  # 16,384 values per item
    with pytest.raises(InvalidRequest, match=f"at most {MAX_CLASSIFICATION} top entries"):
        classify(dense, 2**62, None, batched=True)
    assert classify(dense, 3, None, batched=True).shape == (1, 3)
    assert classify(np.arange(10.0)[None], 2**62, None, batched=True).shape == (1, 10)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([0, 2**62, 2**62], "has a dimension over 2147483647"),
        ([1] * 65, "shape has 65 dimensions; at most 32"),
    ],
)
def test_shapes_numpy_cannot_hold_are_invalid_requests(shape, message):
    request = _request(("x", "FP32", shape, None), raw=[b""])
    with pytest.raises(InvalidRequest, match=message):
        decode_inputs(request)
