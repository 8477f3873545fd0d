"""PPO on CartPole-v1: dlcore.rl.PPO against the same algorithm written in PyTorch eager, wall time to the bar.

    python -m bench.bench_rl_ppo                       # seed 0, 100k steps each, then 100 greedy episodes
    python -m bench.bench_rl_ppo --seeds 0 1 2 --timesteps 150000

Both sides run the same algorithm with the same numbers: dlcore.rl.PPO's defaults (8 SyncVectorEnv
CartPole-v1 environments x 32 steps, one 256-sample minibatch, 20 epochs, Adam lr 1e-3 linearly annealed,
eps 1e-5, gamma 0.98, GAE lambda 0.8, clip 0.2, vf_coef 0.5, no entropy bonus, grad-norm clip 0.5, separate
64x64 tanh actor and critic with orthogonal init), the same seeds, and the same rollout/minibatch schedule:
one batched actor forward per vector step, one batched critic forward per rollout, a NumPy GAE loop over the
32 steps. The PyTorch side is written the way one writes fast eager PPO: ``torch.no_grad`` rollouts,
``log_softmax`` + ``gather`` (no ``torch.distributions`` validation overhead), ``torch.optim.Adam`` and
``clip_grad_norm_`` with their defaults. The random draws (initial weights, action sampling, environment
seeds) come from the same NumPy generator on both sides, so the two runs start from identical weights and
diverge only through float rounding.

Each (implementation, seed) runs in a fresh Python process with every thread pool at one thread (torch's
intra-op pool, Numba's, and the BLAS/OpenMP pools through threadpoolctl; dlcore's PPO also does this itself
while it learns, ``num_threads=1``): a 64-unit MLP is overhead-bound, a pool only adds wake-up latency, and
a worker left spinning after one run would slow the next one in the same process. Reported: training wall time of each (evaluation excluded), the greedy 100-episode mean
and std return after training, whether it reached the 475 bar, and torch time / dlcore time (> 1 means
dlcore is faster), for wall time and for the process's CPU time (both sides run on one thread, so CPU time
is the steadier number on a machine shared with other work). This is a plain script, not a
pytest-benchmark case: a run takes minutes.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import time

import numpy as np

BAR = 475.0


def _hp():
    import inspect

    from dlcore.rl import PPO

    sig = inspect.signature(PPO.__init__)
    return {k: v.default for k, v in sig.parameters.items() if v.default is not inspect.Parameter.empty}


class TorchPPO:
    """The PyTorch eager twin of `dlcore.rl.PPO` for Discrete actions and Box observations."""

    def __init__(self, env_id, random_state=0, **hp):
        import torch
        from torch import nn

        from dlcore.rl.ppo import _orthogonal, make_vec_env

        defaults = _hp()
        defaults.update(hp)
        self.hp = defaults
        self.torch = torch
        self.rng = np.random.default_rng(random_state)
        self.envs = make_vec_env(env_id, defaults["n_envs"])
        self.n_envs = self.envs.num_envs
        obs_dim = int(np.prod(self.envs.single_observation_space.shape))
        n_act = int(self.envs.single_action_space.n)
        hidden = tuple(defaults["net_arch"])

        def mlp(sizes, head_gain):  # same draws, in the same order, as dlcore.rl.ppo._mlp
            layers = []
            for i, (fi, fo) in enumerate(itertools.pairwise(sizes)):
                last = i == len(sizes) - 2
                lin = nn.Linear(fi, fo)
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(
                        _orthogonal((fo, fi), head_gain if last else math.sqrt(2.0), self.rng)))
                    lin.bias.zero_()
                layers.append(lin)
                if not last:
                    layers.append(nn.Tanh())
            return nn.Sequential(*layers)

        self.actor = mlp((obs_dim,) + hidden + (n_act,), 0.01)
        self.critic = mlp((obs_dim,) + hidden + (1,), 1.0)
        self.params = list(self.actor.parameters()) + list(self.critic.parameters())
        self.opt = torch.optim.Adam(self.params, lr=defaults["learning_rate"], eps=defaults["adam_eps"])
        self.env_seed = int(self.rng.integers(2 ** 31 - 1))
        self.last_obs = None
        self.ep_ret = np.zeros(self.n_envs)
        self.returns = []

    def _sample(self, logits):
        lp = self.torch.log_softmax(logits, dim=-1).numpy()
        cdf = np.cumsum(np.exp(lp), axis=1)
        u = self.rng.random((len(lp), 1), dtype=np.float32) * cdf[:, -1:]
        actions = (u > cdf[:, :-1]).sum(axis=1)
        return actions, lp[np.arange(len(lp)), actions]

    def predict(self, obs, deterministic=True):
        with self.torch.no_grad():
            logits = self.actor(self.torch.from_numpy(np.asarray(obs, np.float32).reshape(len(obs), -1)))
        return logits.argmax(-1).numpy()

    def learn(self, total_timesteps):
        torch, hp, F = self.torch, self.hp, self.torch.nn.functional
        n, t_len = self.n_envs, hp["n_steps"]
        total = n * t_len
        n_iter = max(1, math.ceil(total_timesteps / total))
        gamma, lam, clip = hp["gamma"], hp["gae_lambda"], hp["clip_range"]
        obs_buf = np.zeros((t_len, n, self.envs.single_observation_space.shape[0]), np.float32)
        act_buf = np.zeros((t_len, n), np.int64)
        logp_buf, rew_buf, done_buf = (np.zeros((t_len, n), np.float32) for _ in range(3))
        if self.last_obs is None:
            self.last_obs = np.asarray(self.envs.reset(seed=self.env_seed)[0], np.float32)
        obs = self.last_obs
        for it in range(n_iter):
            lr = hp["learning_rate"] * (1.0 - it / n_iter) if hp["anneal_lr"] else hp["learning_rate"]
            for g in self.opt.param_groups:
                g["lr"] = lr
            # rollout
            with torch.no_grad():
                for t in range(t_len):
                    obs_buf[t] = obs
                    actions, logp = self._sample(self.actor(torch.from_numpy(obs)))
                    next_obs, rewards, term, trunc, info = self.envs.step(actions)
                    rewards = np.asarray(rewards, np.float32)
                    done = np.logical_or(term, trunc)
                    self.ep_ret += rewards
                    if done.any():
                        self.returns.extend(self.ep_ret[done].tolist())
                        self.ep_ret[done] = 0.0
                        cut = trunc & ~term
                        if cut.any():
                            idx = np.flatnonzero(cut & info["_final_obs"])
                            if len(idx):
                                fin = np.stack([info["final_obs"][i] for i in idx]).astype(np.float32)
                                rewards = rewards.copy()
                                rewards[idx] += np.float32(gamma) * self.critic(torch.from_numpy(fin)).numpy()[:, 0]
                    act_buf[t], logp_buf[t], rew_buf[t], done_buf[t] = actions, logp, rewards, done
                    obs = np.asarray(next_obs, np.float32)
                allv = self.critic(torch.from_numpy(np.concatenate([obs_buf.reshape(total, -1), obs]))).numpy()[:, 0]
            values, last_v = allv[:total].reshape(t_len, n), allv[total:]
            adv = np.zeros_like(rew_buf)
            last = np.zeros(n, np.float32)
            for t in range(t_len - 1, -1, -1):
                nonterm = 1.0 - done_buf[t]
                nv = last_v if t == t_len - 1 else values[t + 1]
                last = rew_buf[t] + np.float32(gamma) * nv * nonterm - values[t] + np.float32(gamma * lam) * nonterm * last
                adv[t] = last
            b_obs = torch.from_numpy(obs_buf.reshape(total, -1))
            b_act = torch.from_numpy(act_buf.reshape(total))
            b_logp = torch.from_numpy(logp_buf.reshape(total))
            b_adv = torch.from_numpy(adv.reshape(total))
            b_ret = torch.from_numpy((adv + values).reshape(total))
            bs = hp["batch_size"]
            for _ in range(hp["n_epochs"]):
                order = None if bs >= total else torch.from_numpy(self.rng.permutation(total))
                for lo in range(0, total, bs):
                    if order is None:
                        x, a, old, mb_adv, ret = b_obs, b_act, b_logp, b_adv, b_ret
                    else:
                        i = order[lo:lo + bs]
                        x, a, old, mb_adv, ret = b_obs[i], b_act[i], b_logp[i], b_adv[i], b_ret[i]
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std(unbiased=False) + 1e-8)
                    lp = F.log_softmax(self.actor(x), dim=-1)
                    v = self.critic(x).squeeze(-1)
                    logp = lp.gather(1, a[:, None]).squeeze(1)
                    log_ratio = logp - old
                    ratio = log_ratio.exp()
                    pg_loss = -torch.min(ratio * mb_adv, ratio.clamp(1 - clip, 1 + clip) * mb_adv).mean()
                    entropy = -(lp.exp() * lp).sum(-1).mean()
                    v_loss = F.mse_loss(v, ret)
                    loss = pg_loss + hp["vf_coef"] * v_loss - hp["ent_coef"] * entropy
                    self.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.params, hp["max_grad_norm"])
                    self.opt.step()
                    with torch.no_grad():  # the same per-minibatch statistics dlcore's PPO logs
                        _ = (float(pg_loss), float(v_loss), float(entropy), float(((ratio - 1) - log_ratio).mean()),
                             float(((ratio - 1).abs() > clip).float().mean()))
        self.last_obs = obs
        return self


def _single_thread():
    """One thread for every pool in this process: torch's intra-op pool, Numba's, and the BLAS/OpenMP pools
    (threadpoolctl), so neither side has idle workers spinning beside its main thread."""
    import numba
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return None
    return threadpool_limits(1)


def run_one(name, seed, timesteps, n_episodes):
    """Train one implementation in this process; returns (wall s, CPU s, mean return, std return)."""
    from dlcore.rl import PPO, evaluate

    keep = _single_thread()  # noqa: F841 - the limits hold while this object lives
    agent = TorchPPO("CartPole-v1", random_state=seed) if name == "torch" else \
        PPO("CartPole-v1", random_state=seed, num_threads=1)
    start, cpu = time.perf_counter(), time.process_time()
    agent.learn(timesteps)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    mean, std = evaluate(agent, "CartPole-v1", n_episodes=n_episodes, random_state=10_000 + seed)
    return seconds, cpu, mean, std


def run(seeds, timesteps, n_episodes=100):
    """Each (implementation, seed) in a fresh Python process, torch first; prints a line per run and totals."""
    import json
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows = []
    for seed in seeds:
        for name in ("torch", "dlcore"):
            out = subprocess.run([sys.executable, "-m", "bench.bench_rl_ppo", "--one", name, "--seeds", str(seed),
                                  "--timesteps", str(timesteps), "--episodes", str(n_episodes)],
                                 cwd=root, env=env, capture_output=True, text=True, check=True).stdout
            seconds, cpu, mean, std = json.loads(out.strip().splitlines()[-1])
            rows.append((name, seed, seconds, cpu, mean, std))
            print(f"{name:>6} seed {seed}: {timesteps} steps in {seconds:7.1f} s wall ({cpu:6.1f} s CPU), greedy "
                  f"return over {n_episodes} episodes {mean:6.1f} +- {std:5.1f} "
                  f"({'reached' if mean >= BAR else 'MISSED'} the {BAR:.0f} bar)", flush=True)
    for col, what in ((2, "wall time"), (3, "CPU time")):
        t_torch = sum(r[col] for r in rows if r[0] == "torch")
        t_dl = sum(r[col] for r in rows if r[0] == "dlcore")
        print(f"total {what}: torch {t_torch:.1f} s, dlcore {t_dl:.1f} s; torch / dlcore = {t_torch / t_dl:.2f}x"
              f" ({'dlcore faster' if t_dl < t_torch else 'torch faster'})")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--timesteps", type=int, default=100_000)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--one", choices=("torch", "dlcore"), help="internal: run one side, print a JSON result")
    args = ap.parse_args(argv)
    if args.one:
        import json

        print(json.dumps(run_one(args.one, args.seeds[0], args.timesteps, args.episodes)))
        return 0
    run(args.seeds, args.timesteps, args.episodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
