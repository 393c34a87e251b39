"""`check_llm_loss`: whole language-model losses judged by the mean of their gradient on a token tree.

The bundled examples (refpg.examples.llm_whole_losses) at seeds 0..5: every correct one passes, every
broken one fails with its check id and, for the mean test, a hint naming the declaration its gradients
match; the kit's per-batch gradients against an independent computation; the declarations refused; the
regions that decide correctness drawn by construction at seed 0; the speed of one check; and (slow) no
false alarm over 200 seeds."""

import importlib.util

import numpy as np
import pytest


from refpg.conformance import llm_loss as M
from refpg.conformance.llm_loss import LLM_LOSS_CONVENTIONS, check_llm_loss
from refpg.errors import InvalidInputError
from refpg.examples import llm_whole_losses as X
from tests.helpers import example_report

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
MEAN = "llm_loss.mean_gradient"


def _marks(ex):
    return [pytest.mark.skipif(ex.backend == "torch" and not HAS_TORCH, reason="needs torch"),
            pytest.mark.skipif(ex.backend == "jax" and not HAS_JAX, reason="needs jax")]


_REPORTS: dict = {}


def _report(ex, seed=0, **kw):
    if seed == 0 and not kw:  # the zoo's seed-0 report, shared with tests/test_conformance_examples.py
        return example_report(ex)
    key = (ex.name, seed, tuple(sorted(kw.items())))
    if key not in _REPORTS:
        _REPORTS[key] = check_llm_loss(ex.fn, convention=ex.convention, backend=ex.backend, seed=seed,
                                       **{**dict(ex.options), **kw})
    return _REPORTS[key]


def _params(examples, seeds):
    return [pytest.param(ex, seed, id=f"{ex.name}-seed{seed}", marks=_marks(ex) + ([pytest.mark.slow] if seed else []))
            for ex in examples for seed in seeds]


# -- the examples --------------------------------------------------------------------------------

@pytest.mark.parametrize("ex, seed", _params(X.CORRECT, range(6)))
def test_correct_example_passes(ex, seed):
    report = _report(ex, seed)
    assert report.passed, str(report)
    assert not report.not_run, str(report)


@pytest.mark.parametrize("ex, seed", _params(X.BROKEN, range(6)))
def test_broken_example_fails_with_its_id(ex, seed):
    report = _report(ex, seed)
    assert ex.expected in [f.check_id for f in report.failures], str(report)


_HINTS = {
    "rloo_declared_group_mean_computed": "advantage='group_mean'",
    "grpo_population_std": "std='population'",
    "token_mean_declared_seq_mean_token_mean": "aggregation='token-mean'",
    "kl_sign_flipped": "sign flipped",
    "k3_loss_declared_unbiased": "target='declared'",
}


@pytest.mark.parametrize("name", sorted(_HINTS))
@needs_torch
def test_mean_failure_names_the_declaration_the_gradients_match(name):
    ex = next(e for e in X.BROKEN if e.name == name)
    (failure,) = [f for f in _report(ex).failures if f.check_id == MEAN]
    assert _HINTS[name] in failure.message, failure.message
    # the report gives the rejecting coordinates, the relative error and the cosine
    for part in ("rejected:", "relative error", "cosine", "should be", "actual"):
        assert part in failure.message


@needs_torch
def test_correct_example_passes_in_float32():
    ex = X.CORRECT[0]
    report = _report(ex, 0, dtype="float32")
    assert report.passed and report.dtype == "float32", str(report)


# -- the kit's machinery ---------------------------------------------------------------------------

