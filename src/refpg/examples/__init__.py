r"""Bundled example implementations for the conformance kit: correct ones and deliberately broken ones.

Two uses:

* the kit's demo: run a check on a correct example and on a broken one, and
  read what a failure report looks like;
* the kit's own tests: every `CORRECT` example must pass its check, and
  every `BROKEN` example must fail it with its ``expected`` check id. A
  broken example that passes shows a check with no power against a real bug.

The correct examples (`refpg.examples.correct`) are written the way users of
SB3, CleanRL, TorchRL and rlax write them, in each library's convention; the
broken ones (`refpg.examples.broken`) are each one realistic bug away from a
correct one. An `Example` says how to check its function: the kind, the
convention, the backend and the options (notes/conformance_spec.md).

`refpg.examples.real_libraries` is different: adapters around the libraries'
own code (imported on demand), not registered here.

torch is imported only inside the torch implementations, so this package
imports without it.
"""

from __future__ import annotations

import difflib

from refpg.errors import InvalidInputError
from refpg.examples import broken, correct
from refpg.examples._example import Example
from refpg.examples import (gae_conventions, gae_layouts_examples, jax_examples, kl_trpo_conventions, ppo_variants,
                            reinforce_losses)
from refpg.examples import gaussian_examples, llm_advantages, llm_kl, llm_token_losses, llm_whole_losses
from refpg.examples import pipeline_examples, update_jax, update_sb3, update_torch, update_trpo

__all__ = ["Example", "CORRECT", "BROKEN", "by_name"]


def _correct(name, kind, convention, backend, description, **options) -> Example:
    return Example(name, kind, getattr(correct, name), convention, backend, options, None, description)


def _broken(name, kind, expected, description, *, convention="refpg", backend="numpy", fn=None,
            **options) -> Example:
    fn = getattr(broken, name) if fn is None else fn
    return Example(name, kind, fn, convention, backend, options, f"{kind}.{expected}", description)


