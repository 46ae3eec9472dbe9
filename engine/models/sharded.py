"""Tensor-parallel shards of a decoder backbone, read slice by slice from safetensors.

Which weights split is the model's own ``base_model_tp_plan`` (transformers' config): "colwise"
projections (q, k, v, gate, up) keep rows ``[r*n/N, (r+1)*n/N)`` of their [out, in] weight (and
bias), so rank r computes heads / MLP columns r*H/N.. of its own; "rowwise" ones (o, down) keep
the matching input columns and all-reduce their partial products (bias added once, after). The
embedding is vocab-parallel (rank r holds token rows r*V/N..; the others' rows are zeros, then
an all-reduce) when N divides the vocabulary, else replicated. Norms, rotary tables and the
score head are replicated; the head is built on rank 0 only (the adapters' job), which pools and
scores the all-reduced hidden states.

q, k, v and gate, up are sharded one by one and fused per rank afterwards
(``fused.fuse_projections`` concatenates the local shards): a fused [q|k|v] matrix cut in N
row blocks would give rank 0 all the q heads and no k or v.

Why not transformers' own ``from_pretrained(tp_plan="auto")`` (5.x, read in its source): it too
reads only this rank's slice (``get_slice``, ``DtensorShardOperation``), but a safetensors slice
is a view of the mapped file (measured: slicing adds no anonymous memory), and transformers keeps
it as is on the CPU (``.to`` with the same dtype copies nothing) with every file open for the
whole load: the pages a rank touches stay in its RSS, and a row-parallel slice (o_proj,
down_proj: strided) touches every page of the full tensor, a third of a Llama-70B checkpoint.
Its parameters are DTensors swapped for local tensors around every Linear call (a Python dict
swap per projection per forward), its all-reduce is the in-place c10d one, and its embedding is
replicated (Llama's plan) or vocab-parallel through DTensor dispatch (Gemma2's). Here each slice
is copied and its file closed before the next (``read_part``), parameters are plain tensors
(the fused projections, the Triton kernel and CUDA graphs see an ordinary model), and the
all-reduce is the functional collective, which torch.compile traces into the graph. The plan
itself is transformers' (``base_model_tp_plan``).

The process group is bound after loading (``bind_group``): loading needs no collective, so a
rank that fails to load is reported before any rank waits in the group's rendezvous.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rewardserve.engine.errors import EngineError

log = logging.getLogger(__name__)

# model_type → the family name in messages; the decoders whose attention and MLP fuse_projections
# restates (their forward reads heads from the projection widths, so local heads just work).
FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral", "gemma2": "Gemma2"}
ADAPTERS = ("seq_cls", "qwen2_rm", "causal_lm")
COLWISE, ROWWISE = "colwise", "rowwise"
REPLICATED_STYLES = ("replicated_with_grad_allreduce",)  # Qwen3's per-head q/k norms: same on every rank


@dataclass(frozen=True)
class Shard:
    """This process's place in a tensor-parallel group: rank ``rank`` of ``world``."""

    rank: int
    world: int

    def rows(self, size: int) -> slice:
        """This rank's part of a dimension of ``size`` (divisible by ``world``)."""
        part = size // self.world
        return slice(self.rank * part, (self.rank + 1) * part)


def check_supported(adapter: str, hf_config: Any, world: int) -> None:
    """Raise a one-line EngineError unless this checkpoint can run with ``world`` ranks."""
    model_type = getattr(hf_config, "model_type", "")
    flag = f"--tensor-parallel-size {world}"
    if adapter == "internlm2":
        raise EngineError(f"{flag}: InternLM2 reward models are not supported with tensor parallelism; "
                          "serve them with --tensor-parallel-size 1")
    if adapter == "encoders":
        raise EngineError(f"{flag}: encoder models (BERT family, sentence-transformers) are not supported with "
                          "tensor parallelism; serve them with --tensor-parallel-size 1")
    if adapter == "padded":
        raise EngineError(f"{flag}: {model_type} runs on the padded fallback, which tensor parallelism does not "
                          "support; serve it with --tensor-parallel-size 1")
    if model_type not in FAMILIES or adapter not in ADAPTERS:
        raise EngineError(f"{flag}: model_type {model_type!r} is not supported with tensor parallelism (supported: "
                          f"{', '.join(FAMILIES.values())}); serve it with --tensor-parallel-size 1")
    from rewardserve.engine.models.seq_cls import text_config  # seq_cls loads this module lazily

    cfg = text_config(hf_config)
    sizes = {"num_attention_heads": cfg.num_attention_heads,
             "num_key_value_heads": getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
             "intermediate_size": cfg.intermediate_size}
    for name, size in sizes.items():
        if size % world:
            raise EngineError(f"{flag}: the model's {name} ({size}) is not divisible by {world}; "
                              "pick a tensor-parallel size that divides it")


