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
    # Listed as not run, with its reason, but a check the convention cannot express leaves the report complete.
    assert report.status("gae.truncation_bootstrapped") == "not_run"
    assert "NOT RUN gae.truncation_bootstrapped: cleanrl has no truncation flag" in str(report)
    assert str(report).splitlines()[1].startswith("PASSED: 9 of 10 checks passed, 1 not run")
    (warning,) = [w for w in report.warnings if "truncation" in w]
    assert "no truncation flag" in warning and "changed advantages by up to" in warning


def cleanrl_gae_never_cut(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
    """cleanrl's signature, but the recursion runs straight through every episode boundary."""
    adv, last = np.zeros_like(rewards), 0.0
    for t in reversed(range(rewards.shape[0])):
        nv = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        adv[t] = last = rewards[t] + gamma * nv - values[t] + gamma * gae_lambda * last
    return adv


def test_every_declared_gae_check_is_reported_when_a_value_check_fails_under_cleanrl():
    report = check_gae(cleanrl_gae_never_cut, convention="cleanrl", **FAST)
    value_ids = ["gae.recursion", "gae.terminal_not_bootstrapped", "gae.truncation_bootstrapped",
                 "gae.no_flow_across_episodes", "gae.general"]
    assert [c for c in report.checks if c in value_ids] == value_ids
    assert len(report.checks) == 10
    checks = {c["id"]: c for c in report.to_dict()["checks"]}
    assert set(value_ids) <= set(checks)
    assert checks["gae.general"]["status"] == "not_run"
    assert "adds nothing to the specific failure of gae.terminal_not_bootstrapped" in checks["gae.general"]["reason"]
    assert checks["gae.truncation_bootstrapped"]["status"] == "not_run"
    assert "cleanrl has no truncation flag" in checks["gae.truncation_bootstrapped"]["reason"]
    assert report.to_dict()["not_applicable"] == ["gae.truncation_bootstrapped"]
    text = str(report)
    assert "NOT RUN gae.general: " in text and "NOT RUN gae.truncation_bootstrapped: " in text


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
    (lambda: check_gae(gae, convention="baselines"), "convention should be one of"),
    (lambda: check_gae(gae, backend="tensorflow"), "backend should be one of"),
    (lambda: check_gae(gae, dtype="float16"), "dtype should be one of"),
    (lambda: check_gae(gae, max_examples=0), "max_examples should be >= 1, actual 0"),
    (lambda: check_gae("gae"), "fn should be a callable"),
    (lambda: check_ppo_loss(gae, normalise="batch"), "unknown ['normalise']"),
    (lambda: check_ppo_loss(gae, normalize="minibatch"), "normalize should be one of"),
    (lambda: check_value_loss(gae, style="huber"), "style should be one of"),
    (lambda: check_value_loss(gae, convention="rlax"), "convention should be one of"),
    (lambda: check_kl_estimator(gae, unbiased="yes"), "unbiased should be True or False"),
    (lambda: check_reinforce_estimator(gae, objective="average"), "objective should be one of"),
    (lambda: check_trpo_step(gae, damping=-0.1), "damping should be >= 0"),
    (lambda: check("sac_loss", gae), "kind should be one of"),
    # Seeds and alpha were NumPy's or Python's own errors from inside some checks.
    (lambda: check_gae(gae, seed=-1), "seed should be >= 0, actual -1"),
    (lambda: check_gae(gae, seed=None), "seed should be an integer, actual None"),
    (lambda: check_ppo_loss(gae, seed=1.5), "seed should be an integer, actual 1.5"),
    (lambda: check_value_loss(gae, seed="0"), "seed should be an integer, actual '0'"),
    (lambda: check_kl_estimator(gae, seed=-1), "seed should be >= 0, actual -1"),
    (lambda: check_kl_estimator(gae, seed=1.5), "seed should be an integer, actual 1.5"),
    (lambda: check_kl_estimator(gae, seed=None), "seed should be an integer, actual None"),
    (lambda: check_trpo_step(gae, seed="0"), "seed should be an integer, actual '0'"),
    (lambda: check_kl_estimator(gae, alpha="x"), "alpha should be a finite real number, actual 'x'"),
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
    # In process: a fresh pytest Config that finds the plugin through its pytest11 entry point (it
    # fails with PYTEST_DISABLE_PLUGIN_AUTOLOAD=1), without a second interpreter importing pytest,
    # NumPy and refpg (~2 s). Each check seeds its own search, so the outer profile does not matter.
    result = pytester.runpytest_inprocess("-p", "no:xdist", "--refpg-max-examples", "20", "-q")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL kl_estimator.non_negative*"])


# -- regressions from the adversarial review -------------------------------------------------

def test_a_function_whose_output_varies_is_reported_not_crashed():
    calls = [0]

    def flaky(*args):
        calls[0] += 1
        return gae(*args) + (1.0 if calls[0] == 7 else 0.0)

    report = check_gae(flaky, **FAST)
    (failure,) = report.failures
    assert not failure.counterexample.shrunk
    assert "deterministic" in str(report)


def test_sys_exit_inside_the_function_is_a_failure():
    def exits(*args):
        sys.exit(3)

    assert check_gae(exits, **FAST).failed_ids == ("gae.raised",)


def test_a_global_seterr_does_not_crash_the_checker():
    import numpy as np_

    old = np_.seterr(all="raise")
    try:
        report = check_ppo_loss(lambda n, o, a, e: -np.mean(np.minimum(np.exp(n - o) * a, np.clip(
            np.exp(n - o), 1 - e, 1 + e) * a)), **FAST)
    finally:
        np_.seterr(**old)
    assert report.passed, str(report)


def test_auto_backend_picks_torch_when_the_function_returns_tensors():
    torch = pytest.importorskip("torch")

    def detached_accepting_numpy(logp_new, logp_old, adv, eps):
        logp_new, logp_old, adv = (torch.as_tensor(x) for x in (logp_new, logp_old, adv))
        r = torch.exp(logp_new - logp_old)
        return -torch.min(adv * r.detach(), adv * torch.clamp(r, 1 - eps, 1 + eps)).mean()

    report = check_ppo_loss(detached_accepting_numpy, **FAST)
    assert report.backend == "torch" and "ppo_loss.gradient" in report.failed_ids


def test_reinforce_baseline_from_the_batch_own_returns_is_caught():
    def own_state_mean(theta, episodes, gamma):
        pi = np.exp(theta - theta.max(1, keepdims=True))
        pi /= pi.sum(1, keepdims=True)
        returns = [np.array([sum(gamma ** k * x for k, x in enumerate(r[t:])) for t in range(len(r))])
                   for _, _, r in episodes]
        sums, counts = np.zeros(theta.shape[0]), np.zeros(theta.shape[0])
        for (s, _, _), G in zip(episodes, returns):
            np.add.at(sums, s, G)
            np.add.at(counts, s, 1)
        b = sums / np.maximum(counts, 1)  # includes the episode's own return: biased
        g = np.zeros_like(theta)
        for (s, a, _), G in zip(episodes, returns):
            for t in range(len(s)):
                w = gamma ** t * (G[t] - b[s[t]])
                g[s[t]] -= w * pi[s[t]]
                g[s[t], a[t]] += w
        return g / len(episodes)

    report = check_reinforce_estimator(own_state_mean)
    failure = report.failure("reinforce_estimator.unbiased")
    assert failure is not None and "own return included" in failure.message


def _trpo_correct():
    from refpg.examples import correct
    return correct.trpo_step_numpy


@pytest.mark.parametrize("variant, check_id, words", [
    (lambda f: lambda th, *a: th + (f(th, *a) - th) / np.sqrt(2), "trpo_step.step_size", "0.707"),
    (lambda f: lambda th, *a: (1 - 1e-3) * f(th, *a), "trpo_step.unvisited_states_unchanged", "not in the batch"),
])
def test_trpo_step_size_and_unvisited_states_are_checked(variant, check_id, words):
    report = check_trpo_step(variant(_trpo_correct()))
    assert check_id in report.failed_ids, str(report)
    assert words in report.failure(check_id).message


def test_gae_bootstrap_from_the_reset_observation_is_a_truncation_failure():
    def reset_bootstrap(rewards, values, next_values, terminated, truncated, gamma, lam):
        nv = next_values.copy()
        nv[:-1] = np.where(truncated[:-1] & ~terminated[:-1], values[1:], nv[:-1])
        return gae(rewards, values, nv, terminated, truncated, gamma, lam)

    assert "gae.truncation_bootstrapped" in check_gae(reset_bootstrap).failed_ids


def test_gae_bug_only_in_long_rollouts_or_many_environments_is_caught():
    def many_envs(*args):
        out = gae(*args)
        if out.shape[1] > 3:
            out[:, 3:] *= 0.9
        return out

    assert check_gae(many_envs).failed_ids == ("gae.general",)


def test_ppo_normalisation_variant_is_named_and_float32_ties_are_no_false_alarm():
    torch = pytest.importorskip("torch")
    from refpg.examples import correct

    assert check_ppo_loss(correct.ppo_loss_sb3_torch, convention="sb3", backend="torch", dtype="float32",
                          seed=17).passed

    def ddof0(logp_new, logp_old, adv, eps):
        if len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std(unbiased=False) + 1e-8)
        r = torch.exp(logp_new - logp_old)
        return -torch.min(r * adv, torch.clamp(r, 1 - eps, 1 + eps) * adv).mean()

    report = check_ppo_loss(ddof0, convention="sb3", **FAST)
    assert "pass ddof=0" in report.failures[0].message


