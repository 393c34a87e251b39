"""check_update: a whole update, step by step; correct updates pass, each planted bug is named by its component.

The implementation checked here is written the way a CleanRL user writes the update loop, in torch
(independent of refpg's reference), with switches that plant one bug each.
"""

import numpy as np
import pytest

from refpg.conformance import check_update
from refpg.errors import InvalidInputError

torch = pytest.importorskip("torch")

HP = dict(n_epochs=2, minibatch_size=4, normalize_advantage="minibatch", clip_range_vf=0.2, value_clip="max",
          value_loss="half_mse", vf_coef=0.5, ent_coef=0.01, max_grad_norm=0.5, lr=0.05, eps=1e-5,
          gamma=0.9, gae_lambda=0.8)
SHAPE = dict(n_states=3, n_actions=2, n_steps=4, n_envs=2, actor_bias=True, critic_bias=True)


def cleanrl_like(*, bug=None, trace=True, gamma=0.9, lam=0.8, seed=0, lr=0.05):
    """A CleanRL-structured update of a linear actor-critic; `bug` plants one bug."""
    def update(batch, params):
        rng = np.random.default_rng(seed)  # the same order on every call, as a seeded run
        dt = batch["rewards"].dtype
        tp = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        opt = torch.optim.Adam(tp.values(), lr=lr, eps=1e-8 if bug == "adam_eps" else 1e-5)
        T, N = batch["rewards"].shape
        r, v, nv = batch["rewards"], batch["values"], batch["next_values"]
        term, trunc = batch["terminated"].to(dt), batch["truncated"].to(dt)
        if bug == "truncation_as_termination":
            term = torch.clamp(term + trunc, max=1.0)
        adv = torch.zeros_like(r)
        last = torch.zeros(N, dtype=dt)
        for t in reversed(range(T)):
            delta = r[t] + gamma * (1 - term[t]) * nv[t] - v[t]
            last = delta + gamma * lam * (1 - term[t]) * (1 - trunc[t]) * last
            adv[t] = last
        ret = adv + v
        b_s, b_a = batch["states"].reshape(-1), batch["actions"].reshape(-1)
        b_lp, b_v = batch["logp_old"].reshape(-1), batch["values"].reshape(-1)
        b_adv, b_ret = adv.reshape(-1), ret.reshape(-1)
        M = b_s.numel()
        inds = np.arange(M)
        steps = []
        perm0 = rng.permutation(M)
        for epoch in range(2):
            if bug == "same_order":
                inds = perm0.copy()
            else:
                rng.shuffle(inds)
            for start in range(0, M, 4):
                mb = inds[start:start + 4]
                logits = tp["actor_w"][b_s[mb]] + tp["actor_b"]
                dist = torch.distributions.Categorical(logits=logits)
                newlp = dist.log_prob(b_a[mb])
                ratio = (newlp - b_lp[mb]).exp()
                a = b_adv[mb]
                a = (a - a.mean()) / (a.std(unbiased=bug != "ddof0") + 1e-8)
                pg = torch.max(-a * ratio, -a * torch.clamp(ratio, 0.8, 1.2)).mean()
                if bug == "surrogate_max":  # the optimistic bound: max of the two terms instead of min
                    pg = -torch.max(a * ratio, a * torch.clamp(ratio, 0.8, 1.2)).mean()
                newv = tp["critic_w"][b_s[mb]] + tp["critic_b"]
                target = b_adv[mb] if bug == "value_on_advantages" else b_ret[mb]
                unclipped = (newv - target) ** 2
                clipped_v = b_v[mb] + torch.clamp(newv - b_v[mb], -0.2, 0.2)
                vloss = 0.5 * torch.max(unclipped, (clipped_v - target) ** 2).mean()
                ent = dist.entropy().mean()
                sign = 1.0 if bug == "entropy_sign" else -1.0
                loss = pg + sign * 0.01 * ent + 0.5 * vloss
                if bug != "no_zero_grad":
                    opt.zero_grad()
                loss.backward()
                grad = {k: t.grad.detach().clone() for k, t in tp.items()}
                if bug == "clip_each_tensor":
                    norms = [torch.nn.utils.clip_grad_norm_([t], 0.5) for t in tp.values()]
                    norm = torch.linalg.vector_norm(torch.stack(norms))
                else:
                    norm = torch.nn.utils.clip_grad_norm_(list(tp.values()), 0.5)
                clipped = {k: t.grad.detach().clone() for k, t in tp.items()}
                opt.step()
                steps.append({"params": {k: t.detach().clone() for k, t in tp.items()}, "indices": mb.copy(),
                              "loss": loss.detach(), "grad": grad, "grad_norm": norm, "clipped_grad": clipped})
        if not trace:
            return steps[-1]["params"]
        return {"advantages": adv, "returns": ret, "steps": steps}

    return update


