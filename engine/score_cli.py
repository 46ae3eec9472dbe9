"""``rewardserve score``: Score from the command line, without a server. JSONL in, JSONL out.

Input lines: ``{"query": Q, "documents": [D, ...]}``, each Q and D text or a token id list.
Output lines, one per input line: ``{"line", "method", "results": [{"index", "score", "logit",
"num_tokens", "truncated"}, ...]}`` (document order, or the best ``--top-n`` first).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import IO, Any

from rewardserve.engine.cli import _open, read_jsonl
from rewardserve.engine.cli_args import add_config_arguments, config_from_args
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.demo import with_demo_model
from rewardserve.engine.errors import EngineError
from rewardserve.engine.score import ScoreOutput, ScoreParams


def build_parser() -> argparse.ArgumentParser:
    """The ``score`` options: files, Score options, then every EngineConfig field."""
    parser = argparse.ArgumentParser(prog="rewardserve score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default="-", help="JSONL input file (default: stdin)")
    parser.add_argument("--output", default="-", help="JSONL output file (default: stdout)")
    parser.add_argument("--top-n", type=int, default=0, help="keep the best N results per line, best first (0: all)")
    parser.add_argument("--truncate-prompt-tokens", type=int, default=None,
                        help="cut over-long pairs to this many tokens, document only (-1: the model's maximum)")
    parser.add_argument("--instruction", default=None, help="a decoder reranker's instruction")
    add_config_arguments(parser, EngineConfig)
    return parser


def read_requests(stream: IO[str]) -> list[tuple[int, Any, list[Any]]]:
    """(line number, query, documents) of every non-blank line; a bad shape names its line."""
    rows = read_jsonl(stream, lambda v: isinstance(v, dict) and "query" in v and isinstance(v.get("documents"), list),
                      "an object with query and a documents list")
    return [(number, value["query"], value["documents"]) for number, value in rows]


def to_json(number: int, output: ScoreOutput) -> dict[str, Any]:
    results = [{"index": r.index, "score": r.score, "logit": r.logit, "num_tokens": r.num_tokens,
                "truncated": r.truncated} for r in output.results]
    return {"line": number, "method": output.method.value, "results": results}


def main_score(argv: list[str] | None = None) -> int:
    """Entry point of ``rewardserve score``; returns the exit status (2: bad input or options)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from rewardserve.engine.engine import Engine

    params = ScoreParams(top_n=args.top_n, truncate_prompt_tokens=args.truncate_prompt_tokens,
                         instruction=args.instruction)
    try:
        config = with_demo_model(config_from_args(EngineConfig, args), os.environ.get("XDG_CACHE_HOME") or None,
                                 "rewardserve score", logging.getLogger("rewardserve.score"))
        with _open(args.input, "r", sys.stdin) as src:
            requests = read_requests(src)
        engine = Engine(config)
        lines = []
        for number, query, documents in requests:
            try:
                lines.append(to_json(number, engine.score(query, documents, params)))
            except EngineError as exc:
                raise EngineError(f"input line {number}: {exc}") from None
    except (EngineError, ValueError, OSError) as exc:  # bad input, options or files: one line, no traceback
        print(f"rewardserve score: error: {exc}", file=sys.stderr)
        return 2
    with _open(args.output, "w", sys.stdout) as dst:
        for line in lines:
            dst.write(json.dumps(line) + "\n")
    return 0
