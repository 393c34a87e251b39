r"""`check_llm_loss`: a whole language-model policy-gradient loss, judged by the mean of its gradient.

The user's function maps one sampled batch (G responses to each of
``n_groups`` prompts, with their token log-probabilities, rewards and mask) to
the scalar loss a GRPO, RLOO, Dr. GRPO or REINFORCE++ trainer backpropagates.
The kit draws the batches on a token tree (`refpg.sequences`), where every
expectation is an exact finite sum, computes ``logp`` from its own parameters
:math:`\theta` of a tabular softmax policy over prefixes (torch, or JAX), and
differentiates each batch's loss with respect to :math:`\theta`:

.. math::
    g_b = \nabla_\theta\,\mathrm{loss}(\text{batch}_b), \qquad
    \bar g = \frac1N\sum_{b=1}^N g_b \;\overset{?}{=}\; g^* ,

where the target :math:`g^*` is either the exact expected gradient of the
declared loss (`refpg.sequences.expected_gradient`, ``target="declared"``)
or the gradient of the regularised objective,
:math:`-(\nabla J - \beta\nabla KL_{seq})` (``target="unbiased"``). A
Student-t test per coordinate, Bonferroni-corrected, decides at the declared
family-wise false-alarm rate (docs/conventions.md, "Tolerances and
statistics").

Cheap deterministic checks come first, each with its own id: the loss is one
scalar (``llm_loss.scalar``), it is differentiable in ``logp``
(``llm_loss.differentiable``), finite with a finite gradient on degenerate
groups (``llm_loss.finite``: every reward of a group equal), blind to
masked entries (``llm_loss.masked_positions``: junk in the padding of
``logp``, ``old_logp`` and ``ref_logp`` changes neither the loss nor its
gradient, and the gradient at a masked position is 0), and blind to the
order of the rows (``llm_loss.group_order``: groups are known by their ids).

The policy is tabular on purpose: every prefix has its own logits, so a
bug that moves the gradient at one prefix cannot be cancelled by another,
and the per-coordinate test says at which prefix and token the mean is off.
"""

from __future__ import annotations

import dataclasses
import numbers
import time

