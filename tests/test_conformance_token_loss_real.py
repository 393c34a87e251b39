"""check_token_policy_loss on the real verl 0.9.1 and TRL 1.16.0 policy losses, called as installed.

verl: the registered policy losses of ``verl.trainer.ppo.core_algos`` ("vanilla", "gspo", "cispo") under
every ``loss_agg_mode``, with the real ``ActorConfig`` the check builds, and ``agg_loss`` on its own.
TRL: the per-token loss of ``GRPOTrainer._compute_loss`` (the real method, on a stand-in trainer holding
only the attributes it reads) for each ``loss_type``, GSPO's sequence-level ratio, clip-higher and the
two-sided clip ``delta``. Each passes under the declaration that describes it; misdeclarations fail with
the id that says why, so these tests can fail.

One finding (strict xfail): verl's seq-mean aggregations leave a response without a token out of the
sequence count on their own, but its trainer's global_batch_size counts it. Two details are declarations,
not findings: verl's policy losses given a boolean mask (as ppo_loss gives them) lose the 1e-8 on the token
count (count_eps=0), and TRL's bnpo normalises each micro-batch by its own token count, as documented.
"""

import collections
import types

import numpy as np
import pytest

from refpg.conformance.token_loss import _weights, check_token_policy_loss

torch = pytest.importorskip("torch")

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
N_EXAMPLES = 25  # per check: 3 cases for each of the 8 (ratio band, sign of A) regions, on-policy and accumulation


# -- verl ------------------------------------------------------------------------------------------

def _verl_loss(name):
    ca = pytest.importorskip("verl.trainer.ppo.core_algos")
    return ca.get_policy_loss_fn(name)


def _verl_check(name, **declared):
    """The registered loss `name`, unchanged, under the verl convention (accumulation="global", its default).

    Why "global": verl 0.9.1's actor is the engine worker (verl/workers/actor/dp_actor.py is not in the 0.9.1
    package). ``verl.workers.utils.losses.ppo_loss`` fills ``config.global_batch_info`` with ``dp_size``,
    ``batch_num_tokens`` (the mini-batch's token count, all-reduced over data-parallel ranks in
    ``FSDPEngine.forward_backward_batch``) and ``global_batch_size`` (``ppo_mini_batch_size * rollout.n``, set in
    ``RayPPOTrainer._update_actor``), then calls the policy loss; ``forward_backward_batch`` calls
    ``loss.backward()`` on each micro-batch's loss as it is, with no further scaling. So the micro-batch losses
    are normalised by the whole mini-batch's totals and summed: accumulation="global".
    """
    return check_token_policy_loss(_verl_loss(name), convention="verl", backend="torch", max_examples=N_EXAMPLES,
                                   **declared)


#: (registry entry, declaration) of verl's policy losses, each passing. The vanilla loss always dual-clips
#: (clip_ratio_c); responses without a token leave the sequence count and 1e-8 guards each response's token
#: count in seq-mean-token-mean (the verl convention's defaults); L_norm is the padded length unless
#: loss_scale_factor is set (norm_length), which ppo_loss copies into config.global_batch_info.
VERL_PASSING = [
    *(pytest.param("vanilla", dict(aggregation=mode, eps_low=0.2, eps_high=0.28, dual_clip=3.0),
                   id=f"vanilla-{mode}-dapo-clip-higher") for mode in AGGREGATIONS),
    pytest.param("vanilla", dict(aggregation="token-mean", eps_low=0.1, eps_high=0.3, dual_clip=2.0),
                 id="vanilla-token-mean-c2"),
    pytest.param("vanilla", dict(aggregation="seq-mean-token-mean", eps_low=0.25, eps_high=0.25, dual_clip=10.0),
                 id="vanilla-seq-mean-token-mean-c10"),
    pytest.param("vanilla", dict(aggregation="seq-mean-token-sum", eps_high=0.28, dual_clip="default"),
                 id="vanilla-seq-mean-token-sum-default-c"),
    pytest.param("vanilla", dict(aggregation="seq-mean-token-sum-norm", eps_high=0.28, norm_length=16.0),
                 id="vanilla-seq-mean-token-sum-norm-loss-scale-factor"),
    # GSPO-token: log r = log pi - sg(log pi) + sg(s_i), PPO-clipped, no dual clip
    pytest.param("gspo", dict(loss="gspo", aggregation="seq-mean-token-mean", eps_low=3e-4, eps_high=4e-4),
                 id="gspo-seq-mean-token-mean-paper-range"),
    pytest.param("gspo", dict(loss="gspo", aggregation="token-mean", eps_low=0.2, eps_high=0.28), id="gspo-token-mean"),
    # CISPO: -sg(clip(r, 1 - low, 1 + high)) A log pi, a two-sided weight clip
    pytest.param("cispo", dict(loss="cispo", aggregation="token-mean", eps_low=0.2, eps_high=0.28),
                 id="cispo-token-mean"),
    pytest.param("cispo", dict(loss="cispo", aggregation="seq-mean-token-sum-norm", eps_low=0.2, eps_high=4.0),
                 id="cispo-seq-mean-token-sum-norm"),
]


