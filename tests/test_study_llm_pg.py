"""refpg study llm_pg: the length bias of [Liu2025], the KL-estimator table and GRPO's difficulty bias, exact."""

import numpy as np
import pytest

from refpg.studies import llm_pg
from tests.helpers import assert_study_outputs


def test_study_writes_figures_and_report(outputs):
    assert_study_outputs(*outputs("llm_pg"), ("length_bias.png", "kl_estimators.png", "difficulty_bias.png"))


def test_length_bias_reproduced(outputs):
    _, h = outputs("llm_pg")
    g0, g1 = h["length_bias_grpo_wrong_length"]
    d0, d1 = h["length_bias_drgrpo_wrong_length"]
    assert g0 == d0  # the same start
    assert h["length_bias_reproduced"] and g1 > d1 + 0.2  # wrong answers grow longer under GRPO's 1/|y|
    assert g1 > g0 + 0.4


def test_kl_table_matches_the_identities(outputs):
    """On-policy rows where docs/conventions.md states an identity: k1 in the reward is grad KL_seq;
    k1 as a loss is zero; k2 as a loss and the IS-differentiated k1/k3 are all the local gradient."""
    _, h = outputs("llm_pg")
    rows = {(r["estimator"], r["placement"], r["importance"], r["regime"]): r for r in h["kl_table"]}
    assert rows[("k1", "reward", "none", "on")]["rel_error"] < 1e-12
    assert rows[("k1", "loss", "none", "on")]["cosine"] == 0.0
    assert rows[("k1", "loss", "none", "on")]["rel_error"] == pytest.approx(1.0, abs=1e-12)
    local = rows[("k2", "loss", "none", "on")]
    for key in (("k1", "loss", "differentiated", "on"), ("k3", "loss", "differentiated", "on")):
        assert rows[key]["cosine"] == pytest.approx(local["cosine"], abs=1e-12)
    assert h["k3_loss_on_policy_cosine"] < 0.99  # k3 as a loss is not the reverse-KL gradient


def test_difficulty_bias_is_exact_where_known():
    """RLOO is exactly 1 x grad J, the group mean exactly (G-1)/G; GRPO weighs rare successes more."""
    ps = np.array([0.05, 0.5])
    diff = llm_pg.difficulty_bias(ps, (4,))
    assert np.allclose(diff[("RLOO", 4)], 1.0, atol=1e-12)
    assert np.allclose(diff[("group mean (Dr. GRPO)", 4)], 0.75, atol=1e-12)
    grpo = diff[("GRPO (Bessel, eps 1e-6)", 4)]
    assert grpo[0] > grpo[1] > 1.0