#: Every correct example, in each library's convention: each must pass its check.
CORRECT: tuple[Example, ...] = (
    # gae
    _correct("gae_refpg_numpy", "gae", "refpg", "numpy",
             "canonical GAE; np.where keeps a terminal observation's value out entirely"),
    _correct("gae_refpg_torch", "gae", "refpg", "torch", "canonical GAE in torch"),
    _correct("gae_sb3_numpy", "gae", "sb3", "numpy",
             "SB3's compute_returns_and_advantage loop (time limits folded into the reward beforehand)"),
    _correct("gae_cleanrl_torch", "gae", "cleanrl", "torch",
             "CleanRL ppo.py's GAE loop (done = terminated or truncated, by that convention)"),
    _correct("gae_torchrl_torch", "gae", "torchrl", "torch",
             "TorchRL's functional GAE, time dim -2, returning (advantage, value_target), both checked",
             returns=True),
    _correct("gae_rlax_numpy", "gae", "rlax", "numpy",
             "rlax's truncated_generalized_advantage_estimation for one trajectory"),
    # ppo_loss
    _correct("ppo_loss_refpg_numpy", "ppo_loss", "refpg", "numpy", "clipped loss, no normalisation"),
    _correct("ppo_loss_refpg_torch", "ppo_loss", "refpg", "torch", "clipped loss, no normalisation, torch"),
    _correct("ppo_loss_sb3_torch", "ppo_loss", "sb3", "torch",
             "SB3's PPO.train: batch-normalised advantages (raw for n = 1), returns (loss, clip_fraction)"),
    _correct("ppo_loss_cleanrl_torch", "ppo_loss", "cleanrl", "torch",
             "CleanRL's max-of-negatives form, normalised advantages, returns a dict with clip_fraction"),
    _correct("ppo_loss_rlax_numpy", "ppo_loss", "rlax", "numpy",
             "rlax's clipped_surrogate_pg_loss on probability ratios"),
    # value_loss
    _correct("value_loss_refpg_numpy", "value_loss", "refpg", "numpy", "0.5 * mean((V - R)^2)"),
    _correct("value_loss_cleanrl_torch", "value_loss", "cleanrl", "torch",
             "CleanRL's (PPO2's) max of clipped and unclipped squared errors, times 0.5"),
    _correct("value_loss_sb3_torch", "value_loss", "sb3", "torch",
             "SB3's clip_range_vf: mse of the clipped prediction, coefficient 1"),
    # kl_estimator
    _correct("kl_k1_numpy", "kl_estimator", "refpg", "numpy", "per-sample k1 = -log r",
             unbiased=True, non_negative=False),
    _correct("kl_k3_mean_torch", "kl_estimator", "refpg", "torch",
             "batch mean of k3 = (r - 1) - log r, as SB3's approx_kl_div and CleanRL's approx_kl",
             unbiased=True, non_negative=True),
    _correct("kl_k2_numpy", "kl_estimator", "refpg", "numpy", "per-sample k2 = (log r)^2 / 2, declared biased",
             unbiased=False, non_negative=True),
    # reinforce_estimator
    _correct("reinforce_numpy", "reinforce_estimator", "refpg", "numpy",
             "sum_t gamma^t grad log pi G_t, reward-to-go, no baseline"),
    _correct("reinforce_state_baseline_numpy", "reinforce_estimator", "refpg", "numpy",
             "as reinforce_numpy minus a per-state leave-one-out mean return (unbiased)"),
    _correct("reinforce_gamma_free_numpy", "reinforce_estimator", "refpg", "numpy",
             "without gamma^t, declared objective='gamma_free'", objective="gamma_free"),
    _correct("reinforce_torch", "reinforce_estimator", "refpg", "torch",
             "autograd of sum log pi(a_t|s_t) gamma^t G_t"),
    # trpo_step
    _correct("trpo_step_numpy", "trpo_step", "refpg", "numpy",
             "CG on the exact batch Fisher, sqrt(2 max_kl / sFs) step, 10-halving line search"),
    _correct("trpo_step_torch", "trpo_step", "refpg", "torch",
             "the same with autograd gradients and Hessian-vector products of the mean KL"),
)