@pytest.mark.parametrize("name, declared", VERL_PASSING)
def test_verl_policy_loss_passes_under_its_declaration(name, declared):
    """compute_policy_loss_vanilla with DAPO's asymmetric range and its dual clip under each loss_agg_mode,
    other ranges and clip_ratio_c, and the "gspo" and "cispo" entries of verl's registry."""
    ca = pytest.importorskip("verl.trainer.ppo.core_algos")
    if name not in ca.POLICY_LOSS_REGISTRY:
        pytest.skip(f"no {name!r} entry in verl's policy-loss registry")
    report = _verl_check(name, **declared)
    assert report.passed, str(report)
    assert not report.not_run or name == "cispo", str(report)  # CISPO zeroes no gradient: not run by design


def test_verl_vanilla_with_a_boolean_mask_as_ppo_loss_passes_it():
    """ppo_loss hands the policy loss ``response_mask.to(bool)``. agg_loss's per-response token count is then an
    integer tensor, and ``count + 1e-8`` a float32 one (torch promotes an integer tensor plus a Python float to
    the default dtype) in which 1e-8 vanishes for any count >= 1: seq-mean-token-mean divides by the count
    itself, count_eps=0. The float-mask declaration (count_eps=1e-8) fails on the value by about 1e-8
    relative; with count_eps=0 it passes."""
    fn = _verl_loss("vanilla")

    def vanilla_bool_mask(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config):
        return fn(old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
                  response_mask=response_mask.to(bool), loss_agg_mode=loss_agg_mode, config=config)

    for aggregation in ("token-mean", "seq-mean-token-mean"):
        report = check_token_policy_loss(vanilla_bool_mask, convention="verl", backend="torch",
                                         max_examples=N_EXAMPLES, aggregation=aggregation, eps_high=0.28,
                                         count_eps=0.0)
        assert report.passed, str(report)
    report = check_token_policy_loss(vanilla_bool_mask, convention="verl", backend="torch", max_examples=N_EXAMPLES,
                                     aggregation="seq-mean-token-mean", eps_high=0.28)
    assert "token_policy_loss.value" in report.failed_ids, str(report)
    assert "count_eps=0" in report.failure("token_policy_loss.value").message


def _forcing_aggregation(fn, mode):
    """verl's loss called with loss_agg_mode=`mode` whatever the check passes: a trainer configured with `mode`
    (under the verl convention the check hands the declared aggregation to the function, which obeys it)."""

    def loss_with_fixed_agg_mode(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config):
        return fn(old_log_prob, log_prob, advantages, response_mask, mode, config)

    return loss_with_fixed_agg_mode


def test_verl_seq_mean_token_mean_declared_token_mean_fails_with_the_value():
    fn = _forcing_aggregation(_verl_loss("vanilla"), "seq-mean-token-mean")
    good = check_token_policy_loss(fn, convention="verl", backend="torch", max_examples=N_EXAMPLES,
                                   aggregation="seq-mean-token-mean", eps_high=0.28)
    assert good.passed, str(good)
    report = check_token_policy_loss(fn, convention="verl", backend="torch", max_examples=N_EXAMPLES,
                                     aggregation="token-mean", eps_high=0.28)
    assert "token_policy_loss.value" in report.failed_ids, str(report)
    message = report.failure("token_policy_loss.value").message
    assert " should " in message and "aggregation='seq-mean-token-mean'" in message, message


