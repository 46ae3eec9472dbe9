"""ModelRunner: the only owner of CUDA state. WorkItems → per-item pooled outputs.

Per batch: pack on the host (numpy, one staging row, see ``staging``) → one host→device copy →
forward (a captured CUDA graph for small batches, else the compiled or eager packed backbone;
[T, hidden]) → gather the pooled rows only (MEAN averaged per sequence) → head on pooled rows
(float32) → one device→host copy and the batch's only host synchronisation → ``finish`` per item
on the CPU. A CUDA out-of-memory error splits the batch in two and retries each half.

Compile and graphs are prepared in ``warm_up`` (the server runs it before reporting SERVING; the
offline engine runs it on its first batch). Either falls back to the eager forward, with a
warning, when it cannot be used.
"""
from __future__ import annotations

import logging
import time

import torch

from rewardserve.engine import attention, staging
from rewardserve.engine.compiled import compile_forward, eager_forward, num_compiled_graphs
from rewardserve.engine.cuda_graphs import DEFAULT_BUCKETS, CudaGraphs
from rewardserve.engine.models.base import PoolingModel
from rewardserve.engine.pooling import finish
from rewardserve.engine.prepare import WorkItem
from rewardserve.engine.types import PoolingType

log = logging.getLogger(__name__)
Output = tuple[torch.Tensor, torch.Tensor | None]


class ItemFailed(Exception):
    """A single item could not be computed (e.g. out of memory on its own)."""


class _Dummy:
    """A stand-in WorkItem for warm-up batches (token ids only, LAST pooled)."""

    def __init__(self, n: int):
        self.token_ids = [0] * n
        self.positions = [n - 1]


