"""veRL: an async ``compute_score`` backed by a rewardserve server.

In a veRL config (``custom_reward_function.path`` pointing at a file that defines it)::

    from rewardserve_client.integrations.verl import make_compute_score
    compute_score = make_compute_score("rm-host:50051")

veRL calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` per response;
reward managers and reward loops that accept coroutine functions await it concurrently, and
the server packs the concurrent calls into shared batches. ``solution_str`` is the decoded
response; the prompt comes from ``extra_info[prompt_key]`` (a message list, or a text taken as
one user turn): put the dataset's prompt there. The response is scored as the final assistant
turn, rendered with the reward model's own template (with ``policy_tokenizer``, the policy's
end-of-turn artefacts are stripped by the server). The result is a dict veRL logs in full:
``{"score": raw reward, "rm_num_tokens": ..., "rm_truncated": 0/1}``. A failure raises a
RewardServeError (never a silent 0).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, Optional, Union

from rewardserve_client.errors import invalid_argument
from rewardserve_client.integrations._common import LoopClients, as_messages, response_of

Score = Union[float, Dict[str, float]]


def prompt_messages(extra_info: Optional[dict], prompt_key: str) -> list:
    """The prompt turns from ``extra_info[prompt_key]``; a clear error when they are missing."""
    prompt = (extra_info or {}).get(prompt_key)
    if prompt is None:
        raise invalid_argument(f"extra_info[{prompt_key!r}]: compute_score needs the prompt here "
                         "(a message list or a text); add it in the dataset's extra_info")
    return as_messages(list(prompt) if not isinstance(prompt, str) else prompt)


def make_compute_score(target: str = "localhost:50051", *, prompt_key: str = "prompt",
                       policy_tokenizer: Optional[str] = None, return_dict: bool = True,
                       timeout: Optional[float] = 60.0, client_options: Optional[dict] = None,
                       **chat_options: Any) -> Callable[..., Awaitable[Score]]:
    """An ``async def compute_score(data_source, solution_str, ground_truth, extra_info=None)``.

    Args:
        target: ``host:port`` of the server.
        prompt_key: where in ``extra_info`` the prompt is.
        policy_tokenizer: the server's name for the policy tokenizer (strips its artefacts).
        return_dict: return ``{"score", "rm_num_tokens", "rm_truncated"}`` (else the float).
        timeout: deadline of each call, seconds. client_options: for AsyncRewardClient.
        chat_options: ``chat_reward`` options (``truncate_prompt_tokens``, ...).
    """
    clients = LoopClients(target, {"timeout": timeout, **(client_options or {})})

    async def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                            extra_info: Optional[dict] = None, **_kwargs: Any) -> Score:
        conversation = {"messages": prompt_messages(extra_info, prompt_key),
                        "response": response_of(solution_str, None, policy_tokenizer)}
        reply = await clients.get().chat_reward([conversation], **chat_options)
        result = reply.results[0]
        if not return_dict:
            return result.score
        return {"score": result.score, "rm_num_tokens": float(result.num_tokens),
                "rm_truncated": float(result.truncated)}

    compute_score.clients = clients  # for closing: await compute_score.clients.aclose()
    return compute_score
