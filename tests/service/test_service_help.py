"""``rewardserve --help``, ``serve --help`` and ``encode --help``: no torch, plain text, every
choice, defaults explained, environment variables named; encode shows only offline options."""
from __future__ import annotations

import re

import subprocess
import sys

import pytest

from rewardserve.engine.cli import SERVER_ONLY, TASKS
from rewardserve.engine.cli_args import _leaves
from rewardserve.engine.config import EngineConfig
from rewardserve.service.cli import ENV_OPTIONS
from rewardserve.service.config import ServeConfig

HELP = """import io, sys, contextlib
from rewardserve.service.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main({argv!r})
    except SystemExit as exit_:
        code = exit_.code
sys.stderr.write(out.getvalue())
print(code, 'torch' in sys.modules, 'transformers' in sys.modules, 'grpc' in sys.modules)
"""


def help_text(*argv: str) -> str:
    """The help of ``rewardserve *argv --help`` from a fresh interpreter that must not import torch."""
    done = subprocess.run([sys.executable, "-c", HELP.format(argv=[*argv, "--help"])],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["0", "False", "False", "False"], done.stdout + done.stderr
    return done.stderr


@pytest.fixture(scope="module")
def serve_help() -> str:
    return help_text("serve")


@pytest.fixture(scope="module")
def encode_help() -> str:
    return help_text("encode")


def test_top_level_help_lists_the_commands_and_the_environment():
    text = help_text()
    assert "serve" in text and "encode" in text and "score queries against documents" in text
    for name in ENV_OPTIONS:
        assert name in text


def test_serve_help_is_plain_text_with_every_choice(serve_help):
    assert "``" not in serve_help and ":class:" not in serve_help
    for _path, f, _tp in _leaves(ServeConfig):
        if f.metadata.get("advanced"):
            continue  # --help-all lists these (next test)
        flag = "--" + f.name.replace("_", "-")
        assert flag in serve_help
        for choice in f.metadata.get("choices") or ():
            assert choice in serve_help, (flag, choice)
    flat = " ".join(serve_help.split())
    assert "one of: auto, bfloat16, float16, float32; default: auto" in flat
    assert "one of: auto, asyncio, uvloop; default: auto" in flat
    assert "(default: None)" not in serve_help and "(default: )" not in serve_help


def _help_in_process(capsys, *argv: str) -> str:
    from rewardserve.service.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_advanced_options_are_only_in_help_all(capsys):
    """Options marked ``advanced=True`` stay out of ``--help``; ``--help-all`` lists every option."""
    short, full = _help_in_process(capsys, "serve", "--help"), _help_in_process(capsys, "serve", "--help-all")
    advanced = ["--" + f.name.replace("_", "-") for _p, f, _t in _leaves(ServeConfig) if f.metadata.get("advanced")]
    assert "--compile-warmup-batches" in advanced and "--max-skips" in advanced
    assert "--help-all" in short
    listed = lambda text, flag: re.search(rf"^\s+{re.escape(flag)}\b", text, re.M)  # an option's own line
    for flag in advanced:  # (another option's help may still name it)
        assert not listed(short, flag), flag
        assert listed(full, flag), flag
    for _path, f, _tp in _leaves(ServeConfig):
        assert "--" + f.name.replace("_", "-") in full
    assert "default: budget 3001 300,400 7,5,3 1,1" in " ".join(full.split())
    encode_short = _help_in_process(capsys, "encode", "--help")
    encode_full = _help_in_process(capsys, "encode", "--help-all")
    assert "--compile-warmup-batches" not in encode_short and "--compile-warmup-batches" in encode_full
    assert "--task" in encode_full


def test_serve_help_explains_the_demo_model_the_gpu_defaults_and_the_environment(serve_help):
    text = " ".join(serve_help.split())
    assert "Empty (the default): the built-in demo model" in text
    assert "--compile, --no-compile" in text and "Default: on for CUDA, off on CPU." in text
    assert "--cuda-graphs, --no-cuda-graphs" in text
    for name, flag in ENV_OPTIONS.items():
        assert f"{name} default for serve's {flag}" in text
    assert "XDG_CACHE_HOME" in text and "health check answers SERVING" in text


def test_encode_help_shows_only_offline_options(encode_help):
    assert "``" not in encode_help
    for name in SERVER_ONLY:
        assert "--" + name.replace("_", "-") not in encode_help
    for flag in ("--task", "--input", "--output", "--model", "--dtype", "--device", "--max-num-batched-tokens",
                 "--no-compile"):
        assert flag in encode_help
    for task in TASKS:
        assert task in encode_help
    assert "built-in demo model" in encode_help


def test_the_lists_the_encode_help_restates_match_the_engine():
    """TASKS mirrors PoolingTask (whose module imports torch); SERVER_ONLY names real fields."""
    from rewardserve.engine.types import PoolingTask

    assert TASKS == tuple(t.value for t in PoolingTask)
    leaves = {f.name for _p, f, _t in _leaves(EngineConfig)}
    assert set(SERVER_ONLY) <= leaves
