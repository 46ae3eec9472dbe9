"""Load: resolve the checkpoint folder, config, tokenizer, dtype and device; build the model."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from rewardserve.engine import attention
from rewardserve.engine.config import EngineConfig
from rewardserve.engine.errors import EngineError
from rewardserve.engine.models.base import PoolingModel
from rewardserve.engine.models.fused import fuse_projections
from rewardserve.engine.models.registry import LoadSpec, load_model
from rewardserve.engine.models.rotary import per_sequence_rotary, tabulate_rotary
from rewardserve.engine.models.sharded import Shard
from rewardserve.engine.models.weights import read_hf_config
from rewardserve.engine.tokenizer import Tokenizer
from rewardserve.engine.types import ModelInfo

log = logging.getLogger(__name__)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "1_Pooling/*", "2_Normalize/*"]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class Loaded:
    """What loading produced."""

    folder: Path
    model: PoolingModel
    tokenizer: Tokenizer | None
    device: torch.device
    dtype: torch.dtype
    backend: str
    max_model_len: int


def resolve_folder(name: str, revision: str | None) -> Path:
    """A local folder as is; otherwise download the hub repo's weights and tokenizer files.

    Failures are one-line EngineErrors that name the cause and the fix (the CLI prints them)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise EngineError(f"--model {name}: is a file; pass the checkpoint's folder (config.json, "
                          "*.safetensors and tokenizer files, as on the hub)")
    if path.is_absolute() or name.startswith(".") or name.count("/") > 1:
        raise EngineError(f"--model {name}: no such folder; pass an existing checkpoint folder or a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as exc:
        raise EngineError(hub_failure(name, revision, exc)) from exc


def hub_failure(name: str, revision: str | None, exc: BaseException) -> str:
    """Why a hub download failed and what to do, in one line."""
    from huggingface_hub import errors as hub

    head = f"--model {name}: not a local folder"
    if isinstance(exc, hub.HFValidationError):
        return f"{head} and not a valid hub id; pass an existing folder or a hub id such as Qwen/Qwen3-0.6B"
    if isinstance(exc, hub.GatedRepoError):
        return f"{head}, and its hub repo is gated; accept its terms on the hub, then log in (hf auth login, or HF_TOKEN)"
    if isinstance(exc, hub.RepositoryNotFoundError):
        return f"{head}, and the hub has no such repo (or it is private); check the id, or log in (hf auth login, or HF_TOKEN)"
    if isinstance(exc, hub.RevisionNotFoundError):
        return f"{head}, and its hub repo has no revision {revision!r}; check --revision"
    if isinstance(exc, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)):
        cause = one_line(exc.__cause__ or exc)
        return (f"{head}, the hub is not reachable ({cause}) and the repo is not in the local cache; download it "
                "where the hub is reachable and pass its folder, or point HF_ENDPOINT at a reachable mirror")
    return f"{head}, and downloading it from the hub failed ({one_line(exc)}); pass a local checkpoint folder"


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (library errors often span several lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _readable(folder: Path, read, errors: tuple[type[BaseException], ...] = (OSError, SafetensorError)):
    """``read(folder)``, with an unreadable or corrupt checkpoint as a one-line EngineError."""
    try:
        return read(folder)
    except EngineError:
        raise
    except errors as exc:  # permissions, a truncated download, bad JSON (config.json)
        raise EngineError(f"{folder}: cannot read the checkpoint ({one_line(exc)}); check that its files are "
                          "complete and readable (a partial download: fetch it again)") from exc


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; a bad or missing device is
    a one-line EngineError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EngineError(f"--device {name!r}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise EngineError(f"--device {name}: this machine has {count} visible CUDA device(s); "
                              "use --device cpu, or check CUDA_VISIBLE_DEVICES and the driver")
    elif device.type != "cpu":
        raise EngineError(f"--device {name!r}: not supported; use auto, cpu, cuda or cuda:N")
    return device


def rank_device(device: torch.device, shard: Shard | None) -> torch.device:
    """Tensor-parallel rank r's device: ``device`` + r on CUDA (cuda:K..K+N-1), the CPU on the CPU."""
    if shard is None or device.type != "cuda":
        return device
    first = device.index or 0
    count = torch.cuda.device_count()
    if first + shard.world > count:
        raise EngineError(f"--tensor-parallel-size {shard.world} from cuda:{first} needs GPUs up to "
                          f"cuda:{first + shard.world - 1}; this machine has {count}")
    return torch.device("cuda", first + shard.rank)


def check_tensor_parallel(config: EngineConfig) -> None:
    """Refuse, before any rank process starts, a model or option that tensor parallelism cannot
    serve (one-line EngineError): the adapter, the head counts, the devices."""
    world = config.parallel.tensor_parallel_size
    if world == 1:
        return
    if not config.model.model:
        raise EngineError("no model given: pass --model DIR|HUB_ID")
    from rewardserve.engine.models.registry import adapter_name
    from rewardserve.engine.models.sharded import check_supported

    folder = resolve_folder(config.model.model, config.model.revision)
    hf_config = _readable(folder, read_hf_config, (OSError, ValueError))
    spec = LoadSpec(folder, hf_config, config.model, torch.float32, None)
    check_supported(adapter_name(spec), hf_config, world)
    rank_device(resolve_device(config.runner.device), Shard(world - 1, world))


def resolve_dtype(name: str, hf_config, device: torch.device) -> torch.dtype:
    """auto: the checkpoint's dtype on CUDA; float32 on the CPU (bf16 matmuls are slow there)."""
    if name != "auto":
        return DTYPES[name]
    if device.type != "cuda":
        return torch.float32
    saved = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    saved = str(saved).replace("torch.", "") if saved is not None else "bfloat16"
    return DTYPES.get(saved, torch.bfloat16) if saved != "float32" else torch.bfloat16


def load_tokenizer(config: EngineConfig, folder: Path) -> Tokenizer | None:
    source = config.model.tokenizer or folder
    try:
        return Tokenizer.load(source, chat_template=config.model.chat_template)
    except (OSError, ValueError) as exc:
        log.warning("no usable tokenizer at %s (%s): only token_ids inputs will work", source, exc)
        return None


def speed_up_packed(model: PoolingModel, max_len: int, dtype: torch.dtype) -> None:
    """Rotary tables and fused projections (same results, fewer and cheaper kernels) for a model
    on the packed path, which passes real positions only (0..max_len-1); length-dependent RoPE
    computed per packed sequence (as each sequence alone)."""
    if model.traits.supports_packing:
        tabulate_rotary(model, max_len, dtype)
        per_sequence_rotary(model)  # length-dependent RoPE: per packed sequence, not per batch
        fuse_projections(model)


def load(config: EngineConfig, shard: Shard | None = None) -> Loaded:
    """Everything the engine needs, on its device; under tensor parallelism (``shard``) this
    rank's part of the model, on this rank's device."""
    if not config.model.model:
        raise EngineError("no model given: pass --model DIR|HUB_ID")
    start = time.monotonic()
    log.info("loading %s", config.model.model)
    folder = resolve_folder(config.model.model, config.model.revision)
    hf_config = _readable(folder, read_hf_config, (OSError, ValueError))
    device = rank_device(resolve_device(config.runner.device), shard)
    dtype = resolve_dtype(config.model.dtype, hf_config, device)
    backend = attention.resolve_backend(config.runner.attention_backend, device)
    tokenizer = load_tokenizer(config, folder)
    spec = LoadSpec(folder, hf_config, config.model, dtype, tokenizer.hf if tokenizer else None,
                    config.model.pooler_overrides(), shard)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a server log is no terminal: no weight-loading bars
    model = _readable(folder, lambda _: load_model(spec))
    max_len = config.model.max_model_len or model.traits.max_position_embeddings
    speed_up_packed(model, max_len, dtype)
    log.info("loaded %s (%s) on %s in %s, attention backend %s, in %.1fs", folder, model.traits.architecture,
             device, dtype, backend, time.monotonic() - start)
    return Loaded(folder, model, tokenizer, device, dtype, backend, max_len)


def model_info(name: str, loaded: Loaded) -> ModelInfo:
    """The served model's description (GetModelInfo)."""
    traits, tok = loaded.model.traits, loaded.tokenizer
    template = tok.chat_template if tok else None
    return ModelInfo(
        model=name, architecture=traits.architecture, tasks=traits.tasks(), num_labels=traits.num_labels,
        labels=traits.labels, hidden_size=traits.hidden_size, vocab_size=traits.vocab_size,
        max_model_len=loaded.max_model_len, dtype=str(loaded.dtype).replace("torch.", ""),
        is_causal=traits.is_causal, has_chat_template=bool(template),
        default_pooling=dict(traits.default_pooling),
        chat_template_sha256=hashlib.sha256(template.encode()).hexdigest() if template else "",
        tokenizer_sha256=tok.sha256() if tok else "")
