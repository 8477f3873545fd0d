"""Proximal Policy Optimization (Schulman et al. 2017, clipped surrogate) on dlcore.

One `PPO` object owns a Gymnasium vector environment (``n_envs`` copies, stepped together), an actor-critic
(two ``net_arch`` MLPs built from `dlcore.nn.Linear` layers) and a `dlcore.optim.Adam`. Each iteration:

1. roll out ``n_steps`` steps in every environment (one batched policy forward per vector step, no per-env
   Python loop), bootstrapping the value of time-limit truncations;
2. GAE(lambda) advantages and returns, with one batched critic forward over the whole rollout;
3. ``n_epochs`` passes over the rollout in shuffled minibatches of ``batch_size``: the clipped surrogate,
   the value loss and the entropy bonus in one fused loss node (`_ppo_loss_discrete` /
   `_ppo_loss_gaussian`: forward and hand-derived gradient in a few whole-array NumPy passes, no
   per-sample loops), `Tensor.backward` through the MLPs, global-norm clipping and one fused Adam step.

The network's parameters live in one flat float32 buffer (each `Parameter` is a view into it), so gradient
clipping and the Adam update are a single kernel call each per minibatch instead of one per tensor.

Action spaces: `Discrete` (categorical policy: log_softmax over logits, sampled by inverse CDF) and `Box`
(diagonal Gaussian policy with a state-independent learned log-std; sampled actions are clipped to the
bounds before they reach the environment). Observation spaces: `Box` (flattened to float32) and
`Discrete` (one-hot). Anything else raises a `TypeError` naming the space.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import itertools
import math
import sys
import time

import numpy as np

from dlcore import ops
from dlcore.autograd import Node, Tensor, is_grad_enabled
from dlcore.nn import Linear, Module, Parameter, ReLU, Sequential, Tanh
from dlcore.nn import init as nn_init
from dlcore.nn.utils import clip_grad_norm_
from dlcore.optim import Adam
from dlcore.train import History

_LOG_2PI = math.log(2.0 * math.pi)
_F32 = np.float32


# ------------------------------------------------------------------------------------------------ gymnasium
def _gym():
    try:
        import gymnasium
    except ImportError:  # pragma: no cover - gymnasium is in the 'tasks' extra
        raise ImportError("dlcore.rl needs Gymnasium: pip install gymnasium (or pip install 'dlcore[tasks]')") \
            from None
    return gymnasium


def _remakeable(gym, spec):
    """Whether ``gymnasium.make(spec)`` works (a registered id with re-creatable wrappers)."""
    try:
        gym.make(spec).close()
    except Exception:  # noqa: BLE001 - not re-creatable from its spec: the caller copies the instance instead
        return False
    return True


def _env_factory(env, env_kwargs):
    """A zero-argument callable that builds one fresh copy of ``env`` (an id or an `Env` instance)."""
    gym = _gym()
    if isinstance(env, str):
        kwargs = dict(env_kwargs or {})
        return lambda: gym.make(env, **kwargs)
    if isinstance(env, gym.Env):
        spec = None
        try:
            spec = env.spec
        except Exception:  # noqa: BLE001 - a wrapper that cannot describe itself: fall back to copying
            spec = None
        if spec is not None and _remakeable(gym, spec):
            return lambda: gym.make(spec)
        try:
            copy.deepcopy(env)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot make copies of {env!r} for the vector environment (it has no usable spec "
                             f"and deepcopy failed: {e}); pass its registered id instead") from None
        return lambda: copy.deepcopy(env)
    raise TypeError(f"env must be a Gymnasium environment id (str), a gymnasium.Env or a gymnasium.vector.VectorEnv,"
                    f" got {type(env).__module__}.{type(env).__qualname__}")


def make_vec_env(env, n_envs=1, env_kwargs=None):
    """A `gymnasium.vector.SyncVectorEnv` of ``n_envs`` copies of ``env`` that autoresets in the same step.

    Args:
        env: a registered id (``"CartPole-v1"``), a `gymnasium.Env` (re-created from its spec, else deep
            copied), or a `gymnasium.vector.VectorEnv` (returned as is; it must autoreset in the same step).
        n_envs: how many copies to step together.
        env_kwargs: keyword arguments for ``gymnasium.make`` when ``env`` is an id.

    Returns:
        The vector environment. Same-step autoreset means that when an episode ends, the observation returned
        is already the next episode's first one and the last one sits in ``info["final_obs"]``.

    Raises:
        TypeError: ``env`` is none of the above.
        ValueError: a vector environment that autoresets on the next step, or ``n_envs < 1``.
    """
    gym = _gym()
    if isinstance(env, gym.vector.VectorEnv):
        mode = env.metadata.get("autoreset_mode")
        if mode is not None and str(getattr(mode, "value", mode)).lower() not in ("sameStep".lower(), "same_step"):
            raise ValueError(f"PPO needs a vector environment that autoresets in the same step, this one uses "
                             f"{mode}; build it with autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP or "
                             f"pass the environment id")
        return env
    if not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
        raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
    factory = _env_factory(env, env_kwargs)
    kwargs = {}
    if hasattr(gym.vector, "AutoresetMode"):  # gymnasium >= 1.1 (older versions always reset in the same step)
        kwargs["autoreset_mode"] = gym.vector.AutoresetMode.SAME_STEP
    return gym.vector.SyncVectorEnv([factory for _ in range(int(n_envs))], copy=False, **kwargs)


def _final_observations(info):
    """(mask, final observations) of the sub-environments whose episode ended this step, or (None, None)."""
    for key in ("final_obs", "final_observation"):
        if key in info:
            return np.asarray(info["_" + key], dtype=bool), info[key]
    return None, None


# ------------------------------------------------------------------------------------------------ spaces
class _ObsEncoder:
    """Batches of observations -> ``(N, dim)`` float32 network inputs (Box: flattened; Discrete: one-hot)."""

    def __init__(self, space):
        gym = _gym()
        self.space = space
        if isinstance(space, gym.spaces.Box):
            self.discrete = False
            self.shape = tuple(space.shape)
            self.dim = int(np.prod(self.shape)) if self.shape else 1
        elif isinstance(space, gym.spaces.Discrete):
            self.discrete = True
            self.shape = ()
            self.n, self.start = int(space.n), int(space.start)
            self.dim = self.n
            self._eye = np.eye(self.n, dtype=_F32)
        else:
            raise TypeError(f"PPO supports Box and Discrete observation spaces, got {space}")

    def encode(self, obs):
        """(inputs ``(N, dim)``, whether ``obs`` was a single observation)."""
        a = np.asarray(obs)
        if self.discrete:
            single = a.ndim == 0
            idx = a.reshape(-1).astype(np.int64) - self.start
            if idx.size and (idx.min() < 0 or idx.max() >= self.n):
                raise ValueError(f"observation out of range for {self.space}")
            return self._eye[idx], single
        single = a.shape == self.shape
        if not single and a.shape[1:] != self.shape:
            raise ValueError(f"observations must have shape {self.shape} or (batch,) + {self.shape}, got {a.shape}")
        return np.ascontiguousarray(a.reshape(-1, self.dim), dtype=_F32), single


class _ActionSpace:
    """What the policy head outputs for an action space and how its actions reach the environment."""

    def __init__(self, space):
        gym = _gym()
        self.space = space
        if isinstance(space, gym.spaces.Discrete):
            self.continuous = False
            self.n, self.start = int(space.n), int(space.start)
            self.dim = self.n  # logits
            self.shape = ()
        elif isinstance(space, gym.spaces.Box):
            if not np.issubdtype(space.dtype, np.floating):
                raise TypeError(f"PPO's Gaussian policy needs a floating-point Box action space, got {space}")
            self.continuous = True
            self.shape = tuple(space.shape)
            self.dim = int(np.prod(self.shape)) if self.shape else 1
            self.low = np.asarray(space.low, _F32).reshape(-1)
            self.high = np.asarray(space.high, _F32).reshape(-1)
        else:
            raise TypeError(
                f"PPO supports Discrete actions (categorical policy) and Box actions (Gaussian policy); "
                f"got {type(space).__name__} action space {space}")

    def to_env(self, actions):
        """Policy actions ``(N,)`` or ``(N, dim)`` -> what ``env.step`` takes for N environments."""
        if not self.continuous:
            return actions + self.start if self.start else actions
        clipped = np.clip(actions, self.low, self.high)
        return clipped.reshape((len(actions),) + self.shape).astype(self.space.dtype, copy=False)


# ------------------------------------------------------------------------------------------------ networks
def _orthogonal(shape, gain, rng):
    """A ``(rows, cols)`` matrix with orthonormal rows or columns, times ``gain`` (torch.nn.init.orthogonal_)."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q[:rows, :cols]).astype(_F32)


