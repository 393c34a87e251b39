"""refpg.examples.update_torch: TorchRL's and CleanRL's whole PPO updates against the reference.

Each correct trace is compared step by step with `refpg.algorithms.actor_critic.actor_critic_update` run
in the same minibatch order (the permutation the library drew, read back from the trace), on rollouts
drawn from a random MDP by the policy the parameters define. The conventions the contract cannot declare
(TorchRL's per-epoch GAE, CleanRL's cut time limits) and TorchRL's float32 discount are strict xfails.
"""

import functools
import importlib.util
import logging

import numpy as np
import pytest

from tests import helpers

from refpg.algorithms.actor_critic import UpdateConfig, actor_critic_update
from refpg.returns import gae

HAS_TORCHRL = importlib.util.find_spec("torchrl") is not None and importlib.util.find_spec("torch") is not None
pytestmark = pytest.mark.skipif(not HAS_TORCHRL, reason="needs torch and torchrl")

if HAS_TORCHRL:
    import torch

    from refpg.examples import update_torch as ut

    # TorchRL logs every LazyTensorStorage it initialises at INFO.
    logging.getLogger("torchrl").setLevel(logging.WARNING)

#: float64 all the way: the updates agree with the reference to rounding.
EXACT = 1e-11


# -- rollouts ----------------------------------------------------------------------------------------

def rollout(seed, *, n_states=3, n_actions=2, n_steps=8, n_envs=2, actor_bias=False, critic_bias=False,
            p_terminated=0.2, p_truncated=0.2):
    """A (T, N) rollout of a random MDP collected by the parameters' own policy, as gymnasium's vector
    envs deliver it (next_states: the final observation where an episode ended; the next row starts a
    fresh episode). Returns (batch as NumPy, params as NumPy, batch as torch, params as torch)."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(n_states), size=(n_states, n_actions))
    params = {"actor_w": rng.normal(size=(n_states, n_actions)), "critic_w": rng.normal(size=n_states)}
    if actor_bias:
        params["actor_b"] = rng.normal(size=n_actions)
    if critic_bias:
        params["critic_b"] = np.float64(rng.normal())
    logits = params["actor_w"] + params.get("actor_b", 0.0)
    logpi = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    V = params["critic_w"] + params.get("critic_b", 0.0)

    shape = (n_steps, n_envs)
    states, actions, nxt = (np.zeros(shape, dtype=np.int64) for _ in range(3))
    terminated = rng.random(shape) < p_terminated
    truncated = (rng.random(shape) < p_truncated) & ~terminated
    s = rng.integers(n_states, size=n_envs)
    for t in range(n_steps):
        states[t] = s
        actions[t] = [rng.choice(n_actions, p=np.exp(logpi[si])) for si in s]
        nxt[t] = [rng.choice(n_states, p=P[si, ai]) for si, ai in zip(s, actions[t])]
        s = np.where(terminated[t] | truncated[t], rng.integers(n_states, size=n_envs), nxt[t])
    eye = np.eye(n_states)
    batch = {"states": states, "actions": actions, "obs": eye[states], "next_obs": eye[nxt],
             "rewards": rng.normal(size=shape), "terminated": terminated, "truncated": truncated,
             "next_states": nxt, "logp_old": logpi[states, actions], "values": V[states], "next_values": V[nxt]}
    as_torch = {k: torch.as_tensor(v) for k, v in batch.items()}
    return batch, params, as_torch, {k: torch.as_tensor(v) for k, v in params.items()}


def _np(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def order_of(trace, n_epochs):
    """The (n_epochs, M) permutations the library drew, read from the steps' indices."""
    idx = [_np(step["indices"]) for step in trace["steps"]]
    per = len(idx) // n_epochs
    return np.stack([np.concatenate(idx[e * per:(e + 1) * per]) for e in range(n_epochs)])


def assert_trace_equals(trace, ref, *, rtol=0.0, atol=EXACT, advantages=True):
    """Every recorded quantity of `trace` equals the reference's, step by step."""
    if advantages:
        np.testing.assert_allclose(_np(trace["advantages"]), ref.advantages, rtol=rtol, atol=atol)
        np.testing.assert_allclose(_np(trace["returns"]), ref.returns, rtol=rtol, atol=atol)
    assert len(trace["steps"]) == len(ref.steps)
    for k, (step, want) in enumerate(zip(trace["steps"], ref.steps)):
        np.testing.assert_array_equal(step["indices"], want.indices, err_msg=f"step {k}")
        np.testing.assert_allclose(step["loss"], want.loss, rtol=rtol, atol=atol, err_msg=f"loss, step {k}")
        np.testing.assert_allclose(step["grad_norm"], want.grad_norm, rtol=rtol, atol=atol,
                                   err_msg=f"grad_norm, step {k}")
        for name in want.params.present():
            for key, got, exp in (("grad", step["grad"], want.grad), ("clipped_grad", step["clipped_grad"],
                                                                       want.clipped_grad),
                                  ("params", step["params"], want.params)):
                np.testing.assert_allclose(_np(got[name]), getattr(exp, name), rtol=rtol, atol=atol,
                                           err_msg=f"{key}[{name!r}], step {k}")


