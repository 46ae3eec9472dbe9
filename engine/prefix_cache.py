"""Prefix keys and values kept across batches: a bounded LRU of token blocks (issue 18, phase 2).

Host side (``BlockCache``): bookkeeping owned by one runner's thread. A block holds the keys and
values of ``block_tokens`` consecutive tokens at every layer; it is named by a chained hash of its
tokens, every token before it, and the model's identity (path, revision, adapter, dtype): a
block's keys depend on everything before it, so equal names mean equal keys.

``BlockCache.assign`` turns a packed batch into one that reads what is cached and stores what it
computes: every segment that starts at token 0 (a shared prefix segment, or an item sharing
nothing in its batch) skips its leading cached blocks (an item keeps one token to compute; a
prefix segment read whole becomes an empty segment); the sequences continuing it read those
blocks through a block table; its full blocks not yet
cached are written during the forward (``slots``). A batch only reads blocks cached before it
was assigned, and the GPU runs batches in launch order on one stream, so a block evicted and
rewritten for a later batch is never read by an earlier one. A batch whose forward fails has
its new blocks dropped (``discard``): they may hold nothing.

Device side (``KVPool``): K and V pools, per layer [num_blocks * block_tokens, kv_heads, head_dim]
in the model's dtype; the attention hook writes layer l's computed keys into ``k[l]`` through
the batch's slot mapping and reads cached ones through its block table.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np
import torch

from rewardserve.engine.batch import PackedBatch
from rewardserve.engine.prefix import PrefixPlan

log = logging.getLogger(__name__)

class CacheTensors(NamedTuple):
    """What the forward needs of the cache: table [blk_cap] int64 (block ids, sequences index it
    from their table offset), slots [T] int64 (pool row each packed token writes to), and the
    pools k, v: per layer [num_slots, kv_heads, head_dim] (``KVPool``)."""

    table: torch.Tensor
    slots: torch.Tensor
    k: tuple[torch.Tensor, ...]
    v: tuple[torch.Tensor, ...]


@dataclass
class CacheStats:
    """Totals since start (tokens) and the pool's size now (bytes)."""

    queried_tokens: int = 0     # cacheable prompt tokens looked up (whole blocks)
    hit_tokens: int = 0         # of those, read from the cache instead of computed
    stored_blocks: int = 0
    evicted_blocks: int = 0
    used_bytes: int = 0
    capacity_bytes: int = 0


@dataclass(frozen=True)
class CacheWrites:
    """Blocks a batch stores: segment ``seg[w]``'s rows from ``block[w] * B`` on (B rows) go to
    pool block ``dest[w]``. All [W] int64."""

    seg: np.ndarray
    block: np.ndarray
    dest: np.ndarray


@dataclass(frozen=True)
class CachedBatch:
    """A batch as assigned: ``batch`` computes only what is not cached (its plan's ``cached``
    and ``table_off`` say what each segment reads), ``table`` [N] the block ids read,
    ``writes`` what it stores, ``new_blocks`` those writes' blocks (dropped on failure)."""

    batch: PackedBatch
    table: np.ndarray
    writes: CacheWrites
    block_tokens: int
    new_blocks: list[int] = field(default_factory=list)


