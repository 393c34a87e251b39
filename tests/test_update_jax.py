"""refpg.examples.update_jax: PureJaxRL's whole PPO update, jitted, against the reference.

The trace of the jitted update is compared step by step with
`refpg.algorithms.actor_critic.actor_critic_update` run in the permutations the update drew (read back from
the trace), on rollouts of a random MDP collected by the parameters' own policy; then the registered
examples go through `check_update`, the broken ones failing with their check id. PureJaxRL's GAE as written
(a time limit cut like a termination) is a strict xfail.

Budget: each distinct (bug, shapes) compiles once (~2 s); the default run compiles six times.
"""

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

from refpg.algorithms.actor_critic import UpdateConfig, actor_critic_update  # noqa: E402
from refpg.conformance import check_update  # noqa: E402
from refpg.errors import InvalidInputError  # noqa: E402
from refpg.examples import update_jax as uj  # noqa: E402

#: float64 throughout: the jitted update and the reference agree to rounding (measured: 4e-16).
EXACT = 1e-12
OPTIONS = uj.PUREJAXRL_OPTIONS
EPOCHS = OPTIONS["n_epochs"]


def rollout(seed, *, n_states=3, n_actions=2, n_steps=8, n_envs=2, actor_bias=False, critic_bias=False,
            p_terminated=0.2, p_truncated=0.2):
    """(batch, params) as NumPy: a (T, N) rollout of a random MDP under the parameters' softmax policy, the
    next row of an env starting afresh after a termination or a time limit (next_states keeps the final
    observation)."""
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
    return batch, params


def order_of(trace):
    """The (n_epochs, M) permutations the update drew, from the steps' indices."""
    idx = [np.asarray(step["indices"]) for step in trace["steps"]]
    per = len(idx) // EPOCHS
    return np.stack([np.concatenate(idx[e * per:(e + 1) * per]) for e in range(EPOCHS)])


def reference(batch, params, trace, options=OPTIONS):
    return actor_critic_update(batch, params, UpdateConfig(**options), order=order_of(trace))


def assert_trace_equals(trace, ref, *, atol=EXACT):
    np.testing.assert_allclose(np.asarray(trace["advantages"]), ref.advantages, rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(trace["returns"]), ref.returns, rtol=0, atol=atol)
    assert len(trace["steps"]) == len(ref.steps) == 16
    for k, (step, want) in enumerate(zip(trace["steps"], ref.steps)):
        np.testing.assert_array_equal(np.asarray(step["indices"]), want.indices, err_msg=f"step {k}")
        np.testing.assert_allclose(float(step["loss"]), want.loss, rtol=0, atol=atol, err_msg=f"loss, step {k}")
        np.testing.assert_allclose(float(step["grad_norm"]), want.grad_norm, rtol=0, atol=atol,
                                   err_msg=f"grad_norm, step {k}")
        for key, exp in (("grad", want.grad), ("clipped_grad", want.clipped_grad), ("params", want.params)):
            assert sorted(step[key]) == sorted(exp.present()), key
            for name in exp.present():
                np.testing.assert_allclose(np.asarray(step[key][name]), getattr(exp, name), rtol=0, atol=atol,
                                           err_msg=f"{key}[{name!r}], step {k}")


# -- the trace against the reference -----------------------------------------------------------------

@pytest.mark.parametrize("actor_bias, critic_bias", [
    (False, False),
    (True, True),
    pytest.param(True, False, marks=pytest.mark.slow),
    pytest.param(False, True, marks=pytest.mark.slow),
])
def test_purejaxrl_update_equals_the_reference_step_by_step(actor_bias, critic_bias):
    for seed in range(2):
        batch, params = rollout(seed, actor_bias=actor_bias, critic_bias=critic_bias)
        assert batch["truncated"].any() and batch["terminated"].any()
        trace = uj.update_purejaxrl_jax(batch, params)
        assert_trace_equals(trace, reference(batch, params, trace))


def test_every_epoch_draws_a_fresh_permutation_of_the_time_major_batch():
    batch, params = rollout(0)
    trace = uj.update_purejaxrl_jax(batch, params)
    order = order_of(trace)
    assert order.shape == (4, 16)
    for perm in order:
        np.testing.assert_array_equal(np.sort(perm), np.arange(16))
    assert len({tuple(p) for p in order}) == 4
    assert all(np.asarray(s["indices"]).dtype == np.int64 for s in trace["steps"])