_ACTIVATIONS = {"tanh": Tanh, "relu": ReLU}


def _mlp(sizes, activation, rng, head_gain):
    """Linear layers of ``sizes`` with ``activation`` between them; orthogonal init (gain sqrt 2, head
    ``head_gain``), zero biases, as in Stable-Baselines3 and CleanRL."""
    saved = nn_init._rng  # Linear's default init draws from dlcore's global generator: leave it untouched
    nn_init._rng = np.random.default_rng(0)
    try:
        layers = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            last = i == len(sizes) - 2
            lin = Linear(fan_in, fan_out)
            lin.weight = Parameter(_orthogonal((fan_out, fan_in), head_gain if last else math.sqrt(2.0), rng))
            lin.bias = Parameter(np.zeros(fan_out, _F32))
            layers.append(lin)
            if not last:
                layers.append(_ACTIVATIONS[activation]())
    finally:
        nn_init._rng = saved
    return Sequential(*layers)


class _Kernels:
    """The linear and log_softmax kernels dispatch picks for NumPy arrays, resolved once per `learn` or
    `predict` call (so ``dlcore.backend(...)`` and ``$DLCORE_BACKEND`` are honoured) and then called
    directly: PPO's arrays are a few hundred rows, where per-call dispatch would cost more than the math."""

    def __init__(self):
        from dlcore import _dispatch

        lin = _dispatch.resolve("linear", "numpy").module
        self.linear, self.linear_backward = lin.linear, lin.linear_backward
        self.log_softmax = _dispatch.resolve("log_softmax", "numpy").module.log_softmax_forward


