"""The prefix cache's host bookkeeping (engine/prefix_cache.py): block names, what a batch reads
and stores, LRU eviction from a chain's end, blocks a batch reads never taken by its own stores,
and the staging of its block table and slots."""
from __future__ import annotations

import numpy as np

from rewardserve.engine import staging
from rewardserve.engine.batch import PackedBatch
from rewardserve.engine.config import PrefixConfig
from rewardserve.engine.prefix import PrefixPlanner
from rewardserve.engine.prefix_cache import BlockCache, model_identity

B = 16


class Item:
    def __init__(self, ids, positions=None):
        self.token_ids = list(ids)
        self.positions = positions if positions is not None else [len(ids) - 1]
        self.reused_tokens = 0


def cache(num_blocks: int = 64, identity: bytes = model_identity("m", None, "float32")) -> BlockCache:
    return BlockCache(num_blocks, B, identity, block_bytes=100, table_capacity=256)


def planner() -> PrefixPlanner:
    return PrefixPlanner(PrefixConfig(prefix_min_tokens=32, prefix_block_tokens=B))


def test_names_chain_every_earlier_token_and_the_model():
    c = cache()
    a = list(range(64))
    b = [99] + a[1:]  # differs in the first block only
    assert c.chain(a, 4)[0] != c.chain(b, 4)[0] and c.chain(a, 4)[3] != c.chain(b, 4)[3]
    assert c.chain(a, 4) == c.chain(a + [7], 4)
    other = cache(identity=model_identity("m", None, "bfloat16"))
    assert set(c.chain(a, 4)).isdisjoint(other.chain(a, 4))
    item = Item(a + [1])
    c.probe(item)  # the names are kept on the item (hashed once per cache identity)
    assert item.block_names == (c.identity, c.chain(a, 4)) and other.names_of(item, 4) == other.chain(a, 4)


def test_a_batch_reads_what_an_earlier_one_stored():
    c = cache()
    prompt = list(range(10, 90))                       # 80 tokens: 5 blocks
    first = c.assign(PackedBatch.of([Item(prompt + [1, 2, 3])]))
    assert len(first.new_blocks) == 5 and first.batch.num_tokens == 83 and len(first.table) == 0
    second = c.assign(PackedBatch.of([Item(prompt + [4])]))
    plan = second.batch.prefix
    assert plan.cached.tolist() == [80] and second.batch.num_tokens == 1
    assert second.table.tolist() == first.writes.dest.tolist()
    assert second.batch.items[0].reused_tokens == 80
    assert c.stats.hit_tokens == 80


def test_an_item_keeps_its_last_token_and_pooled_rows_are_computed():
    c = cache()
    prompt = list(range(10, 74))                       # 64 tokens: 4 blocks
    c.assign(PackedBatch.of([Item(prompt + [1])]))
    same = c.assign(PackedBatch.of([Item(prompt)]))    # all 4 blocks cached, but the last token is computed
    assert same.batch.prefix.cached.tolist() == [48]
    mean = c.assign(PackedBatch.of([Item(prompt + [2], positions=list(range(65)))]))
    assert mean.batch.prefix.cached.tolist() == [0]    # MEAN/ALL pool every row: nothing skipped
    step = c.assign(PackedBatch.of([Item(prompt + [3], positions=[40, 64])]))
    assert step.batch.prefix.cached.tolist() == [32]   # up to the block of the first pooled row


def test_a_group_prefix_is_read_whole_and_its_members_read_its_blocks():
    c = cache()
    prompt = list(range(10, 74))
    c.assign(PackedBatch.of([Item(prompt + [1])]))
    group = [Item(prompt + tail) for tail in ([5, 6], [7], [8, 9, 10])]
    got = c.assign(PackedBatch.of(group, planner()))
    plan = got.batch.prefix
    assert plan.lengths.tolist() == [0, 2, 1, 3]       # the prefix segment is empty: all cached
    assert plan.cached.tolist() == [64] * 4 and plan.table_off.tolist() == [0] * 4
    assert [it.reused_tokens for it in group] == [64, 64, 64]
    row = np.zeros(staging.Layout(6, 4, 3, True, 256).total, dtype=np.int64)
    layout = staging.Layout(6, 4, 3, True, 256)
    staging.fill(row, got.batch, layout, got)
    region = row[layout.prefix_start:layout.prefix_start + 16].reshape(4, 4)
    assert region[2].tolist() == [64] * 4 and region[1].tolist() == [0, 0, 0, 0]
    table = row[layout.table_start:layout.table_start + 4]
    assert table.tolist() == got.table.tolist()


def test_eviction_takes_chains_from_their_end_and_spares_what_the_batch_reads():
    c = cache(num_blocks=6)
    a, b = list(range(100, 164)), list(range(200, 264))  # 4 blocks each
    c.assign(PackedBatch.of([Item(a + [1])]))
    c.assign(PackedBatch.of([Item(b + [1])]))           # 2 free, then evicts a's last 2 blocks
    assert c.stats.evicted_blocks == 2
    assert c.probe(Item(a + [1])) == 32 and c.probe(Item(b + [1])) == 64
    # a again: reads its 2 leading blocks (pinned), stores its last 2 by evicting b's tail
    again = c.assign(PackedBatch.of([Item(a + [2])]))
    assert again.batch.prefix.cached.tolist() == [32]
    assert set(again.writes.dest.tolist()).isdisjoint(again.table.tolist())
    assert c.probe(Item(a + [3])) == 64 and c.probe(Item(b + [1])) == 32


def test_stores_find_no_room_without_failing():
    c = cache(num_blocks=2)
    prompt = list(range(10, 74))
    c.assign(PackedBatch.of([Item(prompt + [1])]))
    got = c.assign(PackedBatch.of([Item(prompt + [2])]))  # reads 2, finds no room for 2 more
    assert got.batch.prefix.cached.tolist() == [32] and len(got.new_blocks) == 0


def test_discard_and_clear_forget_blocks():
    c = cache()
    prompt = list(range(10, 74))
    first = c.assign(PackedBatch.of([Item(prompt + [1])]))
    c.discard(first.new_blocks)
    assert c.probe(Item(prompt + [1])) == 0 and len(c.free) == 64
    c.assign(PackedBatch.of([Item(prompt + [1])]))
    c.clear()
    assert len(c.blocks) == 0 and len(c.free) == 64


def test_slots_send_stored_rows_to_their_blocks_and_skip_the_rest():
    c = cache()
    items = [Item(list(range(5, 25))), Item(list(range(30, 70)))]   # 20 and 40 tokens: 1 and 2 full blocks
    got = c.assign(PackedBatch.of(items))
    layout = staging.Layout(got.batch.num_tokens, 2, 2, True, 256)
    row = np.zeros(layout.total, dtype=np.int64)
    staging.fill(row, got.batch, layout, got)
    slots = row[layout.slots_start:layout.slots_start + layout.tok_cap]
    d = got.writes.dest.tolist()
    assert slots[:16].tolist() == list(range(d[0] * B, d[0] * B + 16))
    assert (slots[16:20] == -1).all()                                # not stored
    assert slots[20:52].tolist() == list(range(d[1] * B, d[1] * B + 16)) + list(range(d[2] * B, d[2] * B + 16))
    assert (slots[52:] == -1).all()
