"""Shared-prefix planning on the CPU: which items share what (engine/prefix.py), how a batch with
shared prefixes is staged (engine/staging.py), and how the scheduler's token budget counts it."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine_testlib import pack_token_ids
from rewardserve.engine import staging
from rewardserve.engine.batch import PackedBatch
from rewardserve.engine.config import PrefixConfig, SchedulerConfig
from rewardserve.engine.pooling import ResolvedPooling
from rewardserve.engine.prefix import PrefixPlanner, common_prefix
from rewardserve.engine.prepare import WorkItem
from rewardserve.engine.scheduler import Request, Scheduler
from rewardserve.engine.types import PoolingTask, PoolingType

LAST = ResolvedPooling(PoolingTask.CLASSIFY, PoolingType.LAST, "sigmoid", False, None, None, None)


def tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(4, 400) for _ in range(n)]


def item(ids: list[int], positions: list[int] | None = None, index: int = 0) -> WorkItem:
    return WorkItem(index, ids, False, LAST, positions if positions is not None else [len(ids) - 1])


def planner(min_tokens: int = 32, block: int = 16) -> PrefixPlanner:
    return PrefixPlanner(PrefixConfig(prefix_min_tokens=min_tokens, prefix_block_tokens=block))


def test_common_prefix_across_stride_edges():
    rng = random.Random(0)
    base = tokens(rng, 700)
    for cut in (0, 1, 15, 16, 17, 255, 256, 257, 699):
        other = base[:cut] + [0] + base[cut + 1:]
        assert common_prefix(base, other) == cut
    assert common_prefix(base, base[:300]) == 300
    assert common_prefix(base, base) == 700


def test_group_shares_its_block_floored_prefix_and_keeps_a_token_each():
    rng = random.Random(1)
    prompt = tokens(rng, 70)
    group = [prompt + tokens(rng, n) for n in (1, 30, 5)]
    alone = tokens(rng, 50)
    short = prompt[:40]  # shares 40 tokens, fewer than the group's 64
    items = [item(s) for s in (group[0], alone, group[1], short, group[2])]
    plan = planner().plan(items)
    # 70 shared tokens floored to blocks of 16 → 64; the short item shares 40 → 32 with the group:
    # grouping all four saves 3 x 32 = 96, the three alone 2 x 64 = 128 (the planner's choice).
    assert plan.shared.tolist() == [64, 0, 64, 0, 64]
    assert plan.reused.tolist() == [0, 0, 64, 0, 64]            # the first member computes the prefix
    assert plan.lengths.sum() == sum(len(it.token_ids) for it in items) - plan.reused.sum()
    prefix_seg = plan.prefix_seg[plan.item_seg[0]]
    assert plan.lengths[prefix_seg] == 64 and plan.starts[plan.item_seg[0]] == 64
    assert (plan.lengths[plan.item_seg] >= 1).all()


def test_identical_sequences_keep_their_last_token():
    rng = random.Random(2)
    seq = tokens(rng, 64)
    plan = planner(block=1).plan([item(seq), item(list(seq))])
    assert plan.shared.tolist() == [63, 63] and plan.lengths.tolist() == [63, 1, 1]


def test_split_at_the_weakest_link_when_it_saves_more():
    """Two prompts sharing a 32-token system prompt: two groups (a 96-token prefix each), not one of 32."""
    rng = random.Random(3)
    system = tokens(rng, 32)
    a, b = system + tokens(rng, 64), system + tokens(rng, 64)
    items = [item(p + tokens(rng, 10)) for p in (a, b, a, b, a)]
    plan = planner().plan(items)
    assert plan.shared.tolist() == [96] * 5
    assert len(set(plan.prefix_seg[plan.item_seg].tolist())) == 2


def test_nothing_shared_below_the_minimum():
    rng = random.Random(4)
    prompt = tokens(rng, 31)
    assert planner().plan([item(prompt + tokens(rng, 9)) for _ in range(4)]) is None
    assert planner().plan([item(tokens(rng, 100))]) is None


def test_responses_that_tokenize_differently_at_the_boundary():
    """The shared prefix is found in token ids: a response that merges with the prompt's last
    token shares only what precedes it."""
    rng = random.Random(5)
    prompt = tokens(rng, 40)
    merged = prompt[:-1] + [7] + tokens(rng, 5)   # last prompt token re-tokenized with the response
    plan = planner(min_tokens=16, block=1).plan([item(prompt + tokens(rng, 5)), item(merged)])
    assert plan.shared.tolist() == [39, 39]


def staged(batch, prefix: PrefixPlanner | None):
    packed = PackedBatch.of(batch, prefix)
    layout = staging.Layout(packed.num_tokens + 3, packed.num_seqs + 2, packed.num_rows, prefix=True)
    host = torch.full((layout.total,), -7, dtype=torch.int64)
    staging.fill(host.numpy(), packed, layout)
    return packed, layout, host


def test_staged_segments_positions_prefix_region_and_gather_rows():
    rng = random.Random(6)
    prompt = tokens(rng, 48)
    seqs = [prompt + tokens(rng, n) for n in (3, 9)] + [tokens(rng, 20)]
    batch = [item(seqs[0], [0, 47, 48, 50]), item(seqs[1], list(range(57))), item(seqs[2])]
    packed, layout, host = staged(batch, planner())
    ids, positions, cu, gather = layout.views(host)
    prefix = layout.prefix_view(host)
    # segments: prefix (48), suffix 0 (3), suffix 1 (9), item 2 (20); then the padding
    assert packed.lengths.tolist() == [48, 3, 9, 20] and packed.num_tokens == 80
    assert cu.tolist() == [0, 48, 51, 60, 80, 83, 83]
    assert ids[:80].tolist() == prompt + seqs[0][48:] + seqs[1][48:] + seqs[2]
    assert positions[:80].tolist() == [*range(48), 48, 49, 50, *range(48, 57), *range(20)]
    assert prefix.tolist() == [[0, 0, 0, 0, 0, 0], [0, 48, 48, 0, 0, 0]]
    rows0 = [0, 47, 48, 50]                       # prompt rows 0 and 47, then the suffix's rows 48, 50
    rows1 = [*range(48), *range(51, 60)]          # MEAN / ALL read the whole sequence
    assert gather.tolist() == rows0 + rows1 + [79]
    assert [it.reused_tokens for it in batch] == [0, 48, 0]


def test_no_plan_is_the_old_row_bit_for_bit():
    rng = random.Random(7)
    batch = [item(tokens(rng, n)) for n in (5, 40, 17)]
    packed, layout, host = staged(batch, planner())
    ids, positions, cu, gather = layout.views(host)
    ref = pack_token_ids([it.token_ids for it in batch])
    assert packed.prefix is None
    assert torch.equal(ids[:62], ref.input_ids) and torch.equal(positions[:62], ref.positions)
    assert layout.prefix_view(host).abs().sum() == 0  # no sequence has a prefix
    assert gather.tolist() == [4, 44, 61]


def test_split_halves_are_planned_again():
    rng = random.Random(8)
    prompt = tokens(rng, 64)
    batch = [item(prompt + tokens(rng, 4), index=i) for i in range(4)]
    packed = PackedBatch.of(batch, planner())
    first, second = packed.split()
    assert first.prefix is not None and second.prefix is not None
    assert [it.reused_tokens for it in batch] == [0, 64, 0, 64]


def group_request(name: str, prompt: list[int], responses: list[int], rng) -> Request:
    return Request(name, [item(prompt + tokens(rng, n), index=i) for i, n in enumerate(responses)])


def test_budget_counts_computed_tokens():
    """A GRPO group of 16 x (1,024-token prompt + 256) fits a 16,384-token budget with reuse."""
    rng = random.Random(9)
    prompt = tokens(rng, 1024)
    config = SchedulerConfig(max_num_batched_tokens=16384, max_num_seqs=64)
    shared = Scheduler(config, bounded=False, prefix=planner())
    shared.submit(group_request("g", prompt, [256] * 16, rng))
    batch = shared.next_batch(0)
    assert len(batch) == 16 and batch.num_tokens == 1024 + 16 * 256 and batch.num_item_tokens == 16 * 1280
    plain = Scheduler(config, bounded=False)
    plain.submit(group_request("g", prompt, [256] * 16, rng))
    assert len(plain.next_batch(0)) == 12


def test_plan_over_budget_gives_items_back():
    """The cut's count is a lower bound; when the plan computes more, the last items wait."""
    rng = random.Random(10)
    system = tokens(rng, 32)
    a = system + tokens(rng, 64)
    b = system + tokens(rng, 64)
    # b2 shares 96 with b1 and 32 with a; the cut counts it against a (the first seen) → 32.
    scheduler = Scheduler(SchedulerConfig(max_num_batched_tokens=300, max_num_seqs=64), bounded=False,
                          prefix=planner())
    scheduler.submit(Request("r", [item(p + tokens(rng, 40), index=i) for i, p in enumerate((a, b, b))]))
    batch = scheduler.next_batch(0)
    assert batch.num_tokens <= 300
    rest = scheduler.next_batch(0)
    assert len(batch) + len(rest) == 3