#: Every deliberately broken example: each must fail its check with its ``expected`` check id.
BROKEN: tuple[Example, ...] = (
    # gae
    _broken("gae_torchrl_done_as_terminated", "gae", "truncation_bootstrapped",
            "truncation treated as termination: done passed as terminated (SB3 on-policy before the "
            "timeout handling of DLR-RM/stable-baselines3 issue #633)",
            convention="torchrl", backend="torch"),
    _broken("gae_truncation_as_termination", "gae", "truncation_bootstrapped",
            "truncation treated as termination: a time limit is not bootstrapped (SB3 on-policy before "
            "the timeout handling of DLR-RM/stable-baselines3 issue #633)"),
    _broken("gae_timeout_bootstraps_own_value", "gae", "truncation_bootstrapped",
            "a time limit bootstraps from V(s_t) instead of V(s_{t+1}) (flagged in review of "
            "DexForce/EmbodiChain PR #612)"),
    _broken("gae_cut_on_terminated_only", "gae", "no_flow_across_episodes",
            "terminated used where done was meant in the cut: advantages flow across time limits "
            "(skrl time_limit_bootstrap=False, Toni-SM/skrl issue #449)"),
    _broken("gae_done_in_delta", "gae", "truncation_bootstrapped",
            "done used where terminated was meant in delta: time limits not bootstrapped "
            "(skrl time_limit_bootstrap=True, Toni-SM/skrl issue #449)", backend="torch"),
    _broken("gae_bootstraps_terminal", "gae", "terminal_not_bootstrapped",
            "delta bootstraps V(s_{t+1}) after a termination too (discussed in thu-ml/tianshou issue #869)"),
    _broken("gae_no_lambda", "gae", "recursion",
            "lambda missing from the recursion: GAE(gamma, 1) whatever lam is", backend="torch"),
    _broken("gae_sb3_starts_not_shifted", "gae", "terminal_not_bootstrapped",
            "SB3 loop reading episode_starts[t] instead of episode_starts[t + 1]", convention="sb3"),
    _broken("gae_cleanrl_ignores_next_done", "gae", "terminal_not_bootstrapped",
            "CleanRL loop ignoring next_done: a terminal last step bootstraps from the reset observation",
            convention="cleanrl", backend="torch"),
    _broken("gae_torchrl_terminated_as_done", "gae", "no_flow_across_episodes",
            "terminated passed as done: the recursion is not cut at time limits",
            convention="torchrl", backend="torch"),
    _broken("gae_mutates_next_values", "gae", "input_mutated",
            "zeroes the caller's next_values at terminations in place (the advantages are right)"),
    _broken("gae_flattened", "gae", "output_shape", "returns the advantages flattened to (T * N,)"),
    # ppo_loss
    _broken("ppo_loss_max", "ppo_loss", "outside_clip_range",
            "max instead of min of the clipped and unclipped terms (the optimistic bound)"),
    _broken("ppo_loss_clip_upper_only", "ppo_loss", "outside_clip_range",
            "ratio clipped above only, clip(r, None, 1 + eps)"),
    _broken("ppo_loss_ratio_inverted", "ppo_loss", "inside_clip_range",
            "ratio inverted, pi_old / pi_new (log-probabilities passed in the wrong order)"),
    _broken("ppo_loss_wrong_sign", "ppo_loss", "inside_clip_range",
            "returns the objective L^CLIP instead of the loss -L^CLIP"),
    _broken("ppo_loss_sb3_upper_clip_fraction", "ppo_loss", "clip_fraction",
            "clip fraction counting only r > 1 + eps", convention="sb3", backend="torch"),
    _broken("ppo_loss_sb3_no_single_guard", "ppo_loss", "output_finite",
            "std(ddof=1) normalisation of a one-sample batch gives NaN (DLR-RM/stable-baselines3 issue #325, "
            "fixed by PR #1028)", convention="sb3", backend="torch"),
    _broken("ppo_loss_detached_clipped_branch", "ppo_loss", "gradient",
            "ratio detached in the clipped branch: right value, half the gradient inside the clip range",
            backend="torch"),
    # value_loss
    _broken("value_loss_cleanrl_min", "value_loss", "value",
            "min instead of max of clipped and unclipped errors (RLlib's PPO, ray-project/ray issue #2233)",
            convention="cleanrl", backend="torch"),
    _broken("value_loss_cleanrl_clip_around_returns", "value_loss", "value",
            "prediction clipped around the returns instead of the old values", convention="cleanrl",
            backend="torch"),
    _broken("value_loss_missing_half", "value_loss", "value", "the 0.5 of the unclipped loss missing"),
    # kl_estimator
    _broken("kl_k1_declared_non_negative", "kl_estimator", "non_negative",
            "k1 = -log r declared non-negative; it is negative where pi_new > pi_old",
            fn=correct.kl_k1_numpy, unbiased=True, non_negative=True),
    _broken("kl_k3_ratio_inverted", "kl_estimator", "unbiased",
            "k3 with the ratio inverted, (1/r - 1) + log r, declared unbiased", backend="torch",
            unbiased=True, non_negative=True),
    _broken("kl_k2_declared_unbiased", "kl_estimator", "unbiased",
            "k2 = (log r)^2 / 2 declared unbiased; it is exact to second order only (Schulman 2020)",
            fn=correct.kl_k2_numpy, unbiased=True, non_negative=True),
    _broken("kl_k1_sign_flipped", "kl_estimator", "unbiased", "k1 with the sign flipped, log r: mean -KL",
            unbiased=True, non_negative=False),
    # reinforce_estimator
    _broken("reinforce_gamma_free_declared_discounted", "reinforce_estimator", "unbiased",
            "no gamma^t factor, declared as the discounted gradient (Nota & Thomas 2020)",
            fn=correct.reinforce_gamma_free_numpy),
    _broken("reinforce_action_baseline", "reinforce_estimator", "unbiased",
            "baseline per (state, action): a Q-estimate subtracted inside the score"),
    _broken("reinforce_uncentred_score", "reinforce_estimator", "row_sums_zero",
            "score function onehot(a) without the -pi(.|s) term"),
    _broken("reinforce_next_return", "reinforce_estimator", "unbiased",
            "reward-to-go off by one: step t weighted by G_{t+1}"),
    # trpo_step
    _broken("trpo_no_kl_check", "trpo_step", "kl_constraint",
            "line search tests the surrogate only, never the KL (joschu/modular_rl issue #29)"),
    _broken("trpo_keeps_last_try", "trpo_step", "restores_theta_on_reject",
            "after a failed line search theta keeps the last candidate (fixed in thu-ml/tianshou PR #1287)"),
    _broken("trpo_negative_curvature", "trpo_step", "output_finite",
            "curvature of the log-likelihood Hessian (-F): sqrt of a negative gives a NaN step, "
            "restored as theta_old + 0 * step"),
    _broken("trpo_vanilla_gradient", "trpo_step", "direction",
            "vanilla gradient instead of the natural one, scaled to the KL"),
    _broken("trpo_descends", "trpo_step", "surrogate_improvement",
            "surrogate built with the loss's sign and maximised: the accepted step descends L"),
)