def run(fn, **kw):
    return check_update(fn, backend="torch", max_examples=8, **{**SHAPE, **HP, **kw})


def test_a_correct_update_passes_with_every_component_compared():
    rep = run(cleanrl_like())
    assert rep.passed, rep
    for cid in ("update.advantages", "update.loss", "update.gradient", "update.grad_norm", "update.optimizer_step",
                "update.minibatch_order", "update.step_count"):
        assert cid in rep.checks and cid not in [n.check_id for n in rep.not_run], cid


def test_a_correct_update_passes_in_float32():
    rep = run(cleanrl_like(), dtype="float32")
    assert rep.passed, rep


def test_only_final_parameters_are_compared_against_a_given_order():
    M = 8
    rng = np.random.default_rng(0)
    perm0 = rng.permutation(M)  # what cleanrl_like draws first; then it shuffles its own array twice
    inds = np.arange(M)
    order = []
    for _ in range(2):
        rng.shuffle(inds)
        order.append(inds.copy())
    rep = run(cleanrl_like(trace=False), order=np.stack(order))
    assert rep.passed and "update.final_params" not in rep.not_run_ids, rep
    broken = run(cleanrl_like(trace=False, bug="entropy_sign"), order=np.stack(order))
    assert broken.failed_ids == ("update.final_params",) and "return a trace" in broken.failures[0].message
    assert perm0.shape == (M,)


@pytest.mark.parametrize("bug, cid, words", [
    ("truncation_as_termination", "update.advantages", "truncated"),
    ("entropy_sign", "update.loss", "ent_coef"),
    ("value_on_advantages", "update.loss", "value"),
    ("no_zero_grad", "update.gradient", "gradient"),
    ("clip_each_tensor", "update.grad_norm", "norm"),
    ("adam_eps", "update.optimizer_step", "adam"),
    ("same_order", "update.minibatch_order", "reused across epochs"),
])
def test_each_planted_bug_is_named_by_its_component(bug, cid, words):
    rep = run(cleanrl_like(bug=bug))
    ids = [f.check_id for f in rep.failures]
    assert ids and ids[0] == cid, rep
    assert words in rep.failures[0].message, rep.failures[0].message
    if cid not in ("update.minibatch_order",):
        assert "epoch" in rep.failures[0].message or cid == "update.advantages"


def test_a_failure_shows_a_shrunk_batch_and_the_step():
    rep = run(cleanrl_like(bug="no_zero_grad"))
    ce = rep.failures[0].counterexample
    assert ce.shrunk and "step" in ce.inputs and "indices" in ce.inputs
    assert "epoch 0, minibatch 1" in rep.failures[0].message  # the first step that accumulates


def test_a_trace_without_indices_of_a_shuffling_update_is_not_judged_silently():
    def no_indices(batch, params):
        out = cleanrl_like()(batch, params)
        for s in out["steps"]:
            del s["indices"]
        return out

    rep = run(no_indices)
    assert not rep.failures and "update.gradient" in [n.check_id for n in rep.not_run]
    assert "indices" in next(n.reason for n in rep.not_run if n.check_id == "update.gradient")


def test_a_malformed_trace_is_named():
    def no_params(batch, params):
        out = cleanrl_like()(batch, params)
        del out["steps"][1]["params"]
        return out

    rep = run(no_params)
    assert rep.failures[0].check_id == "update.output_shape"
    assert "trace['steps'][1]" in rep.failures[0].message


def test_bad_arguments_are_named():
    with pytest.raises(InvalidInputError, match="no option 'clip_vf'"):
        check_update(cleanrl_like(), clip_vf=0.2)
    with pytest.raises(InvalidInputError, match="minibatch_size should be at most"):
        check_update(cleanrl_like(), n_steps=2, n_envs=1, minibatch_size=4)
    with pytest.raises(InvalidInputError, match="n_actions should be >= 2"):
        check_update(cleanrl_like(), n_actions=1)


