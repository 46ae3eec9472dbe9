"""Each client call defined once: its arguments and defaults, request builder, RPC and reply converter.

A builder here takes the public arguments of one call and returns a :class:`UnaryCall`: the
request ready to send, the RPC to send it on and the converter of its reply. ``RewardClient``
runs it blocking and ``AsyncRewardClient`` as a coroutine (:func:`blocking`, :func:`awaitable`),
so both clients share one signature, one set of defaults and one docstring per call. Bad
arguments raise :class:`~rewardserve_client.InvalidArgumentError` here, before anything is sent.
"""
from __future__ import annotations

import functools
import inspect
import typing
import uuid
import warnings
from dataclasses import dataclass
from typing import (Any, Awaitable, Callable, Concatenate, Generic, Iterable, Mapping, Optional,
                    ParamSpec, Sequence, TypeVar)

from rewardserve_client import _requests, _results, _score
from rewardserve_client._requests import Conversation, Group, Input
from rewardserve_client._score import ScoreInput, ScoreResponse
from rewardserve_client.errors import invalid_argument
from rewardserve_client.types import ChatRewardResponse, EncodeResponse, ModelInfo
from rewardserve_client.v1 import reward_service_pb2 as pb

P = ParamSpec("P")
R = TypeVar("R")

# Items of one stream unanswered at a time (the server may lower it to its own limit).
DEFAULT_MAX_IN_FLIGHT = 64

REWARD_DEPRECATION = ("reward() calls the deprecated Reward RPC, removed in rewardserve.v2; "
                      "call encode(inputs, task='token_classify') instead")


@dataclass(slots=True)  # not frozen: a frozen init costs µs on every call; never mutated
class UnaryCall(Generic[R]):
    """One unary call ready to run: the RPC, its request and how to read its reply."""

    method: str  # the RPC's name on the generated stub
    request: Any
    request_id: str  # sent as x-request-id; every retry of the call carries the same one
    timeout: Optional[float]  # this call's deadline; None: the client's default
    convert: Callable[[Any], R]


@dataclass(frozen=True)
class StreamCall:
    """One StreamReward call ready to open: the options every item shares."""

    options: pb.StreamRewardOptions
    max_in_flight: int
    request_id: str
    timeout: Optional[float]  # the whole stream's deadline; None: none


def new_request_id(request_id: Optional[str]) -> str:
    """The caller's id, or a fresh one.

    Chosen here rather than by the server so that every retry of one call, and an error raised
    before the server answered, carry the same id.
    """
    if request_id is not None and not isinstance(request_id, str):
        raise invalid_argument(f"request_id: expected a str, got {type(request_id).__name__}")
    return request_id or uuid.uuid4().hex


def encode(inputs: Iterable[Input], task: Optional[str] = None, *,
           pooling_type: Optional[str] = None, use_activation: Optional[bool] = None,
           normalize: Optional[bool] = None, dimensions: Optional[int] = None,
           step_tag_id: Optional[int] = None, returned_token_ids: Optional[Sequence[int]] = None,
           truncate_prompt_tokens: Optional[int] = None, truncation_side: Optional[str] = None,
           add_special_tokens: Optional[bool] = None, priority: int = 0,
           request_id: Optional[str] = None,
           timeout: Optional[float] = None, chat_template: Optional[str] = None,
           chat_template_kwargs: Optional[Mapping[str, Any]] = None,
           add_generation_prompt: bool = False,
           continue_final_message: bool = False) -> UnaryCall[EncodeResponse]:
    """Run a pooling task on texts, token id lists and/or conversations (the Encode RPC).

    Args:
        inputs: items that are each a ``str``, a sequence of token ids (lists, NumPy or
            torch integer tensors), or a conversation in any form ``chat_reward`` takes (a
            message list, ``{"messages": [...], "response": R}`` or ``{"rendered": R}``),
            rendered with the served model's chat template; a lone ``str`` is one input.
        task: ``"classify"``, ``"token_classify"``, ``"embed"``, ``"token_embed"``, or None
            (default) for the served model's default task.
        pooling_type: ``"last"``, ``"all"``, ``"cls"``, ``"mean"`` or ``"step"``.
        use_activation: False returns raw logits. normalize, dimensions: embeddings.
        step_tag_id: the step marker token (STEP pooling of process reward models).
        returned_token_ids: keep only these label/vocabulary columns.
        truncate_prompt_tokens: keep at most this many tokens (-1: the model's maximum);
            unset refuses over-long inputs. truncation_side: ``"left"`` (default) or ``"right"``.
        add_special_tokens: add BOS/EOS to text inputs (server default: True).
        priority: lower runs first. request_id: echoed in the reply (generated when None).
        timeout: this call's deadline in seconds (default: the client's).
        chat_template, chat_template_kwargs, add_generation_prompt, continue_final_message:
            how conversation inputs are rendered, as in ``chat_reward``.

    Returns:
        EncodeResponse whose results hold float32 ``data`` arrays, in input order; its
        ``task`` is the task the server ran.
    """
    rid = new_request_id(request_id)
    request = _requests.encode_request(
        inputs, task, pooling_type=pooling_type, use_activation=use_activation,
        normalize=normalize, dimensions=dimensions, step_tag_id=step_tag_id,
        returned_token_ids=returned_token_ids, truncate_prompt_tokens=truncate_prompt_tokens,
        truncation_side=truncation_side, add_special_tokens=add_special_tokens,
        priority=priority, request_id=rid, chat_template=chat_template,
        chat_template_kwargs=chat_template_kwargs, add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message)
    return UnaryCall("Encode", request, rid, _requests.check_timeout(timeout), _results.to_encode_response)


