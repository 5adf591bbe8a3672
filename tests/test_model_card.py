"""netc.model_card: what export writes is what the server reads, byte for byte and back."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netc.compiler import symbolic as sym
from netc.compiler.symbolic import Sym
from netc.errors import InternalError
from netc.model_card import ModelCard, Preprocessing, precision_props, size_rule

RUN_EXPORT = ModelCard(  # what `netc export RUN` writes for a dense net trained at 16x16
    network="opentiny",
    task="segmentation",
    description_sha256="0" * 64,
    labels=("0", "1"),
    preprocessing=Preprocessing(
        mean=(0.5,), std=(0.25,), input_size=(None, None), resize_to=(16, 16), channels=1
    ),
    fully_convolutional_from="classification",
    validation_split=(0.15, 0),
    output_stride=(4.0, 4.0),
    output_offset=(1.5, 1.5),
)


def test_props_are_the_bytes_export_has_always_written():
    assert RUN_EXPORT.to_props() == {
        "netc.network": "opentiny",
        "netc.task": "segmentation",
        "netc.description_sha256": "0" * 64,
        "netc.preprocessing": '{"mean": [0.5], "std": [0.25], "input_size": [null, null], '
        '"resize_to": [16, 16], "layout": "NCHW", "value_range": [0.0, 1.0], "channels": 1}',
        "netc.labels": '["0", "1"]',
        "netc.fully_convolutional_from": "classification",
        "netc.validation_split": '{"val_fraction": 0.15, "seed": 0}',
        "netc.output_stride": "[4.0, 4.0]",
        "netc.output_offset": "[1.5, 1.5]",
    }
    written = {  # an fp32 export, then optimize --precision int8: its keys, in file order
        **RUN_EXPORT.to_props(),
        **precision_props("int8", {}),
    }
    assert list(written) == list(replace(RUN_EXPORT, precision="int8", quantization={}).to_props())
    assert ModelCard(task="classification").to_props() == {"netc.task": "classification"}


def test_precision_props_replace_what_optimize_records():
    assert precision_props("fp16") == {"netc.precision": "fp16"}
    assert precision_props("int8", {"format": "QDQ"}) == {
        "netc.precision": "int8",
        "netc.quantization": '{"format": "QDQ"}',
    }
    with pytest.raises(InternalError, match="precision 'int4'"):
        precision_props("int4")


def test_a_card_reads_back_as_written():
    card = replace(RUN_EXPORT, precision="int8", quantization={"calibration": "minmax"})
    assert ModelCard.from_props(card.to_props()) == card
    assert ModelCard.from_props({}) == ModelCard()


def test_writers_refuse_what_no_reader_accepts():
    with pytest.raises(InternalError, match="task 'detection'"):
        ModelCard(task="detection").to_props()
    with pytest.raises(InternalError, match="output_stride"):
        ModelCard(output_stride=(4.0,)).to_props()
    with pytest.raises(InternalError, match="labels"):
        ModelCard(labels=(0, 1)).to_props()


def test_foreign_values_under_netc_keys_are_read_as_absent():
    card = ModelCard.from_props(
        {
            "netc.preprocessing": "[1, 2]",
            "netc.output_stride": '"x"',
            "netc.output_offset": "not json",
            "netc.labels": "5",
            "netc.precision": "int4",
            "netc.validation_split": '{"val_fraction": 1.5, "seed": 0}',
            "netc.quantization": "[]",
        }
    )
    assert card == ModelCard()
    pre = Preprocessing.from_json(
        {"mean": "grey", "layout": 3, "value_range": [0], "resize_to": [16, True], "channels": 0}
    )
    assert pre == Preprocessing()


def test_normalisation_fits_the_models_channels():
    pre = Preprocessing(mean=(0.5,), std=(0.2, 0.25, 0.5))
    assert pre.normalisation(3) == ((0.5, 0.5, 0.5), (0.2, 0.25, 0.5))
    assert Preprocessing().normalisation(3) == (None, None)
    with pytest.raises(ValueError, match=r"std \[0.2, 0.25, 0.5\] does not fit 1 channels"):
        pre.normalisation(1)
    with pytest.raises(ValueError, match=r"std .* has a zero"):
        Preprocessing(std=(0.0,)).normalisation(1)
    with pytest.raises(ValueError, match=r"mean .* does not fit"):
        Preprocessing.from_json({"mean": [float("nan")]}).normalisation(1)


def test_a_single_number_is_one_value_for_every_channel():
    assert Preprocessing.from_json({"mean": 0.5, "std": 2}).normalisation(2) == (
        (0.5, 0.5),
        (2.0, 2.0),
    )


# --- the size rule: Sym.__str__ on export, size_rule in the server ---------------------------

STEP = st.one_of(
    st.tuples(st.just("add"), st.integers(-40, 40)),
    st.tuples(st.just("mul"), st.integers(1, 8)),
    st.tuples(st.just("floordiv"), st.integers(1, 32)),
    st.tuples(st.just("ceildiv"), st.integers(1, 32)),
)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(
    steps=st.lists(STEP, max_size=8),
    name=st.sampled_from(["H", "W", "H_image", "W_b2"]),
    sizes=st.lists(st.integers(-64, 4096), min_size=1, max_size=16),
)
def test_the_size_rule_reads_back_what_export_writes(steps, name, sizes):
    """Any size a chain of layers can compute, printed as export prints it into the ONNX
    dims, parses back into the same function of the input size."""
    x = Sym.var(name)
    for op, value in steps:
        x = getattr(sym, op)(x, value)
    rule = size_rule(str(x), name)
    if isinstance(x, int):  # the variable cancelled: export writes a fixed size
        assert rule is None
        return
    assert rule is not None, str(x)
    for size in sizes:
        assert rule(size) == x.evaluate({name: size}), f"{x} at {name}={size}"


def test_the_size_rule_refuses_what_netc_does_not_write():
    for foreign in ("unk__12", "H*W", "__import__('os')", "H**2", "W//2", "H/2", 7, None):
        assert size_rule(foreign, "H") is None
    assert size_rule("H//2", 32) is None  # a fixed input dimension


def test_the_card_and_the_server_load_without_torch():
    code = (
        "import sys, netc.model_card, netc.serving.model, netc.serving.vision_service; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False", result.stderr
