"""Conformance kit: check other people's policy-gradient code against refpg's oracle.

Each ``check_<kind>(fn, *, convention=..., backend=..., ...)`` draws inputs
with Hypothesis, computes the exact or reference answer, checks the
properties, and returns a `Report`; each failure carries a stable
``check_id``, a message "<what> should be <expected>, actual <value>", and a
shrunk counterexample. `assert_conforms` turns a failing report into a
`refpg.errors.ConformanceError` (an ``AssertionError``).

Before the first call, the function's parameters are read: a function no call
of the declared convention can bind, or whose parameter names are clearly
another convention's, is refused at once with the convention to pass.
"""

from refpg.conformance.gae import GAE_CONVENTIONS, check_gae
from refpg.conformance.kl import check_kl_estimator
from refpg.conformance.losses import PPO_CONVENTIONS, VALUE_CONVENTIONS, check_ppo_loss, check_value_loss
from refpg.conformance.reinforce import check_reinforce_estimator
from refpg.conformance.runner import CHECKS, KINDS, check, register
from refpg.conformance.trpo import check_trpo_step
from refpg.conformance.llm_loss import LLM_LOSS_CONVENTIONS, check_llm_loss
from refpg.conformance.group_advantages import GROUP_ADVANTAGE_CONVENTIONS, check_group_advantages
from refpg.conformance.token_loss import TOKEN_LOSS_CONVENTIONS, check_token_policy_loss
from refpg.conformance.kl_penalty import KL_PENALTY_CONVENTIONS, check_kl_penalty
from refpg.conformance.gaussian import (GAUSSIAN_KL_CONVENTIONS, GAUSSIAN_LOG_PROB_CONVENTIONS, check_gaussian_kl,
                                        check_gaussian_log_prob)
from refpg.conformance.gaussian_ppo import GAUSSIAN_PPO_CONVENTIONS, check_gaussian_ppo_loss
from refpg.conformance.gaussian_squashed import SQUASHED_CONVENTIONS, check_squashed_log_prob
from refpg.conformance.update import UPDATE_CONVENTIONS, check_update
from refpg.conformance.pipeline import PIPELINE_CONVENTIONS, check_pipeline_gradient
from refpg.conformance.report import Counterexample, Failure, Report, assert_conforms

__all__ = ["CHECKS", "KINDS", "check", "register", "Counterexample", "Failure", "GAE_CONVENTIONS", "PPO_CONVENTIONS", "Report", "VALUE_CONVENTIONS",
           "assert_conforms", "check_gae", "check_kl_estimator", "check_ppo_loss", "check_reinforce_estimator", "check_trpo_step",
           "check_value_loss", "LLM_LOSS_CONVENTIONS", "check_llm_loss",
           "GROUP_ADVANTAGE_CONVENTIONS", "check_group_advantages", "TOKEN_LOSS_CONVENTIONS",
           "check_token_policy_loss", "KL_PENALTY_CONVENTIONS", "check_kl_penalty",
           "GAUSSIAN_LOG_PROB_CONVENTIONS", "check_gaussian_log_prob", "GAUSSIAN_KL_CONVENTIONS",
           "check_gaussian_kl", "SQUASHED_CONVENTIONS", "check_squashed_log_prob", "GAUSSIAN_PPO_CONVENTIONS",
           "check_gaussian_ppo_loss", "UPDATE_CONVENTIONS", "check_update",
           "PIPELINE_CONVENTIONS", "check_pipeline_gradient"]
