"""check_gae on the conventions real projects use: the time-out bootstrap from V(s_t) (value_bootstrap), dones
recorded after the step (purejaxrl), output forms and whitening, the cause named by
gae.no_flow_across_episodes, shrunk counterexamples that stay in their scenario, the JAX backend's fixed
shapes, every region that decides correctness drawn by construction, and the hand-over to gae_layouts."""

import functools
import importlib
import importlib.util

import numpy as np
import pytest

from refpg.conformance import check_gae
from refpg.conformance import _cases
from refpg.conformance.gae import GAE_CONVENTIONS, _split_cause
from refpg.errors import InvalidInputError
from refpg.examples import gae_conventions
from refpg.returns import gae
from tests.helpers import example_report

gae_module = importlib.import_module("refpg.conformance.gae")

HAS = {name: importlib.util.find_spec(name) is not None for name in ("torch", "jax", "rlax")}
EXAMPLES = gae_conventions.CORRECT + gae_conventions.BROKEN
FAST = dict(max_examples=25)
JAX_SHAPES = {(t, n) for t in (1, 2, 4, 8) for n in (1, 2, 3)} | {(64, 8)}


def _needs(ex):
    return [pytest.mark.skipif(ex.backend in HAS and not HAS[ex.backend], reason=f"needs {ex.backend}")]


@functools.lru_cache(maxsize=None)
def _report(name: str, seed: int):
    ex = next(e for e in EXAMPLES if e.name == name)
    if seed == 0:  # the zoo's own seed-0 report, computed once per session
        return example_report(ex)
    return check_gae(ex.fn, convention=ex.convention, backend=ex.backend, seed=seed, **dict(ex.options))


# -- the examples at seeds 0..5 -------------------------------------------------------------------------

def _verdict(ex, seed):
    report = _report(ex.name, seed)
    if ex.expected is None:
        assert report.passed, str(report)
    else:
        assert ex.expected in report.failed_ids, str(report)
        assert " should " in report.failure(ex.expected).message


@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_needs(ex)) for ex in EXAMPLES])
def test_example_behaves_as_declared_at_seed_0(ex):
    _verdict(ex, 0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_needs(ex)) for ex in EXAMPLES])
def test_example_behaves_as_declared_at_seeds_1_to_5(ex, seed):
    _verdict(ex, seed)


# -- shrunk counterexamples stay in their scenario -----------------------------------------------------

def _flags(inputs: dict, convention: str):
    """(terminations, truncations) of a counterexample's inputs; under conventions that pass only dones
    a truncation reads as a termination."""
    if convention == "refpg":
        return np.asarray(inputs["terminated"], bool), np.asarray(inputs["truncated"], bool)
    dones = np.asarray(inputs["dones"]) > 0
    if convention == "value_bootstrap":
        time_outs = np.asarray(inputs["time_outs"]) > 0
        return dones & ~time_outs, time_outs
    return dones, np.zeros_like(dones)


def _in_scenario(check_id, inputs, convention, options) -> list:
    """What is wrong with a counterexample for `check_id` (empty: it is in its scenario)."""
    term, trunc = _flags(inputs, convention)
    T, N = term.shape
    problems = []
    if check_id == "gae.recursion" and (term.any() or trunc.any()):
        problems.append("an episode boundary in a gae.recursion counterexample")
    if check_id == "gae.terminal_not_bootstrapped" and not term.any():
        problems.append("no termination in a gae.terminal_not_bootstrapped counterexample")
    if check_id == "gae.truncation_bootstrapped" and not trunc.any():
        problems.append("no truncation in a gae.truncation_bootstrapped counterexample")
    if check_id == "gae.no_flow_across_episodes" and not (term[:-1] | trunc[:-1]).any():
        problems.append("no boundary before the last row in a gae.no_flow_across_episodes counterexample")
    if options.get("whiten") and T * N < 2:
        problems.append(f"{T} x {N} rollout for a whitened output (its std needs 2 entries)")
    return problems


