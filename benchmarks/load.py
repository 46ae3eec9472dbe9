"""Load generator for a running rewardserve server (loopback only), bounded in time.

Closed loop: N workers each send the next request as soon as the last returns (N = 1, 2, 4 …).
Open loop: requests arrive at a fixed rate (Poisson), whatever the latency.
Prints p50/p90/p99 latency, throughput (requests/s, tokens/s) and errors by status code, and
writes JSON.

    python benchmarks/load.py --target 127.0.0.1:50051 --seconds 5 --out /tmp/rewardserve-load.json

(``--out`` is optional; point it outside the working tree, or into ``benchmarks/results/`` to commit a run.)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from rewardserve_client import AsyncRewardClient, RewardServeError


@dataclass
class StepResult:
    """One load step: a concurrency level or a request rate."""

    mode: str
    level: float
    seconds: float
    num_ok: int = 0
    tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    requests_per_s: float = 0.0
    tokens_per_s: float = 0.0


class Workload:
    """Seeded token-id requests: lengths lognormal around ``median`` tokens, clipped."""

    def __init__(self, vocab_size: int, median: int, max_len: int, seqs_per_request: int, seed: int):
        self.rng = random.Random(seed)
        self.vocab_size, self.median, self.max_len = vocab_size, median, max_len
        self.seqs_per_request = seqs_per_request

    def next_request(self) -> list[list[int]]:
        seqs = []
        for _ in range(self.seqs_per_request):
            n = int(min(self.max_len, max(1, self.rng.lognormvariate(math.log(self.median), 0.6))))
            seqs.append([self.rng.randrange(1, self.vocab_size) for _ in range(n)])
        return seqs


class Recorder:
    """Latencies and outcomes of one step."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.tokens = 0
        self.errors: Counter[str] = Counter()

    async def call(self, client: AsyncRewardClient, seqs: list[list[int]]) -> None:
        start = time.perf_counter()
        try:
            reply = await client.encode(seqs, task=None)
        except RewardServeError as exc:
            self.errors[exc.code.name] += 1
            return
        self.latencies.append(time.perf_counter() - start)
        self.tokens += reply.usage.prompt_tokens

    def summarize(self, mode: str, level: float, seconds: float) -> StepResult:
        lat = sorted(self.latencies)
        pick = lambda q: 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0.0  # noqa: E731
        return StepResult(mode, level, seconds, len(lat), self.tokens, dict(self.errors), pick(0.5), pick(0.9),
                          pick(0.99), len(lat) / seconds, self.tokens / seconds)


async def closed_loop(client: AsyncRewardClient, work: Workload, concurrency: int, seconds: float) -> StepResult:
    recorder, end = Recorder(), time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            await recorder.call(client, work.next_request())

    start = time.monotonic()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return recorder.summarize("closed", concurrency, time.monotonic() - start)


async def open_loop(client: AsyncRewardClient, work: Workload, rate: float, seconds: float) -> StepResult:
    recorder, tasks, rng = Recorder(), [], random.Random(7)
    start = time.monotonic()
    next_at = start
    while next_at < start + seconds:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        tasks.append(asyncio.create_task(recorder.call(client, work.next_request())))
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return recorder.summarize("open", rate, time.monotonic() - start)


def print_table(rows: list[StepResult]) -> None:
    print(f"{'mode':6} {'level':>7} {'ok':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'req/s':>8} "
          f"{'tok/s':>10}  errors")
    for r in rows:
        print(f"{r.mode:6} {r.level:>7g} {r.num_ok:>6} {r.p50_ms:>8.2f} {r.p90_ms:>8.2f} {r.p99_ms:>8.2f} "
              f"{r.requests_per_s:>8.1f} {r.tokens_per_s:>10.0f}  {r.errors or ''}")


async def run(args: argparse.Namespace) -> dict:
    async with AsyncRewardClient(args.target, timeout=args.timeout, max_retries=0) as client:
        info = await client.model_info()
        work = Workload(info.vocab_size, args.median_tokens, min(args.max_tokens, info.max_model_len),
                        args.seqs_per_request, args.seed)
        for _ in range(3):  # warm the path end to end
            await client.encode(work.next_request(), task=None)
        rows = [await closed_loop(client, work, c, args.seconds) for c in args.concurrency]
        rows += [await open_loop(client, work, r, args.seconds) for r in args.rates]
    print_table(rows)
    return {"target": args.target, "model": info.model, "architecture": info.architecture,
            "median_tokens": args.median_tokens, "seqs_per_request": args.seqs_per_request,
            "steps": [asdict(r) for r in rows]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--rates", type=float, nargs="*", default=[], help="open-loop requests/s steps")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each step")
    parser.add_argument("--median-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--seqs-per-request", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the JSON here (default: print only)")
    args = parser.parse_args(argv)
    host = args.target.rsplit(":", 1)[0].strip("[]")
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        parser.error("load tests only target loopback addresses")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
