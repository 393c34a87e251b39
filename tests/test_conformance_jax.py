"""The conformance kit's JAX backend: arrays, x64 mode, gradients through jax.grad, auto-detection, and
rlax's real, installed functions checked as they are (`truncated_generalized_advantage_estimation` and
`clipped_surrogate_pg_loss`)."""

import importlib.util
import sys

import numpy as np
import pytest

from refpg import examples
from refpg.conformance import KINDS, check, check_gae, check_ppo_loss
from refpg.conformance._harness import Backend, Session, resolve_backend
from refpg.errors import InvalidInputError

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def _session(fn, dtype="float64"):
    return Session("ppo_loss", fn, "refpg", Backend("jax", dtype), max_examples=1, seed=0, options={})


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_jax_backend_passes_jax_arrays_of_the_declared_dtype(dtype):
    seen = {}

    def fn(x, n):
        seen["type"], seen["dtype"], seen["n"] = type(x).__module__, str(x.dtype), n.dtype
        return jnp.sum(x)

    call = _session(fn, dtype).call([("x", np.array([1.0, 2.0])), ("n", np.array([1, 2]))])
    assert call.error is None, call.error
    assert seen["type"].startswith("jax")
    assert seen["dtype"] == dtype
    assert str(call.output.dtype) == dtype


def test_x64_mode_is_on_only_during_the_call():
    before = jax.config.jax_enable_x64
    during = {}

    def fn(x):
        during["x64"] = jax.config.jax_enable_x64
        return jnp.sum(x)

    _session(fn).call([("x", np.array([1.0]))])
    assert during["x64"] is True
    assert jax.config.jax_enable_x64 == before


def test_input_gradient_is_jax_grad_of_the_picked_loss():
    @jax.jit
    def fn(x, w):
        return {"loss": jnp.sum(w * x ** 2), "extra": x}

    session = _session(fn)
    x, w = np.array([1.0, -2.0, 3.0]), np.array([0.5, 1.0, 2.0])
    call = session.call([("x", x), ("w", w)])
    grad, why = session.input_gradient(call, "x", lambda out: out["loss"])
    assert why is None
    np.testing.assert_allclose(grad, 2 * w * x, rtol=0, atol=1e-15)
    grad_w, _ = session.input_gradient(call, "w", lambda out: out["loss"])
    np.testing.assert_allclose(grad_w, x ** 2, rtol=0, atol=1e-15)


def test_input_gradient_names_a_loss_jax_cannot_trace():
    def fn(x):
        return float(np.sum(np.asarray(x)))  # leaves JAX: no gradient exists

    session = _session(fn)
    call = session.call([("x", np.array([1.0, 2.0]))])
    grad, why = session.input_gradient(call, "x")
    assert grad is None
    assert "differentiable with respect to x through jax.grad" in why
    assert "TracerArrayConversionError" in why


def test_auto_chooses_jax_for_a_function_returning_jax_arrays():
    @jax.jit
    def loss(logp_new, logp_old, advantages, clip_eps):
        ratio = jnp.exp(logp_new - logp_old)
        return -jnp.mean(jnp.minimum(ratio * advantages, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages))

    report = check_ppo_loss(loss, max_examples=20)
    assert report.backend == "jax"
    assert report.passed, str(report)
    assert "ppo_loss.gradient" in report.checks
    assert any("chose jax" in w for w in report.warnings)


def test_backend_jax_without_jax_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # import jax now raises ImportError
    with pytest.raises(InvalidInputError, match=r"backend='jax' needs JAX: pip install 'refpg\[jax\]'"):
        resolve_backend(lambda x: x, "jax", "float64", probe=lambda be: True)


def test_every_kind_has_a_correct_jax_example():
    """The jax backend covers every kind: each has a bundled JAX implementation that passes
    (tests/test_conformance_examples.py runs them)."""
    kinds = {ex.kind for ex in examples.CORRECT if ex.backend == "jax"}
    assert kinds == set(KINDS)


def test_a_jax_gradient_bug_is_caught_through_jax_grad():
    ex = examples.by_name("value_loss_cleanrl_jax_detached_clip")
    report = check(ex.kind, ex.fn, convention=ex.convention, backend="jax", max_examples=30)
    assert report.failed_ids == ("value_loss.gradient",)
    assert "value_loss.value" not in report.failed_ids  # the value is right: only jax.grad shows the bug


# -- rlax, installed, called as it is ---------------------------------------------------

