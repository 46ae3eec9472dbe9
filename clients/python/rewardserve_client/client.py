"""RewardClient: the blocking Python client of rewardserve.v1."""
from __future__ import annotations

import random
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import grpc

from rewardserve_client import _requests, _results
from rewardserve_client._base import (DEFAULT_TIMEOUT, ClientCore, MetadataLike, merge_options,
                                      resolve_credentials)
from rewardserve_client._requests import Conversation, Group, Input
from rewardserve_client.stream import ItemLike, stream_items
from rewardserve_client.types import ChatRewardResponse, EncodeResponse, ModelInfo, StreamResult
from rewardserve_client.v1 import reward_service_pb2 as pb
from rewardserve_client.v1 import reward_service_pb2_grpc as pb_grpc

REWARD_DEPRECATION = ("reward() calls the deprecated Reward RPC, removed in rewardserve.v2; "
                      "call encode(inputs, task='token_classify') instead")


class RewardClient:
    """Blocking client of a rewardserve server.

    Args:
        target: ``"host:port"`` of the server, or a multi-address target
            (``"ipv4:10.0.0.1:50051,10.0.0.2:50051"``, ``"dns:///rewardserve:50051"``): calls go
            round-robin to every address whose health check is SERVING (a draining or loading
            replica gets none). ``options=[("grpc.service_config", ...)]`` replaces that policy.
        timeout: default deadline of each call in seconds, retries included (None: no deadline).
        max_retries: retries after the first attempt, only on UNAVAILABLE and RESOURCE_EXHAUSTED.
        initial_backoff, max_backoff, backoff_multiplier, jitter: the exponential backoff
            (see :class:`rewardserve_client.RetryPolicy`); the server's retry delay is a floor.
        credentials: ``grpc.ChannelCredentials`` for TLS (e.g. ``grpc.ssl_channel_credentials``).
        secure: TLS with the system's root certificates when no ``credentials`` are given.
        options: gRPC channel options, passed through (they override our message-size defaults).
        metadata: metadata sent with every call (e.g. ``{"x-team": "rl"}``).
        auth_token: sent as ``authorization: Bearer <token>`` with every call; when None, the
            ``REWARDSERVE_AUTH_TOKEN`` environment variable is read here, at construction (unless
            ``metadata`` has an ``authorization`` entry). Never shown in reprs or errors.
        clock, sleep, rng: time source, sleep function and random source of the retry loop,
            replaceable for tests and simulations.

    Failed calls raise :class:`rewardserve_client.RewardServeError` subclasses. Use it as a
    context manager, or call :meth:`close`.
    """

    def __init__(self, target: str = "localhost:50051", *,
                 timeout: Optional[float] = DEFAULT_TIMEOUT, max_retries: int = 3,
                 initial_backoff: float = 0.1, max_backoff: float = 5.0,
                 backoff_multiplier: float = 2.0, jitter: float = 0.2,
                 credentials: Optional[grpc.ChannelCredentials] = None, secure: bool = False,
                 options: Optional[Sequence[Tuple[str, Any]]] = None,
                 metadata: MetadataLike = None, auth_token: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: Optional[random.Random] = None):
        self._core = ClientCore(target, timeout=timeout, max_retries=max_retries,
                                initial_backoff=initial_backoff, max_backoff=max_backoff,
                                backoff_multiplier=backoff_multiplier, jitter=jitter,
                                metadata=metadata, auth_token=auth_token, clock=clock, rng=rng)
        self._sleep = sleep
        creds = resolve_credentials(credentials, secure)
        opts = merge_options(options)
        self._channel = (grpc.secure_channel(target, creds, options=opts) if creds
                         else grpc.insecure_channel(target, options=opts))
        self._stub = pb_grpc.RewardServiceStub(self._channel)

    def encode(self, inputs: Iterable[Input], task: Optional[str] = "classify", *,
               pooling_type: Optional[str] = None, use_activation: Optional[bool] = None,
               normalize: Optional[bool] = None, dimensions: Optional[int] = None,
               step_tag_id: Optional[int] = None, returned_token_ids: Optional[Sequence[int]] = None,
               truncate_prompt_tokens: Optional[int] = None, truncation_side: Optional[str] = None,
               add_special_tokens: Optional[bool] = None, priority: int = 0,
               request_id: Optional[str] = None, timeout: Optional[float] = None) -> EncodeResponse:
        """Run a pooling task on texts and/or token id lists (the Encode RPC).

        Args:
            inputs: items that are each a ``str`` or a sequence of token ids (lists, NumPy or
                torch integer tensors); a lone ``str`` is one input.
            task: ``"classify"``, ``"token_classify"``, ``"embed"``, ``"token_embed"``, or None
                for the model's default.
            pooling_type: ``"last"``, ``"all"``, ``"cls"``, ``"mean"`` or ``"step"``.
            use_activation: False returns raw logits. normalize, dimensions: embeddings.
            step_tag_id: the step marker token (STEP pooling of process reward models).
            returned_token_ids: keep only these label/vocabulary columns.
            truncate_prompt_tokens: keep at most this many tokens (-1: the model's maximum);
                unset refuses over-long inputs. truncation_side: ``"left"`` (default) or ``"right"``.
            add_special_tokens: add BOS/EOS to text inputs (server default: True).
            priority: lower runs first. request_id: echoed in the reply (generated when None).
            timeout: this call's deadline in seconds (default: the client's).

        Returns:
            EncodeResponse whose results hold float32 ``data`` arrays, in input order.
        """
        rid = self._core._request_id(request_id)
        request = _requests.encode_request(
            inputs, task, pooling_type=pooling_type, use_activation=use_activation,
            normalize=normalize, dimensions=dimensions, step_tag_id=step_tag_id,
            returned_token_ids=returned_token_ids, truncate_prompt_tokens=truncate_prompt_tokens,
            truncation_side=truncation_side, add_special_tokens=add_special_tokens,
            priority=priority, request_id=rid)
        return _results.to_encode_response(self._unary("Encode", request, rid, timeout))

    def chat_reward(self, conversations: Iterable[Conversation] = (), *,
                    groups: Iterable[Group] = (),
                    chat_template: Optional[str] = None,
                    chat_template_kwargs: Optional[Mapping[str, Any]] = None,
                    add_generation_prompt: bool = False, continue_final_message: bool = False,
                    truncate_prompt_tokens: Optional[int] = None,
                    truncation_side: Optional[str] = None, step_tag_id: Optional[int] = None,
                    returned_token_ids: Optional[Sequence[int]] = None, priority: int = 0,
                    request_id: Optional[str] = None,
                    timeout: Optional[float] = None) -> ChatRewardResponse:
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
            Other arguments: as in :meth:`encode`.

        Returns:
            ChatRewardResponse; ``.scores`` lists the raw rewards in input order.
        """
        rid = self._core._request_id(request_id)
        request = _requests.chat_reward_request(
            conversations, chat_template=chat_template, chat_template_kwargs=chat_template_kwargs,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side,
            step_tag_id=step_tag_id, returned_token_ids=returned_token_ids, priority=priority,
            request_id=rid, groups=groups)
        return _results.to_chat_reward_response(self._unary("ChatReward", request, rid, timeout))

    def stream(self, items: Iterable[ItemLike], *, max_in_flight: int = 0,
               request_id: Optional[str] = None, timeout: Optional[float] = None,
               **options: Any) -> Iterator[StreamResult]:
        """Score ``(id, conversation[, group_id])`` items over one StreamReward call.

        Yields a :class:`StreamResult` per item in completion order; a failed item carries its
        error and the stream goes on. ``options`` are ``chat_reward``'s template, truncation,
        ``step_tag_id``/``returned_token_ids`` and ``priority`` arguments. Not retried.
        """
        rid = self._core._request_id(request_id)
        options = _requests.stream_options(max_in_flight=max_in_flight, **options)
        return stream_items(self._stub, items, options, timeout=self._core._timeout(timeout),
                            metadata=self._core._call_metadata(rid), request_id=rid)

    def model_info(self, *, timeout: Optional[float] = None) -> ModelInfo:
        """Describe the served model (GetModelInfo RPC)."""
        rid = self._core._request_id(None)
        reply = self._unary("GetModelInfo", pb.GetModelInfoRequest(), rid, timeout)
        return _results.to_model_info(reply)

    def reward(self, inputs: Iterable[Input], *, pooling_type: Optional[str] = None,
               use_activation: Optional[bool] = None, step_tag_id: Optional[int] = None,
               returned_token_ids: Optional[Sequence[int]] = None,
               truncate_prompt_tokens: Optional[int] = None,
               truncation_side: Optional[str] = None, priority: int = 0,
               request_id: Optional[str] = None, timeout: Optional[float] = None) -> EncodeResponse:
        """Deprecated: use ``encode(inputs, task="token_classify")``. Calls the Reward RPC.

        Emits a DeprecationWarning; the RPC is removed in rewardserve.v2.
        """
        warnings.warn(REWARD_DEPRECATION, DeprecationWarning, stacklevel=2)
        rid = self._core._request_id(request_id)
        request = _requests.reward_request(
            inputs, pooling_type=pooling_type, use_activation=use_activation,
            step_tag_id=step_tag_id, returned_token_ids=returned_token_ids,
            truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side,
            priority=priority, request_id=rid)
        reply = self._unary("Reward", request, rid, timeout)
        return _results.to_encode_response(reply, task=pb.POOLING_TASK_TOKEN_CLASSIFY)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __repr__(self) -> str:
        return self._core.describe(type(self).__name__)

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _unary(self, method: str, request, request_id: str, timeout: Optional[float]):
        rpc = getattr(self._stub, method)
        metadata = self._core._call_metadata(request_id)

        def attempt(time_left: Optional[float]):
            return rpc(request, timeout=time_left, metadata=metadata)

        return self._core._retrier.call(attempt, self._core._timeout(timeout), request_id,
                                        self._sleep)
