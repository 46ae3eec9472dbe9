"""Seeded workloads: lengths lognormal around 600 tokens, and GRPO-like groups sharing a prompt."""
from __future__ import annotations

import numpy as np

MEDIAN, SIGMA = 600, 0.75  # lognormal: median 600; after clipping the mean is ≈ 790 (1e6 draws)
MIN_LEN, MAX_LEN = 32, 4096


def lognormal_lengths(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(np.log(MEDIAN), SIGMA, n)
    return np.clip(np.rint(lengths), MIN_LEN, MAX_LEN).astype(int).tolist()


def random_ids(rng: np.random.Generator, n: int, id_limit: int) -> list[int]:
    return rng.integers(1, id_limit, n).tolist()


def lognormal(n: int, id_limit: int, seed: int = 0) -> list[list[int]]:
    """n sequences of random token ids (never 0, all below id_limit), lengths lognormal."""
    rng = np.random.default_rng(seed + 1)
    return [random_ids(rng, k, id_limit) for k in lognormal_lengths(n, seed)]


def grpo(groups: int, id_limit: int, seed: int = 0, group_size: int = 16) -> list[list[int]]:
    """``groups`` prompts (lognormal, median 250) each followed by ``group_size`` responses
    (lognormal, median 450): one sequence = prompt + response, clipped to MAX_LEN. Arrival order
    keeps a group together, as a GRPO trainer sends it."""
    rng = np.random.default_rng(seed + 2)
    seqs = []
    for _ in range(groups):
        prompt = random_ids(rng, int(np.clip(rng.lognormal(np.log(250), 0.6), 16, 2048)), id_limit)
        for _ in range(group_size):
            n = int(np.clip(rng.lognormal(np.log(450), 0.7), 8, MAX_LEN - len(prompt)))
            seqs.append(prompt + random_ids(rng, n, id_limit))
    return seqs


def describe(seqs: list[list[int]]) -> dict:
    lengths = np.array([len(s) for s in seqs])
    return {"num_seqs": int(lengths.size), "tokens": int(lengths.sum()), "mean_len": round(float(lengths.mean()), 1),
            "p50_len": int(np.median(lengths)), "max_len": int(lengths.max())}


def grpo_long(groups: int, id_limit: int, seed: int = 0, group_size: int = 16, prompt_len: int = 1024,
              response_median: int = 256) -> list[list[int]]:
    """Issue 18's long-prompt GRPO workload: ``groups`` prompts of exactly ``prompt_len`` tokens
    (a math problem with few-shot context), each followed by ``group_size`` responses
    (lognormal around ``response_median``, sigma 0.5, 8..2048 tokens). A group stays together."""
    rng = np.random.default_rng(seed + 3)
    seqs = []
    for _ in range(groups):
        prompt = random_ids(rng, prompt_len, id_limit)
        for _ in range(group_size):
            n = int(np.clip(rng.lognormal(np.log(response_median), 0.5), 8, 2048))
            seqs.append(prompt + random_ids(rng, n, id_limit))
    return seqs