@pytest.mark.parametrize("ex", [pytest.param(ex, id=ex.name, marks=_needs(ex)) for ex in gae_conventions.BROKEN])
def test_every_shrunk_counterexample_stays_in_its_scenario(ex):
    report = _report(ex.name, 0)
    assert report.failures
    for failure in report.failures:
        ce = failure.counterexample
        assert ce is not None and ce.shrunk, failure.check_id
        assert _in_scenario(failure.check_id, ce.inputs, ex.convention, dict(ex.options)) == [], str(report)
        if ex.backend == "jax":
            assert ce.inputs["rewards"].shape in JAX_SHAPES, ce.inputs["rewards"].shape


def test_a_terminal_counterexample_keeps_its_termination_under_every_convention():
    from refpg.examples import broken

    for fn, convention in ((broken.gae_bootstraps_terminal, "refpg"),
                           (gae_conventions.gae_value_bootstrap_on_dones_torch, "value_bootstrap")):
        if convention == "value_bootstrap" and not HAS["torch"]:
            continue
        report = check_gae(fn, convention=convention, **FAST)
        failure = report.failure("gae.terminal_not_bootstrapped")
        assert failure is not None, str(report)
        term, _ = _flags(failure.counterexample.inputs, convention)
        assert term.any() and term.size <= 2, failure.counterexample.inputs  # shrunk, yet terminated


def test_whitened_counterexamples_keep_two_entries():
    report = check_gae(gae_conventions.gae_whiten_std_only_numpy, whiten=True, **FAST)
    assert report.failed_ids
    for failure in report.failures:
        assert failure.counterexample.inputs["rewards"].size == 2, failure.counterexample.inputs


# -- value_bootstrap -------------------------------------------------------------------------------------

def rsl_rl_numpy(rewards, values, dones, time_outs, last_values, gamma, lam):
    rewards = rewards + gamma * values * time_outs
    adv = np.zeros_like(rewards)
    running = np.zeros_like(last_values)
    for t in reversed(range(rewards.shape[0])):
        nxt = last_values if t == rewards.shape[0] - 1 else values[t + 1]
        delta = rewards[t] + gamma * (1.0 - dones[t]) * nxt - values[t]
        running = delta + gamma * lam * (1.0 - dones[t]) * running
        adv[t] = running
    return adv


def test_value_bootstrap_is_a_declared_approximation_with_its_cost_in_the_warning():
    report = check_gae(rsl_rl_numpy, convention="value_bootstrap", **FAST)
    assert report.passed, str(report)
    assert report.status("gae.truncation_bootstrapped") == "not_run"
    assert report.to_dict()["not_applicable"] == ["gae.truncation_bootstrapped"]
    warning = next(w for w in report.warnings if "value_bootstrap" in w)
    cost = float(warning.split("changed advantages by up to ")[1].split(" ")[0])
    assert cost > 0.1 and "gamma * V(s_t)" in warning and "gamma * V(s_{t+1})" in warning


def test_value_bootstrap_time_outs_exclude_terminations_and_the_fold_is_checked():
    case = {"rewards": np.array([[1.0], [2.0]]), "values": np.array([[0.5], [4.0]]),
            "next_values": np.array([[3.0], [7.0]]), "terminated": np.array([[True], [False]]),
            "truncated": np.array([[True], [True]]), "gamma": 0.5, "lam": 1.0, "start": np.ones(1, bool)}
    args = dict(gae_module._args(case, "value_bootstrap"))
    np.testing.assert_array_equal(args["dones"], [[1.0], [1.0]])
    np.testing.assert_array_equal(args["time_outs"], [[0.0], [1.0]])  # row 0 terminated: no time-out
    # Row 1 folds gamma * V(s_1) = 2 into its reward and is cut; row 0 is a termination.
    np.testing.assert_allclose(gae_module._expected(case, "value_bootstrap"), [[0.5], [2.0 + 2.0 - 4.0]])

    def forgets_the_fold(rewards, values, dones, time_outs, last_values, gamma, lam):
        return rsl_rl_numpy(rewards, values, dones, time_outs * 0.0, last_values, gamma, lam)

    assert "gae.general" in check_gae(forgets_the_fold, convention="value_bootstrap", **FAST).failed_ids


