r"""`check_group_advantages`: per-response advantages of groups of G responses to one prompt.

The estimators are those of `refpg.losses.group` (docs/conventions.md, "Sequences"):

.. math::

    \text{grpo: } A_i = \frac{R_i - \bar R}{\mathrm{std}(R) + \epsilon},\quad
    \text{rloo: } A_i = \frac{G}{G-1}(R_i - \bar R),\quad
    \text{group\_mean: } A_i = R_i - \bar R,\quad
    \text{reinforce\_pp: } A = \frac{R - \mathrm{mean}_B R}{\mathrm{std}_B R + \epsilon}

with the mean and std over the group (over the whole batch for reinforce_pp);
``std="bessel"`` divides the sum of squares by G - 1, ``"population"`` by G.
A group whose rewards are all equal has advantage exactly 0 (never NaN).

Three conventions pass the rewards as the libraries hold them:

* ``"refpg"``: ``fn(rewards)``, rewards (n_prompts, G), one group per row;
  a group of one response (G = 1) has advantage 0.
* ``"trl"``: ``fn(rewards, num_generations)``, a flat (n_prompts * G,) vector
  of completions grouped consecutively, as TRL's GRPOTrainer computes its
  advantages inline (``_generate_and_score_completions``, TRL 1.16):
  :math:`A = (R - \bar R_{group}) / (\mathrm{std} + 10^{-4})`, std Bessel-corrected
  (``trl.trainer.utils.nanstd``), over the group (``scale_rewards="group"``,
  the default), over the whole batch (``"batch"``; the mean stays the group's),
  or no division (``"none"``, Dr. GRPO). G = 1 (evaluation only) gives std 0,
  so A = 0.
* ``"verl"``: verl's ``compute_grpo_outcome_advantage(token_level_rewards,
  response_mask, index, epsilon, norm_adv_by_std_in_grpo)`` and
  ``compute_rloo_outcome_advantage(token_level_rewards, response_mask, index,
  epsilon)`` (verl 0.9.1, ``verl/trainer/ppo/core_algos.py``): the outcome
  score is the row sum of ``token_level_rewards`` (the kit puts it on the last
  valid token), groups are the rows sharing a uid of ``index`` (a NumPy object
  array of strings; the kit interleaves the groups, so they are never
  contiguous), and the result is ``(advantages, returns)``, both (bs, L), the
  sequence advantage on every valid token and 0 on padding. verl's definition
  of a single-sample group is part of the convention: mean 0 and std 1, so
  GRPO gives :math:`R/(1+\epsilon)` and RLOO and Dr. GRPO (``group_mean``,
  ``norm_adv_by_std_in_grpo=False``) give R.

OpenRLHF has no standalone advantage function (its estimators live inside
``RemoteExperienceMaker.compute_advantages_and_returns``), so it has no
convention here.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int
from refpg.conformance import _cases
from refpg.conformance._harness import (BadOutput, Outcome, Session, check_callable, check_signature,
                                        numerics_of_their_own, resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError

__all__ = ["check_group_advantages", "GROUP_ADVANTAGE_CONVENTIONS", "ESTIMATORS"]

GROUP_ADVANTAGE_CONVENTIONS = {
    "refpg": "fn(rewards) -> advantages (n_prompts, G); rewards (n_prompts, G), one group per row",
    "trl": "fn(rewards, num_generations) -> advantages (n_prompts * G,); rewards flat, groups of num_generations "
           "consecutive completions (TRL's GRPOTrainer)",
    "verl": "fn(token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo) -> (advantages, "
            "returns) (bs, L); groups by uid in index (verl's compute_grpo_outcome_advantage; RLOO: "
            "fn(token_level_rewards, response_mask, index, epsilon))",
}
ESTIMATORS = ("grpo", "rloo", "group_mean", "reinforce_pp")
_ESTIMATORS_OF = {"refpg": ESTIMATORS, "trl": ("grpo", "group_mean"), "verl": ("grpo", "rloo", "group_mean")}
_DEFAULT_EPS = {"refpg": None, "trl": 1e-4, "verl": 1e-6}
SCALE_REWARDS = ("group", "batch", "none")
#: Offset of the large-offset scenario: a one-pass variance E[R^2] - E[R]^2 of 1e6 + O(1) rewards loses
#: about twelve of float64's sixteen digits.
OFFSET = 1e6
_UNIT = {"float64": float(np.finfo(np.float64).eps), "float32": float(np.finfo(np.float32).eps)}
#: Group counts and sizes drawn for a JAX function (a jitted one compiles once per input shape).
JAX_GROUPS = (1, 2, 4)
JAX_SIZES = (2, 4)
_CHECKS = ("value", "degenerate_groups", "large_offset", "permutation", "groups_independent", "mask")


def _params(convention: str, estimator: str) -> dict:
    verl = (("token_level_rewards", "response_mask", "index", "epsilon") if estimator == "rloo" else
            ("token_level_rewards", "response_mask", "index", "epsilon", "norm_adv_by_std_in_grpo"))
    return {"refpg": ("rewards",), "trl": ("rewards", "num_generations"), "verl": verl}


# -- the reference ----------------------------------------------------------------

class _Spec:
    """What is declared: the convention, estimator, std and eps, and TRL's scale_rewards."""

    def __init__(self, convention, estimator, std, eps, scale_rewards):
        self.convention, self.estimator, self.std, self.eps, self.scale = (convention, estimator, std, eps,
                                                                           scale_rewards)
        self.ddof = 1 if std == "bessel" else 0

    @property
    def normalises(self) -> bool:
        if self.convention == "trl":
            return self.scale != "none"
        return self.estimator in ("grpo", "reinforce_pp")

    @property
    def batch_std(self) -> bool:
        return self.estimator == "reinforce_pp" or self.convention == "trl" and self.scale == "batch"


