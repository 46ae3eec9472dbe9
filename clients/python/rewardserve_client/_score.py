"""The Score call's request builder and result types (a query against documents)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence, Union

from rewardserve_client._requests import build_message, build_truncation, enum_name, with_token_ids
from rewardserve_client._results import to_timing, to_usage
from rewardserve_client.errors import invalid_argument
from rewardserve_client.types import Timing, Usage
from rewardserve_client.v1 import reward_service_pb2 as pb

ScoreInput = Union[str, Sequence[int]]


@dataclass(frozen=True)
class ScoreResult:
    """One document's score.

    ``score`` is activated (the sigmoid of a cross-encoder's or reranker's one logit, or the
    cosine similarity for embedding models); ``logit`` is the raw head output (None without a head).
    """

    index: int
    score: float
    logit: Optional[float]
    num_tokens: int
    truncated: bool


@dataclass(frozen=True)
class ScoreResponse:
    """The answer to ``score``: results in document order, or the best ``top_n`` first.

    ``method`` is ``"cross_encoder"``, ``"decoder_reranker"`` or ``"embedding_cosine"``.
    """

    request_id: str
    model: str
    method: str
    results: List[ScoreResult]
    usage: Usage
    timing: Timing

    @property
    def scores(self) -> List[float]:
        """The scores, in the order of ``results``."""
        return [r.score for r in self.results]


def _fill(message: pb.ScoreInput, item: Any, where: str) -> None:
    if isinstance(item, str):
        message.text = item
        return
    if isinstance(item, (bytes, Mapping)) or not hasattr(item, "__iter__"):
        raise invalid_argument(f"{where}: expected str or a sequence of token ids, got {type(item).__name__}")
    with_token_ids(message.token_ids.ids.extend, item, f"{where}.token_ids")


def score_request(query: ScoreInput, documents: Iterable[ScoreInput], *, top_n: int = 0,
                  truncate_prompt_tokens: Optional[int] = None, truncation_side: Optional[str] = None,
                  instruction: Optional[str] = None, priority: int = 0, request_id: str = "") -> pb.ScoreRequest:
    """A ScoreRequest; ``top_n`` must be a non-negative integer (0: every result, in order)."""
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
        raise invalid_argument(f"top_n: must be a non-negative integer, got {top_n!r}")
    if isinstance(documents, (bytes, Mapping)) or not hasattr(documents, "__iter__"):
        raise invalid_argument(f"documents: expected a list of texts or token id lists, "
                               f"got {type(documents).__name__}")
    documents = [documents] if isinstance(documents, str) else list(documents)
    if not documents:
        raise invalid_argument("documents: must not be empty (score)")
    if instruction is not None and not isinstance(instruction, str):
        raise invalid_argument(f"instruction: expected a str, got {type(instruction).__name__}")
    request = build_message(pb.ScoreRequest, top_n=top_n, instruction=instruction or "", priority=priority,
                            request_id=request_id,
                            truncation=build_truncation(truncate_prompt_tokens, truncation_side))
    _fill(request.query, query, "query")
    for i, doc in enumerate(documents):
        _fill(request.documents.add(), doc, f"documents[{i}]")
    return request


def to_score_response(reply: pb.ScoreResponse) -> ScoreResponse:
    """A ScoreResponse message as plain Python values."""
    results = [ScoreResult(index=r.index, score=r.score, logit=r.logit if r.HasField("logit") else None,
                           num_tokens=r.num_tokens, truncated=r.truncated) for r in reply.results]
    return ScoreResponse(request_id=reply.request_id, model=reply.model,
                         method=enum_name(pb.ScoreMethod, "SCORE_METHOD_", reply.method), results=results,
                         usage=to_usage(reply.usage), timing=to_timing(reply.timing))
