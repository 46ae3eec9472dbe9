"""Score's typed values: what a caller passes (``ScoreParams``) and gets back (``ScoreOutput``).

Torch-free, so ``rewardserve.engine.api`` (and through it the service) can name them; the work
itself is engine/score.py's.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class ScoreMethod(str, enum.Enum):
    """How a Score request is computed (it follows the served model)."""

    CROSS_ENCODER = "cross_encoder"
    DECODER_RERANKER = "decoder_reranker"
    EMBEDDING_COSINE = "embedding_cosine"


@dataclass(frozen=True)
class ScoreParams:
    """Per-request options of ``score``.

    ``top_n``: 0 keeps every result in input order; N > 0 keeps the best N, best first.
    ``truncate_prompt_tokens``: as for encode (-1: the model's maximum); for pairs only the
    document is cut (its end). ``truncation_side``: embedding models only, where each text is
    truncated alone as encode does. ``instruction``: a reranker prompt's instruction (None: its
    default).
    """

    top_n: int = 0
    truncate_prompt_tokens: int | None = None
    truncation_side: str | None = None
    instruction: str | None = None


@dataclass
class ScoreResult:
    """One document's score. ``logit`` is the head's raw output (None for embedding models)."""

    index: int
    score: float
    logit: float | None
    num_tokens: int
    truncated: bool
    queue_time_s: float = 0.0
    compute_time_s: float = 0.0


@dataclass
class ScoreOutput:
    """A whole Score reply: the method used and the results (input order, or best first)."""

    method: ScoreMethod
    results: list[ScoreResult]
    prompt_tokens: int     # every token fed to the model (the query's own for embedding models)
    num_sequences: int
