"""Score: one query against a list of documents (vLLM's Score API, a reranker's ``rerank``).

How a pair is scored follows the served model (``score_method``):

- **cross-encoder** (a one-label head; BERT family, or any ``*ForSequenceClassification``): each
  (query, document) pair is one sequence built by the tokenizer's own pair template
  (``[CLS] q [SEP] d [SEP]`` with segment ids 0…0 1…1 for BERT; ``<s> q </s></s> d </s>`` for
  RoBERTa), so the segment ids (``token_type_ids``) reach the encoder as transformers gives them.
- **decoder reranker** (a causal LM served with a yes/no ``classifier_from_token`` head and a
  chat template, e.g. Qwen3-Reranker with ``{"classifier_from_token": ["no", "yes"], "method":
  "from_2_way_softmax"}``): each pair is Qwen3-Reranker's published prompt — a system turn with
  the judging rule and a user turn ``<Instruct>: …\\n<Query>: …\\n<Document>: …`` — rendered with
  the model's chat template (generation prompt, ``enable_thinking=False``); the head reads the
  last token: logit = ``lm[yes] - lm[no]``, score = its sigmoid = P(yes | yes or no).
- **embedding cosine** (no head): the query and each document are embedded (EMBED, normalised)
  and the score is their cosine similarity.

Truncation keeps the query whole: only the document's end is cut. Every pair is one WorkItem,
so Score is queued, batched, prioritised and isolated exactly like Encode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from rewardserve.engine.errors import InvalidInputError, ItemError, UnsupportedTaskError
from rewardserve.engine.prepare import WorkItem, check_count, check_tokens, integer_ids, keep_tokens, to_input
from rewardserve.engine.pooling import pooled_positions
from rewardserve.engine.score_types import ScoreMethod, ScoreOutput, ScoreParams, ScoreResult
from rewardserve.engine.types import ChatInput, PoolingParams, PoolingTask, TextInput, TokensInput

if TYPE_CHECKING:
    from rewardserve.engine.core import EngineCore

# Qwen3-Reranker's published prompt (model card): the judging rule and the default instruction.
RERANKER_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
                   'provided. Note that the answer can only be "yes" or "no".')
RERANKER_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
_QUERY_SLOT, _DOC_SLOT = "\x00rewardserve-query\x00", "\x00rewardserve-document\x00"


@dataclass
class ScorePlan:
    """What ``prepare_score`` hands the scheduler: ``items`` (the query's first for cosine)."""

    method: ScoreMethod
    items: list[WorkItem]
    top_n: int
    query: WorkItem | None = None          # embedding models: the query's own sequence
    documents: list[WorkItem] = field(default_factory=list)


def score_method(core: "EngineCore") -> ScoreMethod:
    """The served model's way of scoring pairs; UnsupportedTaskError when it has none."""
    traits = core.traits
    if traits.num_labels == 0:
        return ScoreMethod.EMBEDDING_COSINE
    if traits.num_labels != 1:
        raise UnsupportedTaskError("documents", f"{traits.architecture} has {traits.num_labels} labels; Score "
                                   "needs a one-label head (cross-encoder, reranker) or an embedding model")
    has_template = core.tokenizer is not None and bool(core.tokenizer.chat_template)
    from_tokens = "classifier_from_token" in core.config.model.pooler_overrides()
    if traits.is_causal and from_tokens and has_template:
        return ScoreMethod.DECODER_RERANKER
    return ScoreMethod.CROSS_ENCODER


def prepare_score(core: "EngineCore", query: Any, documents: Sequence[Any], params: ScoreParams) -> ScorePlan:
    """Validate and tokenize a Score request (CPU work, on the tokenizer threads)."""
    method = score_method(core)
    if isinstance(params.top_n, bool) or not isinstance(params.top_n, int) or params.top_n < 0:
        raise InvalidInputError("top_n", f"must be a non-negative integer, not {params.top_n!r}")
    if params.instruction is not None and method != ScoreMethod.DECODER_RERANKER:
        raise InvalidInputError("instruction", f"only decoder rerankers take one; this model scores by {method.value}")
    check_count(documents, core.limits, "documents")  # empty, or over --max-items-per-request
    if method == ScoreMethod.EMBEDDING_COSINE:
        return _cosine_plan(core, query, documents, params)
    resolved, _ = core.plan(PoolingTask.CLASSIFY, None)
    limit = keep_tokens(params.truncate_prompt_tokens, core.limits) or core.limits.max_model_len
    pairs = PairBuilder(core, method, params.instruction)
    q = _content(query, None, "query", core, pairs.text_lead)
    items = []
    for i, doc in enumerate(documents):
        ids, types, truncated = pairs.build(q, _content(doc, i, "documents", core, pairs.text_lead), i, limit,
                                            params.truncate_prompt_tokens is not None)
        check_tokens(ids, i, core.limits, "documents")
        item = WorkItem(i, ids, truncated, resolved, pooled_positions(ids, resolved))
        # Segment ids only reach encoders with token types (RoBERTa's single type reads zeros).
        item.token_type_ids = types if core.traits.segment_ids and any(types) else None
        items.append(item)
    return ScorePlan(method, items, params.top_n, documents=items)


def to_score_output(plan: ScorePlan) -> ScoreOutput:
    """Scores from computed items: sigmoid of the one logit, or the cosine with the query."""
    if plan.method == ScoreMethod.EMBEDDING_COSINE:
        query = plan.query.result[0]                                       # [dims], normalised
        docs = torch.stack([it.result[0] for it in plan.documents])        # [n, dims], normalised
        scores = (docs @ query).tolist()
        logits: list[float | None] = [None] * len(scores)
    else:
        raw = torch.stack([it.result[1].reshape(-1)[0] for it in plan.documents])  # [n] head outputs
        logits, scores = raw.tolist(), torch.sigmoid(raw).tolist()
    results = [ScoreResult(it.index, s, lg, it.num_tokens, it.truncated, it.queue_time_s, it.compute_time_s)
               for it, s, lg in zip(plan.documents, scores, logits)]
    if plan.top_n:
        results = sorted(results, key=lambda r: (-r.score, r.index))[:plan.top_n]
    return ScoreOutput(plan.method, results, sum(it.num_tokens for it in plan.items), len(plan.items))


def name_failure(plan: ScorePlan, exc: ItemError) -> ItemError:
    """An item that failed alone, named where the caller put it: ``query`` for an embedding
    model's query sequence (its index follows the documents'), else ``documents[i]``."""
    if plan.query is not None and exc.index == plan.query.index:
        return exc.at("query")
    return exc.at("documents", exc.index)


# ---------------------------------------------------------------- pairs (cross-encoders, rerankers)

@dataclass(frozen=True)
class _Content:
    """A query or document as token ids without special tokens. Caller-given ids longer than
    max_model_len are read only up to max_model_len + 1 (no pair can hold more, and a document
    is cut at its end); ``count`` is how many there were."""

    ids: list[int]
    count: int = -1  # -1: len(ids)

    def __post_init__(self) -> None:
        if self.count < 0:
            object.__setattr__(self, "count", len(self.ids))


def _read(value: Any, index: int | None, field_name: str) -> TextInput | TokensInput:
    """A query or document in any plain form (str, ids, {"text"}, {"token_ids"}); no conversations."""
    try:
        item = to_input(value, index or 0, field_name)
    except InvalidInputError as exc:
        raise exc.at(field_name, index) from None
    if isinstance(item, ChatInput):
        raise InvalidInputError(field_name, "must be text or token ids, not a conversation", index)
    return item


def _content(value: Any, index: int | None, field_name: str, core: "EngineCore", lead: str = "") -> _Content:
    """Token ids of a query or document; text is tokenized as ``lead + text`` (see PairBuilder)."""
    item = _read(value, index, field_name)
    count = -1
    if isinstance(item, TokensInput):
        given, keep = item.token_ids, core.limits.max_model_len + 1
        count = len(given)  # counted before any id is copied (``given`` may be the request's bytes)
        ids = integer_ids(given[:keep] if count > keep else given, index or 0, field_name)
    elif core.tokenizer is None:
        raise InvalidInputError(field_name, "this server has no tokenizer; send token_ids", index)
    else:
        ids = core.tokenizer.encode(lead + item.text, add_special_tokens=False) if item.text else []
    if not ids:
        raise InvalidInputError(field_name, "is empty (0 tokens)", index)
    bad = next((t for t in ids if not 0 <= t < core.limits.vocab_size), None)
    if bad is not None:
        raise InvalidInputError(field_name, f"token id {bad} is outside the vocabulary "
                                f"(0..{core.limits.vocab_size - 1})", index)
    return _Content(ids, count)


class PairBuilder:
    """Builds one sequence per (query, document) and cuts only the document when too long.

    A pair is ``head + query + middle + document + tail`` (token ids): for cross-encoders the
    pieces are the tokenizer's pair template (special tokens), for rerankers the rendered prompt
    around the two slots. Segment ids follow the template (0 for the query part, 1 for the rest).
    """

    def __init__(self, core: "EngineCore", method: ScoreMethod, instruction: str | None):
        if core.tokenizer is None:
            raise InvalidInputError("query", "this server has no tokenizer to build query/document pairs")
        self.tokenizer = core.tokenizer
        if method == ScoreMethod.DECODER_RERANKER:
            self.pieces, self.text_lead = self._reranker_pieces(instruction), " "
        else:
            self.pieces, self.text_lead = self._template_pieces(), ""

    def build(self, query: _Content, doc: _Content, index: int, limit: int,
              may_truncate: bool) -> tuple[list[int], list[int], bool]:
        """(ids, segment ids, truncated) of one pair, at most ``limit`` tokens."""
        (head, head_t), (mid, mid_t), (tail, tail_t), q_type, d_type = self.pieces
        fixed = len(head) + query.count + len(mid) + len(tail)
        room = limit - fixed
        doc_ids, truncated = doc.ids, False
        if doc.count > room:
            if not may_truncate:
                raise InvalidInputError("documents", f"the pair has {fixed + doc.count} tokens, more than "
                                        f"{limit}; set truncate_prompt_tokens to cut the document", index)
            if room < 1:
                raise InvalidInputError("query", f"{query.count} tokens (with the pair's {fixed - query.count} "
                                        f"template tokens) leave no room for documents[{index}] within {limit}")
            doc_ids, truncated = doc_ids[:room], True
        ids = [*head, *query.ids, *mid, *doc_ids, *tail]
        types = [*head_t, *[q_type] * len(query.ids), *mid_t, *[d_type] * len(doc_ids), *tail_t]
        return ids, types, truncated

    def _template_pieces(self):
        """The tokenizer's pair template, read from one probe pair: specials around A and B."""
        enc = self.tokenizer.hf("a", "b", return_token_type_ids=True)
        seq, ids, types = enc.sequence_ids(), enc["input_ids"], enc.get("token_type_ids") or [0] * len(enc["input_ids"])
        parts: list[tuple[list[int], list[int]]] = [([], []), ([], []), ([], [])]  # head, middle, tail
        slot, q_type, d_type = 0, 0, 1
        for s, tid, typ in zip(seq, ids, types):
            if s is None:
                parts[slot][0].append(tid)
                parts[slot][1].append(typ)
            elif s == 0:
                slot, q_type = 1, typ
            else:
                slot, d_type = 2, typ
        return parts[0], parts[1], parts[2], q_type, d_type

    def _reranker_pieces(self, instruction: str | None):
        """The reranker prompt rendered with the chat template, split at the query/document slots.

        The space after ``<Query>:`` / ``<Document>:`` travels with the text (``text_lead``:
        `` query``), so text tokenizes as it does inside the whole prompt (byte-level BPE keeps a
        word's leading space); token ids are spliced in as given.
        """
        user = f"<Instruct>: {instruction or RERANKER_INSTRUCTION}\n<Query>:{_QUERY_SLOT}\n<Document>:{_DOC_SLOT}"
        messages = [{"role": "system", "content": RERANKER_SYSTEM}, {"role": "user", "content": user}]
        try:
            text = self.tokenizer.render_text(messages, add_generation_prompt=True, enable_thinking=False)
        except Exception as exc:  # noqa: BLE001 - a template that cannot render this layout
            raise InvalidInputError("instruction", f"the reranker prompt could not be rendered: {exc}") from None
        head, rest = text.split(_QUERY_SLOT)
        middle, tail = rest.split(_DOC_SLOT)
        enc = self.tokenizer.encode
        pieces = [enc(p, add_special_tokens=False) for p in (head, middle, tail)]
        return *((p, [0] * len(p)) for p in pieces), 0, 0


def _cosine_plan(core: "EngineCore", query: Any, documents: Sequence[Any], params: ScoreParams) -> ScorePlan:
    """The query and every document embedded (normalised), each truncated alone as Encode does."""
    embed = PoolingParams(normalize=True, truncate_prompt_tokens=params.truncate_prompt_tokens,
                          truncation_side=params.truncation_side)
    try:
        (q_item,) = core.prepare([_read(query, None, "query")], PoolingTask.EMBED, embed, field="query")
    except InvalidInputError as exc:
        raise exc.at("query") from None
    docs = core.prepare([_read(d, i, "documents") for i, d in enumerate(documents)], PoolingTask.EMBED, embed,
                        field="documents")
    q_item.index = len(docs)  # after the documents: its own index never names a document
    return ScorePlan(ScoreMethod.EMBEDDING_COSINE, [q_item, *docs], params.top_n, query=q_item, documents=docs)

