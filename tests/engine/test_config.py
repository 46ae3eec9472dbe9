"""The config tree: unknown keys and bad choices are errors; the pooler-config JSON is checked."""
from __future__ import annotations

import pytest

from rewardserve.engine.config import EngineConfig, ModelConfig, from_dict


def test_from_dict_builds_the_nested_tree():
    config = from_dict(EngineConfig, {"model": {"model": "/m", "dtype": "bfloat16"},
                                      "scheduler": {"max_num_batched_tokens": 4096}})
    assert config.model.dtype == "bfloat16" and config.scheduler.max_num_batched_tokens == 4096
    assert config.runner == EngineConfig().runner  # untouched sections keep their defaults


@pytest.mark.parametrize("values, message", [
    ({"modle": {}}, "unknown EngineConfig option(s): modle"),
    ({"model": {"model": "/m", "max_len": 5}}, "unknown ModelConfig option(s): max_len"),
    ({"model": {"model": "/m", "dtype": "int8"}}, "ModelConfig.dtype must be one of"),
])
def test_unknown_keys_and_bad_choices_are_errors(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(EngineConfig, values)


@pytest.mark.parametrize("text, message", [
    ("{not json", "--pooler-config is not JSON"),
    ("[1, 2]", "--pooler-config must be a JSON object"),
])
def test_bad_pooler_config_names_the_option(text, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(model="/m", pooler_config=text).pooler_overrides()
    assert ModelConfig(model="/m", pooler_config='{"normalize": false}').pooler_overrides() == {"normalize": False}
