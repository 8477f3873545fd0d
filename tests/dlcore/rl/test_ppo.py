"""dlcore.rl: PPO's API, spaces, errors, gradients against torch autograd, seeding, a short learning run,
evaluate(); and (slow) the CartPole-v1 bar: greedy mean return >= 475 over 100 episodes within 500k steps."""
from __future__ import annotations

import time

import numpy as np
import pytest

gym = pytest.importorskip("gymnasium")

from dlcore import Tensor
from dlcore.rl import PPO, evaluate
from dlcore.rl import ppo as P

TINY = {"n_envs": 2, "n_steps": 16, "batch_size": 16, "n_epochs": 2, "net_arch": (16,)}


class _RandomAgent:
    def __init__(self, space, seed=0):
        self.space, self.rng = space, np.random.default_rng(seed)

    def predict(self, obs):
        return self.rng.integers(0, self.space.n, size=len(obs))


class _MultiDiscreteEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.MultiDiscrete([2, 3])

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {}


# ------------------------------------------------------------------------------------------------ API
def test_api_shapes_and_history():
    agent = PPO("CartPole-v1", random_state=0, **TINY)
    assert agent.learn(64) is agent
    assert agent.num_timesteps == 64
    h = agent.history_
    assert len(h.epoch) == 2
    for key in ("timesteps", "mean_return", "episodes", "policy_loss", "value_loss", "entropy", "approx_kl",
                "clip_fraction", "learning_rate"):
        assert len(h[key]) == 2, key
    assert h["timesteps"] == [32.0, 64.0]
    assert h["learning_rate"][0] > h["learning_rate"][1]  # annealed
    assert 0.0 < h["entropy"][0] <= np.log(2) + 1e-6

    obs = np.zeros(4, np.float32)
    a = agent.predict(obs)
    assert isinstance(a, int) and a in (0, 1)
    batch = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    acts = agent.predict(batch)
    assert acts.shape == (5,) and acts.dtype.kind == "i" and set(acts.tolist()) <= {0, 1}
    stochastic = agent.predict(batch, deterministic=False)
    assert stochastic.shape == (5,)
    with pytest.raises(ValueError, match="shape"):
        agent.predict(np.zeros((5, 3), np.float32))
    assert agent.get_params()["n_envs"] == 2
    agent.close()


def test_env_instance_and_continuous_actions():
    env = gym.make("Pendulum-v1")
    agent = PPO(env, random_state=0, **TINY).learn(32)
    a = agent.predict(np.zeros(3, np.float32))
    assert a.shape == (1,) and -2.0 <= a[0] <= 2.0
    acts = agent.predict(np.zeros((4, 3), np.float32), deterministic=False)
    assert acts.shape == (4, 1) and np.all(np.abs(acts) <= 2.0)
    assert agent.history_["entropy"][-1] == pytest.approx(0.5 * (1 + np.log(2 * np.pi)), abs=0.05)
    mean, std = evaluate(agent, env, n_episodes=2, random_state=0)
    assert np.isfinite(mean) and std >= 0


def test_discrete_observations_one_hot():
    agent = PPO("FrozenLake-v1", random_state=0, **TINY).learn(32)
    assert agent.predict(0) in range(4)
    assert agent.predict(np.array([0, 5, 15])).shape == (3,)


def test_bad_envs_raise_clear_errors():
    with pytest.raises(TypeError, match="Discrete actions .* Box actions"):
        PPO(_MultiDiscreteEnv())
    with pytest.raises(TypeError, match="env must be"):
        PPO(42)
    vec = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    if vec.metadata.get("autoreset_mode") is not None and "next" in str(vec.metadata["autoreset_mode"]).lower():
        with pytest.raises(ValueError, match="same step"):
            PPO(vec)
    with pytest.raises(ValueError, match="n_steps"):
        PPO("CartPole-v1", n_steps=0)
    with pytest.raises(ValueError, match="gamma"):
        PPO("CartPole-v1", gamma=1.5)
    with pytest.raises(ValueError, match="total_timesteps"):
        PPO("CartPole-v1", **TINY).learn(0)


# ------------------------------------------------------------------------------------------------ gradients
def test_fused_mlp_matches_sequential_autograd():
    rng = np.random.default_rng(1)
    ac = P.ActorCritic(5, 3, False, (8, 6), "tanh", rng)
    x = rng.standard_normal((7, 5)).astype(np.float32)
    g = rng.standard_normal((7, 3)).astype(np.float32)
    ref = ac.actor(Tensor(x))
    ref.backward(g)
    ref_grads = {n: p.grad.copy() for n, p in ac.named_parameters() if n.startswith("actor")}
    ac.zero_grad()
    out = ac.fused("actor", x)
    np.testing.assert_allclose(out.data, ref.data, rtol=1e-6, atol=1e-6)
    out.backward(g)
    for n, p in ac.named_parameters():
        if n.startswith("actor"):
            np.testing.assert_allclose(p.grad, ref_grads[n], rtol=1e-5, atol=1e-6, err_msg=n)