def _ppo_loss_np(r, a, eps):
    return np.minimum(r * a, np.clip(r, 1 - eps, 1 + eps) * a)


def ppo_loss_summed_unnormalised(logp_new, logp_old, advantages, clip_eps):
    return -np.sum(_ppo_loss_np(np.exp(logp_new - logp_old), advantages, clip_eps))


def ppo_loss_unnormalised(logp_new, logp_old, advantages, clip_eps):
    return -np.mean(_ppo_loss_np(np.exp(logp_new - logp_old), advantages, clip_eps))


def ppo_loss_normalised_sign_flipped(logp_new, logp_old, advantages, clip_eps):
    a = (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-8)
    return np.mean(_ppo_loss_np(np.exp(logp_new - logp_old), a, clip_eps))


def test_a_summed_unnormalised_ppo_loss_under_cleanrl_normalisation_is_named():
    report = check_ppo_loss(ppo_loss_summed_unnormalised, convention="cleanrl", **FAST)
    message = report.failure("ppo_loss.inside_clip_range").message
    assert "the actual value is n x the loss WITHOUT advantage normalisation (n = " in message, message
    assert "a sum where the mean belongs" in message
    assert "--option normalize=none" in message


def test_a_sign_flipped_ppo_loss_under_sb3_normalisation_is_named():
    report = check_ppo_loss(ppo_loss_normalised_sign_flipped, convention="sb3", **FAST)
    message = report.failure("ppo_loss.outside_clip_range").message
    assert "actual = -expected: the sign is flipped" in message, message


def test_the_unnormalised_hint_gives_the_command_line_form():
    report = check_ppo_loss(ppo_loss_unnormalised, convention="cleanrl", **FAST)
    message = report.failure("ppo_loss.outside_clip_range").message
    assert "the actual value is the loss WITHOUT advantage normalisation: pass normalize='none' " \
           "(on the command line --option normalize=none)" in message, message
    assert "should be -0," not in report.failure("ppo_loss.inside_clip_range").message