def chat_reward(conversations: Iterable[Conversation] = (), *, groups: Iterable[Group] = (),
                chat_template: Optional[str] = None,
                chat_template_kwargs: Optional[Mapping[str, Any]] = None,
                add_generation_prompt: bool = False, continue_final_message: bool = False,
                truncate_prompt_tokens: Optional[int] = None,
                truncation_side: Optional[str] = None, step_tag_id: Optional[int] = None,
                returned_token_ids: Optional[Sequence[int]] = None, priority: int = 0,
                request_id: Optional[str] = None,
                timeout: Optional[float] = None) -> UnaryCall[ChatRewardResponse]:
    """Score conversations rendered with the served model's chat template (ChatReward RPC).

    Args:
        conversations: each a list of ``{"role": ..., "content": ...}`` dicts, or a dict
            ``{"messages": [...], "response": R}`` (the policy's response to the prompt
            ``messages``) or ``{"rendered": R}`` (a whole conversation as the policy's chat
            template rendered it). ``R`` is text, token ids, or a :class:`PolicyText` /
            ``{"text" | "token_ids", "tokenizer"}`` naming a ``--policy-tokenizer`` of the
            server (``""``: the reward model's own).
        groups: ``{"prompt": [...], "responses": [R, ...], "group_id": "..."}`` dicts: N
            responses to one prompt (GRPO). Their results follow the conversations' and
            carry ``group_index``, ``response_index`` and ``group_id``.
        chat_template: a Jinja template replacing the model's own.
        chat_template_kwargs: extra template variables (e.g. ``{"enable_thinking": False}``).
        add_generation_prompt, continue_final_message: as in ``apply_chat_template``.
        step_tag_id, returned_token_ids: for process reward models.
        Other arguments: as in ``encode``.

    Returns:
        ChatRewardResponse; ``.scores`` lists the raw rewards in input order.
    """
    rid = new_request_id(request_id)
    request = _requests.chat_reward_request(
        conversations, chat_template=chat_template, chat_template_kwargs=chat_template_kwargs,
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
        truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side,
        step_tag_id=step_tag_id, returned_token_ids=returned_token_ids, priority=priority,
        request_id=rid, groups=groups)
    return UnaryCall("ChatReward", request, rid, _requests.check_timeout(timeout), _results.to_chat_reward_response)


def score(query: ScoreInput, documents: Iterable[ScoreInput], *, top_n: int = 0,
          truncate_prompt_tokens: Optional[int] = None, truncation_side: Optional[str] = None,
          instruction: Optional[str] = None, priority: int = 0, request_id: Optional[str] = None,
          timeout: Optional[float] = None) -> UnaryCall[ScoreResponse]:
    """Score ``query`` against each document (Score RPC): cross-encoders and rerankers read
    each pair, embedding models give cosine similarities.

    Args:
        query, documents: text or token ids (without special tokens) each.
        top_n: keep the best N results, best first (0: all, in document order).
        truncate_prompt_tokens: cut over-long pairs to this many tokens (-1: the model's
            maximum); only the document is cut. Unset refuses over-long pairs.
        instruction: a decoder reranker's instruction (e.g. Qwen3-Reranker's ``<Instruct>``).
        Other arguments: as in ``encode``.

    Returns:
        ScoreResponse; ``.scores`` lists the scores in the order of its results.
    """
    rid = new_request_id(request_id)
    request = _score.score_request(query, documents, top_n=top_n, truncate_prompt_tokens=truncate_prompt_tokens,
                                   truncation_side=truncation_side, instruction=instruction,
                                   priority=priority, request_id=rid)
    return UnaryCall("Score", request, rid, _requests.check_timeout(timeout), _score.to_score_response)


