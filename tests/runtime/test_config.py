"""The training section: settings left null read as their defaults, unknown ones are errors."""

import pytest

from netc.errors import ConfigError
from netc.runtime.config import parse_training


def test_null_choices_read_as_their_defaults():
    # null meant fp16 autocast on a GPU before, whatever `auto` would have picked
    config = parse_training({"precision": None, "metric": None})
    assert config.precision == "auto" and config.metric is None


def test_an_unknown_choice_is_an_error():
    with pytest.raises(ConfigError, match="did you mean 'fp16'"):
        parse_training({"precision": "fp61"})