@needs_torch
def test_per_batch_gradients_match_the_score_function_by_hand():
    """For loss = sum_t m_t c_t logp_t (fixed c), d loss_b / d theta[s, :] = sum over b's tokens at s of
    c_t (e_y - pi(.|s)): the kit's one-backward Jacobian trick must give exactly that per batch."""
    import torch

    tree, _ = M._stage_tree(_spec(), 4, 1)
    pol, theta, _ = M._parameters(tree)
    d = M._Draw(tree, pol.log_probs(theta), 4, 1, 50, np.random.default_rng(3), interleave=False)
    coef = np.random.default_rng(4).normal(size=(d.n, d.L))

    def fn(batch):
        return (batch["logp"] * torch.tensor(coef) * batch["mask"]).sum()

    from refpg.conformance._harness import Backend, Session

    be = Backend("torch", "float64")
    session = Session("llm_loss", fn, "refpg", be, max_examples=1, seed=0, options={})
    (values, grads), bad, outcomes = M._per_batch_gradients(session, be, "refpg", tree, pol, theta, d)
    assert bad is None and not outcomes
    pi = pol.probs(theta)
    for b in range(d.N):
        want = np.zeros_like(theta)
        for i in range(d.n):
            for t in range(d.L):
                if d.mask[b, i, t]:
                    s, y = d.states[b, i, t], d.tokens[b, i, t]
                    want[s] += coef[i, t] * (np.eye(theta.shape[1])[y] - pi[s])
        np.testing.assert_allclose(grads[b], want, rtol=1e-12, atol=1e-12)
        lp = np.where(d.mask[b], pol.log_probs(theta)[d.states[b], d.tokens[b]], 0.0)
        np.testing.assert_allclose(values[b], (lp * coef * d.mask[b]).sum(), rtol=1e-12)


def _spec():
    from refpg.sequences import LossSpec

    return LossSpec()


def test_stage_tree_enumerates_and_lengths_vary():
    from refpg.sequences import MAX_TUPLES, count_batches

    for spec, G, B in ((_spec(), 4, 1), (_spec(), 4, 2), (_spec(), 8, 1)):
        tree, B_exact = M._stage_tree(spec, G, B)
        assert count_batches(tree, G, B_exact) <= MAX_TUPLES
        assert len(np.unique(tree.responses.length)) == tree.max_length >= 2


# -- declarations refused ------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    (dict(convention="trl"), "convention"),
    (dict(target="biased"), "target"),
    (dict(backend="numpy"), "backend"),
    (dict(advantage="rloo", group_size=1), "group_size"),
    (dict(n_batches=100), "n_batches"),
    (dict(kl="k3"), "kl_coef"),
    (dict(advantage="ppo"), "advantage"),
    (dict(aggregation="mean"), "aggregation"),
    (dict(eps_low=1.5), "eps_low"),
    (dict(kl="k4", kl_coef=0.1), "kl"),
    (dict(alpha=0.0), "alpha"),
    (dict(seed=-1), "seed"),
    (dict(group_size=16), "group_size=16"),
    (dict(n_groups=3), "n_groups=3"),
])
def test_bad_declarations_are_refused_naming_the_option(kw, match):
    with pytest.raises(InvalidInputError, match=match):
        check_llm_loss(X.trl_grpo_token_mean_k3, **kw)


def test_conventions_take_one_batch():
    assert set(LLM_LOSS_CONVENTIONS) == {"refpg", "verl"}
    assert all(params == ("batch",) for params in LLM_LOSS_CONVENTIONS.values())


# -- deterministic checks on small planted bugs ------------------------------------------------------

@needs_torch
def test_detached_loss_fails_differentiable():
    def fn(batch):
        return (batch["old_logp"] * batch["mask"]).sum() + 0.0 * batch["rewards"].sum()

    report = check_llm_loss(fn, n_batches=500)
    assert "llm_loss.differentiable" in [f.check_id for f in report.failures], str(report)
    assert MEAN in [n.check_id for n in report.not_run]


@needs_torch
def test_per_token_loss_fails_scalar():
    def fn(batch):
        return batch["logp"] * batch["mask"]

    report = check_llm_loss(fn, n_batches=500)
    assert [f.check_id for f in report.failures] == ["llm_loss.scalar"], str(report)
    assert "aggregation" in report.failures[0].message


