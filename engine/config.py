"""The engine's frozen configuration tree. The CLI is generated from these dataclasses
(``engine/cli_args.py``), so a default lives in exactly one place.

Every field carries ``metadata["help"]``: that text is the documentation and the ``--help``.
"""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

DTYPES = ("auto", "bfloat16", "float16", "float32")
ATTENTION_BACKENDS = ("auto", "flash_attn", "triton", "torch", "sdpa")
CONVERTS = ("auto", "none", "classify", "embed")
HEAD_DTYPES = ("model", "float32")


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, *, advanced: bool = False) -> Any:
    """A config field with its documentation (and allowed values): the CLI is built from these.

    ``advanced`` marks a tuning knob whose default is right for nearly everyone (a CLI may keep
    it out of the short help)."""
    return field(default=default, metadata={"help": help, "choices": choices, "advanced": advanced})


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint to load and how to read it."""

    model: str = option("", "Local folder in the Hugging Face layout, or a hub id (downloaded when a hub is reachable). "
                            "Empty (the default): the built-in demo model (random weights, meaningless scores).")
    served_model_name: str | None = option(None, "The model's name in replies and GetModelInfo; defaults to the hub "
                                                 "id, or the name of the --model folder (never a host path).")
    revision: str | None = option(None, "Hub revision (branch, tag or commit) when --model is a hub id.")
    tokenizer: str | None = option(None, "Tokenizer folder or hub id; defaults to --model.")
    dtype: str = option("auto", "Weights and activations dtype; auto takes the checkpoint's (float32 on CPU).", DTYPES)
    convert: str = option("auto", "Turn a *ForCausalLM into a classifier (classify) or an embedder (embed).", CONVERTS)
    max_model_len: int | None = option(None, "Longest sequence accepted; defaults to the model's max_position_embeddings.")
    pooler_config: str | None = option(None, 'Server pooling defaults as JSON, e.g. {"pooling_type": "LAST", "use_activation": false}.')
    head_dtype: str = option("float32", "Dtype of the score head: float32 keeps rewards exact under bf16 backbones.", HEAD_DTYPES)
    chat_template: str | None = option(None, "Chat template override: a file path or the template text "
                                             "(default: the tokenizer's own).")
    allow_request_chat_template: bool = option(
        False, "Let requests send their own chat_template (it is code: rendered in a worker process under "
               "--request-template-timeout-ms and --request-template-max-chars); off: such requests get "
               "INVALID_ARGUMENT naming chat_template.")
    request_template_timeout_ms: int = option(
        1000, "Time budget of one request chat template's rendering; past it the worker is stopped and the "
              "request refused.", advanced=True)
    request_template_max_chars: int = option(
        1_000_000, "Output budget of one request chat template's rendering, in characters.", advanced=True)
    request_template_memory_mb: int = option(
        512, "Memory a request template worker may allocate beyond its own code (MiB).", advanced=True)
    request_template_workers: int = option(
        2, "Worker processes that render request chat templates (started on the first such request).",
        advanced=True)
    request_template_cache_size: int = option(
        64, "Request chat templates whose turn markers are kept (least recently used dropped).", advanced=True)
    policy_tokenizer: tuple[str, ...] = option(
        (), "NAME=DIR (or NAME=HUB_ID) of a policy tokenizer whose token ids and rendered conversations "
            "ChatReward re-templates for this reward model; repeat for several policies.")

    def served_name(self) -> str:
        """--served-model-name, else the hub id, else the model folder's own name."""
        if self.served_model_name:
            return self.served_model_name
        path = Path(self.model).expanduser()
        return path.resolve().name if path.is_dir() else self.model

    def pooler_overrides(self) -> dict[str, Any]:
        """The parsed ``--pooler-config`` JSON (empty when unset)."""
        if not self.pooler_config:
            return {}
        try:
            value = json.loads(self.pooler_config)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--pooler-config is not JSON: {exc.msg} at character {exc.pos}") from None
        if not isinstance(value, dict):
            raise ValueError("--pooler-config must be a JSON object")
        return value


