"""Shared prompt prefixes: which sequences of a packed batch compute their common start once.

The one owner of prefix decisions: whether a model may reuse prefixes at all (``planner_for``),
which items of a batch share which prefix (``PrefixPlanner.plan``), and how many tokens a batch
cut computes (``PrefixPlanner.counter``, read by the scheduler's token budget).

A plan lays a batch out in segments. A group of items that start with the same P tokens (found
by comparing token ids after templating, never assumed from a request's shape) gets one prefix
segment (those P tokens, positions 0..P-1) and, per item, a suffix segment (its tokens P..n-1,
positions P..n-1). A suffix segment's queries attend to its own keys causally and to every key of
its prefix segment (``VarlenMeta.prefix``), which is the attention of the whole sequence: every
layer computes the prefix's keys and values in the same forward, so no cache is needed. Pooled
positions inside the prefix read the prefix segment's rows, so LAST, MEAN, ALL and STEP pool what
the whole sequence would.

Every member keeps at least one token of its own (its suffix holds the LAST row). Prefixes are
cut to whole blocks of ``prefix_block_tokens`` and must hold ``prefix_min_tokens``.

Across batches, the runner's prefix cache (``engine/prefix_cache.py``) then lets a plan's
segments that start at token 0 skip what earlier batches computed (``PrefixPlan.cached``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from torch import nn

from rewardserve.engine.config import PrefixConfig

log = logging.getLogger(__name__)

_LENGTH_ROPE = ("dynamic", "longrope")
_TRITON_HEAD_DIMS = (64, 128, 256)


@dataclass(frozen=True)
class PrefixPlan:
    """The segments of one packed batch whose items share prefixes.

    Segment s holds tokens [starts[s], starts[s] + lengths[s]) of item ``src_item[s]``, at those
    positions (a suffix continues after its prefix); it attends to the keys of segment
    ``prefix_seg[s]`` too (-1: none). Item i's own tokens are segment ``item_seg[i]``; its first
    ``shared[i]`` tokens are read from that segment's prefix segment.

    src_item, starts, lengths, prefix_seg: [S] int64; item_seg, shared, reused: [n] int64.
    ``reused[i]``: tokens of item i not computed for it (its shared prefix, except for the group's
    first item, for which the prefix is computed); sum(item lengths) - sum(reused) = sum(lengths).

    With the prefix cache, ``cached[s]`` tokens (positions 0..cached-1) come from cached blocks
    instead: a root segment (``prefix_seg`` -1, an item's or a group's) then starts at token
    ``cached[s]``, and the segments continuing it read the same blocks.
    """

    src_item: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    prefix_seg: np.ndarray
    item_seg: np.ndarray
    shared: np.ndarray
    reused: np.ndarray
    cached: np.ndarray | None = None     # [S] leading tokens read from the prefix cache (engine/prefix_cache.py)
    table_off: np.ndarray | None = None  # [S] where each segment's cached blocks start in the block table

    @property
    def num_groups(self) -> int:
        return int((self.prefix_seg < 0).sum() - (self.shared == 0).sum())


def common_prefix(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """Length of the common start of two token lists (known equal below ``start``).

    Compares slices (C speed) in strides of 256 then 16 tokens, then token by token: a
    1,024-token shared prompt costs a handful of slice compares, not a Python loop per token."""
    n = min(len(a), len(b))
    i = start
    for step in (256, 16):
        while i < n:
            j = min(i + step, n)
            if a[i:j] != b[i:j]:
                break
            i = j
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class _Group:
    members: list[int]  # item indices, in batch order
    length: int         # shared tokens


class PrefixPlanner:
    """Finds shared prefixes in a batch (``plan``) and counts a cut's computed tokens (``counter``)."""

    def __init__(self, config: PrefixConfig):
        self.min_tokens = config.prefix_min_tokens
        self.block = config.prefix_block_tokens
        # First tokens compared by hash to find candidate groups: at most the shortest prefix kept.
        self.key_tokens = max(1, min(self.min_tokens, self.block))

    def _floor(self, n: int) -> int:
        return n // self.block * self.block

    def _eligible(self, item) -> bool:
        # Segment ids (BERT pairs) never meet a causal model here; kept out to be safe. A member
        # must keep one token of its own beyond the shortest prefix.
        return len(item.token_ids) > self.min_tokens and not getattr(item, "token_type_ids", None)

    def plan(self, items: Sequence) -> PrefixPlan | None:
        """The segments of ``items`` (WorkItems: ``token_ids``), or None when nothing is shared."""
        if len(items) < 2:
            return None
        buckets: dict[tuple, list[int]] = {}
        for i, item in enumerate(items):
            if self._eligible(item):
                buckets.setdefault(tuple(item.token_ids[:self.key_tokens]), []).append(i)
        groups: list[_Group] = []
        for members in buckets.values():
            if len(members) > 1:
                groups += self._groups(items, members)
        return _layout(items, groups) if groups else None

    def _groups(self, items: Sequence, members: list[int]) -> list[_Group]:
        """Split one bucket (same first tokens) into groups, maximising the tokens saved."""
        ids = [items[i].token_ids for i in members]
        order = sorted(range(len(members)), key=ids.__getitem__)  # lexicographic: neighbours share most
        sorted_ids = [ids[j] for j in order]
        # shared tokens of each sorted neighbour pair, each member keeping a token of its own
        links = [min(common_prefix(a, b, self.key_tokens), len(a) - 1, len(b) - 1)
                 for a, b in zip(sorted_ids, sorted_ids[1:])]
        runs = self._split([members[j] for j in order], links)[1]
        return [_Group(sorted(run), length) for run, length in runs]

    def _split(self, run: list[int], links: list[int]) -> tuple[int, list[tuple[list[int], int]]]:
        """Best grouping of a sorted run: one group sharing the run's common prefix, or the parts
        between its weakest links grouped on their own, whichever saves more tokens."""
        if len(run) < 2:
            return 0, []
        low = min(links)
        length = self._floor(low)
        whole = (len(run) - 1) * length if length >= self.min_tokens else 0
        parts, best, start = [], 0, 0
        for j, link in enumerate([*links, low]):  # cut after every weakest link (and at the end)
            if link == low:
                saved, groups = self._split(run[start:j + 1], links[start:j])
                best += saved
                parts += groups
                start = j + 1
        if whole >= best and whole > 0:
            return whole, [(run, length)]
        return best, parts

    def counter(self, cached: Callable[[object], int] | None = None) -> "BatchTokens":
        """A fresh count of computed tokens for one batch cut (see ``BatchTokens``)."""
        return BatchTokens(self, cached)