import numpy as np

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.conformance._harness import (BadOutput, Outcome, Session, check_callable, check_signature,
                                        numerics_of_their_own, resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError
from refpg.stats import DEFAULT_ALPHA, MeanTest, mean_test

__all__ = ["check_llm_loss", "LLM_LOSS_CONVENTIONS", "TARGETS"]

#: Calling conventions: one argument, the batch. "refpg": a dict with keys ``logp``, ``old_logp``,
#: ``ref_logp`` (n, L), ``rewards`` (n,), ``mask`` (n, L) bool and ``group`` (n,) int ids. "verl": a dict
#: with verl's field names, ``log_prob``, ``old_log_prob``, ``ref_log_prob``, ``response_mask`` (0./1.
#: floats), ``token_level_scores`` (n, L: the reward on each response's last token) and ``uid`` (a NumPy
#: object array of strings, one per group).
LLM_LOSS_CONVENTIONS = {
    "refpg": ("batch",),
    "verl": ("batch",),
}
#: What the mean gradient is tested against.
TARGETS = ("declared", "unbiased")
#: Batches per stage. Measured with G = 4 at seeds 0-4, the first stage's largest |t| over its threshold
#: (5.65): KL sign flipped 15.1-15.6, token-mean computed for seq-mean-token-mean 5.7-6.2, the group mean
#: computed for RLOO (factor 3/4) 2.9-3.4, k3 as a loss declared unbiased 2.5-3.0, GRPO's std without
#: Bessel's correction (advantages x 1.15) 1.3-1.7. A scale error of 10% is at the edge (1.2 and 1.0 at
#: seeds 0, 1), 5% below the test's power (0.7, 0.6); an eps of 1e-4 for 1e-6 in GRPO's std is invisible.
N_BATCHES = 2000
#: The fewest batches a stage accepts: the t-test estimates each coordinate's standard error from the
#: batches' own spread, and a coordinate whose prefix is rare needs many batches to have a spread.
MIN_BATCHES = 500
#: A hint names another declaration only when its own mean test passes with room to spare.
_HINT_MARGIN = 0.75
#: Time the hint may take to compute other declarations' exact means, after a failure.
_HINT_SECONDS = 5.0
#: The off-policy stage: theta_old = theta + noise of this standard deviation, so that ratios fall on
#: both sides of the clip range.
_OFF_POLICY_SCALE = 0.35

SCALAR = "llm_loss.scalar"
DIFFERENTIABLE = "llm_loss.differentiable"
FINITE = "llm_loss.finite"
MASKED = "llm_loss.masked_positions"
GROUP_ORDER = "llm_loss.group_order"
RAISED = "llm_loss.raised"
MUTATED = "llm_loss.input_mutated"
UNBIASED = "llm_loss.mean_gradient"

_SPEC_FIELDS = ("advantage", "std", "adv_eps", "loss", "eps_low", "eps_high", "dual_clip", "aggregation",
                "norm_length", "kl", "kl_coef", "kl_placement", "kl_importance")
# Junk written into masked entries by the masked-positions check: finite, far from any log-probability,
# so that a loss that lets the padding in moves by O(1) or more.
_JUNK = {"logp": 1.5, "old_logp": -4.0, "ref_logp": 2.5}


def _trees():
    """The test trees, largest first: 2 prompts x (vocab 3, max length 3) and smaller ones.

    A stage uses the largest whose batches `expected_gradient` can enumerate (`_stage_tree`).
    Rewards are chosen so that length matters: short responses score higher on average, so a loss that
    weighs responses by their length (token-mean against seq-mean-token-mean) is visibly off.
    """
    from refpg.sequences import TokenTree

    out = []
    for n_prompts, max_length in ((2, 3), (1, 3), (1, 2)):
        probe = TokenTree(n_prompts, 3, max_length, lambda x, y: 0.0)
        rng = np.random.default_rng(1000 + 10 * n_prompts + max_length)
        K = probe.responses.n_responses
        length = probe.responses.length
        R = np.round(rng.random(K) * 0.6 + 0.5 * (length == 1) - 0.25 * (length == max_length), 3)
        ref = rng.normal(0.0, 0.8, (probe.n_states, 3))
        out.append(TokenTree(n_prompts, 3, max_length, R, ref_logits=ref,
                             name=f"llm_loss test tree ({n_prompts} prompt{'s' * (n_prompts > 1)}, L={max_length})"))
    return out


_TREES: list = []


def _stage_tree(spec, G: int, B: int):
    """The largest test tree whose exact target enumerates (batches of B groups reduce to one group
    unless the batch couples its groups: token-mean's denominator, REINFORCE++'s whitening)."""
    from refpg.sequences import MAX_TUPLES, count_batches

    if not _TREES:
        _TREES.extend(_trees())
    B_eff = B if _couples_groups(spec) else 1
    for tree in _TREES:
        if count_batches(tree, G, B_eff) <= MAX_TUPLES:
            return tree, B_eff
    return _TREES[-1], B_eff


def _couples_groups(spec) -> bool:
    return spec.aggregation == "token-mean" or spec.advantage == "reinforce_pp"


def _parameters(tree, seed_offset: int = 0):
    """theta (the policy judged) and theta_old (the off-policy stage's sampler), fixed per tree."""
    pol = tree.tabular_policy()
    rng = np.random.default_rng(77 + seed_offset)
    theta = rng.normal(0.0, 0.6, pol.theta_shape)
    theta_old = theta + rng.normal(0.0, _OFF_POLICY_SCALE, pol.theta_shape)
    theta[-1] = theta_old[-1] = 0.0  # the terminal state's row: never acted in
    return pol, theta, theta_old


def _exact_mean(tree, pol, theta, theta_old, spec, G, B):
    from refpg.sequences import expected_gradient

    return expected_gradient(tree, pol, theta, group_size=G, n_groups=B, spec=spec, theta_old=theta_old,
                             method="enumerate").gradient


def _unbiased_target(tree, pol, theta, spec):
    from refpg.sequences import sequence_kl_gradient, sequence_objective_gradient

    g = -sequence_objective_gradient(tree, pol, theta)
    if spec.has_kl:
        g = g + spec.kl_coef * sequence_kl_gradient(tree, pol, theta)
    return g


# -- drawing batches ------------------------------------------------------------------------------

class _Draw:
    """N batches of B groups of G responses, as arrays (N, n, L) / (N, n), n = B G."""

    def __init__(self, tree, logp_old_table, G, B, N, rng, interleave: bool):
        res = tree.responses
        cond = np.exp(tree.response_log_probs(logp_old_table))
        xs = rng.choice(tree.n_prompts, size=(N, B), p=tree.prompt_probs)
        resp = np.empty((N, B, G), dtype=np.int64)
        for x in range(tree.n_prompts):
            ks = res.of_prompt(x)
            sel = xs == x
            if sel.any():
                resp[sel] = rng.choice(ks, size=(int(sel.sum()), G), p=cond[ks] / cond[ks].sum())
        group = np.broadcast_to(np.repeat(np.arange(B), G), (N, B * G)).copy()
        resp = resp.reshape(N, B * G)
        if interleave and B > 1:
            perm = np.argsort(rng.random((N, B * G)), axis=1)
            resp = np.take_along_axis(resp, perm, axis=1)
            group = np.take_along_axis(group, perm, axis=1)
        self.resp, self.group = resp, group
        self.states, self.tokens = res.states[resp], res.tokens[resp]
        self.mask = res.mask[resp]
        self.rewards = res.total_reward[resp]
        self.length = res.length[resp]
        self.old = np.where(self.mask, logp_old_table[self.states, self.tokens], 0.0)
        self.ref = np.where(self.mask, np.log(tree.ref_probs)[self.states, self.tokens], 0.0)
        self.N, self.n, self.L = resp.shape[0], resp.shape[1], tree.max_length


def _user_batch(convention, be, logp, old, ref, rewards, mask, group):
    """The batch as the convention passes it; `logp` is already a backend array (differentiable)."""
    f = lambda a: be.to_user(np.asarray(a, dtype=np.float64))  # noqa: E731
    if convention == "refpg":
        return {"logp": logp, "old_logp": f(old), "ref_logp": f(ref), "rewards": f(rewards),
                "mask": be.to_user(np.asarray(mask, dtype=bool)), "group": be.to_user(np.asarray(group))}
    length = mask.sum(axis=1)
    scores = np.zeros(mask.shape)
    scores[np.arange(mask.shape[0]), np.maximum(length - 1, 0)] = rewards
    uid = np.array([f"uid-{int(g)}" for g in group], dtype=object)
    return {"log_prob": logp, "old_log_prob": f(old), "ref_log_prob": f(ref),
            "response_mask": f(mask.astype(np.float64)), "token_level_scores": f(scores), "uid": uid}


def _shown(old, ref, rewards, mask, group, logp=None) -> dict:
    """A batch as a counterexample shows it (refpg names, NumPy)."""
    out = {} if logp is None else {"logp": np.asarray(logp)}
    out.update({"old_logp": np.asarray(old), "ref_logp": np.asarray(ref), "rewards": np.asarray(rewards),
                "mask": np.asarray(mask), "group": np.asarray(group)})
    return out


# -- one call, differentiated in logp --------------------------------------------------------------

def _call_with_grad(session, be, convention, logp, old, ref, rewards, mask, group):
    """Call fn on one batch with `logp` (NumPy) as the variable: (loss float, d loss / d logp, outcomes)."""
    inputs = _shown(old, ref, rewards, mask, group, logp)
    if be.name == "torch":
        import torch

        lp = torch.tensor(np.asarray(logp, dtype=be.dtype), requires_grad=True)
        batch = _user_batch(convention, be, lp, old, ref, rewards, mask, group)
        before = {k: be.snapshot(v) for k, v in batch.items()}
        call = session.call([("batch", batch)])
        outcomes = session.generic_outcomes(call, inputs) + _mutated(session, batch, before, inputs)
        if call.error is not None:
            return None, None, outcomes
        value, more = _scalar(session, be, call.output, inputs)
        if value is None:
            return None, None, outcomes + more
        session.ran(DIFFERENTIABLE)
        out = call.output
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return value, None, outcomes + [Outcome(
                DIFFERENTIABLE, f"the loss should be differentiable with respect to logp (a torch tensor with "
                                f"requires_grad=True was passed), actual a {type(out).__name__} with no gradient "
                                f"(detached, or computed from old_logp only?)", inputs, actual=value)]
        (g,) = torch.autograd.grad(out.reshape(()), lp, allow_unused=True)
        D = np.zeros(np.shape(logp)) if g is None else g.detach().numpy().astype(np.float64)
        return value, D, outcomes
    import jax
    import jax.numpy as jnp

    with be.context():
        base = _user_batch(convention, be, None, old, ref, rewards, mask, group)
        key = "logp" if convention == "refpg" else "log_prob"
        lp0 = be.to_user(np.asarray(logp, dtype=np.float64))
        call = session.call([("batch", {**base, key: lp0})])
        outcomes = session.generic_outcomes(call, inputs)  # JAX arrays are immutable
        if call.error is not None:
            return None, None, outcomes
        value, more = _scalar(session, be, call.output, inputs)
        if value is None:
            return None, None, outcomes + more
        session.ran(DIFFERENTIABLE)
        try:
            g = jax.grad(lambda v: jnp.reshape(session.fn({**base, key: v}), ()))(lp0)
        except Exception as exc:  # noqa: BLE001 - the user's function, traced
            summary = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return value, None, outcomes + [Outcome(
                DIFFERENTIABLE, f"the loss should be differentiable with respect to logp through jax.grad, "
                                f"actual {summary}", inputs, actual=value)]
        return value, np.asarray(g, dtype=np.float64), outcomes


def _mutated(session, batch, before, inputs) -> list:
    """An outcome naming the batch's arrays the function changed in place (the kit reuses them)."""
    changed = [k for k, v in batch.items()
               if not np.array_equal(session.backend.snapshot(v), before[k], equal_nan=before[k].dtype.kind == "f")]
    if not changed:
        return []
    return [Outcome(MUTATED, f"the batch's arrays should be left unchanged, actual {', '.join(changed)} modified in "
                             f"place", inputs)]


def _scalar(session, be, raw, inputs):
    """The loss as a float, or the outcomes saying it is not one scalar of the backend's float dtype."""
    session.ran(SCALAR)
    try:
        arr = be.to_numpy(raw, "the loss")
    except BadOutput as exc:
        return None, [Outcome(SCALAR, str(exc), inputs)]
    if arr.shape not in ((), (1,)):
        hint = " (a per-token or per-sequence loss: is the aggregation missing?)" if arr.ndim >= 1 else ""
        return None, [Outcome(SCALAR, f"the loss should be one scalar, actual shape {arr.shape}{hint}", inputs)]
    if arr.dtype.kind != "f":
        return None, [Outcome(SCALAR, f"the loss should be a float, actual dtype {arr.dtype}", inputs)]
    session.usable += 1
    return float(arr.reshape(())), []


# -- deterministic checks -------------------------------------------------------------------------

def _edge_batches(tree, pol, theta, G, B, rng):
    """Batches every check passes first: one drawn batch, and the same responses with every reward of a
    group equal (GRPO's std is 0 there, and G = 1 has none at all)."""
    logp_table = pol.log_probs(theta)
    d = _Draw(tree, logp_table, G, B, 1, rng, interleave=False)
    lp = np.where(d.mask[0], logp_table[d.states[0], d.tokens[0]], 0.0)
    base = (lp, d.old[0], d.ref[0], d.rewards[0], d.mask[0], d.group[0])
    flat = np.round(1.0 + 0.0 * d.rewards[0], 3)
    yield "a drawn batch", base
    yield "every reward of every group equal (1.0)", (lp, d.old[0], d.ref[0], flat, d.mask[0], d.group[0])
    if B > 1:
        mixed = d.rewards[0].copy()
        mixed[d.group[0] == 0] = 0.0
        yield "group 0's rewards all 0, the others drawn", (lp, d.old[0], d.ref[0], mixed, d.mask[0], d.group[0])


def _deterministic(session, be, convention, tree, pol, theta, G, B, rng) -> bool:
    """The scalar, differentiable, finite and masked-positions checks; True when every one passed."""
    ok = True
    for label, (lp, old, ref, rewards, mask, group) in _edge_batches(tree, pol, theta, G, B, rng):
        value, D, outcomes = _call_with_grad(session, be, convention, lp, old, ref, rewards, mask, group)
        inputs = _shown(old, ref, rewards, mask, group, lp)
        if value is not None:
            session.ran(FINITE)
            if not np.isfinite(value):
                outcomes.append(Outcome(FINITE, f"the loss should be finite on a batch with {label}, actual "
                                                f"{value}" + _degenerate_hint(label), inputs, actual=value))
            elif D is not None and not np.all(np.isfinite(D[mask])):
                idx = tuple(int(i) for i in np.argwhere(mask & ~np.isfinite(D))[0])
                outcomes.append(Outcome(FINITE, f"d loss / d logp{list(idx)} should be finite on a batch with "
                                                f"{label}, actual {D[idx]}" + _degenerate_hint(label),
                                        inputs, actual=D, where=idx))
        if outcomes:
            for o in outcomes:
                session.record(o)
            ok = False
            continue
        if D is None:
            continue
        # Junk in every masked entry: the loss and the gradient at real tokens must not move, and the
        # gradient at masked entries must be 0.
        jl, jo, jr = (np.where(mask, a, _JUNK[k]) for a, k in ((lp, "logp"), (old, "old_logp"), (ref, "ref_logp")))
        v2, D2, out2 = _call_with_grad(session, be, convention, jl, jo, jr, rewards, mask, group)
        session.ran(MASKED)
        junk_inputs = _shown(jo, jr, rewards, mask, group, jl)
        if out2:
            for o in out2:
                session.record(o)
            ok = False
            continue
        tol = be.tol * (1.0 + abs(value) + float(np.max(np.abs(D), initial=0.0)))
        leak = np.abs(np.where(mask, 0.0, D))
        if leak.max() > tol:
            idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(leak)), leak.shape))
            session.record(Outcome(
                MASKED, f"d loss / d logp{list(idx)} should be 0 at a masked position (mask{list(idx)} is False), "
                        f"actual {D[idx]:.6g} on a batch with {label}: the padding enters the loss (a loss "
                        f"averaged over every position, or not multiplied by the mask?)", inputs,
                expected=np.where(mask, D, 0.0), actual=D, where=idx))
            ok = False
            continue
        if label == "a drawn batch" and not _same_when_shuffled(session, be, convention, value, D, tol, lp, old,
                                                                ref, rewards, mask, group):
            ok = False
            continue
        if abs(v2 - value) > tol or (D2 is not None and np.max(np.abs(np.where(mask, D2 - D, 0.0))) > tol):
            what = (f"the loss should be {value:.10g} whatever the masked entries hold, actual {v2:.10g} with "
                    f"logp = {_JUNK['logp']}, old_logp = {_JUNK['old_logp']}, ref_logp = {_JUNK['ref_logp']} "
                    f"there" if abs(v2 - value) > tol else
                    "d loss / d logp at real tokens should not change when the masked entries change, actual "
                    "a change")
            session.record(Outcome(MASKED, f"{what} (batch with {label}): the padding leaks into the loss "
                                           f"through a ratio, a KL term or a denominator", junk_inputs,
                                   expected=value, actual=v2))
            ok = False
    return ok


