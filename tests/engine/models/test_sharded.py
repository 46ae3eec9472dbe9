"""Tensor-parallel shards (engine/models/sharded.py) on the CPU: two gloo ranks equal one rank.

Every family the engine serves with tensor parallelism is saved as a tiny hub-layout checkpoint
(seq-cls of Llama, Qwen2, Qwen3, Mistral and Gemma2; the Qwen2 reward and process-reward heads;
a causal LM as a math-shepherd PRM and as an embedder). Two rank processes (spawned once for all
of them) load their shards through the registry, run one packed batch of mixed lengths, and
rank 0 saves what it computed. Each case is then checked against the same checkpoint loaded
whole (TP=1) in this process, within 1e-5 in float32: every hidden row (embed / token_embed),
the head at each sequence's last token (classify), at every token (token_classify) and at the
step tags (step scores).

The peak-RSS case loads a larger checkpoint (about 150 MB) on two ranks and checks that each
rank's resident memory grows by at most half of it + 10% while it loads its shard.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import transformers as tf

from rewardserve.engine.config import EngineConfig, ModelConfig, ParallelConfig
from rewardserve.engine.errors import EngineError
from rewardserve.engine.loader import check_tensor_parallel
from tiny_decoders import (SIZES, STEP_TAG_ID, copy_tokenizer, last_rows, load, random_inputs, save_tensors,
                           step_rows, write_config)

PLUS, MINUS = 14, 16  # demo tokenizer ids of "+", "-"
TOLERANCE = 1e-5


def _seq_cls(name):
    import test_decoders

    return lambda folder: test_decoders.BUILDERS[name]().save_pretrained(str(folder))


def _reward(arch: str, num_labels: int):
    import test_reward_heads

    return lambda folder: test_reward_heads._qwen2_rm_checkpoint(folder, arch, num_labels)


def _causal(folder):
    tf.MistralForCausalLM(tf.MistralConfig(**SIZES, sliding_window=16)).save_pretrained(str(folder))


# case → (checkpoint writer, convert, pooler overrides)
CASES = {
    **{name: (_seq_cls(name), "auto", {}) for name in ("llama", "qwen2", "qwen3", "mistral", "gemma2")},
    "qwen2_rm": (_reward("Qwen2ForRewardModel", 1), "auto", {}),
    "qwen2_prm": (_reward("Qwen2ForProcessRewardModel", 2), "auto", {}),
    "math_shepherd": (_causal, "classify", {"returned_token_ids": [PLUS, MINUS], "step_tag_id": STEP_TAG_ID}),
    "causal_embed": (_causal, "embed", {}),
}


def _inputs() -> list[list[int]]:
    return random_inputs(seed=5, step_every=13)


@torch.no_grad()
def _rank(rank: int, world: int, store: str, cases: list[tuple[str, str, str, dict]], out: str) -> None:
    """One tensor-parallel rank: load each case's shard, run the packed batch; rank 0 saves it."""
    import torch.distributed as dist

    from rewardserve.engine.models.sharded import Shard, bind_group

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    results = {}
    for name, folder, convert, overrides in cases:
        model = _load_shard(Path(folder), convert, overrides, Shard(rank, world))
        bind_group(model, dist.group.WORLD)
        seqs = _inputs()
        from tiny_decoders import packed_hidden

        hidden = packed_hidden(model, seqs)                           # [T, H], the same on every rank
        if rank == 0:
            scores = model.score(hidden) if model.traits.num_labels else None  # [T, L]
            results[name] = {"hidden": hidden, "scores": scores}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def _load_shard(folder: Path, convert: str, overrides: dict, shard):
    from transformers import AutoTokenizer

    from rewardserve.engine.loader import speed_up_packed
    from rewardserve.engine.models.registry import LoadSpec, load_model
    from rewardserve.engine.models.weights import read_hf_config

    spec = LoadSpec(folder=folder, hf_config=read_hf_config(folder),
                    model_config=ModelConfig(model=str(folder), convert=convert), dtype=torch.float32,
                    tokenizer=AutoTokenizer.from_pretrained(str(folder)), pooler_overrides=overrides, shard=shard)
    model = load_model(spec)
    speed_up_packed(model, model.traits.max_position_embeddings, torch.float32)
    return model


def _spawn(target, args: tuple, world: int = 2) -> None:
    mp.start_processes(target, args=args, nprocs=world, join=True, start_method="spawn")


