"""Hostile and overloaded callers against the demo server (CPU): what issue 20 must show.

``rewardserve serve`` (the built-in demo model, default admission limits, request chat templates
allowed with their default budget) runs as a subprocess on a loopback port. Callers are the
shipped ``AsyncRewardClient`` (it honours the server's RetryInfo delay), as asyncio tasks in this
one process: a caller costs the client little CPU, and a pool of processes would only take more
of the same few cores from the server. Health is polled from a process of its own, so this
process's event loop never delays a probe. Phases:

  capacity   16 callers, no deadline: sequences/s (again after each flood: the machine's other
             load drifts, so each flood is compared with the mean of the two around it)
  flood      256 and 512 callers, 2 s deadlines: goodput (OK sequences/s) as % of capacity;
             OK / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED / other; refusal latency server-side
             (``rewardserve_refusal_seconds``); sequences the server computed for nobody
  health     grpc.health.v1 Check every 50 ms on its own channel during every flood: p99
  template   16 ChatReward callers, then the same with one caller looping hostile request
             templates (a CPU loop, a huge output): the 16 callers' p99, with / without
  rss        server RSS before and after N distinct ~1 MB request templates, and around four
             concurrent 50 MB token-id requests (refused as too long)

Encode calls carry 4 token-id sequences (lognormal lengths around 128 tokens, seeded). A caller
refused with RESOURCE_EXHAUSTED after the client's own retries waits the server's retry delay
(jittered as the client's retries are) before its next call. One server serves every phase;
each phase's first ``--warmup`` seconds are not counted.

    python benchmarks/overload.py --out /tmp/overload.json           # about 3.5 minutes
    python benchmarks/overload.py --quick                            # every phase, about 40 s
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import itertools
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_grpc import Server, free_port  # noqa: E402
from load import Workload  # noqa: E402

SERVICE = "/rewardserve.v1.RewardService/"
# The issue's two hostile templates: a loop that never ends in time, and a 10 MB output.
HOSTILE_TEMPLATES = (
    "{% for i in range(100000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}",
    "{{ 'ab ' * 3333333 }}",
)
PLAIN_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"


# --- measurements -----------------------------------------------------------------------------

def pct(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def ms(values, q: float) -> float | None:
    p = pct(values, q)
    return None if p is None else 1000 * p


def rss_mb(pid: int) -> float:
    """Resident memory of one process (MiB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            out += [kid, *children(kid)]
    return out


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Metrics:
    """The server's Prometheus endpoint: one scrape is a dict of (name, labels) -> value."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def scrape(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url, timeout=10) as reply:
            text = reply.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    """Sum of ``name`` samples whose labels include ``labels``, after minus before."""
    def total(scrape: dict) -> float:
        return sum(v for (n, ls), v in scrape.items() if n == name and set(labels.items()) <= set(ls))
    return total(after) - total(before)


def histogram_quantiles(after: dict, before: dict, name: str, qs=(0.5, 0.99), **labels: str) -> dict:
    """Quantiles of a histogram's growth between two scrapes, interpolated within buckets as
    Prometheus' histogram_quantile does (so they are bucket-resolution estimates)."""
    bounds = sorted({float(dict(ls)["le"]) for (n, ls) in after if n == f"{name}_bucket"})
    counts = [delta(after, before, f"{name}_bucket", le=_le(b), **labels) for b in bounds]
    total = counts[-1] if counts else 0
    out = {"count": int(total)}
    for q in qs:
        if not total:
            out[f"p{q * 100:g}_ms"] = None
            continue
        rank, lo, prev = q * total, 0.0, 0.0
        for b, c in zip(bounds, counts):
            if c >= rank:
                hi = b if math.isfinite(b) else lo
                frac = (rank - prev) / (c - prev) if c > prev else 1.0
                out[f"p{q * 100:g}_ms"] = 1000 * (lo + (hi - lo) * frac)
                break
            lo, prev = b, c
    return out


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


# --- health poller (a process of its own) -------------------------------------------------------

def _poll_health(target: str, interval_s: float, conn, stop) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    samples = []
    with grpc.insecure_channel(target) as channel:
        stub, request = health_pb2_grpc.HealthStub(channel), health_pb2.HealthCheckRequest()
        next_at = time.monotonic()
        while not stop.is_set():
            start = time.monotonic()
            try:
                reply = stub.Check(request, timeout=5)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as exc:
                status = exc.code().name
            samples.append((start, time.monotonic() - start, status))
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))
    conn.send(samples)
    conn.close()


