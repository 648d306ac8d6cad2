"""Multi-agent PPO on the batched scenarios: stacked per-agent networks, the learner, configs."""
