"""A rewardserve reward model as veRL's compute_score (async).

Point veRL at this file; the target comes from REWARDSERVE_TARGET (default 127.0.0.1:50051):

    custom_reward_function.path=examples/verl_compute_score.py custom_reward_function.name=compute_score

Put each sample's prompt (messages) in its extra_info["prompt"]. With a server running
(`make serve`), run it directly to score one response:

    .venv/bin/python examples/verl_compute_score.py
"""
import asyncio
import os

from rewardserve_client.integrations.verl import make_compute_score

compute_score = make_compute_score(os.environ.get("REWARDSERVE_TARGET", "127.0.0.1:50051"))


async def _demo() -> None:
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    scores = await asyncio.gather(*(
        compute_score("gsm8k", answer, "4", {"prompt": prompt}) for answer in ("4", "The answer is 4.", "5")))
    for score in scores:
        print(score)
    await compute_score.clients.aclose()


if __name__ == "__main__":
    asyncio.run(_demo())