def _mean(r: np.ndarray) -> float:
    return math.fsum(r) / r.size  # the correctly rounded sum: the reference's own error stays at one ulp


def _dev(r: np.ndarray) -> np.ndarray:
    """r - mean(r), exactly 0 for a flat set (the mean of equal floats can be an ulp off)."""
    return np.zeros_like(r) if r.max() == r.min() else r - _mean(r)


def _std(dev: np.ndarray, ddof: int) -> float:
    n = dev.size
    return 0.0 if n - ddof <= 0 else math.sqrt(math.fsum(dev * dev) / (n - ddof))


def _reference(groups, spec: _Spec, *, ddof=None, eps=None, eps_in_sqrt=False, estimator=None,
               batch_std=None):
    """Per-group advantages (list of arrays), and per-group divisors d with A = dev * c / d (for tolerances).

    The keywords override the declaration (the hints' misreadings)."""
    ddof = spec.ddof if ddof is None else ddof
    eps = spec.eps if eps is None else eps
    est = spec.estimator if estimator is None else estimator
    batch_std = spec.batch_std if batch_std is None else batch_std
    normalises = spec.normalises if estimator is None else est in ("grpo", "reinforce_pp")
    if est == "reinforce_pp":  # batch whitening: the batch is one set
        allr = np.concatenate(groups)
        dev = _dev(allr)
        sd = _std(dev, ddof)
        d = math.sqrt(sd * sd + eps) if eps_in_sqrt else sd + eps
        a = np.where(dev == 0, 0.0, dev / d) if allr.size - ddof > 0 else dev
        out, i = [], 0
        for g in groups:
            out.append(a[i:i + g.size])
            i += g.size
        return out, [d if allr.size - ddof > 0 else 1.0] * len(groups)
    batch_sd = _std(_dev(np.concatenate(groups)), ddof) if batch_std else None
    out, divs = [], []
    for g in groups:
        if g.size == 1 and spec.convention == "verl":
            # verl: a lone response has mean 0 and std 1.
            if est == "grpo":
                out.append(g / (1.0 + eps))
                divs.append(1.0 + eps)
            else:
                out.append(g.copy())
                divs.append(1.0)
            continue
        dev = _dev(g)
        if est == "rloo":
            out.append(dev * (g.size / (g.size - 1)) if g.size > 1 else np.zeros_like(g))
            divs.append(1.0)
        elif not normalises:
            out.append(dev)
            divs.append(1.0)
        else:
            sd = batch_sd if batch_std else _std(dev, ddof)
            d = math.sqrt(sd * sd + eps) if eps_in_sqrt else sd + eps
            out.append(np.where(dev == 0, 0.0, dev / d) if d > 0 else np.zeros_like(g))
            divs.append(max(d, 1e-300))
    return out, divs


# -- layouts ------------------------------------------------------------------------

def _order(sizes) -> list:
    """Rows of the verl batch: (group, member) round robin over the groups, so that no two members of a
    group with another group between them sit next to each other (groups never contiguous)."""
    rows = []
    for j in range(max(sizes)):
        rows += [(g, j) for g, n in enumerate(sizes) if j < n]
    return rows