def model_identity(*parts: object) -> bytes:
    """The seed of every chain: the model's path, revision, adapter and dtype, as given."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


class BlockCache:
    """LRU of token blocks by chained hash (host bookkeeping; one runner's thread)."""

    def __init__(self, num_blocks: int, block_tokens: int, identity: bytes, block_bytes: int = 0,
                 table_capacity: int | None = None):
        if num_blocks < 1:
            raise ValueError("a prefix cache needs at least one block")
        self.block_tokens = block_tokens
        self.identity = identity
        self.num_blocks = num_blocks
        self.block_bytes = block_bytes
        self.table_capacity = table_capacity  # block-table entries one batch may read (None: unbounded)
        self.free = list(range(num_blocks - 1, -1, -1))            # pop() hands out low ids first
        self.blocks: OrderedDict[bytes, int] = OrderedDict()       # hash → block, least recent first
        self.stats = CacheStats(capacity_bytes=num_blocks * block_bytes)

    # -- names -------------------------------------------------------------------------------
    def chain(self, token_ids: Sequence[int], num_blocks: int) -> list[bytes]:
        """Names of the first ``num_blocks`` blocks of ``token_ids``: each hashes its parent's
        name and its own tokens."""
        ids = np.asarray(token_ids[:num_blocks * self.block_tokens], dtype=np.int64)
        out, parent = [], self.identity
        for j in range(num_blocks):
            parent = hashlib.blake2b(parent + ids[j * self.block_tokens:(j + 1) * self.block_tokens].tobytes(),
                                     digest_size=16).digest()
            out.append(parent)
        return out

    def names_of(self, item, num_blocks: int) -> list[bytes]:
        """``chain`` of an item's tokens, kept on the item (``block_names``): the scheduler's
        probes and the batch's assign hash each prompt once."""
        memo = getattr(item, "block_names", None)
        if memo is None or memo[0] != self.identity or len(memo[1]) < num_blocks:
            memo = (self.identity, self.chain(item.token_ids, len(item.token_ids) // self.block_tokens))
            try:
                item.block_names = memo
            except AttributeError:  # an item type without the slot: hash again next time
                pass
        return memo[1][:num_blocks]

    def cached_blocks(self, names: Sequence[bytes]) -> list[int]:
        """Pool blocks of the leading cached names (stops at the first miss)."""
        out = []
        for name in names:
            block = self.blocks.get(name)
            if block is None:
                break
            out.append(block)
        return out

    def probe(self, item) -> int:
        """Tokens of ``item`` (``token_ids``) a batch would read from the cache now (its leading
        cached blocks, one token left to compute); changes nothing. The scheduler's estimate."""
        names = self.names_of(item, (len(item.token_ids) - 1) // self.block_tokens)
        return len(self.cached_blocks(names)) * self.block_tokens

    # -- one batch ---------------------------------------------------------------------------
    def assign(self, batch: PackedBatch) -> CachedBatch:
        """Read the cached leading blocks of every segment starting at token 0, store its full
        blocks not yet cached (see the module doc). Never fails: a block that finds no room is
        simply not stored."""
        plan = batch.prefix if batch.prefix is not None else _plain_plan(batch)
        B = self.block_tokens
        roots = np.flatnonzero((plan.prefix_seg < 0) & (plan.starts == 0))
        pooled_from = _first_pooled(batch, plan)  # [S] a root may skip only tokens no member pools
        group_prefixes = set(plan.prefix_seg[plan.prefix_seg >= 0].tolist())
        cached = np.zeros_like(plan.lengths)
        table_off = np.zeros_like(plan.lengths)
        table: list[int] = []
        pinned: set[int] = set()
        names_of: dict[int, list[bytes]] = {}
        for s in roots.tolist():  # reads first: a batch reads only blocks cached before it
            item, length = batch.items[int(plan.src_item[s])], int(plan.lengths[s])
            names = self.names_of(item, length // B)
            names_of[s] = names
            # Blocks it may skip: an item keeps one token to compute (its last row), a group's
            # prefix may be read whole (its members compute their own tokens); every pooled row
            # (MEAN, ALL, a step tag in the prompt) is computed in this batch: the cache holds
            # keys and values, not rows.
            own = length // B if s in group_prefixes else (length - 1) // B
            keep = min(own, int(pooled_from[s]) // B)
            hits = self.cached_blocks(names[:keep])
            if self.table_capacity is not None:
                hits = hits[:max(0, self.table_capacity - len(table))]
            self.stats.queried_tokens += len(names) * B
            self.stats.hit_tokens += len(hits) * B
            for block in hits:
                pinned.add(block)
            self._touch(names[:len(hits)])
            cached[s], table_off[s] = len(hits) * B, len(table)
            table += hits
        seg, blk, dest, new = [], [], [], []
        for s, names in names_of.items():      # then stores, never evicting what this batch reads
            skip = int(cached[s]) // B
            for j in range(skip, len(names)):
                if names[j] in self.blocks:
                    continue                    # cached already (a sibling chain, or past a miss)
                block = self._allocate(names[j], pinned)
                if block is None:
                    break
                seg.append(s), blk.append(j - skip), dest.append(block), new.append(block)
            self._touch([name for name in names if name in self.blocks])  # the chain's head most recent
        as_array = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
        self.stats.stored_blocks += len(new)
        self.stats.used_bytes = len(self.blocks) * self.block_bytes
        return CachedBatch(_skip_cached(batch, plan, cached, table_off), as_array(table),
                           CacheWrites(as_array(seg), as_array(blk), as_array(dest)), B, new)

    def discard(self, blocks: Sequence[int]) -> None:
        """Forget ``blocks`` (written by a batch that failed): they go back to the free list."""
        gone = set(blocks)
        for name in [n for n, b in self.blocks.items() if b in gone]:
            del self.blocks[name]
        self.free += sorted(gone, reverse=True)
        self.stats.used_bytes = len(self.blocks) * self.block_bytes

    def clear(self) -> None:
        """Forget every block (after a device error, when what a batch wrote is unknown)."""
        self.discard(list(self.blocks.values()))

    def _touch(self, names: Sequence[bytes]) -> None:
        # Tail first: a chain's first block ends most recent, so eviction takes chains from their end.
        for name in reversed(names):
            self.blocks.move_to_end(name)

    def _allocate(self, name: bytes, pinned: set[int]) -> int | None:
        if self.free:
            block = self.free.pop()
        else:
            victim = next((n for n, b in self.blocks.items() if b not in pinned), None)
            if victim is None:
                return None
            block = self.blocks.pop(victim)
            self.stats.evicted_blocks += 1
        self.blocks[name] = block
        pinned.add(block)  # this batch writes it: no later store of the batch may take it back
        return block


def _plain_plan(batch: PackedBatch) -> PrefixPlan:
    """The plan of a batch sharing nothing: one segment per item, from token 0."""
    n = len(batch.items)
    idx = np.arange(n, dtype=np.int64)
    zeros = np.zeros(n, dtype=np.int64)
    return PrefixPlan(idx, zeros, batch.lengths.copy(), np.full(n, -1, dtype=np.int64), idx, zeros.copy(),
                      zeros.copy())


def _first_pooled(batch: PackedBatch, plan: PrefixPlan) -> np.ndarray:
    """[S] the first pooled position of any item reading each segment (large where none does)."""
    out = np.full(len(plan.lengths), np.iinfo(np.int64).max, dtype=np.int64)
    for i, item in enumerate(batch.items):
        own = int(plan.item_seg[i])
        pre = int(plan.prefix_seg[own])
        first = min(item.positions, default=len(item.token_ids))
        for seg in (own, pre) if pre >= 0 else (own,):
            out[seg] = min(out[seg], first)
    return out


def _skip_cached(batch: PackedBatch, plan: PrefixPlan, cached: np.ndarray, table_off: np.ndarray) -> PackedBatch:
    """The batch whose root segments start after their cached tokens; the segments continuing a
    root read its blocks too. Items' ``reused_tokens`` grow by what they read from the cache."""
    has_pre = plan.prefix_seg >= 0
    root = np.where(has_pre, plan.prefix_seg, np.arange(len(plan.lengths)))
    seg_cached = cached[root]                                       # [S] tokens read from the cache
    seg_table = table_off[root]
    is_root = ~has_pre
    starts = np.where(is_root, plan.starts + cached, plan.starts)
    lengths = np.where(is_root, plan.lengths - cached, plan.lengths)
    item_root = root[plan.item_seg]                                 # [n] each item's root segment
    first = plan.src_item[item_root] == np.arange(len(batch.items))  # the item that computes its root
    reused = np.where(first, cached[item_root], plan.reused)
    new_plan = dataclasses.replace(plan, starts=starts, lengths=lengths, reused=reused, cached=seg_cached,
                                   table_off=seg_table)
    for item, n in zip(batch.items, reused.tolist()):
        item.reused_tokens = n
    return dataclasses.replace(batch, lengths=lengths, num_tokens=int(lengths.sum()),
                               max_seqlen=int(lengths.max(initial=0)), prefix=new_plan)


class KVPool:
    """The device pools: k, v one tensor per layer, each [num_blocks * block_tokens, kv_heads, head_dim].

    Separate tensors, not views of one [layers, ...] tensor: torch.compile (dynamic shapes)
    mutating a view of a graph input through a custom op wrote at the base's offset 0 (torch
    2.13, seen on the CPU); whole tensors are written in place correctly."""

    def __init__(self, num_layers: int, num_blocks: int, block_tokens: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (num_blocks * block_tokens, kv_heads, head_dim)
        self.k = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers))
        self.v = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers))


def block_bytes(num_layers: int, block_tokens: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of one block: keys and values of ``block_tokens`` tokens at every layer."""
    return 2 * num_layers * block_tokens * kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()