@dataclass(frozen=True)
class RunnerConfig:
    """Where and how the forward pass runs."""

    device: str = option("auto", "cuda, cuda:N, cpu, or auto (cuda when available).")
    attention_backend: str = option("auto", "Variable-length attention kernel; auto picks the best available.", ATTENTION_BACKENDS)
    compile: bool | None = option(None, "torch.compile the packed backbone (dynamic shapes, cached on disk; "
                                  "the first start of a model takes a minute or more). Default: on for CUDA, off on CPU.")
    cuda_graphs: bool | None = option(None, "Replay CUDA graphs for small token buckets (the single-request "
                                      "latency path). Default: on for CUDA, off on CPU.")
    cuda_graph_max_tokens: int = option(
        2048, "CUDA graphs: the largest token bucket; buckets are the powers of two from 16 up to it "
              "(and up to --max-num-batched-tokens).", advanced=True)
    cuda_graph_max_seqs: int = option(
        64, "CUDA graphs: the largest sequence bucket; buckets are 1 and the powers of 4 up to it.", advanced=True)
    compile_warmup_batches: str = option(
        "budget 3001 300,400 7,5,3 1,1",
        "torch.compile: the warm-up batches run before serving, space-separated; each is comma-separated "
        "sequence lengths (capped at the token budget), or 'budget': the whole token budget in three "
        "sequences. Shapes serving will see, so the first requests do not wait for a recompile.", advanced=True)

    def warmup_batches(self, max_tokens: int) -> list[list[int]]:
        """``compile_warmup_batches`` read for a ``max_tokens`` budget: [[sequence lengths], ...].
        Raises ValueError naming the option and the bad batch."""
        batches = []
        for word in self.compile_warmup_batches.split():
            if word == "budget":
                third = max(1, max_tokens // 3)
                batches.append([third, third + 1, max(1, max_tokens - 2 * third - 1)])
                continue
            try:
                lengths = [int(x) for x in word.split(",")]
            except ValueError:
                lengths = []
            if not lengths or min(lengths) < 1:
                raise ValueError(f"--compile-warmup-batches: {word!r} is not 'budget' or comma-separated "
                                 "positive sequence lengths")
            batches.append([min(n, max_tokens) for n in lengths])
        return batches

    def for_device(self, device_type: str) -> "RunnerConfig":
        """This config with ``compile`` and ``cuda_graphs`` decided for ``device_type`` ("cuda",
        "cpu"): unset (None) means on for CUDA, where they make serving several times faster,
        and off elsewhere, where neither applies."""
        on_cuda = device_type == "cuda"
        return replace(self, compile=on_cuda if self.compile is None else self.compile,
                       cuda_graphs=on_cuda if self.cuda_graphs is None else self.cuda_graphs)


@dataclass(frozen=True)
class SchedulerConfig:
    """How queued work is cut into packed batches."""

    max_num_batched_tokens: int = option(16384, "Token budget of one packed forward pass.")
    max_num_seqs: int = option(256, "Most sequences in one packed forward pass.")
    max_wait_ms: float = option(0.0, "Wait up to this long for a fuller batch when the GPU is idle (0: run at once).")
    max_queue_requests: int = option(4096, "Most requests waiting; past it new work is refused (RESOURCE_EXHAUSTED).")
    max_queue_tokens: int = option(8_000_000, "Most tokens waiting; past it new work is refused (RESOURCE_EXHAUSTED).")
    max_items_per_request: int = option(16384, "Most inputs (texts, token lists, conversations) in one request; "
                                               "more are refused before any of them is read.")
    max_input_chars: int = option(0, "Most characters of one text input (of a conversation: its contents); longer "
                                     "texts are cut first when truncation is asked for, else refused, before "
                                     "tokenization. 0: what can fit, max_model_len x the longest token's characters.")
    max_result_mb: int = option(0, "Largest result of one request, in MiB (token_embed results are big): a request "
                                   "whose result would be larger is refused before compute. 0: the server's "
                                   "--max-send-message-mb (no limit in the offline engine).")
    tokenizer_workers: int = option(2, "Threads that tokenize and render chat templates off the event loop.")
    max_skips: int = option(64, "Queued items a batch cut looks past when the next one does not fit the token "
                                "budget (it then leads the next batch).", advanced=True)
    initial_throughput_tok_s: float = option(50_000.0, "Throughput assumed for retry delays until batches have "
                                                       "been measured.", advanced=True)
    inline_prepare_max_tokens: int = option(8192, "Token-id requests up to this many tokens are checked on the "
                                                  "event loop instead of the tokenizer threads.", advanced=True)


@dataclass(frozen=True)
class ParallelConfig:
    """How many devices serve the model."""

    data_parallel_size: int = option(
        1, "Model replicas behind this one endpoint, each on its own device (cuda:0..N-1 under --device auto "
           "or cuda; replicas on cuda:K start at K), or with --tensor-parallel-size T on its own T devices "
           "(replica r on cuda:K+r*T..K+(r+1)*T-1); each packed batch goes to the least-loaded replica.")
    tensor_parallel_size: int = option(
        1, "Split the model's attention heads and MLP columns over this many devices (cuda:K..K+N-1, or N "
           "processes on the CPU), one rank process each, driven by this process; for models too big for one "
           "GPU. Llama, Qwen2, Qwen3, Mistral and Gemma2 backbones (with their reward heads).")
    tensor_parallel_timeout_s: float = option(
        600.0, "Tensor parallel: how long a rank waits for the others inside one collective before it fails "
               "(a hung or lost rank then stops the engine instead of hanging it).", advanced=True)

    def __post_init__(self) -> None:
        if self.data_parallel_size < 1:
            raise ValueError(f"--data-parallel-size must be at least 1, not {self.data_parallel_size}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"--tensor-parallel-size must be at least 1, not {self.tensor_parallel_size}")
        if self.tensor_parallel_timeout_s <= 0:
            raise ValueError(f"--tensor-parallel-timeout-s must be positive, not {self.tensor_parallel_timeout_s}")


@dataclass(frozen=True)
class PrefixConfig:
    """Shared prompt prefixes (a GRPO group's prompt, best-of-n): computed once per packed batch,
    and kept across batches in the prefix cache (``engine/prefix_cache.py``)."""

    # Off by default until its GPU parity holds: on the H200 (2026-12-02) the compiled Qwen3 and
    # Llama reuse cases were 1.0-1.3x over the packed-vs-alone bf16 budget, and the GPU parity run
    # of main with reuse on failed its Gemma2 case (cause not yet isolated). Off is the path measured
    # before reuse existed (the old staging row and forward arguments).
    prefix_reuse: bool = option(
        False, "Sequences of one packed batch that start with the same tokens (a group's prompt, after templating) "
               "compute that prefix once, and prompt blocks are kept across batches (--prefix-cache-gb); the rest "
               "of each sequence attends to their keys. Scores equal the --no-prefix-reuse path within float "
               "rounding; --no-prefix-reuse (the default for now: its GPU parity is still being proven) is the "
               "bit-exact mode whose scores never depend on what else is in the batch or the cache. Off by itself "
               "(logged) for bidirectional encoders, length-dependent RoPE, the padded fallback, tensor parallel "
               "and attention kernels without a prefix path.")
    prefix_min_tokens: int = option(
        32, "Shortest shared prefix worth a segment of its own, in tokens.", advanced=True)
    prefix_block_tokens: int = option(
        16, "Shared prefixes are cut to a multiple of this many tokens (the granularity prefixes are matched at, "
            "and the prefix cache's block).", advanced=True)
    prefix_cache_gb: float | None = option(
        None, "GPU memory (GiB) for keys and values of prompt prefixes kept across batches (least recently used "
              "blocks evicted; a request never fails for want of room), so StreamReward items and later calls "
              "with the same prompt reuse it. Default: a tenth of the memory free after the model loads on CUDA "
              "(logged), none on the CPU; 0: off. Needs prefix reuse.")

    def __post_init__(self) -> None:
        if self.prefix_min_tokens < 1 or self.prefix_block_tokens < 1:
            raise ValueError("--prefix-min-tokens and --prefix-block-tokens must be at least 1")
        if self.prefix_cache_gb is not None and self.prefix_cache_gb < 0:
            raise ValueError("--prefix-cache-gb must be 0 (off) or more")


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs; built from the CLI or from a dict."""

    model: ModelConfig = field(default_factory=ModelConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)

    def with_result_limit(self, default_mb: int) -> "EngineConfig":
        """This config with --max-result-mb set to ``default_mb`` when it was left at 0 (a server
        passes its --max-send-message-mb); itself otherwise."""
        if self.scheduler.max_result_mb > 0:
            return self
        scheduler = replace(self.scheduler, max_result_mb=default_mb)
        return replace(self, scheduler=scheduler)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build a (nested) config dataclass from a dict; unknown keys and bad choices are errors."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
    kwargs = {}
    for name, value in values.items():
        spec = known[name]
        if isinstance(spec.default_factory, type) and is_dataclass(spec.default_factory):
            value = from_dict(spec.default_factory, value)
        check_choice(cls.__name__, spec, value)
        kwargs[name] = value
    return cls(**kwargs)


def check_choice(owner: str, spec: Any, value: Any) -> None:
    """Raise ValueError when ``value`` is not one of the field's declared choices."""
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"{owner}.{spec.name} must be one of {', '.join(choices)}, not {value!r}")
