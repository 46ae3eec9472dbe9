"""Drop-in reward functions for RL trainers, backed by a rewardserve server.

* ``trl``: ``RewardServeRewardFunc`` / ``AsyncRewardServeRewardFunc`` for ``GRPOTrainer(reward_funcs=...)``.
* ``openrlhf``: an HTTP proxy serving OpenRLHF's ``--remote_rm_url`` protocol (``POST /get_reward``).
* ``verl``: ``make_compute_score``, an async ``compute_score`` for veRL's reward managers.

Each module imports only the standard library and rewardserve_client (no trainer dependency).
"""
