"""Examples in JAX, written the way rlax, PureJaxRL and CleanRL-JAX write them, checked with
``backend="jax"``.

Each function is ``jax.jit``-compiled, as real training code is, so checking it also measures what
recompilation costs: the kit draws a few bucketed input shapes for the jax backend. Gradients are
checked through ``jax.grad``. jax is imported inside the functions (and the jitted versions built on
first use), so this module imports without it. Registered in `refpg.examples` through ``CORRECT`` and
``BROKEN``.
"""

from __future__ import annotations

import functools

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN"]


@functools.cache
def _jitted(name: str):
    """The jitted JAX function called `name` (built once, on first use)."""
    import jax
    import jax.numpy as jnp

    def gae_rlax(r_t, discount_t, lambda_, values):
        # rlax's truncated GAE for one trajectory: delta_t = r_t + discount_t V_{t+1} - V_t, then a reverse
        # scan A_t = delta_t + discount_t lambda A_{t+1}; values has T + 1 entries.
        delta = r_t + discount_t * values[1:] - values[:-1]

        def step(acc, x):
            d, disc = x
            acc = d + disc * lambda_ * acc
            return acc, acc

        _, adv = jax.lax.scan(step, jnp.zeros((), delta.dtype), (delta, discount_t), reverse=True)
        return adv

    def value_loss_cleanrl(values_new, values_old, returns, clip_eps):
        # CleanRL-JAX's ppo_atari_envpool_async_jax_scan style: 0.5 * mean(max(unclipped, clipped)).
        v_clipped = values_old + jnp.clip(values_new - values_old, -clip_eps, clip_eps)
        return 0.5 * jnp.mean(jnp.maximum((values_new - returns) ** 2, (v_clipped - returns) ** 2))

    def value_loss_cleanrl_detached_clip(values_new, values_old, returns, clip_eps):
        # The clipped prediction built from a stop_gradient copy of values_new: the value is right, but
        # inside the clip range the two squared errors tie, max splits its gradient between them, and
        # the clipped half is lost.
        v = jax.lax.stop_gradient(values_new)
        v_clipped = values_old + jnp.clip(v - values_old, -clip_eps, clip_eps)
        return 0.5 * jnp.mean(jnp.maximum((values_new - returns) ** 2, (v_clipped - returns) ** 2))

    def kl_k3_mean(logp_new, logp_old):
        # k3 = (r - 1) - log r with r = pi_new / pi_old, averaged over the batch (CleanRL-JAX's approx_kl).
        log_ratio = logp_new - logp_old
        return jnp.mean(jnp.expm1(log_ratio) - log_ratio)

    def kl_k3_float32(logp_new, logp_old):
        # The same, computed in a hard-coded float32: JAX's default dtype, written into the code.
        log_ratio = (logp_new - logp_old).astype(jnp.float32)
        return jnp.mean(jnp.expm1(log_ratio) - log_ratio)

    def trpo_parts(theta_old, states, actions, advantages):
        # The surrogate's gradient and the Hessian of the mean KL (the batch Fisher matrix) at theta_old,
        # by jax.grad and jax.hessian, as a JAX TRPO builds them before its conjugate-gradient solve.
        logp_old = jax.nn.log_softmax(theta_old, axis=1)
        p_old = jnp.exp(logp_old)

        def surrogate(theta):
            logp = jax.nn.log_softmax(theta, axis=1)
            return jnp.mean(jnp.exp(logp[states, actions] - logp_old[states, actions]) * advantages)

        def mean_kl(theta):
            logp = jax.nn.log_softmax(theta, axis=1)
            return jnp.mean(jnp.sum(p_old[states] * (logp_old[states] - logp[states]), axis=1))

        size = theta_old.size
        return jax.grad(surrogate)(theta_old), jax.hessian(mean_kl)(theta_old).reshape(size, size)

    def trpo_values(theta, theta_old, states, actions, advantages):
        # (L(theta), mean KL(theta)) for the line search.
        logp_old = jax.nn.log_softmax(theta_old, axis=1)
        logp = jax.nn.log_softmax(theta, axis=1)
        surrogate = jnp.mean(jnp.exp(logp[states, actions] - logp_old[states, actions]) * advantages)
        kl = jnp.mean(jnp.sum(jnp.exp(logp_old[states]) * (logp_old[states] - logp[states]), axis=1))
        return surrogate, kl

    return jax.jit(locals()[name])