def model_info(*, timeout: Optional[float] = None) -> UnaryCall[ModelInfo]:
    """Describe the served model (GetModelInfo RPC): tasks, labels, hashes, limits."""
    return UnaryCall("GetModelInfo", pb.GetModelInfoRequest(), new_request_id(None),
                     _requests.check_timeout(timeout), _results.to_model_info)


def _deprecated_reward_response(reply: pb.RewardResponse) -> EncodeResponse:
    return _results.to_encode_response(reply, task=pb.POOLING_TASK_TOKEN_CLASSIFY)


def reward(inputs: Iterable[Input], *, pooling_type: Optional[str] = None,
           use_activation: Optional[bool] = None, step_tag_id: Optional[int] = None,
           returned_token_ids: Optional[Sequence[int]] = None,
           truncate_prompt_tokens: Optional[int] = None, truncation_side: Optional[str] = None,
           priority: int = 0, request_id: Optional[str] = None,
           timeout: Optional[float] = None) -> UnaryCall[EncodeResponse]:
    """Deprecated: use ``encode(inputs, task="token_classify")``. Calls the Reward RPC.

    Emits a DeprecationWarning; the RPC is removed in rewardserve.v2.
    """
    # stacklevel 3: this builder, the client method running it, then the caller's line.
    warnings.warn(REWARD_DEPRECATION, DeprecationWarning, stacklevel=3)
    rid = new_request_id(request_id)
    request = _requests.reward_request(
        inputs, pooling_type=pooling_type, use_activation=use_activation,
        step_tag_id=step_tag_id, returned_token_ids=returned_token_ids,
        truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side,
        priority=priority, request_id=rid)
    return UnaryCall("Reward", request, rid, _requests.check_timeout(timeout), _deprecated_reward_response)


def stream(*, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, request_id: Optional[str] = None,
           timeout: Optional[float] = None, chat_template: Optional[str] = None,
           chat_template_kwargs: Optional[Mapping[str, Any]] = None,
           add_generation_prompt: bool = False, continue_final_message: bool = False,
           truncate_prompt_tokens: Optional[int] = None, truncation_side: Optional[str] = None,
           step_tag_id: Optional[int] = None, returned_token_ids: Optional[Sequence[int]] = None,
           priority: int = 0) -> StreamCall:
    """The options of a StreamReward call (both clients' ``stream``).

    Args:
        max_in_flight: items sent and not answered yet, at most (the server may lower it).
        request_id: the stream's id (generated when None).
        timeout: deadline of the whole stream in seconds; None (default): no deadline, a stream
            lives as long as the trainer feeds it (the client's per-call default does not apply).
        Other arguments: ``chat_reward``'s template, truncation, step and ``priority``
            arguments, shared by every item.
    """
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise invalid_argument(f"max_in_flight: must be an integer of at least 1, got {max_in_flight!r}")
    options = _requests.stream_options(
        chat_template=chat_template, chat_template_kwargs=chat_template_kwargs,
        add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message,
        truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side,
        step_tag_id=step_tag_id, returned_token_ids=returned_token_ids, priority=priority,
        max_in_flight=max_in_flight)
    return StreamCall(options, max_in_flight, new_request_id(request_id),
                      _requests.check_timeout(timeout))


def method_signature(build: Callable[..., Any], returns: Any,
                     leading: Sequence[inspect.Parameter] = ()) -> inspect.Signature:
    """``build``'s parameters as a method's (``self`` and ``leading`` first), returning ``returns``."""
    signature = inspect.signature(build)
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return signature.replace(parameters=[self_param, *leading, *signature.parameters.values()],
                             return_annotation=returns)


def _reply_type(build: Callable[..., UnaryCall[Any]]) -> Any:
    """``R`` of a builder annotated ``-> UnaryCall[R]``."""
    return typing.get_type_hints(build)["return"].__args__[0]


def blocking(build: Callable[P, UnaryCall[R]]) -> Callable[Concatenate[Any, P], R]:
    """A ``RewardClient`` method that builds the call and runs it (``self._run_unary``)."""
    @functools.wraps(build)
    def method(self, *args: Any, **kwargs: Any) -> Any:
        return self._run_unary(build(*args, **kwargs))

    method.__signature__ = method_signature(build, _reply_type(build))
    return method


def awaitable(build: Callable[P, UnaryCall[R]]) -> Callable[Concatenate[Any, P], Awaitable[R]]:
    """An ``AsyncRewardClient`` coroutine method that builds the call and awaits it."""
    @functools.wraps(build)
    async def method(self, *args: Any, **kwargs: Any) -> Any:
        return await self._run_unary(build(*args, **kwargs))

    method.__signature__ = method_signature(build, _reply_type(build))
    return method
