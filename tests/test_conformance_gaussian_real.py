"""The Gaussian kinds on the real libraries, called as installed: SB3's DiagGaussianDistribution,
kl_divergence and SquashedDiagGaussianDistribution; TorchRL's TanhNormal and IndependentNormal, with
tensordict's NormalParamExtractor (the module TorchRL actors use).

Each passes under the declaration that describes it; the failures found are strict xfails whose reason
names the library, its version and what is wrong:

* SB3: ``kl_divergence`` of two ``DiagGaussianDistribution`` returns one KL per action dimension
  (torch's ``Normal`` KL, unsummed), where its ``MultiCategoricalDistribution`` branch sums.
* TorchRL: ``TanhNormal.log_prob`` of a given action re-inverts it through ``atanh(clamp(a, 1 - r))``, r the
  dtype's resolution, so it caps the pre-tanh value at 17.6 in float64 and 7.25 in float32; with Python-float
  ``low``/``high`` its rescaling term is computed in float32 even for float64 inputs (off by 2.8e-8 per
  dimension for [0, 5]).
* tensordict: ``NormalParamExtractor`` clamps the std (its docstring says "the variance") at ``scale_lb`` =
  1e-4: a log-std below -9.21 is scored as -9.21, with gradient 0.

Not checkable here, and said so: SB3's squashed entropy (``entropy()`` returns None: no closed form) and
``NormalParamExtractor``'s default ``biased_softplus_1.0`` mapping, which is neither a log-std nor a std.
"""

import importlib.metadata
import math

import numpy as np
import pytest

from refpg.conformance.gaussian import check_gaussian_kl, check_gaussian_log_prob
from refpg.conformance.gaussian_squashed import check_squashed_log_prob

torch = pytest.importorskip("torch")
N = 40


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


SB3 = _version("stable_baselines3")
TORCHRL = _version("torchrl")
TENSORDICT = _version("tensordict")


# -- SB3 ---------------------------------------------------------------------------------------------------

def _sb3():
    return pytest.importorskip("stable_baselines3.common.distributions")


def sb3_log_prob_entropy(mean_actions, log_std, actions):
    d = _sb3().DiagGaussianDistribution(mean_actions.shape[1]).proba_distribution(mean_actions, log_std)
    return d.log_prob(actions), d.entropy()


def sb3_kl(mean_true, log_std_true, mean_pred, log_std_pred):
    sd = _sb3()
    d = mean_true.shape[1]
    return sd.kl_divergence(sd.DiagGaussianDistribution(d).proba_distribution(mean_true, log_std_true),
                            sd.DiagGaussianDistribution(d).proba_distribution(mean_pred, log_std_pred))


def sb3_squashed(mean_actions, log_std, actions, gaussian_actions):
    dist = _sb3().SquashedDiagGaussianDistribution(mean_actions.shape[1]).proba_distribution(mean_actions, log_std)
    return dist.log_prob(actions, gaussian_actions)


def sb3_squashed_from_action(mean_actions, log_std, actions):
    dist = _sb3().SquashedDiagGaussianDistribution(mean_actions.shape[1]).proba_distribution(mean_actions, log_std)
    return dist.log_prob(actions)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("state_dependent", [False, True])
def test_sb3_diag_gaussian_log_prob_and_entropy(dtype, state_dependent):
    report = check_gaussian_log_prob(sb3_log_prob_entropy, convention="sb3", backend="torch", entropy=True,
                                     dtype=dtype, state_dependent=state_dependent, max_examples=N)
    assert report.passed, str(report)


@pytest.mark.xfail(strict=True, reason=f"FINDING: stable-baselines3 {SB3} kl_divergence(dist_true, dist_pred) of two "
                                       f"DiagGaussianDistribution returns torch's per-dimension Normal KL, shape (n, d), "
                                       f"not the KL of the diagonal Gaussians (summed over dimensions, as its "
                                       f"MultiCategoricalDistribution branch sums)")
def test_sb3_kl_divergence_of_diag_gaussians_is_summed_over_dimensions():
    report = check_gaussian_kl(sb3_kl, convention="sb3", backend="torch", max_examples=N)
    assert report.passed, str(report)