@pytest.mark.parametrize("seed", range(5))
def test_random_batches_keep_every_token_once(seed):
    """Fuzz: prompts shared at random depths; every item's tokens are staged once per segment."""
    rng = random.Random(seed)
    prompts = [tokens(rng, rng.randrange(10, 200)) for _ in range(4)]
    batch = []
    for i in range(rng.randrange(2, 20)):
        p = rng.choice(prompts)
        cut = rng.randrange(len(p) + 1)
        seq = p[:cut] + tokens(rng, rng.randrange(1, 60))
        batch.append(item(seq, sorted(rng.sample(range(len(seq)), min(3, len(seq)))), index=i))
    packed, layout, host = staged(batch, planner(min_tokens=8, block=4))
    ids, positions, cu, gather = (x.numpy() for x in layout.views(host))
    if packed.prefix is None:
        return
    plan = packed.prefix
    starts = cu[:-1]
    for i, it in enumerate(batch):
        seg = plan.item_seg[i]
        pre = plan.prefix_seg[seg]
        own = ids[starts[seg]:starts[seg] + plan.lengths[seg]].tolist()
        head = ids[starts[pre]:starts[pre] + plan.shared[i]].tolist() if pre >= 0 else []
        assert head + own == it.token_ids
        whole_rows = np.concatenate([np.arange(starts[pre], starts[pre] + plan.shared[i]) if pre >= 0 else [],
                                     np.arange(starts[seg], starts[seg] + plan.lengths[seg])]).astype(int)
        assert positions[whole_rows].tolist() == list(range(len(it.token_ids)))
    offsets = np.cumsum([0, *packed.row_counts])
    for i, it in enumerate(batch):
        rows = gather[offsets[i]:offsets[i + 1]]
        assert ids[rows].tolist() == [it.token_ids[p] for p in it.positions]
        assert positions[rows].tolist() == it.positions