def test_cleanrl_without_normalisation_draws_minibatches_of_one_and_does_not_warn():
    sizes = set()

    def recording(logp_new, logp_old, advantages, clip_eps):
        sizes.add(len(advantages))
        return ppo_loss_unnormalised(logp_new, logp_old, advantages, clip_eps)

    report = check_ppo_loss(recording, convention="cleanrl", normalize="none", **FAST)
    assert report.passed, str(report)
    assert not [w for w in report.warnings if "minibatch of one" in w], report.warnings
    assert 1 in sizes
    sizes.clear()
    report = check_ppo_loss(ppo_loss_normalised_sign_flipped, convention="cleanrl", **FAST)
    assert any("NaN for a minibatch of one; minibatches of one were not drawn" in w for w in report.warnings)


def test_trpo_with_cg_damping_is_told_which_damping_fits():

    def damped(theta_old, states, actions, adv, max_kl):
        pi = np.exp(theta_old - theta_old.max(1, keepdims=True))
        pi /= pi.sum(1, keepdims=True)
        n = len(states)
        g = np.zeros_like(theta_old)
        for s, a, w in zip(states, actions, adv):
            g[s] -= w * pi[s] / n
            g[s, a] += w / n
        if not np.any(g):
            return theta_old.copy()
        M = np.zeros((g.size, g.size))
        A = g.shape[1]
        for s in states:
            M[s * A:(s + 1) * A, s * A:(s + 1) * A] += (np.diag(pi[s]) - np.outer(pi[s], pi[s])) / n
        M += 0.1 * np.eye(g.size)
        x = np.linalg.solve(M, g.ravel())
        step = (np.sqrt(2 * max_kl / (x @ M @ x)) * x).reshape(g.shape)
        return theta_old + 1e-3 * step  # tiny, so the KL and improvement tests pass

    report = check_trpo_step(damped, **FAST)
    failure = report.failure("trpo_step.direction")
    assert failure is not None and "pass damping=0.1" in failure.message


def test_tuple_returns_get_a_message_that_says_what_to_return():
    def three(logp_new, logp_old, adv, eps):
        r = np.exp(logp_new - logp_old)
        return -np.mean(np.minimum(r * adv, np.clip(r, 1 - eps, 1 + eps) * adv)), 0.0, 0.0

    message = check_ppo_loss(three, **FAST).failures[0].message
    assert "(loss, clip_fraction) or a dict" in message


def test_a_bfloat16_output_is_named_bfloat16():
    torch = pytest.importorskip("torch")

    def bf16_gae(*args):
        return torch.as_tensor(gae(*(a.numpy() if hasattr(a, "numpy") else a for a in args))).to(torch.bfloat16)

    report = check_gae(bf16_gae, backend="torch", dtype="float32", **FAST)
    failure = report.failure("gae.output_dtype")
    assert failure is not None and "actual bfloat16" in failure.message, str(report)


def test_a_slow_function_is_told_where_the_time_went_and_the_cli_shows_progress(monkeypatch):
    import io
    import time

    from refpg.conformance import _harness

    def slow_gae(*args):
        time.sleep(0.002)
        return gae(*args)

    stream = io.StringIO()
    monkeypatch.setattr(_harness.Session, "slow_seconds", 0.05)
    monkeypatch.setitem(_harness.PROGRESS, "stream", stream)
    monkeypatch.setitem(_harness.PROGRESS, "every", 0.05)
    report = check_gae(slow_gae, backend="numpy", **FAST)
    assert report.passed
    (warning,) = [w for w in report.warnings if "the function itself took" in w]
    assert "ms each on average" in warning and "max_examples" in warning
    assert "gae still running after" in stream.getvalue()


def test_a_fast_function_gets_no_slowness_warning():
    report = check_gae(gae, backend="numpy", **FAST)
    assert not any("the function itself took" in w for w in report.warnings)


# -- regressions from the second review ----------------------------------------------------

def _np_ppo_loss(logp_new, logp_old, adv, eps):
    r = np.exp(logp_new - logp_old)
    return -np.mean(np.minimum(r * adv, np.clip(r, 1 - eps, 1 + eps) * adv)), r


@pytest.mark.parametrize("fraction, words", [
    (lambda r, eps: (np.abs(r - 1) > eps).astype(float), "a missing .mean()?"),  # per-sample 0/1 vector
    (lambda r, eps: np.nan, "should be finite"),
    (lambda r, eps: {"n_clipped": int(np.sum(np.abs(r - 1) > eps))}, "actual dict"),
    (lambda r, eps: "0.25", "actual str"),
    (lambda r, eps: float(np.sum(np.abs(r - 1) > eps)), "clip_fraction should be"),  # a count, not a fraction
])
def test_a_clip_fraction_that_is_not_the_fraction_fails_clip_fraction(fraction, words):
    def ppo(logp_new, logp_old, adv, eps):
        loss, r = _np_ppo_loss(logp_new, logp_old, adv, eps)
        return loss, fraction(r, eps)

    report = check_ppo_loss(ppo, backend="numpy", **FAST)
    assert report.failed_ids == ("ppo_loss.clip_fraction",), str(report)
    assert words in report.failure("ppo_loss.clip_fraction").message
    good = check_ppo_loss(lambda *a: (_np_ppo_loss(*a)[0], float(np.mean(np.abs(_np_ppo_loss(*a)[1] - 1) > a[3]))),
                          backend="numpy", **FAST)
    assert good.passed and "ppo_loss.clip_fraction" in good.checks and not good.not_run, str(good)