def _activate(name, y):
    return np.tanh(y) if name == "tanh" else np.maximum(y, _F32(0.0))


def _activation_grad(name, g, h):
    """Gradient through the activation given its output ``h``."""
    return g * (1.0 - h * h) if name == "tanh" else g * (h > 0)


def _mlp_forward(kernels, linears, activation, x):
    """The MLP's output for ``x`` ``(N, in)`` (a plain array; no graph)."""
    h = x
    last = len(linears) - 1
    for i, lin in enumerate(linears):
        h = kernels.linear(h, lin.weight.data, lin.bias.data)
        if i < last:
            h = _activate(activation, h)
    return h


def _mlp_node(kernels, linears, activation, x):
    """The MLP's output for ``x`` as one autograd node: every layer's forward in a row, and one backward
    closure that runs the ``linear_backward`` kernels and activation gradients down the stack (the same
    numbers as autograd through the `Sequential`, with one node instead of one per layer)."""
    hs = [x]
    h = x
    last = len(linears) - 1
    for i, lin in enumerate(linears):
        h = kernels.linear(h, lin.weight.data, lin.bias.data)
        if i < last:
            h = _activate(activation, h)
        hs.append(h)
    params = [p for lin in linears for p in (lin.weight, lin.bias)]
    out = Tensor(h)
    if not (is_grad_enabled() and any(p.requires_grad for p in params)):
        return out

    def backward(g):
        grads = [None] * len(params)
        g = np.ascontiguousarray(g, dtype=_F32)
        for i in range(last, -1, -1):
            lin = linears[i]
            gx, grads[2 * i], grads[2 * i + 1] = kernels.linear_backward(g, hs[i], lin.weight.data, True)
            if i:
                g = _activation_grad(activation, gx, hs[i])
        return grads

    out.requires_grad = True
    out._node = Node(tuple(params), backward, "mlp")
    return out


class ActorCritic(Module):
    """Separate actor and critic MLPs (and, for Box actions, a learned log standard deviation).

    ``policy.actor`` and ``policy.critic`` are `dlcore.nn.Sequential` stacks of `Linear` and activation
    layers and can be called like any module; PPO itself runs them through `fused`, which computes the same
    numbers with one autograd node per network.

    Args:
        obs_dim: network input size.
        act_dim: number of logits (Discrete actions) or action dimensions (Box actions).
        continuous: Gaussian policy (True) or categorical (False).
        net_arch: hidden layer sizes, shared by both networks.
        activation: 'tanh' or 'relu'.
        rng: a `numpy.random.Generator` for the orthogonal initialisation.
        log_std_init: initial log standard deviation of the Gaussian policy.
    """

    def __init__(self, obs_dim, act_dim, continuous, net_arch=(64, 64), activation="tanh", rng=None,
                 log_std_init=0.0):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        hidden = tuple(int(h) for h in net_arch)
        self.activation = activation
        self.actor = _mlp((obs_dim,) + hidden + (act_dim,), activation, rng, head_gain=0.01)
        self.critic = _mlp((obs_dim,) + hidden + (1,), activation, rng, head_gain=1.0)
        self.continuous = bool(continuous)
        if continuous:
            self.log_std = Parameter(np.full(act_dim, log_std_init, _F32))

    def forward(self, x):
        """(actor output, critic output ``(N, 1)``) for inputs ``x`` ``(N, obs_dim)``."""
        return self.actor(x), self.critic(x)

    def linears(self, net):
        """The `Linear` layers of ``'actor'`` or ``'critic'``, in order."""
        return [m for m in getattr(self, net) if isinstance(m, Linear)]

    def fused(self, net, x, kernels=None, grad=True):
        """``self.actor(x)`` or ``self.critic(x)`` (``net`` names which) with one autograd node for the
        whole MLP, or as a plain array when ``grad`` is False. ``x`` is a float32 array ``(N, obs_dim)``."""
        kernels = kernels or _Kernels()
        if grad:
            return _mlp_node(kernels, self.linears(net), self.activation, x)
        return _mlp_forward(kernels, self.linears(net), self.activation, x)


