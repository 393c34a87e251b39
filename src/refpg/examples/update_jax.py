r"""A whole PPO update in JAX, kind ``update``: PureJaxRL's ``_update_step`` on a fixed batch.

PureJaxRL (``purejaxrl/ppo.py``) writes the whole of PPO as one jitted
function: the epochs are a ``jax.lax.scan``, each epoch draws a
``jax.random.permutation`` of the flattened batch and scans over its
minibatches, GAE is a reverse scan, and the optimiser is
``optax.chain(optax.clip_by_global_norm(MAX_GRAD_NORM), optax.adam(lr, eps=1e-5))``.
`make_ppo_update` builds that update, functional and jit-compiled, for the
kit's problem class: a linear actor ``logits(s) = actor_w[s] (+ actor_b)``
and a linear critic ``V(s) = critic_w[s] (+ critic_b)`` on one-hot
observations, each step minimising

.. math::
    L = -\frac1B \sum_i \min\big(r_i \hat A_i,\ \mathrm{clip}(r_i, 1 \pm \epsilon) \hat A_i\big)
        + c_v \cdot \frac{0.5}B \sum_i \max\big((V_i - R_i)^2, (V^{old}_i + \mathrm{clip}(V_i - V^{old}_i, \pm\epsilon) - R_i)^2\big)
        - c_H \frac1B \sum_i H(\pi(\cdot|s_i)),

with :math:`\hat A` GAE [Schulman2016] normalised per minibatch by
``(A - mean) / (std + 1e-8)`` (``jnp.std``: no Bessel correction) and
:math:`R` = GAE + V_old [Schulman2017]; then global-norm clipping and one
Adam step [Kingma2015] with optax's definitions.

`update_purejaxrl_jax` is the ``"refpg"`` convention of
`refpg.conformance.check_update`: it runs the jitted update in float64
(inside ``jax.enable_x64(True)``) and hands back the trace the scans return
stacked: each step's flat indices (the slice of the permutation it drew),
total loss, gradient before and after clipping, global norm and parameters.
Its hyperparameters as `UpdateConfig` fields are `PUREJAXRL_OPTIONS`.

GAE differs from ``ppo.py`` in one place: PureJaxRL carries one ``done``
(terminated or truncated) into both the bootstrap and the recursion, so a
time limit is cut like a termination (luchris429/purejaxrl issue #20, open).
Here the bootstrap is masked by ``terminated`` alone and reads the value of
the step's own next observation (its final one where the episode ended), as
the contract defines GAE. `update_purejaxrl_as_written_jax` is the script's
GAE as it stands (not registered; a strict xfail in the tests).

The broken examples are each one realistic edit of this update, and cite
the public thread about that kind of bug. jax and optax are imported inside
the functions, so this module imports without them.

References
----------
[Schulman2016], [Schulman2017]; [Kingma2015] D. P. Kingma and J. Ba, "Adam: A
Method for Stochastic Optimization", ICLR 2015. PureJaxRL
``purejaxrl/ppo.py``; optax 0.2.8 (``optax.adam``, ``optax.clip_by_global_norm``).
"""

from __future__ import annotations

import functools

from refpg.errors import InvalidInputError
from refpg.examples._example import Example

__all__ = [
    "CORRECT",
    "BROKEN",
    "PUREJAXRL_CONFIG",
    "PUREJAXRL_OPTIONS",
    "make_ppo_update",
    "update_purejaxrl_jax",
    "update_purejaxrl_as_written_jax",
]

#: PureJaxRL ``ppo.py``'s ``__main__`` config, the keys the update reads, with a learning rate of 0.05
#: instead of 2.5e-4: at 2.5e-4 Adam moves each parameter by about lr per step, so in one update of 16
#: steps no ratio would leave 1 +- 0.2 and no value V_old +- 0.2, and neither clip would be checked.
#: ``ANNEAL_LR`` is on as there; its schedule ``LR * (1 - (count // (NUM_MINIBATCHES * UPDATE_EPOCHS))
#: / NUM_UPDATES)`` is exactly ``LR`` throughout the first update, the only one run here.
PUREJAXRL_CONFIG = {"LR": 0.05, "UPDATE_EPOCHS": 4, "NUM_MINIBATCHES": 4, "GAMMA": 0.99, "GAE_LAMBDA": 0.95,
                    "CLIP_EPS": 0.2, "ENT_COEF": 0.01, "VF_COEF": 0.5, "MAX_GRAD_NORM": 0.5, "ANNEAL_LR": True,
                    "TOTAL_TIMESTEPS": 5e5, "SEED": 30}