@pytest.mark.parametrize("declared, check_id", [
    (dict(aggregation="seq-mean-token-mean", count_eps=0.0), "value"),  # verl adds 1e-8 to each token count
    (dict(aggregation="token-mean", dual_clip=None), "value"),  # vanilla always dual-clips (c = 3)
    (dict(aggregation="token-mean", accumulation="sequences"), "accumulation"),  # verl's legacy sample-ratio scaling
])
def test_verl_misdeclarations_fail_with_their_id(declared, check_id):
    report = check_token_policy_loss(_verl_loss("vanilla"), convention="verl", backend="torch",
                                     max_examples=N_EXAMPLES, eps_high=0.28, **declared)
    assert f"token_policy_loss.{check_id}" in report.failed_ids, str(report)
    if declared.get("dual_clip", "default") is None:
        assert "WITH a dual clip at c = 3" in report.failure("token_policy_loss.value").message, str(report)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_verl_agg_loss_weights_are_the_verl_declaration(mode):
    """agg_loss on its own, the aggregation all of verl's policy losses share: d agg_loss / d loss_mat are the
    weights of the verl declaration (empty responses skipped, 1e-8 on each response's token count), on the whole
    batch and, with the batch's totals in its arguments, summed over unequal micro-batches. With the sequence
    count verl's trainer passes (every response, the empty one too) the seq-mean weights are n_nonempty / n of
    these (the FINDING below)."""
    ca = pytest.importorskip("verl.trainer.ppo.core_algos")
    rng = np.random.default_rng(0)
    lengths = np.array([5, 0, 1, 3, 5, 2])
    mask = np.arange(5)[None, :] < lengths[:, None]
    loss_mat = torch.tensor(rng.normal(size=mask.shape), requires_grad=True)
    m = torch.tensor(mask, dtype=torch.float64)
    want = _weights(mask, dict(aggregation=mode, empty_rows="skip", count_eps=1e-8, norm_length=None))
    ca.agg_loss(loss_mat, m, mode).backward()
    np.testing.assert_allclose(loss_mat.grad.numpy(), want, rtol=1e-12, atol=0)
    loss_mat.grad = None
    info = dict(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=int(np.count_nonzero(lengths)))
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        ca.agg_loss(loss_mat[rows], m[rows], mode, **info).backward()
    np.testing.assert_allclose(loss_mat.grad.numpy(), want, rtol=1e-12, atol=0)
    loss_mat.grad = None
    trainer_info = {**info, "global_batch_size": len(lengths)}  # ppo_mini_batch_size * rollout.n
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        ca.agg_loss(loss_mat[rows], m[rows], mode, **trainer_info).backward()
    factor = 1.0 if mode == "token-mean" else np.count_nonzero(lengths) / len(lengths)
    np.testing.assert_allclose(loss_mat.grad.numpy(), factor * want, rtol=1e-12, atol=0)


def test_verl_sequence_count_with_and_without_its_trainers_global_batch_size():
    """Under accumulation the check hands verl the batch's number of responses WITH a token as
    global_batch_size (empty_rows="skip"), which is what agg_loss counts on its own (seq_mask.sum(), "exclude
    fully masked sequences"). verl's trainer hands it every response instead (RayPPOTrainer._update_actor:
    global_batch_size = ppo_mini_batch_size * rollout.n), which the check does under empty_rows="count": then the
    summed micro-batches agree and only the single call, with no global_batch_info, does not (strict xfail below)."""
    report = _verl_check("vanilla", aggregation="seq-mean-token-sum", eps_high=0.28, empty_rows="count")
    assert "token_policy_loss.accumulation" not in report.failed_ids, str(report)
    assert "token_policy_loss.value" in report.failed_ids, str(report)
    assert "empty_rows='skip'" in report.failure("token_policy_loss.value").message


@pytest.mark.xfail(strict=True, reason=(
    "FINDING: verl 0.9.1: agg_loss's seq-mean modes divide by the number of responses with a token when called "
    "without global_batch_size (2 responses, one empty: seq-mean-token-sum loss 3), but by every response of the "
    "mini-batch under its trainer (RayPPOTrainer._update_actor sets global_batch_size = ppo_mini_batch_size * "
    "rollout.n: loss 1.5), so a response without a token (e.g. one rejected by sequence-level rollout rejection "
    "sampling, which zeroes its response_mask) is left out of the mean in one path and counted in the other; no "
    "empty_rows declaration passes both (token_policy_loss.value)"))