def _flatten_parameters(params):
    """Move every parameter into one contiguous float32 buffer; each `Parameter.data` becomes a view."""
    total = sum(p.size for p in params)
    flat = np.empty(total, _F32)
    offset = 0
    for p in params:
        n = p.size
        flat[offset:offset + n] = np.asarray(p.data, _F32).reshape(-1)
        p.data = flat[offset:offset + n].reshape(p.shape)
        offset += n
    return flat


# ------------------------------------------------------------------------------------------------ fused losses
def _loss_node(value, parents, backward, name):
    """A scalar Tensor whose gradient node calls ``backward(g) -> grads per parent``."""
    out = Tensor(np.asarray(value, _F32))
    if is_grad_enabled() and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._node = Node(tuple(p if p.requires_grad else None for p in parents), backward, name)
    return out


def _surrogate(logp, old_logp, adv, clip):
    """Clipped surrogate pieces: (policy loss, d loss / d logp, ratio, log ratio)."""
    log_ratio = logp - old_logp
    ratio = np.exp(log_ratio)
    s1 = ratio * adv
    s2 = np.clip(ratio, 1.0 - clip, 1.0 + clip) * adv
    unclipped = s1 <= s2  # where min() picks the unclipped term, its gradient flows; else the clip blocks it
    pg_loss = -float(np.minimum(s1, s2).mean())
    d_logp = np.where(unclipped, s1 * (-1.0 / len(adv)), _F32(0.0)).astype(_F32, copy=False)
    return pg_loss, d_logp, ratio, log_ratio


def _stats(pg_loss, v_loss, entropy, ratio, log_ratio, clip):
    return {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy,
            "approx_kl": float(((ratio - 1.0) - log_ratio).mean()),
            "clip_fraction": float((np.abs(ratio - 1.0) > clip).mean())}


def _ppo_loss_discrete(logits, values, actions, old_logp, adv, returns, clip, ent_coef, vf_coef, kernels=None):
    """``pg_loss + vf_coef * mse(values, returns) - ent_coef * entropy`` for a categorical policy, as one
    autograd node (log_softmax runs on dlcore's fused kernel; the gradient is derived by hand).

    Args:
        logits: Tensor ``(B, A)``; values: Tensor ``(B, 1)`` or ``(B,)``.
        actions: int array ``(B,)``; old_logp, adv, returns: float32 ``(B,)``.

    Returns:
        (scalar loss Tensor, dict of float statistics).
    """
    x = logits.data
    b = x.shape[0]
    lp = kernels.log_softmax(np.ascontiguousarray(x)) if kernels is not None else ops.log_softmax(x)
    p = np.exp(lp)
    rows = np.arange(b)
    logp = lp[rows, actions]
    pg_loss, d_logp, ratio, log_ratio = _surrogate(logp, old_logp, adv, clip)
    plp = p * lp
    ent_rows = -plp.sum(axis=1)
    entropy = float(ent_rows.mean())
    v = values.data.reshape(b)
    diff = v - returns
    v_loss = float(np.dot(diff, diff) / b)
    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy

    def backward(g):
        g = _F32(g)
        w = d_logp * g if g != 1 else d_logp
        gl = p * (-w)[:, None]  # d logp_a / d logits = onehot(a) - p
        gl[rows, actions] += w
        if ent_coef:
            gl += (g * _F32(ent_coef / b)) * (plp + p * ent_rows[:, None])  # -ent_coef * dH/dlogits
        gv = (g * _F32(2.0 * vf_coef / b)) * diff
        return gl, gv.reshape(values.shape)

    return _loss_node(loss, (logits, values), backward, "ppo_loss_discrete"), \
        _stats(pg_loss, v_loss, entropy, ratio, log_ratio, clip)


def _ppo_loss_gaussian(mean, log_std, values, actions, old_logp, adv, returns, clip, ent_coef, vf_coef):
    """The same loss for a diagonal Gaussian policy ``N(mean, exp(log_std)^2)`` as one autograd node.

    Args:
        mean: Tensor ``(B, D)``; log_std: Tensor ``(D,)``; values: Tensor ``(B, 1)`` or ``(B,)``.
        actions: float32 ``(B, D)`` (unclipped samples); old_logp, adv, returns: float32 ``(B,)``.
    """
    mu, ls = mean.data, log_std.data
    b = mu.shape[0]
    inv_std = np.exp(-ls)
    z = (actions - mu) * inv_std
    logp = -0.5 * (z * z).sum(axis=1) - ls.sum() - _F32(0.5 * _LOG_2PI * mu.shape[1])
    pg_loss, d_logp, ratio, log_ratio = _surrogate(logp.astype(_F32), old_logp, adv, clip)
    entropy = float(ls.sum() + 0.5 * (1.0 + _LOG_2PI) * mu.shape[1])
    v = values.data.reshape(b)
    diff = v - returns
    v_loss = float(np.dot(diff, diff) / b)
    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy

    def backward(g):
        g = _F32(g)
        w = (d_logp * g)[:, None]
        g_mu = w * z * inv_std  # d logp / d mean = z / std
        g_ls = (w * (z * z - 1.0)).sum(axis=0) - g * _F32(ent_coef)  # d logp / d log_std = z^2 - 1; dH = 1
        gv = (g * _F32(2.0 * vf_coef / b)) * diff
        return g_mu.astype(_F32, copy=False), g_ls.astype(_F32, copy=False), gv.reshape(values.shape)

    return _loss_node(loss, (mean, log_std, values), backward, "ppo_loss_gaussian"), \
        _stats(pg_loss, v_loss, entropy, ratio, log_ratio, clip)


