"""Studies of issue 7: exact computations that reproduce published results, with plots.

Each study is a module with ``run(*, quick, out_dir) -> dict``; it writes PNG
figures and a markdown ``report.md`` into ``out_dir`` and returns its
headline numbers. `run_study` is the entry point (and ``refpg study NAME``).
"""

from __future__ import annotations

from refpg.studies import kl_estimators, mei2020_bandit, npg_bound
from refpg.studies import cen2022_entropy_npg, gradient_estimates
from refpg.studies import llm_pg, lqr, ppo_ratio_kl, seed_story

__all__ = ["STUDIES", "run_study"]

#: Study name -> module.
STUDIES = {
    "mei2020_bandit": mei2020_bandit,
    "kl_estimators": kl_estimators,
    "npg_bound": npg_bound,
    "cen2022_entropy_npg": cen2022_entropy_npg,
    "gradient_estimates": gradient_estimates,
    "seed_story": seed_story,
    "ppo_ratio_kl": ppo_ratio_kl,
    "llm_pg": llm_pg,
    "lqr": lqr,
}


def run_study(name: str, *, quick: bool = False, out_dir=None) -> dict:
    """Run study `name`, writing its figures and ``report.md`` to `out_dir` (default ``analysis/<name>``).

    Returns the study's dict of headline numbers.
    """
    from refpg._validation import check_choice

    check_choice(name, "study", sorted(STUDIES))
    if out_dir is None:
        out_dir = f"analysis/{name}"
    return STUDIES[name].run(quick=quick, out_dir=out_dir)
