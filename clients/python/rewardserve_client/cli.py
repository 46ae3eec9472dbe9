"""The ``rewardserve-client`` command line.

Each subcommand is an ``add_*`` function that registers its parser and sets ``run``; add new
ones (e.g. ``openrlhf-proxy``) to ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Iterator, List, Optional, Sequence

from rewardserve_client._base import AUTH_TOKEN_ENV
from rewardserve_client.client import RewardClient
from rewardserve_client.errors import RewardServeError


def _add_connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="localhost:50051",
                        help="server HOST:PORT, or several: ipv4:A:PORT,B:PORT or "
                             "dns:///NAME:PORT (calls go round-robin to the healthy ones)")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")
    parser.add_argument("--tls", action="store_true", help="TLS with the system's root certs")
    parser.add_argument("--auth-token", default=None, metavar="TOKEN",
                        help=f"bearer token sent with every call (default: ${AUTH_TOKEN_ENV}; "
                             "prefer the variable, a command line is visible to other users)")


def connect(args: argparse.Namespace) -> RewardClient:
    """A RewardClient for the connection arguments every subcommand shares."""
    return RewardClient(args.target, timeout=args.timeout, secure=args.tls,
                        auth_token=args.auth_token)


def _print_json(value) -> None:
    print(json.dumps(value, ensure_ascii=False))


def run_info(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.model_info()
    print(json.dumps(dataclasses.asdict(info), indent=2, ensure_ascii=False))
    return 0


def add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="describe the served model (JSON)")
    _add_connection_args(parser)
    parser.set_defaults(run=run_info)


def read_conversations(path: str) -> Iterator[list]:
    """Conversations from JSON Lines: each line a message list or ``{"messages": [...]}``."""
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            item = json.loads(line)
            messages = item.get("messages") if isinstance(item, dict) else item
            if not isinstance(messages, list):
                raise ValueError(f"{path}:{number}: expected a message list or {{'messages': [...]}}")
            yield messages


def _batches(items: Iterator[list], size: int) -> Iterator[List[list]]:
    batch: List[list] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_chat_reward(args: argparse.Namespace) -> int:
    offset = 0
    with connect(args) as client:
        for batch in _batches(read_conversations(args.input), args.batch_size):
            reply = client.chat_reward(batch, add_generation_prompt=args.add_generation_prompt)
            for result in reply.results:
                # Indexes count lines of the whole file, not positions inside one batch.
                row = dataclasses.asdict(result) | {"index": offset + result.index,
                                                    "request_id": reply.request_id}
                _print_json(row)
            offset += len(batch)
    return 0


def add_chat_reward(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat-reward", help="score conversations from JSON Lines; prints one JSON line each")
    _add_connection_args(parser)
    parser.add_argument("--input", required=True, help="FILE.jsonl, or - for stdin")
    parser.add_argument("--batch-size", type=int, default=64, help="conversations per call")
    parser.add_argument("--add-generation-prompt", action="store_true")
    parser.set_defaults(run=run_chat_reward)


def run_openrlhf_proxy(args: argparse.Namespace) -> int:
    from rewardserve_client.integrations.openrlhf import PATH, OpenRLHFProxy

    client = connect(args)
    proxy = OpenRLHFProxy(args.target, host=args.host, port=args.port, client=client,
                          policy_tokenizer=args.policy_tokenizer)
    print(f"rewardserve-client: OpenRLHF reward proxy on http://{args.host}:{proxy.port}{PATH} "
          f"-> {args.target}", file=sys.stderr, flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
    return 0


def add_openrlhf_proxy(subparsers) -> None:
    parser = subparsers.add_parser(
        "openrlhf-proxy", help="serve OpenRLHF's --remote_rm_url protocol (POST /get_reward)")
    _add_connection_args(parser)
    parser.set_defaults(timeout=300.0)  # one call scores a whole micro-batch of rollouts
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address to listen on")
    parser.add_argument("--port", type=int, default=5000, help="HTTP port (0: any free port)")
    parser.add_argument("--policy-tokenizer", default=None, metavar="NAME",
                        help="the server's --policy-tokenizer NAME of the policy that rendered "
                             "the queries (default: the reward model's own tokenizer)")
    parser.set_defaults(run=run_openrlhf_proxy)


COMMANDS = [add_info, add_chat_reward, add_openrlhf_proxy]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewardserve-client",
                                     description="Call a rewardserve server.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``rewardserve-client``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except RewardServeError as exc:
        print(f"rewardserve-client: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"rewardserve-client: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