@dataclass
class Collectives:
    """This process's all-reduces, so that a rank whose forward fails can issue the ones it still
    owes (``tensor_parallel``: the group's collectives keep pairing up). Every forward all-reduces
    ``per_forward`` tensors [T, ``width``] of ``dtype`` (one per row-parallel and vocab-parallel
    module); ``issued`` counts eager calls (compiled code runs no Python). ``sequence_counts``:
    the process group's own collective sequence number advanced by ``per_forward`` over the last
    forward that succeeded, so it counts a compiled forward's all-reduces too (a CUDA graph's
    replay passes neither: a failure there loses the group)."""

    per_forward: int = 0
    width: int = 0
    dtype: torch.dtype = torch.float32
    issued: int = 0
    sequence_counts: bool = False


COLLECTIVES = Collectives()  # one group per process


def all_reduce(x: torch.Tensor, group: Any) -> torch.Tensor:
    """Sum ``x`` over the group's ranks (functional collective: traceable by torch.compile and
    capturable in a CUDA graph, as the in-place c10d call is not)."""
    from torch.distributed import _functional_collectives as fc

    out = fc.wait_tensor(fc.all_reduce(x, "sum", group))
    if not torch.compiler.is_compiling():  # dropped from compiled graphs: a Python side effect
        COLLECTIVES.issued += 1
    return out


class RowParallelLinear(nn.Linear):
    """A Linear holding input columns [r*in/N, (r+1)*in/N) of the full weight: its product is a
    partial sum, all-reduced; the bias (replicated) is added once, after. x [.., in/N] → [.., out]."""

    group: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = all_reduce(F.linear(x, self.weight), self.group)
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(nn.Module):
    """Token rows [start, start + V/N) of the embedding; other ids give zeros here and their row
    on the rank that holds it, so the all-reduce is the full lookup. ids [..] → [.., H], times
    ``embed_scale`` where the model scales its embedding (Gemma2: sqrt(hidden), in the weight dtype)."""

    def __init__(self, weight: torch.Tensor, start: int, embed_scale: float | None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [V/N, H]
        self.start = start
        self.scaled = embed_scale is not None
        self.register_buffer("embed_scale", torch.tensor(embed_scale or 1.0), persistent=False)  # float32 []
        self.group: Any = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        rows = F.embedding(local.masked_fill(outside, 0), self.weight)           # [.., H]
        if self.scaled:
            rows = rows * self.embed_scale.to(rows.dtype)
        return all_reduce(rows.masked_fill(outside[..., None], 0), self.group)


def bind_group(model: nn.Module, group: Any) -> int:
    """Point every row-parallel and vocab-parallel module of ``model`` at ``group``; returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, (RowParallelLinear, VocabParallelEmbedding)):
            module.group = group
            count += 1
            # RowParallelLinear.weight [H, in/N]; VocabParallelEmbedding.weight [V/N, H]
            width = module.weight.shape[0 if isinstance(module, RowParallelLinear) else 1]
            COLLECTIVES.width, COLLECTIVES.dtype = width, module.weight.dtype
    COLLECTIVES.per_forward = count
    return count


def _style(plan: dict[str, str], module_name: str) -> str | None:
    generic = re.sub(r"\.\d+(?=\.|$)", ".*", module_name)  # layers.3.mlp.up_proj → layers.*.mlp.up_proj
    return plan.get(generic)


def _checkpoint_prefix(names: set[str]) -> str:
    """Where the backbone's tensors live in the checkpoint: ``model.`` (every *For* class of these
    families) or nothing (a bare *Model checkpoint)."""
    return "model." if any(n.startswith("model.") for n in names) else ""


def read_part(file: Path, name: str, dim: int | None, part: slice | None, dtype: torch.dtype) -> torch.Tensor:
    """Tensor ``name`` of one safetensors file, or only ``part`` of dimension ``dim``, copied into
    this process's memory in ``dtype`` (floating tensors). safetensors' slices are views of the
    mapped file: kept, they would keep the mapping, and every page a strided (row-parallel) slice
    touches, resident; copied, the file is unmapped when it closes and only the slice stays."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        view = f.get_slice(name)
        tensor = view[:] if dim is None else view[(slice(None),) * dim + (part,)]
        return tensor.to(dtype if tensor.is_floating_point() else tensor.dtype, copy=True)