def _torch_loss(torch, logits, values, actions, old, adv, ret, clip, ent_coef, vf_coef, log_std=None):
    if log_std is None:
        lp = torch.log_softmax(logits, -1)
        logp = lp.gather(1, actions[:, None]).squeeze(1)
        ent = -(lp.exp() * lp).sum(-1).mean()
    else:
        dist = torch.distributions.Normal(logits, log_std.exp())
        logp = dist.log_prob(actions).sum(-1)
        ent = dist.entropy().sum(-1).mean()
    ratio = (logp - old).exp()
    pg = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv).mean()
    return pg + vf_coef * torch.nn.functional.mse_loss(values.squeeze(-1), ret) - ent_coef * ent


@pytest.mark.parametrize("continuous", [False, True])
def test_loss_gradients_match_torch(continuous):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    b, d = 64, 3
    logits = rng.standard_normal((b, d)).astype(np.float32)
    values = rng.standard_normal((b, 1)).astype(np.float32)
    adv = rng.standard_normal(b).astype(np.float32)
    ret = rng.standard_normal(b).astype(np.float32)
    log_std = np.array([-0.3, 0.1, 0.4], np.float32)
    if continuous:
        actions = (logits + np.exp(log_std) * rng.standard_normal((b, d))).astype(np.float32)
        z = (actions - logits) / np.exp(log_std)
        old = (-0.5 * (z * z).sum(1) - log_std.sum() - 1.5 * np.log(2 * np.pi)).astype(np.float32)
    else:
        actions = rng.integers(0, d, b)
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        old = lp[np.arange(b), actions].astype(np.float32)
    old = old + (0.4 * rng.standard_normal(b)).astype(np.float32)  # ratios on both sides of the clip
    args = {"clip": 0.2, "ent_coef": 0.05, "vf_coef": 0.5}

    tl, tv, ts = (Tensor(a.copy(), requires_grad=True) for a in (logits, values, log_std))
    if continuous:
        loss, stats = P._ppo_loss_gaussian(tl, ts, tv, actions, old, adv, ret, **args)
    else:
        loss, stats = P._ppo_loss_discrete(tl, tv, actions, old, adv, ret, **args)
    assert 0.0 < stats["clip_fraction"] < 1.0
    loss.backward()

    ql, qv, qs = (torch.tensor(a, requires_grad=True) for a in (logits, values, log_std))
    ref = _torch_loss(torch, ql, qv, torch.tensor(actions), torch.tensor(old), torch.tensor(adv),
                      torch.tensor(ret), log_std=qs if continuous else None, **args)
    ref.backward()
    assert float(loss.data) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(tl.grad, ql.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(tv.grad, qv.grad.numpy(), rtol=1e-4, atol=1e-6)
    if continuous:
        np.testing.assert_allclose(ts.grad, qs.grad.numpy(), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ seeds
def test_seeds_reproducible():
    def run(seed):
        agent = PPO("CartPole-v1", random_state=seed, **TINY).learn(96)
        return agent.history_.history, agent._flat.data.copy()

    h1, w1 = run(3)
    h2, w2 = run(3)
    _, w3 = run(4)
    np.testing.assert_array_equal(w1, w2)
    assert h1 == h2
    assert not np.array_equal(w1, w3)


# ------------------------------------------------------------------------------------------------ learning
def test_short_run_beats_random_policy():
    env_id = "CartPole-v1"
    rand_mean, _ = evaluate(_RandomAgent(gym.spaces.Discrete(2)), env_id, n_episodes=20, random_state=0)
    agent = PPO(env_id, random_state=0).learn(6_000)
    mean, _ = evaluate(agent, env_id, n_episodes=20, random_state=0)
    assert rand_mean < 40
    assert mean > 2 * rand_mean, (mean, rand_mean)
    assert agent.history_["mean_return"][-1] > rand_mean


def test_callback_stops_and_verbose_prints(capsys):
    agent = PPO("CartPole-v1", random_state=0, verbose=1, **TINY)
    agent.learn(32 * 10, callback=lambda a: len(a.history_.epoch) < 3)
    assert len(agent.history_.epoch) == 3
    err = capsys.readouterr().err
    assert "PPO iteration" in err
    agent.learn(32, progress_bar=True)  # the tqdm bar, forced on although stderr is captured
    assert agent.num_timesteps == 32 * 4


def test_evaluate_contract():
    agent = _RandomAgent(gym.spaces.Discrete(2))
    mean, std = evaluate(agent, "CartPole-v1", n_episodes=7, random_state=0)
    assert isinstance(mean, float) and isinstance(std, float) and 8 <= mean <= 100
    m2, _ = evaluate(lambda obs: np.zeros(len(obs), np.int64), gym.make("CartPole-v1"), n_episodes=3,
                     random_state=0)
    assert 8 <= m2 <= 12  # always pushing left ends within a few steps
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate(agent, "CartPole-v1", n_episodes=0)
    with pytest.raises(TypeError, match="predict"):
        evaluate(object(), "CartPole-v1", n_episodes=1)


# ------------------------------------------------------------------------------------------------ the bar
@pytest.mark.slow
def test_cartpole_bar_with_default_hyperparameters():
    start = time.perf_counter()
    agent = PPO("CartPole-v1", random_state=0).learn(100_000)
    seconds = time.perf_counter() - start
    mean, std = evaluate(agent, "CartPole-v1", n_episodes=100, random_state=123)
    print(f"\nPPO CartPole-v1: {agent.num_timesteps} env steps, {seconds:.1f} s training, greedy return over 100 "
          f"episodes {mean:.1f} +- {std:.1f}")
    assert agent.num_timesteps <= 500_000
    assert mean >= 475, (mean, std)
