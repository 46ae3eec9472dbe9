"""The prefix cache across batches (issue 18, phase 2), fp32 on the CPU through the offline Engine:
a later call whose prompt an earlier call computed reads its keys from the cache, and every
score equals --no-prefix-reuse within 1e-5 (each decoder family, each pooling type); a cache too
small for two prompts evicts and still answers right; a batch that fails drops the blocks it
was writing. Each case checks that the cache was read (reused_tokens, hit counters), so it
cannot pass vacuously.
"""
from __future__ import annotations

import random

import pytest

from rewardserve.engine.config import EngineConfig, ModelConfig, PrefixConfig, RunnerConfig
from rewardserve.engine.engine import Engine
from rewardserve.engine.prefix_cache import block_bytes
from test_decoders import BUILDERS
from test_prefix_reuse import POOLINGS, TOL
from tiny_decoders import STEP_TAG_ID, VOCAB

BLOCK = 16


def cached_engines(folder, cache_gb: float = 0.01, pooler_config: str = "") -> tuple[Engine, Engine]:
    """(reuse on with a prefix cache of ``cache_gb``, reuse off) on the same checkpoint."""
    def make(reuse: bool) -> Engine:
        return Engine(EngineConfig(model=ModelConfig(model=str(folder), dtype="float32", pooler_config=pooler_config),
                                   runner=RunnerConfig(device="cpu"),
                                   prefix=PrefixConfig(prefix_reuse=reuse, prefix_cache_gb=cache_gb if reuse else None)))
    return make(True), make(False)


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(4, VOCAB) for _ in range(n)]


def assert_close(got: list, want: list) -> None:
    for a, b in zip(got, want, strict=True):
        assert a.pooled_positions == b.pooled_positions and a.num_tokens == b.num_tokens
        assert (a.data - b.data).abs().max().item() <= TOL, (a.index, (a.data - b.data).abs().max().item())


@pytest.mark.parametrize("family", ("llama", "qwen2", "qwen3", "mistral", "gemma2"))
def test_a_later_batch_reads_the_cached_prompt(ckpt, family):
    """Call 1 computes a 100-token prompt alone (and caches its 6 full blocks); call 2 sends a
    group of the same prompt: its prefix reads 96 tokens from the cache (the group's first item
    reports them), for every pooling type; MEAN and ALL pool every prompt row, so they compute it."""
    BUILDERS[family]().save_pretrained(str(ckpt))
    on, off = cached_engines(ckpt)
    rng = random.Random(0)
    prompt = ids(rng, 100)
    first = [prompt + ids(rng, 7) + [STEP_TAG_ID]]
    group = [prompt + ids(rng, n) + [STEP_TAG_ID] for n in (3, 20, 41)]
    for name, (task, params) in POOLINGS.items():
        assert_close(on.encode(first, task, params), off.encode(first, task, params))
        got, want = on.encode(group, task, params), off.encode(group, task, params)
        assert_close(got, want)
        reused = [r.reused_tokens for r in got]
        if name in ("LAST", "STEP"):  # the prompt holds no step tag: every pooled row is past it
            assert reused == [96, 96, 96], name  # the group's prefix segment read whole: empty
        else:
            assert reused == [0, 96, 96], name  # shared in the batch, computed (rows are pooled)
    stats = on.core.runner.cache.stats
    assert stats.hit_tokens > 0 and stats.queried_tokens >= stats.hit_tokens


def test_eviction_keeps_answers_right(ckpt):
    """A cache of 8 blocks holds one 100-token prompt (6 blocks) at a time: prompts A, B, A
    evict each other; every answer equals the no-reuse path, and a prompt cached again is read."""
    BUILDERS["qwen3"]().save_pretrained(str(ckpt))
    probe = cached_engines(ckpt)[0]
    pool = probe.core.runner.pool
    per_block = block_bytes(len(pool.k), BLOCK, pool.k[0].shape[1], pool.k[0].shape[2], pool.k[0].dtype)
    on, off = cached_engines(ckpt, cache_gb=8.5 * per_block / 2**30)
    assert on.core.runner.cache.num_blocks == 8
    rng = random.Random(1)
    a, b = ids(rng, 100), ids(rng, 100)
    calls = [[a + ids(rng, 5)], [b + ids(rng, 9)], [a + ids(rng, 12)], [a + ids(rng, 3)], [b + ids(rng, 4)]]
    reused = []
    for inputs in calls:
        got, want = on.encode(inputs, "classify"), off.encode(inputs, "classify")
        assert_close(got, want)
        reused.append(got[0].reused_tokens)
    stats = on.core.runner.cache.stats
    assert stats.evicted_blocks > 0
    # a: computed and cached; b: evicts part of a; a: partly evicted (what is left of its chain
    # reads), re-cached; a again: all 96; b: its chain starts with an evicted block → computed
    assert reused[0] == 0 and reused[3] == 96 and reused[4] < 96
    assert len(on.core.runner.cache.blocks) <= 8


