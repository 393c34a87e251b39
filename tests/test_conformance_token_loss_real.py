"""check_token_policy_loss on the real verl 0.9.1 and TRL 1.16.0 policy losses, called as installed.

verl: the registered policy losses of ``verl.trainer.ppo.core_algos`` ("vanilla", "gspo", "cispo") under
every ``loss_agg_mode``, with the real ``ActorConfig`` the check builds, and ``agg_loss`` on its own.
TRL: the per-token loss of ``GRPOTrainer._compute_loss`` (the real method, on a stand-in trainer holding
only the attributes it reads) for each ``loss_type``, GSPO's sequence-level ratio, clip-higher and the
two-sided clip ``delta``. Each passes under the declaration that describes it; misdeclarations fail with
the id that says why, so these tests can fail.
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


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_verl_vanilla_each_aggregation_with_clip_higher_and_dual_clip(aggregation):
    """compute_policy_loss_vanilla with DAPO's asymmetric range (clip_ratio_low 0.2, clip_ratio_high 0.28) and
    its dual clip (clip_ratio_c 3): responses without a token leave the sequence count, 1e-8 guards each
    response's token count in seq-mean-token-mean (the verl convention's defaults), L_norm the padded length."""
    report = _verl_check("vanilla", aggregation=aggregation, eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    assert report.passed, str(report)
    assert not report.not_run, str(report)


@pytest.mark.parametrize("aggregation, eps_low, eps_high, dual_clip", [
    ("token-mean", 0.1, 0.3, 2.0),
    ("seq-mean-token-mean", 0.25, 0.25, 10.0),
    ("seq-mean-token-sum", 0.2, 0.28, "default"),  # clip_ratio_c left at verl's default, 3
])
def test_verl_vanilla_other_clip_ranges_and_dual_clips(aggregation, eps_low, eps_high, dual_clip):
    report = _verl_check("vanilla", aggregation=aggregation, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip)
    assert report.passed, str(report)


def test_verl_vanilla_seq_mean_token_sum_norm_with_loss_scale_factor():
    """seq-mean-token-sum-norm with a constant L_norm: ActorConfig.loss_scale_factor reaches agg_loss through
    config.global_batch_info["loss_scale_factor"] (as ppo_loss sets it)."""
    report = _verl_check("vanilla", aggregation="seq-mean-token-sum-norm", eps_high=0.28, norm_length=16.0)
    assert report.passed, str(report)


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


@pytest.mark.parametrize("name, aggregation, eps_low, eps_high", [
    ("gspo", "seq-mean-token-mean", 3e-4, 4e-4),  # the GSPO paper's range
    ("gspo", "token-mean", 0.2, 0.28),
    ("cispo", "token-mean", 0.2, 0.28),
    ("cispo", "seq-mean-token-sum-norm", 0.2, 4.0),
])
def test_verl_registry_gspo_and_cispo(name, aggregation, eps_low, eps_high):
    """The "gspo" entry (GSPO-token: log r = log pi - sg(log pi) + sg(s_i), PPO-clipped, no dual clip) and the
    "cispo" entry (-sg(clip(r, 1 - low, 1 + high)) A log pi, a two-sided weight clip) of verl's registry."""
    ca = pytest.importorskip("verl.trainer.ppo.core_algos")
    if name not in ca.POLICY_LOSS_REGISTRY:
        pytest.skip(f"no {name!r} entry in verl's policy-loss registry")
    report = _verl_check(name, loss=name, aggregation=aggregation, eps_low=eps_low, eps_high=eps_high)
    assert report.passed, str(report)


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
    (dict(aggregation="seq-mean-token-sum", empty_rows="count"), "value"),  # verl leaves empty responses out
    (dict(aggregation="seq-mean-token-mean", count_eps=0.0, dtype="float32"), None),  # 1e-8 is below float32's ulp
    (dict(aggregation="token-mean", dual_clip=None), "value"),  # vanilla always dual-clips (c = 3)
    (dict(aggregation="token-mean", accumulation="sequences"), "accumulation"),  # verl's legacy sample-ratio scaling
])
def test_verl_misdeclarations_fail_with_their_id(declared, check_id):
    report = check_token_policy_loss(_verl_loss("vanilla"), convention="verl", backend="torch",
                                     max_examples=N_EXAMPLES, eps_high=0.28, **declared)
    if check_id is None:
        assert report.passed, str(report)
    else:
        assert f"token_policy_loss.{check_id}" in report.failed_ids, str(report)
    if declared.get("dual_clip", "default") is None:
        assert "WITH a dual clip at c = 3" in report.failure("token_policy_loss.value").message, str(report)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_verl_agg_loss_weights_are_the_verl_declaration(mode):
    """agg_loss on its own, the aggregation all of verl's policy losses share: d agg_loss / d loss_mat are the
    weights of the verl declaration (empty responses skipped, 1e-8 on each response's token count), on the whole
    batch and, with the batch's totals in its arguments, summed over unequal micro-batches."""
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


