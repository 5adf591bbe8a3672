"""`REPO/<model>/config.yaml`: every setting parsed, every mistake named with its file."""

import pytest

from netc.errors import UserError, render
from netc.serving.config import ModelConfig, load_config


def _load(tmp_path, text: str) -> ModelConfig:
    (tmp_path / "config.yaml").write_text(text)
    return load_config(tmp_path)


def test_no_file_gives_the_defaults(tmp_path):
    config = load_config(tmp_path)
    assert config == ModelConfig()
    assert config.max_queue_delay_us is None  # auto
    assert (config.max_batch_size, config.dynamic_batching, config.instances) == (16, True, 1)


def test_every_setting_is_read(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\n\ndog\n")
    config = _load(
        tmp_path,
        "max_batch_size: 8\n"
        "dynamic_batching: {max_queue_delay_us: 250, preferred_batch_sizes: [8, 4], "
        "max_queue_size: 32, refusals_per_second: 7}\n"
        "instances: 2\nintra_op_threads: 3\nlabels_file: labels.txt\nversion_policy: [1, 3]\n",
    )
    assert config.max_batch_size == 8 and config.max_queue_delay_us == 250
    assert config.preferred_batch_sizes == (4, 8) and config.max_queue_size == 32
    assert config.refusals_per_second == 7
    assert (config.instances, config.intra_op_threads) == (2, 3)
    assert config.labels == ("cat", "dog") and config.version_policy == (1, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dynamic_batching: {max_queue_delay_us: auto}\n", None),
        ("dynamic_batching: {max_queue_delay_us: 0}\n", 0),
        ("dynamic_batching: {}\n", None),
        ("dynamic_batching: {max_queue_delay_us: 60000000}\n", 60_000_000),
    ],
)
def test_queue_delay_is_auto_or_microseconds(tmp_path, text, expected):
    assert _load(tmp_path, text).max_queue_delay_us == expected


@pytest.mark.parametrize("text", ["", "# max_batch_size: 8\n# instances: 2\n", "~\n"])
def test_a_config_with_nothing_set_gives_the_defaults(tmp_path, text):
    assert _load(tmp_path, text) == ModelConfig()


def test_batching_can_be_turned_off(tmp_path):
    assert not _load(tmp_path, "dynamic_batching: false\n").dynamic_batching


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch: 4\n", "unknown setting 'max_batch'"),
        ("dynamic_batching: {max_delay: 5}\n", "unknown dynamic_batching setting 'max_delay'"),
        (
            "dynamic_batching: {max_queue_delay_us: soon}\n",
            "'max_queue_delay_us' must be auto or an integer from 0 to 60,000,000 "
            "(microseconds), found 'soon'",
        ),
        ("dynamic_batching: {max_queue_delay_us: -5}\n", "(microseconds), found -5"),
        ("dynamic_batching: {max_queue_delay_us: 1e12}\n", "(microseconds), found '1e12'"),
        ("dynamic_batching: {max_queue_delay_us: 10000000000}\n", "found 10000000000"),
        ("dynamic_batching: {max_queue_delay_us: true}\n", "(microseconds), found True"),
        ("dynamic_batching: {preferred_batch_sizes: [true]}\n", "preferred_batch_sizes must be"),
        ("version_policy: [true]\n", "version_policy must be 'latest', 'all' or a list"),
        ("labels: [cat, no]\n", "label 1 reads as False in YAML"),
        ("dynamic_batching: yes\n", "dynamic_batching must be a mapping or false"),
        ("dynamic_batching: {preferred_batch_sizes: [0]}\n", "preferred_batch_sizes must be"),
        ("instances: 0\n", "'instances' must be an integer >= 1, found 0"),
        ("version_policy: newest\n", "version_policy must be 'latest', 'all' or a list"),
        ("labels: cat\n", "labels must be a list of names"),
        ("labels_file: missing.txt\n", "cannot read labels_file"),
        ("[1, 2]\n", "expected a mapping of settings"),
        ("max_batch_size: [\n", "not valid YAML"),
        ("instances: 1\ninstances: 2\n", "key 'instances' appears twice"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
            ),
            "YAML aliases repeat more than 100,000 values",
        ),
    ],
)
def test_mistakes_name_the_file_and_the_setting(tmp_path, text, message):
    with pytest.raises(UserError) as error:
        _load(tmp_path, text)
    assert message in str(error.value)
    assert str(tmp_path / "config.yaml") in str(error.value)


def test_a_misspelt_setting_names_its_line(tmp_path):
    where = tmp_path / "config.yaml"
    with pytest.raises(UserError, match=f"^{where}:3:1: unknown setting 'lables'") as error:
        _load(tmp_path, "max_batch_size: 8\ninstances: 1\nlables: [a, b]\n")
    assert render(error.value).startswith(f"{where}:3:1: error: unknown setting 'lables'")
    with pytest.raises(UserError, match=f"{where}:2:3: unknown dynamic_batching setting 'delay'"):
        _load(tmp_path, "dynamic_batching:\n  delay: 5\n")


@pytest.mark.parametrize(
    ("text", "at"),
    [
        ("max_batch_size: 8\ninstances: 0\n", "2:12"),
        ("labels: [cat, dog, no]\n", "1:20"),
        ("dynamic_batching:\n  max_queue_delay_us: soon\n", "2:23"),
        ("- 1\n", "1:1"),
    ],
)
def test_a_bad_value_names_its_line_and_column_as_the_compiler_does(tmp_path, text, at):
    with pytest.raises(UserError) as error:
        _load(tmp_path, text)
    assert render(error.value).startswith(f"{tmp_path / 'config.yaml'}:{at}: error: ")


def test_refusals_per_second_is_a_count_from_zero(tmp_path):
    assert _load(tmp_path, "dynamic_batching: {refusals_per_second: 0}\n").refusals_per_second == 0
    with pytest.raises(UserError, match=r"'refusals_per_second' must be an integer >= 0, found -1"):
        _load(tmp_path, "dynamic_batching: {refusals_per_second: -1}\n")