rlax = pytest.importorskip("rlax") if importlib.util.find_spec("rlax") else None
needs_rlax = pytest.mark.skipif(rlax is None, reason="needs rlax (pinned in the test extra)")


# Jitted, as training code calls them: unjitted, rlax's GAE compiles its jax.lax.scan body again on every
# call (a new closure each time), which makes any harness that calls it thousands of times slow.

@needs_rlax
def test_rlax_truncated_gae_conforms_on_jax():
    report = check_gae(jax.jit(rlax.truncated_generalized_advantage_estimation), convention="rlax",
                       backend="jax")
    assert report.passed, str(report)
    assert report.backend == "jax" and report.dtype == "float64"
    assert {"gae.recursion", "gae.terminal_not_bootstrapped", "gae.truncation_bootstrapped"} <= set(report.checks)
    assert not {n.check_id for n in report.not_run} & {"gae.recursion", "gae.terminal_not_bootstrapped",
                                                       "gae.truncation_bootstrapped", "gae.general"}


@needs_rlax
def test_rlax_truncated_gae_jitted_conforms_in_float32():
    report = check_gae(jax.jit(rlax.truncated_generalized_advantage_estimation), convention="rlax",
                       backend="jax", dtype="float32", max_examples=50)
    assert report.passed, str(report)


@needs_rlax
def test_rlax_clipped_surrogate_conforms_with_its_gradient_through_jax_grad():
    report = check_ppo_loss(jax.jit(rlax.clipped_surrogate_pg_loss), convention="rlax", backend="jax")
    assert report.passed, str(report)
    assert "ppo_loss.gradient" in report.checks
    assert "ppo_loss.gradient" not in {n.check_id for n in report.not_run}


@needs_rlax
def test_a_broken_wrapper_of_rlax_is_caught():
    """The check has power on the real function's path: the loss with its sign flipped fails."""
    def flipped(prob_ratios_t, adv_t, epsilon):
        return -jax.jit(rlax.clipped_surrogate_pg_loss)(prob_ratios_t, adv_t, epsilon)

    report = check_ppo_loss(flipped, convention="rlax", backend="jax", max_examples=20)
    assert "ppo_loss.inside_clip_range" in report.failed_ids
    assert "the sign is flipped" in str(report)


def test_cli_checks_a_jax_function_with_backend_jax(capsys):
    from refpg.cli import main

    code = main(["check", "refpg.examples.jax_examples:value_loss_cleanrl_jax", "--kind", "value_loss",
                 "--convention", "cleanrl", "--backend", "jax", "--max-examples", "20"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "backend=jax" in out
    assert "ok   value_loss.gradient" in out


@pytest.mark.slow
@pytest.mark.parametrize("ex", [pytest.param(e, id=e.name) for e in examples.jax_examples.CORRECT
                                + examples.jax_examples.BROKEN])
def test_jax_examples_behave_as_declared_at_seeds_1_to_5(ex):
    for seed in range(1, 6):
        report = check(ex.kind, ex.fn, convention=ex.convention, backend=ex.backend, seed=seed, **dict(ex.options))
        if ex.expected is None:
            assert report.passed, (seed, str(report))
        else:
            assert ex.expected in report.failed_ids, (seed, str(report))


def test_a_torch_function_under_backend_jax_is_told_to_pass_torch():
    torch = pytest.importorskip("torch")

    def loss(logp_new, logp_old, advantages, clip_eps):
        return -torch.mean(torch.exp(logp_new - logp_old) * advantages)

    report = check_ppo_loss(loss, backend="jax", max_examples=5)
    assert "ppo_loss.raised" in report.failed_ids
    assert "pass backend='torch'" in report.failure("ppo_loss.raised").message


def test_progress_lines_of_a_slow_jax_check_say_to_jit(monkeypatch):
    import io
    import time

    from refpg.conformance import _harness
    from refpg.examples import jax_examples

    def slow(logp_new, logp_old):
        time.sleep(0.015)  # as slow as an unjitted JAX function on these inputs
        return jax_examples.kl_k3_mean_jax(logp_new, logp_old)

    stream = io.StringIO()
    monkeypatch.setitem(_harness.PROGRESS, "stream", stream)
    monkeypatch.setitem(_harness.PROGRESS, "every", 0.05)
    check("kl_estimator", slow, backend="jax", unbiased=False, max_examples=5)
    assert "kl_estimator still running after" in stream.getvalue()
    assert "check jax.jit(fn)" in stream.getvalue()
