"""``rewardserve encode``: the offline API from the command line, JSONL in, JSONL out.

Input lines: ``{"text": ...}``, ``{"token_ids": [...]}`` or ``{"messages": [...]}``.
Output lines: ``{"index", "data", "num_tokens", "truncated", "pooled_positions"}`` (+ ``logits``
for classify tasks). ``--help`` imports no torch: the engine loads only when there is work.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable

from rewardserve.engine.cli_args import OneLineParser, add_config_arguments, config_from_args
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.errors import EngineError

if TYPE_CHECKING:
    from rewardserve.engine.types import EncodeResult

# PoolingTask's values (engine/types.py imports torch; a test checks that the two agree).
TASKS = ("classify", "token_classify", "embed", "token_embed")
# EngineConfig leaves that only a server uses: admission limits, batching waits, the tokenizer
# pool, and policy tokenizers (ChatReward re-templating). ``encode`` does not offer them.
SERVER_ONLY = ("max_wait_ms", "max_queue_requests", "max_queue_tokens", "tokenizer_workers", "policy_tokenizer")
DESCRIPTION = """\
Score inputs offline with the same engine as the server, without a server: JSONL in, JSONL out.

input lines:   {"text": "..."}, {"token_ids": [1, 2, 3]} or {"messages": [{"role": ..., "content": ...}]}
output lines:  {"index", "data", "num_tokens", "truncated", "pooled_positions"} (+ "logits" for
               classify tasks), in input order

Without --model it uses the built-in demo model (random weights, meaningless scores; created on
first use under $XDG_CACHE_HOME/rewardserve, default ~/.cache/rewardserve). Bad input, options or
files: one line on stderr and exit code 2.
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``encode`` options: task, files, then the EngineConfig fields that matter offline."""
    parser = parser or OneLineParser(prog="rewardserve encode", description=DESCRIPTION,
                                               usage="%(prog)s [options] < in.jsonl > out.jsonl",
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=TASKS, default=None, metavar="TASK",
                        help="pooling task (one of: " + ", ".join(TASKS) + "; default: classify when the model "
                             "has a score head, else embed)")
    parser.add_argument("--input", default="-", help="JSONL input file (default: stdin)")
    parser.add_argument("--output", default="-", help="JSONL output file (default: stdout)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: on for more than 64 inputs)")
    add_config_arguments(parser, EngineConfig, exclude=SERVER_ONLY)
    return parser


def read_jsonl(stream: IO[str], accepts: Callable[[Any], bool], expected: str) -> list[tuple[int, Any]]:
    """(line number, object) of every non-blank JSONL line; a line that is not JSON, or that
    ``accepts`` refuses, is an error naming its number and ``expected``."""
    values = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EngineError(f"input line {number}: not JSON ({exc.msg})") from None
        if not accepts(value):
            raise EngineError(f"input line {number}: expected {expected}")
        values.append((number, value))
    return values


def read_inputs(stream: IO[str]) -> list[dict[str, Any]]:
    """Parse JSONL; each line must hold one of text, token_ids or messages."""
    rows = read_jsonl(stream, lambda v: isinstance(v, dict) and bool({"text", "token_ids", "messages"} & set(v)),
                      "an object with text, token_ids or messages")
    return [value for _, value in rows]


def to_json(result: "EncodeResult") -> dict[str, Any]:
    line = {"index": result.index, "data": result.data.tolist(), "num_tokens": result.num_tokens,
            "truncated": result.truncated, "pooled_positions": result.pooled_positions}
    if result.logits is not None:
        line["logits"] = result.logits.tolist()
    return line


def write_results(results: Iterable["EncodeResult"], stream: IO[str]) -> None:
    for result in results:
        stream.write(json.dumps(to_json(result)) + "\n")


def main_encode(argv: list[str] | None = None) -> int:
    """Entry point of ``rewardserve encode``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rewardserve.engine.demo import with_demo_model
    from rewardserve.engine import torch_setup
    from rewardserve.engine.engine import Engine  # torch loads here, after the options are checked

    try:
        config = with_demo_model(config_from_args(EngineConfig, args), os.environ.get("XDG_CACHE_HOME") or None,
                                 "rewardserve encode", logging.getLogger("rewardserve.encode"))
        with _open(args.input, "r", sys.stdin) as src:
            inputs = read_inputs(src)
        torch_setup.configure(torch_setup.cache_dir_from(os.environ))
        engine = Engine(config)
        progress = args.progress if args.progress is not None else len(inputs) > 64
        try:
            results = engine.encode(inputs, task=args.task, progress=progress)
        finally:
            engine.close()  # tensor-parallel ranks stop with their "stop" message
    except (EngineError, ValueError, OSError) as exc:  # bad input, options or files: one line, no traceback
        print(f"rewardserve encode: error: {exc}", file=sys.stderr)
        return 2
    with _open(args.output, "w", sys.stdout) as dst:
        write_results(results, dst)
    return 0


class _open:
    """``-`` means the standard stream (left open); anything else is a file."""

    def __init__(self, path: str, mode: str, default: IO[str]):
        self.path, self.mode, self.default, self.file = path, mode, default, None

    def __enter__(self) -> IO[str]:
        if self.path == "-":
            return self.default
        self.file = open(self.path, self.mode, encoding="utf-8")
        return self.file

    def __exit__(self, *exc: Any) -> None:
        if self.file:
            self.file.close()