def test_the_readme_worked_sb3_example_runs_and_passes(capsys):
    """README's "Check your whole agent" example, as written: SB3's own PPO.train() passes check_update."""
    import re
    from pathlib import Path

    pytest.importorskip("stable_baselines3")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Check your whole agent"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "PASSED" in out and "update.optimizer_step" in out, out


def test_normalised_advantages_that_are_rounding_noise_are_not_judged():
    """(A - mean) / (std + eps) of nearly equal float32 advantages is rounding noise: such a step's loss and
    gradient cannot be judged; well-spread advantages, and any float64 ones, can."""
    from refpg.algorithms.actor_critic import UpdateConfig
    from refpg.conformance._harness import Backend, Session
    from refpg.conformance.update import _Checker

    cfg = UpdateConfig(normalize_advantage="minibatch", minibatch_size=4)

    def checker(dtype):
        session = Session("update", lambda b, p: p, "refpg", Backend("torch", dtype), max_examples=1, seed=0,
                          options={})
        return _Checker(session, cfg, 3, 2, 4, 2, None, True)

    nearly_equal = np.array([0.7, 0.7, 0.7 + 2e-5, 0.7])  # std 1e-5: float32's rounding amplified 1e5 times
    spread = np.array([0.7, -0.2, 1.3, 0.1])
    assert checker("float32")._undetermined(nearly_equal)
    assert not checker("float32")._undetermined(spread)
    assert not checker("float64")._undetermined(nearly_equal)
    assert checker("float64")._undetermined(np.array([0.7, 0.7, 0.7 + 1e-9, 0.7]))


def test_a_ratio_clip_bug_is_caught_at_a_library_learning_rate():
    """At lr = 3e-4 the ratio would stay inside the clip range for a whole update, were logp_old the
    parameters' own: drawn from a nearby behaviour policy, the clipped branch is reached from the first step."""
    rep = run(cleanrl_like(bug="surrogate_max", lr=3e-4), lr=3e-4)
    assert rep.failed_ids and rep.failed_ids[0] == "update.loss", rep
    on_policy = run(cleanrl_like(bug="surrogate_max", lr=3e-4), lr=3e-4, on_policy=True)
    assert on_policy.passed and any("ratio clip" in w for w in on_policy.warnings), on_policy


def test_a_clip_no_step_reached_is_named_in_a_warning():
    rep = run(cleanrl_like(lr=3e-4), lr=3e-4)
    assert rep.passed
    assert any("no judged step reached the value clip" in w for w in rep.warnings), rep.warnings


@pytest.mark.parametrize("bug, words", [("ddof0", "norm_ddof=0"), ("norm_batch_declared_minibatch", None)])
def test_a_convention_mismatch_names_the_declaration_that_fits(bug, words):
    if bug == "ddof0":
        rep = run(cleanrl_like(bug="ddof0"))
        assert rep.failed_ids[0] in ("update.loss", "update.gradient")
        assert words in rep.failures[0].message and "instead of the declared 1" in rep.failures[0].message
    else:  # a correct per-minibatch update declared as normalising the whole batch
        rep = run(cleanrl_like(), normalize_advantage="batch")
        assert "normalize_advantage='minibatch'" in rep.failures[0].message, rep.failures[0].message


def test_an_empty_trace_fails_the_step_count():
    rep = run(lambda batch, params: {"steps": []})
    assert rep.failed_ids == ("update.step_count",) and "actual 0" in rep.failures[0].message


def test_final_parameters_of_a_shuffling_update_without_order_say_what_to_pass():
    rep = run(cleanrl_like(trace=False))
    assert not rep.failures and not rep.passed
    reason = next(n.reason for n in rep.not_run if n.check_id == "update.final_params")
    assert "pass order=" in reason


def test_a_hyperparameter_the_algorithm_does_not_read_is_named():
    from refpg.conformance.update import _ignored_options
    from refpg.algorithms.actor_critic import UpdateConfig

    given = {"algorithm": "ppo", "max_kl": 0.02, "n_epochs": 3}
    warnings = _ignored_options(UpdateConfig(**given), given)
    assert warnings == ["max_kl=0.02 is TRPO's and algorithm='ppo' does not read it: is the algorithm declared right?"]
    assert _ignored_options(UpdateConfig(algorithm="a2c", n_epochs=4), {"algorithm": "a2c", "n_epochs": 4})
