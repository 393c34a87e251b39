"""check_token_policy_loss: bundled examples (correct pass, broken fail with their id; seed 0 and, slow,
seeds 1..5), bad declarations, hints, and the regions that decide correctness drawn by construction."""

import numpy as np
import pytest

from refpg.conformance.token_loss import _weights, check_token_policy_loss
from refpg.errors import InvalidInputError
from refpg.examples import llm_token_losses as topic
from refpg.losses.tokens import aggregation_weights
from tests.helpers import example_report

torch = pytest.importorskip("torch")


def _run(ex, **kw):
    return check_token_policy_loss(ex.fn, convention=ex.convention, backend=ex.backend, **{**dict(ex.options), **kw})


def _param(exs):
    return [pytest.param(ex, id=ex.name) for ex in exs]


@pytest.mark.parametrize("ex", _param(topic.CORRECT))
def test_correct_example_passes(ex):
    if ex.backend == "jax":
        pytest.importorskip("jax")
    report = example_report(ex)  # seed 0, shared with tests/test_conformance_examples.py
    assert report.passed, str(report)


@pytest.mark.parametrize("ex", _param(topic.BROKEN))
def test_broken_example_fails_with_its_id(ex):
    report = example_report(ex)
    assert ex.expected in report.failed_ids, str(report)
    assert " should " in report.failure(ex.expected).message


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_examples_at_other_seeds(seed):
    for ex in topic.CORRECT + topic.BROKEN:
        if ex.backend == "jax":
            continue
        report = _run(ex, seed=seed)
        if ex.expected is None:
            assert report.passed, (ex.name, str(report))
        else:
            assert ex.expected in report.failed_ids, (ex.name, str(report))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
def test_weights_are_aggregation_weights_under_the_refpg_declaration(mode):
    mask = np.array([[True, True, False], [False, False, False], [True, False, False]])
    opts = dict(aggregation=mode, empty_rows="count", count_eps=0.0, norm_length=None)
    np.testing.assert_allclose(_weights(mask, opts), aggregation_weights(mask, mode, norm_length=3))


@pytest.mark.parametrize("kwargs, name", [
    (dict(loss="ppo"), "loss"), (dict(aggregation="mean"), "aggregation"), (dict(eps_low=1.5), "eps_low"),
    (dict(dual_clip=1.1), "dual_clip"), (dict(accumulation="global"), "accumulation"),
    (dict(loss="cispo", dual_clip=3.0), "dual_clip"), (dict(empty_rows="drop"), "empty_rows"),
    (dict(loss_type="grpo"), "loss_type"), (dict(convention="trl", loss_type="ppo"), "loss_type"),
    (dict(convention="trl", loss_type="grpo", aggregation="token-mean"), "aggregation"),
    (dict(convention="openrlhf", aggregation="seq-mean-token-sum"), "aggregation"),
])
def test_bad_declarations_name_the_option(kwargs, name):
    with pytest.raises(InvalidInputError, match=name):
        check_token_policy_loss(topic.OpenRLHFStylePolicyLoss() if kwargs.get("convention") == "openrlhf"
                                else topic.CORRECT[0].fn, backend="torch", **kwargs)


def test_accumulation_failure_names_the_factor_and_the_passing_declaration():
    ex = next(e for e in topic.BROKEN if e.name == "trl_dapo_generation_batch_count")
    assert "actual = 4 x expected" in _run(ex).failure("token_policy_loss.accumulation").message
    ex = next(e for e in topic.BROKEN if e.name == "token_mean_divided_by_steps_torch")
    assert "accumulation='tokens' would pass" in _run(ex).failure("token_policy_loss.accumulation").message


def test_regions_are_drawn_by_construction():
    """Every (ratio band, sign of A) of a token, lengths L, 1 and 0, post-EOS padding, junk at masked
    positions, and micro-batches of unequal token counts, at seed 0 and default max_examples."""
    seen = {"regions": set(), "rows": set(), "junk": False, "unequal_micro": False}
    inner = topic._trl("trl_recorded", loss_type="dapo", epsilon_high=0.28, delta=3.0)

    def fn(lp, lpo, adv, mask, nib, ga):
        m = mask.numpy().astype(bool)
        x = (lp.detach() - lpo).numpy()
        a = adv.numpy()[:, None] * np.ones_like(x)
        r = np.exp(x)
        for band, sel in (("below", r < 0.8), ("inside", (r > 0.8) & (r < 1.28)), ("above", (r > 1.28) & (r < 3)),
                          ("beyond", r > 3)):
            for s in (1, -1):
                if np.any(sel & m & (np.sign(a) == s)):
                    seen["regions"].add((band, s))
        L = m.shape[1]
        for n_tok in m.sum(1):
            seen["rows"].add("L" if n_tok == L else "1" if n_tok == 1 else "0" if n_tok == 0 else "padded")
        seen["junk"] |= bool(np.any(lp.detach().numpy()[~m] != 0))
        if ga > 1 and m.sum() != float(nib) / ga:
            seen["unequal_micro"] = True
        return inner(lp, lpo, adv, mask, nib, ga)

    report = check_token_policy_loss(fn, convention="trl", backend="torch", loss_type="dapo", eps_high=0.28,
                                     dual_clip=3.0)
    assert report.passed, str(report)
    assert seen["regions"] == {(b, s) for b in ("below", "inside", "above", "beyond") for s in (1, -1)}
    assert seen["rows"] == {"L", "1", "0", "padded"}
    assert seen["junk"] and seen["unequal_micro"]