def reference(batch, params, trace, options):
    config = UpdateConfig(**options)
    return actor_critic_update(batch, params, config, order=order_of(trace, config.n_epochs))


BIASES = [(False, False), (True, False), (False, True), (True, True)]


# -- CleanRL -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("actor_bias, critic_bias", BIASES)
def test_cleanrl_update_equals_the_reference_step_by_step(actor_bias, critic_bias):
    for seed in range(2):
        batch, params, tb, tp = rollout(seed, actor_bias=actor_bias, critic_bias=critic_bias)
        trace = ut.update_cleanrl_torch(tb, tp)
        assert_trace_equals(trace, reference(batch, params, trace, ut.CLEANRL_OPTIONS))


def test_cleanrl_reshuffles_every_epoch_and_minibatches_of_four():
    _, _, tb, tp = rollout(0)
    order = order_of(ut.update_cleanrl_torch(tb, tp), ut.CLEANRL_OPTIONS["n_epochs"])
    assert order.shape == (4, 16)
    for perm in order:
        np.testing.assert_array_equal(np.sort(perm), np.arange(16))
    assert len({tuple(p) for p in order}) == 4


def test_the_comparison_reaches_every_clip():
    """The comparisons are only as strong as the branches they reach. With the examples' learning rate of
    0.05, on these rollouts, ratios leave 1 +- 0.2, the value clip changes the update (the reference
    without it differs), and clip_grad_norm_ scales the gradient."""
    for fn, options in ((ut.update_cleanrl_torch, ut.CLEANRL_OPTIONS),
                        (ut.update_torchrl_float64_torch, ut.TORCHRL_OPTIONS)):
        batch, params, tb, tp = rollout(0)
        trace = fn(tb, tp)
        ref = reference(batch, params, trace, options)
        assert max(step.clip_fraction for step in ref.steps) > 0
        assert max(step["grad_norm"] for step in trace["steps"]) > options["max_grad_norm"]
    ref = reference(batch, params, trace, {**ut.TORCHRL_OPTIONS, "clip_range_vf": 0.2, "value_clip": "max"})
    unclipped = reference(batch, params, trace, ut.TORCHRL_OPTIONS)
    assert np.abs(ref.params.critic_w - unclipped.params.critic_w).max() > 1e-3


def test_cleanrl_cut_truncation_equals_the_reference_without_time_limits():
    batch, params, tb, tp = rollout(0, p_truncated=0.0)
    trace = ut.update_cleanrl_cut_truncation_torch(tb, tp)
    assert_trace_equals(trace, reference(batch, params, trace, ut.CLEANRL_OPTIONS))


def test_cleanrl_as_written_cuts_time_limits_as_declared():
    """CleanRL's ppo.py passes terminations | truncations as done (vwxyzjn/cleanrl issue #198, open): a time
    limit is cut like a termination. Declared (truncation="cut") it is the reference; against the contract's
    bootstrapped GAE it is not, and its bias is what check_pipeline_gradient measures."""
    batch, params, tb, tp = rollout(0)
    assert batch["truncated"].any()
    trace = ut.update_cleanrl_cut_truncation_torch(tb, tp)
    assert_trace_equals(trace, reference(batch, params, trace, {**ut.CLEANRL_OPTIONS, "truncation": "cut"}))
    with pytest.raises(AssertionError):
        assert_trace_equals(trace, reference(batch, params, trace, ut.CLEANRL_OPTIONS))


# -- TorchRL -----------------------------------------------------------------------------------------

def _float32_discounts():
    """(gamma, lambda) as TorchRL's GAE applies them: gamma rounded to float32, gamma * lambda a float32
    product of float32s (its buffers are torch.tensor(0.99), torch.tensor(0.95))."""
    g = np.float32(0.99)
    return float(g), float(np.float32(g * np.float32(0.95))) / float(g)


@pytest.mark.parametrize("actor_bias, critic_bias", BIASES)
def test_torchrl_float64_update_equals_the_reference_step_by_step(actor_bias, critic_bias):
    """With every coefficient a float64 tensor, TorchRL's GAE and ClipPPOLoss loop are the reference."""
    batch, params, tb, tp = rollout(1, actor_bias=actor_bias, critic_bias=critic_bias)
    trace = ut.update_torchrl_float64_torch(tb, tp)
    assert_trace_equals(trace, reference(batch, params, trace, ut.TORCHRL_OPTIONS))