@pytest.mark.parametrize("mode", ["seq-mean-token-sum", "seq-mean-token-mean"])
def test_verl_seq_mean_counts_responses_as_its_trainer_does(mode):
    report = _verl_check("vanilla", aggregation=mode, eps_high=0.28, empty_rows="count")
    assert report.passed, str(report)


# -- TRL -------------------------------------------------------------------------------------------

def _trl_compute_loss(loss_type, *, importance_sampling_level="token", epsilon=0.2, epsilon_high=None, delta=None,
                      max_completion_length=16):
    """TRL 1.16.0's GRPOTrainer._compute_loss, the real method, as a function of the trl convention.

    _compute_loss is the smallest code path holding TRL's per-token loss: the clip (epsilon, epsilon_high,
    delta), the importance-sampling level and the loss_type's aggregation are inline in it. It runs on a
    stand-in trainer with the attributes it reads, set as GRPOTrainer.__init__ sets them from GRPOConfig
    (epsilon_low = epsilon, epsilon_high defaulting to epsilon; no KL, entropy mask, off-policy mask, vLLM
    correction, entropy bonus or aux loss). steps_per_generation is GRPOConfig's default,
    gradient_accumulation_steps, so that num_items_in_batch, the generation batch's token count, is the
    accumulation window's: the trl convention's num_items_in_batch.
    """
    trl = pytest.importorskip("trl")
    from trl import GRPOTrainer

    assert trl.__version__ == "1.16.0"  # the stand-in holds the attributes 1.16.0 reads

    def grpo_trainer_compute_loss(per_token_logps, old_per_token_logps, advantages, completion_mask,
                                  num_items_in_batch, gradient_accumulation_steps):
        n, T = per_token_logps.shape
        accelerator = types.SimpleNamespace(num_processes=1, sync_gradients=True, gather=lambda x: x,
                                            gather_for_metrics=lambda x: x, reduce=lambda x, reduction="sum": x)
        trainer = types.SimpleNamespace(
            _get_per_token_logps_and_entropies=lambda *a, **k: (per_token_logps, torch.zeros_like(per_token_logps),
                                                                None),
            aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
            importance_sampling_level=importance_sampling_level, beta=0.0, loss_type=loss_type,
            epsilon_low=epsilon, epsilon_high=epsilon if epsilon_high is None else epsilon_high,
            args=types.SimpleNamespace(delta=delta, steps_per_generation=gradient_accumulation_steps),
            use_vllm=False, vllm_importance_sampling_correction=False, model=types.SimpleNamespace(training=True),
            current_gradient_accumulation_steps=gradient_accumulation_steps,
            max_completion_length=max_completion_length, accelerator=accelerator, _entropy_bonus_enabled=False,
            use_adaptive_entropy=False,
            _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)})
        inputs = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
                  "completion_ids": torch.zeros(n, T, dtype=torch.long), "completion_mask": completion_mask,
                  "advantages": advantages, "old_per_token_logps": old_per_token_logps,
                  "num_items_in_batch": num_items_in_batch}
        return GRPOTrainer._compute_loss(trainer, None, inputs)

    return grpo_trainer_compute_loss


#: (loss_type, importance_sampling_level, GRPOTrainer options, declaration) of TRL's loss, each passing.
#: loss_type -> aggregation (TRL_LOSS_TYPES): grpo seq-mean-token-mean over all completions (an empty one
#: counts: mask.sum(-1).clamp(min=1)), dr_grpo seq-mean-token-sum-norm with L_norm = max_completion_length (16),
#: dapo and cispo token-mean over the accumulation window (num_items_in_batch), luspo seq-mean-token-sum;
#: importance_sampling_level="sequence" is GSPO; delta, the two-sided clip, is the dual clip at c = delta.
TRL_PASSING = [
    pytest.param("grpo", "token", dict(epsilon_high=0.28), {}, id="grpo"),
    pytest.param("dr_grpo", "token", dict(epsilon_high=0.28), dict(norm_length=16.0), id="dr_grpo"),
    pytest.param("dapo", "token", dict(epsilon_high=0.28), {}, id="dapo"),
    pytest.param("dapo", "token", dict(epsilon=0.1, epsilon_high=0.3), dict(eps_low=0.1), id="dapo-0.1-0.3"),
    pytest.param("grpo", "sequence", dict(epsilon=3e-4, epsilon_high=4e-4), dict(eps_low=3e-4), id="gspo-grpo"),
    pytest.param("dapo", "sequence", dict(epsilon_high=0.28), {}, id="gspo-dapo"),
    pytest.param("luspo", "sequence", dict(epsilon_high=0.28), {}, id="luspo"),
    pytest.param("cispo", "token", dict(epsilon_high=5.0), {}, id="cispo"),
    pytest.param("dapo", "token", dict(epsilon_high=0.28, delta=3.0), dict(dual_clip=3.0), id="dapo-delta"),
    pytest.param("grpo", "token", dict(epsilon_high=0.28, delta=2.0), dict(dual_clip=2.0), id="grpo-delta"),
]


