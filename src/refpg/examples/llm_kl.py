r"""Per-token KL penalties of language-model RL, checked by `check_kl_penalty`.

With :math:`u = \log\pi_{ref} - \log\pi` at a sampled token: :math:`k_1 = -u`,
:math:`k_2 = u^2/2`, :math:`k_3 = e^u - 1 - u` [Schulman2020]. As values, k1 and k3 are unbiased
for :math:`KL(\pi\,\|\,\pi_{ref})` and k2 is not; as losses, their expected gradients are 0 (k1), the
local reverse-KL gradient (k2) and the forward-KL gradient (k3), and none is
:math:`\nabla KL_{seq}` (docs/conventions.md, "Sequences"; [TangMunos2025]).

Correct: k1, k2 and k3 with those declarations in NumPy, torch and one jitted JAX function, and
penalties written the way verl, TRL and OpenRLHF write theirs, each in its convention (verl's
clamped ``low_var_kl`` declared where its clamp never acts, and its straight-through ``k3+``).
Broken: each reproduces a bug or a misreading from a public thread, cited in its description.
Every function is written afresh in its project's style (no project's code is copied); the real
libraries are checked in tests/test_conformance_kl_penalty.py. torch and jax are imported inside
the functions, so this module imports without them.
"""

from __future__ import annotations

import functools

import numpy as np

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN"]

KIND = "kl_penalty"


# -- NumPy and torch, refpg convention ---------------------------------------------------------

def k1_numpy(logp, ref_logp):
    """k1 = log pi - log pi_ref."""
    return logp - ref_logp


def k3_numpy(logp, ref_logp):
    """k3 = e^u - 1 - u with u = log pi_ref - log pi (expm1 keeps it exact near u = 0)."""
    u = ref_logp - logp
    return np.expm1(u) - u


def k1_torch(logp, ref_logp):
    """k1 = log pi - log pi_ref, differentiable in logp."""
    return logp - ref_logp


def k2_torch(logp, ref_logp):
    """k2 = (log pi - log pi_ref)^2 / 2."""
    return 0.5 * (logp - ref_logp) ** 2


def k3_torch(logp, ref_logp):
    """k3 = e^u - 1 - u, u = log pi_ref - log pi."""
    import torch

    u = ref_logp - logp
    return torch.expm1(u) - u


@functools.lru_cache(maxsize=None)
def _jitted_k3():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def k3(logp, ref_logp):
        u = ref_logp - logp
        return jnp.expm1(u) - u
    return k3


def k3_jax(logp, ref_logp):
    """k3 in JAX under jax.jit (compiled once per shape)."""
    return _jitted_k3()(logp, ref_logp)


# -- library styles ------------------------------------------------------------------------------

def verl_style_kl_penalty(logprob, ref_logprob, kl_penalty="low_var_kl"):
    """verl's kl_penalty shape: "kl"/"k1", "mse"/"k2", "low_var_kl"/"k3" (log-ratio clamped to [-20, 20],
    estimate to [-10, 10]), "abs", and a "+" suffix for the straight-through form whose value is the named
    estimator's and whose gradient is k2's."""
    import torch

    name = kl_penalty[:-1] if kl_penalty.endswith("+") else kl_penalty
    diff = logprob - ref_logprob
    if name in ("kl", "k1"):
        value = diff
    elif name in ("mse", "k2"):
        value = 0.5 * diff.square()
    elif name == "abs":
        value = diff.abs()
    elif name in ("low_var_kl", "k3"):
        u = torch.clamp(-diff, min=-20.0, max=20.0)
        value = torch.clamp(torch.exp(u) - u - 1.0, min=-10.0, max=10.0)
    else:
        raise NotImplementedError(kl_penalty)
    if not kl_penalty.endswith("+") or name in ("mse", "k2"):
        return value
    surrogate = 0.5 * diff.square()
    return surrogate - surrogate.detach() + value.detach()


def trl_grpo_per_token_kl(per_token_logps, ref_per_token_logps):
    """TRL's GRPOTrainer k3, computed inline in _compute_loss from the two per-token log-probabilities."""
    import torch

    return torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1


def openrlhf_style_approx_kl(log_probs, log_probs_base, action_mask=None, kl_estimator="k1"):
    """OpenRLHF's compute_approx_kl shape: k1, k2, k3 by name, the mask third in older versions (the check
    passes kl_estimator by keyword). Computed in the inputs' dtype (OpenRLHF casts to float32)."""
    log_ratio = log_probs - log_probs_base
    if kl_estimator == "k2":
        log_ratio = log_ratio ** 2 / 2.0
    elif kl_estimator == "k3":
        log_ratio = (-log_ratio).exp() - 1 + log_ratio
    if action_mask is not None:
        log_ratio = log_ratio * action_mask
    return log_ratio


# -- broken --------------------------------------------------------------------------------------

def k3_sign_flipped_torch(logp, ref_logp):
    """The KL term subtracted where it should be added: the loss carries -k3."""
    return -k3_torch(logp, ref_logp)


def k3_log_ratio_clamped_torch(logp, ref_logp):
    """k3 with its log-ratio clamped to [-10, 10] before the exponential."""
    import torch

    u = torch.clamp(ref_logp - logp, min=-10.0, max=10.0)
    return torch.expm1(u) - u


def k3_arguments_swapped_torch(ref_logp, logp):
    """k3 whose author took the reference first: called as fn(logp, ref_logp), it gets them swapped."""
    import torch

    u = ref_logp - logp
    return torch.expm1(u) - u


def k1_arguments_swapped_numpy(ref_logp, logp):
    """k1 with the arguments in the other order: log pi_ref - log pi."""
    return logp - ref_logp