def test_a_failed_batch_drops_its_blocks(ckpt):
    """A forward that fails after the cache assigned its blocks leaves them out of the cache:
    the next call computes the prompt again (and answers right)."""
    BUILDERS["llama"]().save_pretrained(str(ckpt))
    on, off = cached_engines(ckpt)
    rng = random.Random(2)
    prompt = ids(rng, 64)
    fail = {"on": True}

    def failing(inner):
        def forward(*args):
            if fail["on"]:
                raise RuntimeError("injected failure")
            return inner(*args)
        return forward
    on.core.wrap_forward(failing)
    with pytest.raises(Exception, match="injected failure"):
        on.encode([prompt + [9]], "classify")
    assert len(on.core.runner.cache.blocks) == 0
    fail["on"] = False
    inputs = [prompt + [10, 11]]
    got = on.encode(inputs, "classify")
    assert got[0].reused_tokens == 0
    assert_close(got, off.encode(inputs, "classify"))
    assert on.encode([prompt + [12]], "classify")[0].reused_tokens == 64  # the 4 blocks the last call stored


def test_cache_is_off_without_reuse_or_at_zero(ckpt):
    BUILDERS["qwen3"]().save_pretrained(str(ckpt))
    zero = Engine(EngineConfig(model=ModelConfig(model=str(ckpt), dtype="float32"), runner=RunnerConfig(device="cpu"),
                               prefix=PrefixConfig(prefix_cache_gb=0)))
    default_cpu = Engine(EngineConfig(model=ModelConfig(model=str(ckpt), dtype="float32"),
                                      runner=RunnerConfig(device="cpu")))
    assert zero.core.runner.cache is None and default_cpu.core.runner.cache is None
    with pytest.raises(ValueError, match="prefix-cache-gb"):
        PrefixConfig(prefix_cache_gb=-1)


def test_the_budget_counts_cached_prompts_as_free(ckpt):
    """Budget 300 tokens: four 240-token items sharing a 200-token prompt cost 240 + 3 x 48 = 384
    when nothing is cached (two batches); once an earlier call cached the prompt, each costs
    48 and the four run as one batch, with the scores of the no-reuse path."""
    from rewardserve.engine.config import SchedulerConfig

    BUILDERS["qwen3"]().save_pretrained(str(ckpt))
    sched = SchedulerConfig(max_num_batched_tokens=300)

    def make(cache_gb) -> Engine:
        return Engine(EngineConfig(model=ModelConfig(model=str(ckpt), dtype="float32"), runner=RunnerConfig(device="cpu"),
                                   scheduler=sched, prefix=PrefixConfig(prefix_cache_gb=cache_gb)))
    cached, plain = make(0.01), make(0)
    rng = random.Random(3)
    prompt = ids(rng, 200)
    group = [prompt + ids(rng, 40) for _ in range(4)]
    batches = {}

    def counting(name):
        def wrap(inner):
            def forward(*args):
                batches[name] = batches.get(name, 0) + 1
                return inner(*args)
            return forward
        return wrap
    cached.encode([prompt + ids(rng, 10)], "classify")
    cached.core.wrap_forward(counting("cached"))
    plain.core.wrap_forward(counting("plain"))
    got, want = cached.encode(group, "classify"), plain.encode(group, "classify")
    assert batches == {"cached": 1, "plain": 2}
    assert_close(got, want)
    assert [r.reused_tokens for r in got] == [192] * 4