def test_the_arithmetic_refpg_calls_a_bug_passes_when_declared_value_bootstrap():
    from refpg.examples import broken

    def own_value_bootstrap(rewards, values, dones, time_outs, last_values, gamma, lam):
        # The same function, fed through RSL-RL's arguments: row t + 1's value inside an episode, last_values
        # after the last row, and a time-out as a truncation.
        next_values = np.concatenate([values[1:], last_values[None]])
        truncated = time_outs > 0
        return broken.gae_timeout_bootstraps_own_value(rewards, values, next_values, (dones > 0) & ~truncated,
                                                       truncated, gamma, lam)

    assert check_gae(own_value_bootstrap, convention="value_bootstrap", **FAST).passed
    refpg = check_gae(broken.gae_timeout_bootstraps_own_value, **FAST)
    assert refpg.failed_ids == ("gae.truncation_bootstrapped",), str(refpg)


# -- purejaxrl -------------------------------------------------------------------------------------------

def test_purejaxrl_dones_are_those_of_the_step_itself():
    case = {"rewards": np.array([[1.0], [2.0]]), "values": np.array([[0.5], [4.0]]),
            "next_values": np.array([[9.0], [7.0]]), "terminated": np.array([[True], [False]]),
            "truncated": np.array([[False], [True]]), "gamma": 0.5, "lam": 1.0, "start": np.zeros(1, bool)}
    args = dict(gae_module._args(case, "purejaxrl"))
    np.testing.assert_array_equal(args["dones"], [[1.0], [1.0]])
    np.testing.assert_array_equal(args["last_value"], [7.0])
    report = check_gae(gae_conventions.gae_purejaxrl_numpy, convention="purejaxrl", **FAST)
    assert report.passed and any("'purejaxrl' has no truncation flag" in w for w in report.warnings)


@pytest.mark.skipif(not HAS["jax"], reason="needs jax")
def test_a_jitted_lax_scan_gae_sees_a_dozen_shapes_and_passes():
    shapes = set()

    def recording(rewards, values, dones, last_value, gamma, gae_lambda):
        shapes.add(tuple(rewards.shape))
        return gae_conventions.gae_purejaxrl_jax(rewards, values, dones, last_value, gamma, gae_lambda)

    report = check_gae(recording, convention="purejaxrl", backend="jax", output="advantages,returns")
    assert report.passed, str(report)
    assert shapes <= JAX_SHAPES and len(shapes) <= 13, shapes


@pytest.mark.skipif(not (HAS["jax"] and HAS["rlax"]), reason="needs rlax")
def test_rlax_jitted_under_jax_sees_a_few_lengths_and_passes():
    import jax
    import rlax

    jitted = jax.jit(rlax.truncated_generalized_advantage_estimation)
    lengths = set()

    def recording(r_t, discount_t, lambda_, values):
        lengths.add(r_t.shape[0])
        return jitted(r_t, discount_t, lambda_, values)

    report = check_gae(recording, convention="rlax", backend="jax")
    assert report.passed, str(report)
    assert lengths <= {1, 2, 4, 8, 16, 32, 64}, lengths
    assert report.status("gae.no_flow_across_episodes") == "not_run"  # one call per episode by design


def test_jax_sizes_are_drawn_and_kept_by_shrinking():
    from hypothesis import given, settings

    sizes = ((1, 2, 4, 8), (1, 2, 3))

    @settings(max_examples=60)
    @given(_cases.rollouts(flags="boundaries", sizes=sizes, min_size=2))
    def drawn(case):
        T, N = case["rewards"].shape
        assert T in (2, 4, 8) and N in (1, 2, 3) and T * N >= 2  # a boundary before the last row needs 2
        for move in _cases.rollout_moves(case, "boundaries", min_size=2, sizes=sizes):
            t, n = move["rewards"].shape
            assert t in sizes[0] and n in sizes[1] and t * n >= 2
            assert _cases.rollout_fits(move, "boundaries", min_size=2, sizes=sizes)

    drawn()