def test_the_comparison_reaches_every_clip():
    """The equality above is as strong as the branches it reaches: at lr 0.05 some ratio leaves 1 +- 0.2, the
    global norm exceeds 0.5, and the value clip changes the update (the reference without it differs)."""
    batch, params = rollout(0)
    trace = uj.update_purejaxrl_jax(batch, params)
    ref = reference(batch, params, trace)
    assert max(step.clip_fraction for step in ref.steps) > 0
    assert max(float(step["grad_norm"]) for step in trace["steps"]) > OPTIONS["max_grad_norm"]
    unclipped = reference(batch, params, trace, {**OPTIONS, "clip_range_vf": None})
    assert np.abs(ref.params.critic_w - unclipped.params.critic_w).max() > 1e-3
    # ddof 0 is declared, and it matters: with torch's std (ddof 1) the update is another one.
    bessel = reference(batch, params, trace, {**OPTIONS, "norm_ddof": 1})
    assert np.abs(ref.params.actor_w - bessel.params.actor_w).max() > 1e-6


def test_as_written_gae_equals_the_reference_without_time_limits():
    batch, params = rollout(0, p_truncated=0.0)
    trace = uj.update_purejaxrl_as_written_jax(batch, params)
    assert_trace_equals(trace, reference(batch, params, trace))


def test_purejaxrl_as_written_cuts_time_limits_as_declared():
    """PureJaxRL's ppo.py carries done = terminated | truncated into the bootstrap and the recursion
    (https://github.com/luchris429/purejaxrl/issues/20, open): declared truncation="cut" it is the reference,
    and against the contract's bootstrapped GAE it is not."""
    batch, params = rollout(0)
    assert batch["truncated"].any()
    trace = uj.update_purejaxrl_as_written_jax(batch, params)
    assert_trace_equals(trace, reference(batch, params, trace, {**uj.PUREJAXRL_OPTIONS, "truncation": "cut"}))
    with pytest.raises(AssertionError):
        assert_trace_equals(trace, reference(batch, params, trace))


def test_targets_with_gradient_leave_the_critic_without_gradient():
    # The planted bug's mechanism, seen directly: d(value - (gae + value))/d value = 0.
    batch, params = rollout(0)
    good = uj.update_purejaxrl_jax(batch, params)["steps"][0]
    bad = uj.update_purejaxrl_targets_with_gradient_jax(batch, params)["steps"][0]
    np.testing.assert_allclose(float(bad["loss"]), float(good["loss"]), rtol=1e-14)
    np.testing.assert_array_equal(np.asarray(bad["grad"]["critic_w"]), 0.0)
    assert np.abs(np.asarray(good["grad"]["critic_w"])).max() > 1e-3


def test_bad_settings_are_refused_by_name():
    with pytest.raises(InvalidInputError, match="bug"):
        uj.make_ppo_update(bug="no_such_bug")
    with pytest.raises(InvalidInputError, match="gae"):
        uj.make_ppo_update(gae="cleanrl")
    batch, params = rollout(0, n_steps=3, n_envs=2)
    with pytest.raises(InvalidInputError, match="NUM_MINIBATCHES"):
        uj.update_purejaxrl_jax(batch, params)


# -- through the kit ---------------------------------------------------------------------------------

def run(ex):
    """The example's report at the default seed, shared with the zoo's own tests (computed once)."""
    from tests import helpers
    return helpers.example_report(ex)


def test_the_correct_example_passes_check_update_with_every_component_compared():
    (ex,) = uj.CORRECT
    rep = run(ex)
    assert rep.passed, rep
    compared = ("update.advantages", "update.returns", "update.loss", "update.gradient", "update.grad_norm",
                "update.optimizer_step", "update.minibatch_order", "update.step_count")
    not_run = [n.check_id for n in rep.not_run]
    for cid in compared:
        assert cid in rep.checks and cid not in not_run, cid


@pytest.mark.parametrize("ex", uj.BROKEN, ids=lambda ex: ex.name)
def test_each_broken_example_fails_check_update_with_its_id(ex):
    rep = run(ex)
    assert rep.failed_ids and rep.failed_ids[0] == ex.expected, rep
    if ex.expected != "update.minibatch_order":
        assert "epoch 0, minibatch 0" in rep.failures[0].message, rep.failures[0].message


def test_declared_options_are_update_config_fields_and_bugs_cite_urls():
    for ex in uj.CORRECT + uj.BROKEN:
        config = UpdateConfig(**dict(ex.options))
        assert config.optimizer_convention == "optax"
        assert ex.kind == "update" and ex.backend == "jax" and ex.convention == "refpg"
    assert len(uj.BROKEN) >= 2
    assert all("https://github.com/" in ex.description for ex in uj.BROKEN)
    names = [ex.name for ex in uj.CORRECT + uj.BROKEN]
    assert len(names) == len(set(names))