def _trl_check(loss_type, level, options, declared, **kw):
    fn = _trl_compute_loss(loss_type, importance_sampling_level=level, **options)
    base = dict(loss_type=loss_type, importance_sampling_level=level, eps_high=options["epsilon_high"],
                max_examples=N_EXAMPLES)
    return check_token_policy_loss(fn, convention="trl", backend="torch", **{**base, **declared, **kw})


@pytest.mark.parametrize("loss_type, level, options, declared", TRL_PASSING)
def test_trl_grpo_trainer_loss_passes_under_its_declaration(loss_type, level, options, declared):
    """The micro-batches of one optimiser step hold equal numbers of completions, as TRL's do (the trl
    convention's accumulation scenario): grpo, dr_grpo and luspo divide their own aggregate by
    gradient_accumulation_steps, dapo and cispo divide the token sum by num_items_in_batch, and the micro-batch
    losses are summed (accumulation="global")."""
    report = _trl_check(loss_type, level, options, declared)
    assert report.passed, str(report)
    assert not report.not_run or loss_type == "cispo", str(report)


def test_trl_bnpo_is_a_local_token_mean():
    """bnpo: each micro-batch's own token mean divided by gradient_accumulation_steps, documented in GRPOConfig
    ("normalization is performed over the local batch only, so results may slightly vary depending on the local
    batch size"). On one batch it is the token-mean; summed over micro-batches of unequal token counts it is not
    the batch's token-mean, so under accumulation="global" the accumulation check fails, as documented (not a
    finding)."""
    report = _trl_check("bnpo", "token", dict(epsilon_high=0.28), {}, accumulation="none")
    assert report.passed, str(report)
    report = _trl_check("bnpo", "token", dict(epsilon_high=0.28), {})
    assert list(report.failed_ids) == ["token_policy_loss.accumulation"], str(report)


@pytest.mark.parametrize("loss_type, level, options, declared, check_id, hint", [
    # grpo's seq-mean-token-mean declared dapo's token-mean
    ("grpo", "token", dict(epsilon_high=0.28), dict(loss_type="dapo"), "value", "aggregation='seq-mean-token-mean'"),
    # dr_grpo (sum over n * max_completion_length = 16 n) declared grpo: on one response of L tokens, L / 16 x
    ("dr_grpo", "token", dict(epsilon_high=0.28), dict(loss_type="grpo"), "value", None),
    # delta = 3 set in the trainer, no dual clip declared
    ("dapo", "token", dict(epsilon_high=0.28, delta=3.0), {}, "value", "WITH a dual clip at c = 3"),
    # epsilon_high = 0.28 set in the trainer, the symmetric range declared
    ("dapo", "token", dict(epsilon_high=0.28), dict(eps_high=0.2), "value", None),
    # GSPO (sequence level) declared token level
    ("grpo", "sequence", dict(epsilon_high=0.28), dict(importance_sampling_level="token"), "value", None),
])
def test_trl_misdeclarations_fail_with_their_id(loss_type, level, options, declared, check_id, hint):
    report = _trl_check(loss_type, level, options, declared)
    assert f"token_policy_loss.{check_id}" in report.failed_ids, str(report)
    if hint:
        assert hint in report.failure(f"token_policy_loss.{check_id}").message, str(report)


# -- heavier: every passing declaration at other seeds, the check's default number of examples --------

@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_passing_declaration_at_other_seeds(seed):
    ca = pytest.importorskip("verl.trainer.ppo.core_algos")
    for p in VERL_PASSING:
        name, declared = p.values
        report = check_token_policy_loss(ca.get_policy_loss_fn(name), convention="verl", backend="torch", seed=seed,
                                         **declared)
        assert report.passed, (p.id, str(report))
    for p in TRL_PASSING:
        report = _trl_check(*p.values, seed=seed, max_examples=100)
        assert report.passed, (p.id, str(report))