def test_torchrl_advantages_are_gae_with_float32_discounts():
    batch, params, tb, tp = rollout(0)
    trace = ut.update_torchrl_torch(tb, tp)
    gamma, lam = _float32_discounts()
    want = gae(batch["rewards"], batch["values"], batch["next_values"], batch["terminated"], batch["truncated"],
               gamma, lam)
    np.testing.assert_allclose(_np(trace["advantages"]), want, rtol=0, atol=1e-13)
    np.testing.assert_allclose(_np(trace["returns"]), want + batch["values"], rtol=0, atol=1e-13)


def test_torchrl_update_is_the_reference_up_to_its_float32_coefficients():
    """On float64 data, the steps agree with the reference to what float32 coefficients explain."""
    batch, params, tb, tp = rollout(0)
    trace = ut.update_torchrl_torch(tb, tp)
    assert_trace_equals(trace, reference(batch, params, trace, ut.TORCHRL_OPTIONS), atol=1e-6)


@pytest.mark.xfail(strict=True, reason="TorchRL 0.14.1 keeps every coefficient as torch.tensor(value), float32 "
                   "for a Python float whatever the data's dtype (GAE's gamma and lmbda, ClipPPOLoss's "
                   "clip_epsilon, entropy_coeff): on float64 data advantages are off by ~3e-7 (finding; "
                   "float64 tensors avoid it, casting the module afterwards does not)")
def test_torchrl_update_in_float64_is_exact():
    batch, params, tb, tp = rollout(0)
    trace = ut.update_torchrl_torch(tb, tp)
    assert_trace_equals(trace, reference(batch, params, trace, ut.TORCHRL_OPTIONS))


def test_torchrl_normalized_update_equals_the_reference_with_its_std_floor():
    """ClipPPOLoss(normalize_advantage=True, clip_value=True) in float64 is the reference declared with
    TorchRL's floor, std.clamp_min(1e-6) (norm_eps_on="clamp")."""
    batch, params, tb, tp = rollout(3, actor_bias=True)
    trace = ut._torchrl_update(tb, tp, exact_coefficients=True,
                               loss_kwargs={"normalize_advantage": True, "clip_value": True})
    options = {k: v for k, v in ut.TORCHRL_NORMALIZED_OPTIONS.items() if k != "dtype"}
    ref = reference(batch, params, trace, options)
    assert_trace_equals(trace, ref)
    # The value clip binds somewhere: without it the reference differs.
    unclipped = reference(batch, params, trace, {**options, "clip_range_vf": None})
    assert np.abs(unclipped.params.critic_w - ref.params.critic_w).max() > 1e-3


def test_torchrl_onehot_actor_is_the_categorical_one():
    _, _, tb, tp = rollout(2, actor_bias=True, critic_bias=True)
    a, b = ut._torchrl_update(tb, tp), ut._torchrl_update(tb, tp, distribution="onehot")
    for x, y in zip(a["steps"], b["steps"]):
        np.testing.assert_array_equal(x["indices"], y["indices"])
        for name in x["params"]:
            np.testing.assert_allclose(_np(y["params"][name]), _np(x["params"][name]), rtol=0, atol=1e-14)


def test_torchrl_sampler_draws_a_fresh_permutation_per_epoch_env_major():
    _, _, tb, tp = rollout(0)
    order = order_of(ut.update_torchrl_torch(tb, tp), ut.TORCHRL_OPTIONS["n_epochs"])
    assert order.shape == (10, 16)
    for perm in order:
        np.testing.assert_array_equal(np.sort(perm), np.arange(16))
    assert len({tuple(p) for p in order}) == 10


def test_torchrl_tutorial_loop_equals_the_reference_in_its_first_epoch():
    batch, params, tb, tp = rollout(0)
    trace = ut._torchrl_update(tb, tp, per_epoch_gae=True, exact_coefficients=True)
    first = {**trace, "steps": trace["steps"][:4]}
    ref = actor_critic_update(batch, params, UpdateConfig(**{**ut.TORCHRL_OPTIONS, "n_epochs": 1}),
                              order=order_of(first, 1))
    assert_trace_equals(first, ref)


def test_torchrl_tutorial_loop_recomputes_advantages_every_epoch_as_declared():
    """TorchRL's PPO tutorial and sota-implementations call the GAE module at the start of every epoch, with
    the critic as the last epoch left it (pytorch/rl PR #1225): declared advantages="per_epoch" it is the
    reference step by step; declared "once" (the PPO paper, SB3, CleanRL) it is not."""
    batch, params, tb, tp = rollout(0)
    trace = ut._torchrl_update(tb, tp, per_epoch_gae=True, exact_coefficients=True)
    assert_trace_equals(trace, reference(batch, params, trace, {**ut.TORCHRL_OPTIONS, "advantages": "per_epoch"}))
    with pytest.raises(AssertionError):
        assert_trace_equals(trace, reference(batch, params, trace, ut.TORCHRL_OPTIONS))


