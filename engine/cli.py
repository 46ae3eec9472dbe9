"""``rewardserve encode``: the offline API from the command line, JSONL in, JSONL out.

Input lines: ``{"text": ...}``, ``{"token_ids": [...]}`` or ``{"messages": [...]}``.
Output lines: ``{"index", "data", "num_tokens", "truncated", "pooled_positions"}`` (+ ``logits``
for classify tasks).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import IO, Any, Iterable

from rewardserve.engine.cli_args import add_config_arguments, config_from_args
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.demo import with_demo_model
from rewardserve.engine.errors import EngineError
from rewardserve.engine.types import EncodeResult, PoolingTask


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``encode`` options: task, files, then every EngineConfig field."""
    parser = parser or argparse.ArgumentParser(prog="rewardserve encode", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[t.value for t in PoolingTask], default=None,
                        help="pooling task (default: classify when the model has a score head, else embed)")
    parser.add_argument("--input", default="-", help="JSONL input file (default: stdin)")
    parser.add_argument("--output", default="-", help="JSONL output file (default: stdout)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: on for more than 64 inputs)")
    add_config_arguments(parser, EngineConfig)
    return parser


def read_inputs(stream: IO[str]) -> list[dict[str, Any]]:
    """Parse JSONL; each line must hold one of text, token_ids or messages."""
    inputs = []
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EngineError(f"input line {number}: not JSON ({exc.msg})") from None
        if not isinstance(value, dict) or not {"text", "token_ids", "messages"} & set(value):
            raise EngineError(f"input line {number}: expected an object with text, token_ids or messages")
        inputs.append(value)
    return inputs


def to_json(result: EncodeResult) -> dict[str, Any]:
    line = {"index": result.index, "data": result.data.tolist(), "num_tokens": result.num_tokens,
            "truncated": result.truncated, "pooled_positions": result.pooled_positions}
    if result.logits is not None:
        line["logits"] = result.logits.tolist()
    return line


def write_results(results: Iterable[EncodeResult], stream: IO[str]) -> None:
    for result in results:
        stream.write(json.dumps(to_json(result)) + "\n")


def main_encode(argv: list[str] | None = None) -> int:
    """Entry point of ``rewardserve encode``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rewardserve.engine.engine import Engine

    try:
        config = with_demo_model(config_from_args(EngineConfig, args), os.environ.get("XDG_CACHE_HOME") or None,
                                 "rewardserve encode", logging.getLogger("rewardserve.encode"))
        with _open(args.input, "r", sys.stdin) as src:
            inputs = read_inputs(src)
        engine = Engine(config)
        progress = args.progress if args.progress is not None else len(inputs) > 64
        results = engine.encode(inputs, task=args.task, progress=progress)
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