def test_max_value_loss_gradient_is_judged_on_every_sample_off_a_kink():
    torch = pytest.importorskip("torch")
    from refpg.conformance.losses import _value_reference
    from refpg.examples import correct

    def detached_clip(values_new, values_old, returns, clip_eps):  # in-range samples get half the gradient
        v_clipped = values_old + torch.clamp(values_new.detach() - values_old, -clip_eps, clip_eps)
        return 0.5 * torch.max((values_new - returns) ** 2, (v_clipped - returns) ** 2).mean()

    def straight_through(values_new, values_old, returns, clip_eps):  # leaks where the clipped term is taken
        d = values_new - values_old
        v_clipped = values_old + d + (torch.clamp(d, -clip_eps, clip_eps) - d).detach()
        return 0.5 * torch.max((values_new - returns) ** 2, (v_clipped - returns) ** 2).mean()

    for bug, words in ((detached_clip, "should be -1, actual -0.5"), (straight_through, "exactly 0")):
        report = check_value_loss(bug, convention="cleanrl", backend="torch")
        assert report.failed_ids == ("value_loss.gradient",), str(report)
        assert words in report.failure("value_loss.gradient").message
    for dtype in ("float64", "float32"):
        assert check_value_loss(correct.value_loss_cleanrl_torch, convention="cleanrl", dtype=dtype).passed
    # Inside the range (sample 0) the full derivative; at |d| = eps (sample 1) and at a tie outside the
    # range (sample 2: v = 1.2, v_clip = 0.2, R = 0.7 halfway) no single derivative; outside with the
    # clipped term the larger (sample 3: v = R = -1, v_clip = -0.2) exactly 0.
    v_old, d, ret = np.zeros(4), np.array([0.1, 0.2, 1.2, -1.0]), np.array([1.0, 0.0, 0.7, -1.0])
    _, grad, judged, clipped = _value_reference(v_old + d, v_old, ret, 0.2, "max", 0.5, 1e-9)
    assert judged.tolist() == [True, False, False, True] and clipped.tolist() == [False, False, False, True]
    np.testing.assert_allclose(grad[[0, 3]], [2 * 0.5 * (0.1 - 1.0) / 4, 0.0], rtol=1e-12)


class _ArrayLike:
    """Stands in for a jax.Array: not an ndarray, but np.asarray reads it."""

    def __init__(self, a):
        self._a = np.asarray(a)

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


def test_outputs_numpy_reads_as_the_right_array_are_accepted():
    from refpg.examples import correct

    def k3_list(logp_new, logp_old):  # a list of np.float64
        return [np.expm1(x) - x for x in logp_new - logp_old]

    def gae_rows(*args):  # a list of row arrays, never stacked
        return list(gae(*args))

    def rlax_array_like(r_t, discount_t, lambda_, values):
        return _ArrayLike(correct.gae_rlax_numpy(r_t, discount_t, lambda_, values))

    assert check_kl_estimator(k3_list, non_negative=True, **FAST).passed
    assert check_gae(gae_rows, **FAST).passed
    assert check_gae(rlax_array_like, convention="rlax", **FAST).passed
    # A tuple of several results still says what to return: (advantages, returns) what to pass.
    with pytest.raises(InvalidInputError, match="pass returns=True"):
        check_gae(lambda *a: (gae(*a), gae(*a) + a[1]), backend="numpy", **FAST)
    report = check_gae(lambda *a: (gae(*a), gae(*a) + a[1], gae(*a)), backend="numpy", **FAST)
    assert "(return advantages alone" in report.failure("gae.output_shape").message


def test_tensors_numpy_cannot_read_are_an_output_dtype_failure():
    torch = pytest.importorskip("torch")
    from refpg.examples import correct

    def sparse(*args):
        return torch.from_numpy(gae(*args)).to_sparse()

    def meta(rewards, *args):
        return torch.empty(rewards.shape, dtype=torch.float64, device="meta")

    def sparse_loss(*args):
        return correct.ppo_loss_refpg_torch(*args).reshape(1).to_sparse()

    for fn, check_fn, kind, words in ((sparse, check_gae, "gae", "layout sparse_coo"),
                                      (meta, check_gae, "gae", "device meta"),
                                      (sparse_loss, check_ppo_loss, "ppo_loss", "layout sparse_coo")):
        report = check_fn(fn, backend="numpy" if kind == "gae" else "torch", max_examples=5)
        failure = report.failure(f"{kind}.output_dtype")
        assert failure is not None and words in failure.message, str(report)


def test_checks_that_never_compared_anything_are_not_run_not_passed():
    def not_implemented(*args):
        raise NotImplementedError("TODO")

    report = check_gae(not_implemented, backend="numpy", **FAST)
    assert report.failed_ids == ("gae.raised",)
    assert {"gae.recursion", "gae.general", "gae.output_shape", "gae.input_mutated"} <= set(report.not_run_ids)
    assert all("every call of the function raised" in n.reason for n in report.not_run)
    text = str(report)
    assert f"0 of {len(report.checks)} checks passed, {len(report.not_run)} not run" in text
    assert "ok   gae.recursion" not in text and "NOT RUN" in text

    def no_mean(logp_new, logp_old, adv, eps):
        r = np.exp(logp_new - logp_old)
        return -np.minimum(r * adv, np.clip(r, 1 - eps, 1 + eps) * adv)

    report = check_ppo_loss(no_mean, **FAST)
    assert report.failed_ids == ("ppo_loss.output_shape",)
    assert "a scalar loss is expected: a missing .mean()?" in report.failures[0].message
    assert {"ppo_loss.inside_clip_range", "ppo_loss.outside_clip_range"} <= set(report.not_run_ids)
    assert check_gae(gae, **FAST).not_run == ()


