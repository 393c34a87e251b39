r"""KL estimators taking (logprob, ref_logprob), and TRPO steps written around closures.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``.

* RLHF code estimates :math:`KL(\pi\,\|\,\pi_{ref})` on tokens drawn from pi and
  takes the sampling policy's log-probability first: TRL's and verl's
  ``kl_penalty(logprob, ref_logprob, kl_penalty)``, OpenRLHF's
  ``compute_approx_kl(log_probs, log_probs_base, kl_estimator)``. Convention
  ``"rlhf"`` of `check_kl_estimator` passes them so.
* ikostrikov/pytorch-trpo's ``trpo_step(model, get_loss, get_kl, max_kl, damping)``
  updates a module in place from two closures. Convention ``"closure"`` of
  `check_trpo_step` passes a module holding theta and such closures.

torch is imported inside the functions, so this module imports without it.
"""

from __future__ import annotations

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN", "kl_penalty_k1", "kl_penalty_low_var_kl", "kl_penalty_low_var_kl_ratio_inverted",
           "compute_approx_kl_k3", "trpo_step_closure", "trpo_step_closure_no_kl_check",
           "trpo_step_closure_cg_zero_division", "trpo_step_closure_keeps_last_try"]


# -- KL estimators in the (logprob, ref_logprob) order -------------------------------------

def kl_penalty_k1(logprob, ref_logprob):
    r"""Per-token :math:`k_1 = \log\pi(a) - \log\pi_{ref}(a)`, TRL's and verl's ``kl_penalty="k1"``, torch.

    Unbiased for :math:`KL(\pi\,\|\,\pi_{ref})` on tokens :math:`a \sim \pi`;
    negative wherever :math:`\pi_{ref}(a) > \pi(a)`.

    References
    ----------
    [Schulman2020].
    """
    return logprob - ref_logprob


def kl_penalty_low_var_kl(logprob, ref_logprob):
    r"""Per-token :math:`k_3 = e^u - 1 - u`, :math:`u = \log\pi_{ref}(a) - \log\pi(a)`, verl's "low_var_kl", torch.

    With :math:`r = \pi_{ref}/\pi`, :math:`k_3 = (r - 1) - \log r \ge 0`, unbiased for
    :math:`KL(\pi\,\|\,\pi_{ref})` on tokens drawn from pi. Written with ``expm1``,
    which never rounds below zero (``exp(u) - 1`` does for tiny u in float32).
    verl also clamps the result to [-10, 10]; left out here, since a clamp
    biases the estimate wherever :math:`k_3 > 10`.

    References
    ----------
    [Schulman2020].
    """
    import torch

    u = ref_logprob - logprob
    return torch.expm1(u) - u


def kl_penalty_low_var_kl_ratio_inverted(logprob, ref_logprob):
    r"""k3 with the log-ratio the wrong way round, :math:`u = \log\pi - \log\pi_{ref}`: biased.

    Its mean on tokens from pi is :math:`\chi^2(\pi_{ref}\|\pi)`-like,
    :math:`\mathbb E_\pi[\pi/\pi_{ref}] - 1 - KL(\pi\|\pi_{ref})`, not the KL.
    Caught by ``kl_estimator.unbiased``, whose message says that the swapped
    arguments would pass.
    """
    import torch

    u = logprob - ref_logprob
    return torch.expm1(u) - u


def compute_approx_kl_k3(log_probs, log_probs_base):
    r"""OpenRLHF's ``compute_approx_kl(..., kl_estimator="k3")``, torch: :math:`e^{-x} - 1 + x`,
    :math:`x = \log\pi - \log\pi_{base}`, the k3 of :math:`KL(\pi\,\|\,\pi_{base})` on tokens from pi.

    Correct in convention "rlhf". Checked under the default convention, which
    passes (logp_new, logp_old), it receives its arguments the other way round.
    """
    import torch

    x = log_probs - log_probs_base
    return torch.expm1(-x) + x