def _same_when_shuffled(session, be, convention, value, D, tol, lp, old, ref, rewards, mask, group) -> bool:
    """The batch with its rows reordered so that no group is contiguous: the same loss, the same gradient
    per row (a loss is a function of the set of responses; code that reshapes to (-1, G) is not)."""
    n = len(rewards)
    order = np.argsort(np.arange(n) % (n // len(np.unique(group))), kind="stable")  # group members spread out
    if np.array_equal(order, np.arange(n)):
        return True
    args = (lp[order], old[order], ref[order], rewards[order], mask[order], group[order])
    v2, D2, outcomes = _call_with_grad(session, be, convention, *args)
    session.ran(GROUP_ORDER)
    if outcomes:
        for o in outcomes:
            session.record(o)
        return False
    moved = None if D2 is None else np.max(np.abs(D2 - D[order]))
    if abs(v2 - value) <= tol and (moved is None or moved <= tol):
        return True
    session.record(Outcome(
        GROUP_ORDER, (f"the loss should be {value:.10g} whatever the order of the rows, actual {v2:.10g} with the "
                      f"rows reordered so that the members of a group are not adjacent (group = {group[order]})"
                      if abs(v2 - value) > tol else
                      f"d loss / d logp should move with its row when the rows are reordered, actual a change of "
                      f"{moved:.3g}") + ": groups are known by their ids, not by position (a reshape to "
                                        "(-1, G) pairs responses of different prompts)",
        _shown(*args[1:], logp=args[0]), expected=value, actual=v2))
    return False


def _degenerate_hint(label: str) -> str:
    if "equal" in label or "all 0" in label:
        return (" (a group whose rewards are all equal has std 0: GRPO's (R - mean) / (std + eps) needs the eps, "
                "and a std over a single response, torch's default unbiased std, is NaN)")
    return ""


# -- the statistical stage --------------------------------------------------------------------------

def _per_batch_gradients(session, be, convention, tree, pol, theta, d: _Draw):
    """d loss_b / d theta for every batch b, (N, S, V): logp is log_softmax(theta)[s, y] in the backend,
    per batch from its own copy of theta, so that one backward pass gives every batch's gradient."""
    S, V = theta.shape
    N = d.N
    if be.name == "torch":
        import torch

        th = torch.tensor(np.broadcast_to(theta, (N, S, V)).astype(be.dtype), requires_grad=True)
        table = torch.log_softmax(th, dim=-1)
        bidx = torch.arange(N)[:, None, None]
        lp_all = table[bidx, torch.from_numpy(d.states), torch.from_numpy(d.tokens)]
        lp_all = torch.where(torch.from_numpy(d.mask), lp_all, torch.zeros((), dtype=lp_all.dtype))
        # unbind: one autograd node for all N slices, so the backward pass stacks their gradients once
        # (indexing lp_all[b] would add a zero-filled (N, n, L) gradient per batch: quadratic in N).
        per_batch = torch.unbind(lp_all)
        losses = []
        for b in range(N):
            batch = _user_batch(convention, be, per_batch[b], d.old[b], d.ref[b], d.rewards[b], d.mask[b],
                                d.group[b])
            call = session.call([("batch", batch)])
            if call.error is not None:
                return None, b, session.generic_outcomes(call, _shown(d.old[b], d.ref[b], d.rewards[b],
                                                                      d.mask[b], d.group[b]))
            out = call.output
            if not isinstance(out, torch.Tensor) or out.numel() != 1 or out.grad_fn is None:
                return None, b, [Outcome(DIFFERENTIABLE, "the loss should be a differentiable scalar tensor on "
                                                         "every batch, actual one that is not",
                                         _shown(d.old[b], d.ref[b], d.rewards[b], d.mask[b], d.group[b]))]
            losses.append(out.reshape(()))
        values = torch.stack(losses)
        (g,) = torch.autograd.grad(values.sum(), th, allow_unused=True)
        grads = np.zeros((N, S, V)) if g is None else g.detach().numpy().astype(np.float64)
        return (values.detach().numpy().astype(np.float64), grads), None, []
    import jax
    import jax.numpy as jnp

    with be.context():
        th = jnp.asarray(np.broadcast_to(theta, (N, S, V)).astype(be.dtype))
        key = "logp" if convention == "refpg" else "log_prob"

        def loss_of(t, states, tokens, mask, rest):
            lp = jnp.where(mask, jax.nn.log_softmax(t, axis=-1)[states, tokens], 0.0)
            return jnp.reshape(session.fn({**rest, key: lp}), ())

        vg = jax.value_and_grad(loss_of)
        if convention == "refpg":
            rest = {"old_logp": jnp.asarray(d.old.astype(be.dtype)), "ref_logp": jnp.asarray(d.ref.astype(be.dtype)),
                    "rewards": jnp.asarray(d.rewards.astype(be.dtype)), "mask": jnp.asarray(d.mask),
                    "group": be.to_user(d.group)}
            try:
                t0 = time.perf_counter()
                values, grads = jax.jit(jax.vmap(vg))(th, jnp.asarray(d.states), jnp.asarray(d.tokens),
                                                      jnp.asarray(d.mask), rest)
                session.calls += N
                session.returned += N
                session.user_seconds += time.perf_counter() - t0
                return (np.asarray(values, dtype=np.float64), np.asarray(grads, dtype=np.float64)), None, []
            except Exception:  # noqa: BLE001 - not vmappable: one batch at a time below
                pass
        values, grads = [], []
        for b in range(N):
            shown = _shown(d.old[b], d.ref[b], d.rewards[b], d.mask[b], d.group[b])
            lp = jnp.where(jnp.asarray(d.mask[b]), jax.nn.log_softmax(th[b], -1)[d.states[b], d.tokens[b]], 0.0)
            base = _user_batch(convention, be, lp, d.old[b], d.ref[b], d.rewards[b], d.mask[b], d.group[b])
            call = session.call([("batch", base)])
            if call.error is not None:
                return None, b, session.generic_outcomes(call, shown)
            rest = {k: v for k, v in base.items() if k != key}
            try:
                v, g = vg(th[b], jnp.asarray(d.states[b]), jnp.asarray(d.tokens[b]), jnp.asarray(d.mask[b]), rest)
            except Exception as exc:  # noqa: BLE001
                summary = f"{type(exc).__name__}: {exc}".splitlines()[0]
                return None, b, [Outcome(DIFFERENTIABLE, f"the loss should be differentiable through jax.grad on "
                                                         f"every batch, actual {summary}", shown)]
            values.append(float(v))
            grads.append(np.asarray(g, dtype=np.float64))
        return (np.array(values), np.stack(grads)), None, []


def _tested(tree, shape) -> np.ndarray:
    """Every prefix state (the terminal row is never acted in), every token but the last: a row of a
    tabular softmax gradient sums to 0, so its last entry repeats the others."""
    mask = np.zeros(shape, dtype=bool)
    mask[:tree.n_prefixes, :-1] = True
    return mask


def _mean_test(grads, target, tested, alpha) -> MeanTest:
    r"""Student-t tests of the batches' mean gradient against `target`, Bonferroni at family-wise `alpha`.

    The coordinates are the `_tested` entries of theta, plus one linear functional: the component along
    the target, :math:`g_b \cdot \hat u`, :math:`\hat u = g^*/\|g^*\|` (the last entry of the test's
    arrays). A bug that scales the whole gradient (a std without Bessel's correction, a missing 1/G)
    moves every coordinate by a little and this component by the sum of it.
    """
    cols = np.flatnonzero(tested.ravel())
    X = grads.reshape(grads.shape[0], -1)[:, cols]
    mu = target.ravel()[cols]
    norm = float(np.linalg.norm(mu))
    if norm > 0:
        X = np.concatenate([X, (X @ (mu / norm))[:, None]], axis=1)
        mu = np.append(mu, norm)
    return mean_test(X, mu, alpha=alpha, student=True)


def _entry(test: MeanTest, tested, j: int):
    """(s, a) of entry j of `_mean_test`'s arrays, or None for the component along the target."""
    cols = np.flatnonzero(tested.ravel())
    if j >= len(cols):
        return None
    return tuple(int(i) for i in np.unravel_index(int(cols[j]), tested.shape))


def _passes_clearly(test: MeanTest) -> bool:
    return not test.rejected and float(np.max(np.abs(test.z))) < _HINT_MARGIN * test.threshold


def _cosine(a, b) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a.ravel() @ b.ravel() / (na * nb)) if na > 0 and nb > 0 else float("nan")


def _alternatives(spec, G, target: str):
    """(label, spec or marker) of common other declarations, for the hint."""
    rep = dataclasses.replace
    out = []
    if target == "unbiased":
        out.append(("the declared estimator's own mean (target='declared'): the code computes what it declares, "
                    "but that is biased for -(grad J - beta grad KL_seq)", spec))
    for adv in ("rloo", "group_mean", "grpo"):
        if adv != spec.advantage and not (adv == "rloo" and G < 2):
            why = {"rloo": "leave-one-out baseline", "group_mean": "the group mean as baseline, (G-1)/G x RLOO",
                   "grpo": "group mean and std"}[adv]
            out.append((f"advantage={adv!r} ({why})", rep(spec, advantage=adv)))
    if spec.advantage in ("grpo", "reinforce_pp"):
        other = "population" if spec.std == "bessel" else "bessel"
        out.append((f"std={other!r} ({'without' if other == 'population' else 'with'} Bessel's correction)",
                    rep(spec, std=other)))
    for agg in ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        if agg != spec.aggregation:
            out.append((f"aggregation={agg!r}", rep(spec, aggregation=agg)))
    if spec.has_kl:
        out.append(("the KL term with its sign flipped (the penalty rewarded: verl PR #179)", "flip"))
        out.append(("no KL term at all (kl=None)", rep(spec, kl=None, kl_coef=0.0)))
        for k in ("k1", "k2", "k3"):
            if k != spec.kl:
                out.append((f"kl={k!r}", rep(spec, kl=k)))
        other = "reward" if spec.kl_placement == "loss" else "loss"
        out.append((f"kl_placement={other!r}", rep(spec, kl_placement=other, kl_importance="none")))
    return out


@numerics_of_their_own
def check_llm_loss(fn, *, convention: str = "refpg", backend: str = "torch", dtype: str = "float64",
                   target: str = "declared", group_size: int = 4, n_groups: int = 1, advantage: str = "grpo",
                   std: str = "bessel", adv_eps: float = None, loss: str = "ppo_clip", eps_low: float = 0.2,
                   eps_high: float = None, dual_clip: float = None, aggregation: str = "token-mean",
                   norm_length: float = None, kl: str = None, kl_coef: float = 0.0,
                   kl_placement: str = "loss", kl_importance: str = "none", alpha: float = DEFAULT_ALPHA,
                   n_batches: int = N_BATCHES, seed: int = 0) -> Report:
    r"""Check a whole language-model policy-gradient loss: the mean of its gradient over sampled batches.

    Parameters
    ----------
    fn : callable
        ``fn(batch) -> scalar loss`` (to minimise). By `convention`:

        * ``"refpg"``: `batch` is a dict: ``logp`` (n, L), the current policy's
          token log-probabilities, differentiable (the kit's parameters are behind
          them); ``old_logp``, ``ref_logp`` (n, L), the sampling and reference
          policies'; ``rewards`` (n,), each response's outcome reward; ``mask``
          (n, L) bool, True on a response's own tokens (EOS included);
          ``group`` (n,) int ids, the prompt each response answers. n = G x
          n_groups. A group's rows need not be adjacent: the off-policy stage
          shuffles them when n_groups > 1, and ``llm_loss.group_order`` reorders
          a two-group batch.
        * ``"verl"``: the same batch under verl's field names: ``log_prob``,
          ``old_log_prob``, ``ref_log_prob``, ``response_mask`` (0./1. floats),
          ``token_level_scores`` (n, L, the reward on the last real token) and
          ``uid`` (a NumPy object array of group ids as strings), as verl's
          ``DataProto`` holds them.

        Masked entries of ``logp``, ``old_logp`` and ``ref_logp`` hold 0 in the
        statistical stage and junk in the masked-positions check.
    convention : {"refpg", "verl"}
    backend : {"torch", "jax"}
        torch tensors (``logp`` requires grad through the kit's theta), or JAX
        arrays differentiated by ``jax.grad`` (``jax.vmap`` over the batches when
        the function allows it, else one batch at a time).
    dtype : {"float64", "float32"}
    target : {"declared", "unbiased"}
        ``"declared"``: the mean gradient must equal the exact expected
        gradient of the loss the options below declare
        (`refpg.sequences.expected_gradient`). ``"unbiased"``: it must equal
        :math:`-(\nabla J - \beta\nabla KL_{seq})`, :math:`\beta` = `kl_coef`
        when a KL is declared, else 0; only the on-policy stage runs (off
        policy, a token-level clipped loss is no estimator of the gradient at theta).
    group_size, n_groups : int
        G responses per prompt and prompts per batch.
    advantage, std, adv_eps, loss, eps_low, eps_high, dual_clip, aggregation, norm_length, kl, kl_coef,
    kl_placement, kl_importance
        The declared loss, the fields of `refpg.sequences.LossSpec`. `norm_length`
        defaults to the test tree's maximum length L.
    alpha : float in (0, 1)
        Family-wise false-alarm rate of the mean test, split evenly between the stages.
    n_batches : int >= `MIN_BATCHES`
        Batches per stage.
    seed : int >= 0
        Seeds the draws (the trees and parameters are fixed).

    Returns
    -------
    Report
        ``llm_loss.scalar``, ``llm_loss.differentiable``, ``llm_loss.finite``,
        ``llm_loss.masked_positions``, ``llm_loss.group_order``,
        ``llm_loss.mean_gradient``, ``llm_loss.raised`` and ``llm_loss.input_mutated``.
        When a deterministic check fails, the mean test is listed as not run.

    Raises
    ------
    refpg.errors.InvalidInputError
        A bad option (named with its value), RLOO with G = 1, a KL declared with
        kl_coef 0, too few batches, a group size or group count whose exact
        target cannot be enumerated, or the NumPy backend.

    Notes
    -----
    The deterministic checks run first, on one drawn batch of ``max(2,
    n_groups)`` groups, the same batch with its rows reordered, with junk in
    its masked entries, and with every reward of a group equal. Then two
    stages of `n_batches` batches each, at alpha / 2: (1) on-policy
    (theta_old = theta), groups contiguous; (2) off-policy, theta_old = theta +
    N(0, 0.35^2) noise so that ratios fall outside the clip range on both
    sides, rows interleaved when n_groups > 1. In each, ``logp`` is
    ``log_softmax(theta_b)[s, y]`` for a copy theta_b of theta per batch, so
    one backward pass through the sum of the losses gives every batch's
    gradient in theta. The tree is the largest of three (2 prompts, vocabulary
    3, L = 3; then 1 prompt; then L = 2) whose batches `expected_gradient`
    enumerates. The test: per coordinate of the tabular softmax theta (every
    prefix, every token but the last, the row summing to 0) and for the
    component along the target, :math:`g_b \cdot g^*/\|g^*\|`,
    :math:`t_j = (\bar g_j - g^*_j)/(s_j/\sqrt N)`, rejected when
    :math:`\max_j |t_j|` exceeds the :math:`1 - \alpha/(4k)` quantile of
    Student's t with N - 1 degrees of freedom, k the number of tests. On failure the message gives
    the rejecting coordinates, the exact and estimated means there, the
    relative error :math:`\|\bar g - g^*\|/\|g^*\|` and the cosine of
    :math:`\bar g` and :math:`g^*`, and names any common other declaration
    (RLOO against the group mean, Bessel's std, another aggregation, the KL's
    sign) whose exact mean the estimate matches.
    """
    from refpg.sequences import MAX_TUPLES, LossSpec, count_batches

    check_callable(fn)
    check_choice(convention, "convention", tuple(LLM_LOSS_CONVENTIONS))
    check_choice(target, "target", TARGETS)
    check_choice(backend, "backend", ("torch", "jax"))
    G = check_positive_int(group_size, "group_size")
    B = check_positive_int(n_groups, "n_groups")
    seed = check_positive_int(seed, "seed", minimum=0)
    alpha = check_real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True)
    if isinstance(n_batches, numbers.Integral) and not isinstance(n_batches, bool) and n_batches < MIN_BATCHES:
        raise InvalidInputError(f"n_batches should be >= {MIN_BATCHES}, actual {n_batches}: the t-test estimates "
                                f"each coordinate's standard error from the batches' spread, and a rare prefix "
                                f"needs many batches to have one")
    N = check_positive_int(n_batches, "n_batches", minimum=MIN_BATCHES)
    spec = LossSpec(advantage=advantage, std=std, adv_eps=adv_eps, loss=loss, eps_low=eps_low, eps_high=eps_high,
                    dual_clip=dual_clip, aggregation=aggregation, norm_length=norm_length, kl=kl, kl_coef=kl_coef,
                    kl_placement=kl_placement, kl_importance=kl_importance)
    if spec.advantage == "rloo" and G < 2:
        raise InvalidInputError(f"group_size should be >= 2 for advantage='rloo', actual {G}: a lone response "
                                f"has no others to form its baseline")
    if spec.kl is not None and spec.kl_coef == 0:
        raise InvalidInputError(f"kl_coef should be > 0 when kl={spec.kl!r} is declared, actual 0 (declare kl=None "
                                f"for no KL term)")
    signature_notes = check_signature(fn, "llm_loss", convention, LLM_LOSS_CONVENTIONS)
    be, _ = resolve_backend(fn, backend, dtype, lambda b: True)
    opts = dict(target=target, group_size=G, n_groups=B, alpha=alpha, n_batches=N,
                **{k: getattr(spec, k) for k in _SPEC_FIELDS})
    session = Session("llm_loss", fn, convention, be, max_examples=N, seed=seed, options=opts,
                      warnings=signature_notes)
    # The loss's own shape and finiteness have ids of their own (scalar, finite); the batch is one dict,
    # whose arrays `_call_with_grad` compares before and after each deterministic call.
    session.declare(RAISED, MUTATED)
    session.declare(SCALAR, DIFFERENTIABLE, FINITE, MASKED, GROUP_ORDER, UNBIASED, tracked=True)
    rng = np.random.default_rng(seed)

    tree1, B1 = _stage_tree(spec, G, B)
    if count_batches(tree1, G, B1) > MAX_TUPLES:
        raise InvalidInputError(
            f"group_size={G} with n_groups={B} has no exact target on the kit's smallest test tree "
            f"({count_batches(tree1, G, B1)} batches to enumerate, more than {MAX_TUPLES}): use group_size <= 8, "
            f"and n_groups=1 for token-mean or reinforce_pp (whose batch couples its groups)")
    pol1, theta1, _ = _parameters(tree1)
    if spec.aggregation == "seq-mean-token-sum-norm" and spec.norm_length is None:
        spec = dataclasses.replace(spec, norm_length=float(tree1.max_length))
    if not _deterministic(session, be, convention, tree1, pol1, theta1, G, max(B, 2), rng):
        session.not_run_because(UNBIASED, "the mean test runs after the deterministic checks, and one failed "
                                          "(see there)")
        return session.report()

    stages = [("on-policy", B, False)]
    if target == "declared":
        stages.append(("off-policy", B, True))
    results = []
    for label, B_s, off in stages:
        tree, B_exact = _stage_tree(spec, G, B_s)
        pol, theta, theta_old = _parameters(tree)
        old = theta_old if off else theta
        d = _Draw(tree, pol.log_probs(old), G, B_s, N, rng, interleave=off)
        res, bad, outcomes = _per_batch_gradients(session, be, convention, tree, pol, theta, d)
        if res is None:
            for o in outcomes:
                session.record(o)
            session.not_run_because(UNBIASED, f"batch {bad + 1} of the {label} stage stopped at "
                                              f"{', '.join(sorted({o.check_id for o in outcomes}))} (see there)")
            return session.report()
        values, grads = res
        session.ran(FINITE)
        if not (np.all(np.isfinite(values)) and np.all(np.isfinite(grads))):
            b = int(np.flatnonzero(~(np.isfinite(values) & np.isfinite(grads).all(axis=(1, 2))))[0])
            session.record(Outcome(FINITE, f"the loss and its gradient should be finite on every batch, actual "
                                           f"{values[b]} (or a non-finite gradient) on batch {b + 1} of the "
                                           f"{label} stage",
                                   _shown(d.old[b], d.ref[b], d.rewards[b], d.mask[b], d.group[b])))
            session.not_run_because(UNBIASED, "a batch gave a non-finite loss or gradient (see llm_loss.finite)")
            return session.report()
        if target == "declared":
            expected = _exact_mean(tree, pol, theta, old, spec, G, B_exact)
        else:
            expected = _unbiased_target(tree, pol, theta, spec)
        results.append((label, tree, pol, theta, old, B_s, B_exact, grads, expected))

    session.ran(UNBIASED)
    for label, tree, pol, theta, old, B_s, B_exact, grads, expected in results:
        tested = _tested(tree, expected.shape)
        test = _mean_test(grads, expected, tested, alpha / len(results))
        if not test.rejected:
            continue
        session.record(Outcome(UNBIASED, _message(test, tree, spec, target, label, G, B_s, N, seed, tested, alpha,
                                                  len(results)) + _hint(grads, tree, pol, theta, old, spec, G,
                                                                        B_exact, target, tested, alpha / len(results),
                                                                        expected),
                               {"theta": theta, "theta_old": old}, expected=expected, actual=grads.mean(axis=0),
                               where=_entry(test, tested, test.worst[0])))
        break
    return session.report()


