"""refpg.sequences: token trees, their exact targets, and the exact mean of LLM policy-gradient estimators.

Every exact quantity is checked three ways: against the tabular core on the
tree's MDP, against central finite differences, and against torch autograd
through an independent computation over responses. The exact estimator mean is
checked against a brute-force torch implementation that builds every batch,
computes the loss as the libraries write it, backpropagates and weights the
gradient by the batch's probability.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refpg
import refpg.algorithms
from refpg.errors import InvalidInputError, NonFiniteError, ProblemTooLargeError, ShapeError
from refpg.sequences import (
    LossSpec,
    TokenTree,
    count_batches,
    expected_gradient,
    length_bias_tree,
    local_forward_kl_gradient,
    local_kl_gradient,
    penalty_mdp,
    prefix_reach,
    random_tree,
    regularized_objective,
    regularized_objective_gradient,
    sequence_kl,
    sequence_kl_gradient,
    sequence_objective,
    sequence_objective_gradient,
)

torch = pytest.importorskip("torch")

EXACT = 1e-10


def close(a, b, tol=EXACT):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b)))


@st.composite
def trees(draw, max_prompts=2, max_vocab=3, max_length=3):
    seed = draw(st.integers(0, 10 ** 6))
    X = draw(st.integers(1, max_prompts))
    V = draw(st.integers(2, max_vocab))
    L = draw(st.integers(1, max_length))
    tree = random_tree(seed, n_prompts=X, vocab_size=V, max_length=L, binary_reward=draw(st.booleans()),
                       token_rewards=draw(st.booleans()))
    family = draw(st.sampled_from(["tabular", "log_linear"]))
    policy = tree.tabular_policy() if family == "tabular" else tree.log_linear_policy()
    rng = np.random.default_rng(seed + 1)
    theta = rng.normal(0.0, 0.7, policy.theta_shape)
    return tree, policy, theta


# -- the tree --------------------------------------------------------------------------

def test_tree_shape_and_responses():
    tree = TokenTree(2, 3, 3, lambda x, y: float(len(y)))
    # prefixes per prompt: 1 + 2 + 4 (non-EOS tokens), responses: 1 + 2 + 4*3
    assert tree.n_prefixes == 2 * 7 and tree.n_states == 15
    res = tree.responses
    assert res.n_responses == 2 * (1 + 2 + 12)
    assert np.array_equal(res.reward, res.length.astype(float))
    for k in range(res.n_responses):
        x, y = tree.response(k)
        assert len(y) == res.length[k] and (y[-1] == tree.eos or len(y) == tree.max_length)
        assert tree.eos not in y[:-1]
        assert [tree.state_of(x, y[:t]) for t in range(len(y))] == list(res.states[k, :len(y)])
    assert tree.prefix(tree.state_of(1, (2, 1))) == (1, (2, 1))


@given(trees())
def test_response_probabilities_sum_to_one(case):
    tree, policy, theta = case
    p = np.exp(tree.response_log_probs(policy.log_probs(theta)))
    sums = np.bincount(tree.responses.prompt, weights=p)
    assert close(sums, np.ones(tree.n_prompts))
    table = tree.response_table(policy.probs(theta))
    assert [row[:2] for row in table] == [tree.response(k) for k in range(len(table))]
    assert close([row[2] for row in table], p)


@given(trees())
def test_tree_is_a_proper_tabular_mdp(case):
    """The exact core applies unchanged: J, the gradient, visits, Fisher all agree with sums over responses."""
    tree, policy, theta = case
    mdp = tree.mdp
    assert mdp.gamma == 1.0 and mdp.terminal[tree.terminal_state] and mdp.is_proper()
    assert close(refpg.objective(mdp, policy, theta), sequence_objective(tree, policy, theta))
    assert close(refpg.policy_gradient(mdp, policy, theta), sequence_objective_gradient(tree, policy, theta))
    ev = refpg.evaluate(mdp, policy.probs(theta))
    assert close(ev.visits, prefix_reach(tree, policy, theta))
    # Fisher: E_s~visits E_a[score score^T] / horizon, against the score of whole responses:
    # sum_t score_t are martingale increments, so E[score(y) score(y)^T] = horizon * F.
    F = refpg.fisher_matrix(mdp, policy, theta)
    logp = policy.log_probs(theta)
    P = tree.prompt_probs[tree.responses.prompt] * np.exp(tree.response_log_probs(logp))
    one = np.eye(tree.responses.n_responses)[:, :, None] * tree.responses.mask[None]
    scores = policy.log_prob_vjp(theta, tree.token_weights(one), np.exp(logp)).reshape(len(P), -1)
    assert close(ev.horizon * F, np.einsum("k,ki,kj->ij", P, scores, scores), 1e-9)


def test_algorithms_run_on_the_tree_unchanged():
    tree = length_bias_tree(3)
    for policy in (tree.tabular_policy(), tree.log_linear_policy()):
        theta = np.zeros(policy.theta_shape)
        J0 = refpg.objective(tree.mdp, policy, theta)
        npg = refpg.algorithms.npg_step(tree.mdp, policy, theta, eta=0.5)
        trpo = refpg.algorithms.trpo_step(tree.mdp, policy, theta, max_kl=0.01)
        ppo = refpg.algorithms.ppo_update(tree.mdp, policy, theta, mode="exact", epochs=5, lr=0.05)
        for new in (npg.theta, trpo.theta, ppo.theta):
            assert refpg.objective(tree.mdp, policy, new) > J0
        kl = refpg.kl_divergence(tree.mdp, policy, trpo.theta, theta_old=theta)
        assert kl <= 0.01 * (1 + 1e-9)


def test_log_linear_shares_weights_across_prefixes():
    tree = random_tree(0, n_prompts=2, vocab_size=3, max_length=3)
    pol = tree.log_linear_policy()
    assert pol.n_params < tree.n_states * tree.vocab_size
    # one weight moves the logits of every prefix sharing a feature
    e = np.zeros(pol.theta_shape)
    e[0] = 1.0
    moved = np.abs(pol.logits(e)[:tree.n_prefixes]).sum(axis=1) > 0
    assert moved.all()


def test_tree_bad_inputs():
    with pytest.raises(InvalidInputError, match="vocab_size should be >= 2"):
        TokenTree(1, 1, 2, lambda x, y: 0.0)
    with pytest.raises(InvalidInputError, match="eos should be a token in 0..2"):
        TokenTree(1, 3, 2, lambda x, y: 0.0, eos=3)
    with pytest.raises(InvalidInputError, match=r"reward\(0, \(0,\)\) returned nan"):
        TokenTree(1, 3, 2, lambda x, y: float("nan"))
    with pytest.raises(ShapeError, match=r"reward should have shape \(7,\)"):
        TokenTree(1, 3, 2, np.zeros(6))
    with pytest.raises(ProblemTooLargeError, match="MAX_PREFIXES"):
        TokenTree(1, 10, 6, lambda x, y: 0.0)
    with pytest.raises(InvalidInputError, match="prompt_probs sums to"):
        TokenTree(2, 3, 2, lambda x, y: 0.0, prompt_probs=[0.5, 0.6])
    with pytest.raises(ShapeError, match=r"ref_logits\(0, \(\)\) should have shape \(3,\)"):
        TokenTree(1, 3, 2, lambda x, y: 0.0, ref_logits=lambda x, p: np.zeros(2))
    with pytest.raises(NonFiniteError, match=r"ref_logits\(0, \(\)\)\[1\] is -inf"):
        TokenTree(1, 3, 2, lambda x, y: 0.0, ref_logits=lambda x, p: np.array([0.0, -np.inf, 0.0]))
    tree = TokenTree(1, 3, 2, lambda x, y: 0.0)
    with pytest.raises(InvalidInputError, match="not a prefix of this tree"):
        tree.state_of(0, (0,))
    with pytest.raises(InvalidInputError, match="tree should be a refpg.sequences.TokenTree"):
        sequence_objective(tree.mdp, tree.tabular_policy(), np.zeros((4, 3)))
    with pytest.raises(ShapeError, match="theta"):
        sequence_kl(tree, tree.tabular_policy(), np.zeros((3, 3)))


# -- exact targets: finite differences and torch autograd ---------------------------------

def _torch_targets(tree, policy, theta):
    """J and KL_seq through torch, summed over responses (independent of refpg's code paths)."""
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    if isinstance(policy, refpg.LogLinear):
        z = torch.einsum("sad,d->sa", torch.tensor(policy.features), th)
    else:
        z = th
    logp = torch.log_softmax(z, dim=-1)
    res = tree.responses
    tok = logp[torch.tensor(res.states), torch.tensor(res.tokens)] * torch.tensor(res.mask)
    lref = torch.tensor(np.log(tree.ref_probs))[torch.tensor(res.states), torch.tensor(res.tokens)]
    seq = tok.sum(1)
    P = torch.tensor(tree.prompt_probs[res.prompt]) * torch.exp(seq)
    J = (P * torch.tensor(res.total_reward)).sum()
    KL = (P * ((tok - lref) * torch.tensor(res.mask)).sum(1)).sum()
    return th, J, KL


def _fd(f, theta, h=1e-6):
    g = np.zeros_like(theta)
    for i in np.ndindex(theta.shape):
        e = np.zeros_like(theta)
        e[i] = h
        g[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return g


@settings(max_examples=25)
@given(trees(max_length=2), st.floats(0.0, 2.0))
def test_exact_targets_against_finite_differences_and_autograd(case, beta):
    tree, policy, theta = case
    th, J, KL = _torch_targets(tree, policy, theta)
    assert close(J.item(), sequence_objective(tree, policy, theta))
    assert close(KL.item(), sequence_kl(tree, policy, theta))
    gJ = torch.autograd.grad(J, th, retain_graph=True)[0].numpy()
    gKL = torch.autograd.grad(KL, th)[0].numpy()
    assert close(sequence_objective_gradient(tree, policy, theta), gJ)
    assert close(sequence_kl_gradient(tree, policy, theta), gKL)
    g_reg = regularized_objective_gradient(tree, policy, theta, beta)
    assert close(g_reg, gJ - beta * gKL)
    fd = _fd(lambda t: regularized_objective(tree, policy, t, beta), theta)
    assert np.allclose(g_reg, fd, rtol=1e-6, atol=1e-7)
    # the tabular core's route to grad KL_seq: the policy gradient of l held fixed as a reward
    l = policy.log_probs(theta) - np.log(tree.ref_probs)
    assert close(refpg.policy_gradient(penalty_mdp(tree, l), policy, theta), gKL)


def _local_by_autograd(tree, policy, theta, forward: bool):
    """Local gradients: differentiate the per-state KL with the visit weights held fixed."""
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    z = torch.einsum("sad,d->sa", torch.tensor(policy.features), th) if isinstance(policy, refpg.LogLinear) else th
    logp = torch.log_softmax(z, dim=-1)
    lref = torch.tensor(np.log(tree.ref_probs))
    w = torch.tensor(prefix_reach(tree, policy, theta))
    if forward:
        per_state = (torch.exp(lref) * (lref - logp)).sum(-1)  # KL(pi_ref || pi_theta)
        total = (w * per_state).sum()
    else:
        # g_loc = E[l grad log pi]: the gradient of sum_s w(s) sum_a sg(pi) l sg... written as a surrogate
        pi = torch.exp(logp).detach()
        l = (logp - lref).detach()
        total = (w[:, None] * pi * l * logp).sum()
    return torch.autograd.grad(total, th)[0].numpy()


@settings(max_examples=25)
@given(trees())
def test_local_gradients_against_autograd(case):
    tree, policy, theta = case
    assert close(local_kl_gradient(tree, policy, theta), _local_by_autograd(tree, policy, theta, False))
    assert close(local_forward_kl_gradient(tree, policy, theta), _local_by_autograd(tree, policy, theta, True))
    # and by central differences of the same surrogates, visits and the detached factors frozen at theta
    w = prefix_reach(tree, policy, theta)
    lref = np.log(tree.ref_probs)
    pi0, l0 = policy.probs(theta), policy.log_probs(theta) - lref

    def forward(t):
        return float(w @ (tree.ref_probs * (lref - policy.log_probs(t))).sum(axis=1))

    def local(t):
        return float((w[:, None] * pi0 * l0 * policy.log_probs(t)).sum())

    assert np.allclose(local_forward_kl_gradient(tree, policy, theta), _fd(forward, theta), rtol=1e-6, atol=1e-8)
    assert np.allclose(local_kl_gradient(tree, policy, theta), _fd(local, theta), rtol=1e-6, atol=1e-8)


# -- the exact estimator mean: identities of docs/conventions.md ------------------------------

@settings(max_examples=30)
@given(trees(), st.integers(2, 3), st.floats(0.1, 2.0))
def test_identities_exact(case, G, beta):
    tree, policy, theta = case
    gJ = sequence_objective_gradient(tree, policy, theta)
    gKL = sequence_kl_gradient(tree, policy, theta)
    tsum = dict(aggregation="seq-mean-token-sum")

    def mean(**kw):
        e = expected_gradient(tree, policy, theta, group_size=G, spec=LossSpec(**{**tsum, **kw}),
                              method="enumerate")
        assert e.exact and e.n_batches == count_batches(tree, G)
        return e.gradient

    assert close(mean(advantage="rloo"), -gJ)
    assert close(mean(advantage="group_mean"), -(G - 1) / G * gJ)
    # KL terms alone: subtract the policy part
    base = mean(advantage="rloo")

    def kl_part(k, placement):
        return (mean(advantage="rloo", kl=k, kl_coef=beta, kl_placement=placement) - base) / beta

    assert close(kl_part("k1", "reward"), gKL)
    assert close(kl_part("k1", "loss"), np.zeros_like(gKL), 1e-10 * max(1.0, np.abs(gKL).max()))
    assert close(kl_part("k1", "reward") + kl_part("k1", "loss"), gKL)
    assert close(kl_part("k3", "reward") + kl_part("k3", "loss"), gKL)
    assert close(kl_part("k2", "loss"), local_kl_gradient(tree, policy, theta))
    assert close(kl_part("k3", "loss"), local_forward_kl_gradient(tree, policy, theta))


def _length_bias_by_tree(tree, policy, theta, G):
    """(G-1)/G [grad E[R/|y|] - mu grad E[1/|y|]], mu = E[R|x] fixed: the score-function gradient of a
    second tree whose reward is (R - mu_x)/|y| (an independent route to the formula)."""
    res = tree.responses
    cond = np.exp(tree.response_log_probs(policy.log_probs(theta)))
    mu = np.bincount(res.prompt, weights=cond * res.total_reward, minlength=tree.n_prompts)
    R2 = (res.total_reward - mu[res.prompt]) / res.length
    twin = TokenTree(tree.n_prompts, tree.vocab_size, tree.max_length, R2, prompt_probs=tree.prompt_probs)
    return (G - 1) / G * sequence_objective_gradient(twin, policy, theta)


@settings(max_examples=30)
@given(trees(), st.integers(2, 3))
def test_length_bias_formula(case, G):
    tree, policy, theta = case
    spec = LossSpec(advantage="group_mean", aggregation="seq-mean-token-mean")
    e = expected_gradient(tree, policy, theta, group_size=G, spec=spec, method="enumerate").gradient
    c = expected_gradient(tree, policy, theta, group_size=G, spec=spec, method="closed_form").gradient
    want = -_length_bias_by_tree(tree, policy, theta, G)
    assert close(e, want) and close(c, want)


CLOSED = [LossSpec(advantage=a, aggregation=g, kl=k, kl_coef=0.3, kl_placement=p, kl_importance=i, loss=lo)
          for a in ("rloo", "group_mean")
          for g in ("seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
          for k, p, i in ((None, "loss", "none"), ("k2", "loss", "differentiated"), ("k3", "reward", "none"))
          for lo in ("ppo_clip", "cispo")]


@pytest.mark.parametrize("spec", CLOSED[::3] + CLOSED[1::5], ids=lambda s: f"{s.advantage}-{s.aggregation}-{s.kl}"
                         f"-{s.kl_placement}-{s.loss}")
def test_closed_form_matches_enumeration(spec):
    tree = random_tree(7, n_prompts=2, vocab_size=3, max_length=3, token_rewards=True)
    for policy in (tree.tabular_policy(), tree.log_linear_policy()):
        theta = np.random.default_rng(3).normal(0.0, 0.5, policy.theta_shape)
        e = expected_gradient(tree, policy, theta, group_size=3, spec=spec, method="enumerate")
        c = expected_gradient(tree, policy, theta, group_size=3, spec=spec, method="closed_form")
        assert c.method == "closed_form" and close(e.gradient, c.gradient)


def test_closed_form_refuses_where_none_exists():
    tree = random_tree(1, n_prompts=1, vocab_size=3, max_length=2)
    pol = tree.tabular_policy()
    th = np.zeros(pol.theta_shape)
    for kw, why in ((dict(spec=LossSpec(advantage="grpo")), "advantage='grpo'"),
                    (dict(spec=LossSpec(advantage="rloo")), "token-mean"),
                    (dict(spec=LossSpec(advantage="rloo", aggregation="seq-mean-token-sum"), theta_old=th + 0.1),
                     "theta_old differs")):
        with pytest.raises(InvalidInputError, match=why):
            expected_gradient(tree, pol, th, group_size=2, method="closed_form", **kw)


# -- the exact estimator mean against brute force in torch ------------------------------------

def _torch_adv(R, spec, B, G):
    R = R.reshape(B, G)
    if spec.advantage == "rloo":
        A = R - (R.sum(1, keepdim=True) - R) / (G - 1)
    elif spec.advantage == "group_mean":
        A = R - R.mean(1, keepdim=True)
    elif spec.advantage == "grpo":
        eps = 1e-6 if spec.adv_eps is None else spec.adv_eps
        sd = R.std(1, unbiased=spec.std == "bessel", keepdim=True) if G > 1 else torch.zeros_like(R)
        flat = (R.max(1, keepdim=True).values == R.min(1, keepdim=True).values)
        A = torch.where(flat, torch.zeros_like(R), (R - R.mean(1, keepdim=True)) / (sd + eps))
    else:
        eps = 1e-8 if spec.adv_eps is None else spec.adv_eps
        flat = R.max() == R.min()
        sd = R.std(unbiased=spec.std == "bessel")
        A = torch.zeros_like(R) if flat else (R - R.mean()) / (sd + eps)
    return A.reshape(-1)


def _torch_batch_loss(tree, logp_all, logp_old_all, resp, spec, B, G):
    """The scalar loss of one batch, written as TRL/verl write it (torch ops on padded (n, L) tensors)."""
    res = tree.responses
    idx = torch.tensor(resp)
    st_, tk = torch.tensor(res.states)[idx], torch.tensor(res.tokens)[idx]
    m = torch.tensor(res.mask)[idx].double()
    lp = logp_all[st_, tk] * m
    lpo = (logp_old_all[st_, tk] * m).detach()
    lref = torch.tensor(np.log(tree.ref_probs))[st_, tk] * m
    R = torch.tensor(res.total_reward)[idx]
    A = _torch_adv(R, spec, B, G)[:, None].expand_as(lp)
    if spec.has_kl and spec.kl_placement == "reward":
        u_old = lref - lpo
        k = {"k1": -u_old, "k2": 0.5 * u_old ** 2, "k3": torch.exp(u_old) - 1 - u_old}[spec.kl] * m
        A = A - spec.kl_coef * torch.flip(torch.cumsum(torch.flip(k, [1]), 1), [1])
    lo, hi = spec.eps_low, spec.eps_low if spec.eps_high is None else spec.eps_high
    logr = (lp - lpo) * m
    if spec.loss == "gspo":
        s = torch.exp(logr.sum(1, keepdim=True) / m.sum(1, keepdim=True))
        ratio = s.detach() * torch.exp(lp - lp.detach())
    else:
        ratio = torch.exp(logr)
    if spec.loss == "cispo":
        loss = -torch.clamp(ratio, 1 - lo, 1 + hi).detach() * A * lp
    else:
        obj = torch.min(ratio * A, torch.clamp(ratio, 1 - lo, 1 + hi) * A)
        if spec.dual_clip is not None:
            obj = torch.where(A < 0, torch.max(obj, spec.dual_clip * A), obj)
        loss = -obj
    if spec.has_kl and spec.kl_placement == "loss":
        u = lref - lp
        k = {"k1": -u, "k2": 0.5 * u ** 2, "k3": torch.exp(u) - 1 - u}[spec.kl]
        r = torch.exp(lp - lpo)
        k = {"none": k, "detached": r.detach() * k, "differentiated": r * k}[spec.kl_importance]
        loss = loss + spec.kl_coef * k
    n = len(resp)
    if spec.aggregation == "token-mean":
        return (loss * m).sum() / m.sum()
    if spec.aggregation == "seq-mean-token-sum":
        return (loss * m).sum() / n
    if spec.aggregation == "seq-mean-token-mean":
        return ((loss * m).sum(1) / m.sum(1)).mean()
    L_norm = tree.max_length if spec.norm_length is None else spec.norm_length
    return (loss * m).sum() / (n * L_norm)


def _brute_force(tree, policy, theta, theta_old, spec, G, B):
    res = tree.responses
    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    feats = torch.tensor(policy.features) if isinstance(policy, refpg.LogLinear) else None
    z = torch.einsum("sad,d->sa", feats, th) if feats is not None else th
    logp_all = torch.log_softmax(z, -1)
    logp_old_np = policy.log_probs(theta_old)
    logp_old_all = torch.tensor(logp_old_np)
    cond = np.exp(tree.response_log_probs(logp_old_np))
    groups = [(tree.prompt_probs[x] * np.prod(cond[list(c)]), list(c))
              for x in range(tree.n_prompts) for c in itertools.product(res.of_prompt(x), repeat=G)]
    total = torch.zeros((), dtype=torch.float64)
    for batch in itertools.product(groups, repeat=B):
        p = float(np.prod([b[0] for b in batch]))
        resp = [k for b in batch for k in b[1]]
        total = total + p * _torch_batch_loss(tree, logp_all, logp_old_all, resp, spec, B, G)
    return torch.autograd.grad(total, th)[0].numpy()


BRUTE = [
    (LossSpec(), 2, 1),
    (LossSpec(advantage="grpo", std="population", eps_low=0.1, eps_high=0.28), 3, 1),
    (LossSpec(advantage="grpo", dual_clip=2.0, eps_low=0.1), 2, 1),
    (LossSpec(advantage="rloo", loss="gspo", aggregation="seq-mean-token-mean", eps_low=0.05), 2, 1),
    (LossSpec(advantage="group_mean", loss="gspo", aggregation="seq-mean-token-sum", eps_low=0.05), 2, 1),
    (LossSpec(advantage="group_mean", loss="cispo", eps_low=0.9, eps_high=0.1), 2, 1),
    (LossSpec(advantage="grpo", kl="k3", kl_coef=0.5, kl_importance="differentiated"), 2, 1),
    (LossSpec(advantage="grpo", kl="k2", kl_coef=0.5, kl_importance="detached",
              aggregation="seq-mean-token-sum-norm", norm_length=5.0), 2, 1),
    (LossSpec(advantage="rloo", kl="k1", kl_coef=0.7, kl_placement="reward", eps_low=0.1), 2, 1),
    (LossSpec(advantage="grpo", kl="k3", kl_coef=0.7, kl_placement="reward", dual_clip=1.5, eps_low=0.1,
              eps_high=0.2), 2, 1),
    (LossSpec(advantage="reinforce_pp", std="bessel"), 2, 2),
    (LossSpec(advantage="grpo", aggregation="token-mean"), 1, 2),
]


@pytest.mark.parametrize("spec,G,B", BRUTE, ids=[f"case{i}" for i in range(len(BRUTE))])
@pytest.mark.parametrize("family", ["tabular", "log_linear"])
def test_enumeration_matches_brute_force_autograd(spec, G, B, family):
    tree = random_tree(11, n_prompts=2 if B == 1 else 1, vocab_size=3, max_length=2, token_rewards=True)
    policy = tree.tabular_policy() if family == "tabular" else tree.log_linear_policy()
    rng = np.random.default_rng(5)
    theta = rng.normal(0.0, 0.6, policy.theta_shape)
    theta_old = theta + rng.normal(0.0, 0.4, policy.theta_shape)  # off-policy: ratios on every side of the clip
    got = expected_gradient(tree, policy, theta, group_size=G, n_groups=B, spec=spec, theta_old=theta_old,
                            method="enumerate")
    want = _brute_force(tree, policy, theta, theta_old, spec, G, B)
    assert close(got.gradient, want), np.abs(got.gradient - want).max()


def test_brute_force_cases_cover_every_clip_region():
    """The off-policy draw of the brute-force test puts ratios below, inside and above the clip range."""
    tree = random_tree(11, n_prompts=2, vocab_size=3, max_length=2, token_rewards=True)
    pol = tree.tabular_policy()
    rng = np.random.default_rng(5)
    theta = rng.normal(0.0, 0.6, pol.theta_shape)
    theta_old = theta + rng.normal(0.0, 0.4, pol.theta_shape)
    r = np.exp(tree.token_log_probs(pol.log_probs(theta)) - tree.token_log_probs(pol.log_probs(theta_old)))
    r = r[tree.responses.mask]
    assert (r < 0.9).any() and ((r > 0.9) & (r < 1.1)).any() and (r > 1.28).any() and (r > 2.0).any()


# -- Monte Carlo, and the limits --------------------------------------------------------------

def test_monte_carlo_is_marked_and_agrees_within_its_error():
    tree = random_tree(2, n_prompts=2, vocab_size=3, max_length=3)
    pol = tree.tabular_policy()
    th = np.random.default_rng(0).normal(0.0, 0.5, pol.theta_shape)
    spec = LossSpec(advantage="grpo", eps_low=0.1)
    exact = expected_gradient(tree, pol, th, group_size=2, spec=spec, theta_old=th + 0.2, method="enumerate")
    mc = expected_gradient(tree, pol, th, group_size=2, spec=spec, theta_old=th + 0.2, method="monte_carlo",
                           mc_batches=100_000, seed=3)
    assert mc.method == "monte_carlo" and not mc.exact and mc.stderr is not None
    live = mc.stderr > 0
    # 45 coordinates at 5 standard errors: false-alarm rate below 3e-5 (t with 49 dof: about 1e-5 per coordinate)
    z = np.abs(mc.gradient - exact.gradient)[live] / mc.stderr[live]
    assert z.max() < 5.0
    assert np.array_equal(mc.gradient[~live], exact.gradient[~live])
    # and it would see a wrong estimator: RLOO's mean sits many standard errors away
    other = expected_gradient(tree, pol, th, group_size=2, spec=LossSpec(advantage="group_mean", eps_low=0.1),
                              theta_old=th + 0.2, method="enumerate")
    assert (np.abs(mc.gradient - other.gradient)[live] / mc.stderr[live]).max() > 10


def test_auto_switches_to_monte_carlo_beyond_max_tuples(monkeypatch):
    import refpg.sequences.estimators as est

    tree = random_tree(2, n_prompts=1, vocab_size=3, max_length=2)
    pol = tree.tabular_policy()
    th = np.zeros(pol.theta_shape)
    assert count_batches(tree, 2) == 7 ** 2
    monkeypatch.setattr(est, "MAX_TUPLES", 49)
    assert expected_gradient(tree, pol, th, group_size=2).method == "enumeration"
    monkeypatch.setattr(est, "MAX_TUPLES", 48)
    r = expected_gradient(tree, pol, th, group_size=2, mc_batches=500)
    assert r.method == "monte_carlo"


def test_estimator_bad_inputs():
    tree = random_tree(1, n_prompts=1, vocab_size=3, max_length=2)
    pol = tree.tabular_policy()
    th = np.zeros(pol.theta_shape)
    with pytest.raises(InvalidInputError, match="advantage should be one of"):
        LossSpec(advantage="ppo")
    with pytest.raises(InvalidInputError, match="aggregation should be one of .*did you mean 'token-mean'"):
        LossSpec(aggregation="token_mean")
    with pytest.raises(InvalidInputError, match="dual_clip should be > 1"):
        LossSpec(dual_clip=1.0)
    with pytest.raises(InvalidInputError, match="kl_importance applies to kl_placement='loss' only"):
        LossSpec(kl="k1", kl_placement="reward", kl_importance="detached")
    with pytest.raises(InvalidInputError, match="group_size is 1; advantage='rloo' needs group_size >= 2"):
        expected_gradient(tree, pol, th, group_size=1, spec=LossSpec(advantage="rloo"))
    with pytest.raises(InvalidInputError, match="spec should be a refpg.sequences.LossSpec"):
        expected_gradient(tree, pol, th, group_size=2, spec={"advantage": "rloo"})
    with pytest.raises(ShapeError, match="theta_old"):
        expected_gradient(tree, pol, th, group_size=2, theta_old=np.zeros(3))
    big = random_tree(1, n_prompts=2, vocab_size=3, max_length=4)
    with pytest.raises(ProblemTooLargeError, match="monte_carlo"):
        expected_gradient(big, big.tabular_policy(), np.zeros(big.tabular_policy().theta_shape), group_size=6,
                          method="enumerate")


def test_readme_language_model_example_runs():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Language models\n.*?```python\n(.*?)```", text, re.S).group(1)
    exec(compile(code, "README language-model example", "exec"), {})