# -- output forms and whitening ----------------------------------------------------------------------

def returns_first(rewards, values, next_values, terminated, truncated, gamma, lam):
    advantages = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    return advantages + values, advantages


def whitened_numpy(rewards, values, next_values, terminated, truncated, gamma, lam):
    advantages = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)  # NumPy's std: ddof 0


def test_output_order_is_declared_by_name_or_tuple():
    for output in ("returns,advantages", ("returns", "advantages"), "returns, advantages"):
        report = check_gae(returns_first, output=output, **FAST)
        assert report.passed and report.options == {"output": "returns,advantages"}, str(report)
    # Undeclared, the pair stops the check; declared the other way round, the returns fail.
    with pytest.raises(InvalidInputError, match="output='returns,advantages'"):
        check_gae(returns_first, **FAST)
    assert check_gae(returns_first, output="advantages,returns", **FAST).failed_ids


def test_whitening_is_judged_against_the_reference_whitened_the_same_way():
    assert check_gae(whitened_numpy, whiten=True, whiten_ddof=0, **FAST).passed
    report = check_gae(whitened_numpy, whiten=True, **FAST)  # declared ddof=1: a different std
    assert report.failed_ids[0] == "gae.recursion" and "ddof=1" in report.failures[0].message
    assert report.status("gae.no_flow_across_episodes") == "not_run"


@pytest.mark.skipif(not HAS["torch"], reason="needs torch")
def test_returns_from_whitened_advantages_are_named():
    report = _report("gae_returns_from_whitened_torch", 0)
    assert report.failed_ids == ("gae.returns",), str(report)
    assert "whitened advantages + values" in report.failure("gae.returns").message


@pytest.mark.parametrize("kwargs, words", [
    (dict(returns=True, output="returns,advantages"), "give one of them"),
    (dict(output="values"), "output should be one of"),
    (dict(whiten="yes"), "whiten should be True or False"),
    (dict(whiten=True, whiten_ddof=2), "whiten_ddof should be 0"),
    (dict(whiten=True, whiten_eps=-1.0), "whiten_eps should be a finite number >= 0"),
    (dict(whiten=True, whiten_eps_on="both"), "whiten_eps_on should be one of"),
    (dict(bogus=1), "unknown option ['bogus']"),
])
def test_bad_output_options_raise_clear_errors(kwargs, words):
    with pytest.raises(InvalidInputError) as info:
        check_gae(gae, **kwargs)
    assert words in str(info.value)


def test_rlax_refuses_output_forms_and_whitening():
    rlax_like = lambda r_t, discount_t, lambda_, values: None  # noqa: E731
    for kwargs in (dict(output="advantages,returns"), dict(whiten=True)):
        with pytest.raises(InvalidInputError, match="convention 'rlax' returns advantages only"):
            check_gae(rlax_like, convention="rlax", **kwargs)


def test_the_cli_spells_the_options_as_strings():
    from refpg.conformance.runner import check_options, parse_option

    assert parse_option("gae", "output", "returns,advantages") == "returns,advantages"
    assert parse_option("gae", "whiten", "true") is True
    assert parse_option("gae", "whiten_ddof", "0") == 0
    assert parse_option("gae", "whiten_eps_on", "var") == "var"
    check_options("gae", {"output": "advantages,returns", "whiten": True}, where="test")


# -- gae.no_flow_across_episodes names its cause -------------------------------------------------------

class _Tol:
    class backend:
        tol = 1e-9


def test_split_cause_tells_flow_from_an_episode_wrong_alone():
    ref = np.array([[1.0], [2.0]])
    off = ref + np.array([[1.0], [0.0]])
    assert _split_cause(_Tol, off, ref, ref, ref).startswith("flow across the boundary")
    assert _split_cause(_Tol, ref, off, ref, ref).startswith("the function's own output on an episode alone")
    assert _split_cause(_Tol, off, off + 1.0, ref, ref).startswith("both the whole rollout and an episode")


