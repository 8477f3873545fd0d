"""Policy evaluation: mean and standard deviation of the undiscounted episode return."""
from __future__ import annotations

import inspect

import numpy as np


def _policy_fn(agent, deterministic):
    """A function ``obs batch -> action batch`` for ``agent`` (an object with ``predict``, or a callable)."""
    predict = getattr(agent, "predict", None)
    if predict is None:
        if not callable(agent):
            raise TypeError(f"agent must have a predict(obs) method or be callable, got {type(agent).__name__}")
        return agent
    try:
        takes_flag = "deterministic" in inspect.signature(predict).parameters
    except (TypeError, ValueError):
        takes_flag = False
    if takes_flag:
        return lambda obs: predict(obs, deterministic=deterministic)
    return predict


def evaluate(agent, env, n_episodes=100, deterministic=True, random_state=None, n_envs=None):
    """Run ``agent`` for ``n_episodes`` full episodes and return the mean and std of their returns.

    Episodes run in a batch of environments stepped together. Each environment is assigned its share of the
    episodes before the run starts (so short episodes are not over-represented), and extra episodes an
    environment starts after its share are discarded.

    Args:
        agent: a `dlcore.rl.PPO` or any object whose ``predict(obs_batch)`` returns a batch of actions (a
            ``deterministic=`` keyword is passed when ``predict`` has one), or a callable doing the same.
        env: a Gymnasium environment id, `gymnasium.Env` (re-created from its spec) or same-step-autoreset
            `gymnasium.vector.VectorEnv`.
        n_episodes: how many episodes to average over.
        deterministic: act greedily (the most likely action) rather than sampling.
        random_state: seed for the environments' resets (None: unseeded).
        n_envs: environments stepped together (default ``min(n_episodes, 10)``); ignored for a vector env.

    Returns:
        ``(mean_return, std_return)`` as floats (population standard deviation).

    Raises:
        ValueError: ``n_episodes < 1``.
        TypeError: ``agent`` has no ``predict`` and is not callable; ``env`` is not an environment.

    Example:
        >>> mean, std = dlcore.rl.evaluate(agent, "CartPole-v1", n_episodes=100)
    """
    from dlcore.rl.ppo import make_vec_env

    if not isinstance(n_episodes, (int, np.integer)) or n_episodes < 1:
        raise ValueError(f"evaluate: n_episodes must be a positive integer, got {n_episodes!r}")
    policy = _policy_fn(agent, deterministic)
    import gymnasium as gym

    owned = not isinstance(env, gym.vector.VectorEnv)
    vec = make_vec_env(env, n_envs or min(int(n_episodes), 10))
    try:
        k = vec.num_envs
        quota = np.full(k, n_episodes // k) + (np.arange(k) < n_episodes % k)
        done_count = np.zeros(k, np.int64)
        running = np.zeros(k, np.float64)
        returns = []
        seed = None if random_state is None else int(random_state)
        obs, _ = vec.reset(seed=seed)
        while (done_count < quota).any():
            actions = np.asarray(policy(obs))
            obs, rewards, terminated, truncated, _ = vec.step(actions)
            running += rewards
            for i in np.flatnonzero(np.logical_or(terminated, truncated)):
                if done_count[i] < quota[i]:
                    returns.append(running[i])
                    done_count[i] += 1
                running[i] = 0.0
    finally:
        if owned:
            vec.close()
    returns = np.asarray(returns, np.float64)
    return float(returns.mean()), float(returns.std())
