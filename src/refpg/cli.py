"""The ``refpg`` command line.

``refpg exact [ENV]`` prints the exact quantities of a policy on a built-in
MDP (FrozenLake 4x4, slippery, by default): J, V, the occupancy d, the norm of
the policy gradient, one natural-gradient step and the optimal J.

``refpg golden check [--dir golden] [--round-trip]`` recomputes every golden
case from its stored inputs (or, with ``--round-trip``, from inputs rebuilt as
``regenerate`` would) and compares with its stored outputs within each
field's stored tolerance (non-zero exit on any mismatch);
``refpg golden regenerate [--dir golden]`` rewrites the files.

``refpg check MODULE:FUNCTION --kind KIND [--convention C] [--backend B]`` checks a
user's implementation with the conformance kit; ``refpg check FILE.py`` checks
every function the file registers; ``refpg check`` alone runs the demo on the
bundled examples.

``refpg study NAME [--quick] [--out DIR]`` runs one study of `refpg.studies`
(figures and report.md in DIR, default analysis/NAME); ``refpg study --list``
lists them.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

__all__ = ["main"]


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


def _load_env(name: str, gamma: float | None):
    from refpg import envs
    from refpg.errors import InvalidInputError

    if name in envs.BUILTIN:
        mdp = envs.BUILTIN[name]()
    elif "-v" in name:
        mdp = envs.from_gymnasium(name)
    else:
        raise InvalidInputError(
            f"ENV should be one of {sorted(envs.BUILTIN)} or a Gymnasium toy-text id, actual {name!r}")
    if gamma is not None:
        from refpg.mdp import TabularMDP
        mdp = TabularMDP(mdp.P, mdp.transition_rewards if mdp.transition_rewards is not None else mdp.r,
                         mdp.rho, gamma, mdp.terminal, name=mdp.name)
    return mdp


def cmd_exact(args) -> int:
    import refpg

    mdp = _load_env(args.env, args.gamma)
    pol = refpg.TabularSoftmax.for_mdp(mdp)
    if args.theta == "uniform":
        theta = np.zeros(pol.theta_shape)
        policy_desc = "uniform (theta = 0)"
    else:
        theta = np.random.default_rng(args.seed).normal(size=pol.theta_shape)
        policy_desc = f"random softmax, theta ~ N(0, 1), seed {args.seed}"
    pi = pol.probs(theta)
    ev = refpg.evaluate(mdp, pi)
    grad = refpg.policy_gradient(mdp, pol, theta, evaluation=ev)
    nat = refpg.natural_gradient(mdp, pol, theta, evaluation=ev)
    opt = refpg.optimal_policy(mdp)
    theta_new = theta + args.eta * nat
    J_new = refpg.objective(mdp, pol, theta_new)
    kl_mean = refpg.kl_divergence(mdp, pol, theta_new, theta_old=theta, evaluation_old=ev)
    kl_max = refpg.kl_divergence(mdp, pol, theta_new, theta_old=theta, reduction="max", evaluation_old=ev)

    print(f"refpg exact: {mdp!r}")
    print(f"policy: tabular softmax, {policy_desc}\n")
    S = mdp.n_states
    shown = range(S) if S <= args.max_rows else list(range(args.max_rows // 2)) + list(range(S - args.max_rows // 2, S))
    rows = []
    for s in shown:
        rows.append([s, "yes" if mdp.terminal[s] else "", f"{mdp.rho[s]:.3g}", f"{ev.d[s]:.6f}",
                     f"{ev.V[s]:+.6f}", f"{opt.V[s]:+.6f}", int(opt.pi[s].argmax())])
    print(_table(["state", "terminal", "rho", "d(s)", "V(s)", "V*(s)", "a*(s)"], rows))
    if S > args.max_rows:
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


def cmd_golden(args) -> int:
    from refpg import golden

    if args.golden_command == "regenerate":
        for path in golden.regenerate(args.dir):
            print(f"wrote {path}")
        return 0
    report = golden.check(args.dir, round_trip=args.round_trip)
    rows = [[f.case, f.field, f"{f.max_abs_error:.3e}", f"{f.max_rel_error:.3e}", f"{f.atol:g}", f"{f.rtol:g}",
             f"{f.used:.1e}", "ok" if f.passed else f"FAIL {f.message}".rstrip()] for f in report.fields]
    if rows:
        print(_table(["case", "field", "max abs err", "max rel err", "atol", "rtol", "err/tol", "result"], rows,
                     align="llrrrrrl"))
    n_cases = len({f.case for f in report.fields})
    if not report.fields:
        print(f"refpg golden check: no case files in {args.dir}", file=sys.stderr)
        return 1
    if report.passed:
        print(f"\n{n_cases} cases, {len(report.fields)} fields: all within tolerance")
        return 0
    print(f"\n{n_cases} cases, {len(report.fields)} fields: {len(report.failures)} FAILED", file=sys.stderr)
    return 1


def cmd_study(args) -> int:
    from refpg import studies

    if args.list:
        rows = [[name, (mod.__doc__ or "").strip().splitlines()[0]] for name, mod in studies.STUDIES.items()]
        print(_table(["study", "description"], rows, align="ll"))
        return 0
    if args.name is None:
        print("refpg study: give a study NAME or --list", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else f"analysis/{args.name}"
    headline = studies.run_study(args.name, quick=args.quick, out_dir=out)
    print(f"refpg study {args.name}: figures and report.md in {out}")
    for key, value in headline.items():
        if isinstance(value, dict):
            continue
        print(f"  {key}: {value}")
    return 0


def _option(text: str):
    """``key=value`` of ``--option``; the value is a Python literal if it parses as one."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--option should be KEY=VALUE, actual {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def cmd_check(args) -> int:
    from refpg.conformance import runner

    if args.target is None:
        return runner.demo(everything=args.all_examples)
    common = dict(backend=args.backend, dtype=args.dtype, seed=args.seed)
    if args.target.endswith(".py"):
        jobs = [(reg.fn, reg.kind, {**common, **reg.kwargs}) for reg in runner.load_file(args.target)]
    else:
        if args.kind is None:
            print("refpg check: MODULE:FUNCTION needs --kind " + "|".join(runner.KINDS), file=sys.stderr)
            return 2
        fn = runner.load_function(args.target)
        jobs = [(fn, args.kind, {**common, "convention": args.convention, **dict(args.option)})]
    failed = 0
    from refpg.conformance import _harness

    for fn, kind, kwargs in jobs:
        if args.max_examples is not None and kind not in ("reinforce_estimator",):
            kwargs["max_examples"] = args.max_examples
        # A slow function can make a check take minutes: say so on stderr while it runs.
        _harness.PROGRESS["stream"] = sys.stderr
        try:
            report = runner.check(kind, fn, **kwargs)
        finally:
            _harness.PROGRESS["stream"] = None
        print(report, end="\n\n")
        failed += not report.passed
    print(f"refpg check: {len(jobs) - failed} of {len(jobs)} passed")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refpg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("exact", help="exact quantities of a policy on a built-in MDP")
    p.add_argument("env", nargs="?", default="frozen_lake",
                   help="built-in MDP name or Gymnasium toy-text id (default: frozen_lake, 4x4 slippery)")
    p.add_argument("--gamma", type=float, default=None, help="override the discount")
    p.add_argument("--theta", choices=("uniform", "random"), default="uniform")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eta", type=float, default=1.0, help="natural-gradient step size")
    p.add_argument("--max-rows", type=int, default=64)
    p.set_defaults(func=cmd_exact)
    g = sub.add_parser("golden", help="check or regenerate the golden reference files")
    gsub = g.add_subparsers(dest="golden_command", required=True)
    for name, help_ in (("check", "recompute every case from its inputs and compare with its outputs"),
                        ("regenerate", "rewrite every case file and schema.json")):
        gp = gsub.add_parser(name, help=help_)
        gp.add_argument("--dir", default="golden", help="directory of the golden files (default: golden)")
        if name == "check":
            gp.add_argument("--round-trip", action="store_true",
                            help="rebuild the inputs too, as regenerate would, and require them unchanged")
        gp.set_defaults(func=cmd_golden)
    st = sub.add_parser("study", help="run an exact study that reproduces a published result (figures + report)")
    st.add_argument("name", nargs="?", default=None, help="study name (see --list)")
    st.add_argument("--list", action="store_true", help="list the studies")
    st.add_argument("--quick", action="store_true", help="smaller budgets (as in the tests)")
    st.add_argument("--out", default=None, help="output directory (default: analysis/NAME)")
    st.set_defaults(func=cmd_study)
    ck = sub.add_parser("check", help="check your implementation (GAE, PPO loss, ...) against the oracle; "
                                      "with no target, a demo on the bundled examples")
    ck.add_argument("target", nargs="?", default=None,
                    help="MODULE:FUNCTION, or FILE.py that registers functions with "
                         "@refpg.conformance.register; none: the bundled demo")
    ck.add_argument("--kind", default=None,
                    choices=("gae", "ppo_loss", "value_loss", "kl_estimator", "reinforce_estimator", "trpo_step"))
    ck.add_argument("--convention", default="refpg", choices=("refpg", "sb3", "cleanrl", "torchrl", "rlax"))
    ck.add_argument("--backend", default="auto", choices=("auto", "numpy", "torch"))
    ck.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ck.add_argument("--seed", type=int, default=0)
    ck.add_argument("--max-examples", type=int, default=None, help="cases per scenario (default 100)")
    ck.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                    help="a check option, e.g. --option normalize=batch or --option unbiased=False")
    ck.add_argument("--all-examples", action="store_true", help="demo: run every bundled example")
    ck.set_defaults(func=cmd_check)
    return parser


def main(argv=None) -> int:
    from refpg.errors import InvalidInputError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["check"])  # the main job: the conformance demo
    try:
        return args.func(args)
    except (InvalidInputError, ImportError) as exc:
        print(f"refpg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