@needs_torch
def test_in_place_change_of_the_batch_fails_input_mutated():
    def fn(batch):
        batch["rewards"].sub_(batch["rewards"].mean())
        return X.trl_grpo_token_mean_k3(batch)

    report = check_llm_loss(fn, n_batches=500)
    assert "llm_loss.input_mutated" in [f.check_id for f in report.failures], str(report)


@needs_torch
def test_verl_convention_passes_verl_field_names():
    seen = []

    def fn(batch):
        seen.append(sorted(batch))
        assert batch["uid"].dtype == object and batch["token_level_scores"].shape == batch["log_prob"].shape
        return X.verl_rloo_k1_in_reward(batch)

    report = check_llm_loss(fn, convention="verl", advantage="rloo", aggregation="seq-mean-token-sum", kl="k1",
                            kl_coef=0.1, kl_placement="reward", target="unbiased", n_batches=500)
    assert report.passed, str(report)
    assert seen[0] == ["log_prob", "old_log_prob", "ref_log_prob", "response_mask", "token_level_scores", "uid"]


# -- regions drawn by construction ----------------------------------------------------------------

@needs_torch
def test_regions_that_decide_correctness_are_drawn_at_seed_0():
    """Every call of a correct loss, recorded and classified: degenerate groups (every reward equal),
    groups whose rows are not adjacent, junk in masked entries, responses of every length 1..L,
    on- and off-policy batches, and off-policy tokens clipped on each side for each sign of A."""
    import torch

    calls = []

    def recorder(batch):
        calls.append({k: (v.detach().numpy().copy() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
        return X.trl_grpo_token_mean_k3(batch)

    report = check_llm_loss(recorder, **dict(X.CORRECT[0].options))
    assert report.passed, str(report)
    regions = set()
    for c in calls:
        m, g, R = c["mask"], c["group"], c["rewards"]
        if any(len(np.unique(R[g == k])) == 1 for k in np.unique(g)):
            regions.add("degenerate group")
        if np.any(np.diff(g) < 0) or any(np.any(np.diff(np.flatnonzero(g == k)) > 1) for k in np.unique(g)):
            regions.add("groups not contiguous")
        if np.any(c["logp"][~m] != 0):
            regions.add("junk in masked entries")
        for n_tok in np.unique(m.sum(axis=1)):
            regions.add(f"length {n_tok}")
        logr = np.where(m, c["logp"] - c["old_logp"], 0.0)
        if np.all(logr == 0):
            regions.add("on-policy")
        else:
            regions.add("off-policy")
            A = R - np.array([R[g == k].mean() for k in g])
            r = np.exp(logr)
            for sign, name in ((1, "A>0"), (-1, "A<0")):
                rows = (A * sign > 0)[:, None] & m
                if np.any(rows & (r > 1.2)):
                    regions.add(f"ratio above the clip range, {name}")
                if np.any(rows & (r < 0.8)):
                    regions.add(f"ratio below the clip range, {name}")
    L = 3
    want = {"degenerate group", "groups not contiguous", "junk in masked entries", "on-policy", "off-policy",
            *(f"length {k}" for k in range(1, L + 1)),
            *(f"ratio {w} the clip range, {s}" for w in ("above", "below") for s in ("A>0", "A<0"))}
    assert want <= regions, want - regions


# -- power and speed ------------------------------------------------------------------------------



@pytest.mark.slow
@needs_torch
def test_no_false_alarm_over_200_seeds():
    """The correct examples at seeds 0..199 (default n_batches): no mean test rejects. At alpha = 1e-6 the
    expected number of false alarms over these 200 x 5 checks is 1e-3."""
    alarms = []
    for ex in X.CORRECT:
        if ex.backend == "jax" and not HAS_JAX:
            continue
        for seed in range(200):
            report = check_llm_loss(ex.fn, convention=ex.convention, backend=ex.backend, seed=seed,
                                    **dict(ex.options))
            if not report.passed:
                alarms.append((ex.name, seed, [f.check_id for f in report.failures]))
    assert alarms == []


# -- the real libraries, passed unchanged ----------------------------------------------------------

def _verl():
    ca = pytest.importorskip("verl.trainer.ppo.core_algos")
    from verl.workers.config import ActorConfig, PolicyLossConfig

    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2, clip_ratio_low=0.2,
                      clip_ratio_high=0.28, clip_ratio_c=3.0, loss_agg_mode="token-mean",
                      policy_loss=PolicyLossConfig(loss_mode="vanilla"))
    return ca, cfg


@needs_torch
def test_verl_grpo_with_k3_loss_conforms_to_its_declaration():
    """verl 0.9.1's own functions, composed as its actor composes them: compute_grpo_outcome_advantage on the
    uid index, the registered "vanilla" policy loss (dual clip c = 3, clip 0.2 / 0.28), and the
    low_var_kl (k3) loss aggregated by agg_loss, not multiplied by any ratio."""
    ca, cfg = _verl()
    policy_loss = ca.get_policy_loss_fn("vanilla")

    def verl_grpo_k3(batch):
        mask = batch["response_mask"]
        adv, _ = ca.compute_grpo_outcome_advantage(batch["token_level_scores"], mask, batch["uid"])
        pg, _ = policy_loss(old_log_prob=batch["old_log_prob"], log_prob=batch["log_prob"], advantages=adv,
                            response_mask=mask, loss_agg_mode="token-mean", config=cfg, rollout_is_weights=None)
        kl = ca.kl_penalty(batch["log_prob"], batch["ref_log_prob"], "low_var_kl")
        return pg + ca.agg_loss(kl, mask, "token-mean") * 0.1

    declared = dict(convention="verl", advantage="grpo", eps_low=0.2, eps_high=0.28, dual_clip=3.0,
                    aggregation="token-mean", kl="k3", kl_coef=0.1)
    report = check_llm_loss(verl_grpo_k3, **declared)
    assert report.passed, str(report)
    # and the same code declared with RLOO's baseline is told apart
    wrong = check_llm_loss(verl_grpo_k3, **{**declared, "advantage": "rloo"})
    assert MEAN in [f.check_id for f in wrong.failures], str(wrong)


@needs_torch
def test_verl_rloo_with_k1_in_the_reward_is_unbiased():
    """verl's KL in the reward (token_level_rewards = scores - beta k1(old_log_prob, ref_log_prob) mask, as
    apply_kl_penalty), compute_rloo_outcome_advantage (which sums the token rewards: the whole sequence's
    penalty), vanilla loss with seq-mean-token-sum: on-policy, unbiased for -(grad J - beta grad KL_seq)."""
    ca, cfg = _verl()
    policy_loss = ca.get_policy_loss_fn("vanilla")

    def verl_rloo_k1(batch):
        mask = batch["response_mask"]
        kl = ca.kl_penalty(batch["old_log_prob"], batch["ref_log_prob"], "kl")
        adv, _ = ca.compute_rloo_outcome_advantage(batch["token_level_scores"] - 0.1 * kl * mask, mask, batch["uid"])
        pg, _ = policy_loss(old_log_prob=batch["old_log_prob"], log_prob=batch["log_prob"], advantages=adv,
                            response_mask=mask, loss_agg_mode="seq-mean-token-sum", config=cfg,
                            rollout_is_weights=None)
        return pg

    report = check_llm_loss(verl_rloo_k1, convention="verl", advantage="rloo", aggregation="seq-mean-token-sum",
                            kl="k1", kl_coef=0.1, kl_placement="reward", target="unbiased")
    assert report.passed, str(report)


def _trl_loss(loss_type, beta):
    """TRL 1.16.0's GRPOTrainer._compute_loss, the real method, on a stand-in trainer holding only the
    attributes it reads (no model, no accelerate state); the advantages follow TRL's inline formula
    (group mean, trl.trainer.utils.nanstd + 1e-4), by group id."""
    import collections
    import types

    import torch
    trl = pytest.importorskip("trl")
    from trl import GRPOTrainer
    from trl.trainer.utils import nanstd

    def fn(batch):
        logp, mask, R, g = batch["logp"], batch["mask"], batch["rewards"], batch["group"]
        adv = torch.zeros_like(R)
        for k in torch.unique(g):
            rows = g == k
            adv[rows] = (R[rows] - R[rows].mean()) / (nanstd(R[rows]) + 1e-4)
        n, T = logp.shape
        acc = types.SimpleNamespace(num_processes=1, sync_gradients=True, gather=lambda x: x,
                                    gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x)
        trainer = types.SimpleNamespace(
            _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
            top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta,
            args=types.SimpleNamespace(delta=None, use_bias_correction_kl=True, steps_per_generation=1,
                                       sapo_temperature_pos=1.0, sapo_temperature_neg=1.05),
            loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.2, use_vllm=False,
            vllm_importance_sampling_correction=False, model=types.SimpleNamespace(training=True),
            current_gradient_accumulation_steps=1, max_completion_length=T, accelerator=acc,
            _entropy_bonus_enabled=False, aux_loss_enabled=False, use_adaptive_entropy=False,
            _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
            get_off_policy_mask=GRPOTrainer.get_off_policy_mask, get_gamma_weights=GRPOTrainer.get_gamma_weights)
        inputs = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
                  "completion_ids": torch.zeros(n, T, dtype=torch.long), "completion_mask": mask.to(torch.long),
                  "advantages": adv, "old_per_token_logps": batch["old_logp"],
                  "ref_per_token_logps": batch["ref_logp"], "num_items_in_batch": mask.sum().to(logp.dtype)}
        return GRPOTrainer._compute_loss(trainer, None, inputs)

    assert trl.__version__ == "1.16.0"  # the stand-in holds the attributes 1.16.0 reads
    return fn


@needs_torch
# TRL's default loss type by default; the other three each take ~3 s and run with -m slow.
@pytest.mark.parametrize("loss_type, aggregation", [
    pytest.param("bnpo", "token-mean", marks=pytest.mark.slow), ("grpo", "seq-mean-token-mean"),
    pytest.param("dr_grpo", "seq-mean-token-sum-norm", marks=pytest.mark.slow),
    pytest.param("dapo", "token-mean", marks=pytest.mark.slow)])
def test_trl_grpo_loss_types_conform_to_verl_aggregation_names(loss_type, aggregation):
    """TRL's loss_type names map onto verl's aggregation names: bnpo and dapo (one process, one micro-batch)
    token-mean, grpo seq-mean-token-mean, dr_grpo seq-mean-token-sum-norm with L_norm = max_completion_length;
    the k3 penalty is multiplied by the differentiable ratio (use_bias_correction_kl)."""
    fn = _trl_loss(loss_type, 0.04)
    report = check_llm_loss(fn, advantage="grpo", adv_eps=1e-4, aggregation=aggregation, kl="k3", kl_coef=0.04,
                            kl_importance="differentiated")
    assert report.passed, str(report)


@needs_torch
def test_trl_dr_grpo_declared_seq_mean_token_mean_is_named():
    report = check_llm_loss(_trl_loss("dr_grpo", 0.04), advantage="grpo", adv_eps=1e-4,
                            aggregation="seq-mean-token-mean", kl="k3", kl_coef=0.04, kl_importance="differentiated")
    (failure,) = [f for f in report.failures if f.check_id == MEAN]
    assert "aggregation='seq-mean-token-sum-norm'" in failure.message, failure.message