# -- what the examples declare -----------------------------------------------------------------------

def test_declared_options_are_update_config_fields():
    for ex in ut.CORRECT + ut.BROKEN:
        options = {k: v for k, v in ex.options.items() if k != "dtype"}
        UpdateConfig(**options)
        assert ex.kind == "update" and ex.backend == "torch"
    names = [ex.name for ex in ut.CORRECT + ut.BROKEN]
    assert len(names) == len(set(names))
    assert all("https://github.com/" in ex.description for ex in ut.BROKEN)


# -- check_update ------------------------------------------------------------------------------------

def _check(fn, options, **kwargs):
    from refpg.conformance import check_update

    return check_update(fn, backend="torch", **{**dict(options), **kwargs})


def _examples(examples, slow=()):
    return [pytest.param(ex, id=ex.name, marks=[pytest.mark.slow] if ex.name in slow else []) for ex in examples]


#: 3-6 s each to find and shrink (TorchRL's update is the slower one): left to the slow run.
SLOW_BROKEN = ("update_torchrl_no_zero_grad_torch", "update_torchrl_no_terminated_torch")


@pytest.mark.parametrize("ex", _examples(ut.CORRECT if HAS_TORCHRL else ()))
def test_correct_examples_pass_check_update(ex):
    report = helpers.example_report(ex)  # the zoo's report, computed once per session
    assert report.passed, str(report)


@pytest.mark.parametrize("ex", _examples(ut.BROKEN if HAS_TORCHRL else (), slow=SLOW_BROKEN))
def test_broken_examples_fail_check_update_with_their_id(ex):
    report = helpers.example_report(ex)
    assert not report.passed
    assert [f.check_id for f in report.failures][0] == ex.expected, str(report)


def _fails_only_with(report, ids):
    """The report's failures are exactly `ids` (else an error, which a strict xfail with raises=AssertionError
    does not accept: the xfail holds for its stated reason only); then assert that it passed."""
    got = {f.check_id for f in report.failures}
    if got and got != set(ids):
        raise RuntimeError(f"failed with {sorted(got)}, not the expected {sorted(ids)}:\n{report}")
    assert report.passed


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="CleanRL's ppo.py cuts a time limit like a "
                   "termination (vwxyzjn/cleanrl issue #198): update.advantages")
def test_check_update_on_cleanrl_as_written():
    _fails_only_with(_check(ut.update_cleanrl_cut_truncation_torch, ut.CLEANRL_OPTIONS), ["update.advantages"])


@pytest.mark.slow
def test_check_update_on_the_torchrl_tutorial_loop():
    """Declared advantages="per_epoch", the tutorial's loop passes; declared "once", the check names the
    loss of epoch 1, where the recomputed advantages first differ."""
    rep = _check(ut.update_torchrl_tutorial_torch, {**ut.TORCHRL_OPTIONS, "dtype": "float32", "advantages": "per_epoch"})
    assert rep.passed, rep
    once = _check(ut.update_torchrl_tutorial_torch, {**ut.TORCHRL_OPTIONS, "dtype": "float32"})
    assert once.failed_ids and once.failed_ids[0] == "update.loss" and "epoch 1, minibatch 0" in once.failures[0].message


@pytest.mark.slow
def test_check_update_on_torchrl_normalized_in_float64():
    """TorchRL divides by std.clamp_min(1e-6): declared norm_eps_on="clamp", its update is exact in float64;
    declared as std + eps (SB3's and CleanRL's) it is not."""
    fn = functools.partial(ut._torchrl_update, exact_coefficients=True,
                           loss_kwargs={"normalize_advantage": True, "clip_value": True})
    options = {k: v for k, v in ut.TORCHRL_NORMALIZED_OPTIONS.items() if k != "dtype"}
    rep = _check(fn, options)
    assert rep.passed, rep
    other = _check(fn, {**options, "norm_eps": 1e-8, "norm_eps_on": "std"})
    assert other.failed_ids and other.failed_ids[0] in ("update.loss", "update.gradient"), other


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=AssertionError, reason="TorchRL keeps its coefficients as float32 "
                   "tensors on float64 data (finding): update.advantages from gamma and lmbda, update.loss and "
                   "update.gradient from those advantages, clip_epsilon and entropy_coeff")
def test_check_update_on_torchrl_in_float64_with_python_float_coefficients():
    _fails_only_with(_check(ut.update_torchrl_torch, ut.TORCHRL_OPTIONS),
                     ["update.advantages", "update.loss", "update.gradient"])