def test_flow_across_a_time_limit_is_named_flow():
    from refpg.examples import broken

    report = check_gae(broken.gae_cut_on_terminated_only, **FAST)
    message = report.failure("gae.no_flow_across_episodes").message
    assert "flow across the boundary" in message and "each episode alone, which is right" in message


def test_a_rollout_end_handled_wrongly_is_named_the_episode_alone():
    def last_row_never_terminal(rewards, values, next_values, terminated, truncated, gamma, lam):
        terminated = terminated.copy()
        terminated[-1] = False
        return gae(rewards, values, next_values, terminated, truncated, gamma, lam)

    report = check_gae(last_row_never_terminal, **FAST)
    message = report.failure("gae.no_flow_across_episodes").message
    assert "own output on an episode alone is wrong" in message, message


# -- regions drawn by construction -------------------------------------------------------------------

REGIONS = {"no boundary", "termination at the last row", "termination mid-rollout",
           "truncation at the last row", "truncation mid-rollout", "truncation mid-rollout, lambda > 0",
           "both flags on one row", "gamma = 0", "gamma = 1", "gamma other", "lambda = 0", "lambda = 1",
           "lambda other", "N > 1"}


def _regions(terminated, truncated, gamma, lam) -> set:
    out = set()
    only_trunc = truncated & ~terminated
    if not (terminated | truncated).any():
        out.add("no boundary")
    if terminated[-1].any():
        out.add("termination at the last row")
    if terminated[:-1].any():
        out.add("termination mid-rollout")
    if only_trunc[-1].any():
        out.add("truncation at the last row")
    if only_trunc[:-1].any():
        out.add("truncation mid-rollout")
        if lam > 0:
            out.add("truncation mid-rollout, lambda > 0")
    if (terminated & truncated).any():
        out.add("both flags on one row")
    out.add({0.0: "gamma = 0", 1.0: "gamma = 1"}.get(gamma, "gamma other"))
    out.add({0.0: "lambda = 0", 1.0: "lambda = 1"}.get(lam, "lambda other"))
    if terminated.shape[1] > 1:
        out.add("N > 1")
    return out


def test_every_region_that_decides_gae_correctness_is_drawn_by_construction():
    seen = set()

    def recording(rewards, values, next_values, terminated, truncated, gamma, lam):
        seen.update(_regions(np.asarray(terminated), np.asarray(truncated), gamma, lam))
        return gae(rewards, values, next_values, terminated, truncated, gamma, lam)

    report = check_gae(recording, backend="numpy")  # seed 0, default max_examples
    assert report.passed, str(report)
    assert seen == REGIONS, REGIONS - seen


def test_every_time_out_region_is_drawn_under_value_bootstrap():
    seen = set()

    def recording(rewards, values, dones, time_outs, last_values, gamma, lam):
        time_outs = np.asarray(time_outs) > 0
        seen.update(_regions((np.asarray(dones) > 0) & ~time_outs, time_outs, gamma, lam))
        return rsl_rl_numpy(rewards, values, dones, time_outs * 1.0, last_values, gamma, lam)

    report = check_gae(recording, convention="value_bootstrap", backend="numpy")
    assert report.passed, str(report)
    # Both flags on one row reach the function as a termination alone (time_outs[t] = 0).
    assert seen == REGIONS - {"both flags on one row"}, REGIONS - seen


# -- the conventions of gae_layouts ----------------------------------------------------------------

def test_gae_layouts_conventions_are_listed_and_handed_over(monkeypatch):
    layouts = pytest.importorskip("refpg.conformance.gae_layouts")
    assert set(layouts.LAYOUT_CONVENTIONS) <= set(GAE_CONVENTIONS)
    convention = next(iter(layouts.LAYOUT_CONVENTIONS))
    calls = []
    monkeypatch.setattr(layouts, "check_layout", lambda fn, **kwargs: calls.append((fn, kwargs)) or "report")
    assert check_gae(gae, convention=convention, max_examples=3, whiten=True, mask_style="x") == "report"
    fn, kwargs = calls[0]
    assert fn is gae and kwargs == dict(convention=convention, backend="auto", dtype="float64", max_examples=3,
                                        seed=0, whiten=True, mask_style="x")