# -- TRPO steps around closures (ikostrikov/pytorch-trpo's shape) ---------------------------

def _flat(tensors):
    import torch
    return torch.cat([t.reshape(-1) for t in tensors])


def _set_flat(params, flat) -> None:
    """Write the flat vector into the parameters, in order (pytorch-trpo's set_flat_params_to)."""
    import torch

    i = 0
    with torch.no_grad():
        for p in params:
            p.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()


def _conjugate_gradient(fvp, b, iterations=10, residual_tol=1e-10, guard=True):
    r"""Solve :math:`F x = b` from x = 0 (pytorch-trpo's loop); with `guard`, stop where
    :math:`p^\top F p` is not positive instead of dividing by it (0/0 when b = 0)."""
    x = b * 0
    r = b.clone()
    p = b.clone()
    rdotr = r.dot(r)
    for _ in range(iterations):
        Fp = fvp(p)
        pFp = p.dot(Fp)
        if guard and not pFp > 0:
            break
        alpha = rdotr / pFp
        x = x + alpha * p
        r = r - alpha * Fp
        new_rdotr = r.dot(r)
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
        if rdotr < residual_tol:
            break
    return x


def _closure_step(model, get_loss, get_kl, max_kl, damping, *, test_kl=True, guard=True, on_reject="restore"):
    """One TRPO step on `model` in place; the keywords select the bugs of the broken examples."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    loss = get_loss()
    loss_grad = _flat(torch.autograd.grad(loss, params)).detach()
    if guard and not bool((loss_grad != 0).any()):
        return loss  # a zero gradient: nothing to gain, and CG would compute 0/0

    # The mean KL's gradient as a graph, built once: each Fisher-vector product differentiates it again.
    kl_grad = _flat(torch.autograd.grad(get_kl().mean(), params, create_graph=True))

    def fvp(v):
        return _flat(torch.autograd.grad((kl_grad * v).sum(), params, retain_graph=True)).detach() + damping * v

    stepdir = _conjugate_gradient(fvp, -loss_grad, iterations=loss_grad.numel() + 1, guard=guard)
    shs = 0.5 * stepdir.dot(fvp(stepdir))
    if guard and not shs > 0:
        return loss
    fullstep = stepdir * torch.sqrt(max_kl / shs)
    old = _flat(params).detach().clone()
    with torch.no_grad():
        f_old = get_loss(True)
    candidate = old
    for k in range(10):
        candidate = old + 0.5 ** k * fullstep
        _set_flat(params, candidate)
        with torch.no_grad():
            if bool(get_loss(True) < f_old) and (not test_kl or bool(get_kl().mean() <= max_kl)):
                return loss
    if on_reject == "restore":
        _set_flat(params, old)
    elif on_reject == "zero_step":
        _set_flat(params, old + 0.0 * fullstep)
    return loss


def trpo_step_closure(model, get_loss, get_kl, max_kl, damping):
    r"""One TRPO step around closures, in ikostrikov/pytorch-trpo's shape, torch.

    ``get_loss()`` is :math:`-L(\theta)`, ``get_kl()`` the per-sample KL from
    the old policy. Direction :math:`s = (F + \text{damping}\,I)^{-1}(-\nabla\text{loss})`
    by conjugate gradient on Hessian-vector products of ``get_kl().mean()``,
    step :math:`\sqrt{\delta / (\tfrac12 s^\top F s)}\, s`, then backtracking (10
    halvings) to the first candidate that lowers the loss with mean KL <= max_kl;
    otherwise the old parameters are written back. A zero gradient (or a
    non-positive curvature) leaves the model unchanged. Updates `model` in
    place and returns the loss before the step, as pytorch-trpo does.

    References
    ----------
    [Schulman2015] Appendix C.
    """
    return _closure_step(model, get_loss, get_kl, max_kl, damping)


def trpo_step_closure_no_kl_check(model, get_loss, get_kl, max_kl, damping):
    """The line search accepts the first candidate that lowers the loss, never testing the KL.

    Caught by ``trpo_step.kl_constraint`` on the batches that must backtrack.
    """
    return _closure_step(model, get_loss, get_kl, max_kl, damping, test_kl=False)


def trpo_step_closure_cg_zero_division(model, get_loss, get_kl, max_kl, damping):
    """Conjugate gradient without a guard: on a zero gradient r.r / p.Fp is 0/0, the step is NaN, the line
    search rejects every NaN candidate, and the rejection restores theta as old + 0 * step, NaN too.

    Caught by ``trpo_step.output_finite`` on the batches whose advantages are all 0.
    """
    return _closure_step(model, get_loss, get_kl, max_kl, damping, guard=False, on_reject="zero_step")


def trpo_step_closure_keeps_last_try(model, get_loss, get_kl, max_kl, damping):
    """After a failed line search the model keeps the last (rejected) candidate.

    Caught by ``trpo_step.restores_theta_on_reject``.
    """
    return _closure_step(model, get_loss, get_kl, max_kl, damping, on_reject="keep_last")


CORRECT: tuple[Example, ...] = (
    Example("kl_penalty_k1", "kl_estimator", kl_penalty_k1, "rlhf", "torch",
            {"unbiased": True, "non_negative": False}, None,
            "TRL's and verl's kl_penalty(logprob, ref_logprob, 'k1'): logprob - ref_logprob per token"),
    Example("kl_penalty_low_var_kl", "kl_estimator", kl_penalty_low_var_kl, "rlhf", "torch",
            {"unbiased": True, "non_negative": True}, None,
            "verl's kl_penalty(logprob, ref_logprob, 'low_var_kl') (k3, without verl's clamp at 10), per token"),
    Example("trpo_step_closure", "trpo_step", trpo_step_closure, "closure", "torch", {}, None,
            "ikostrikov/pytorch-trpo's trpo_step(model, get_loss, get_kl, max_kl, damping), with a line search "
            "that tests the KL and a conjugate gradient guarded against a zero gradient"),
)

BROKEN: tuple[Example, ...] = (
    Example("kl_penalty_low_var_kl_ratio_inverted", "kl_estimator", kl_penalty_low_var_kl_ratio_inverted, "rlhf",
            "torch", {"unbiased": True, "non_negative": True}, "kl_estimator.unbiased",
            "low_var_kl with the log-ratio the wrong way round, logprob - ref_logprob: the k3 of the first "
            "revision of DLR-RM/stable-baselines3 PR #419, questioned in its review"),
    Example("compute_approx_kl_k3_default_order", "kl_estimator", compute_approx_kl_k3, "refpg", "torch",
            {"unbiased": True, "non_negative": True}, "kl_estimator.unbiased",
            "OpenRLHF's compute_approx_kl(log_probs, log_probs_base) k3 checked in the default (logp_new, "
            "logp_old) order: the two log-probabilities swapped, as in lucidrains/PaLM-rlhf-pytorch issue #43; "
            "the message names convention 'rlhf'"),
    Example("trpo_step_closure_no_kl_check", "trpo_step", trpo_step_closure_no_kl_check, "closure", "torch", {},
            "trpo_step.kl_constraint",
            "pytorch-trpo-style line search that tests only the loss, never the KL (joschu/modular_rl issue #29)"),
    Example("trpo_step_closure_cg_zero_division", "trpo_step", trpo_step_closure_cg_zero_division, "closure",
            "torch", {}, "trpo_step.output_finite",
            "conjugate gradient without a guard divides 0 by 0 on a zero gradient (the missing epsilon of "
            "boyu-ai/Hands-on-RL issue #108), and a rejection restored as old + 0 * step keeps the NaN"),
    Example("trpo_step_closure_keeps_last_try", "trpo_step", trpo_step_closure_keeps_last_try, "closure", "torch",
            {}, "trpo_step.restores_theta_on_reject",
            "after a failed line search the model keeps the last candidate (fixed in thu-ml/tianshou PR #1287)"),
)
