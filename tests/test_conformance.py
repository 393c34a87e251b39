"""The conformance kit's mechanics: reports, counterexamples, exceptions, mutation, shapes, dtypes,
bad arguments, determinism, the CLI and the pytest plugin. The bundled zoo is in
test_conformance_examples.py."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from refpg.conformance import (Report, assert_conforms, check, check_gae, check_kl_estimator, check_ppo_loss,
                               check_reinforce_estimator, check_trpo_step, check_value_loss)
from refpg.errors import ConformanceError, InvalidInputError
from refpg.returns import gae

FAST = dict(max_examples=25)


def gae_truncation_as_termination(rewards, values, next_values, terminated, truncated, gamma, lam):
    return gae(rewards, values, next_values, terminated | truncated, np.zeros_like(truncated), gamma, lam)


def test_correct_gae_passes_and_report_lists_every_check():
    report = check_gae(gae, **FAST)
    assert report.passed and report.failures == ()
    assert {"gae.recursion", "gae.terminal_not_bootstrapped", "gae.truncation_bootstrapped",
            "gae.no_flow_across_episodes", "gae.general", "gae.raised", "gae.input_mutated"} <= set(report.checks)
    assert report.examples > 0 and report.backend == "numpy" and report.dtype == "float64"
    assert str(report).splitlines()[1].startswith("PASSED")
    assert_conforms(report)  # no exception


def test_failure_has_check_id_message_and_minimal_counterexample():
    report = check_gae(gae_truncation_as_termination)
    assert not report.passed
    failure = report.failure("gae.truncation_bootstrapped")
    assert failure is not None and report.failed_ids == ("gae.truncation_bootstrapped",)
    assert " should be " in failure.message and ", actual " in failure.message
    ce = failure.counterexample
    assert ce.shrunk
    # Shrunk to one step of one environment: a truncation with a non-zero final value.
    assert ce.inputs["rewards"].shape == (1, 1)
    assert ce.inputs["truncated"].tolist() == [[True]] and ce.inputs["next_values"][0, 0] != 0
    np.testing.assert_allclose(ce.expected, ce.inputs["gamma"] * ce.inputs["next_values"]
                               - ce.inputs["values"] + ce.inputs["rewards"], rtol=1e-12)
    text = str(report)
    assert "FAIL gae.truncation_bootstrapped" in text and "counterexample:" in text


def test_assert_conforms_raises_an_assertion_error_with_the_report():
    report = check_gae(gae_truncation_as_termination, **FAST)
    with pytest.raises(ConformanceError) as info:
        assert_conforms(report)
    assert isinstance(info.value, AssertionError)
    assert "gae.truncation_bootstrapped" in str(info.value)
    with pytest.raises(TypeError, match="Report"):
        assert_conforms("not a report")


def test_exception_in_user_code_is_a_reported_failure_with_traceback():
    def exploding_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
        if rewards.shape[0] > 2:
            raise RuntimeError("boom at long rollouts")
        return gae(rewards, values, next_values, terminated, truncated, gamma, lam)

    report = check_gae(exploding_gae, backend="numpy")
    failure = report.failure("gae.raised")
    assert failure is not None
    assert "RuntimeError: boom at long rollouts" in failure.message
    assert "exploding_gae" in failure.traceback and "_harness" not in failure.traceback
    assert failure.counterexample.inputs["rewards"].shape[0] == 3  # the shortest rollout that raises


def test_in_place_modification_is_caught():
    def mutating_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
        out = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
        rewards *= 0.0
        return out

    report = check_gae(mutating_gae, **FAST)
    failure = report.failure("gae.input_mutated")
    assert failure is not None and "rewards modified in place" in failure.message


@pytest.mark.parametrize("bad, check_id, words", [
    (lambda *a: gae(*a).T.copy(), "gae.output_shape", "transposed"),
    (lambda *a: gae(*a).ravel(), "gae.output_shape", "shape"),
    (lambda *a: gae(*a).astype(np.float16), "gae.output_dtype", "float16"),
    (lambda *a: "advantages", "gae.output_dtype", "str"),
    (lambda *a: gae(*a) * np.nan, "gae.output_finite", "finite"),
])
def test_wrong_output_is_a_clear_failure(bad, check_id, words):
    report = check_gae(bad, backend="numpy", **FAST)
    failure = report.failure(check_id)
    assert failure is not None, str(report)
    assert words in failure.message


def test_upcasting_float32_is_a_warning_not_a_failure():
    report = check_gae(lambda *a: gae(*a), dtype="float32", **FAST)  # refpg's gae returns float64
    assert report.passed
    assert any("upcasts" in w for w in report.warnings)


def test_same_seed_same_report_other_seed_other_examples():
    a = check_gae(gae_truncation_as_termination, seed=3, **FAST)
    b = check_gae(gae_truncation_as_termination, seed=3, **FAST)
    assert a.failures == b.failures and a.examples == b.examples


def test_cleanrl_convention_warns_what_truncation_costs():
    def cleanrl_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
        T = rewards.shape[0]
        adv = np.zeros_like(rewards)
        last = 0.0
        for t in reversed(range(T)):
            if t == T - 1:
                nonterminal, nextvalues = 1.0 - next_done, next_value
            else:
                nonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
            delta = rewards[t] + gamma * nextvalues * nonterminal - values[t]
            adv[t] = last = delta + gamma * gae_lambda * nonterminal * last
        return adv

    report = check_gae(cleanrl_gae, convention="cleanrl", **FAST)
    assert report.passed, str(report)
    assert "gae.truncation_bootstrapped" not in report.checks
    (warning,) = [w for w in report.warnings if "truncation" in w]
    assert "no truncation flag" in warning and "changed advantages by up to" in warning


def test_torch_ppo_gradient_is_checked():
    torch = pytest.importorskip("torch")

    def detached(logp_new, logp_old, adv, eps):
        r = torch.exp(logp_new - logp_old)
        return -torch.min(adv * r.detach(), adv * torch.clamp(r, 1 - eps, 1 + eps)).mean()

    def correct(logp_new, logp_old, adv, eps):
        r = torch.exp(logp_new - logp_old)
        return -torch.min(adv * r, adv * torch.clamp(r, 1 - eps, 1 + eps)).mean()

    assert check_ppo_loss(correct, **FAST).passed
    assert check_ppo_loss(correct, dtype="float32", **FAST).passed
    report = check_ppo_loss(detached, **FAST)
    assert report.backend == "torch" and report.failed_ids == ("ppo_loss.gradient",)


def test_warnings_of_the_user_function_are_reported_once():
    def noisy(logp_new, logp_old):
        import warnings
        warnings.warn("estimator warming up", RuntimeWarning)
        return -(logp_new - logp_old)

    report = check_kl_estimator(noisy, **FAST)
    assert report.passed
    assert report.warnings.count("the function emitted RuntimeWarning: estimator warming up") == 1


@pytest.mark.parametrize("call, words", [
    (lambda: check_gae(gae, convention="spinningup"), "convention should be one of"),
    (lambda: check_gae(gae, backend="jax"), "backend should be one of"),
    (lambda: check_gae(gae, dtype="float16"), "dtype should be one of"),
    (lambda: check_gae(gae, max_examples=0), "max_examples should be a positive integer"),
    (lambda: check_gae("gae"), "fn should be a callable"),
    (lambda: check_ppo_loss(gae, normalise="batch"), "unknown ['normalise']"),
    (lambda: check_ppo_loss(gae, normalize="minibatch"), "normalize should be one of"),
    (lambda: check_value_loss(gae, style="huber"), "style should be one of"),
    (lambda: check_value_loss(gae, convention="rlax"), "convention should be one of"),
    (lambda: check_kl_estimator(gae, unbiased="yes"), "unbiased should be True or False"),
    (lambda: check_reinforce_estimator(gae, objective="average"), "objective should be one of"),
    (lambda: check_trpo_step(gae, damping=-0.1), "damping should be >= 0"),
    (lambda: check("sac_loss", gae), "kind should be one of"),
])
def test_bad_arguments_raise_clear_errors(call, words):
    with pytest.raises(InvalidInputError) as info:
        call()
    assert words in str(info.value)


def test_report_is_a_frozen_value():
    report = check_kl_estimator(lambda n, o: -(n - o), **FAST)
    assert isinstance(report, Report)
    with pytest.raises(Exception):
        report.kind = "gae"


# -- entry points -----------------------------------------------------------------------------

def _refpg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "refpg.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_cli_module_function_target(tmp_path):
    (tmp_path / "mygae.py").write_text(textwrap.dedent("""
        import numpy as np
        from refpg.returns import gae

        def broken(rewards, values, next_values, terminated, truncated, gamma, lam):
            return gae(rewards, values, next_values, terminated | truncated, np.zeros_like(truncated),
                       gamma, lam)
    """))
    res = _refpg("check", "mygae:broken", "--kind", "gae", "--max-examples", "20", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "FAIL gae.truncation_bootstrapped" in res.stdout and "0 of 1 passed" in res.stdout
    res = _refpg("check", "refpg.returns:gae", "--kind", "gae", "--max-examples", "20", cwd=tmp_path)
    assert res.returncode == 0 and "1 of 1 passed" in res.stdout
    res = _refpg("check", "mygae:missing", "--kind", "gae", cwd=tmp_path)
    assert res.returncode == 2 and "has no attribute 'missing'" in res.stderr


def test_cli_file_with_registered_functions(tmp_path):
    path = tmp_path / "adapters.py"
    path.write_text(textwrap.dedent("""
        import numpy as np
        from refpg.conformance import register

        @register("kl_estimator", non_negative=True, max_examples=20)
        def k3(logp_new, logp_old):
            lr = logp_new - logp_old
            return np.expm1(lr) - lr

        @register("ppo_loss", max_examples=20)
        def wrong_sign(logp_new, logp_old, adv, eps):
            r = np.exp(logp_new - logp_old)
            return np.mean(np.minimum(r * adv, np.clip(r, 1 - eps, 1 + eps) * adv))
    """))
    res = _refpg("check", str(path))
    assert res.returncode == 1
    assert "PASSED" in res.stdout and "FAIL ppo_loss.inside_clip_range" in res.stdout
    assert "1 of 2 passed" in res.stdout


def test_pytest_plugin(pytester):
    pytester.makepyfile(textwrap.dedent("""
        import numpy as np
        from refpg.returns import gae

        def test_good(refpg_check):
            report = refpg_check("gae", gae)
            assert report.passed

        def test_bad(refpg_check):
            refpg_check("kl_estimator", lambda n, o: -(n - o), non_negative=True)
    """))
    result = pytester.runpytest_subprocess("-p", "no:xdist", "--refpg-max-examples", "20", "-q")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL kl_estimator.non_negative*"])