class _Layout:
    """How a case's groups become the convention's arguments, and per-response values its output layout."""

    def __init__(self, case, spec: _Spec):
        self.case, self.spec = case, spec
        groups = case["groups"]
        self.sizes = [g.size for g in groups]
        conv = spec.convention
        if conv == "verl":
            self.rows = _order(self.sizes)
            self.lengths = np.array([case["lengths"][g][j] for g, j in self.rows], dtype=np.int64)
            self.L = int(case["L"])
            self.mask = np.arange(self.L)[None, :] < self.lengths[:, None]
            self.shape = (len(self.rows), self.L)
        elif conv == "trl":
            self.shape = (sum(self.sizes),)
        else:
            self.shape = (len(groups), self.sizes[0])

    def place(self, values) -> np.ndarray:
        """Per-group arrays -> the output layout (verl: the row's value on every token, 0 on padding)."""
        conv = self.spec.convention
        if conv == "verl":
            col = np.array([values[g][j] for g, j in self.rows], dtype=float)
            return np.where(self.mask, col[:, None], 0.0)
        if conv == "trl":
            return np.concatenate([np.asarray(v, dtype=float) for v in values])
        return np.stack([np.asarray(v, dtype=float) for v in values])

    def args(self, rewards_groups, backend) -> list:
        spec = self.spec
        if spec.convention == "refpg":
            return [("rewards", self.place(rewards_groups))]
        if spec.convention == "trl":
            return [("rewards", self.place(rewards_groups)), ("num_generations", int(self.sizes[0]))]
        scores = np.array([rewards_groups[g][j] for g, j in self.rows], dtype=float)
        tlr = np.zeros(self.shape)
        tlr[np.arange(len(self.rows)), self.lengths - 1] = scores  # the outcome reward on the last valid token
        args = [("token_level_rewards", tlr), ("response_mask", self.mask.astype(np.float64)),
                ("index", tuple(self.case["uids"][g] for g, _ in self.rows)), ("epsilon", float(spec.eps))]
        if spec.estimator != "rloo":
            args.append(("norm_adv_by_std_in_grpo", spec.estimator == "grpo"))
        return args

    def shown(self, args) -> dict:
        out = {name: (np.array(v, dtype=object) if name == "index" else v) for name, v in args}
        if self.spec.convention == "verl":
            out["groups (derived: rows of each uid)"] = [
                [i for i, (g, _) in enumerate(self.rows) if g == k] for k in range(len(self.sizes))]
        return out


# -- cases ----------------------------------------------------------------------------

def _random_uids(rng, n) -> tuple:
    return tuple(f"{int(x):08x}-{k}" for k, x in enumerate(rng.integers(0, 2**32, n)))


