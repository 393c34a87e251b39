r"""The exact mean of a language-model policy-gradient estimator on a token tree.

A batch holds ``n_groups`` groups; each group is a prompt :math:`x\sim\rho` and G
responses drawn from :math:`\pi_{old}(\cdot|x)`. The code under study turns the
batch into group advantages, a token-level loss, an optional KL penalty and an
aggregation, and backpropagates the scalar. `expected_gradient` returns the
exact expectation of that gradient over batches:

.. math::
    \mathbb{E}_{\text{batch}\sim\pi_{old}}\Big[\sum_{i,t} w_{i,t}\,
    \frac{\partial \ell_{i,t}}{\partial\log\pi_\theta(y_{i,t})}\,\nabla_\theta\log\pi_\theta(y_{i,t}|s_{i,t})\Big]

by enumerating every batch (every G-tuple of responses of every prompt, for
every group) with its probability, vectorised; by closed forms where
docs/conventions.md gives one; or, where enumeration would exceed
`MAX_TUPLES` batches, by Monte Carlo with a standard error, and marked so.

The gradient is that of the *loss* (the quantity descended): with an unbiased
estimator and no KL term it is :math:`-\nabla J`.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import NamedTuple

import numpy as np

from refpg._validation import check_choice, check_positive_int, check_real
from refpg.errors import InvalidInputError, ProblemTooLargeError
from refpg.losses.group import ADVANTAGE_ESTIMATORS, advantage_kernel
from refpg.losses.tokens import AGGREGATIONS, KL_ESTIMATORS, TOKEN_LOSSES, clip_bounds, kl_penalty_terms, \
    token_policy_loss
from refpg.sequences.exact import _check_tree

__all__ = ["LossSpec", "EstimatorMean", "expected_gradient", "count_batches", "MAX_TUPLES"]

#: Enumerate at most this many batches; beyond it `method="auto"` turns to Monte Carlo.
MAX_TUPLES = 10 ** 7

#: Batches per vectorised chunk: bounds memory at a few tens of MB.
_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class LossSpec:
    r"""What a language-model policy-gradient loss computes, declared.

    Parameters
    ----------
    advantage : {"rloo", "group_mean", "grpo", "reinforce_pp"}
        The group advantage (`refpg.losses.group`). ``"group_mean"`` is Dr. GRPO's;
        ``"reinforce_pp"`` whitens over the whole batch.
    std : {"bessel", "population"}
        GRPO's std, and REINFORCE++'s ddof.
    adv_eps : float, optional
        The eps added to the std (default 1e-6 for GRPO, 1e-8 for REINFORCE++).
    loss : {"ppo_clip", "gspo", "cispo"}
        The token loss (`refpg.losses.token_policy_loss`).
    eps_low, eps_high, dual_clip : float
        The clip range (eps_high defaults to eps_low) and the dual clip c (None: none).
    aggregation : {"token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"}
        Over every token of the batch (`refpg.losses.aggregation_weights`).
    norm_length : float, optional
        :math:`L_{norm}` of seq-mean-token-sum-norm; default the tree's max_length.
    kl : {None, "k1", "k2", "k3"}
        The per-token KL estimator to pi_ref, or none.
    kl_coef : float
        beta >= 0.
    kl_placement : {"loss", "reward"}
        ``"loss"``: :math:`\beta k_t` added to each token's loss. ``"reward"``: the
        token's advantage gets :math:`-\beta\sum_{t'\ge t} k_{t'}` (a return-to-go
        penalty), with k computed from pi_old (the rollout's log-probs) and detached.
    kl_importance : {"none", "detached", "differentiated"}
        In the loss placement: the penalty is k, sg(r) k or r k (`refpg.losses.kl_penalty_terms`).
    """

    advantage: str = "grpo"
    std: str = "bessel"
    adv_eps: float | None = None
    loss: str = "ppo_clip"
    eps_low: float = 0.2
    eps_high: float | None = None
    dual_clip: float | None = None
    aggregation: str = "token-mean"
    norm_length: float | None = None
    kl: str | None = None
    kl_coef: float = 0.0
    kl_placement: str = "loss"
    kl_importance: str = "none"

    def __post_init__(self):
        check_choice(self.advantage, "advantage", ADVANTAGE_ESTIMATORS)
        check_choice(self.std, "std", ("bessel", "population"))
        if self.adv_eps is not None:
            check_real(self.adv_eps, "adv_eps", low=0.0)
        check_choice(self.loss, "loss", TOKEN_LOSSES)
        clip_bounds(self.eps_low, self.eps_high, self.dual_clip)
        check_choice(self.aggregation, "aggregation", AGGREGATIONS)
        if self.norm_length is not None:
            check_real(self.norm_length, "norm_length", low=0.0, low_open=True)
        if self.kl is not None:
            check_choice(self.kl, "kl", KL_ESTIMATORS)
        check_real(self.kl_coef, "kl_coef", low=0.0)
        check_choice(self.kl_placement, "kl_placement", ("loss", "reward"))
        check_choice(self.kl_importance, "kl_importance", ("none", "detached", "differentiated"))
        if self.kl_placement == "reward" and self.kl_importance != "none":
            raise InvalidInputError("kl_importance applies to kl_placement='loss' only; a KL in the reward is "
                                    "computed from the rollout's log-probs and detached")

    @property
    def has_kl(self) -> bool:
        return self.kl is not None and self.kl_coef > 0


class EstimatorMean(NamedTuple):
    """The expected gradient of a loss, and how it was obtained.

    Attributes
    ----------
    gradient : ndarray of shape ``policy.theta_shape``
        The expected gradient of the loss (the direction code descends).
    method : str
        ``"enumeration"`` (exact), ``"closed_form"`` (exact) or ``"monte_carlo"``
        (an estimate; see `stderr`).
    n_batches : int
        Batches enumerated or sampled.
    stderr : ndarray or None
        Per-coordinate standard error of a Monte Carlo estimate (batch means
        over 50 independent blocks); None for exact methods.
    """

    gradient: np.ndarray
    method: str
    n_batches: int
    stderr: np.ndarray | None = None

    @property
    def exact(self) -> bool:
        return self.method != "monte_carlo"


def count_batches(tree, group_size: int, n_groups: int = 1) -> int:
    r"""Distinct batches: :math:`(\sum_x K_x^G)^{B}` with :math:`K_x` the responses of prompt x (prompts with rho(x) > 0)."""
    _check_tree(tree)
    G = check_positive_int(group_size, "group_size")
    B = check_positive_int(n_groups, "n_groups")
    K_x = np.bincount(tree.responses.prompt, minlength=tree.n_prompts)
    # a prompt that rho never draws contributes no batch
    return int(sum(int(k) ** G for k, p in zip(K_x, tree.prompt_probs) if p > 0)) ** B


# -- per-response quantities -------------------------------------------------------

class _Tokens(NamedTuple):
    """Everything about the tree's K responses that does not depend on the batch, (K, L) or (K,)."""

    h_pos: np.ndarray    # -dl/dlogp / A for A > 0
    h_neg: np.ndarray    # the same for A < 0
    kl_d: np.ndarray     # d(penalty)/dlogp of the KL in the loss, or 0
    to_go: np.ndarray    # sum_{t' >= t} k_t' of the KL in the reward, or 0
    q: np.ndarray        # rho(x_k) pi_old(y_k | x_k), (K,)
    cond: np.ndarray     # pi_old(y_k | x_k), (K,)
    length: np.ndarray   # |y_k|, (K,)
    reward: np.ndarray   # total reward, (K,)


def _token_pieces(tree, policy, theta, theta_old, spec: LossSpec, norm_length) -> _Tokens:
    res = tree.responses
    logp = policy.log_probs(theta)
    logp_old = logp if theta_old is None else policy.log_probs(theta_old)
    lp, lpo = tree.token_log_probs(logp), tree.token_log_probs(logp_old)
    m = res.mask
    kw = dict(loss=spec.loss, eps_low=spec.eps_low, eps_high=spec.eps_high, dual_clip=spec.dual_clip)
    # d l / d logp = -A h(sign A): the token losses are linear in A within each sign.
    h_pos = -token_policy_loss(lp, lpo, np.ones(res.n_responses), m, **kw).dlogp
    h_neg = token_policy_loss(lp, lpo, -np.ones(res.n_responses), m, **kw).dlogp
    zero = np.zeros_like(lp)
    kl_d, to_go = zero, zero
    if spec.has_kl:
        lref = tree.token_log_probs(np.log(tree.ref_probs))
        if spec.kl_placement == "loss":
            kl_d = spec.kl_coef * kl_penalty_terms(lp, lref, m, spec.kl, logp_old=lpo,
                                                   importance=spec.kl_importance).dlogp
        else:
            k = kl_penalty_terms(lpo, lref, m, spec.kl).value
            to_go = spec.kl_coef * np.cumsum(k[:, ::-1], axis=1)[:, ::-1] * m
    cond = np.exp(lpo.sum(axis=1))
    return _Tokens(h_pos, h_neg, kl_d, to_go, tree.prompt_probs[res.prompt] * cond, cond,
                   res.length.astype(np.float64), res.total_reward)


def _group_combos(tree, tok: _Tokens, G):
    """Every (prompt, G-tuple of its responses): indices (C, G) and probabilities (C,)."""
    idx, prob = [], []
    res = tree.responses
    for x in range(tree.n_prompts):
        if tree.prompt_probs[x] == 0:
            continue  # never drawn: its groups have probability 0
        ks = res.of_prompt(x)
        grid = np.stack(np.meshgrid(*([ks] * G), indexing="ij"), axis=-1).reshape(-1, G)
        idx.append(grid)
        prob.append(tree.prompt_probs[x] * np.prod(tok.cond[grid], axis=1))
    return np.concatenate(idx), np.concatenate(prob)


def _batch_weights(spec: LossSpec, length, norm_length):
    """Per-slot aggregation weight omega, (G, B, m): w_{i,t} = omega_i m_{i,t}."""
    n = length.shape[0] * length.shape[1]
    if spec.aggregation == "token-mean":
        return np.broadcast_to(1.0 / np.add.reduce(length.reshape(n, -1), axis=0), length.shape)
    if spec.aggregation == "seq-mean-token-sum":
        return np.full(length.shape, 1.0 / n)
    if spec.aggregation == "seq-mean-token-mean":
        return 1.0 / (n * length)
    return np.full(length.shape, 1.0 / (n * norm_length))


def _accumulate(tok: _Tokens, spec: LossSpec, resp, p, norm_length, acc):
    """Add a chunk of batches to the accumulators.

    `resp` holds response indices laid out (G, B, m), slot-first so that every
    reduction over a group or a batch adds whole rows; `p` (m,) the batches' probabilities.
    """
    K, L = tok.h_pos.shape
    A = advantage_kernel(tok.reward[resp], spec.advantage, std=spec.std, eps=spec.adv_eps)
    omega = p * _batch_weights(spec, tok.length[resp], norm_length)
    flat = resp.ravel()
    if not spec.has_kl or spec.kl_placement == "loss":
        # The token loss is -A h(sign A) per token: per response, one scalar per sign.
        c = (-A * omega).ravel()
        a = A.ravel()
        acc["pos"] += np.bincount(flat, weights=np.where(a > 0, c, 0.0), minlength=K)
        acc["neg"] += np.bincount(flat, weights=np.where(a < 0, c, 0.0), minlength=K)
        if spec.has_kl:
            acc["kl"] += np.bincount(flat, weights=omega.ravel(), minlength=K)
        return
    # A KL in the reward gives each token an advantage of its own, whose sign decides the clip.
    A_tok = A[..., None] - tok.to_go[resp]
    h = np.where(A_tok > 0, tok.h_pos[resp], tok.h_neg[resp])
    c = -(A_tok * h) * omega[..., None]
    acc["tok"] += np.bincount((flat[:, None] * L + np.arange(L)).ravel(), weights=c.ravel(),
                              minlength=K * L).reshape(K, L)


def _new_acc(K, L):
    return {"pos": np.zeros(K), "neg": np.zeros(K), "kl": np.zeros(K), "tok": np.zeros((K, L))}


def _coefficients(tok: _Tokens, acc) -> np.ndarray:
    return (acc["pos"][:, None] * tok.h_pos + acc["neg"][:, None] * tok.h_neg
            + acc["kl"][:, None] * tok.kl_d + acc["tok"])


def _enumerate(tree, tok, spec, G, B, norm_length):
    combos, pc = _group_combos(tree, tok, G)
    comboT = np.ascontiguousarray(combos.T)  # (G, C)
    C = combos.shape[0]
    M = C ** B
    K, L = tok.h_pos.shape
    acc = _new_acc(K, L)
    for start in range(0, M, _CHUNK):
        stop = min(start + _CHUNK, M)
        if B == 1:
            resp, p = comboT[:, None, start:stop], pc[start:stop]
        else:
            digits = np.stack(np.unravel_index(np.arange(start, stop), (C,) * B))  # (B, m)
            resp = comboT[:, digits]  # (G, B, m)
            p = np.prod(pc[digits], axis=0)
        _accumulate(tok, spec, resp, p, norm_length, acc)
    return _coefficients(tok, acc), M


def _monte_carlo(tree, tok, spec, G, B, norm_length, n_batches, seed):
    rng = np.random.default_rng(seed)
    res = tree.responses
    K, L = tok.h_pos.shape
    blocks = 50
    per = max(1, n_batches // blocks)
    rho, cond = tree.prompt_probs, tok.cond
    block_coefs = []
    for _ in range(blocks):
        acc = _new_acc(K, L)
        for start in range(0, per, _CHUNK):
            m = min(_CHUNK, per - start)
            xs = rng.choice(tree.n_prompts, size=(B, m), p=rho)
            resp = np.empty((G, B, m), dtype=np.int64)
            for x in range(tree.n_prompts):
                ks = res.of_prompt(x)
                sel = xs == x
                n_sel = int(sel.sum())
                if n_sel:
                    resp[:, sel] = rng.choice(ks, size=(G, n_sel), p=cond[ks] / cond[ks].sum())
            _accumulate(tok, spec, resp, np.full(m, 1.0 / per), norm_length, acc)
        block_coefs.append(_coefficients(tok, acc))
    return np.stack(block_coefs), blocks * per


def _closed_form(tree, policy, theta, tok, spec, G, norm_length, on_policy):
    """Sums over single responses, where docs/conventions.md gives the group estimator's mean in closed form."""
    why = None
    if not on_policy:
        why = "theta_old differs from theta (clipping and ratios have no closed form)"
    elif spec.advantage not in ("rloo", "group_mean"):
        why = f"advantage={spec.advantage!r} (only rloo and group_mean have one)"
    elif spec.aggregation == "token-mean":
        why = "aggregation='token-mean' (its denominator couples the group's lengths)"
    elif spec.advantage == "rloo" and G < 2:
        why = "RLOO needs group_size >= 2"
    if why is not None:
        raise InvalidInputError(f"no closed form for this estimator: {why}; use method='enumerate'")
    res = tree.responses
    # Per-response weight of the aggregation, times G: 1, 1/L_norm or 1/|y|.
    per = {"seq-mean-token-sum": np.ones(res.n_responses),
           "seq-mean-token-sum-norm": np.full(res.n_responses, 1.0 / norm_length),
           "seq-mean-token-mean": 1.0 / tok.length}[spec.aggregation]
    factor = 1.0 if spec.advantage == "rloo" else (G - 1) / G
    # E[(R_i - mean_{j != i} R_j) s(y_i)] = E[(R - mu_x) s(y)] with mu_x = E[R | x] held fixed.
    mu = np.bincount(res.prompt, weights=tok.cond * tok.reward, minlength=tree.n_prompts)
    coef = (-factor * (tok.reward - mu[res.prompt]) * per)[:, None] * res.mask
    coef = coef + per[:, None] * (tok.kl_d + tok.to_go)
    return tok.q[:, None] * coef


def expected_gradient(tree, policy, theta, *, group_size: int, spec: LossSpec | None = None, theta_old=None,
                      n_groups: int = 1, method: str = "auto", mc_batches: int = 200_000,
                      seed: int = 0) -> EstimatorMean:
    r"""The exact expected gradient of a language-model policy-gradient loss.

    .. math::
        \mathbb{E}_{x_b\sim\rho,\ y_{b,1..G}\sim\pi_{old}(\cdot|x_b)}\Big[\nabla_\theta\,
        \mathrm{agg}_{i,t}\big(\ell(\log\pi_\theta(y_{i,t}), \log\pi_{old}, A_{i,t}) + \beta k_t\big)\Big]

    Parameters
    ----------
    tree : TokenTree
    policy : TabularSoftmax or LogLinear
        A parameterization on ``tree.mdp`` (``tree.tabular_policy()``, ``tree.log_linear_policy()``).
    theta : ndarray
        The parameters differentiated.
    group_size : int
        G, responses per prompt.
    spec : LossSpec, optional
        The declared loss; default ``LossSpec()`` (GRPO, PPO clip 0.2, token-mean).
    theta_old : ndarray, optional
        The sampling policy's parameters; default theta (on-policy).
    n_groups : int
        Groups per batch. Prompts are drawn independently from rho. More than
        one group matters only where the batch couples them: token-mean's
        denominator and REINFORCE++'s whitening.
    method : {"auto", "enumerate", "closed_form", "monte_carlo"}
        ``"auto"``: enumerate when `count_batches` <= `MAX_TUPLES`, else Monte Carlo.
    mc_batches : int
        Batches sampled by Monte Carlo.
    seed : int
        Seeds Monte Carlo.

    Returns
    -------
    EstimatorMean

    Notes
    -----
    Exact identities (tested to 1e-10; docs/conventions.md, "Sequences"), on-policy,
    seq-mean-token-sum: RLOO gives :math:`-\nabla J`; the group mean
    :math:`-\frac{G-1}{G}\nabla J`; k1 in the reward :math:`\beta\nabla KL_{seq}`;
    k1 in the reward plus k1 as a loss, and k3 in the reward plus k3 as a loss,
    :math:`\beta\nabla KL_{seq}`; seq-mean-token-mean with the group mean,
    :math:`-\frac{G-1}{G}[\nabla\mathbb{E}[R/|y|] - \mu\nabla\mathbb{E}[1/|y|]]` [Liu2025].

    References
    ----------
    [Shao2024]; [Ahmadian2024]; [Liu2025]; [Zheng2025]; [TangMunos2025]; [Shah2025].
    """
    tree = _check_tree(tree)
    from refpg.evaluation import check_policy

    policy = check_policy(policy, tree.mdp)
    theta = policy.validate_theta(theta)
    theta_old = None if theta_old is None else policy.validate_theta(theta_old, "theta_old")
    on_policy = theta_old is None or np.array_equal(theta_old, theta)
    spec = LossSpec() if spec is None else spec
    if not isinstance(spec, LossSpec):
        raise InvalidInputError(f"spec should be a refpg.sequences.LossSpec, actual {type(spec).__name__}")
    G = check_positive_int(group_size, "group_size")
    B = check_positive_int(n_groups, "n_groups")
    check_choice(method, "method", ("auto", "enumerate", "closed_form", "monte_carlo"))
    if spec.advantage == "rloo" and G < 2:
        raise InvalidInputError(f"group_size is {G}; advantage='rloo' needs group_size >= 2")
    norm_length = float(tree.max_length) if spec.norm_length is None else float(spec.norm_length)
    tok = _token_pieces(tree, policy, theta, None if on_policy else theta_old, spec, norm_length)
    pi = policy.probs(theta)

    def grad(coef):
        return policy.log_prob_vjp(theta, tree.token_weights(coef), pi)

    M = count_batches(tree, G, B)
    if method == "closed_form":
        if B != 1 and spec.advantage == "reinforce_pp":
            raise InvalidInputError("no closed form for reinforce_pp")
        return EstimatorMean(grad(_closed_form(tree, policy, theta, tok, spec, G, norm_length, on_policy)),
                             "closed_form", 0)
    if method == "enumerate" or (method == "auto" and M <= MAX_TUPLES):
        if M > 10 * MAX_TUPLES:
            raise ProblemTooLargeError(
                f"enumerating {M} batches (group_size={G}, n_groups={B}, {tree.responses.n_responses} responses) "
                f"is more than 10 x MAX_TUPLES = {10 * MAX_TUPLES}; use method='monte_carlo'")
        coef, M = _enumerate(tree, tok, spec, G, B, norm_length)
        return EstimatorMean(grad(coef), "enumeration", M)
    n = check_positive_int(mc_batches, "mc_batches", minimum=50)
    coefs, n_used = _monte_carlo(tree, tok, spec, G, B, norm_length, n, seed)
    blocks = np.stack([grad(c) for c in coefs])
    return EstimatorMean(blocks.mean(axis=0), "monte_carlo", n_used,
                         blocks.std(axis=0, ddof=1) / np.sqrt(blocks.shape[0]))
