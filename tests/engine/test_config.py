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


def test_compile_warmup_batches_are_read_for_the_token_budget():
    from rewardserve.engine.config import RunnerConfig

    assert RunnerConfig().warmup_batches(16384) == [[5461, 5462, 5461], [3001], [300, 400], [7, 5, 3], [1, 1]]
    assert RunnerConfig().warmup_batches(1000)[:2] == [[333, 334, 333], [1000]]  # capped at the budget
    assert RunnerConfig(compile_warmup_batches="64,64 budget").warmup_batches(30) == [[30, 30], [10, 11, 9]]
    for bad in ("7,x", "0", "3,,4"):
        with pytest.raises(ValueError, match=f"--compile-warmup-batches: '{bad}'"):
            RunnerConfig(compile_warmup_batches=bad).warmup_batches(100)


def test_advanced_options_parse_but_only_help_all_lists_them(capsys):
    import argparse

    from rewardserve.engine.cli_args import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser(prog="x")
    add_config_arguments(parser, EngineConfig)
    short = parser.format_help()
    assert "--max-num-batched-tokens" in short and "--help-all" in short
    assert "--compile-warmup-batches" not in short and "--max-skips" not in short
    args = parser.parse_args(["--compile-warmup-batches", "8,8", "--max-skips", "3"])
    config = config_from_args(EngineConfig, args)
    assert config.runner.compile_warmup_batches == "8,8" and config.scheduler.max_skips == 3
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--help-all"])
    assert exit_.value.code == 0
    full = capsys.readouterr().out
    assert "--compile-warmup-batches" in full and "--max-skips" in full and "--max-num-batched-tokens" in full