#: Examples of the conventions and variants real projects use, one module per topic, each with its own
#: ``CORRECT`` and ``BROKEN`` tuples.
_TOPICS = (ppo_variants, gae_conventions, gae_layouts_examples, kl_trpo_conventions, reinforce_losses, jax_examples,
           llm_advantages, llm_token_losses, llm_whole_losses, llm_kl, gaussian_examples, update_torch, update_jax,
           update_sb3, update_trpo, pipeline_examples)
CORRECT = CORRECT + tuple(ex for topic in _TOPICS for ex in topic.CORRECT)
BROKEN = BROKEN + tuple(ex for topic in _TOPICS for ex in topic.BROKEN)

#: The real libraries (and gymnasium) each topic's examples run, besides their backend.
_REQUIRES = {"update_sb3": ("stable_baselines3",), "update_trpo": ("stable_baselines3", "sb3_contrib"),
             "update_jax": ("optax",), "pipeline_examples": ("gymnasium",)}


def _requirements(ex: Example) -> Example:
    import dataclasses

    topic = ex.fn.__module__.rsplit(".", 1)[-1] if hasattr(ex.fn, "__module__") else ""
    needs = list(_REQUIRES.get(topic, ()))
    if ex.name.startswith("update_torchrl"):
        needs += ["torchrl", "tensordict"]
    if topic == "pipeline_examples" and ex.name.startswith("sb3_"):
        needs.append("stable_baselines3")
    return dataclasses.replace(ex, requires=tuple(needs)) if needs else ex


CORRECT = tuple(_requirements(ex) for ex in CORRECT)
BROKEN = tuple(_requirements(ex) for ex in BROKEN)

_BY_NAME = {ex.name: ex for ex in CORRECT + BROKEN}
if len(_BY_NAME) != len(CORRECT) + len(BROKEN):  # pragma: no cover - a registry typo
    raise RuntimeError("refpg.examples: two examples share a name")


def by_name(name: str) -> Example:
    """The registered example called `name`.

    Raises
    ------
    refpg.errors.InvalidInputError
        No example has that name; the message suggests the closest names.
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), _BY_NAME, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise InvalidInputError(
            f"name should be the name of a bundled example, actual {name!r}{hint}") from None