class HealthPoller:
    """Checks health every ``interval_s`` from a spawned process for the whole run."""

    def __init__(self, target: str, interval_s: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=False)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_poll_health, args=(target, interval_s, child, self._stop), daemon=True)
        self._proc.start()
        self.samples: list = []

    def finish(self) -> None:
        self._stop.set()
        self.samples = self._conn.recv()
        self._proc.join(10)

    def summary(self, start: float, end: float) -> dict:
        picked = [(lat, status) for t, lat, status in self.samples if start <= t < end]
        lat = [x for x, _ in picked]
        return {"checks": len(picked), "not_serving": sum(s != "SERVING" for _, s in picked),
                "p50_ms": ms(lat, 50), "p99_ms": ms(lat, 99), "max_ms": 1000 * max(lat) if lat else None}


# --- callers ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    end: float        # time.monotonic() when the call returned
    code: str         # OK or the status name
    seqs: int         # sequences asked for
    seconds: float    # the call's duration, retries included


class Callers:
    """``n`` closed-loop callers, sharing one AsyncRewardClient per ``per_client`` callers."""

    def __init__(self, target: str, n: int, timeout: float | None, per_client: int = 32) -> None:
        self.target, self.n, self.timeout, self.per_client = target, n, timeout, per_client
        self.outcomes: list[Outcome] = []

    async def run(self, call, seconds: float) -> tuple[float, float]:
        """Run ``call(client, caller_index)`` (returns the sequence count asked for and an
        awaitable) in every caller until ``seconds`` pass; returns (start, stop) instants."""
        from rewardserve_client import AsyncRewardClient, RewardServeError

        clients = [AsyncRewardClient(self.target, timeout=self.timeout)
                   for _ in range(math.ceil(self.n / self.per_client))]
        start = time.monotonic()
        stop = start + seconds
        jitter = random.Random(self.n)

        async def caller(i: int) -> None:
            client = clients[i // self.per_client]
            while time.monotonic() < stop:
                seqs, pending = call(client, i)
                t0 = time.monotonic()
                try:
                    await pending
                    code, wait = "OK", 0.0
                except RewardServeError as exc:
                    code, wait = exc.code.name, exc.retry_delay or 0.0
                now = time.monotonic()
                self.outcomes.append(Outcome(now, code, seqs, now - t0))
                if code == "RESOURCE_EXHAUSTED":  # jittered as the client's own retries are
                    await asyncio.sleep(min(wait * (1 + 0.2 * jitter.random()), max(0.0, stop - now)))

        try:
            await asyncio.gather(*[caller(i) for i in range(self.n)])
        finally:
            for client in clients:
                await client.close()
        return start, stop

    def summary(self, start: float, end: float) -> dict:
        picked = [o for o in self.outcomes if start <= o.end < end]
        counts: dict[str, int] = {}
        for o in picked:
            counts[o.code] = counts.get(o.code, 0) + 1
        ok = [o for o in picked if o.code == "OK"]
        refused = [o.seconds for o in picked if o.code == "RESOURCE_EXHAUSTED"]
        seconds = end - start
        return {"seconds": seconds, "calls": len(picked), "codes": counts,
                "ok_seqs_per_s": sum(o.seqs for o in ok) / seconds,
                "ok_p50_ms": ms([o.seconds for o in ok], 50), "ok_p99_ms": ms([o.seconds for o in ok], 99),
                "refused_call_p50_ms": ms(refused, 50), "refused_call_p99_ms": ms(refused, 99)}


def encode_call(requests: list[list[list[int]]], timeout: float | None):
    """Encode of the next pre-built token-id request (cycled: no list building per call)."""
    turn = itertools.count()

    def call(client, i: int):
        seqs = requests[next(turn) % len(requests)]
        return len(seqs), client.encode(seqs, task=None, timeout=timeout)
    return call


def chat_call(conversations: list[list[dict]]):
    """ChatReward of the next conversation, rendered with the served model's template."""
    turn = itertools.count()

    def call(client, i: int):
        return 1, client.chat_reward([conversations[next(turn) % len(conversations)]])
    return call


# --- phases -----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, server: Server, metrics: Metrics, health: HealthPoller):
        self.args, self.server, self.metrics, self.health = args, server, metrics, health
        self.pid = server.proc.pid
        self.health_windows: list[tuple[dict, float, float]] = []
        self.rss_start_mb = rss_mb(self.pid)  # the server just started: every later phase is measured against it too
        work = Workload(400, args.median_tokens, 4 * args.median_tokens, args.seqs_per_request, args.seed)
        self.requests = [work.next_request() for _ in range(512)]
        rng = random.Random(args.seed)
        words = ["reward", "model", "policy", "step", "answer", "think", "value", "token", "score", "why"]
        self.conversations = [[{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(8, 60)))},
                               {"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(8, 120)))}]
                              for _ in range(256)]

    def _health(self, out: dict, start: float, stop: float) -> None:
        """Health checks of [start, stop) go into ``out["health"]`` once the poller has stopped."""
        self.health_windows.append((out, start, stop))

    def fill_health(self) -> None:
        for out, start, stop in self.health_windows:
            out["health"] = self.health.summary(start, stop)

    def _window(self, start: float, stop: float) -> tuple[float, float]:
        return start + min(self.args.warmup, (stop - start) / 3), stop

    def capacity(self) -> dict:
        callers = Callers(self.server.target, self.args.capacity_callers, timeout=None)
        cpu = self._cpu()
        start, stop = asyncio.run(callers.run(encode_call(self.requests, None), self.args.capacity_seconds))
        out = {"callers": callers.n, **callers.summary(*self._window(start, stop)), **cpu(stop - start)}
        self._health(out, start, stop)
        return out

    def flood(self, n: int) -> dict:
        before, cpu = self.metrics.scrape(), self._cpu()
        callers = Callers(self.server.target, n, timeout=self.args.deadline)
        start, stop = asyncio.run(callers.run(encode_call(self.requests, self.args.deadline), self.args.flood_seconds))
        out = {"callers": n, "deadline_s": self.args.deadline, **callers.summary(*self._window(start, stop)),
               **cpu(stop - start)}
        after = self.metrics.scrape()
        out["refusal_server"] = histogram_quantiles(after, before, "rewardserve_refusal_seconds", grpc_method="Encode")
        out["server_codes"] = {c: int(delta(after, before, "grpc_server_handled_total", grpc_method="Encode",
                                            grpc_code=c))
                               for c in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED")}
        all_seqs = delta(after, before, "rewardserve_sequences_total")
        delivered = sum(o.seqs for o in callers.outcomes if o.code == "OK")
        out["server_seqs_computed"] = int(all_seqs)
        out["seqs_computed_for_nobody"] = int(all_seqs - delivered)
        out["dropped"] = {r: int(delta(after, before, "rewardserve_dropped_requests_total", reason=r))
                          for r in ("rejected", "expired", "cancelled")}
        out["queue_time_server"] = histogram_quantiles(after, before, "rewardserve_queue_time_seconds")
        # Tokens per second of forward passes vs of wall time (what admission's estimate rests on).
        tokens = delta(after, before, "rewardserve_tokens_total")
        compute_s = delta(after, before, "rewardserve_compute_time_seconds_sum")
        out["tok_per_s"] = {"wall": tokens / (stop - start), "compute": tokens / compute_s if compute_s else None}
        self._health(out, start, stop)
        return out

    @staticmethod
    def score(flood: dict, capacities: list[dict]) -> None:
        """Goodput as % of the capacity measured just before and just after the flood (their
        mean: the machine's other load drifts), and the same per core-second the server got."""
        mean = lambda values: sum(values) / len(values)  # noqa: E731
        per_core = lambda r: r["ok_seqs_per_s"] / r["server_cores"] if r["server_cores"] else 0.0  # noqa: E731
        capacity = mean([c["ok_seqs_per_s"] for c in capacities])
        flood["capacity_seqs_per_s"] = capacity
        flood["goodput_pct_of_capacity"] = 100 * flood["ok_seqs_per_s"] / capacity
        core_capacity = mean([per_core(c) for c in capacities])
        flood["goodput_pct_of_capacity_per_server_core"] = 100 * per_core(flood) / core_capacity

    def template(self) -> dict:
        seconds = self.args.template_seconds
        base = Callers(self.server.target, self.args.capacity_callers, timeout=None)
        start, stop = asyncio.run(base.run(chat_call(self.conversations), seconds))
        out = {"callers": base.n, "rpc": "ChatReward", "without": base.summary(*self._window(start, stop))}
        loaded = Callers(self.server.target, self.args.capacity_callers, timeout=None)
        hostile: list[tuple[str, float]] = []
        start, stop = asyncio.run(self._with_hostile(loaded, seconds, hostile))
        out["with"] = loaded.summary(*self._window(start, stop))
        out["hostile_calls"] = {c: sum(1 for x, _ in hostile if x == c) for c in {x for x, _ in hostile}}
        out["hostile_call_p50_ms"] = ms([s for _, s in hostile], 50)
        self._health(out, start, stop)
        without, with_ = out["without"]["ok_p99_ms"], out["with"]["ok_p99_ms"]
        out["p99_ratio"] = with_ / without if without and with_ else None
        return out

    async def _with_hostile(self, callers: Callers, seconds: float, hostile: list) -> tuple[float, float]:
        from rewardserve_client import AsyncRewardClient, RewardServeError

        async def loop(stop_at: float) -> None:
            conv = self.conversations[0]
            async with AsyncRewardClient(self.server.target, timeout=30, max_retries=0) as client:
                i = 0
                while time.monotonic() < stop_at:
                    t0 = time.monotonic()
                    try:
                        await client.chat_reward([conv], chat_template=HOSTILE_TEMPLATES[i % 2])
                        code = "OK"
                    except RewardServeError as exc:
                        code = exc.code.name
                    hostile.append((code, time.monotonic() - t0))
                    i += 1

        task = asyncio.create_task(loop(time.monotonic() + seconds))
        try:
            return await callers.run(chat_call(self.conversations), seconds)
        finally:
            await task

    def rss_templates(self) -> dict:
        before = self._rss()
        n, size = self.args.templates, self.args.template_kb * 1024
        codes: dict[str, int] = {}
        start = time.monotonic()
        asyncio.run(self._send_templates(n, size, codes))
        stop = time.monotonic()
        time.sleep(1.0)
        after = self._rss()
        out = {"templates": n, "template_bytes": size, "seconds": stop - start, "codes": codes,
               "before": before, "after": after, "growth_mb": after["server_mb"] - before["server_mb"],
               "growth_since_start_mb": after["server_mb"] - self.rss_start_mb}
        self._health(out, start, stop)
        return out

    async def _send_templates(self, n: int, size: int, codes: dict) -> None:
        from rewardserve_client import AsyncRewardClient, RewardServeError

        pad = "x" * (size - 64)
        conv = self.conversations[1]
        todo = iter(range(n))

        async def sender(client) -> None:
            for i in todo:
                # Distinct text (the comment's head), ~size bytes, rendering like PLAIN_TEMPLATE.
                template = f"{{#- {i:08d} {pad} -#}}" + PLAIN_TEMPLATE
                try:
                    await client.chat_reward([conv], chat_template=template)
                    code = "OK"
                except RewardServeError as exc:
                    code = exc.code.name
                codes[code] = codes.get(code, 0) + 1

        async with AsyncRewardClient(self.server.target, timeout=60, max_retries=3) as client:
            await asyncio.gather(*[sender(client) for _ in range(self.args.template_callers)])

    def rss_big(self) -> dict:
        import grpc

        n, mb = self.args.big_requests, self.args.big_mb
        body = big_token_request(mb * 1024 * 1024)
        before = self._rss()
        peak = [before["server_mb"]]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(self.pid))
                time.sleep(0.02)

        results: list = []

        def send(channel) -> None:
            t0 = time.monotonic()
            call = channel.unary_unary(SERVICE + "Encode")  # bytes in, bytes out: no 50 MB Python lists here
            try:
                call(body, timeout=120)
                results.append(("OK", time.monotonic() - t0, ""))
            except grpc.RpcError as exc:
                results.append((exc.code().name, time.monotonic() - t0, (exc.details() or "")[:160]))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.monotonic()
        with grpc.insecure_channel(self.server.target) as channel:
            threads = [threading.Thread(target=send, args=(channel,)) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        stop = time.monotonic()
        time.sleep(1.0)
        done.set()
        sampler.join()
        after = self._rss()
        codes = {c: sum(1 for x, *_ in results if x == c) for c, *_ in results}
        out = {"requests": n, "request_mb": mb, "codes": codes,
               "call_p50_ms": ms([s for _, s, _ in results], 50), "detail": results[0][2] if results else "",
               "before": before, "peak_server_mb": peak[0], "after": after,
               "growth_mb": after["server_mb"] - before["server_mb"], "peak_growth_mb": peak[0] - before["server_mb"],
               "growth_since_start_mb": after["server_mb"] - self.rss_start_mb}
        self._health(out, start, stop)
        return out

    def _cpu(self):
        """A function of the elapsed seconds giving the server's and this process's CPU use
        (cores busy on average) since now: on a shared machine, who had the cores."""
        server0, own0 = cpu_s(self.pid), time.process_time()

        def used(seconds: float) -> dict:
            return {"server_cores": round((cpu_s(self.pid) - server0) / seconds, 2),
                    "callers_cores": round((time.process_time() - own0) / seconds, 2),
                    "load_1m": round(os.getloadavg()[0], 2)}
        return used

    def _rss(self) -> dict:
        kids = [k for k in children(self.pid) if Path(f"/proc/{k}").exists()]  # template workers
        return {"server_mb": rss_mb(self.pid), "children_mb": sum(rss_mb(k) for k in kids), "children": len(kids)}


def big_token_request(num_bytes: int) -> bytes:
    """An EncodeRequest (wire bytes) with one token-id input of ``num_bytes`` one-byte ids (id 5):
    inputs (2) -> EncodeInput.token_ids (2) -> TokenIds.ids (1, packed)."""
    from rewardserve.service.packed import varint

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload
    return field(2, field(2, field(1, b"\x05" * num_bytes)))


# --- report -----------------------------------------------------------------------------------

def machine() -> dict:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None
    root = Path(__file__).resolve().parent.parent
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": version("torch"), "grpcio": version("grpcio"), "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def targets(result: dict, args: argparse.Namespace) -> list[dict]:
    """Issue 20's targets, each with what was measured and whether it was met (None: not run)."""
    out = []

    def check(name: str, value, ok) -> None:
        out.append({"target": name, "measured": value, "met": None if value is None else bool(ok(value))})

    for key, flood in result.get("floods", {}).items():
        check(f"{key} callers: goodput >= 80% of capacity", flood["goodput_pct_of_capacity"], lambda v: v >= 80)
        check(f"{key} callers: refusal p99 (server) < 50 ms", flood["refusal_server"]["p99_ms"], lambda v: v < 50)
        check(f"{key} callers: health p99 < 100 ms", flood["health"]["p99_ms"], lambda v: v < 100)
    if "template" in result:
        check(f"hostile template: {args.capacity_callers} callers' p99 within 2x", result["template"]["p99_ratio"],
              lambda v: v <= 2)
    if "rss_templates" in result:
        check(f"RSS growth after {args.templates} distinct {args.template_kb} KiB templates < 200 MB",
              result["rss_templates"]["growth_mb"], lambda v: v < 200)
    if "rss_big" in result:
        check(f"RSS growth after {args.big_requests} concurrent {args.big_mb} MB token-id requests < 200 MB",
              result["rss_big"]["growth_mb"], lambda v: v < 200)
    return out


def print_table(result: dict) -> None:
    f = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
    cap = result.get("capacity")
    print(f"machine: {result['machine']['cores']} cores, load {result['load_start']} -> {result['load_end']}")
    print(f"{'phase':14} {'OK seq/s':>9} {'% cap':>6} {'OK':>6} {'RE':>6} {'DE':>5} {'other':>5} "
          f"{'OK p99':>8} {'refuse p50/p99 (server)':>24} {'health p99':>10} {'srv cores':>9}")
    rows = [("capacity", cap)] if cap else []
    for (k, v), again in zip(result.get("floods", {}).items(), result.get("capacity_rechecks", [])):
        rows += [(f"flood {k}", v), ("capacity", again)]
    for name, r in rows:
        codes = r["codes"]
        other = sum(v for c, v in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"))
        refusal = r.get("refusal_server", {})
        print(f"{name:14} {r['ok_seqs_per_s']:>9.1f} {f(r.get('goodput_pct_of_capacity')):>6} {codes.get('OK', 0):>6} "
              f"{codes.get('RESOURCE_EXHAUSTED', 0):>6} {codes.get('DEADLINE_EXCEEDED', 0):>5} {other:>5} "
              f"{f(r['ok_p99_ms']):>8} {f(refusal.get('p50_ms'), '.2f'):>11} / {f(refusal.get('p99_ms'), '.2f'):<10} "
              f"{f(r['health']['p99_ms']):>10} {f(r['server_cores'], '.2f'):>9}")
    if "template" in result:
        t = result["template"]
        print(f"hostile template: ChatReward p99 {f(t['without']['ok_p99_ms'])} -> {f(t['with']['ok_p99_ms'])} ms "
              f"(x{f(t['p99_ratio'], '.2f')}), hostile calls {t['hostile_calls']}")
    for key in ("rss_templates", "rss_big"):
        if key in result:
            r = result[key]
            print(f"{key}: server RSS {r['before']['server_mb']:.0f} -> {r['after']['server_mb']:.0f} MB "
                  f"({r['growth_mb']:+.0f}), codes {r['codes']}"
                  + (f", peak +{r['peak_growth_mb']:.0f} MB" if "peak_growth_mb" in r else "")
                  + f", health p99 {f(r['health']['p99_ms'])} ms (max {f(r['health']['max_ms'])})")
    for t in result["targets"]:
        print(f"  {'MET ' if t['met'] else 'MISS' if t['met'] is not None else '  - '} {t['target']}: "
              f"{f(t['measured'], '.2f')}")


def run(args: argparse.Namespace) -> dict:
    began = time.monotonic()
    result: dict = {"machine": machine(), "load_start": [round(x, 2) for x in os.getloadavg()], "args": vars(args)}
    log = Path(args.log or tempfile.mkstemp(prefix="rewardserve-overload-", suffix=".log")[1])
    mport = free_port()
    server = Server(None, log, dtype="auto", compile=False, graphs=False, max_tokens=16384, unbounded_queue=False,
                    extra=("--metrics-port", str(mport), "--allow-request-chat-template", *args.server_arg))
    server.start(timeout_s=180)
    health = HealthPoller(server.target, args.health_interval_ms / 1000)
    bench = Bench(args, server, Metrics(mport), health)
    cpu0, phases = resource.getrusage(resource.RUSAGE_SELF), set(args.phases)
    try:
        result["server"] = {"args": server.args[3:], "ready_s": server.ready_s, "log": str(log),
                            "rss_start_mb": bench.rss_start_mb}
        asyncio.run(_warm(server.target, bench.requests))
        if "capacity" in phases or "flood" in phases:
            result["capacity"] = bench.capacity()
        if "flood" in phases:
            result["floods"], result["capacity_rechecks"], before = {}, [], result["capacity"]
            for n in args.flood_callers:
                flood = bench.flood(n)
                result["capacity_rechecks"].append(after := bench.capacity())  # the same 16 callers again
                bench.score(flood, [before, after])
                result["floods"][str(n)], before = flood, after
        if "template" in phases:
            result["template"] = bench.template()
        if "rss" in phases:
            result["rss_templates"] = bench.rss_templates()
            result["rss_big"] = bench.rss_big()
        result["server"]["healthy_at_end"] = server.proc.poll() is None
    finally:
        health.finish()
        bench.fill_health()
        server.stop()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result["bench_cpu_s"] = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = time.monotonic() - began
    result["targets"] = targets(result, args)
    return result


async def _warm(target: str, requests) -> None:
    from rewardserve_client import AsyncRewardClient

    async with AsyncRewardClient(target, timeout=60) as client:
        for r in requests[:8]:
            await client.encode(r, task=None)


PHASES = ("capacity", "flood", "template", "rss")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", nargs="*", default=list(PHASES), choices=PHASES)
    p.add_argument("--quick", action="store_true", help="every phase, shortened (about a minute)")
    p.add_argument("--capacity-callers", type=int, default=16)
    p.add_argument("--capacity-seconds", type=float, default=15.0)
    p.add_argument("--flood-callers", type=int, nargs="*", default=[256, 512])
    p.add_argument("--flood-seconds", type=float, default=30.0)
    p.add_argument("--deadline", type=float, default=2.0, help="each flood call's deadline (s)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of each phase not counted")
    p.add_argument("--health-interval-ms", type=float, default=50.0)
    p.add_argument("--template-seconds", type=float, default=15.0)
    p.add_argument("--templates", type=int, default=1500, help="distinct request templates for the RSS phase")
    p.add_argument("--template-kb", type=int, default=1024)
    p.add_argument("--template-callers", type=int, default=4)
    p.add_argument("--big-requests", type=int, default=4)
    p.add_argument("--big-mb", type=int, default=50)
    p.add_argument("--median-tokens", type=int, default=128)
    p.add_argument("--seqs-per-request", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server-arg", action="append", default=[], help="one more `rewardserve serve` argument")
    p.add_argument("--log", default=None, help="the server's log file (default: a temporary file)")
    p.add_argument("--out", default=None, help="write the JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.capacity_seconds, args.flood_seconds, args.template_seconds, args.warmup = 4.0, 6.0, 4.0, 1.0
        args.templates, args.big_mb = 100, 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