class ModelRunner:
    """Runs packed batches of WorkItems on one device."""

    def __init__(self, model: PoolingModel, device: torch.device, backend: str, head_dtype: torch.dtype | None,
                 *, compile: bool = False, cuda_graphs: bool = False, max_tokens: int = 16384):
        self.model = model.to(device)
        self.device = device
        self.backend = backend
        self.head_dtype = head_dtype
        for module in model.head_modules():
            if head_dtype is not None:
                module.to(head_dtype)  # fp32 head keeps rewards exact under a bf16 backbone
        attention.set_backend(backend)
        on_cuda = device.type == "cuda"
        if on_cuda and backend == "torch" and not attention.probe_torch_flash(device):
            log.warning("torch FlashAttention kernel refused GQA: repeating kv heads")
        if (compile or cuda_graphs) and not on_cuda:
            log.info("compile / CUDA graphs are CUDA-only: running eagerly on %s", device)
        packs = getattr(getattr(model, "traits", None), "supports_packing", True)
        self.want_compile = compile and on_cuda and packs
        self.want_graphs = cuda_graphs and on_cuda and packs
        self.max_tokens = max_tokens
        self.forward = eager_forward(self.model)  # (ids, positions, cu_seqlens, max_seqlen) → [T, H]
        self.graphs: CudaGraphs | None = None
        self.use_graphs = True                    # benchmarks may turn replay off
        self.staging = staging.StagingBuffer(pinned=on_cuda)
        self.results = staging.ResultBuffer(pinned=on_cuda)
        self.num_oom_splits = 0
        self.stats: dict = {"compile": False, "cuda_graphs": False}
        self._warm = False

    @torch.inference_mode()
    def execute(self, items: list[WorkItem]) -> list[Output]:
        """Compute every item; returns (data, logits) per item in order. OOM splits the batch."""
        if not self._warm and (self.want_compile or self.want_graphs):
            self.warm_up(self.max_tokens)
        try:
            return self._run(items)
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise ItemFailed("out of memory on a single sequence") from None
            self.num_oom_splits += 1
            log.warning("CUDA out of memory on a batch of %d sequences; splitting it", len(items))
            torch.cuda.empty_cache() if self.device.type == "cuda" else None
            half = len(items) // 2
            return self.execute(items[:half]) + self.execute(items[half:])

    def _run(self, items: list) -> list[Output]:
        plan = staging.plan(items)
        hidden, gather = self._forward(items, plan)            # [T or bucket, H], [G]
        rows, counts = self._pool(hidden, gather, items, plan)  # [R, H]
        return [finish(h, it.pooling) for h, it in zip(self._to_host(rows, counts, items), items)]

    def _forward(self, items: list, plan: staging.Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage the batch, copy it in once and run it; returns hidden and the gather rows."""
        use = self.graphs is not None and self.use_graphs
        bucket = self.graphs.bucket_for(plan.num_tokens, plan.num_seqs) if use else None
        if bucket is not None:
            layout = self.graphs.layout(bucket, plan.num_rows)
        else:
            layout = staging.Layout(plan.num_tokens, plan.num_seqs, plan.num_rows)
        host, array = self.staging.row(layout.total)
        staging.fill(array, items, plan, layout)
        if bucket is not None:
            hidden, row = self.graphs.replay(host, bucket)     # [bucket, H]
            return hidden, layout.views(row)[3]
        row = host.to(self.device, non_blocking=True)
        ids, positions, cu_seqlens, gather = layout.views(row)
        return self.forward(ids, positions, cu_seqlens.to(torch.int32), plan.max_seqlen), gather

    @staticmethod
    def _pool(hidden: torch.Tensor, gather: torch.Tensor, items: list, plan: staging.Plan
              ) -> tuple[torch.Tensor, list[int]]:
        """Pooled rows of every item, stacked: [R, H] (MEAN items contribute their average)."""
        pooled = hidden.index_select(0, gather)  # [G, H]
        if not any(it.pooling.pooling_type == PoolingType.MEAN for it in items):
            return pooled, plan.row_counts
        rows, offset = [], 0
        for item, n in zip(items, plan.row_counts):
            chunk = pooled[offset:offset + n]
            offset += n
            rows.append(chunk.mean(0, keepdim=True) if item.pooling.pooling_type == PoolingType.MEAN else chunk)
        return torch.cat(rows), [r.shape[0] for r in rows]

    def _to_host(self, rows: torch.Tensor, counts: list[int], items: list) -> list[torch.Tensor]:
        """Head on head items' rows, one copy to the host, split per item (float32 CPU views)."""
        heads = [it.pooling.uses_head for it in items]
        parts = []
        if any(heads):
            parts.append(self.score(rows))               # [R, L] float32
        if not all(heads):
            parts.append(rows.float())                   # [R, H]
        flat = parts[0].reshape(-1) if len(parts) == 1 else torch.cat([p.reshape(-1) for p in parts])
        if self.device.type == "cuda":
            buf = self.results.take(flat.numel())
            buf.copy_(flat, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()  # the one host sync per batch
            flat = buf.clone()
        views, start = [], 0
        for part in parts:
            views.append(flat[start:start + part.numel()].view(part.shape))
            start += part.numel()
        logits, hidden = (views[0], views[-1]) if any(heads) else (None, views[0])
        out, offset = [], 0
        for uses_head, n in zip(heads, counts):
            out.append((logits if uses_head else hidden)[offset:offset + n])
            offset += n
        return out

    def score(self, rows: torch.Tensor) -> torch.Tensor:
        """Pooled rows [R, H] → logits [R, L] in float32 (head in ``head_dtype``)."""
        if self.head_dtype is not None:
            rows = rows.to(self.head_dtype)
        return self.model.score(rows).float()

    def warm_up(self, max_tokens: int) -> float:
        """Ready kernels and allocator; compile and capture graphs when asked. Returns seconds."""
        start = time.monotonic()
        with torch.inference_mode():
            attention.cuda_fallback_used(reset=True)
            self._dummy_forward(self.forward, [max(1, min(max_tokens, 256))])
            if self.want_compile and self.stats["compile"] is False:
                self._compile(max_tokens)
            if self.want_graphs and self.graphs is None:
                self._capture(max_tokens)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._warm = True
        self.stats["warm_up_s"] = round(time.monotonic() - start, 2)
        return time.monotonic() - start

    def _dummy_forward(self, forward, lengths: list[int]) -> None:
        items = [_Dummy(n) for n in lengths]
        plan = staging.plan(items)
        layout = staging.Layout(plan.num_tokens, plan.num_seqs, plan.num_rows)
        host, array = self.staging.row(layout.total)
        staging.fill(array, items, plan, layout)
        ids, positions, cu_seqlens, _ = layout.views(host.to(self.device))
        forward(ids, positions, cu_seqlens.to(torch.int32), plan.max_seqlen)

    def _compile(self, max_tokens: int) -> None:
        """Compile, then run the shapes serving will see (many sequences, one long, a few)."""
        start = time.monotonic()
        try:
            compiled = compile_forward(self.model)
            third = max(1, max_tokens // 3)
            for lengths in ([third, third + 1, max(1, max_tokens - 2 * third - 1)],
                            [min(max_tokens, 3001)], [300, 400], [7, 5, 3], [1]):  # T=1 is its own graph
                self._dummy_forward(compiled, lengths)
        except Exception:  # noqa: BLE001 - a compiler failure must not take the server down
            log.exception("torch.compile failed: running the packed backbone eagerly")
            self.stats["compile"] = "failed"
            return
        self.forward = compiled
        self.stats.update(compile=True, compile_s=round(time.monotonic() - start, 1),
                          compiled_graphs=num_compiled_graphs())

    def _capture(self, max_tokens: int) -> None:
        if attention.cuda_fallback_used():
            log.warning("CUDA graphs off: this model's attention needs the SDPA fallback (host syncs)")
            self.stats["cuda_graphs"] = "fallback attention"
            return
        buckets = tuple(b for b in DEFAULT_BUCKETS if b <= max(max_tokens, DEFAULT_BUCKETS[0]))
        graphs = CudaGraphs(self.forward, self.device, buckets)
        try:
            seconds = graphs.capture()
        except Exception:  # noqa: BLE001
            log.exception("CUDA graph capture failed: running without graphs")
            self.stats["cuda_graphs"] = "failed"
            return
        self.graphs = graphs
        self.stats.update(cuda_graphs=True, capture_s=round(seconds, 1), buckets=list(buckets),
                          compiled_graphs=num_compiled_graphs() if self.stats["compile"] is True else 0)