def _group(rng, kind: str, n: int) -> np.ndarray:
    """One group's rewards of a region: a verifier's 0/1 (both present), continuous, ties (a repeated
    value, not flat), flat (all equal, a value whose mean can round), or 1e6 plus a small spread."""
    if kind == "binary":
        r = rng.integers(0, 2, n).astype(float)
        if n >= 2 and r.min() == r.max():
            r[rng.integers(n)] = 1.0 - r[0]
        return r
    if kind == "continuous":
        r = _cases.random_numbers(rng, (n,))
        if n >= 2 and r.min() == r.max():
            r[0] += 1.0
        return r
    if kind == "ties":
        if n < 3:
            return _group(rng, "binary", n)
        levels = _cases.random_numbers(rng, (2,))
        if levels[0] == levels[1]:
            levels[1] += 1.0
        r = np.full(n, levels[0])
        r[rng.permutation(n)[: max(1, n // 2)]] = levels[1]  # at least one of each, at least one tie
        return r
    if kind == "flat":
        return np.full(n, float(rng.choice([0.1, 1.0 / 3.0, 0.0, 1.0, -2.7, 7.3])))
    # offset: 1e6 + distinct values of spread between 0.01 and 1
    spread = float(rng.choice([0.01, 0.1, 1.0]))
    r = OFFSET + spread * rng.random(n)
    if n >= 2 and r.min() == r.max():
        r[0] += spread
    return r


@st.composite
def _cases_of(draw, spec: _Spec, scenario: str, dtype: str, jax: bool = False):
    """A case: {"groups": tuple of reward arrays, "lengths", "uids", "L"} of one scenario.

    * ``"value"``: 1-4 groups of sizes 2-6 (refpg, trl: one G for all), rotating through the regions
      binary, continuous and ties, so that a case of three groups holds all three;
    * ``"degenerate"``: at least one flat group, and (where the convention defines it) single-sample
      groups: G = 1 for refpg and trl in half the cases, lone uids beside larger groups for verl; for
      reinforce_pp, every reward of the batch equal;
    * ``"offset"``: every group 1e6 + a spread of 0.01 to 1.
    """
    conv = spec.convention
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if jax:  # a jitted function compiles once per shape: a few shapes only
        n, G = draw(st.sampled_from(JAX_GROUPS)), draw(st.sampled_from(JAX_SIZES))
    else:
        n, G = draw(st.integers(1, 4)), draw(st.integers(2, 6))
    same = conv != "verl"
    if scenario == "value":
        start = draw(st.integers(0, 2))
        kinds = [("binary", "continuous", "ties")[(start + i) % 3] for i in range(n)]
        sizes = [G] * n if same else [draw(st.integers(2, 5)) for _ in range(n)]
    elif scenario == "offset":
        kinds = ["offset"] * n
        sizes = [G] * n if same else [draw(st.integers(2, 5)) for _ in range(n)]
    else:
        single_ok = not (conv == "refpg" and spec.estimator == "rloo")
        if spec.estimator == "reinforce_pp":
            c = float(rng.choice([0.1, 1.0 / 3.0, 0.0, 1.0]))
            groups = tuple(np.full(G, c) for _ in range(n))
            return _finish(rng, groups, draw)
        if same:
            if single_ok and draw(st.booleans()):
                G = 1
            kinds = ["flat"] + [draw(st.sampled_from(("flat", "binary", "continuous"))) for _ in range(n - 1)]
            sizes = [G] * n
        else:
            n = max(n, 2)
            kinds = ["flat", "single"] + [draw(st.sampled_from(("single", "flat", "binary", "continuous")))
                                          for _ in range(n - 2)]
            sizes = [1 if k == "single" else draw(st.integers(2, 5)) for k in kinds]
            kinds = ["continuous" if k == "single" else k for k in kinds]
    groups = tuple(_group(rng, k, s) for k, s in zip(kinds, sizes))
    if dtype == "float32" and scenario == "offset":
        groups = tuple(1e3 + (g - OFFSET) for g in groups)  # 1e6 has no spread left in float32
    return _finish(rng, groups, draw)


def _finish(rng, groups, draw):
    n = len(groups)
    L = draw(st.integers(1, 4))
    lengths = tuple(tuple(int(x) for x in rng.integers(1, L + 1, g.size)) for g in groups)
    return {"groups": tuple(np.asarray(g, dtype=float) for g in groups), "lengths": lengths,
            "uids": _random_uids(rng, n), "L": L}


def _moves(case, spec: _Spec, min_size: int, jax: bool = False) -> list:
    """Smaller cases: drop a group, drop a response (every group's for refpg and trl), simpler numbers.
    For a JAX function only the numbers change (no new shape to compile)."""
    groups, lengths = list(case["groups"]), list(case["lengths"])
    out = []
    if len(groups) > 1 and not jax:
        for i in range(len(groups)):
            out.append({**case, "groups": tuple(groups[:i] + groups[i + 1:]),
                        "lengths": tuple(lengths[:i] + lengths[i + 1:]),
                        "uids": case["uids"][:i] + case["uids"][i + 1:]})
    if jax:
        pass
    elif spec.convention != "verl":
        G = groups[0].size
        if G > min_size:
            for j in range(G):
                out.append({**case, "groups": tuple(np.delete(g, j) for g in groups),
                            "lengths": tuple(tuple(x for k, x in enumerate(ls) if k != j) for ls in lengths)})
    else:
        for i, g in enumerate(groups):
            if g.size > min_size:
                for j in range(g.size):
                    gs, ls = list(groups), list(lengths)
                    gs[i] = np.delete(g, j)
                    ls[i] = tuple(x for k, x in enumerate(ls[i]) if k != j)
                    out.append({**case, "groups": tuple(gs), "lengths": tuple(ls)})
    for i, g in enumerate(groups):
        for j, x in enumerate(g):
            for y in _cases.simpler_numbers(float(x)):
                gs = list(groups)
                gs[i] = g.copy()
                gs[i][j] = y
                out.append({**case, "groups": tuple(gs)})
    if case["L"] > 1 and spec.convention == "verl":
        L = case["L"] - 1
        out.append({**case, "L": L, "lengths": tuple(tuple(min(x, L) for x in ls) for ls in lengths)})
    return out


# -- the check -------------------------------------------------------------------------

@numerics_of_their_own
def check_group_advantages(fn, *, convention: str = "refpg", backend: str = "auto", dtype: str = "float64",
                           max_examples: int = 100, seed: int = 0, estimator: str = "grpo",
                           std: str = "bessel", eps: float | None = None,
                           scale_rewards: str | None = None) -> Report:
    r"""Check group advantages (GRPO, RLOO, Dr. GRPO's group mean, REINFORCE++) against the exact values.

    Parameters
    ----------
    fn : callable
        In the form of `convention` (`GROUP_ADVANTAGE_CONVENTIONS`): ``fn(rewards)``
        (refpg), ``fn(rewards, num_generations)`` (trl) or verl's
        ``fn(token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo)``
        (``epsilon`` last for RLOO). Arguments are passed by position.
    convention : {"refpg", "trl", "verl"}
    backend, dtype, max_examples, seed
        As in `check_gae`.
    estimator : {"grpo", "rloo", "group_mean", "reinforce_pp"}
        The formula (module docstring). trl: "grpo" (its ``scale_rewards``
        chooses the std) or "group_mean" (``scale_rewards="none"``). verl:
        "grpo", "group_mean" (``norm_adv_by_std_in_grpo=False``) or "rloo";
        verl's REINFORCE++ whitens over tokens, a different quantity.
    std : {"bessel", "population"}
        The std's divisor, G - 1 or G. TRL and verl use Bessel's (torch.std).
    eps : float >= 0, optional
        Added to the std. Default: refpg 1e-6 (grpo) or 1e-8 (reinforce_pp),
        trl 1e-4, verl 1e-6 (and passed to the function as ``epsilon``).
    scale_rewards : {"group", "batch", "none"}, optional
        trl only: TRL's option (default "group").

    Returns
    -------
    Report
        ``group_advantages.value`` (groups of a verifier's 0/1 rewards,
        continuous ones, ties), ``.degenerate_groups`` (flat and single-sample
        groups: finite, and the convention's value there), ``.large_offset``
        (rewards 1e6 + a spread of 0.01 to 1), ``.permutation`` (reordering the
        responses of a group, the rows of a verl batch, reorders the
        advantages alike), ``.groups_independent`` (other groups' rewards do not
        change a group's advantages; not for batch-normalised estimators),
        ``.mask`` (verl: 0 on padding), plus the generic ids. A failure whose
        actual values a known misreading reproduces names it (Bessel's
        correction, eps inside the square root, RLOO without G/(G-1), batch
        instead of group normalisation, groups read across the wrong axis).

    Notes
    -----
    An entry passes when ``|actual - expected| <= tol (1 + max|A|) + 8 (G + 2) u kappa``,
    u the unit roundoff of `dtype` and :math:`\kappa = \max|R| / d` with d the
    divisor of the entry's set (std + eps, or 1): the error any stable
    two-pass computation in that precision makes. A one-pass variance on 1e6 +
    O(1) rewards exceeds it by orders of magnitude.

    References
    ----------
    [Shao2024]; [Ahmadian2024]; [Liu2025]; Hu et al. 2025 (REINFORCE++).
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(GROUP_ADVANTAGE_CONVENTIONS))
    check_choice(estimator, "estimator", ESTIMATORS)
    if estimator not in _ESTIMATORS_OF[convention]:
        why = {"trl": "TRL's GRPOTrainer computes GRPO (scale_rewards chooses the std) and, with "
                      "scale_rewards='none', the group mean; its RLOOTrainer puts the KL into the reward and has "
                      "no function of this signature",
               "verl": "verl's REINFORCE++ estimators whiten over the batch's tokens (masked_whiten), a "
                       "different quantity"}[convention]
        raise InvalidInputError(f"estimator should be one of {list(_ESTIMATORS_OF[convention])} for "
                                f"convention={convention!r}, actual {estimator!r}: {why}")
    check_choice(std, "std", ("bessel", "population"))
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating))
                            or not np.isfinite(eps) or eps < 0):
        raise InvalidInputError(f"eps should be a finite real number >= 0 or None, actual {eps!r}")
    if scale_rewards is not None:
        if convention != "trl":
            raise InvalidInputError(f"scale_rewards is TRL's option: pass it with convention='trl', actual "
                                    f"convention={convention!r} with scale_rewards={scale_rewards!r}")
        check_choice(scale_rewards, "scale_rewards", SCALE_REWARDS)
        if estimator == "group_mean" and scale_rewards != "none":
            raise InvalidInputError(f"scale_rewards should be 'none' with estimator='group_mean' (no division by "
                                    f"a std), actual {scale_rewards!r}")
    if convention == "trl":
        scale_rewards = scale_rewards or ("none" if estimator == "group_mean" else "group")
        if scale_rewards == "none":
            estimator = "group_mean"
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    if eps is None:
        eps = _DEFAULT_EPS[convention] or (1e-8 if estimator == "reinforce_pp" else 1e-6)
    eps = float(eps)
    spec = _Spec(convention, estimator, std, eps, scale_rewards)
    params = _params(convention, estimator)
    named = check_signature(fn, "group_advantages", convention, params)
    opts = dict(estimator=estimator, std=std, eps=eps)
    if convention == "trl":
        opts["scale_rewards"] = scale_rewards
    target = fn
    if convention == "verl":
        @functools.wraps(fn)
        def target(*args):
            # The uids travel as a tuple (the harness converts only float arrays); verl holds them in a NumPy
            # object array (data.non_tensor_batch["uid"]).
            return fn(args[0], args[1], np.array(args[2], dtype=object), *args[3:])

    probe_case = {"groups": (np.array([1.0, 0.0]), np.array([0.5, 2.0])), "lengths": ((1, 2), (2, 1)),
                  "uids": ("a", "b"), "L": 2}

    def probe(be):
        s = Session("group_advantages", target, convention, be, max_examples=1, seed=seed, options=opts)
        return s.call(_Layout(probe_case, spec).args(probe_case["groups"], be))

    be, warn0 = resolve_backend(fn, backend, dtype, probe)
    session = Session("group_advantages", target, convention, be, max_examples=max_examples, seed=seed,
                      options=opts, warnings=named + warn0)
    kind = "group_advantages"
    u = _UNIT[be.dtype]

    def run(case):
        """Call on a case: (layout, rounded groups, actual array or None, outcomes, shown inputs)."""
        groups = tuple(be.round(g) for g in case["groups"])
        lay = _Layout({**case, "groups": groups}, spec)
        args = lay.args(groups, be)
        inputs = lay.shown(args)
        call = session.call(args)
        outcomes = session.generic_outcomes(call, inputs)
        if call.error is not None:
            return lay, groups, None, outcomes, inputs
        raw = call.output
        if convention == "verl" and isinstance(raw, (tuple, list)) and len(raw) == 2:
            raw = raw[0]  # (advantages, returns)
        out, more = session.output_array(raw, "advantages", lay.shape, inputs)
        if out is None and any(o.check_id == f"{kind}.output_finite" for o in more):
            # Read it anyway: a NaN confined to flat or single-sample groups is the degenerate-group bug,
            # reported under its own id (see `evaluate`).
            out = be.to_numpy(raw, "advantages").astype(np.float64)
        return lay, groups, out, outcomes + more, inputs

    def allowed(groups, lay, expected, divs):
        """Per-entry tolerance (see Notes)."""
        worst = max(float(np.max(np.abs(expected), initial=0.0)), 0.0)
        per = []
        for g, d in zip(groups, divs):
            G = g.size
            kappa = float(np.max(np.abs(g))) / d
            per.append(np.full(G, be.tol * (1.0 + worst) + 8.0 * (G + 2) * u * kappa * (1.0 + worst)))
        return lay.place(per) if convention != "verl" else np.where(lay.mask, lay.place(per), be.tol)

    def degenerate(groups):
        if estimator == "reinforce_pp":
            allr = np.concatenate(groups)
            flat = allr.max() == allr.min()
            return [np.full(g.size, flat) for g in groups]
        return [np.full(g.size, g.size == 1 or g.max() == g.min()) for g in groups]

    def hint(groups, lay, actual, tol_arr, mask_valid):
        """Name the misreading that reproduces `actual`, if one does."""
        def fits(values):
            exp = lay.place(values)
            return bool(np.all(np.abs(actual - exp)[mask_valid] <= tol_arr[mask_valid]))

        other = 0 if spec.ddof == 1 else 1
        cands = []
        if spec.normalises:
            cands.append((dict(ddof=other),
                          "std without Bessel's correction (divides by G, NumPy's default): declare "
                          "std='population'" if other == 0 else
                          "std with Bessel's correction (divides by G - 1, torch.std's default): declare "
                          "std='bessel'"))
            cands.append((dict(eps_in_sqrt=True), f"eps inside the square root, (R - mean) / sqrt(var + eps), "
                                                  f"where the convention adds it to the std: (R - mean) / "
                                                  f"(std + eps) with eps = {eps:g}"))
            for e in (0.0, 1e-4, 1e-6, 1e-8, 1e-9):
                if e != eps:
                    cands.append((dict(eps=e), f"eps = {e:g} added to the std, where {eps:g} is declared: "
                                               f"declare eps={e:g}"))
            if not spec.batch_std and convention != "verl":
                cands.append((dict(batch_std=True), "the std over the whole batch, not over each group "
                                                    "(TRL's scale_rewards='batch')"))
            cands.append((dict(estimator="reinforce_pp"), "the mean and std over the whole batch (batch "
                                                          "whitening, REINFORCE++): declare "
                                                          "estimator='reinforce_pp'"))
            cands.append((dict(estimator="group_mean"), "no division by the std: the group mean baseline "
                                                        "(Dr. GRPO): declare estimator='group_mean'"))
        if spec.estimator == "rloo":
            cands.append((dict(estimator="group_mean"), "RLOO scaled as the group mean: R - mean(R) lacks the "
                                                        "factor G/(G-1) of the leave-one-out baseline "
                                                        "R_i - mean of the others = G/(G-1) (R_i - mean)"))
        if spec.estimator == "group_mean":
            cands.append((dict(estimator="rloo"), "actual = G/(G-1) (R - mean): the leave-one-out baseline "
                                                  "(RLOO): declare estimator='rloo'"))
            cands.append((dict(estimator="grpo"), "divided by the group's std: declare estimator='grpo'"))
        for kw, text in cands:
            try:
                values, _ = _reference(groups, spec, **kw)
            except (ZeroDivisionError, ValueError):
                continue
            if fits(values):
                return text
        regrouped = _regrouped(groups, lay, spec)
        if regrouped is not None and fits(regrouped[0]):
            return regrouped[1]
        return ""

    def judge(check_id, lay, groups, actual, expected, tol_arr, select, inputs, why=""):
        """An outcome if any selected entry is off by more than its tolerance."""
        session.ran(check_id)
        err = np.where(select, np.abs(actual - expected), 0.0)
        bad = err > tol_arr
        if not np.any(bad):
            return None
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.where(bad, err - tol_arr, -1.0))),
                                                     err.shape))
        label = f"advantages[{', '.join(map(str, idx))}]"
        msg = (f"{label} should be {expected[idx] + 0.0:.10g}, actual {actual[idx] + 0.0:.10g} (error "
               f"{err[idx]:.3g} > tolerance {tol_arr[idx]:.3g})")
        if why:
            msg += f"; {why}"
        valid = lay.mask if convention == "verl" else np.ones(lay.shape, dtype=bool)
        h = hint(groups, lay, actual, np.maximum(tol_arr, be.tol), valid)
        if not h and np.all(np.abs(actual + expected)[valid] <= tol_arr[valid]) and np.any(np.abs(expected) > 0):
            h = "actual = -expected: the sign is flipped"
        if h:
            msg += f"; {h}"
        return Outcome(check_id, msg, inputs, expected=expected, actual=actual, where=idx)

    def evaluate(case, scenario):
        lay, groups, actual, outcomes, inputs = run(case)
        if actual is None:
            return outcomes
        values, divs = _reference(groups, spec)
        expected = lay.place(values)
        tol_arr = allowed(groups, lay, expected, divs)
        valid = lay.mask if convention == "verl" else np.ones(lay.shape, dtype=bool)
        deg = lay.place(degenerate(groups)).astype(bool) & valid
        bad = ~np.isfinite(actual) & valid
        if np.any(bad):
            if not np.any(bad & ~deg):
                outcomes = [o for o in outcomes if o.check_id != f"{kind}.output_finite"]
                session.ran(f"{kind}.degenerate_groups")
                idx = tuple(int(i) for i in np.argwhere(bad)[0])
                what = ("every reward of the batch is equal" if estimator == "reinforce_pp" else
                        "its group has one response or rewards all equal")
                outcomes.append(Outcome(
                    f"{kind}.degenerate_groups",
                    f"advantages[{', '.join(map(str, idx))}] should be {expected[idx] + 0.0:.10g} ({what}), actual "
                    f"{actual[idx]}: a std of 0 (or, with Bessel's correction, of a single response: 0/0) divided "
                    f"into R - mean = 0 without a guard", inputs, expected=expected, actual=actual, where=idx))
            return outcomes
        if scenario == "offset":
            o = judge(f"{kind}.large_offset", lay, groups, actual, expected, tol_arr, valid, inputs,
                      why=f"the rewards are {OFFSET if be.dtype == 'float64' else 1e3:g} plus a small spread: "
                          f"the mean and std must be taken of R - mean (two passes); E[R^2] - E[R]^2 loses "
                          f"the spread to rounding")
            if o is not None:
                outcomes.append(o)
        else:
            if np.any(valid & ~deg):
                o = judge(f"{kind}.value", lay, groups, actual, expected, tol_arr, valid & ~deg, inputs)
                if o is not None:
                    outcomes.append(o)
            if np.any(deg):
                why = ("every reward of the batch is equal, so every advantage is 0" if estimator == "reinforce_pp"
                       else "a group whose rewards are all equal has advantage 0"
                       + (", and a lone response (G = 1) too" if convention != "verl" else
                          "; verl gives a lone uid mean 0 and std 1, so its advantage is "
                          + ("R / (1 + epsilon)" if estimator == "grpo" else "R")))
                o = judge(f"{kind}.degenerate_groups", lay, groups, actual, expected, tol_arr, deg, inputs, why=why)
                if o is not None:
                    outcomes.append(o)
        if convention == "verl":
            session.ran(f"{kind}.mask")
            pad = ~lay.mask
            if np.any(pad) and np.any(np.abs(actual[pad]) > 0):
                idx = tuple(int(i) for i in np.argwhere(pad & (actual != 0))[0])
                outcomes.append(Outcome(f"{kind}.mask",
                                        f"advantages[{idx[0]}, {idx[1]}] should be 0 (padding: response_mask is 0 "
                                        f"there), actual {actual[idx]:.6g}", inputs, expected=expected,
                                        actual=actual, where=idx))
        if scenario == "value" and not any(o.check_id.endswith((".raised", "output_shape", "output_dtype",
                                                                 "output_finite")) for o in outcomes):
            outcomes += metamorphic(case, lay, actual, tol_arr)
        return outcomes

    def metamorphic(case, lay, actual, tol_arr):
        """Permutation equivariance and independence of the groups, by calling again on changed rewards."""
        out = []
        rng = np.random.default_rng(abs(hash(tuple(float(x) for g in case["groups"] for x in g))) % 2**32)
        # 1. reorder: within each group (refpg, trl), or the rows of the batch (verl: members within groups,
        #    which the round robin turns into a reordering of rows).
        perms = [rng.permutation(g.size) for g in case["groups"]]
        if all(np.array_equal(p, np.arange(p.size)) for p in perms):
            perms = [p[::-1].copy() for p in perms]
        moved = {**case, "groups": tuple(g[p] for g, p in zip(case["groups"], perms)),
                 "lengths": tuple(tuple(ls[i] for i in p) for ls, p in zip(case["lengths"], perms))}
        lay2, _, actual2, outs, inputs2 = run(moved)
        if actual2 is None:
            return []
        session.ran(f"{kind}.permutation")
        # What the first call returned, reordered as the responses were.
        per_resp = _per_response(lay, actual)
        predicted = lay2.place([v[p] for v, p in zip(per_resp, perms)])
        valid = lay2.mask if convention == "verl" else np.ones(lay2.shape, dtype=bool)
        err = np.where(valid, np.abs(actual2 - predicted), 0.0)
        if np.any(err > tol_arr.max()):
            idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
            out.append(Outcome(f"{kind}.permutation",
                               f"advantages[{', '.join(map(str, idx))}] should be {predicted[idx]:.10g} (the "
                               f"advantage this response got before its group's responses were reordered), "
                               f"actual {actual2[idx]:.10g}: an advantage should depend on the response's reward "
                               f"and its group, not on its position", inputs2, expected=predicted,
                               actual=actual2, where=idx))
        # 2. other groups' rewards changed: group 0 keeps its advantages (not for batch normalisation).
        if spec.batch_std or len(case["groups"]) < 2:
            return out
        changed = {**case, "groups": (case["groups"][0],) + tuple(
            np.round(g * 2.0 + 3.0, 3) for g in case["groups"][1:])}
        lay3, _, actual3, outs, inputs3 = run(changed)
        if actual3 is None:
            return out
        session.ran(f"{kind}.groups_independent")
        a0 = _per_response(lay, actual)[0]
        b0 = _per_response(lay3, actual3)[0]
        err = np.abs(a0 - b0)
        if np.any(err > tol_arr.max()):
            j = int(np.argmax(err))
            out.append(Outcome(f"{kind}.groups_independent",
                               f"the advantage of response {j} of group 0 should stay {a0[j]:.10g} when only the "
                               f"other groups' rewards change, actual {b0[j]:.10g}: the group's statistics mix in "
                               f"other groups (a batch mean or std, or groups read across the wrong axis)",
                               inputs3, expected=a0, actual=b0, where=(j,)))
        return out

    session.declare(*session.generic_ids(), *(f"{kind}.{c}" for c in _CHECKS if c != "mask"
                                              or convention == "verl"))
    session.declare(f"{kind}.permutation", f"{kind}.groups_independent", tracked=True)
    if spec.batch_std:
        session.not_run_because(f"{kind}.groups_independent",
                                "the declared estimator normalises over the whole batch, so other groups' "
                                "rewards change every advantage by design", by_design=True)
    min_size = 2 if (convention == "refpg" and estimator == "rloo") else 1
    jax = be.name == "jax"
    moves = functools.partial(_moves, spec=spec, min_size=min_size, jax=jax)
    session.run_scenario(_cases_of(spec, "value", be.dtype, jax), lambda c: evaluate(c, "value"),
                         (f"{kind}.value",), moves=moves)
    session.run_scenario(_cases_of(spec, "degenerate", be.dtype, jax), lambda c: evaluate(c, "degenerate"),
                         (f"{kind}.degenerate_groups",), moves=moves)
    session.run_scenario(_cases_of(spec, "offset", be.dtype, jax), lambda c: evaluate(c, "offset"),
                         (f"{kind}.large_offset",), moves=moves, max_examples=max(1, max_examples // 4))
    return session.report()


def _per_response(lay: _Layout, actual: np.ndarray) -> list:
    """The output layout -> per-group arrays (verl: each row's first token)."""
    conv = lay.spec.convention
    if conv == "refpg":
        return [actual[i] for i in range(actual.shape[0])]
    if conv == "trl":
        out, i = [], 0
        for n in lay.sizes:
            out.append(actual[i:i + n])
            i += n
        return out
    out = [np.zeros(n) for n in lay.sizes]
    for r, (g, j) in enumerate(lay.rows):
        out[g][j] = actual[r, 0]
    return out


def _regrouped(groups, lay: _Layout, spec: _Spec):
    """The declared estimator on groups read the wrong way, and what to call it; None if not defined.

    refpg: groups along axis 0 (the prompts); trl: strided groups (``rewards.view(G, -1)``, every
    n-th completion); verl: contiguous blocks of G rows instead of the rows sharing a uid."""
    sizes = lay.sizes
    if len(sizes) < 2 or len(set(sizes)) != 1 or sizes[0] < 2:
        return None
    n, G = len(sizes), sizes[0]
    if spec.convention == "refpg":
        cols = [np.array([g[j] for g in groups]) for j in range(G)]
        vals, _ = _reference(cols, spec)
        back = [np.array([vals[j][i] for j in range(G)]) for i in range(n)]
        return back, "the groups read along axis 0 (the prompts) instead of along each row"
    if spec.convention == "trl":
        flat = np.concatenate(groups)
        strided = flat.reshape(G, n)  # what view(G, -1) groups: row k = completions k*n .. k*n + n-1
        blocks = [strided[:, i] for i in range(n)]  # each "group" of the misreading: one column
        if n < 2:
            return None
        vals, _ = _reference(blocks, spec)
        a = np.empty((G, n))
        for i in range(n):
            a[:, i] = vals[i]
        flat_a = a.reshape(-1)
        return ([flat_a[i * G:(i + 1) * G] for i in range(n)],
                "the groups read strided (rewards.view(G, -1): every n-th completion) instead of as "
                "num_generations consecutive completions")
    rows = lay.rows
    scores = np.array([groups[g][j] for g, j in rows])
    if scores.size % G:
        return None
    blocks = [scores[k:k + G] for k in range(0, scores.size, G)]
    vals, _ = _reference(blocks, spec)
    flat = np.concatenate(vals)
    out = [np.zeros(n_) for n_ in sizes]
    for r, (g, j) in enumerate(rows):
        out[g][j] = flat[r]
    return out, ("the groups taken as contiguous blocks of G rows, where verl groups the rows by their uid in "
                 "index (the batch is not ordered by group)")