@pytest.mark.parametrize("loss_type, level, declared", [
    pytest.param("grpo", "token", {}, id="grpo"),
    pytest.param("dr_grpo", "token", dict(norm_length=16.0), id="dr_grpo"),
    pytest.param("dapo", "token", {}, id="dapo"),
    pytest.param("grpo", "sequence", {}, id="gspo-grpo"),
    pytest.param("dapo", "sequence", {}, id="gspo-dapo"),
    pytest.param("cispo", "token", {}, id="cispo"),
])
def test_trl_grpo_trainer_loss_types(loss_type, level, declared):
    """loss_type -> aggregation (TRL_LOSS_TYPES): grpo seq-mean-token-mean over all completions (an empty one
    counts: mask.sum(-1).clamp(min=1)), dr_grpo seq-mean-token-sum-norm with L_norm = max_completion_length
    (16), dapo and cispo token-mean over the accumulation window (num_items_in_batch); clip-higher epsilon_high
    0.28 (cispo: the weight cap epsilon_high = 5); importance_sampling_level="sequence" is GSPO. The
    micro-batches of one optimiser step hold equal numbers of completions, as TRL's do: grpo and dr_grpo
    divide their own aggregate by gradient_accumulation_steps."""
    eps_high = 5.0 if loss_type == "cispo" else 0.28
    fn = _trl_compute_loss(loss_type, importance_sampling_level=level, epsilon_high=eps_high,
                           max_completion_length=16)
    report = check_token_policy_loss(fn, convention="trl", backend="torch", max_examples=N_EXAMPLES,
                                     loss_type=loss_type, importance_sampling_level=level, eps_high=eps_high,
                                     **declared)
    assert report.passed, str(report)
    assert not report.not_run or loss_type == "cispo", str(report)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_trl_two_sided_clip_delta_is_the_dual_clip(loss_type):
    """delta (INTELLECT-2's two-sided clip) caps coef_1 at delta: for A < 0 and r > delta the loss is
    -delta A with zero gradient, the dual clip at c = delta."""
    fn = _trl_compute_loss(loss_type, epsilon_high=0.28, delta=3.0)
    report = check_token_policy_loss(fn, convention="trl", backend="torch", max_examples=N_EXAMPLES,
                                     loss_type=loss_type, eps_high=0.28, dual_clip=3.0)
    assert report.passed, str(report)
    # and without the declared dual clip it fails
    report = check_token_policy_loss(fn, convention="trl", backend="torch", max_examples=N_EXAMPLES,
                                     loss_type=loss_type, eps_high=0.28)
    assert report.failed_ids, str(report)


def test_trl_bnpo_is_a_local_token_mean():
    """bnpo: each micro-batch's own token mean divided by gradient_accumulation_steps, documented in GRPOConfig
    ("normalization is performed over the local batch only, so results may slightly vary depending on the local
    batch size"). On one batch it is the token-mean; summed over micro-batches of unequal token counts it is not
    the batch's token-mean, so under accumulation="global" the accumulation check fails, as documented (not a
    finding)."""
    fn = _trl_compute_loss("bnpo", epsilon_high=0.28)
    report = check_token_policy_loss(fn, convention="trl", backend="torch", max_examples=N_EXAMPLES,
                                     loss_type="bnpo", eps_high=0.28, accumulation="none")
    assert report.passed, str(report)
    report = check_token_policy_loss(fn, convention="trl", backend="torch", max_examples=N_EXAMPLES,
                                     loss_type="bnpo", eps_high=0.28)
    assert list(report.failed_ids) == ["token_policy_loss.accumulation"], str(report)


@pytest.mark.parametrize("loss_type, declared_as, check_id", [
    ("grpo", "dapo", "value"),  # seq-mean-token-mean declared token-mean
    ("dr_grpo", "grpo", "value"),
    ("dapo", "bnpo", "accumulation"),  # the same single-batch loss; the window's token count tells them apart
])
def test_trl_misdeclared_loss_type_fails_with_its_id(loss_type, declared_as, check_id):
    fn = _trl_compute_loss(loss_type, epsilon_high=0.28)
    report = check_token_policy_loss(fn, convention="trl", backend="torch", max_examples=N_EXAMPLES,
                                     loss_type=declared_as, eps_high=0.28,
                                     **({"accumulation": "steps"} if declared_as == "bnpo" else {}))
    assert f"token_policy_loss.{check_id}" in report.failed_ids, str(report)
