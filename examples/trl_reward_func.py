"""A rewardserve reward model as a TRL reward function (GRPO), sync and async.

Start a server first (`make serve` serves the demo model on 127.0.0.1:50051), then:

    .venv/bin/python examples/trl_reward_func.py [--target HOST:PORT]

This calls the reward functions exactly as TRL's GRPOTrainer does. In a training script:

    from trl import GRPOConfig, GRPOTrainer
    trainer = GRPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", reward_funcs=[reward_func],
                          args=GRPOConfig(...), train_dataset=dataset)
"""
import argparse
import asyncio

from rewardserve_client.integrations.trl import AsyncRewardServeRewardFunc, RewardServeRewardFunc

PROMPTS = [[{"role": "user", "content": "What is 2+2?"}]] * 3          # one GRPO group of 3
COMPLETIONS = [[{"role": "assistant", "content": "4"}],
               [{"role": "assistant", "content": "The answer is 4."}],
               [{"role": "robot", "content": "beep"}]]                 # refused by the server: None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", default="127.0.0.1:50051")
    target = parser.parse_args().target

    reward_func = RewardServeRewardFunc(target, name="rm")
    print("sync: ", reward_func(prompts=PROMPTS, completions=COMPLETIONS))
    reward_func.close()

    async def score_async() -> list:
        async_func = AsyncRewardServeRewardFunc(target, name="rm_async")
        try:
            return await async_func(prompts=PROMPTS, completions=COMPLETIONS)
        finally:
            await async_func.aclose()

    print("async:", asyncio.run(score_async()))


if __name__ == "__main__":
    main()
