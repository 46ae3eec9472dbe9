"""ModelRunner: the only owner of CUDA state. PackedBatch → per-item pooled outputs.

Per batch (``batch.PackedBatch``, cut by the scheduler), ``launch`` packs on the host (numpy, one staging row, see ``staging``) → one
host→device copy → forward (a captured CUDA graph for small batches, else the compiled or eager
packed backbone; [T, hidden]) → gathers the pooled rows only (MEAN averaged per sequence) →
runs the head on them (float32) → starts one device→host copy, and returns without waiting.
``collect`` waits for that copy (the batch's only host synchronisation) and runs ``finish`` per
item on the CPU. ``execute`` is the two back to back; callers that launch batch i+1 before
collecting batch i keep the GPU busy while the host finishes and packs. A failure (CUDA out of
memory, say) is raised to the caller, whose failure isolation (``pipeline``) splits the batch.

Shared prefixes (``prefix_reuse``, planned by ``engine/prefix.py`` when the scheduler cuts the
batch): the staging row carries each sequence's prefix segment, and on CUDA every batch carries
that region (zeros when nothing is shared), so the compiled forward and the CUDA graphs keep one
input signature. Without prefix reuse the forward and its inputs are those of before, bit for bit.

Prefix cache (``prefix_cache``, ``engine/prefix_cache.py``): a bounded pool of prefix keys and
values across batches. ``launch`` asks the runner's ``BlockCache`` (host bookkeeping, this thread
only) which leading blocks of each batch are cached and where its new blocks go; the row carries
the block table and slot mapping (fixed sizes: one signature for compile and graphs), and the
attention hook of every layer writes its keys into the pools and reads cached ones. A batch whose
launch fails drops its new blocks; a failure at collect (the device's) drops the whole cache.

Compile and graphs are prepared in ``warm_up`` (the server runs it before reporting SERVING; the
offline engine runs it on its first batch). Either falls back to the eager forward, with a
warning, when it cannot be used.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from rewardserve.engine import attention, staging
from rewardserve.engine.prefix_cache import BlockCache, CachedBatch, CacheTensors, KVPool, block_bytes
from rewardserve.engine.batch import PackedBatch
from rewardserve.engine.compiled import compile_forward, eager_forward, num_compiled_graphs
from rewardserve.engine.cuda_graphs import CudaGraphs, seq_buckets, token_buckets
from rewardserve.engine.models.base import PoolingModel
from rewardserve.engine.pooling import finish
from rewardserve.engine.types import PoolingType

log = logging.getLogger(__name__)
Output = tuple[torch.Tensor, torch.Tensor | None]


class _Dummy:
    """A stand-in WorkItem for warm-up batches (token ids only, LAST pooled)."""

    def __init__(self, n: int):
        self.token_ids = [0] * n
        self.positions = [n - 1]


@dataclass
class Pending:
    """A launched batch: its results are on their way to ``host`` (done when ``event`` is)."""

    batch: PackedBatch
    counts: list[int] | None = None       # pooled rows per item
    shapes: list[torch.Size] | None = None  # [logits [R, L]] and/or [hidden rows [R, H]]
    host: torch.Tensor | None = None       # flat float32 results (pinned on CUDA)
    event: torch.cuda.Event | None = None
    started: torch.cuda.Event | None = None
    outputs: list[Output] | None = None    # already computed (CPU)


@dataclass(frozen=True)
class CacheSpec:
    """What the prefix cache is: its size (``gb``; None: sized from free memory), its block
    (the planner's block size) and the model identity its block names start from."""

    gb: float | None
    block_tokens: int
    identity: bytes


class ModelRunner:
    """Runs packed batches of WorkItems on one device."""

    def __init__(self, model: PoolingModel, device: torch.device, backend: str, head_dtype: torch.dtype | None,
                 *, max_tokens: int, graph_max_tokens: int, graph_max_seqs: int,
                 compile_warmup: list[list[int]] | None = None, compile: bool = False,
                 cuda_graphs: bool = False, max_seq_len: int | None = None, prefix_reuse: bool = False,
                 prefix_cache: "CacheSpec | None" = None):
        self.model = model.to(device)
        self.device = device
        self.backend = backend
        self.head_dtype = head_dtype
        for module in model.head_modules():
            if head_dtype is not None:
                module.to(head_dtype)  # fp32 head keeps rewards exact under a bf16 backbone
        self.cuda = device.type == "cuda"
        gqa_native = True
        if self.cuda and backend in ("torch", "triton") and not attention.probe_torch_flash(device):
            log.warning("torch FlashAttention kernel refused GQA: repeating kv heads")
            gqa_native = False
        # This model's kernel choice, GQA verdict, fallback flag and active packing: owned here,
        # read by the attention hook of each of its layers.
        self.attention = attention.attach(self.model, attention.AttentionContext(backend, gqa_native))
        if (compile or cuda_graphs) and not self.cuda:
            log.info("compile / CUDA graphs are CUDA-only: running eagerly on %s", device)
        packs = getattr(getattr(model, "traits", None), "supports_packing", True)
        self.want_compile = compile and self.cuda and packs
        self.want_graphs = cuda_graphs and self.cuda and packs
        self.max_tokens = max_tokens
        self.prefix_reuse = prefix_reuse          # batches may share prefixes (the planner said the model can)
        self.max_seq_len = max_seq_len or max_tokens  # warm-up sequences stay within the position table
        self.graph_max_tokens, self.graph_max_seqs = graph_max_tokens, graph_max_seqs  # RunnerConfig.cuda_graph_*
        # RunnerConfig.warmup_batches(): the batches (sequence lengths) compiled before serving.
        # Required when compiling (no default here: the config tree holds it).
        if self.want_compile and not compile_warmup:
            raise ValueError("compile needs its warm-up batches (RunnerConfig.warmup_batches)")
        self.compile_warmup = compile_warmup or []
        self.forward = eager_forward(self.model)  # (ids, positions, cu_seqlens, max_seqlen) → [T, H]
        self.min_tokens = 1                       # 2 once compiled: T=1 would specialise the graph
        self.graphs: CudaGraphs | None = None
        self.use_graphs = True                    # benchmarks may turn replay off
        self.gpu_ms: list[float] | None = None    # set to a list to record each batch's GPU time
        self.num_oom_splits = 0
        self.stats: dict = {"compile": False, "cuda_graphs": False, "prefix_reuse": prefix_reuse}
        self._warm = False
        self.cache: BlockCache | None = None     # prefix cache bookkeeping (None: no cache)
        self.pool: KVPool | None = None
        self.cache_table = 0                      # block-table entries of every staging row
        if prefix_reuse and prefix_cache is not None:
            self._make_cache(prefix_cache)

    def execute(self, batch: PackedBatch) -> list[Output]:
        """Compute every item; returns (data, logits) per item in order."""
        return self.collect(self.launch(batch))

    @torch.inference_mode()
    def launch(self, batch: PackedBatch) -> Pending:
        """Queue a batch on the device and return at once (see ``collect``)."""
        if not self._warm and (self.want_compile or self.want_graphs):
            self.warm_up(self.max_tokens)
        timing = self.gpu_ms is not None and self.cuda
        started = _event(timing) if timing else None
        cached = self.cache.assign(batch) if self.cache is not None else None
        if cached is not None:
            batch = cached.batch                               # computes what is not cached
        try:
            hidden, gather = self._forward(batch, cached)     # [T or bucket, H], [G]
        except BaseException:
            if cached is not None:
                self.cache.discard(cached.new_blocks)          # they may hold nothing
            raise
        items = batch.items
        rows, counts = self._pool(hidden, gather, batch)      # [R, H]
        heads = [it.pooling.uses_head for it in items]
        parts = []
        if any(heads):
            parts.append(self.score(rows))                     # [R, L] float32
        if not all(heads):
            parts.append(rows.float())                         # [R, H]
        flat = parts[0].reshape(-1) if len(parts) == 1 else torch.cat([p.reshape(-1) for p in parts])
        if not self.cuda:
            return Pending(batch, outputs=self._split(flat, [p.shape for p in parts], counts, items))
        host = torch.empty(flat.numel(), dtype=torch.float32, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        return Pending(batch, counts, [p.shape for p in parts], host, _event(timing), started)

    def wrap_forward(self, wrapper) -> None:
        """Replace the packed forward by ``wrapper(forward)`` (same signature: ids, positions,
        cu_seqlens, max_seqlen[, prefix] → hidden [T, H]; ``prefix`` is passed only when the batch
        carries the prefix region); for fault injection and tracing. Call it after warm-up:
        compiling replaces the forward."""
        self.forward = wrapper(self.forward)

    @torch.inference_mode()
    def probe(self) -> None:
        """Run a two-token forward to the end; raises when the device can no longer compute (a
        replica's health check after a failure that was not out of memory)."""
        self._dummy_forward(self.forward, [2])
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        """A lost replica's runner: nothing to stop (it lives in the serving process; a tensor-
        parallel group's ranks are the engine's to close)."""

    def release_memory(self) -> None:
        """Give cached device memory back (after an out-of-memory failure, before a retry)."""
        if self.cuda:
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def collect(self, pending: Pending) -> list[Output]:
        """Wait for a launched batch's results (the one host sync per batch) and finish each item."""
        if pending.outputs is not None:
            return pending.outputs
        try:
            pending.event.synchronize()
        except BaseException:
            if self.cache is not None:  # what this batch (and any launched after it) wrote is unknown
                self.cache.clear()
            raise
        if pending.started is not None and self.gpu_ms is not None:
            self.gpu_ms.append(pending.started.elapsed_time(pending.event))
        flat = pending.host.clone()  # the pinned block goes back to torch's host cache
        return self._split(flat, pending.shapes, pending.counts, pending.batch.items)

    @staticmethod
    def _split(flat: torch.Tensor, shapes: list, counts: list[int], items: list) -> list[Output]:
        """Flat float32 host results → ``finish`` of each item's rows (views, no copies)."""
        views, start = [], 0
        for shape in shapes:
            n = torch.Size(shape).numel()
            views.append(flat[start:start + n].view(shape))
            start += n
        heads = [it.pooling.uses_head for it in items]
        logits, hidden = (views[0], views[-1]) if any(heads) else (None, views[0])
        out, offset = [], 0
        for item, uses_head, n in zip(items, heads, counts):
            out.append(finish((logits if uses_head else hidden)[offset:offset + n], item.pooling))
            offset += n
        return out

    def _forward(self, plan: PackedBatch, cached: CachedBatch | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage the batch, copy it in once and run it; returns hidden and the gather rows."""
        use = self.graphs is not None and self.use_graphs
        key = self.graphs.bucket_for(plan.num_tokens, plan.num_seqs) if use else None
        if key is not None:
            layout = self.graphs.layout(key, plan.num_rows)
        else:  # a too-short batch gets a dummy sequence (see min_tokens)
            tok_cap = max(plan.num_tokens, self.min_tokens)
            layout = staging.Layout(tok_cap, plan.num_seqs + (tok_cap > plan.num_tokens), plan.num_rows,
                                    self._stages_prefix(plan), self.cache_table)
        host = torch.empty(layout.total, dtype=torch.int64, pin_memory=self.cuda)
        staging.fill(host.numpy(), plan, layout, cached)
        return self.run_staged(host, layout, key, max(plan.max_seqlen, self.min_tokens))

    def run_staged(self, host: torch.Tensor, layout: staging.Layout, key, max_seqlen: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one filled staging row [layout.total]: CUDA graph ``key`` (None: the eager or
        compiled forward) → hidden [T or bucket, H] and the gather rows. Tensor parallel: rank 0's
        runner sends the row to the other ranks first, which run it here."""
        if key is not None:
            hidden, row = self.graphs.replay(host, key)        # [bucket, H]
            return hidden, layout.views(row)[3]
        row = host.to(self.device, non_blocking=True)
        ids, positions, cu_seqlens, gather = layout.views(row)
        return self._run(self.forward, layout, row, max_seqlen), gather

    def _stages_prefix(self, plan: PackedBatch) -> bool:
        """Whether a batch's row carries the prefix region: when it shares prefixes, and for every
        batch on CUDA with prefix reuse on (one input signature for the compiled forward)."""
        return plan.prefix is not None or (self.prefix_reuse and self.cuda) or self.cache is not None

    def _run(self, forward, layout: staging.Layout, row: torch.Tensor, max_seqlen: int) -> torch.Tensor:
        """Call ``forward`` on a device row laid out by ``layout`` → hidden [T, H]."""
        ids, positions, cu_seqlens, _ = layout.views(row)
        prefix = layout.prefix_view(row)  # [2, S], [4, S] with the cache, or None
        if prefix is None:
            return forward(ids, positions, cu_seqlens.to(torch.int32), max_seqlen)
        if not layout.cache_blocks:
            return forward(ids, positions, cu_seqlens.to(torch.int32), max_seqlen, prefix)
        return forward(ids, positions, cu_seqlens.to(torch.int32), max_seqlen, prefix,
                       self.cache_tensors(layout, row))

    def cache_tensors(self, layout: staging.Layout, row: torch.Tensor) -> CacheTensors:
        """The prefix cache's inputs of one forward: the row's table and slots, and the pools."""
        table, slots = layout.cache_views(row)
        return CacheTensors(table, slots, self.pool.k, self.pool.v)

    def _make_cache(self, spec: "CacheSpec") -> None:
        """Size the pools (``spec.gb``; None: a tenth of the device memory free after load, none
        on the CPU) and set up the bookkeeping; logs what it chose and why not, when not."""
        layers = attention.cache_layers(self.model)
        if not layers:
            log.info("prefix cache off: this model's attention layers carry no layer index")
            return
        config = getattr(layers[0], "config", None)
        heads = getattr(config, "num_attention_heads", None)
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(layers[0], "head_dim", None)
        if not isinstance(kv_heads, int) or not isinstance(head_dim, int):
            log.info("prefix cache off: kv heads / head_dim unknown for %s", type(layers[0]).__name__)
            return
        dtype = next(layers[0].parameters()).dtype
        per_block = block_bytes(len(layers), spec.block_tokens, kv_heads, head_dim, dtype)
        gb = spec.gb
        if gb is None:
            if not self.cuda:
                log.info("prefix cache off on %s (give --prefix-cache-gb to keep prefixes across batches)", self.device)
                return
            gb = 0.1 * torch.cuda.mem_get_info(self.device)[0] / 2**30
        num_blocks = int(gb * 2**30 // per_block)
        if num_blocks < 1:
            log.info("prefix cache off (--prefix-cache-gb %.3g holds no %d-byte block)", gb, per_block)
            return
        self.pool = KVPool(len(layers), num_blocks, spec.block_tokens, kv_heads, head_dim, dtype, self.device)
        self.cache_table = max(256, 4 * max(self.max_tokens, self.max_seq_len) // spec.block_tokens)
        self.cache = BlockCache(num_blocks, spec.block_tokens, spec.identity, per_block, self.cache_table)
        attention.attach_cache(layers, self.attention, spec.block_tokens)
        self.stats["prefix_cache_gb"] = round(num_blocks * per_block / 2**30, 3)
        log.info("prefix cache: %.2f GiB on %s, %d blocks of %d tokens (%d tokens, %d layers x %d kv heads x %d)",
                 num_blocks * per_block / 2**30, self.device, num_blocks, spec.block_tokens,
                 num_blocks * spec.block_tokens, len(layers), kv_heads, head_dim)

    @staticmethod
    def _pool(hidden: torch.Tensor, gather: torch.Tensor, plan: PackedBatch) -> tuple[torch.Tensor, list[int]]:
        """Pooled rows of every item, stacked: [R, H] (MEAN items contribute their average)."""
        items = plan.items
        pooled = hidden.index_select(0, gather)  # [G, H]
        if not any(it.pooling.pooling_type == PoolingType.MEAN for it in items):
            return pooled, plan.row_counts
        rows, offset = [], 0
        for item, n in zip(items, plan.row_counts):
            chunk = pooled[offset:offset + n]
            offset += n
            rows.append(chunk.mean(0, keepdim=True) if item.pooling.pooling_type == PoolingType.MEAN else chunk)
        return torch.cat(rows), [r.shape[0] for r in rows]

    def score(self, rows: torch.Tensor) -> torch.Tensor:
        """Pooled rows [R, H] → logits [R, L] in float32 (head in ``head_dtype``)."""
        if self.head_dtype is not None:
            rows = rows.to(self.head_dtype)
        return self.model.score(rows).float()

    def warm_up(self, max_tokens: int) -> float:
        """Ready kernels and allocator; compile and capture graphs when asked. Returns seconds."""
        start = time.monotonic()
        log.info("warming up on %s (torch.compile %s, CUDA graphs %s)", self.device,
                 "on" if self.want_compile else "off", "on" if self.want_graphs else "off")
        with torch.inference_mode():
            self.attention.cuda_fallback_used(reset=True)
            self._dummy_forward(self.forward, [max(1, min(max_tokens, 256))])
            if self.want_compile and self.stats["compile"] is False:
                self._compile(max_tokens)
            if self.want_graphs and self.graphs is None:
                self._capture(max_tokens)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self._warm = True
        self.stats["warm_up_s"] = round(time.monotonic() - start, 2)
        return time.monotonic() - start

    def _dummy_forward(self, forward, lengths: list[int]) -> None:
        """One warm-up batch; a length over ``max_seq_len`` becomes several sequences (same tokens)."""
        cap = self.max_seq_len
        items = [_Dummy(min(cap, n - start)) for n in lengths for start in range(0, n, cap)]
        plan = PackedBatch.of(items)
        layout = staging.Layout(plan.num_tokens, plan.num_seqs, plan.num_rows, self._stages_prefix(plan),
                                self.cache_table)
        host = torch.empty(layout.total, dtype=torch.int64)
        staging.fill(host.numpy(), plan, layout)
        self._run(forward, layout, host.to(self.device), max(plan.max_seqlen, 2))

    def _compile(self, max_tokens: int) -> None:
        """Compile, then run the shapes serving will see (``compile_warmup``: by default many
        sequences, one long, a few)."""
        if self.attention.cuda_fallback_used():
            # The SDPA loop reads cu_seqlens on the host: dynamo would break the graph at every
            # layer and recompile for each new sequence count, which costs minutes and buys nothing.
            log.warning("torch.compile off: this model's attention needs the SDPA fallback (host syncs)")
            self.stats["compile"] = "fallback attention"
            return
        start = time.monotonic()
        try:
            compiled = compile_forward(self.model)
            for lengths in self.compile_warmup:
                self._dummy_forward(compiled, lengths)
        except Exception:  # noqa: BLE001 - a compiler failure must not take the server down
            log.exception("torch.compile failed: running the packed backbone eagerly")
            self.stats["compile"] = "failed"
            return
        self.forward, self.min_tokens = compiled, 2
        self.stats.update(compile=True, compile_s=round(time.monotonic() - start, 1),
                          compiled_graphs=num_compiled_graphs())
        log.info("torch.compile done in %.1fs (later starts read the on-disk cache)", self.stats["compile_s"])

    def _capture(self, max_tokens: int) -> None:
        if self.attention.cuda_fallback_used():
            log.warning("CUDA graphs off: this model's attention needs the SDPA fallback (host syncs)")
            self.stats["cuda_graphs"] = "fallback attention"
            return
        buckets = token_buckets(min(self.graph_max_tokens, max_tokens))
        log.info("capturing CUDA graphs for %d token buckets (up to %d tokens)", len(buckets), buckets[-1])
        graphs = CudaGraphs(self.forward, self.device, buckets, seq_buckets(self.graph_max_seqs),
                            prefix=self.prefix_reuse, cache_blocks=self.cache_table,
                            cache=self.cache_tensors if self.cache is not None else None)
        try:
            seconds = graphs.capture()
        except Exception:  # noqa: BLE001
            log.exception("CUDA graph capture failed: running without graphs")
            self.stats["cuda_graphs"] = "failed"
            return
        self.graphs = graphs
        self.stats.update(cuda_graphs=True, capture_s=round(seconds, 1), buckets=list(buckets),
                          seq_buckets=list(graphs.seq_buckets), num_graphs=len(graphs.graphs),
                          compiled_graphs=num_compiled_graphs() if self.stats["compile"] is True else 0)


def _event(timing: bool) -> torch.cuda.Event:
    event = torch.cuda.Event(enable_timing=timing)
    event.record()
    return event