def k3_row_mean_torch(logp, ref_logp):
    """k3 averaged over each response's tokens and broadcast back: not a per-token estimate."""
    return k3_torch(logp, ref_logp).mean(dim=-1, keepdim=True).expand_as(logp)


def _correct(fn, description, backend="torch", convention="refpg", name=None, **options):
    return Example(name or fn.__name__, KIND, fn, convention, backend, options, None, description)


def _broken(fn, expected, description, backend="torch", convention="refpg", name=None, **options):
    return Example(name or fn.__name__, KIND, fn, convention, backend, options, f"{KIND}.{expected}", description)


CORRECT: tuple[Example, ...] = (
    _correct(k1_numpy, "k1 in NumPy: unbiased, its expected gradient as a loss is 0", backend="numpy",
             gradient="zero"),
    _correct(k3_numpy, "k3 in NumPy: unbiased, the forward-KL gradient as a loss (by central differences)",
             backend="numpy", gradient="forward"),
    _correct(k1_torch, "k1 in torch: unbiased, gradient 0 as a loss (use it in the reward instead)", gradient="zero"),
    _correct(k2_torch, "k2 in torch: biased as a value, the local reverse-KL gradient g_loc as a loss",
             value="any", gradient="local"),
    _correct(k3_torch, "k3 in torch: unbiased, the forward-KL gradient as a loss", gradient="forward"),
    _correct(k3_jax, "k3 in JAX under jax.jit", backend="jax", gradient="forward"),
    _correct(verl_style_kl_penalty, "verl-style low_var_kl (k3 clamped to [-10, 10]) where |log r| <= 2.5, so "
             "that the clamp never acts", convention="verl", kl_type="low_var_kl", gradient="forward",
             max_log_ratio=2.5, name="verl_style_low_var_kl_moderate_ratios"),
    _correct(verl_style_kl_penalty, "verl-style straight-through k1+: the value of k1, the gradient of k2",
             convention="verl", kl_type="k1+", gradient="local", name="verl_style_k1_plus"),
    _correct(verl_style_kl_penalty, "verl-style mse (k2) as a loss: the local reverse-KL gradient",
             convention="verl", kl_type="mse", value="any", gradient="local", name="verl_style_mse"),
    _correct(trl_grpo_per_token_kl, "TRL GRPOTrainer's inline k3 (beta > 0): the forward-KL gradient as a loss",
             convention="trl", gradient="forward"),
    _correct(openrlhf_style_approx_kl, "OpenRLHF-style compute_approx_kl with kl_estimator='k2' (its KL-loss "
             "recommendation, OpenRLHF PR #797)", convention="openrlhf", kl_type="k2", value="any",
             gradient="local", name="openrlhf_style_k2"),
    _correct(openrlhf_style_approx_kl, "OpenRLHF-style compute_approx_kl with kl_estimator='k1' in the reward "
             "(detached there, so no gradient is declared)", convention="openrlhf", kl_type="k1", gradient=None,
             name="openrlhf_style_k1_reward"),
)

BROKEN: tuple[Example, ...] = (
    _broken(k3_sign_flipped_torch, "loss_gradient", "the KL loss subtracted from the policy loss, so that the "
            "update maximises the KL: minus the forward-KL gradient (verl's GRPO before volcengine/verl PR #179, "
            "'grpo kl loss should be add when do minimization'; reported downstream in Unakar/Logic-RL issue #58)",
            gradient="forward"),
    _broken(k3_torch, "loss_gradient", "k3 as a loss declared to give the KL gradient: its expected gradient is the "
            "forward-KL gradient, not grad KL_seq (verl-project/verl PR #2953, OpenRLHF/OpenRLHF PR #1309, "
            "allenai/open-instruct issue #534)", name="k3_loss_declared_reverse_kl_gradient", gradient="reverse"),
    _broken(k2_torch, "loss_gradient", "k2 as a loss declared to give grad KL_seq: it gives the local gradient g_loc, "
            "which drops the KL still to come (OpenRLHF/OpenRLHF PR #1101; [TangMunos2025])", value="any",
            gradient="reverse", name="k2_loss_declared_reverse_kl_gradient"),
    _broken(k3_log_ratio_clamped_torch, "unbiased", "k3 with log(pi_ref/pi) clamped to [-10, 10] declared "
            "unbiased: biased where |log r| > 10 (the clamp of OpenRLHF/OpenRLHF PR #1160 against issue #525's "
            "overflow)", gradient="forward"),
    _broken(verl_style_kl_penalty, "unbiased", "verl-style low_var_kl, whose estimate is clamped to [-10, 10], "
            "declared unbiased over every ratio: k3 > 10 wherever pi_ref/pi > 13.6 at a token",
            convention="verl", kl_type="low_var_kl", gradient=None, name="verl_style_low_var_kl_full_range"),
    _broken(k3_arguments_swapped_torch, "unbiased", "k3 written as fn(ref_logp, logp) and called as fn(logp, "
            "ref_logp): pi/pi_ref - 1 - log(pi/pi_ref), whose mean under pi is no KL", gradient="forward"),
    _broken(k1_arguments_swapped_numpy, "unbiased", "k1 with its arguments in the other order: log pi_ref - log pi, "
            "mean -KL", backend="numpy", gradient=None),
    _broken(k2_torch, "unbiased", "k2 (verl's 'mse') declared unbiased as a value: its mean is not the KL",
            gradient="local", name="k2_declared_unbiased"),
    _broken(k3_row_mean_torch, "elementwise", "k3 averaged over each response and broadcast to its tokens: not a "
            "per-token estimate", gradient=None),
)