def test_cli_flags_reach_the_config():
    import argparse

    from rewardserve.engine.cli_args import add_config_arguments, config_from_args
    from rewardserve.engine.config import EngineConfig

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, EngineConfig)
    assert config_from_args(EngineConfig, parser.parse_args([])).prefix.prefix_reuse is False  # until GPU parity
    on = config_from_args(EngineConfig, parser.parse_args(["--prefix-reuse", "--prefix-min-tokens", "64"]))
    assert (on.prefix.prefix_reuse, on.prefix.prefix_min_tokens) == (True, 64)
    off = config_from_args(EngineConfig, parser.parse_args(["--no-prefix-reuse"]))
    assert off.prefix.prefix_reuse is False
    with pytest.raises(ValueError, match="prefix-min-tokens"):
        PrefixConfig(prefix_min_tokens=0)


def test_prefix_cache_flag_reaches_the_config():
    import argparse

    from rewardserve.engine.cli_args import add_config_arguments, config_from_args
    from rewardserve.engine.config import EngineConfig

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, EngineConfig)
    assert config_from_args(EngineConfig, parser.parse_args([])).prefix.prefix_cache_gb is None
    assert config_from_args(EngineConfig, parser.parse_args(["--prefix-cache-gb", "2.5"])).prefix.prefix_cache_gb == 2.5
    assert config_from_args(EngineConfig, parser.parse_args(["--prefix-cache-gb", "0"])).prefix.prefix_cache_gb == 0