class BatchTokens:
    """Tokens a batch cut will compute, item by item: an item sharing a prefix with one already
    in the batch, or whose prompt the prefix cache holds (``cached``: item → cached tokens),
    adds only the rest. An estimate (``plan`` groups one level deep); the scheduler checks the
    final plan against its budget."""

    def __init__(self, planner: PrefixPlanner, cached: Callable[[object], int] | None = None):
        self.planner = planner
        self.cached = cached
        self.firsts: dict[tuple, Sequence[int]] = {}  # first tokens → the first item's token ids

    def cost(self, item) -> int:
        """Tokens computed if ``item`` joins the batch."""
        p, ids = self.planner, item.token_ids
        if not p._eligible(item):
            return len(ids)
        other = self.firsts.get(tuple(ids[:p.key_tokens]))
        shared = 0
        if other is not None:
            shared = p._floor(min(common_prefix(ids, other, p.key_tokens), len(ids) - 1, len(other) - 1))
            shared = shared if shared >= p.min_tokens else 0
        if self.cached is not None and shared < len(ids) - 1:
            shared = max(shared, self.cached(item))
        return len(ids) - shared

    def add(self, item) -> None:
        if self.planner._eligible(item):
            self.firsts.setdefault(tuple(item.token_ids[:self.planner.key_tokens]), item.token_ids)


def _layout(items: Sequence, groups: list[_Group]) -> PrefixPlan:
    """Segments in batch order: a group's prefix segment just before its first member's suffix."""
    n = len(items)
    group_of = np.full(n, -1, dtype=np.int64)
    for g, group in enumerate(groups):
        group_of[group.members] = g
    prefix_at = [-1] * len(groups)  # segment of each group's prefix, once emitted
    src, starts, lengths, prefix_seg = [], [], [], []
    item_seg = np.zeros(n, dtype=np.int64)
    shared = np.zeros(n, dtype=np.int64)
    reused = np.zeros(n, dtype=np.int64)
    for i, item in enumerate(items):
        g = int(group_of[i])
        size = len(item.token_ids)
        if g < 0:
            item_seg[i] = len(src)
            src.append(i), starts.append(0), lengths.append(size), prefix_seg.append(-1)
            continue
        length = groups[g].length
        if prefix_at[g] < 0:
            prefix_at[g] = len(src)
            src.append(i), starts.append(0), lengths.append(length), prefix_seg.append(-1)
        else:
            reused[i] = length
        item_seg[i] = len(src)
        shared[i] = length
        src.append(i), starts.append(length), lengths.append(size - length), prefix_seg.append(prefix_at[g])
    as_array = lambda values: np.asarray(values, dtype=np.int64)  # noqa: E731
    return PrefixPlan(as_array(src), as_array(starts), as_array(lengths), as_array(prefix_seg),
                      item_seg, shared, reused)


def refusal(model: nn.Module, backend: str) -> str | None:
    """Why ``model`` on attention ``backend`` cannot reuse prefixes, or None when it can."""
    traits = model.traits
    if not traits.is_causal:
        return "bidirectional attention (a prefix's keys would depend on what follows it)"
    if not traits.supports_packing:
        return "the padded fallback runs sequences apart"
    if traits.segment_ids:
        return "the model reads segment ids"
    for module in model.modules():
        if getattr(module, "rope_type", None) in _LENGTH_ROPE:
            return f"length-dependent RoPE ({module.rope_type}) changes with the whole sequence's length"
    if backend in ("flash_attn", "torch"):
        return f"the {backend} attention kernel has no prefix path (use --attention-backend triton)"
    if backend == "triton":
        dims = {m.head_dim for m in model.modules() if isinstance(getattr(m, "head_dim", None), int)}
        if dims - set(_TRITON_HEAD_DIMS):
            return f"head_dim {sorted(dims)} is outside the Triton kernel's {_TRITON_HEAD_DIMS}"
    return None


def planner_for(config: PrefixConfig, model: nn.Module, backend: str) -> PrefixPlanner | None:
    """The batch planner when prefix reuse is on and the model can take it; None otherwise (logged)."""
    if not config.prefix_reuse:
        log.info("prefix reuse off (--no-prefix-reuse): every sequence computes its whole prompt")
        return None
    reason = refusal(model, backend)
    if reason is not None:
        log.info("prefix reuse off for %s: %s", model.traits.architecture, reason)
        return None
    log.info("prefix reuse on: shared prefixes of at least %d tokens, in blocks of %d", config.prefix_min_tokens,
             config.prefix_block_tokens)
    return PrefixPlanner(config)
