"""The ``refpg`` command line.

``refpg exact [ENV | MODULE:FUNCTION] [--json]`` prints the exact quantities of a policy on a built-in
MDP (FrozenLake 4x4, slippery, by default) or on the MDP a function of yours builds: J, V, the
occupancy d, the norm of the policy gradient, one natural-gradient step and the optimal J.

``refpg golden check [--dir DIR] [--round-trip]`` recomputes every golden case from its stored inputs
(or, with ``--round-trip``, from inputs rebuilt as ``regenerate`` would) and compares with its stored
outputs within each field's stored tolerance (non-zero exit on any mismatch);
``refpg golden regenerate [--dir DIR]`` rewrites the files.

``refpg check MODULE:FUNCTION --kind KIND [--convention C] [--option KEY=VALUE] [--json]`` checks a
user's implementation with the conformance kit; ``refpg check FILE.py`` checks every function the
file registers; ``refpg check`` alone runs the demo on the bundled examples.

``refpg study NAME [--quick] [--out DIR]`` runs one study of `refpg.studies` (figures and report.md
in DIR; default analysis/NAME, or a fresh temporary directory with ``--quick``); ``refpg study
--list`` lists them.

A mistake in the command line or in the user's code it loads (an unknown option, a bad value, a
module that does not import) prints one line ``refpg: error: ...`` and exits with status 2, never a
traceback; a failed check exits with 1, a function the kit refuses before calling it with 2 (the other
functions of a FILE.py are still checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import textwrap
from pathlib import Path

import numpy as np

from refpg._validation import did_you_mean

__all__ = ["main", "build_parser"]



class UsageError(Exception):
    """A mistake on the command line: printed as one line, exit status 2."""


def _table(header: list[str], rows: list[list], *, align: str | None = None) -> str:
    """Render a plain-text table with right-aligned numeric columns."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
    align = align or "l" + "r" * (len(header) - 1)
    def fmt(row):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align))
    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


# -- argument types: each refuses a bad value with one line ---------------------------------------

def _number(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"should be a number, actual {text!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"should be a finite number, actual {text!r}")
    return x


def _discount(text: str) -> float:
    x = _number(text)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"should be in [0, 1] (1 only for an MDP where every policy "
                                         f"terminates), actual {text}")
    return x


def _integer(minimum: int):
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"should be an integer, actual {text!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"should be >= {minimum}, actual {n}")
        return n
    return parse