def gae_rlax_jax(r_t, discount_t, lambda_, values):
    """rlax-convention GAE of one trajectory, a jitted reverse ``jax.lax.scan``."""
    return _jitted("gae_rlax")(r_t, discount_t, lambda_, values)


def value_loss_cleanrl_jax(values_new, values_old, returns, clip_eps):
    """CleanRL-JAX's value loss, 0.5 mean(max((V - R)^2, (V_clip - R)^2)), jitted."""
    return _jitted("value_loss_cleanrl")(values_new, values_old, returns, clip_eps)


def value_loss_cleanrl_jax_detached_clip(values_new, values_old, returns, clip_eps):
    """As `value_loss_cleanrl_jax` with V_clip built from ``stop_gradient(values_new)``."""
    return _jitted("value_loss_cleanrl_detached_clip")(values_new, values_old, returns, clip_eps)


def kl_k3_mean_jax(logp_new, logp_old):
    """Batch mean of k3 = (r - 1) - log r, jitted."""
    return _jitted("kl_k3_mean")(logp_new, logp_old)


def kl_k3_float32_jax(logp_new, logp_old):
    """k3's batch mean computed in a hard-coded float32."""
    return _jitted("kl_k3_float32")(logp_new, logp_old)


def trpo_step_jax(theta_old, states, actions, advantages, max_kl):
    r"""One TRPO step of a tabular softmax policy in JAX: :math:`\nabla L` by ``jax.grad``, the batch
    Fisher matrix as ``jax.hessian`` of the mean KL, both jitted; then the conjugate-gradient direction,
    the :math:`\sqrt{2\delta / s^\top F s}` step and the 10-halving line search of `trpo_step_numpy`,
    whose every candidate is evaluated by a jitted JAX function.

    References
    ----------
    [Schulman2015] Section 6 and Appendix C.
    """
    import jax.numpy as jnp
    import numpy as np

    from refpg.examples.correct import _trpo_search

    g, fisher = (np.asarray(x, dtype=np.float64) for x in _jitted("trpo_parts")(theta_old, states, actions,
                                                                                advantages))
    values = _jitted("trpo_values")
    theta0 = np.asarray(theta_old, dtype=np.float64)

    def fvp(v):
        return (fisher @ v.reshape(-1)).reshape(v.shape)

    def surrogate(theta):
        return float(values(jnp.asarray(theta, dtype=theta_old.dtype), theta_old, states, actions, advantages)[0])

    def mean_kl(theta):
        return float(values(jnp.asarray(theta, dtype=theta_old.dtype), theta_old, states, actions, advantages)[1])

    theta = _trpo_search(theta0, g, fvp, surrogate, mean_kl, max_kl, np.copy)
    return jnp.asarray(theta, dtype=theta_old.dtype)


CORRECT: tuple[Example, ...] = (
    Example("gae_rlax_jax", "gae", gae_rlax_jax, "rlax", "jax", {}, None,
            "rlax-style truncated GAE of one trajectory: a jitted reverse jax.lax.scan"),
    Example("value_loss_cleanrl_jax", "value_loss", value_loss_cleanrl_jax, "cleanrl", "jax", {}, None,
            "CleanRL-JAX's clipped value loss, 0.5 * mean of the larger squared error, jitted; its gradient "
            "is checked through jax.grad"),
    Example("kl_k3_mean_jax", "kl_estimator", kl_k3_mean_jax, "refpg", "jax",
            {"unbiased": True, "non_negative": True}, None,
            "batch mean of k3 = expm1(log r) - log r, jitted, as CleanRL-JAX's approx_kl"),
    Example("trpo_step_jax", "trpo_step", trpo_step_jax, "refpg", "jax", {}, None,
            "TRPO with jax.grad of the surrogate and jax.hessian of the mean KL (jitted), conjugate gradient "
            "and a 10-halving line search on jitted evaluations"),
)

BROKEN: tuple[Example, ...] = (
    Example("value_loss_cleanrl_jax_detached_clip", "value_loss", value_loss_cleanrl_jax_detached_clip,
            "cleanrl", "jax", {}, "value_loss.gradient",
            "V_clip built from stop_gradient(values_new): the loss's value is right, but inside the clip "
            "range, where the two errors tie, jax.grad loses the clipped term's share"),
    Example("kl_k3_float32_jax", "kl_estimator", kl_k3_float32_jax, "refpg", "jax",
            {"unbiased": True, "non_negative": True}, "kl_estimator.output_dtype",
            "a hard-coded float32 cast (JAX's default dtype written into the code) returns float32 for "
            "float64 log-probabilities"),
)
