"""Descriptions built to break the compiler (found by fuzzing) exit 2 with a message, or
compile: never an internal error, a traceback, a hang or gigabytes of memory."""

import pytest

from netc.cli import main

HEAD = "name: a\ninputs: {x: [3, 8, 8]}\nlayers:\n"
BIG = "1" + "0" * 400
FANOUT = (
    "name: a\ninputs: {x: [3, 8, 8]}\nblocks:\n  b0: {layers: [{name: r, op: relu}]}\n"
    + "".join(
        f"  b{i}: {{layers: [{{name: p, block: b{i - 1}}}, {{name: q, block: b{i - 1}}}, "
        f"{{name: s, block: b{i - 1}}}, {{name: t, block: b{i - 1}}}]}}\n"
        for i in range(1, 13)
    )
    + "layers:\n  - {name: top, block: b12}\n"
)


def _chain(depth: int) -> str:
    """Blocks b1 ... b<depth>, each using the one before: deep, but no cycle."""
    blocks = "".join(
        f"  b{i}: {{layers: [{{name: x, block: b{i - 1}}}]}}\n" for i in range(1, depth)
    )
    return (
        "name: a\ninputs: {x: [3, 8, 8]}\nblocks:\n  b0: {layers: [{name: r, op: relu}]}\n"
        + blocks
        + f"layers:\n  - {{name: top, block: b{depth - 1}}}\n"
    )


FAILING = {
    "a name ending in a newline": (
        HEAD + '  - {name: "r\\n", op: relu}\n',
        "layer name 'r\\n' is not a valid name",
    ),
    "repeat of a hundred million": (
        HEAD + "  - {name: r, op: relu, repeat: 100000000}\n",
        "'repeat' must be a positive count",
    ),
    "blocks using blocks 4^12 times": (FANOUT, "expands to more than 100,000 layers"),
    "blocks nested 65 deep": (_chain(65), "blocks nest more than 64 deep"),
    "a 401-digit epsilon": (
        HEAD + f"  - {{name: b, op: batch_norm, eps: {BIG}}}\n",
        "number too large",
    ),
    "a 401-digit input size": (
        f"name: a\ninputs: {{x: [3, {BIG}, {BIG}]}}\nlayers:\n  - {{name: r, op: relu}}\n",
        "number too large",
    ),
    "a bare !!int tag": (
        HEAD.replace("layers:", "description: !!int\nlayers:") + "  - {name: r, op: relu}\n",
        "cannot read this tagged value",
    ),
    "a control character": (
        "name: a\x07\n" + HEAD[8:] + "  - {name: r, op: relu}\n",
        "unacceptable character",
    ),
    "200 nested lists": (
        HEAD.replace("layers:", "description: " + "[" * 200 + "]" * 200 + "\nlayers:")
        + "  - {name: r, op: relu}\n",
        "too deeply",
    ),
    "sizes nested 800 deep": (
        "name: a\ninputs: {x: [3, null, null]}\nblocks:\n  pu: {layers: [{name: p, op: max_pool, "
        "kernel: 2}, {name: u, op: upsample, scale: 3}]}\nlayers:\n  - {name: s, block: pu, "
        "repeat: 400}\n",
        "too deeply",
    ),
}

COMPILING = {
    "strides that multiply past a float": (
        "name: a\ninputs: {x: [3, 32, 32]}\nlayers:\n  - {name: p, op: max_pool, kernel: 1, "
        "stride: 999999999, repeat: 40}\n  - {name: c, op: conv, channels: 3, kernel: 2, "
        "padding: 1}\n"
    ),
    "a second input with its own open size": (
        "name: a\ninputs: {a: [3, null, 32], b: [3, null, null]}\nlayers:\n"
        "  - {name: r, op: relu, inputs: b}\n"
    ),
    "blocks nested 17 deep": _chain(17),
    "blocks nested 64 deep": _chain(64),
    "two inputs naming the same open sizes, added": (
        "name: a\ninputs: {a: [3, H, W], b: [3, H, W]}\nlayers:\n"
        "  - {name: s, op: add, inputs: [a, b]}\n  - {name: c, op: concat, inputs: [s, b]}\n"
    ),
    "5000 layers before a kernel of 4000": (
        "name: a\ninputs: {x: [3, null, null]}\nlayers:\n  - {name: r, op: relu, repeat: 5000}\n"
        "  - {name: c, op: conv, channels: 3, kernel: 4000}\n"
    ),
}


@pytest.mark.parametrize("case", sorted(FAILING))
def test_a_hostile_description_is_a_user_error(tmp_path, capsys, case):
    text, message = FAILING[case]
    path = tmp_path / "net.yaml"
    path.write_text(text)
    assert main(["compile", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "internal error" not in err


@pytest.mark.parametrize("case", sorted(COMPILING))
def test_an_extreme_but_valid_description_compiles(tmp_path, capsys, case):
    path = tmp_path / "net.yaml"
    path.write_text(COMPILING[case])
    for extra in ([], ["--json"]):
        assert main(["compile", str(path), *extra]) == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!int", "cannot read this tagged value"),
        ("{null: 1}", "mapping keys must be names"),
        (
            "[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
            "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
            "&e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]]",
            "aliases repeat more than",
        ),
    ],
    ids=["tag", "null key", "alias bomb"],
)
def test_hostile_set_values_are_refused_by_the_description_reader(capsys, value, message):
    with pytest.raises(SystemExit) as exited:
        main(["compile", "lenet5", "--set", f"num_classes={value}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_open_channel_count_is_not_an_input_shape(capsys):
    with pytest.raises(SystemExit):
        main(["compile", "lenet5", "--input-shape=H,32,32"])
    assert "expected C,H,W with positive integers" in capsys.readouterr().err