def test_auto_backend_shows_both_errors_and_checks_a_torch_function_on_torch():
    torch = pytest.importorskip("torch")

    def torch_gae_bool_bug(rewards, values, next_values, terminated, truncated, gamma, lam):
        adv = torch.zeros_like(rewards)
        last = torch.zeros_like(rewards[0])
        for t in reversed(range(rewards.shape[0])):
            nonterminal = 1.0 - terminated[t]  # a bool tensor: torch refuses, NumPy would not
            delta = rewards[t] + gamma * nonterminal * next_values[t] - values[t]
            last = delta + gamma * lam * nonterminal * last
            adv[t] = last
        return adv

    report = check_gae(torch_gae_bool_bug, max_examples=5)
    assert report.backend == "torch"
    assert "bool tensor" in report.failure("gae.raised").message
    (warning,) = [w for w in report.warnings if "either backend" in w]
    assert "must be Tensor, not numpy.ndarray" in warning and "bool tensor" in warning
    assert "pass backend='numpy' or backend='torch'" in warning


def test_trpo_line_search_that_backtracks_from_a_passing_full_step_is_told_so():
    correct = _trpo_correct()

    def max_kl_line_search(theta_old, states, actions, adv, max_kl):
        # A stricter acceptance test: the step the correct search accepts, halved until the largest
        # per-state KL (not only the mean over the batch's states) is within max_kl.
        th0 = np.asarray(theta_old, dtype=np.float64)
        step = correct(theta_old, states, actions, adv, max_kl) - th0
        lo = th0 - np.log(np.exp(th0).sum(1, keepdims=True))
        for k in range(10):
            th = th0 + 0.5 ** k * step
            ln = th - np.log(np.exp(th).sum(1, keepdims=True))
            if np.sum(np.exp(lo) * (lo - ln), axis=1)[states].max() <= max_kl:
                return th
        return th0

    report = check_trpo_step(max_kl_line_search)
    failure = report.failure("trpo_step.step_size")
    assert failure is not None, str(report)
    assert "your line search backtracked although the full step passes" in failure.message
    assert "0.5^1" in failure.message



def test_too_few_examples_is_incomplete_not_passed():
    # A comparison that no drawn case reached is reported as not run, and the report as INCOMPLETE.
    from hypothesis import strategies as st

    from refpg.conformance._harness import Backend, Session

    session = Session("gae", lambda x: x, "refpg", Backend("numpy", "float64"), max_examples=1, seed=0,
                      options={})
    session.declare(*session.generic_ids())
    def evaluate(x):
        call = session.call([("x", np.zeros(1))])
        _, outcomes = session.output_array(call.output, "advantages", (1,), {})
        if x > 0:  # only such cases reach the comparison; the one case drawn is x = 0
            session.ran("gae.recursion")
        return session.generic_outcomes(call, {}) + outcomes

    session.run_scenario(st.just(0), evaluate, ("gae.recursion",))
    report = session.report()
    assert not report.passed and not report.failures
    assert "gae.recursion" in report.not_run_ids
    assert str(report).splitlines()[1].startswith("INCOMPLETE")
    assert "max_examples=1; a larger max_examples" in str(report)


def test_one_example_per_scenario_reaches_every_trpo_comparison():
    # Every region of a TRPO step is drawn by a scenario of its own, so even one case each reaches them all.
    from refpg.examples import correct

    report = check_trpo_step(correct.trpo_step_numpy, max_examples=1)
    assert report.passed and not report.not_run_ids, str(report)


def test_report_to_dict_is_json_with_every_check_status_and_counterexample():
    import json

    def nan_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
        if rewards.shape[0] > 1:
            raise RuntimeError("boom")
        return np.full(rewards.shape, np.nan)

    failing = check_gae(gae_truncation_as_termination, **FAST)
    data = json.loads(json.dumps(failing.to_dict(), allow_nan=False))
    assert (data["kind"], data["convention"], data["backend"], data["verdict"]) == ("gae", "refpg", "numpy", "failed")
    assert [c["id"] for c in data["checks"]] == list(failing.checks)
    status = {c["id"]: c for c in data["checks"]}
    assert status["gae.recursion"] == {"id": "gae.recursion", "status": "passed", "reason": None}
    assert status["gae.truncation_bootstrapped"]["status"] == "failed"
    assert status["gae.truncation_bootstrapped"]["reason"] == failing.failure("gae.truncation_bootstrapped").message
    (fail,) = data["failures"]
    ce = failing.failure("gae.truncation_bootstrapped").counterexample
    assert set(fail["counterexample"]["inputs"]) == set(ce.inputs)
    assert fail["counterexample"]["inputs"]["truncated"] == ce.inputs["truncated"].tolist()
    np.testing.assert_allclose(fail["counterexample"]["expected"], ce.expected, rtol=0)
    np.testing.assert_allclose(fail["counterexample"]["actual"], ce.actual, rtol=0)
    assert data["timings"]["calls"] == failing.examples and data["timings"]["seconds"] > 0
    assert 0 < data["timings"]["function_seconds"] <= data["timings"]["seconds"]
    assert data["options"] == json.loads(json.dumps(failing.to_dict()["options"]))

    broken = check_gae(nan_gae, **FAST)
    data = json.loads(json.dumps(broken.to_dict(), allow_nan=False))
    assert data["verdict"] == "failed"
    statuses = {c["status"] for c in data["checks"]}
    assert statuses == {"passed", "failed", "not_run"} or statuses == {"failed", "not_run"}
    for c in data["checks"]:
        if c["status"] == "not_run":
            assert c["reason"] == dict(broken.not_run)[c["id"]]
    finite = next(f for f in data["failures"] if f["check_id"] == "gae.output_finite")
    assert "nan" in json.dumps(finite["counterexample"]["actual"])  # NaN as the string "nan"
    assert data["warnings"] == list(broken.warnings)