def load_backbone(folder: Path, hf_config: Any, dtype: torch.dtype, shard: Shard) -> nn.Module:
    """This rank's shard of the checkpoint's transformers base model (on the CPU, in ``dtype``)."""
    from transformers import AutoModel

    from rewardserve.engine.models.seq_cls import text_config
    from rewardserve.engine.models.weights import rebuild_buffers, shard_files

    config = text_config(hf_config)
    config._attn_implementation = "sdpa"  # switched to varlen by PackedDecoder
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    files = shard_files(folder)
    prefix = _checkpoint_prefix(set(files))
    plan = dict(getattr(config, "base_model_tp_plan", None) or {})
    if not plan:
        raise EngineError(f"{type(config).__name__} has no base_model_tp_plan: tensor parallelism does not know how "
                          "to split it")
    vocab_parallel = config.vocab_size % shard.world == 0
    for module_name, module in list(model.named_modules()):
        embedding = module is model.get_input_embeddings()
        style = None if embedding else _style(plan, module_name)  # Gemma2's plan names its embedding too
        if style not in (None, COLWISE, ROWWISE, *REPLICATED_STYLES):
            raise EngineError(f"{type(model).__name__}: tensor-parallel style {style!r} of {module_name} is not "
                              "supported")
        if embedding and vocab_parallel:
            _vocab_parallel(model, module_name, module, files[prefix + module_name + ".weight"],
                            prefix + module_name + ".weight", shard, dtype)
            continue
        if embedding and getattr(module, "scalar_embed_scale", None) is not None:
            module.embed_scale = torch.tensor(module.scalar_embed_scale)  # a non-persistent buffer (Gemma2)
        if style == ROWWISE:
            module = _swap(model, module_name, module, RowParallelLinear)
        for param_name, param in list(module.named_parameters(recurse=False)):
            full = f"{module_name}.{param_name}" if module_name else param_name
            key = prefix + full
            if key not in files:
                raise EngineError(f"{folder}: the checkpoint has no {key}")
            dim = _shard_dim(style, param_name)
            local = read_part(files[key], key, dim, None if dim is None else shard.rows(param.shape[dim]), dtype)
            setattr(module, param_name, nn.Parameter(local, requires_grad=False))
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Embedding):
            module.num_embeddings = module.weight.shape[0]
    model = rebuild_buffers(model, config)
    log.info("tensor-parallel rank %d/%d: loaded its shard of %s (%s vocab)", shard.rank, shard.world,
             type(model).__name__, "split" if vocab_parallel else "replicated")
    return model.eval()


def _shard_dim(style: str | None, param_name: str) -> int | None:
    """Which dimension of this parameter is split (None: replicated)."""
    if style == COLWISE:
        return 0                                   # weight [out, in] rows, bias [out]
    if style == ROWWISE:
        return 1 if param_name == "weight" else None  # weight [out, in] columns; bias added after the reduce
    return None


def _vocab_parallel(model: nn.Module, name: str, module: nn.Module, file: Path, key: str, shard: Shard,
                    dtype: torch.dtype) -> None:
    """Replace the input embedding by this rank's vocab rows (see ``VocabParallelEmbedding``)."""
    if type(module) is not nn.Embedding and not hasattr(module, "scalar_embed_scale"):
        raise EngineError(f"{type(model).__name__}.{name} is a {type(module).__name__}, which tensor parallelism "
                          "cannot split by vocabulary")
    rows = shard.rows(module.num_embeddings)
    weight = read_part(file, key, 0, rows, dtype)
    scale = getattr(module, "scalar_embed_scale", None)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child,
            VocabParallelEmbedding(weight, rows.start, None if scale is None else float(scale)))


def _swap(root: nn.Module, name: str, module: nn.Module, cls: type) -> nn.Module:
    """Make ``module`` (meta, a plain Linear) a ``cls`` in place: same parameters, the parallel
    forward. A subclass with a forward of its own would lose it, so it is refused."""
    if type(module) is not nn.Linear:
        raise EngineError(f"{type(root).__name__}.{name} is a {type(module).__name__}, which tensor parallelism "
                          f"cannot split as a {cls.__name__}")
    module.__class__ = cls
    return module


def sharded_decoder(spec: Any, head_for: Any) -> Any:
    """A ``PackedDecoder`` over this rank's backbone shard: with ``head_for(spec, backbone)``'s
    (head, traits) on rank 0, and no head on the other ranks (they only run the backbone)."""
    from rewardserve.engine.models.seq_cls import PackedDecoder, decoder_traits

    backbone = load_backbone(spec.folder, spec.hf_config, spec.dtype, spec.shard)
    if not spec.head_rank:
        return PackedDecoder(backbone, None, decoder_traits(spec, num_labels=0, activation="identity"))
    head, traits = head_for(spec, backbone)
    return PackedDecoder(backbone, head, traits)


def read_linear(folder: Path, name: str, dtype: torch.dtype) -> nn.Linear | None:
    """``{name}.weight`` [L, H] (+ ``{name}.bias`` [L]) of the checkpoint as a Linear(H, L) in
    ``dtype``; None when the checkpoint has no such weight."""
    from rewardserve.engine.models.weights import read_tensor

    weight = read_tensor(folder, f"{name}.weight")
    if weight is None:
        return None
    bias = read_tensor(folder, f"{name}.bias")
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta", dtype=dtype)
    head.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if bias is not None:
        head.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return head