def test_sb3_kl_divergence_per_dimension_values_are_right_once_summed():
    sb3_kl_failure = check_gaussian_kl(sb3_kl, convention="sb3", backend="torch", max_examples=10)
    assert "one KL per action dimension" in sb3_kl_failure.failure("gaussian_kl.output_shape").message

    def summed(mean_true, log_std_true, mean_pred, log_std_pred):
        return sb3_kl(mean_true, log_std_true, mean_pred, log_std_pred).sum(-1)
    report = check_gaussian_kl(summed, convention="sb3", backend="torch", max_examples=N)
    assert report.passed, str(report)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sb3_squashed_log_prob_within_its_regulariser(dtype):
    """SquashedDiagGaussianDistribution.log_prob(actions, gaussian_actions): log(1 - a^2 + 1e-6), the sb3
    convention's eps=1e-6; SAC's log_std per state."""
    report = check_squashed_log_prob(sb3_squashed, convention="sb3", backend="torch", dtype=dtype, max_examples=N)
    assert report.passed, str(report)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sb3_squashed_log_prob_from_the_action_alone(dtype):
    """log_prob(actions) re-inverts through TanhBijector.inverse, which clamps to 1 - eps: one ulp below the largest
    float under 1, inside the 4 ulps the check allows."""
    report = check_squashed_log_prob(sb3_squashed_from_action, convention="sb3", backend="torch", dtype=dtype,
                                     pre_tanh="not_given", max_examples=N)
    assert report.passed, str(report)


def test_sb3_squashed_log_prob_is_not_the_exact_form_and_the_check_says_which_it_is():
    report = check_squashed_log_prob(sb3_squashed, convention="sb3", backend="torch", eps=0.0, max_examples=20)
    assert "declare eps=1e-6" in report.failure("squashed_log_prob.value").message


def test_sb3_squashed_entropy_has_no_closed_form_and_sb3_returns_none():
    dist = _sb3().SquashedDiagGaussianDistribution(2).proba_distribution(torch.zeros(1, 2), torch.zeros(2))
    assert dist.entropy() is None


# -- TorchRL and tensordict ---------------------------------------------------------------------------------

def _torchrl():
    return pytest.importorskip("torchrl.modules")


def npe_exp_log_prob_entropy(loc, log_scale, action):
    """A TorchRL actor's head: NormalParamExtractor(scale_mapping="exp") on [loc, log_scale], IndependentNormal."""
    from tensordict.nn import NormalParamExtractor

    loc2, scale = NormalParamExtractor(scale_mapping="exp")(torch.cat([loc, log_scale], -1))
    dist = _torchrl().IndependentNormal(loc2, scale)
    return dist.log_prob(action), dist.entropy()


def npe_none_log_prob(loc, scale, action):
    from tensordict.nn import NormalParamExtractor

    loc2, scale2 = NormalParamExtractor(scale_mapping="none")(torch.cat([loc, scale], -1))
    return _torchrl().IndependentNormal(loc2, scale2).log_prob(action)


def tanh_normal(loc, scale, action):
    return _torchrl().TanhNormal(loc, scale).log_prob(action)


def tanh_normal_box(loc, scale, action):
    return _torchrl().TanhNormal(loc, scale, low=0.0, high=5.0).log_prob(action)


def tanh_normal_box_tensors(loc, scale, action):
    """low and high as tensors of the inputs' dtype."""
    low, high = (torch.tensor(v, dtype=loc.dtype) for v in (0.0, 5.0))
    return _torchrl().TanhNormal(loc, scale, low=low, high=high).log_prob(action)


def independent_normal_kl(loc_p, scale_p, loc_q, scale_q):
    tr = _torchrl()
    return torch.distributions.kl_divergence(tr.IndependentNormal(loc_p, scale_p), tr.IndependentNormal(loc_q, scale_q))


_SCALE_LB = (f"FINDING: tensordict {TENSORDICT} NormalParamExtractor clamps the std at scale_lb = 1e-4 (its docstring: "
             f"'the minimum value that the variance can take'): a log-std below log(1e-4) = -9.21 is scored as -9.21, "
             f"and its gradient is 0 (the drawn log-stds reach -12, a collapsed policy)")