def _option(text: str):
    """``key=value`` of ``--option``; the value is parsed by the option's type once --kind is known."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"should be KEY=VALUE, actual {text!r}")
    return key, value


# -- exact ----------------------------------------------------------------------------------------

def _env_names() -> list:
    from refpg import envs

    return list(envs.BUILTIN)


def _with_gamma(mdp, gamma: float | None):
    if gamma is None:
        return mdp
    from refpg.mdp import TabularMDP

    return TabularMDP(mdp.P, mdp.transition_rewards if mdp.transition_rewards is not None else mdp.r,
                      mdp.rho, gamma, mdp.terminal, name=mdp.name)


def _load_env(name: str, gamma: float | None, seed: int = 0):
    from refpg import envs

    if name == "garnet":  # the one random built-in: BUILTIN's garnet(20, 4, 3) with --seed (0 gives BUILTIN's)
        mdp = envs.garnet(20, 4, 3, seed=seed)
    elif name in envs.BUILTIN:
        mdp = envs.BUILTIN[name]()
    elif "-v" in name:
        mdp = envs.from_gymnasium(name)
    else:
        raise UsageError(f"ENV should be one of {', '.join(envs.BUILTIN)}, a Gymnasium toy-text id or "
                         f"MODULE:FUNCTION, actual {name!r}{did_you_mean(name, envs.BUILTIN)}")
    return _with_gamma(mdp, gamma)


def _user_problem(target: str, gamma: float | None):
    """Call the user's builder ``MODULE:FUNCTION``: a TabularMDP, or (mdp, policy, theta)."""
    import inspect

    import refpg
    from refpg.conformance import runner
    from refpg.policies import Parameterization

    fn = runner.load_function(target)
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise UsageError(f"{target} should take no arguments (refpg exact calls it as {target.split(':')[-1]}())") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): just call it
    try:
        out = fn()
    except Exception as exc:  # the user's code failed: say where, in one line
        raise UsageError(f"{target} raised {runner._describe_exception(exc)}") from None
    if isinstance(out, refpg.TabularMDP):
        return _with_gamma(out, gamma), None
    if isinstance(out, tuple) and len(out) == 3:
        mdp, policy, theta = out
        if not isinstance(mdp, refpg.TabularMDP):
            raise UsageError(f"{target} returned a tuple whose first entry should be a refpg.TabularMDP, "
                             f"actual {type(mdp).__name__}")
        if not isinstance(policy, Parameterization):
            raise UsageError(f"{target} returned a tuple whose second entry should be a refpg policy "
                             f"(TabularSoftmax, LogLinear, ...), actual {type(policy).__name__}")
        theta = np.asarray(theta, dtype=float)
        if theta.shape != tuple(policy.theta_shape):
            raise UsageError(f"{target}: theta should have shape {tuple(policy.theta_shape)} (the policy's "
                             f"theta_shape), actual {theta.shape}")
        return _with_gamma(mdp, gamma), (policy, theta)
    raise UsageError(f"{target} should return a refpg.TabularMDP or a tuple (mdp, policy, theta), "
                     f"actual {type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, tuple) else ""))


def cmd_exact(args) -> int:
    import refpg

    if ":" in args.env:
        mdp, given = _user_problem(args.env, args.gamma)
    else:
        mdp, given = _load_env(args.env, args.gamma, args.seed), None
    if given is not None:
        if args.theta is not None:
            raise UsageError(f"--theta does not apply: {args.env} returned its own policy and theta")
        pol, theta = given
        policy_desc = f"{type(pol).__name__}, theta as {args.env} returned it"
    else:
        pol = refpg.TabularSoftmax.for_mdp(mdp)
        if args.theta in (None, "uniform"):
            theta = np.zeros(pol.theta_shape)
            policy_desc = "tabular softmax, uniform (theta = 0)"
        else:
            theta = np.random.default_rng(args.seed).normal(size=pol.theta_shape)
            policy_desc = f"tabular softmax, random, theta ~ N(0, 1), seed {args.seed}"
    pi = pol.probs(theta)
    ev = refpg.evaluate(mdp, pi)
    grad = refpg.policy_gradient(mdp, pol, theta, evaluation=ev)
    nat = refpg.natural_gradient(mdp, pol, theta, evaluation=ev)
    opt = refpg.optimal_policy(mdp)
    theta_new = theta + args.eta * nat
    J_new = refpg.objective(mdp, pol, theta_new)
    kl_mean = refpg.kl_divergence(mdp, pol, theta_new, theta_old=theta, evaluation_old=ev)
    kl_max = refpg.kl_divergence(mdp, pol, theta_new, theta_old=theta, reduction="max", evaluation_old=ev)

    if args.json:
        data = {
            "mdp": repr(mdp), "name": mdp.name, "n_states": int(mdp.n_states), "n_actions": int(mdp.n_actions),
            "gamma": float(mdp.gamma), "policy": policy_desc, "theta": theta.tolist(),
            "J": float(ev.J), "J_star": float(opt.J),
            "policy_gradient": np.asarray(grad).tolist(), "policy_gradient_norm": float(np.linalg.norm(grad)),
            "natural_gradient": np.asarray(nat).tolist(), "natural_gradient_norm": float(np.linalg.norm(nat)),
            "npg_step": {"eta": args.eta, "J_after": float(J_new), "improvement": float(J_new - ev.J),
                         "kl_mean": float(kl_mean), "kl_max": float(kl_max)},
            "horizon": float(ev.horizon),
            "states": {"terminal": np.asarray(mdp.terminal).astype(bool).tolist(), "rho": mdp.rho.tolist(),
                       "d": ev.d.tolist(), "V": ev.V.tolist(), "V_star": opt.V.tolist(),
                       "a_star": opt.pi.argmax(axis=1).tolist()},
        }
        print(json.dumps(data, indent=2, allow_nan=False))
        return 0

    print(f"refpg exact: {mdp!r}")
    print(f"policy: {policy_desc}\n")
    S, m = mdp.n_states, args.max_rows
    shown = range(S) if S <= m else list(range((m + 1) // 2)) + list(range(S - m // 2, S))
    rows = []
    for s in shown:
        rows.append([s, "yes" if mdp.terminal[s] else "", f"{mdp.rho[s]:.3g}", f"{ev.d[s]:.6f}",
                     f"{ev.V[s]:+.6f}", f"{opt.V[s]:+.6f}", int(opt.pi[s].argmax())])
    print(_table(["state", "terminal", "rho", "d(s)", "V(s)", "V*(s)", "a*(s)"], rows))
    if S > m:
        print(f"... ({S - len(rows)} of {S} states not shown; --max-rows to change)")
    print()
    summary = [
        ["J(pi) = rho . V", f"{ev.J:+.10f}"],
        ["J* (policy iteration)", f"{opt.J:+.10f}"],
        ["J(pi) / J*", f"{ev.J / opt.J:.6f}" if opt.J != 0 else "n/a"],
        ["||grad J||_2 (policy gradient theorem)", f"{np.linalg.norm(grad):.6e}"],
        ["||F^+ grad J||_2 (natural gradient)", f"{np.linalg.norm(nat):.6e}"],
        [f"J after one NPG step, eta = {args.eta:g}", f"{J_new:+.10f}"],
        ["  improvement", f"{J_new - ev.J:+.3e}"],
        ["  mean KL(pi_old || pi_new) under d_old", f"{kl_mean:.6e}"],
        ["  max KL over visited states", f"{kl_max:.6e}"],
        ["effective horizon 1/(1 - gamma)", f"{ev.horizon:.6g}"],
    ]
    print(_table(["quantity", "value"], summary, align="lr"))
    return 0


# -- golden ---------------------------------------------------------------------------------------

def _golden_dir(given: str | None, *, installed: bool) -> Path:
    """--dir, else ./golden, else (if `installed`) the golden/ of the checkout refpg is installed from."""
    if given is not None:
        return Path(given)
    import refpg

    candidates = [Path("golden")]
    if installed:  # only to read: regenerate never writes into a checkout it was not run in
        candidates.append(Path(refpg.__file__).resolve().parents[2] / "golden")
    for candidate in candidates:
        if (candidate / "schema.json").is_file():
            return candidate
    where = "neither ./golden nor one next to the installed refpg" if installed else "no ./golden"
    raise UsageError(f"no golden directory found ({where}): point at a checkout's golden files with "
                     f"--dir PATH/TO/refpg/golden")


def cmd_golden(args) -> int:
    from refpg import golden

    directory = _golden_dir(args.dir, installed=args.golden_command == "check")
    if args.dir is None:
        print(f"golden files: {directory}")
    if args.golden_command == "regenerate":
        for path in golden.regenerate(directory):
            print(f"wrote {path}")
        return 0
    if not directory.is_dir() or not any(p.name != "schema.json" for p in directory.glob("*.json")):
        what = "is not a directory" if not directory.is_dir() else "holds no case files (*.json)"
        raise UsageError(f"--dir {directory} {what}: point --dir at the golden/ directory of a refpg checkout")
    report = golden.check(directory, round_trip=args.round_trip)
    rows = [[f.case, f.field, f"{f.max_abs_error:.3e}", f"{f.max_rel_error:.3e}", f"{f.atol:g}", f"{f.rtol:g}",
             f"{f.used:.1e}", "ok" if f.passed else f"FAIL {f.message}".rstrip()] for f in report.fields]
    if rows:
        print(_table(["case", "field", "max abs err", "max rel err", "atol", "rtol", "err/tol", "result"], rows,
                     align="llrrrrrl"))
    n_cases = len({f.case for f in report.fields})
    if report.passed:
        print(f"\n{n_cases} cases, {len(report.fields)} fields: all within tolerance")
        return 0
    print(f"\n{n_cases} cases, {len(report.fields)} fields: {len(report.failures)} FAILED", file=sys.stderr)
    return 1


# -- study ----------------------------------------------------------------------------------------

def cmd_study(args) -> int:
    from refpg import studies

    if args.list:
        if args.name is not None:
            raise UsageError("give either a study NAME or --list, not both")
        rows = [[name, (mod.__doc__ or "").strip().splitlines()[0]] for name, mod in studies.STUDIES.items()]
        print(_table(["study", "description"], rows, align="ll"))
        return 0
    if args.name is None:
        raise UsageError(f"give a study NAME ({', '.join(studies.STUDIES)}) or --list")
    if args.name not in studies.STUDIES:
        raise UsageError(f"study should be one of {', '.join(studies.STUDIES)}, actual {args.name!r}"
                         f"{did_you_mean(args.name, studies.STUDIES)}")
    if args.out is not None:
        out = args.out
    elif args.quick:  # never over the committed full-mode results in analysis/NAME
        import tempfile

        out = tempfile.mkdtemp(prefix=f"refpg-study-{args.name}-")
    else:
        out = f"analysis/{args.name}"
    from refpg.studies._common import prepare_out_dir

    prepare_out_dir(out)  # a file in the way or an unwritable place: one line now, not after the run
    headline = studies.run_study(args.name, quick=args.quick, out_dir=out)
    print(f"refpg study {args.name}{' --quick' if args.quick else ''}: figures and report.md in {out}")
    for key, value in headline.items():
        if isinstance(value, dict):
            continue
        print(f"  {key}: {value}")
    return 0


# -- check ----------------------------------------------------------------------------------------

#: One phrase per ``--option`` key of ``refpg check``: what it means (type and default come from the check).
_OPTION_MEANINGS = {
    ("gae", "returns"): "TARGET returns the pair (advantages, returns); the returns are checked too",
    ("ppo_loss", "normalize"): "advantage normalisation per minibatch: none, or batch ((A - mean) / (std + eps))",
    ("ppo_loss", "ddof"): "delta degrees of freedom of that std (1: torch's .std(), 0: NumPy's)",
    ("gae", "output"): "what TARGET returns: advantages, or the pair in the order advantages,returns or "
                       "returns,advantages (returns = advantages + values, before any whitening); default: "
                       "advantages, the pair under rlhf, openrlhf, spinningup and rllib",
    ("gae", "whiten"): "TARGET whitens its advantages over the whole batch, (A - mean) / (std + eps)",
    ("gae", "whiten_ddof"): "delta degrees of freedom of the whitening std (1: torch's, verl's; 0: NumPy's)",
    ("gae", "whiten_eps"): "the whitening's eps",
    ("gae", "whiten_eps_on"): "where eps enters: std (std + eps), var (rsqrt(var + eps), verl and TRL) or "
                              "clamp (rsqrt(max(var, eps)), OpenRLHF)",
    ("gae", "whiten_count_eps"): "added to the token count of the masked mean (recent verl: 1e-8; rlhf, "
                                 "openrlhf)",
    ("gae", "whiten_single_token"): "a batch with one response token whitens to zero, or is left raw "
                                    "(rlhf, openrlhf)",
    ("ppo_loss", "eps"): "added to the std before dividing",
    ("ppo_loss", "dual_clip"): "the dual-clip bound c > 1: for A < 0 the objective is at least c * A "
                               "(verl's clip_ratio_c)",
    ("ppo_loss", "count_eps"): "the mean divides by the sample count + count_eps (verl's masked_mean: 1e-8)",
    ("ppo_loss", "eps_low"): "lower clip range, ratio >= 1 - eps_low (DAPO's clip-higher: eps_low < eps_high)",
    ("ppo_loss", "eps_high"): "upper clip range, ratio <= 1 + eps_high",
    ("ppo_loss", "clip_fraction"): "what a returned clip fraction counts: any (|ratio - 1| > eps) or active "
                                   "(the clipped branch is taken, which depends on the advantage's sign: TRL, "
                                   "verl, OpenRLHF)",
    ("value_loss", "style"): "how the new value is clipped: not at all, the max of the clipped and "
                             "unclipped errors as CleanRL, or the prediction clipped as SB3",
    ("value_loss", "coef"): "the factor in front of the squared error (0.5 for 0.5 * mean((v - R)^2))",
    ("kl_estimator", "unbiased"): "TARGET claims E[estimate] = KL (k1, k3 do; k2 does not)",
    ("kl_estimator", "non_negative"): "TARGET claims every estimate is >= 0 (k2, k3 do; k1 does not)",
    ("kl_estimator", "alpha"): "false-alarm rate of the unbiasedness test",
    ("reinforce_estimator", "objective"): "the target gradient: discounted (step t weighed by gamma^t), "
                                          "undiscounted (gamma = 1 on the episodic test MDP) or gamma_free "
                                          "(the common form without gamma^t)",
    ("reinforce_estimator", "normalization"): "what TARGET divides its sum by: the number of episodes, the "
                                              "number of steps in the batch (a .mean() over all steps), or "
                                              "nothing",
    ("reinforce_estimator", "alpha"): "false-alarm rate of the mean test",
    ("reinforce_estimator", "calls"): "independent batches TARGET is called on (>= 30)",
    ("reinforce_estimator", "episodes_per_call"): "episodes per batch (calls x episodes_per_call >= 2000)",
    ("trpo_step", "damping"): "the damping TARGET adds to the Fisher matrix (SB3-contrib's cg_damping)",
    ("trpo_step", "min_cosine"): "least cosine between TARGET's step and the oracle's direction",
    ("group_advantages", "estimator"): "the group advantage TARGET computes: rloo, group_mean as Dr. GRPO, grpo "
                                       "normalised by the group's std, or reinforce_pp whitened over the batch",
    ("group_advantages", "std"): "which std GRPO divides by: bessel as torch's .std() (TRL, verl) or population",
    ("group_advantages", "eps"): "the eps added to the std; none takes the convention's (1e-6 refpg, verl; 1e-4 trl)",
    ("group_advantages", "scale_rewards"): "for the trl convention only, divide by the group's std, the batch's "
                                           "std, or nothing; none means group",
    ("token_policy_loss", "loss"): "the token loss TARGET computes: ppo_clip, gspo (sequence ratio) or cispo",
    ("token_policy_loss", "eps_low"): "lower clip range, ratio >= 1 - eps_low",
    ("token_policy_loss", "eps_high"): "upper clip range, ratio <= 1 + eps_high; none takes eps_low",
    ("token_policy_loss", "dual_clip"): "the dual-clip bound c for A < 0; default is the convention's, none is off",
    ("token_policy_loss", "aggregation"): "how token losses are averaged, with verl's loss_agg_mode names",
    ("token_policy_loss", "norm_length"): "the constant L_norm of seq-mean-token-sum-norm; none is the padded length",
    ("token_policy_loss", "accumulation"): "how micro-batch losses are combined: global totals passed in, "
                                           "weighted by tokens or sequences, divided by steps, or none (unchecked)",
    ("token_policy_loss", "empty_rows"): "whether a response with no token counts in n (count) or is left out (skip)",
    ("token_policy_loss", "count_eps"): "the eps added to each response's token count in seq-mean-token-mean",
    ("token_policy_loss", "advantages"): "the advantages TARGET takes: one per token or one per sequence",
    ("token_policy_loss", "loss_type"): "for the trl convention, TRL's loss_type, which sets the aggregation",
    ("token_policy_loss", "importance_sampling_level"): "for the trl convention, token ratios or the sequence "
                                                        "ratio of GSPO",
    ("llm_loss", "target"): "what the mean gradient is tested against: declared is the exact mean of the "
                            "declared loss, unbiased is -(grad J - beta grad KL_seq) on-policy",
    ("llm_loss", "group_size"): "G, responses per prompt",
    ("llm_loss", "n_groups"): "prompts per batch",
    ("llm_loss", "advantage"): "the group advantage of the loss: rloo, group_mean as Dr. GRPO, grpo normalised "
                               "by the std, or reinforce_pp whitened over the batch",
    ("llm_loss", "std"): "which std GRPO divides by: bessel as torch's .std() or population",
    ("llm_loss", "adv_eps"): "the eps added to the std; none is 1e-6 for grpo and 1e-8 for reinforce_pp",
    ("llm_loss", "loss"): "the token loss of TARGET: ppo_clip, gspo with the sequence ratio, or cispo",
    ("llm_loss", "eps_low"): "lower clip range, ratio >= 1 - eps_low",
    ("llm_loss", "eps_high"): "upper clip range, ratio <= 1 + eps_high; none takes eps_low",
    ("llm_loss", "dual_clip"): "the dual-clip bound c > 1 for A < 0; none is off",
    ("llm_loss", "aggregation"): "how token losses are averaged (verl's loss_agg_mode names)",
    ("llm_loss", "norm_length"): "the constant L_norm of seq-mean-token-sum-norm; none is the tree's maximum length",
    ("llm_loss", "kl"): "the per-token KL estimator to the reference policy; none means no KL term",
    ("llm_loss", "kl_coef"): "beta, the KL coefficient",
    ("llm_loss", "kl_placement"): "where the KL enters: added to each token's loss, or in the reward as a "
                                  "return-to-go penalty on each token's advantage",
    ("llm_loss", "kl_importance"): "the KL penalty in the loss is k, sg(r) k (detached) or r k (differentiated)",
    ("llm_loss", "alpha"): "false-alarm rate of the mean test",
    ("llm_loss", "n_batches"): "the number of batches per stage, at least 500",
    ("kl_penalty", "value"): "what the estimates' mean under pi is: unbiased (the KL exactly, and 0 at "
                             "pi = pi_ref; k1, k3) or any (unchecked; k2)",
    ("kl_penalty", "gradient"): "the expected gradient TARGET has as a loss: reverse (grad KL_seq), local "
                                "(g_loc, k2), forward (the forward-KL gradient, k3), zero (k1); none (default) leaves it "
                                "unchecked, with a warning",
    ("kl_penalty", "kl_type"): "the library's estimator name, passed as verl's kl_penalty= or OpenRLHF's "
                               "kl_estimator= (verl and openrlhf conventions only)",
    ("kl_penalty", "max_log_ratio"): "the largest |log pi_ref - log pi| any drawn case holds (none: no bound)",
    ("gaussian_log_prob", "scale"): "what the scale argument holds: log_std or std; none is the convention's",
    ("gaussian_log_prob", "state_dependent"): "one scale row per sample (true) or one shared vector; none: the convention's",
    ("gaussian_log_prob", "min_log_std"): "the smallest log-std the drawn cases hold",
    ("gaussian_kl", "scale"): "what the scale argument holds: log_std or std; none is the convention's",
    ("gaussian_kl", "state_dependent"): "one scale row per sample (true) or one shared vector; none: the convention's",
    ("gaussian_kl", "min_log_std"): "the smallest log-std the drawn cases hold",
    ("squashed_log_prob", "scale"): "what the scale argument holds: log_std or std; none is the convention's",
    ("squashed_log_prob", "state_dependent"): "one scale row per sample (true) or one shared vector; none: the convention's",
    ("squashed_log_prob", "min_log_std"): "the smallest log-std the drawn cases hold",
    ("gaussian_ppo_loss", "scale"): "what the scale argument holds: log_std or std; none is the convention's",
    ("gaussian_ppo_loss", "state_dependent"): "one scale row per sample (true) or one shared vector; none: the convention's",
    ("gaussian_ppo_loss", "min_log_std"): "the smallest log-std the drawn cases hold",
    ("gaussian_log_prob", "entropy"): "TARGET also returns the entropy (summed over dimensions), checked too",
    ("gaussian_kl", "direction"): "which KL TARGET computes: forward is KL(first || second), reverse the other",
    ("squashed_log_prob", "pre_tanh"): "whether TARGET is given the pre-tanh value u or only the action; none is the "
                                        "convention's",
    ("squashed_log_prob", "eps"): "the declared eps of log(1 - tanh^2 + eps); 0 requires the exact form, none is "
                                   "the convention's (SB3: 1e-6)",
    ("squashed_log_prob", "low"): "lower bound of the action box (rescaling adds -sum log((high - low)/2))",
    ("squashed_log_prob", "high"): "upper bound of the action box",
    ("squashed_log_prob", "entropy"): "TARGET also returns the entropy, checked against quadrature",
    ("squashed_log_prob", "max_pre_tanh"): "the largest |pre-tanh value| the drawn cases hold (saturation)",
    ("gaussian_ppo_loss", "normalize"): "advantage normalisation, none or batch; unset: the convention's",
    ("gaussian_ppo_loss", "ddof"): "delta degrees of freedom of the normalising std; none is the convention's",
    ("gaussian_ppo_loss", "adv_eps"): "the eps added to the advantages' std; none is the convention's",
    # check_update: the drawn problem, then the update's hyperparameters (UpdateConfig)
    # check_pipeline_gradient
    ("pipeline_gradient", "n_seeds"): "calls of TARGET, one buffer each from its own seed (at least 50)",
    ("pipeline_gradient", "n_steps"): "rollout length T of each buffer TARGET collects",
    ("pipeline_gradient", "n_envs"): "parallel environments N of each buffer",
    ("pipeline_gradient", "max_episode_steps"): "the environments' time limit (short, so that truncations are many)",
    ("pipeline_gradient", "gae_lambda"): "the lambda passed to TARGET; with the exact critic the target does not "
                                         "depend on it",
    ("pipeline_gradient", "actor_bias"): "the actor's logits have a bias vector whose gradient TARGET returns",
    ("pipeline_gradient", "critic_bias"): "the critic has a bias (set so that V is exact)",
    ("pipeline_gradient", "reduction"): "how TARGET's loss reduces the minibatch: mean (c = 1) or sum (c = its size)",
    ("pipeline_gradient", "minibatch_size"): "the size of the first minibatch; none: the whole buffer",
    ("pipeline_gradient", "ent_coef"): "the entropy coefficient of TARGET's loss (its exact mean gradient is added)",
    ("pipeline_gradient", "normalize_advantage"): "must be false: a normalised advantage's mean gradient is not the "
                                                  "policy gradient's",
    ("pipeline_gradient", "alpha"): "the family-wise false-alarm rate of the Student-t test",
    ("update", "n_states"): "states S of the drawn tabular problems (one-hot observations of length S)",
    ("update", "n_actions"): "actions A of the drawn problems, at least 2",
    ("update", "n_steps"): "rollout length T of the batch (a library's n_steps)",
    ("update", "n_envs"): "parallel environments N of the batch (a library's n_envs)",
    ("update", "actor_bias"): "the actor's logits have a bias vector (SB3's action_net does)",
    ("update", "critic_bias"): "the critic's value has a bias (SB3's value_net does)",
    ("update", "order"): "each epoch's permutation of the flat samples, from Python only; unset: read from the "
                         "trace's indices",
    ("update", "reshuffle"): "TARGET draws a fresh permutation every epoch; false accepts one reused order",
    ("update", "on_policy"): "PPO: false draws logp_old from a nearby behaviour policy so the ratio clip binds "
                             "from the first step; true uses the parameters' own",
    ("update", "algorithm"): "ppo: epochs of minibatch steps on the clipped surrogate; a2c: one step on "
                             "-mean(log pi * A)",
    ("update", "gamma"): "the discount of the batch's GAE",
    ("update", "gae_lambda"): "the lambda of the batch's GAE",
    ("update", "clip_range"): "PPO's epsilon: the ratio is clipped to [1 - eps, 1 + eps]",
    ("update", "clip_range_vf"): "the value prediction is clipped to old value +- this; none: no clipping",
    ("update", "value_clip"): "with clip_range_vf: the loss of the clipped prediction only (SB3), or the larger "
                              "of both losses (CleanRL, TorchRL)",
    ("update", "n_epochs"): "passes over the batch in one update",
    ("update", "minibatch_size"): "samples per optimiser step; none: the whole batch",
    ("update", "normalize_advantage"): "advantage normalisation once per batch or per minibatch (SB3, CleanRL); "
                                       "none: off",
    ("update", "norm_ddof"): "delta degrees of freedom of that std (1: torch's .std())",
    ("update", "norm_eps"): "added to the std before dividing",
    ("update", "norm_eps_on"): "where norm_eps enters: std (std + eps, SB3 and CleanRL) or clamp (max(std, eps), "
                               "TorchRL)",
    ("update", "truncation"): "bootstrap a time limit from next_values (the contract), or cut it like a "
                              "termination as CleanRL's and PureJaxRL's scripts do",
    ("update", "advantages"): "GAE computed once per update, or again every epoch with the current critic as "
                              "TorchRL's PPO tutorial does",
    ("update", "value_loss"): "the per-sample value loss: mse (SB3), half_mse (CleanRL) or smooth_l1 (TorchRL)",
    ("update", "vf_coef"): "the value loss's coefficient in the total loss",
    ("update", "ent_coef"): "the entropy bonus's coefficient (the loss subtracts ent_coef x entropy)",
    ("update", "max_grad_norm"): "global gradient-norm clipping over every parameter; none: off",
    ("update", "optimizer"): "the optimiser TARGET steps: adam, sgd or rmsprop",
    ("update", "lr"): "the optimiser's learning rate (the actor's when critic_lr is set)",
    ("update", "betas"): "Adam's moment decay rates, given as beta1,beta2",
    ("update", "eps"): "Adam's or RMSprop's epsilon (SB3 and CleanRL: 1e-5)",
    ("update", "alpha"): "RMSprop's smoothing constant (optax: decay)",
    ("update", "momentum"): "momentum of SGD or RMSprop",
    ("update", "weight_decay"): "the optimiser's coupled weight decay",
    ("update", "optimizer_convention"): "whose optimiser and clipping definitions: torch or optax",
    ("update", "critic_lr"): "a second optimiser for the critic with this learning rate; none: one optimiser",
    ("update", "target_kl"): "stop the update before a step whose approximate KL exceeds 1.5 target_kl (SB3)",
    ("update", "max_kl"): "TRPO's trust region delta on the batch's mean KL (sb3-contrib's target_kl)",
    ("update", "cg_max_steps"): "TRPO's conjugate-gradient iterations",
    ("update", "cg_damping"): "TRPO's damping added to the Fisher matrix, F + damping I",
    ("update", "line_search_shrinking_factor"): "TRPO's backtracking factor of the step",
    ("update", "line_search_max_iter"): "TRPO's number of line-search tries before the step is rejected",
    ("update", "n_critic_updates"): "TRPO's epochs of minibatch value regression after the policy step",
    ("update", "kl_direction"): "the KL of TRPO's constraint: old_new is KL(pi_old || pi) as the paper, new_old "
                                "KL(pi || pi_old) as sb3-contrib",
    ("update", "flatten"): "how the trace's indices number sample t of env n: time_major is t N + n "
                           "(CleanRL), env_major n T + t (SB3)",
}


def _options_listing() -> str:
    """The ``--option`` keys of every kind, each with its meaning, type and default, for ``refpg check --help``."""
    from refpg.conformance import runner

    lines = ["options of each kind (--option KEY=VALUE; bool: true/false):"]
    width = max(map(len, runner.KINDS))
    for kind in runner.KINDS:
        items = [opt for opt in runner.options_of(kind).values() if opt.name not in runner.FLAG_OPTIONS]
        lines.append(f"  {kind}" + ("" if items else ": none"))
        for opt in items:
            type_ = "|".join(opt.choices) if opt.choices else opt.type
            default = opt.default if isinstance(opt.default, str) and " " in opt.default else repr(opt.default)
            meaning = _OPTION_MEANINGS.get((kind, opt.name), "")
            text = f"{opt.name}: {meaning}{' ' if meaning else ''}({type_}, default {default})"
            lines.append(textwrap.fill(text, 100, initial_indent="    ", subsequent_indent="      "))
    lines.append("conventions of each kind (--convention):")
    lines += [f"  {kind.ljust(width)}  {', '.join(runner.CONVENTIONS[kind])}" for kind in runner.KINDS]
    return "\n".join(lines)


def _check_jobs(args) -> list:
    """(fn, kind, kwargs, label) per function to check, every option validated before anything runs."""
    from refpg.conformance import runner

    target = args.target
    common = dict(backend=args.backend, dtype=args.dtype, seed=args.seed)
    if target.endswith(".py") and ":" not in target:
        given = [flag for flag, value in (("--kind", args.kind), ("--convention", args.convention),
                                          ("--option", args.option)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} apply to MODULE:FUNCTION or FILE.py:FUNCTION; the functions of "
                             f"{target} carry theirs in @register(KIND, ...)")
        jobs = []
        for reg in runner.load_file(target):
            kwargs = {**common, **reg.kwargs}
            if args.max_examples is not None and "max_examples" in runner.options_of(reg.kind):
                kwargs["max_examples"] = args.max_examples
            jobs.append((reg.fn, reg.kind, kwargs, reg.label))
        return jobs
    if ":" not in target:
        hint = f"; did you mean {target}.py (a file) or {target}:FUNCTION?" if Path(target + ".py").is_file() else ""
        raise UsageError(f"TARGET should be MODULE:FUNCTION, FILE.py:FUNCTION or FILE.py, actual {target!r}{hint}")
    if args.kind is None:
        raise UsageError(f"{target} needs --kind, one of {', '.join(runner.KINDS)}")
    kind = args.kind
    convention = args.convention or "refpg"
    if convention not in runner.CONVENTIONS[kind]:
        raise UsageError(f"--convention should be one of {', '.join(runner.CONVENTIONS[kind])} for --kind {kind}, "
                         f"actual {convention!r}{did_you_mean(convention, runner.CONVENTIONS[kind])}")
    accepted = runner.options_of(kind)
    kwargs = {**common, "convention": convention}
    if args.max_examples is not None:
        if "max_examples" not in accepted:
            budget = {"pipeline_gradient": "n_seeds"}.get(kind, "calls")
            raise UsageError(f"--max-examples does not apply to --kind {kind} (its budget is --option {budget}=N)")
        kwargs["max_examples"] = args.max_examples
    options = {}
    for key, text in args.option:
        if key in options:
            raise UsageError(f"--option {key} is given twice")
        options[key] = runner.parse_option(kind, key, text)
    fn = runner.load_function(target)
    label = target if target.split(":")[0].endswith(".py") else None
    return [(fn, kind, {**kwargs, **options}, label)]


def cmd_check(args) -> int:
    from refpg.conformance import _harness, runner

    if args.target is None:
        given = [flag for flag, value in (("--kind", args.kind), ("--convention", args.convention),
                                          ("--option", args.option), ("--json", args.json)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} a TARGET (MODULE:FUNCTION, FILE.py:FUNCTION or FILE.py); "
                             f"without one, refpg check runs the demo")
        return runner.demo(everything=args.all_examples)
    if args.all_examples:
        raise UsageError("--all-examples is for the demo (refpg check with no TARGET)")
    from refpg.errors import InvalidInputError

    jobs = _check_jobs(args)
    failed, refused, entries = 0, 0, []
    for fn, kind, kwargs, label in jobs:
        shown = label or args.target
        # A slow function can make a check take minutes: say so on stderr while it runs.
        _harness.PROGRESS["stream"] = sys.stderr
        try:
            report = runner.check(kind, fn, **kwargs)
        except InvalidInputError as exc:
            # Refused before any call (its signature, an option): the other functions are still checked.
            if len(jobs) == 1 and not args.json:
                raise UsageError(f"{shown}: {exc}") from None
            refused += 1
            print(f"refpg: error: {shown}: {exc}", file=sys.stderr)
            entries.append({"kind": kind, "function": shown, "verdict": "refused", "message": str(exc)})
            continue
        finally:
            _harness.PROGRESS["stream"] = None
        if label is not None:
            report = dataclasses.replace(report, function=label)
        entries.append(report.to_dict())
        if not args.json:
            print(report, end="\n\n")
        failed += not report.passed
    passed = len(jobs) - failed - refused
    if args.json:
        print(json.dumps({"passed": passed, "failed": failed, "refused": refused, "total": len(jobs),
                          "reports": entries}, indent=2, allow_nan=False))
    else:
        print(f"refpg check: {passed} of {len(jobs)} passed"
              + (f", {failed} failed" if failed else "") + (f", {refused} refused" if refused else ""))
    return 2 if refused else 1 if failed else 0


# -- the parser -----------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, with the closest valid choice when there is one."""

    def error(self, message):
        # Python 3.11 quotes the choices, later versions may not.
        m = re.search(r"invalid choice: (.*?) \(choose from (.*)\)", message)
        if m:
            message += did_you_mean(m.group(1).strip("'"), [c.strip().strip("'") for c in m.group(2).split(",")])
        raise UsageError(f"{message} (see {self.prog} --help)")

    def exit(self, status=0, message=None):
        if message:
            print(message, end="" if message.endswith("\n") else "\n", file=sys.stderr)
        raise _Exit(status)


class _Exit(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=100)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("refpg")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The ``refpg`` parser; every option has help text."""
    parser = _Parser(prog="refpg", formatter_class=_Formatter,
                     description="refpg: a reference oracle for policy-gradient RL. "
                                 "With no command, runs 'refpg check' (the conformance demo).")
    parser.add_argument("--version", action="version", version=f"refpg {_version()}",
                        help="print refpg's version and exit")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                help="run 'refpg COMMAND --help' for its options")

    names = ", ".join(_env_names())
    p = sub.add_parser(
        "exact", help="exact quantities of a policy on a built-in MDP or on your own", formatter_class=_Formatter,
        description="Print J, V, the occupancy d, the policy gradient, one natural-gradient step and J* "
                    "of a tabular softmax policy, computed exactly.",
        epilog=textwrap.fill(f"environments (ENV): {names}, or any Gymnasium toy-text id (with gymnasium "
                             f"installed).", 100, subsequent_indent="  ") + "\n"
               "your own MDP (MODULE:FUNCTION or FILE.py:FUNCTION): a function called with no arguments that\n"
               "  returns either a refpg.TabularMDP (the policy is then a tabular softmax, see --theta) or a\n"
               "  tuple (mdp, policy, theta) with a refpg policy (TabularSoftmax, LogLinear, ...) and its theta.")
    p.add_argument("env", nargs="?", default="frozen_lake", metavar="ENV",
                   help="a built-in MDP (listed below; default: frozen_lake, 4x4 slippery), a Gymnasium "
                        "toy-text id, or MODULE:FUNCTION / FILE.py:FUNCTION building your own")
    p.add_argument("--gamma", type=_discount, default=None, help="override the MDP's discount, in [0, 1]")
    p.add_argument("--theta", choices=("uniform", "random"), default=None,
                   help="the softmax policy's parameters: uniform (theta = 0, the default) or random "
                        "(theta ~ N(0, 1), drawn with --seed)")
    p.add_argument("--seed", type=_integer(0), default=0,
                   help="seeds the random theta of --theta random and the generation of garnet (20 states, "
                        "4 actions, 3 successors; the only random built-in MDP); default 0")
    p.add_argument("--eta", type=_number, default=1.0, help="natural-gradient step size (default 1)")
    p.add_argument("--max-rows", type=_integer(1), default=64,
                   help="show at most this many states in the table (default 64)")
    p.add_argument("--json", action="store_true",
                   help="print every quantity as JSON instead (all states, gradients in full)")
    p.set_defaults(func=cmd_exact, _parser=p)

    g = sub.add_parser("golden", help="check or regenerate the golden reference files", formatter_class=_Formatter,
                       description="Check or regenerate the golden reference files (golden/ of a refpg checkout).")
    gsub = g.add_subparsers(dest="golden_command", required=True, metavar="ACTION",
                            help="check: compare with the stored files; regenerate: rewrite them")
    for name, help_ in (("check", "recompute every case from its inputs and compare with its outputs"),
                        ("regenerate", "rewrite every case file and schema.json")):
        gp = gsub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                             formatter_class=_Formatter)
        gp.add_argument("--dir", default=None,
                        help="directory of the golden files (default: ./golden, else the golden/ of the "
                             "checkout refpg is installed from)")
        if name == "check":
            gp.add_argument("--round-trip", action="store_true",
                            help="rebuild the inputs too, as regenerate would, and require them unchanged")
        gp.set_defaults(func=cmd_golden, _parser=gp)
    g.set_defaults(_parser=g)

    st = sub.add_parser("study", help="run an exact study that reproduces a published result (figures + report)",
                        formatter_class=_Formatter,
                        description="Run an exact study of refpg.studies: PNG figures and report.md.")
    st.add_argument("name", nargs="?", default=None, metavar="NAME", help="study name (see --list)")
    st.add_argument("--list", action="store_true", help="list the studies and exit")
    st.add_argument("--quick", action="store_true",
                    help="smaller budgets (as in the tests); writes to a fresh temporary directory unless --out")
    st.add_argument("--out", default=None, metavar="DIR",
                    help="output directory (default: analysis/NAME; with --quick a fresh temporary directory)")
    st.set_defaults(func=cmd_study, _parser=st)

    ck = sub.add_parser("check", help="check your implementation (GAE, PPO loss, ...) against the oracle; "
                                      "with no target, a demo on the bundled examples",
                        formatter_class=_Formatter,
                        description="Check your implementation against refpg's oracle with the conformance kit.\n\n"
                                    "exit status: 0 when every function passes; 1 when a check failed; 2 when a\n"
                                    "function was refused before any call (a signature its convention cannot call,\n"
                                    "reported as 'refpg: error: FILE.py:NAME: ...' while the other functions are\n"
                                    "still checked; --json lists it with verdict \"refused\") or the command line\n"
                                    "or the code it loads is wrong. Refusal wins over failure.",
                        epilog=_options_listing())
    ck.add_argument("target", nargs="?", default=None, metavar="TARGET",
                    help="MODULE:FUNCTION or FILE.py:FUNCTION (with --kind), or FILE.py that registers functions "
                         "with @refpg.conformance.register; none: the bundled demo")
    from refpg.conformance import runner

    ck.add_argument("--kind", default=None, choices=runner.KINDS, help="what TARGET computes")
    ck.add_argument("--convention", default=None, choices=sorted({c for cs in runner.CONVENTIONS.values() for c in cs}),
                    help="whose signature and defaults TARGET follows (default refpg; each kind's are listed below)")
    ck.add_argument("--backend", default="auto", choices=("auto", "numpy", "torch", "jax"),
                    help="arrays passed to TARGET: NumPy, torch tensors or JAX arrays (default auto: whichever "
                         "it accepts)")
    ck.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                    help="floating type of the inputs (default float64)")
    ck.add_argument("--seed", type=_integer(0), default=0, help="seed of the drawn inputs (default 0)")
    ck.add_argument("--max-examples", type=_integer(1), default=None, metavar="N",
                    help="cases per scenario (default: the kind's own, 100 for most kinds and 10 for update, "
                         "whose every case is a whole update)")
    ck.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                    help="an option of the kind's check (listed below), e.g. --option normalize=batch or "
                         "--option unbiased=false; repeat for several")
    ck.add_argument("--json", action="store_true",
                    help="print the reports as JSON (every check, verdict, counterexample and timing) instead")
    ck.add_argument("--all-examples", action="store_true", help="demo: run every bundled example")
    ck.set_defaults(func=cmd_check, _parser=ck)
    return parser


def _parse(parser, argv):
    args, extras = parser.parse_known_args(argv)
    if extras:
        owner = getattr(args, "_parser", parser)
        options = list(owner._option_string_actions)
        flags = [e.split("=")[0] for e in extras if e.startswith("-")]
        hint = did_you_mean(flags[0], options) if flags else ""
        raise UsageError(f"unrecognized arguments: {' '.join(extras)}{hint} (see {owner.prog} --help)")
    return args


def main(argv=None) -> int:
    """Run ``refpg`` with `argv` (default: sys.argv[1:]); returns the exit status.

    A user's mistake prints one line ``refpg: error: ...`` and returns 2.
    """
    from refpg.errors import RefpgError

    try:
        parser = build_parser()
        args = _parse(parser, argv)
        if args.command is None:
            args = _parse(parser, ["check"])  # the main job: the conformance demo
        return args.func(args)
    except _Exit as exc:  # --help, --version
        return exc.status
    except UsageError as exc:
        print(f"refpg: error: {exc}", file=sys.stderr)
        return 2
    except RefpgError as exc:  # a refused value the checks above did not foresee
        print(f"refpg: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # an optional dependency (gymnasium, matplotlib, torch) is missing
        print(f"refpg: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refpg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `refpg ... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a path of the user's that cannot be read or written
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"refpg: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
