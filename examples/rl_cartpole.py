"""Train dlcore's PPO on CartPole-v1, compare it with a random policy, and plot the learning curve.

    python examples/rl_cartpole.py                     # 100k environment steps, about a minute
    python examples/rl_cartpole.py --timesteps 50000 --seed 1

Prints the greedy policy's mean return over 100 evaluation episodes beside a uniformly random policy's,
and writes examples/out/rl_cartpole.png: the training episodes' mean return (last 100 episodes) and the
policy entropy against environment steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source tree

from dlcore.rl import PPO, evaluate

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


class RandomPolicy:
    """Uniformly random actions: the baseline any learning should beat (about 22 on CartPole-v1)."""

    def __init__(self, n_actions, seed=0):
        self.n_actions, self.rng = n_actions, np.random.default_rng(seed)

    def predict(self, obs):
        return self.rng.integers(0, self.n_actions, size=len(obs))


def plot(history, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(history["timesteps"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, history["mean_return"], color="C0")
    ax1.axhline(475, color="gray", ls=":", lw=1, label="475 bar")
    ax1.set_xlabel("environment steps")
    ax1.set_ylabel("mean return (last 100 training episodes)")
    ax1.legend(loc="lower right")
    ax1.grid(alpha=0.3)
    ax2.plot(steps, history["entropy"], color="C1", label="entropy")
    ax2.plot(steps, history["approx_kl"], color="C2", label="approx. KL")
    ax2.set_xlabel("environment steps")
    ax2.set_yscale("log")
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description="PPO on CartPole-v1 with dlcore")
    ap.add_argument("--timesteps", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=100)
    args = ap.parse_args(argv)

    env_id = "CartPole-v1"
    agent = PPO(env_id, random_state=args.seed, verbose=1)
    start = time.perf_counter()
    agent.learn(args.timesteps)
    seconds = time.perf_counter() - start

    mean, std = evaluate(agent, env_id, n_episodes=args.episodes, random_state=args.seed + 1000)
    r_mean, r_std = evaluate(RandomPolicy(agent.action_space.n, args.seed), env_id, n_episodes=args.episodes,
                             random_state=args.seed + 1000)
    print(f"trained {agent.num_timesteps} environment steps in {seconds:.1f} s")
    print(f"mean return over {args.episodes} episodes: PPO (greedy) {mean:.1f} +- {std:.1f}   "
          f"random policy {r_mean:.1f} +- {r_std:.1f}")

    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "rl_cartpole.png")
    plot(agent.history_, path, f"dlcore PPO on {env_id} (seed {args.seed}): greedy return {mean:.0f} +- {std:.0f}")
    print(f"learning curve: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