def test_normal_param_extractor_exp_is_exact_above_its_floor():
    _torchrl()
    report = check_gaussian_log_prob(npe_exp_log_prob_entropy, convention="torchrl", backend="torch", scale="log_std",
                                     entropy=True, min_log_std=-9.0, max_examples=N)
    assert report.passed, str(report)
    report = check_gaussian_log_prob(npe_none_log_prob, convention="torchrl", backend="torch", min_log_std=-9.0,
                                     max_examples=N)
    assert report.passed, str(report)


@pytest.mark.xfail(strict=True, reason=_SCALE_LB)
def test_normal_param_extractor_over_every_log_std():
    _torchrl()
    report = check_gaussian_log_prob(npe_exp_log_prob_entropy, convention="torchrl", backend="torch", scale="log_std",
                                     entropy=True, max_examples=N)
    assert report.passed, str(report)


def test_normal_param_extractor_floor_is_what_fails_below_it():
    _torchrl()
    report = check_gaussian_log_prob(npe_exp_log_prob_entropy, convention="torchrl", backend="torch", scale="log_std",
                                     entropy=True, max_examples=N)
    message = report.failure("gaussian_log_prob.gradient_scale").message
    assert "actual 0" in message
    assert np.min(report.failure("gaussian_log_prob.gradient_scale").counterexample.inputs["log_scale"]) < math.log(1e-4)


_CAP = (f"FINDING: torchrl {TORCHRL} TanhNormal.log_prob(action) re-inverts the action through atanh(clamp(a, "
        f"1 - resolution)), resolution 1e-15 in float64 and 1e-6 in float32: the pre-tanh value is capped at 17.6 "
        f"(float64) and 7.25 (float32), so the log-density and its gradients of an action nearer the bound are wrong "
        f"(rsample_and_log_prob, pytorch/rl PR #4080, scores its own sample exactly; a given action has no pre-tanh "
        f"value to pass)")


@pytest.mark.parametrize("dtype, max_pre_tanh", [("float64", 17.0), ("float32", 7.0)])
def test_tanh_normal_is_exact_where_its_clamp_never_acts(dtype, max_pre_tanh):
    _torchrl()
    report = check_squashed_log_prob(tanh_normal, convention="torchrl", backend="torch", dtype=dtype,
                                     max_pre_tanh=max_pre_tanh, max_examples=N)
    assert report.passed, str(report)


@pytest.mark.parametrize("dtype", [pytest.param("float64", marks=pytest.mark.xfail(strict=True, reason=_CAP)),
                                   pytest.param("float32", marks=pytest.mark.xfail(strict=True, reason=_CAP))])
def test_tanh_normal_near_saturation(dtype):
    _torchrl()
    report = check_squashed_log_prob(tanh_normal, convention="torchrl", backend="torch", dtype=dtype, max_examples=N)
    assert report.passed, str(report)


def test_tanh_normal_cap_is_named():
    _torchrl()
    report = check_squashed_log_prob(tanh_normal, convention="torchrl", backend="torch", dtype="float32",
                                     max_examples=N)
    assert "TorchRL's safeatanh" in report.failure("squashed_log_prob.saturation").message


def test_tanh_normal_box_with_tensor_bounds_is_exact():
    _torchrl()
    report = check_squashed_log_prob(tanh_normal_box_tensors, convention="torchrl", backend="torch", low=0.0,
                                     high=5.0, max_pre_tanh=17.0, max_examples=N)
    assert report.passed, str(report)


@pytest.mark.xfail(strict=True, reason=f"FINDING: torchrl {TORCHRL} TanhNormal(low=0.0, high=5.0) with Python-float "
                                       f"bounds holds them as float32 tensors (torch.as_tensor of a float), so a "
                                       f"float64 log-prob carries log((high - low)/2) rounded to float32: off by 2.8e-8 "
                                       f"per dimension, beyond float64's tolerance")
def test_tanh_normal_box_with_float_bounds_in_float64():
    _torchrl()
    report = check_squashed_log_prob(tanh_normal_box, convention="torchrl", backend="torch", low=0.0, high=5.0,
                                     max_pre_tanh=17.0, max_examples=N)
    assert report.passed, str(report)


def test_independent_normal_kl():
    _torchrl()
    report = check_gaussian_kl(independent_normal_kl, convention="torchrl", backend="torch", max_examples=N)
    assert report.passed, str(report)
