"""dlcore.rl: reinforcement learning on dlcore's autograd, layers and fused optimizer kernels.

    from dlcore.rl import PPO, evaluate
    agent = PPO("CartPole-v1", random_state=0).learn(100_000)
    mean, std = evaluate(agent, "CartPole-v1", n_episodes=100)

Environments are Gymnasium environments (an id such as ``"CartPole-v1"``, an `gymnasium.Env`, or a
same-step-autoreset `gymnasium.vector.VectorEnv`); ``gymnasium`` is imported on first use.
"""
from dlcore.rl.evaluate import evaluate
from dlcore.rl.ppo import PPO

__all__ = ["PPO", "evaluate"]