def test_a_check_leaves_no_hypothesis_folder_in_the_working_directory(tmp_path):
    # A fresh interpreter in an empty project with a module of its own: Hypothesis caches the
    # constants of "local" modules under ./.hypothesis/constants unless the kit redirects it.
    (tmp_path / "mygae.py").write_text(textwrap.dedent("""
        from refpg.returns import gae as reference

        def my_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
            return reference(rewards, values, next_values, terminated, truncated, gamma, lam * 1.0)
    """))
    script = ("import hypothesis.configuration as hc\n"
              "from refpg.conformance import check_gae, check_ppo_loss\n"
              "from refpg.examples.correct import ppo_loss_refpg_numpy\n"
              "from mygae import my_gae\n"
              "before = vars(hc).get('__hypothesis_home_directory')\n"
              "assert check_gae(my_gae, max_examples=10).passed\n"
              "assert check_ppo_loss(ppo_loss_refpg_numpy, max_examples=10).passed\n"
              "assert vars(hc).get('__hypothesis_home_directory') == before\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / ".hypothesis").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"mygae.py", "__pycache__"}


# -- the signature is read before any call ------------------------------------------------------

def test_a_function_of_another_convention_is_refused_before_any_call():
    calls = []

    def compute_gae(rewards, values, dones, next_value, next_done, gamma, gae_lambda=0.95):  # CleanRL's names
        calls.append(1)
        raise AssertionError("must not be called")

    with pytest.raises(InvalidInputError) as info:
        check_gae(compute_gae)
    assert calls == []
    message = str(info.value)
    assert "cleanrl convention" in message and 'convention="cleanrl"' in message
    assert "--convention cleanrl" in message and "rewards, values, dones, next_value, next_done" in message
    # A bound method and a torch module's forward are read the same way.

    class Agent:
        def gae(self, rewards, values, episode_starts, last_values, dones, gamma, gae_lambda):
            calls.append(1)

    with pytest.raises(InvalidInputError, match='convention="sb3"'):
        check_gae(Agent().gae, convention="cleanrl")
    torch = pytest.importorskip("torch")

    class Module(torch.nn.Module):
        def forward(self, gamma, lmbda, state_value, next_state_value, reward, done, terminated):
            calls.append(1)

    with pytest.raises(InvalidInputError, match='convention="torchrl"'):
        check_gae(Module())
    assert calls == []


def test_a_function_no_convention_can_call_is_refused_before_any_call():
    calls = []

    def four(r_t, discount_t, lambda_, values):
        calls.append(1)

    with pytest.raises(InvalidInputError) as info:
        check_gae(four)
    assert "4 positional parameters, and the convention passes 7" in str(info.value)
    assert 'convention="rlax"' in str(info.value)
    with pytest.raises(InvalidInputError, match="No convention of gae fits"):
        check_gae(lambda rewards, values, gamma: calls.append(1))
    with pytest.raises(InvalidInputError, match="8 required positional parameters"):
        check_gae(lambda r, v, nv, te, tr, g, lam, device: calls.append(1))
    with pytest.raises(InvalidInputError, match="keyword-only parameter lam without a default"):
        check_gae(lambda r, v, nv, te, tr, g, *, lam: calls.append(1))
    with pytest.raises(InvalidInputError, match="3 positional parameters"):
        check_value_loss(lambda values, returns, clip: calls.append(1))
    with pytest.raises(InvalidInputError, match="1 positional parameters"):
        check_kl_estimator(lambda log_ratio: calls.append(1))
    assert calls == []


def test_renamed_parameters_defaults_partials_and_star_args_still_run():
    import functools

    def renamed(r, v, v_next, term, trunc, g, lam_=0.95, extra=None):
        return gae(r, v, v_next, term, trunc, g, lam_)

    def with_config(config, rewards, values, next_values, terminated, truncated, gamma, lam):
        return gae(rewards, values, next_values, terminated, truncated, gamma, lam)

    assert check_gae(renamed, **FAST).passed
    assert check_gae(functools.partial(with_config, {"device": "cpu"}), **FAST).passed
    assert check_gae(lambda *args: gae(*args), **FAST).passed


def test_parameters_of_the_declared_convention_in_another_order_are_warned_about():
    def swapped(rewards, values, next_values, truncated, terminated, gamma, lam):
        return gae(rewards, values, next_values, truncated, terminated, gamma, lam)

    report = check_gae(swapped, **FAST)
    assert any("in another order" in w and "'terminated' is its parameter 5 but argument 4" in w
               for w in report.warnings)


# -- counterexamples a reader can trust ----------------------------------------------------------

def test_no_flow_counterexample_keeps_a_boundary_and_shows_the_calls_expected_came_from():
    from refpg.examples import by_name

    example = by_name("gae_sb3_starts_not_shifted")
    report = check_gae(example.fn, convention="sb3", backend="numpy", max_examples=50)
    ce = report.failure("gae.no_flow_across_episodes").counterexample
    # The scenario draws rollouts with an episode boundary before the last row; shrinking keeps one.
    assert ce.inputs["episode_starts"][1:].any()
    assert len(ce.parts) >= 2
    T = ce.inputs["rewards"].shape[0]
    rows = []
    for label, inputs, output in ce.parts:
        assert {"rewards", "values", "episode_starts", "last_values", "dones", "gamma", "gae_lambda"} <= set(inputs)
        assert output.shape == inputs["rewards"].shape
        rows.append(output[:, 0])
    # Each episode's own output, stacked, is the expected column.
    np.testing.assert_allclose(np.concatenate(rows), ce.expected[:, 0], rtol=0, atol=0)
    assert sum(len(r) for r in rows) == T
    text = str(report)
    assert "expected is made of 2 further calls of the function, one per episode:" in text
    assert "episode of column 0, rows 0..0 alone:" in text and "output" in text
    (as_data,) = [f for f in report.to_dict()["failures"] if f["check_id"] == "gae.no_flow_across_episodes"]
    assert len(as_data["counterexample"]["parts"]) == len(ce.parts)


def test_shrinking_never_goes_below_the_smallest_minibatch_drawn():
    torch = pytest.importorskip("torch")
    from refpg.examples.correct import ppo_loss_cleanrl_torch

    def normalizes_in_place(logp_new, logp_old, advantages, clip_eps):
        out = ppo_loss_cleanrl_torch(logp_new, logp_old, advantages, clip_eps)
        advantages.mul_(2.0)
        return out

    report = check_ppo_loss(normalizes_in_place, convention="cleanrl", backend="torch", **FAST)
    assert "minibatches of one were not drawn" in str(report)
    (failure,) = report.failures
    assert failure.check_id == "ppo_loss.input_mutated"
    assert failure.counterexample.inputs["logp_new"].shape == (2,)
    assert torch is not None


def test_warnings_and_errors_in_warnings_are_shown_whole():
    import warnings

    long = " ".join(f"word{i}" for i in range(80)) + "\nand a second line that ends here"

    def warns(rewards, values, next_values, terminated, truncated, gamma, lam):
        warnings.warn(long, RuntimeWarning)
        return gae(rewards, values, next_values, terminated, truncated, gamma, lam)

    report = check_gae(warns, backend="numpy", **FAST)
    assert f"the function emitted RuntimeWarning: {long}" in report.warnings
    assert "WARNING the function emitted RuntimeWarning: word0" in str(report)
    assert "        and a second line that ends here" in str(report)

    def raises_long(rewards, values, next_values, terminated, truncated, gamma, lam):
        raise ValueError(" ".join(f"reason{i}" for i in range(60)))

    report = check_gae(raises_long, **FAST)
    (auto,) = [w for w in report.warnings if w.startswith("backend='auto' could not run")]
    assert auto.count("reason59") == 2  # the whole error of both backends


def test_a_torch_warning_is_shown_whole():
    pytest.importorskip("torch")
    from refpg.examples.correct import ppo_loss_cleanrl_torch

    # CleanRL's ddof=1 normalisation on SB3's minibatches of one: torch warns from std().
    report = check_ppo_loss(ppo_loss_cleanrl_torch, convention="sb3", backend="torch", **FAST)
    (std,) = [w for w in report.warnings if "std(): degrees of freedom is <= 0" in w]
    assert "(input numel divided by output numel)" in std and std.endswith(".)")


def test_pytest_failure_shows_the_report_not_the_kit_frames(pytester):
    pytester.makepyfile(textwrap.dedent("""
        from refpg.conformance import assert_conforms, check_kl_estimator

        def k1_declared_non_negative(logp_new, logp_old):
            return logp_old - logp_new

        def test_fixture(refpg_check):
            refpg_check("kl_estimator", k1_declared_non_negative, non_negative=True, unbiased=False)

        def test_direct():
            assert_conforms(check_kl_estimator(k1_declared_non_negative, non_negative=True, unbiased=False,
                                               max_examples=10))
    """))
    result = pytester.runpytest_inprocess("-p", "no:xdist", "--refpg-max-examples", "10", "-q")
    result.assert_outcomes(failed=2)
    # Under CI (the CI environment variable) pytest's short summary repeats each failure's message
    # in full; count in the failure sections only.
    out = result.stdout.str().split("short test summary info")[0]
    assert out.count("FAIL kl_estimator.non_negative") == 2 and out.count("expected            = >= 0") == 2
    for hidden in ("def assert_conforms", "raise ConformanceError", "pytest_plugin.py", "def run(",
                   "report.py:"):
        assert hidden not in out
    # What is left: the test's own line, then the report.
    result.stdout.fnmatch_lines(['>       refpg_check("kl_estimator", k1_declared_non_negative, *',
                                 "E       refpg.errors.ConformanceError: refpg conformance: kl_estimator *"])


# -- hints for common scaling bugs, each on a planted bug -------------------------------------------

def _clipped_objective(logp_new, logp_old, advantages, clip_eps):
    ratio = np.exp(logp_new - logp_old)
    return np.minimum(ratio * advantages, np.clip(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)


def test_hint_sum_instead_of_mean_names_n():
    def ppo_sum(logp_new, logp_old, advantages, clip_eps):
        return -np.sum(_clipped_objective(logp_new, logp_old, advantages, clip_eps))

    def value_sum(values_new, values_old, returns, clip_eps):
        return 0.5 * np.sum((values_new - returns) ** 2)

    for report, check_id, size in ((check_ppo_loss(ppo_sum, **FAST), "ppo_loss.inside_clip_range", "logp_new"),
                                    (check_value_loss(value_sum, **FAST), "value_loss.value", "values_new")):
        failure = report.failure(check_id)
        n = failure.counterexample.inputs[size].size
        assert n >= 2 and f"actual = n x expected with n = {n}, the minibatch size: a sum where the mean belongs" \
            in failure.message
        np.testing.assert_allclose(failure.counterexample.actual, n * failure.counterexample.expected, rtol=1e-12)


def test_hint_sign_flipped():
    def ppo_objective_not_loss(logp_new, logp_old, advantages, clip_eps):
        return np.mean(_clipped_objective(logp_new, logp_old, advantages, clip_eps))

    def negated_gae(*args):
        return -gae(*args)

    for report, check_id in ((check_ppo_loss(ppo_objective_not_loss, **FAST), "ppo_loss.inside_clip_range"),
                             (check_gae(negated_gae, **FAST), "gae.recursion")):
        assert "actual = -expected: the sign is flipped" in report.failure(check_id).message
    # No hint when neither fits.
    assert "actual = " not in check_gae(gae_truncation_as_termination, **FAST).failures[0].message


def test_kl_hints_direction_swapped_sign_flipped_and_batch_sum():
    def reverse_k3(logp_new, logp_old):  # an unbiased estimate of KL(new || old), not KL(old || new)
        log_r = logp_new - logp_old
        return np.exp(log_r) * log_r - np.expm1(log_r)

    def k1_sign_flipped(logp_new, logp_old):
        return logp_new - logp_old

    def k3_batch_sum(logp_new, logp_old):
        log_r = logp_new - logp_old
        return np.sum(np.expm1(log_r) - log_r)

    swapped = check_kl_estimator(reverse_k3, non_negative=True, **FAST).failure("kl_estimator.unbiased")
    assert "actual equals KL(pi_new || pi_old) = " in swapped.message and "the direction is swapped" in swapped.message
    flipped = check_kl_estimator(k1_sign_flipped, **FAST).failure("kl_estimator.unbiased")
    assert "actual = -expected: the sign is flipped" in flipped.message
    summed = check_kl_estimator(k3_batch_sum, **FAST).failure("kl_estimator.unbiased")
    assert "actual = n x expected with n = 50, the batch size" in summed.message
    for failure in (flipped, summed):
        assert "KL(pi_new || pi_old) =" not in failure.message


# -- GAE that returns (advantages, returns) --------------------------------------------------------

def gae_and_returns(rewards, values, next_values, terminated, truncated, gamma, lam):
    advantages = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    return advantages, advantages + values


def test_gae_with_returns_checks_the_returns_too():
    report = check_gae(gae_and_returns, returns=True, **FAST)
    assert report.passed and "gae.returns" in report.checks and report.options == {"returns": True}
    assert "returns=True" in str(report).splitlines()[0]

    def returns_from_next_values(rewards, values, next_values, terminated, truncated, gamma, lam):
        advantages = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
        return advantages, advantages + next_values

    report = check_gae(returns_from_next_values, returns=True, **FAST)
    assert report.failed_ids == ("gae.returns",)
    failure = report.failure("gae.returns")
    assert failure.message.startswith("returns[0, 0] should be ") and "returns = advantages + values" in failure.message
    ce = failure.counterexample
    np.testing.assert_allclose(ce.expected, gae(*(ce.inputs[k] for k in ("rewards", "values", "next_values",
                                                                        "terminated", "truncated", "gamma",
                                                                        "lam"))) + ce.inputs["values"], rtol=1e-12)

    def wrong_advantages(rewards, values, next_values, terminated, truncated, gamma, lam):
        advantages = gae(rewards, values, next_values, terminated, truncated, gamma, lam) + 1.0
        return advantages, advantages + values

    report = check_gae(wrong_advantages, returns=True, **FAST)
    assert "only the advantages are wrong" in report.failure("gae.returns").message


def test_a_pair_where_advantages_are_expected_stops_at_once_suggesting_returns_true():
    calls = []

    def counted(*args):
        calls.append(1)
        return gae_and_returns(*args)

    with pytest.raises(InvalidInputError, match=r"pass returns=True \(refpg check: --option returns=true\)"
                                                r".*The check drew no case"):
        check_gae(counted, **FAST)
    assert len(calls) <= 2  # the backend probe and the one call that tells, not a case per example
    calls.clear()

    def advantages_only(*args):
        calls.append(1)
        return gae(*args)

    with pytest.raises(InvalidInputError, match=r"returns=True declares that the function returns \(advantages, "
                                                r"returns\), but it returned one array.*The check drew no case"):
        check_gae(advantages_only, returns=True, **FAST)
    assert len(calls) <= 2
    with pytest.raises(InvalidInputError, match="returns should be False"):
        check_gae(lambda r_t, discount_t, lambda_, values: None, convention="rlax", returns=True)
    with pytest.raises(InvalidInputError, match="returns should be True or False"):
        check_gae(gae_and_returns, returns="yes")


def test_torchrl_value_target_is_checked_with_returns_true():
    pytest.importorskip("torch")
    from refpg.examples.correct import gae_torchrl_torch

    unchecked = check_gae(gae_torchrl_torch, convention="torchrl", **FAST)
    assert unchecked.passed and any("value_target was not checked" in w for w in unchecked.warnings)
    checked = check_gae(gae_torchrl_torch, convention="torchrl", returns=True, **FAST)
    assert checked.passed and "gae.returns" in checked.checks
    assert not any("value_target" in w for w in checked.warnings)


def test_shrinking_never_puts_a_ratio_on_a_clip_bound():
    from refpg.examples.correct import ppo_loss_refpg_numpy

    def wrong_from_the_bound_on(logp_new, logp_old, advantages, clip_eps):
        ratio = np.exp(logp_new - logp_old)
        loss = ppo_loss_refpg_numpy(logp_new, logp_old, advantages, clip_eps)
        return loss + float(ratio.size >= 2 and np.sum(ratio >= (1 + clip_eps) * (1 - 1e-9)) == 1)

    ce = check_ppo_loss(wrong_from_the_bound_on, **FAST).failure("ppo_loss.outside_clip_range").counterexample
    ratio, eps = ce.inputs["ratio (derived)"], ce.inputs["clip_eps"]
    # The check draws ratios at least 10% (in log) away from the clip bounds; so does shrinking.
    u = np.where(ratio >= 1, np.log(ratio) / np.log1p(eps), -np.log(ratio) / np.log1p(-eps))
    assert np.all((np.abs(u) <= 0.9 + 1e-9) | (np.abs(u) >= 1.1 - 1e-9)), u


def test_check_names_a_misspelt_option_with_a_suggestion():
    from refpg.conformance import check
    with pytest.raises(InvalidInputError, match="unknown option 'directon'.*'direction'"):
        check("gaussian_kl", lambda mean_p, log_std_p, mean_q, log_std_q: None, directon="reverse")
