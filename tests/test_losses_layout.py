"""refpg.losses is the one home of the sample-level PPO terms.

`refpg.algorithms.ppo` (and `refpg.algorithms`) re-export the very same
objects, and the conformance kit's PPO reference is computed by them, so a
change to a formula in refpg.losses reaches every user of it.
"""

import subprocess
import sys

import numpy as np
import pytest

import refpg.algorithms
import refpg.algorithms.ppo as ppo
import refpg.losses
import refpg.losses.sample as sample
from refpg.conformance import losses as kit
from refpg.errors import InvalidInputError, ShapeError

#: Every name that lived in algorithms/ppo.py before the move.
MOVED = ("ClipTerms", "ppo_clip_loss", "ppo_clip_terms", "ppo_clip_grad_logp", "clip_fraction",
         "ratio_outside_fraction", "approx_kl", "normalized_advantages")
#: The private helpers ppo.py's theta layer still uses: the same objects too, not copies.
PRIVATE = ("_check_clip_eps", "_normalize", "_terms")


@pytest.mark.parametrize("name", MOVED)
def test_moved_names_are_the_objects_of_refpg_losses(name):
    obj = getattr(refpg.losses, name)
    assert getattr(ppo, name) is obj
    assert getattr(sample, name) is obj
    assert obj.__module__ == "refpg.losses.sample"
    assert name in ppo.__all__ and name in refpg.losses.__all__
    if hasattr(refpg.algorithms, name):
        assert getattr(refpg.algorithms, name) is obj


@pytest.mark.parametrize("name", PRIVATE)
def test_ppo_private_helpers_come_from_sample(name):
    assert getattr(ppo, name) is getattr(sample, name)


def test_refpg_algorithms_still_exports_its_two_ppo_primitives():
    assert {"clip_fraction", "ppo_clip_loss"} <= set(refpg.algorithms.__all__)
    assert refpg.algorithms.ppo_clip_loss is refpg.losses.ppo_clip_loss
    assert refpg.algorithms.clip_fraction is refpg.losses.clip_fraction


def test_losses_all_lists_exactly_its_public_names():
    assert len(set(refpg.losses.__all__)) == len(refpg.losses.__all__)
    from refpg.losses import group, tokens

    homes = (sample, tokens, group)
    for name in refpg.losses.__all__:
        owners = [m for m in homes if name in m.__all__]
        assert len(owners) == 1, name  # one home per name
        assert getattr(refpg.losses, name) is getattr(owners[0], name)
    for m in homes:
        assert set(m.__all__) <= set(refpg.losses.__all__)


def test_kit_reference_imports_the_primitive():
    assert kit.ratio_clip_terms is refpg.losses.ratio_clip_terms


def test_kit_reference_changes_with_the_primitive(monkeypatch):
    """Replace the shared core and watch both the kit's reference and ppo_clip_loss follow it."""
    ratio = np.array([0.5, 1.0, 1.5, 4.0])
    adv = np.array([1.0, -1.0, 2.0, -0.5])
    clip = kit._Clip(0.2, 0.2, None)
    before_kit = kit._ppo_reference(ratio, adv, clip).loss
    before_loss = refpg.losses.ppo_clip_loss(np.log(ratio), np.zeros(4), adv, 0.2)
    real = sample._ratio_terms

    def doubled(r, a, low, high, dual):
        t = real(r, a, low, high, dual)
        return t._replace(objective=2.0 * t.objective)

    monkeypatch.setattr(sample, "_ratio_terms", doubled)
    assert kit._ppo_reference(ratio, adv, clip).loss == pytest.approx(2.0 * before_kit)
    assert refpg.losses.ppo_clip_loss(np.log(ratio), np.zeros(4), adv, 0.2) == pytest.approx(2.0 * before_loss)


def test_kit_reference_equals_ppo_clip_loss_for_a_symmetric_clip():
    rng = np.random.default_rng(0)
    for eps in (0.1, 0.2, 0.3):
        log_r = rng.normal(scale=0.5, size=7)
        adv = rng.normal(size=7)
        ref = kit._ppo_reference(np.exp(log_r), adv, kit._Clip(eps, eps, None))
        assert ref.loss == pytest.approx(sample.ppo_clip_loss(log_r, np.zeros(7), adv, eps), rel=1e-14)
        assert ref.fractions["active"] == sample.clip_fraction(log_r, np.zeros(7), adv, eps)


def test_ratio_clip_terms_matches_ppo_clip_terms_when_symmetric():
    log_r = np.log([0.5, 0.9, 1.0, 1.2, 1.3, 3.0])
    adv = np.array([-1.0, 2.0, 0.0, 1.0, 1.0, -2.0])
    a = sample.ppo_clip_terms(log_r, np.zeros(6), adv, 0.2)
    b = sample.ratio_clip_terms(np.exp(log_r), adv, 0.2)
    np.testing.assert_array_equal(a.objective, b.objective)
    np.testing.assert_array_equal(a.clipped, b.clipped)


def test_ratio_clip_terms_asymmetric_range_and_dual_clip_by_hand():
    # r = 1.25, A = 1: inside [0.8, 1.28] (eps_high = 0.28, DAPO), clipped at 1.2 when symmetric.
    t = sample.ratio_clip_terms([1.25], [1.0], 0.2, 0.28)
    assert t.objective[0] == 1.25 and not t.clipped[0]
    t = sample.ratio_clip_terms([1.25], [1.0], 0.2)
    assert t.objective[0] == pytest.approx(1.2) and t.clipped[0]
    # Dual clip c = 3 [Ye2020]: A < 0 with r = 4 gives max(min(-4, -1.2), -3) = -3; A > 0 is untouched;
    # A < 0 with r = 0.5 is clipped as in plain PPO.
    t = sample.ratio_clip_terms([4.0, 4.0, 0.5], [-1.0, 1.0, -1.0], 0.2, dual_clip=3.0)
    np.testing.assert_allclose(t.objective, [-3.0, 1.2, -0.8])
    np.testing.assert_array_equal(t.clipped, [False, True, True])
    # Without the dual clip the first is -4.
    assert sample.ratio_clip_terms([4.0], [-1.0], 0.2).objective[0] == -4.0


@pytest.mark.parametrize("kwargs, name", [(dict(eps_low=0.0), "eps_low"),
                                          (dict(eps_low=0.2, eps_high=-0.1), "eps_high"),
                                          (dict(eps_low=0.2, dual_clip=1.0), "dual_clip")])
def test_ratio_clip_terms_names_a_bad_argument(kwargs, name):
    with pytest.raises(InvalidInputError, match=name):
        sample.ratio_clip_terms([1.0], [1.0], **kwargs)


def test_ratio_clip_terms_checks_shapes():
    with pytest.raises(ShapeError, match="advantages"):
        sample.ratio_clip_terms([1.0, 2.0], [1.0], 0.2)


def test_import_is_light():
    """refpg.losses loads nothing beyond what `import refpg` does, apart from its own modules."""
    code = "import sys, {mod}; print('\\n'.join(sorted(sys.modules)))"

    def modules(mod):
        out = subprocess.run([sys.executable, "-c", code.format(mod=mod)], capture_output=True, text=True,
                             check=True).stdout.split()
        return set(out)

    extra = modules("refpg.losses") - modules("refpg")
    assert all(m == "refpg.losses" or m.startswith("refpg.losses.") for m in extra), sorted(extra)
    assert not {"torch", "jax", "hypothesis"} & modules("refpg.losses")