#: `update_purejaxrl_jax`'s hyperparameters as `UpdateConfig` fields (check_update's keyword arguments),
#: for the kit's default batch of 8 steps x 2 envs (16 samples, 4 minibatches of 4). PureJaxRL clips the
#: value with CLIP_EPS too; its advantage std is jnp.std's, ddof 0; optax's Adam and clipping.
PUREJAXRL_OPTIONS = {"algorithm": "ppo", "gamma": 0.99, "gae_lambda": 0.95, "clip_range": 0.2,
                     "clip_range_vf": 0.2, "value_clip": "max", "n_epochs": 4, "minibatch_size": 4,
                     "normalize_advantage": "minibatch", "norm_ddof": 0, "norm_eps": 1e-8,
                     "value_loss": "half_mse", "vf_coef": 0.5, "ent_coef": 0.01, "max_grad_norm": 0.5,
                     "optimizer": "adam", "lr": 0.05, "eps": 1e-5, "optimizer_convention": "optax",
                     "flatten": "time_major"}

_BUGS = (None, "same_key", "eps_as_eps_root", "targets_with_gradient")
_GAES = ("contract", "as_written")


# -- the update, as PureJaxRL writes it ----------------------------------------------------------

def make_ppo_update(config: dict | None = None, *, bug: str | None = None, gae: str = "contract"):
    r"""PureJaxRL's PPO update as a pure function: ``(tx, update)``.

    ``update(params, opt_state, batch, rng) -> (params, opt_state, rng, info)``
    runs ``UPDATE_EPOCHS`` epochs of ``NUM_MINIBATCHES`` minibatch steps on
    the (T, N) batch (module docstring for the loss). `params` is a dict
    with "actor_w" (S, A), "critic_w" (S,) and optionally "actor_b" (A,),
    "critic_b" (); `opt_state` is ``tx.init(params)``; `batch` holds the
    ``update`` kind's arrays ("obs", "actions", "rewards", "terminated",
    "truncated", "logp_old", "values", "next_values"). `info` holds
    "advantages" and "returns" (T, N) and, stacked (UPDATE_EPOCHS,
    NUM_MINIBATCHES, ...), each step's "indices", "loss", "grad",
    "grad_norm", "clipped_grad" and "params" (after the step), computed
    inside the scans. Jit it (`update_purejaxrl_jax` does).

    Parameters
    ----------
    config : dict or None
        PureJaxRL's config keys (`PUREJAXRL_CONFIG`, the default).
    bug : None or str
        One of the planted bugs of `BROKEN` ("same_key", "eps_as_eps_root",
        "targets_with_gradient").
    gae : {"contract", "as_written"}
        The contract's GAE (bootstrap masked by terminated, V of the true
        next observation), or ``ppo.py``'s (``done`` in both places, the next
        value carried from the next step).

    Returns
    -------
    tx : optax.GradientTransformation
    update : callable

    Raises
    ------
    refpg.errors.InvalidInputError
        An unknown `bug` or `gae`; (from `update`) a batch of T N samples
        that NUM_MINIBATCHES does not divide.

    References
    ----------
    [Schulman2017] Algorithm 1; [Schulman2016] Eq. 16; PureJaxRL ``purejaxrl/ppo.py``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    if bug not in _BUGS:
        raise InvalidInputError(f"bug should be one of {list(_BUGS)}, actual {bug!r}")
    if gae not in _GAES:
        raise InvalidInputError(f"gae should be one of {list(_GAES)}, actual {gae!r}")
    config = dict(PUREJAXRL_CONFIG if config is None else config)
    steps_per_update = config["NUM_MINIBATCHES"] * config["UPDATE_EPOCHS"]

    def network(params, obs):
        # ActorCritic with no hidden layers: two Dense heads on the one-hot observation.
        logits = obs @ params["actor_w"]
        if "actor_b" in params:
            logits = logits + params["actor_b"]
        value = obs @ params["critic_w"]
        if "critic_b" in params:
            value = value + params["critic_b"]
        return jax.nn.log_softmax(logits), value

    def make_tx(num_updates):
        def linear_schedule(count):
            frac = 1.0 - (count // steps_per_update) / num_updates
            return config["LR"] * frac

        lr = linear_schedule if config["ANNEAL_LR"] else config["LR"]
        # The planted bug: PyTorch's eps=1e-5 carried over into optax's other epsilon, inside the root.
        adam = optax.adam(lr, eps_root=1e-5) if bug == "eps_as_eps_root" else optax.adam(lr, eps=1e-5)
        return optax.chain(optax.clip_by_global_norm(config["MAX_GRAD_NORM"]), adam)

    clip = optax.clip_by_global_norm(config["MAX_GRAD_NORM"])

    def calculate_gae(batch):
        gamma, lam = config["GAMMA"], config["GAE_LAMBDA"]
        term = batch["terminated"].astype(batch["rewards"].dtype)
        trunc = batch["truncated"].astype(batch["rewards"].dtype)
        if gae == "as_written":
            done = jnp.maximum(term, trunc)

            def get_advantages(carry, x):
                gae_t, next_value = carry
                d, value, reward = x
                delta = reward + gamma * next_value * (1 - d) - value
                gae_t = delta + gamma * lam * (1 - d) * gae_t
                return (gae_t, value), gae_t

            last_val = batch["next_values"][-1]
            _, adv = jax.lax.scan(get_advantages, (jnp.zeros_like(last_val), last_val),
                                  (done, batch["values"], batch["rewards"]), reverse=True)
        else:
            def get_advantages(gae_t, x):
                reward, value, next_value, te, tr = x
                delta = reward + gamma * next_value * (1 - te) - value
                gae_t = delta + gamma * lam * (1 - te) * (1 - tr) * gae_t
                return gae_t, gae_t

            _, adv = jax.lax.scan(get_advantages, jnp.zeros_like(batch["rewards"][0]),
                                  (batch["rewards"], batch["values"], batch["next_values"], term, trunc),
                                  reverse=True)
        return adv, adv + batch["values"]

    def loss_fn(params, traj, gae_mb, targets):
        logp_all, value = network(params, traj["obs"])
        log_prob = jnp.take_along_axis(logp_all, traj["actions"][:, None], axis=1)[:, 0]
        if bug == "targets_with_gradient":
            # Targets rebuilt from the critic being trained, with no jax.lax.stop_gradient.
            targets = gae_mb + value

        value_pred_clipped = traj["values"] + (value - traj["values"]).clip(-config["CLIP_EPS"], config["CLIP_EPS"])
        value_losses = jnp.square(value - targets)
        value_losses_clipped = jnp.square(value_pred_clipped - targets)
        value_loss = 0.5 * jnp.maximum(value_losses, value_losses_clipped).mean()

        ratio = jnp.exp(log_prob - traj["logp_old"])
        gae_n = (gae_mb - gae_mb.mean()) / (gae_mb.std() + 1e-8)
        loss_actor1 = ratio * gae_n
        loss_actor2 = jnp.clip(ratio, 1.0 - config["CLIP_EPS"], 1.0 + config["CLIP_EPS"]) * gae_n
        loss_actor = -jnp.minimum(loss_actor1, loss_actor2).mean()
        entropy = -(jnp.exp(logp_all) * logp_all).sum(axis=-1).mean()

        total_loss = loss_actor + config["VF_COEF"] * value_loss - config["ENT_COEF"] * entropy
        return total_loss, (value_loss, loss_actor, entropy)

    def update(params, opt_state, batch, rng):
        T, N = batch["rewards"].shape
        batch_size = T * N
        if batch_size % config["NUM_MINIBATCHES"]:
            raise InvalidInputError(f"the batch of {T} x {N} = {batch_size} samples does not split into "
                             f"NUM_MINIBATCHES = {config['NUM_MINIBATCHES']} equal minibatches (PureJaxRL asserts "
                             "batch_size == MINIBATCH_SIZE * NUM_MINIBATCHES)")
        tx = make_tx(config["TOTAL_TIMESTEPS"] // T // N)
        advantages, targets = calculate_gae(batch)
        traj = {k: batch[k] for k in ("obs", "actions", "logp_old", "values")}

        def update_minibatch(carry, minibatch):
            params, opt_state = carry
            (traj_mb, gae_mb, targets_mb), indices = minibatch
            (total_loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, traj_mb, gae_mb, targets_mb)
            # What the chain's first transformation hands Adam (clip_by_global_norm is stateless).
            clipped, _ = clip.update(grads, clip.init(params))
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            # optax.tree.norm is the norm clip_by_global_norm compares with MAX_GRAD_NORM.
            info = {"indices": indices, "loss": total_loss, "grad": grads, "grad_norm": optax.tree.norm(grads),
                    "clipped_grad": clipped, "params": params}
            return (params, opt_state), info

        def update_epoch(carry, unused):
            params, opt_state, rng = carry
            if bug == "same_key":
                # The split key is used but the carried one never advances: every epoch draws the same.
                _, _rng = jax.random.split(rng)
            else:
                rng, _rng = jax.random.split(rng)
            permutation = jax.random.permutation(_rng, batch_size)
            flat = jax.tree_util.tree_map(lambda x: x.reshape((batch_size,) + x.shape[2:]),
                                          (traj, advantages, targets))
            shuffled = jax.tree_util.tree_map(lambda x: jnp.take(x, permutation, axis=0), flat)
            minibatches = jax.tree_util.tree_map(
                lambda x: jnp.reshape(x, [config["NUM_MINIBATCHES"], -1] + list(x.shape[1:])), shuffled)
            indices = permutation.reshape(config["NUM_MINIBATCHES"], -1)
            (params, opt_state), info = jax.lax.scan(update_minibatch, (params, opt_state), (minibatches, indices))
            return (params, opt_state, rng), info

        (params, opt_state, rng), info = jax.lax.scan(update_epoch, (params, opt_state, rng), None,
                                                      config["UPDATE_EPOCHS"])
        info["advantages"], info["returns"] = advantages, targets
        return params, opt_state, rng, info

    def init(params, n_steps, n_envs):
        return make_tx(config["TOTAL_TIMESTEPS"] // n_steps // n_envs).init(params)

    return init, update


@functools.cache
def _jitted(bug, gae):
    """(init, jitted update) of the default config with `bug` and `gae`, built once."""
    import jax

    init, update = make_ppo_update(bug=bug, gae=gae)
    return init, jax.jit(update)


# -- the adapter: the kit's batch in, a trace out --------------------------------------------------

_FLOATS = ("obs", "rewards", "logp_old", "values", "next_values")


def _run(batch, params, *, bug=None, gae="contract") -> dict:
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        b = {k: jnp.asarray(batch[k], dtype=jnp.float64) for k in _FLOATS}
        b["actions"] = jnp.asarray(batch["actions"], dtype=jnp.int64)
        b["terminated"] = jnp.asarray(batch["terminated"], dtype=bool)
        b["truncated"] = jnp.asarray(batch["truncated"], dtype=bool)
        p = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in params.items() if v is not None}
        if "critic_b" in p:
            p["critic_b"] = p["critic_b"].reshape(())
        T, N = b["rewards"].shape
        init, update = _jitted(bug, gae)
        rng = jax.random.PRNGKey(PUREJAXRL_CONFIG["SEED"])
        _, _, _, info = update(p, init(p, T, N), b, rng)
        E, K = info["indices"].shape[:2]
        steps = []
        for e in range(E):
            for k in range(K):
                at = lambda x: x[e, k]  # noqa: E731
                steps.append({"indices": info["indices"][e, k], "loss": info["loss"][e, k],
                              "grad": jax.tree_util.tree_map(at, info["grad"]),
                              "grad_norm": info["grad_norm"][e, k],
                              "clipped_grad": jax.tree_util.tree_map(at, info["clipped_grad"]),
                              "params": jax.tree_util.tree_map(at, info["params"])})
        return {"advantages": info["advantages"], "returns": info["returns"], "steps": steps}


def update_purejaxrl_jax(batch, params):
    r"""PureJaxRL ``ppo.py``'s update of one batch, jitted, in float64, with its trace.

    Four epochs, each a fresh ``jax.random.permutation`` (the key split
    every epoch) of the time-major flattened batch, cut into four minibatches;
    each step minimises the clipped surrogate with minibatch-normalised
    advantages (ddof 0) plus ``0.5 x 0.5 mean max(...)`` value loss minus
    ``0.01`` entropy, then ``clip_by_global_norm(0.5)`` and
    ``optax.adam(0.05, eps=1e-5)``. Hyperparameters as `UpdateConfig`
    fields: `PUREJAXRL_OPTIONS`.

    Parameters
    ----------
    batch : dict
        The ``update`` kind's batch, (T, N) time-major, JAX or NumPy; T N a
        multiple of 4.
    params : dict
        ``actor_w`` (S, A), ``critic_w`` (S,), optionally ``actor_b``, ``critic_b``.

    Returns
    -------
    dict
        ``{"advantages", "returns", "steps"}`` of JAX float64 arrays; each
        step has ``indices``, ``loss``, ``grad``, ``grad_norm``,
        ``clipped_grad``, ``params``.

    Notes
    -----
    GAE masks the bootstrap with ``terminated`` and reads each step's own
    ``next_values``; ``ppo.py`` cuts a time limit like a termination
    (luchris429/purejaxrl issue #20): `update_purejaxrl_as_written_jax`.

    References
    ----------
    [Schulman2016], [Schulman2017]; PureJaxRL ``purejaxrl/ppo.py``.
    """
    return _run(batch, params)


def update_purejaxrl_as_written_jax(batch, params):
    """PureJaxRL ``ppo.py``'s GAE as written: ``done`` (terminated or truncated) masks bootstrap and recursion.

    Differs from the contract's GAE on every batch with a truncated step
    whose final observation has a non-zero value
    (https://github.com/luchris429/purejaxrl/issues/20, open); equal to
    `update_purejaxrl_jax` on batches without time limits.
    """
    return _run(batch, params, gae="as_written")


def update_purejaxrl_same_key_jax(batch, params):
    """PureJaxRL's update with the epoch's key split but never carried: every epoch draws one permutation.

    ``_, _rng = jax.random.split(rng)`` in ``_update_epoch`` with ``rng``
    handed on unchanged: the subkey is fresh within an epoch but the same in
    every epoch, so the minibatches repeat. The slip of splitting a key and
    then using or carrying the wrong one is
    https://github.com/dunnolab/xland-minigrid/issues/42 (a PureJaxRL-style
    training script).
    """
    return _run(batch, params, bug="same_key")


def update_purejaxrl_eps_root_jax(batch, params):
    """PureJaxRL's update with Adam's 1e-5 passed as optax's ``eps_root`` (inside the root), ``eps`` left at 1e-8.

    optax.adam divides by ``sqrt(v_hat + eps_root) + eps``; torch's Adam has
    only the ``eps`` outside. Confusing the two epsilons is
    https://github.com/google-deepmind/optax/issues/440; a JAX port that lost
    Adam's eps=1e-5 altogether is
    https://github.com/vwxyzjn/lm-human-preference-details/pull/23.
    """
    return _run(batch, params, bug="eps_as_eps_root")


def update_purejaxrl_targets_with_gradient_jax(batch, params):
    """PureJaxRL's update with the value targets rebuilt in the loss from the current critic, gradient not stopped.

    ``targets = gae + value`` inside ``_loss_fn``, ``value`` the critic's
    output being differentiated: the targets equal PureJaxRL's at the first
    step, but ``d(value - targets)/d value = 0``, so the critic gets no
    gradient. Gradients through bootstrap targets by default are
    https://github.com/google-deepmind/rlax/issues/28 (rlax's GAE defaults to
    ``stop_target_gradients=False``; https://github.com/google-deepmind/rlax/pull/161).
    """
    return _run(batch, params, bug="targets_with_gradient")


# -- the registry -----------------------------------------------------------------------------------

#: Correct examples: each passes check_update.
CORRECT: tuple[Example, ...] = (
    Example("update_purejaxrl_jax", "update", update_purejaxrl_jax, "refpg", "jax", PUREJAXRL_OPTIONS, None,
            "PureJaxRL ppo.py's _update_step, jitted: lax.scan over epochs and minibatches, "
            "jax.random.permutation per epoch, GAE by a reverse scan, max-clipped 0.5 value loss, jnp.std "
            "advantage normalisation, optax clip_by_global_norm + adam(eps=1e-5); a time limit bootstrapped "
            "(https://github.com/luchris429/purejaxrl/issues/20)"),
)

#: Broken examples: each fails check_update with its ``expected`` check id.
BROKEN: tuple[Example, ...] = (
    Example("update_purejaxrl_same_key_jax", "update", update_purejaxrl_same_key_jax, "refpg", "jax",
            PUREJAXRL_OPTIONS, "update.minibatch_order",
            "the epoch's PRNG key split but the carried key never advanced, so every epoch draws the same "
            "permutation (the key-handling slip of https://github.com/dunnolab/xland-minigrid/issues/42, in a "
            "PureJaxRL-style training script)"),
    Example("update_purejaxrl_eps_root_jax", "update", update_purejaxrl_eps_root_jax, "refpg", "jax",
            PUREJAXRL_OPTIONS, "update.optimizer_step",
            "Adam's eps=1e-5 given to optax.adam as eps_root (inside the square root; eps stays 1e-8): "
            "optax's two epsilons confused (https://github.com/google-deepmind/optax/issues/440; the lost Adam "
            "eps of https://github.com/vwxyzjn/lm-human-preference-details/pull/23)"),
    Example("update_purejaxrl_targets_with_gradient_jax", "update", update_purejaxrl_targets_with_gradient_jax,
            "refpg", "jax", PUREJAXRL_OPTIONS, "update.gradient",
            "value targets rebuilt inside the loss as advantages + the critic's current output, with no "
            "jax.lax.stop_gradient, so the value loss's gradient vanishes (rlax's GAE defaults to "
            "stop_target_gradients=False: https://github.com/google-deepmind/rlax/issues/28)"),
)