def _describe(tree, s: int, a: int) -> str:
    x, prefix = tree.prefix(s)
    return f"theta[{s}, {a}] (prompt {x}, prefix {prefix}, token {a})"


def _message(test, tree, spec, target, label, G, B, N, seed, tested, alpha, n_stages) -> str:
    (j,) = test.worst
    what = ("the exact mean of the declared loss" if target == "declared" else
            "-(grad J - beta grad KL_seq)" if spec.has_kl else "-grad J")
    entry = _entry(test, tested, j)
    where = (f"d loss / d {_describe(tree, *entry)}" if entry is not None else
             "the component of d loss / d theta along the target direction, g . g*/|g*|,")
    over = np.flatnonzero(np.abs(test.z) > test.threshold)
    names = [f"[{e[0]}, {e[1]}]" if e is not None else "the component along the target"
             for e in (_entry(test, tested, k) for k in over[:8])]
    more = f" and {len(over) - 8} more" if len(over) > 8 else ""
    m, e = test.mean[:-1], test.expected[:-1]  # the coordinates, without the component
    rel = float(np.linalg.norm(m - e) / max(np.linalg.norm(e), 1e-300))
    cos = _cosine(m, e)
    return (f"the mean of {where} over {N} batches should be {test.expected[j]:.6g} ({what}), actual "
            f"{test.mean[j]:.6g} +- {test.stderr[j]:.2g} (t = {test.z[j]:.1f}, |t| threshold {test.threshold:.2f} "
            f"at family-wise alpha = {alpha:g} over {n_stages} stage{'s' * (n_stages > 1)} of {test.z.size} "
            f"tests; {label} stage, {B} group{'s' * (B > 1)} of G = {G} per batch, seed {seed}); rejected: "
            f"{', '.join(names)}{more}; over all tested coordinates the mean gradient has relative error "
            f"{rel:.3g} and cosine {cos:.4f} against the target")


