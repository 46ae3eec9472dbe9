"""The Score RPC: a ScoreRequest read into one engine ``score`` call, its output into a reply.

Shape checks that need no model live here (query set, documents non-empty, each item set);
everything else (empty inputs, tokens, lengths, whether the model can score) is the engine's, and every error goes through service/errors.py's table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from rewardserve_client.v1 import reward_service_pb2 as pb

from rewardserve.engine.api import (EngineAPI, InvalidInputError, ScoreMethod, ScoreOutput, ScoreParams, TextInput,
                                    TokensInput)
from rewardserve.service import packed
from rewardserve.service.convert import TRUNCATION_SIDES, pooling_params, timing

METHODS = {ScoreMethod.CROSS_ENCODER: pb.SCORE_METHOD_CROSS_ENCODER,
           ScoreMethod.DECODER_RERANKER: pb.SCORE_METHOD_DECODER_RERANKER,
           ScoreMethod.EMBEDDING_COSINE: pb.SCORE_METHOD_EMBEDDING_COSINE}


@dataclass(frozen=True)
class ScoreCall:
    """One engine ``score`` call, as read from a ScoreRequest."""

    query: TextInput | TokensInput
    documents: tuple[TextInput | TokensInput, ...]
    params: ScoreParams
    priority: int


def score_call(request: pb.ScoreRequest) -> ScoreCall:
    """Read a ScoreRequest; a missing query, no documents or an unset item is refused."""
    if not request.HasField("query"):
        raise InvalidInputError("query", "is required")
    cut = packed.current()  # token ids the wire left in the request's bytes (service/packed.py)
    query = score_input(request.query, "query", None, cut.get(("query", "token_ids")))
    if not request.documents:
        raise InvalidInputError("documents", "must not be empty")
    documents = tuple(score_input(d, "documents", i, cut.get(("documents", i, "token_ids")))
                      for i, d in enumerate(request.documents))
    truncation = pooling_params(pb.PoolingParams(), request.truncation)  # checks truncate_prompt_tokens, side
    params = ScoreParams(top_n=request.top_n, truncate_prompt_tokens=truncation.truncate_prompt_tokens,
                         truncation_side=TRUNCATION_SIDES.get(request.truncation.side),
                         instruction=request.instruction or None)
    return ScoreCall(query, documents, params, request.priority)


def score_input(message: pb.ScoreInput, field: str, index: int | None,
                cut: Sequence[int] | None = None) -> TextInput | TokensInput:
    """Text or token ids (empty ids are the engine's to refuse, as every empty input); ``cut``:
    the ids when the wire left them in the request's bytes. Ids are not copied here: the engine
    counts them first."""
    kind = message.WhichOneof("input")
    if kind == "text":
        return TextInput(message.text)
    if kind == "token_ids":
        return TokensInput(message.token_ids.ids if cut is None else cut)
    raise InvalidInputError(field, "set either text or token_ids", index)


async def score(request: pb.ScoreRequest, call: Any, engine_of: Callable[[], EngineAPI]) -> pb.ScoreResponse:
    """Run one Score call; ``engine_of`` is read after the request is checked (a bad request is
    INVALID_ARGUMENT even while the model loads)."""
    req = score_call(request)
    engine = engine_of()
    output = await engine.score(req.query, req.documents, req.params, priority=req.priority,
                                deadline=call.deadline, request_id=call.request_id)
    return reply(output, call.request_id, engine.info.model, call.elapsed())


def reply(output: ScoreOutput, request_id: str, model: str, total_s: float) -> pb.ScoreResponse:
    """The ScoreResponse of an engine output (results already in input order or best first)."""
    message = pb.ScoreResponse(request_id=request_id, model=model, method=METHODS[output.method],
                               usage={"prompt_tokens": output.prompt_tokens, "num_sequences": output.num_sequences},
                               timing=timing(output.results, total_s))
    for result in output.results:
        item = message.results.add(index=result.index, score=result.score, num_tokens=result.num_tokens,
                                   truncated=result.truncated)
        if result.logit is not None:
            item.logit = result.logit
    return message