@pytest.fixture(scope="module")
def tensor_parallel_results(tmp_path_factory, tokenizer_src):
    """{case: (folder, rank 0's hidden [T, H] and scores [T, L])} from one two-rank run."""
    root = tmp_path_factory.mktemp("tp")
    cases = []
    for name, (write, convert, overrides) in CASES.items():
        torch.manual_seed(0)
        folder = root / name
        copy_tokenizer(tokenizer_src, folder)
        write(folder)
        cases.append((name, str(folder), convert, overrides))
    out = root / "results.pt"
    _spawn(_rank, (2, str(root / "store"), cases, str(out)))
    saved = torch.load(out)
    return {name: (Path(folder), saved[name]) for name, folder, _, _ in cases}


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one(name, tensor_parallel_results):
    folder, got = tensor_parallel_results[name]
    _, convert, overrides = CASES[name]
    whole = load(folder, convert=convert, overrides=overrides)
    seqs = _inputs()
    from tiny_decoders import packed_hidden

    with torch.no_grad():
        hidden = packed_hidden(whole, seqs)                                        # [T, H]
        assert (got["hidden"] - hidden).abs().max().item() <= TOLERANCE           # embed, token_embed
        if not whole.traits.num_labels:
            assert got["scores"] is None
            return
        scores = whole.score(hidden)                                               # [T, L]
    for rows in (last_rows(seqs), torch.arange(len(hidden)), step_rows(seqs, STEP_TAG_ID)):
        # classify (LAST), token_classify (ALL), step scores (STEP)
        assert (got["scores"][rows] - scores[rows]).abs().max().item() <= TOLERANCE


def _config(folder: Path, world: int) -> EngineConfig:
    return EngineConfig(model=ModelConfig(model=str(folder)), parallel=ParallelConfig(tensor_parallel_size=world))


def _write_config(folder: Path, model_type: str, arch: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_config(folder, {"model_type": model_type, "architectures": [arch], **extra})
    return folder


@pytest.mark.parametrize("model_type, arch, match", [
    ("internlm2", "InternLM2ForRewardModel", "InternLM2 reward models are not supported"),
    ("bert", "BertForSequenceClassification", "encoder models"),
    ("jamba", "JambaForSequenceClassification", "padded fallback"),
    ("phi3", "Phi3ForSequenceClassification", "model_type 'phi3' is not supported"),
])
def test_unsupported_models_are_refused_in_one_line(tmp_path, model_type, arch, match):
    folder = _write_config(tmp_path / model_type, model_type, arch)
    with pytest.raises(EngineError, match=match) as info:
        check_tensor_parallel(_config(folder, 2))
    assert "\n" not in str(info.value) and "--tensor-parallel-size 2" in str(info.value)


def test_head_counts_must_divide(tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    tf.LlamaConfig(**SIZES, num_labels=1, architectures=["LlamaForSequenceClassification"]).save_pretrained(folder)
    check_tensor_parallel(_config(folder, 2))  # 4 heads, 2 kv heads, 64 MLP columns: fine
    with pytest.raises(EngineError, match=r"num_attention_heads \(4\) is not divisible by 3"):
        check_tensor_parallel(_config(folder, 3))
    with pytest.raises(EngineError, match=r"num_key_value_heads \(2\) is not divisible by 4"):
        check_tensor_parallel(_config(folder, 4))


# Peak RSS while loading a shard: a checkpoint big enough that what a rank holds besides weights
# (module objects, rotary tables, the tokenizer, one fused projection in flight: about 14 MiB
# here) is small beside it (float32: 16 layers of hidden 512 / MLP 4096, vocab 4096: 450 MB).
RSS_SIZES = dict(vocab_size=4096, hidden_size=512, intermediate_size=4096, num_hidden_layers=16,
                 num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256, num_labels=1)


def _rss_rank(rank: int, world: int, folder: str, out: str) -> None:
    """Load this rank's shard and report how much its resident set grew at the peak (VmHWM,
    reset just before the load) in bytes."""
    from transformers import AutoModel

    from rewardserve.engine.models.sharded import Shard
    from rewardserve.engine.models.weights import read_hf_config

    with torch.device("meta"):
        AutoModel.from_config(read_hf_config(folder))  # imports its modeling code before the measure
    Path("/proc/self/clear_refs").write_text("5")      # VmHWM := VmRSS
    before = _status("VmRSS")
    model = _load_shard(Path(folder), "auto", {}, Shard(rank, world))
    peak = _status("VmHWM")
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    Path(out, f"rank{rank}.json").write_text(json.dumps({"growth": peak - before, "params": held}))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def test_each_rank_reads_only_its_part(tmp_path, tokenizer_src, monkeypatch):
    # glibc keeps freed blocks under its (growing, up to 32 MiB) mmap threshold in the heap: a
    # real checkpoint's tensors are all above it, this one's are not. A fixed 64 KiB threshold
    # makes the ranks' RSS count what they hold, as it does for real sizes.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    folder = tmp_path / "big"
    copy_tokenizer(tokenizer_src, folder)
    torch.manual_seed(0)
    tf.LlamaForSequenceClassification(tf.LlamaConfig(**RSS_SIZES)).save_pretrained(str(folder))
    checkpoint = (folder / "model.safetensors").stat().st_size
    _spawn(_rss_rank, (2, str(folder), str(tmp_path)))
    for rank in range(2):
        found = json.loads((tmp_path / f"rank{rank}.json").read_text())
        print(f"rank {rank}: peak RSS growth {found['growth'] / 2**20:.1f} MiB, shard {found['params'] / 2**20:.1f} "
              f"MiB, checkpoint {checkpoint / 2**20:.1f} MiB")
        assert found["params"] <= checkpoint / 2 * 1.01
        assert found["growth"] <= checkpoint / 2 * 1.10