@contextlib.contextmanager
def _thread_limit(n):
    """Run the block with at most ``n`` Numba threads and ``n`` BLAS/OpenMP threads (threadpoolctl, when
    installed); both are restored afterwards. ``n=None`` changes nothing."""
    if n is None:
        yield
        return
    import numba

    old = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(int(n))
    try:
        with limits:
            yield
    finally:
        numba.set_num_threads(old)


# ------------------------------------------------------------------------------------------------ PPO
class PPO:
    """Proximal Policy Optimization with clipped surrogate, GAE(lambda) and an entropy bonus.

    The defaults (8 environments x 32 steps per rollout, one 256-sample minibatch, 20 epochs, lr 1e-3
    annealed linearly to 0, gamma 0.98, lambda 0.8, 64x64 tanh MLPs) are the RL-Zoo settings for classic
    control; they take CartPole-v1 to a 500 return in about 100k environment steps.

    Args:
        env: a Gymnasium environment id (``"CartPole-v1"``), a `gymnasium.Env` (re-created from its spec
            ``n_envs`` times), or a `gymnasium.vector.VectorEnv` with same-step autoreset.
        n_envs: environments stepped together (ignored for a vector environment).
        n_steps: steps per environment in each rollout; a rollout holds ``n_envs * n_steps`` transitions.
        batch_size: minibatch size of the update.
        n_epochs: passes over each rollout.
        learning_rate: Adam's learning rate (the start value when ``anneal_lr``).
        anneal_lr: decay the learning rate linearly to 0 over each `learn` call.
        gamma: discount factor.
        gae_lambda: GAE's lambda (1: Monte-Carlo returns, 0: one-step TD).
        clip_range: PPO's clip epsilon on the probability ratio.
        anneal_clip_range: decay ``clip_range`` linearly to 0 over each `learn` call as well.
        ent_coef: entropy bonus weight.
        vf_coef: value loss weight.
        max_grad_norm: clip the global gradient norm to this (None: no clipping).
        normalize_advantage: standardise advantages within each minibatch.
        net_arch: hidden layer sizes of the actor and of the critic.
        activation: 'tanh' or 'relu'.
        log_std_init: initial log standard deviation (Box actions only).
        adam_eps: Adam's epsilon.
        env_kwargs: keyword arguments for ``gymnasium.make`` when ``env`` is an id.
        stats_window: ``mean_return`` in the history averages this many most recent training episodes.
        num_threads: threads for the Numba and BLAS kernels while `learn` runs (restored afterwards; None
            leaves them alone). A 64-unit MLP on a few hundred samples is fastest on one thread: waking a
            thread pool costs more than the product.
        random_state: seed for initialisation, action sampling, minibatch order and environment resets.
        verbose: 0 silent; 1 a progress bar over timesteps (when stderr is a terminal; a few summary lines
            otherwise); 2 a line per iteration.

    Attributes:
        policy: the `ActorCritic` module.
        history_: a `dlcore.train.History`, one entry per iteration with ``timesteps``, ``mean_return``,
            ``episodes``, ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``, ``clip_fraction`` and
            ``learning_rate``.
        num_timesteps: environment steps taken by `learn` so far (all environments together).

    Raises:
        TypeError: an unsupported observation or action space (e.g. MultiDiscrete actions).
        ValueError: an invalid hyperparameter.

    Example:
        >>> agent = PPO("CartPole-v1", random_state=0).learn(100_000)
        >>> dlcore.rl.evaluate(agent, "CartPole-v1")
        (500.0, 0.0)
    """

    def __init__(self, env, *, n_envs=8, n_steps=32, batch_size=256, n_epochs=20, learning_rate=1e-3,
                 anneal_lr=True, gamma=0.98, gae_lambda=0.8, clip_range=0.2, anneal_clip_range=False,
                 ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, normalize_advantage=True, net_arch=(64, 64),
                 activation="tanh", log_std_init=0.0, adam_eps=1e-5, env_kwargs=None, stats_window=100,
                 num_threads=1, random_state=None, verbose=0):
        self.env = env
        self.n_envs, self.n_steps, self.batch_size, self.n_epochs = n_envs, n_steps, batch_size, n_epochs
        self.learning_rate, self.anneal_lr = learning_rate, anneal_lr
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.clip_range, self.anneal_clip_range = clip_range, anneal_clip_range
        self.ent_coef, self.vf_coef, self.max_grad_norm = ent_coef, vf_coef, max_grad_norm
        self.normalize_advantage = normalize_advantage
        self.net_arch, self.activation, self.log_std_init = tuple(net_arch), activation, log_std_init
        self.adam_eps, self.env_kwargs, self.stats_window = adam_eps, env_kwargs, stats_window
        self.num_threads = num_threads
        self.random_state, self.verbose = random_state, verbose
        self._check_hyperparameters()

        self.rng = np.random.default_rng(random_state)
        self.envs = make_vec_env(env, n_envs, env_kwargs)
        self.n_envs = int(self.envs.num_envs)
        try:
            self._obs = _ObsEncoder(self.envs.single_observation_space)
            self._act = _ActionSpace(self.envs.single_action_space)
        except TypeError:
            if self.envs is not env:
                self.envs.close()
            raise
        self.observation_space = self.envs.single_observation_space
        self.action_space = self.envs.single_action_space

        self.policy = ActorCritic(self._obs.dim, self._act.dim, self._act.continuous, self.net_arch,
                                  activation, self.rng, log_std_init)
        self._params = list(self.policy.parameters())
        self._actor_layers, self._critic_layers = self.policy.linears("actor"), self.policy.linears("critic")
        self._kernels = _Kernels()
        self._flat = Parameter(_flatten_parameters(self._params))
        self.optimizer = Adam([self._flat], lr=learning_rate, eps=adam_eps)

        self.history_ = History()
        self.num_timesteps = 0
        self._iteration = 0
        self._last_obs = None
        self._env_seed = int(self.rng.integers(2 ** 31 - 1))
        self._ep_return = np.zeros(self.n_envs, np.float64)
        self._recent_returns = collections.deque(maxlen=int(stats_window))
        self._n_episodes = 0

    # -------------------------------------------------------------------------------------------- params
    def _check_hyperparameters(self):
        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PPO: {name} must be a positive integer, got {v!r}")

        for name in ("n_steps", "batch_size", "n_epochs", "stats_window"):
            positive_int(name)
        if self.num_threads is not None:
            positive_int("num_threads")
        if not self.learning_rate > 0:
            raise ValueError(f"PPO: learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"PPO: gamma must be in [0, 1], got {self.gamma!r}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"PPO: gae_lambda must be in [0, 1], got {self.gae_lambda!r}")
        if not self.clip_range > 0:
            raise ValueError(f"PPO: clip_range must be > 0, got {self.clip_range!r}")
        for name in ("ent_coef", "vf_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"PPO: {name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"PPO: max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"PPO: activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if not self.net_arch or any(int(h) < 1 for h in self.net_arch):
            raise ValueError(f"PPO: net_arch must list positive layer sizes, got {self.net_arch!r}")

    _PARAM_NAMES = ("n_envs", "n_steps", "batch_size", "n_epochs", "learning_rate", "anneal_lr", "gamma",
                    "gae_lambda", "clip_range", "anneal_clip_range", "ent_coef", "vf_coef", "max_grad_norm",
                    "normalize_advantage", "net_arch", "activation", "log_std_init", "adam_eps", "env_kwargs",
                    "stats_window", "num_threads", "random_state", "verbose")

    def get_params(self, deep=True):
        """The constructor's hyperparameters (scikit-learn convention), without ``env``."""
        return {k: getattr(self, k) for k in self._PARAM_NAMES}

    # -------------------------------------------------------------------------------------------- policy
    def _actor_out(self, x):
        return _mlp_forward(self._kernels, self._actor_layers, self.activation, x)

    def _values(self, x):
        return _mlp_forward(self._kernels, self._critic_layers, self.activation, x).reshape(-1)

    def _sample(self, out):
        """(actions, log-probabilities) sampled from the policy head's outputs ``out`` for a batch."""
        if self._act.continuous:
            ls = self.policy.log_std.data
            eps = self.rng.standard_normal(out.shape, dtype=_F32)
            actions = out + np.exp(ls) * eps
            logp = -0.5 * (eps * eps).sum(axis=1) - ls.sum() - _F32(0.5 * _LOG_2PI * out.shape[1])
            return actions, logp.astype(_F32, copy=False)
        lp = self._kernels.log_softmax(np.ascontiguousarray(out))
        cdf = np.cumsum(np.exp(lp), axis=1)
        u = self.rng.random((len(out), 1), dtype=_F32) * cdf[:, -1:]
        actions = (u > cdf[:, :-1]).sum(axis=1)
        return actions, lp[np.arange(len(out)), actions]

    def predict(self, obs, deterministic=True):
        """Actions for one observation or a batch of them.

        Args:
            obs: one observation (the observation space's shape) or a batch ``(N, ...)``.
            deterministic: the most likely action (argmax logits / the Gaussian mean) instead of a sample.

        Returns:
            For Discrete actions an int (one observation) or an int64 array ``(N,)``; for Box actions an array
            of the action space's shape (or ``(N,) + shape``), clipped to its bounds.
        """
        x, single = self._obs.encode(obs)
        self._kernels = _Kernels()
        out = self._actor_out(x)
        if deterministic:
            actions = out if self._act.continuous else out.argmax(axis=1)
        else:
            actions, _ = self._sample(out)
        env_actions = self._act.to_env(actions)
        if single:
            a = env_actions[0]
            return a.item() if np.ndim(a) == 0 else a
        return env_actions

    def __call__(self, obs):
        return self.predict(obs)

    # -------------------------------------------------------------------------------------------- learning
    def learn(self, total_timesteps, callback=None, progress_bar=None):
        """Train for ``total_timesteps`` environment steps (rounded up to whole rollouts); returns ``self``.

        Calling `learn` again continues training (the learning-rate annealing restarts for the new budget).

        Args:
            total_timesteps: environment steps, counted over all ``n_envs`` environments.
            callback: called as ``callback(self)`` after every iteration; returning ``False`` stops training.
            progress_bar: force the tqdm bar on or off (default: ``verbose`` and stderr is a terminal).

        Returns:
            self, with ``history_`` extended by one entry per iteration.
        """
        if not isinstance(total_timesteps, (int, np.integer)) or total_timesteps < 1:
            raise ValueError(f"learn: total_timesteps must be a positive integer, got {total_timesteps!r}")
        n, t_len = self.n_envs, self.n_steps
        per_rollout = n * t_len
        n_iter = max(1, math.ceil(total_timesteps / per_rollout))
        cont = self._act.continuous
        obs_buf = np.zeros((t_len, n, self._obs.dim), _F32)
        act_buf = np.zeros((t_len, n, self._act.dim), _F32) if cont else np.zeros((t_len, n), np.int64)
        logp_buf = np.zeros((t_len, n), _F32)
        rew_buf = np.zeros((t_len, n), _F32)
        done_buf = np.zeros((t_len, n), _F32)

        if self._last_obs is None:
            obs, _ = self.envs.reset(seed=self._env_seed)
            self._last_obs = self._obs.encode(obs)[0].reshape(n, -1)
        use_bar = (self.verbose and sys.stderr.isatty()) if progress_bar is None else bool(progress_bar)
        bar = None
        if use_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_iter * per_rollout, desc="PPO", unit="step", dynamic_ncols=True, leave=False)
        self._kernels = _Kernels()
        start = time.perf_counter()
        report_every = max(1, n_iter // 10)
        try:
            with _thread_limit(self.num_threads):
                self._learn_loop(n_iter, per_rollout, bar, report_every, callback,
                                 (obs_buf, act_buf, logp_buf, rew_buf, done_buf))
        finally:
            if bar is not None:
                bar.close()
            self.history_.seconds += time.perf_counter() - start
        return self

    def _learn_loop(self, n_iter, per_rollout, bar, report_every, callback, buffers):
        obs_buf, act_buf, logp_buf, rew_buf, done_buf = buffers
        for it in range(n_iter):
            frac = 1.0 - it / n_iter
            lr = self.learning_rate * frac if self.anneal_lr else self.learning_rate
            clip = self.clip_range * frac if self.anneal_clip_range else self.clip_range
            self.optimizer.param_groups[0]["lr"] = lr
            self._rollout(obs_buf, act_buf, logp_buf, rew_buf, done_buf)
            self.num_timesteps += per_rollout
            stats = self._update(obs_buf, act_buf, logp_buf, rew_buf, done_buf, clip)
            mean_ret = float(np.mean(self._recent_returns)) if self._recent_returns else float("nan")
            values = {"timesteps": self.num_timesteps, "mean_return": mean_ret, "episodes": self._n_episodes,
                      **stats, "learning_rate": lr}
            self.history_.append(self._iteration, values)
            self._iteration += 1
            if bar is not None:
                bar.update(per_rollout)
                bar.set_postfix(mean_return=f"{mean_ret:.1f}", entropy=f"{stats['entropy']:.3f}")
            elif self.verbose >= 2 or (self.verbose and ((it + 1) % report_every == 0 or it + 1 == n_iter)):
                print(f"PPO iteration {it + 1}/{n_iter}: timesteps {self.num_timesteps}, mean_return "
                      f"{mean_ret:.1f}, policy_loss {stats['policy_loss']:.4f}, value_loss "
                      f"{stats['value_loss']:.4f}, entropy {stats['entropy']:.4f}", file=sys.stderr)
            if callback is not None and callback(self) is False:
                break

    def _rollout(self, obs_buf, act_buf, logp_buf, rew_buf, done_buf):
        """Fill the buffers with ``n_steps`` batched steps of every environment."""
        obs = self._last_obs
        envs, enc, act = self.envs, self._obs, self._act
        recent, ep_ret = self._recent_returns, self._ep_return
        for t in range(self.n_steps):
            obs_buf[t] = obs
            actions, logp = self._sample(self._actor_out(obs))
            next_obs, rewards, terminated, truncated, info = envs.step(act.to_env(actions))
            rewards = np.asarray(rewards, _F32)
            done = np.logical_or(terminated, truncated)
            if done.any():
                ep_ret += rewards
                for i in np.flatnonzero(done):  # only the few environments whose episode just ended
                    recent.append(float(ep_ret[i]))
                self._n_episodes += int(done.sum())
                ep_ret[done] = 0.0
                cut = np.logical_and(truncated, np.logical_not(terminated))
                if cut.any():  # time limit: bootstrap with the value of the state the episode stopped in
                    mask, finals = _final_observations(info)
                    idx = np.flatnonzero(cut & mask) if mask is not None else []
                    if len(idx):
                        x = enc.encode(np.stack([finals[i] for i in idx]))[0]
                        rewards = rewards.copy()
                        rewards[idx] += _F32(self.gamma) * self._values(x)
            else:
                ep_ret += rewards
            act_buf[t] = actions
            logp_buf[t] = logp
            rew_buf[t] = rewards
            done_buf[t] = done
            obs = enc.encode(next_obs)[0].reshape(self.n_envs, -1)
        self._last_obs = obs

    def _advantages(self, values, last_values, rew_buf, done_buf):
        """GAE(lambda) advantages ``(T, N)`` from per-step values ``(T, N)``."""
        t_len = rew_buf.shape[0]
        adv = np.zeros_like(rew_buf)
        gamma, gl = _F32(self.gamma), _F32(self.gamma * self.gae_lambda)
        last = np.zeros(rew_buf.shape[1], _F32)
        for t in range(t_len - 1, -1, -1):
            nonterminal = 1.0 - done_buf[t]
            next_v = last_values if t == t_len - 1 else values[t + 1]
            delta = rew_buf[t] + gamma * next_v * nonterminal - values[t]
            last = delta + gl * nonterminal * last
            adv[t] = last
        return adv

    def _update(self, obs_buf, act_buf, logp_buf, rew_buf, done_buf, clip):
        t_len, n = rew_buf.shape
        total = t_len * n
        all_values = self._values(np.concatenate([obs_buf.reshape(total, -1), self._last_obs]))
        values, last_values = all_values[:total].reshape(t_len, n), all_values[total:]
        adv = self._advantages(values, last_values, rew_buf, done_buf)
        b_obs = obs_buf.reshape(total, -1)
        b_act = act_buf.reshape((total, -1) if self._act.continuous else (total,))
        b_logp, b_adv = logp_buf.reshape(total), adv.reshape(total)
        b_ret = (adv + values).reshape(total)
        policy, params, flat = self.policy, self._params, self._flat
        sums = collections.defaultdict(float)
        count = 0
        full = self.batch_size >= total
        for _ in range(self.n_epochs):
            order = None if full else self.rng.permutation(total)
            for lo in range(0, total, self.batch_size):
                if full:
                    mb_obs, mb_act, mb_logp, mb_adv, mb_ret = b_obs, b_act, b_logp, b_adv, b_ret
                else:
                    idx = order[lo:lo + self.batch_size]
                    mb_obs, mb_act, mb_logp, mb_adv, mb_ret = b_obs[idx], b_act[idx], b_logp[idx], b_adv[idx], \
                        b_ret[idx]
                if self.normalize_advantage and len(mb_adv) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + _F32(1e-8))
                out = _mlp_node(self._kernels, self._actor_layers, self.activation, mb_obs)
                v = _mlp_node(self._kernels, self._critic_layers, self.activation, mb_obs)
                if self._act.continuous:
                    loss, stats = _ppo_loss_gaussian(out, policy.log_std, v, mb_act, mb_logp, mb_adv, mb_ret,
                                                     clip, self.ent_coef, self.vf_coef)
                else:
                    loss, stats = _ppo_loss_discrete(out, v, mb_act, mb_logp, mb_adv, mb_ret, clip,
                                                     self.ent_coef, self.vf_coef, self._kernels)
                for p in params:
                    p.grad = None
                loss.backward()
                flat.grad = np.concatenate([p.grad.reshape(-1) if p.grad is not None else np.zeros(p.size, _F32)
                                            for p in params])
                if self.max_grad_norm is not None:
                    clip_grad_norm_([flat], self.max_grad_norm)
                self.optimizer.step()
                for k, val in stats.items():
                    sums[k] += val
                count += 1
        return {k: val / count for k, val in sums.items()}

    def close(self):
        """Close the training environments."""
        self.envs.close()

    def __repr__(self):
        env_id = self.env if isinstance(self.env, str) else getattr(getattr(self.env, "spec", None), "id", "env")
        return (f"PPO({env_id!r}, n_envs={self.n_envs}, n_steps={self.n_steps}, batch_size={self.batch_size}, "
                f"n_epochs={self.n_epochs}, learning_rate={self.learning_rate}, net_arch={self.net_arch})")
