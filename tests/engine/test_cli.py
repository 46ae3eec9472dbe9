"""`rewardserve encode` run the way README shows it: a subprocess, JSONL on stdin and in files."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
LINES = [
    {"text": "hello world"},
    {"token_ids": [1, 2, 3]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
]


def rewardserve() -> str:
    found = shutil.which("rewardserve") or str(Path(sys.executable).parent / "rewardserve")
    assert Path(found).exists(), "the rewardserve console script is not installed"
    return found


def run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([rewardserve(), "encode", *args], input=stdin, capture_output=True, text=True, timeout=300)


def test_encode_stdin_to_stdout_matches_the_offline_api(demo_model_dir, demo_engine):
    stdin = "".join(json.dumps(line) + "\n" for line in LINES)
    done = run(["--model", str(demo_model_dir), "--task", "classify"], stdin)
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["index"] for o in out] == [0, 1, 2]
    expected = demo_engine.encode(LINES, task="classify")
    for got, want in zip(out, expected):
        assert torch.allclose(torch.tensor(got["data"]), want.data, atol=1e-5)
        assert got["num_tokens"] == want.num_tokens and got["truncated"] is False
        assert got["pooled_positions"] == [want.num_tokens - 1] and "logits" in got


def test_encode_files_and_embed_task(demo_model_dir, tmp_path):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in LINES[:2]))
    done = run(["--model", str(demo_model_dir), "--task", "embed", "--input", str(source), "--output", str(target)])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == 2 and len(rows[0]["data"]) == 64
    assert abs(sum(v * v for v in rows[0]["data"]) - 1.0) < 1e-4  # normalised by default


@pytest.mark.parametrize("stdin, args, message", [
    ('{"token_ids": [1, 999]}\n', [], "inputs[0]: token id 999 is outside the vocabulary"),
    ("not json\n", [], "input line 1: not JSON"),
    ('{"text": "x"}\n', ["--task", "nonsense"], "invalid choice"),
    ('{"text": "x"}\n', ["--no-such-option"], "unrecognized arguments"),
    ('{"text": "ok"}\n{"token_ids": "abc"}\n', [], "inputs[1]: token_ids must be a list of integers, not str"),
    ('{"token_ids": [1.5, 2]}\n', [], "inputs[0]: token ids must be integers, not float (1.5)"),
    ('{"token_ids": [true, 2]}\n', [], "inputs[0]: token ids must be integers, not bool"),
    ('{"text": 5}\n', [], "inputs[0]: text must be a string, not int"),
    ('{"text": "x"}\n', ["--input", "/no/such/file.jsonl"], "No such file or directory"),
])
def test_encode_errors_are_one_clear_line(demo_model_dir, stdin, args, message):
    done = run(["--model", str(demo_model_dir), *args], stdin)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_encode_without_model_uses_the_demo_model_and_says_so(tmp_path, demo_engine):
    import os

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run([rewardserve(), "encode", "--task", "classify"], input=json.dumps(LINES[0]) + "\n",
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "DEMO reward model" in done.stderr and str(tmp_path) in done.stderr
    got = json.loads(done.stdout.splitlines()[0])
    assert torch.allclose(torch.tensor(got["data"]), demo_engine.encode(LINES[:1], task="classify")[0].data, atol=1e-5)