def _hint(grads, tree, pol, theta, old, spec, G, B, target, tested, alpha, expected) -> str:
    fits = []
    base = None
    deadline = time.perf_counter() + _HINT_SECONDS
    for label, alt in _alternatives(spec, G, target):
        if time.perf_counter() > deadline:  # batches of several coupled groups enumerate slowly
            break
        try:
            if isinstance(alt, str):  # "flip": the KL term with the opposite sign
                if base is None:
                    base = _exact_mean(tree, pol, theta, old, dataclasses.replace(spec, kl=None, kl_coef=0.0), G, B)
                declared = expected if target == "declared" else _exact_mean(tree, pol, theta, old, spec, G, B)
                mean = 2.0 * base - declared
            else:
                mean = _exact_mean(tree, pol, theta, old, alt, G, B)
        except InvalidInputError:
            continue
        if _passes_clearly(_mean_test(grads, mean, tested, alpha)):
            fits.append(label)
    if fits:
        return (f"; the same gradients match the exact mean under {' or under '.join(fits)}: declare that if it "
                f"is what the code means to compute, else fix the code")
    # One factor across coordinates (a missing 1/G, a sum instead of a mean)?
    m = grads.mean(axis=0)[tested]
    t = expected[tested]
    if np.dot(t, t) > 0:
        c = float(np.dot(m, t) / np.dot(t, t))
        if abs(c) > 0.05 and _passes_clearly(_mean_test(grads, c * expected, tested, alpha)):
            return (f"; every coordinate is about {c:.3g} x the expected mean: a missing or extra factor (a sum "
                    f"instead of a mean, a denominator counting padding, a loss scaled by the number of groups "
                    f"or of micro-batches)?")
    return ""
