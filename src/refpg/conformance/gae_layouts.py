r"""`check_layout`: GAE on RLHF token batches and on one episode at a time, layouts a (T, N) rollout lacks.

Two families, both checked against `refpg.returns.gae` [Schulman2016]:

* **Token-level GAE of RLHF** (conventions ``"rlhf"`` and ``"openrlhf"``): a
  (B, L) batch of B responses, right-padded to L tokens, with a response
  mask (1 on the response, 0 on the padding after it). Each row is one
  complete episode: the last response token :math:`e_b` bootstraps 0,

  .. math::
      \delta_{b,t} = r_{b,t} + \gamma [t < e_b] V_{b,t+1} - V_{b,t}, \qquad
      \hat A_{b,t} = \delta_{b,t} + \gamma\lambda [t < e_b] \hat A_{b,t+1}, \qquad t \le e_b,

  the returns are :math:`\hat A_{b,t} + V_{b,t}`, and with ``whiten=True``
  the advantages are whitened over the response tokens of the whole batch by
  the declared rule (verl's and TRL's ``masked_whiten`` divide by
  :math:`\sqrt{\sigma^2 + \epsilon}`: ``whiten_eps_on="var"``). Padding
  outputs are unspecified but must be finite.
* **Episode-at-a-time buffers** (conventions ``"spinningup"`` and
  ``"rllib"``): one call per episode, its rewards and values and the
  bootstrap value of the state after its last step (0 after a termination,
  :math:`V(s_T)` after a time limit), as Spinning Up's
  ``PPOBuffer.finish_path(last_val)`` and RLlib's ``compute_advantages``
  take it.

`refpg.conformance.check_gae` hands these conventions to `check_layout`.
"""

from __future__ import annotations

import functools

import numpy as np
from hypothesis import strategies as st

from refpg._validation import check_choice, check_positive_int
from refpg.conformance._cases import (GAMMAS, LAMBDAS, random_numbers, simpler_choices, simpler_numbers)
from refpg.conformance._harness import (Outcome, Session, check_callable, check_signature, convention_parameters,
                                        numerics_of_their_own, resolve_backend)
from refpg.conformance.report import Report
from refpg.errors import InvalidInputError
from refpg.returns import discounted_returns
from refpg.returns import gae as reference_gae

__all__ = ["LAYOUT_CONVENTIONS", "check_layout"]

#: Convention -> the signature the user's function has.
LAYOUT_CONVENTIONS = {
    "rlhf": "fn(token_level_rewards, values, response_mask, gamma, lam) -> (advantages, returns) (B, L), "
            "response_mask int64, right-padded (verl's compute_gae_advantage_return)",
    "openrlhf": "fn(values, rewards, action_mask, gamma, lambd) -> (advantages, returns) (B, L), action_mask bool, "
                "right-padded (OpenRLHF's get_advantages_and_returns)",
    "spinningup": "fn(rewards, values, last_val, gamma, lam) -> (advantages, rewards_to_go) (T,), one episode "
                  "(Spinning Up's PPOBuffer.finish_path)",
    "rllib": "fn(rewards, vf_preds, last_r, gamma, lambda_) -> (advantages, value_targets) (T,), one episode "
             "(RLlib's compute_advantages, use_gae=True)",
}

_TOKEN = ("rlhf", "openrlhf")

#: Per convention: option -> default. The whitening options and their defaults are check_gae's (it hands
#: them over when they differ from its defaults), plus two that the masked whitening of RLHF code needs.
_WHITENING = {"whiten": False, "whiten_ddof": 1, "whiten_eps": 1e-8, "whiten_eps_on": "std",
              "whiten_count_eps": 0.0, "whiten_single_token": "zero"}
_DEFAULTS = {
    "rlhf": _WHITENING,
    "openrlhf": _WHITENING,
    "spinningup": {},
    "rllib": {},
}
_EPS_WHERE = ("std", "var", "clamp")
#: What the function may return, in order ("returns" is the second output of the convention: the returns,
#: Spinning Up's rewards-to-go or RLlib's value targets); the pair (advantages, returns) unless declared.
_OUTPUTS = (("advantages", "returns"), ("returns", "advantages"), ("advantages",))
_SINGLE = ("zero", "raw")

_HINTS = {
    "gae.recursion": "A_t = delta_t + gamma * lam * A_{t+1}, delta_t = r_t + gamma * V_{t+1} - V_t, and the "
                     "last token of a response (its episode's last step) bootstraps 0",
    # One episode per call: the last step bootstraps from the value passed for the state after it.
    "gae.recursion (episode)": "A_t = delta_t + gamma * lam * A_{t+1}, delta_t = r_t + gamma * V_{t+1} - V_t, "
                               "and the last step bootstraps from the value passed after it (last_val / last_r: "
                               "0 after a termination, V(s_T) after a time limit)",
    "gae.padding_ignored": "only the response tokens count: the last response token bootstraps 0 (not the "
                           "value of the padding token after it), and no reward or value of the padding may "
                           "flow back into the response",
    "gae.whitening": "the returns show the raw advantages are right; the whitening is not the declared one",
    "gae.single_token_batch": "",
    "gae.truncation_bootstrapped": "an episode cut by a time limit bootstraps from last_val = V(s_T): "
                                   "delta_{T-1} = r_{T-1} + gamma * last_val - V(s_{T-1})",
    "gae.general": "",
}


# -- options -------------------------------------------------------------------------

def _options(convention: str, given: dict) -> dict:
    """The declared options over the convention's defaults, validated."""
    allowed = dict(_DEFAULTS[convention])
    given = dict(given)
    returns = given.pop("returns", None)  # check_gae's flags: these conventions always return the pair
    if returns is not None and not isinstance(returns, (bool, np.bool_)):
        raise InvalidInputError(f"returns should be True or False, actual {returns!r}")
    output = given.pop("output", None)
    order = ("advantages", "returns")
    if output is not None:
        text = output if isinstance(output, str) else ",".join(map(str, output))
        order = tuple(part.strip() for part in text.split(","))
        if order not in _OUTPUTS:
            raise InvalidInputError(f"output should be one of {[','.join(o) for o in _OUTPUTS]}, actual {output!r}")
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        known = ", ".join(allowed) if allowed else "none"
        raise InvalidInputError(f"option {unknown[0]!r} is not one of convention {convention!r} (its options: "
                                f"{known})")
    out = {**allowed, **given}
    if convention in _TOKEN:
        if not isinstance(out["whiten"], (bool, np.bool_)):
            raise InvalidInputError(f"whiten should be True or False, actual {out['whiten']!r}")
        if out["whiten_ddof"] not in (0, 1) or isinstance(out["whiten_ddof"], bool):
            raise InvalidInputError(f"whiten_ddof should be 0 (biased variance) or 1 (Bessel's correction), actual "
                                    f"{out['whiten_ddof']!r}")
        for key in ("whiten_eps", "whiten_count_eps"):
            value = out[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
                    or value < 0:
                raise InvalidInputError(f"{key} should be a finite float >= 0, actual {value!r}")
            out[key] = float(value)
        check_choice(out["whiten_eps_on"], "whiten_eps_on", _EPS_WHERE)
        check_choice(out["whiten_single_token"], "whiten_single_token", _SINGLE)
        out["whiten"], out["whiten_ddof"] = bool(out["whiten"]), int(out["whiten_ddof"])
    if order != ("advantages", "returns"):
        out["output"] = ",".join(order)
    return out


# -- the exact answers -----------------------------------------------------------------

def token_gae(rewards, values, lengths, gamma, lam) -> np.ndarray:
    r"""Raw token-level GAE of a right-padded (B, L) batch; 0 at the padding.

    Each row b is one episode of ``lengths[b]`` steps that ends in a termination
    (:math:`V(s_{e_b + 1}) = 0`), so this is `refpg.returns.gae` on the
    transposed batch with ``terminated`` at each row's last token.
    """
    B, L = rewards.shape
    valid = np.arange(L)[None, :] < lengths[:, None]
    term = np.arange(L)[None, :] == (lengths[:, None] - 1)
    r, v = np.where(valid, rewards, 0.0), np.where(valid, values, 0.0)
    nv = np.zeros_like(v)
    nv[:, :-1] = v[:, 1:]
    adv = reference_gae(r.T, v.T, nv.T, term.T, np.zeros((L, B), bool), gamma, lam).T
    return np.where(valid, adv, 0.0)


def whiten(adv, valid, opts) -> np.ndarray:
    r"""The declared masked whitening of `adv` over the tokens where `valid`, batch-wide.

    .. math::
        \mu = \frac{\sum_{valid} A}{n + c}, \quad
        \sigma^2 = \frac{\sum_{valid} (A - \mu)^2}{n + c} \cdot \Big(\frac{n}{n - 1}\Big)^{ddof}, \quad
        \hat A = \frac{A - \mu}{\sqrt{\sigma^2 + \epsilon}}

    with n the number of response tokens, ddof = ``whiten_ddof``, c =
    ``whiten_count_eps`` (recent verl's masked_mean divides by ``mask.sum() +
    1e-8``) and the scale per ``whiten_eps_on``: ``"std"``
    :math:`(A - \mu) / (\sigma + \epsilon)`, ``"var"`` as above (verl, TRL),
    ``"clamp"`` :math:`(A - \mu) / \sqrt{\max(\sigma^2, \epsilon)}` (OpenRLHF).
    A lone token (n = 1) gives 0 (``whiten_single_token="zero"``: centred,
    whatever the scale) or its raw advantage (``"raw"``: whitening skipped);
    0 / 0 is 0.
    """
    n = int(valid.sum())
    a = adv[valid]
    if n == 1 and opts["whiten_single_token"] == "raw":
        return adv.copy()
    count = n + opts["whiten_count_eps"]
    mean = a.sum() / count
    var = ((a - mean) ** 2).sum() / count
    if opts["whiten_ddof"] == 1:
        var = var * n / (n - 1) if n > 1 else 0.0
    eps, where = opts["whiten_eps"], opts["whiten_eps_on"]
    scale = np.sqrt(var + eps) if where == "var" else np.sqrt(var) + eps if where == "std" else \
        np.sqrt(max(var, eps))
    if n == 1 or scale == 0.0:
        return np.zeros_like(adv)  # centred to exactly 0; 0 / 0 is 0, never NaN
    return (adv - mean) / scale


def whitening_gain(adv, valid, opts) -> float:
    """max |A| / scale over the response tokens: how much whitening magnifies the rounding of the raw
    advantages (a batch of nearly equal advantages magnifies it most), the comparison's scale."""
    if not opts["whiten"] or valid.sum() < 2:
        return 0.0
    a = adv[valid]
    centred = np.abs(a - a.mean()).max()
    white = np.abs(whiten(adv, valid, opts)[valid]).max()
    return float(np.abs(a).max() * white / centred) if centred > 0 else 0.0


def episode_expected(rewards, values, last, gamma, lam, convention):
    """(advantages, second output) of one episode: rewards-to-go or value targets."""
    n = rewards.shape[0]
    nv = np.append(values[1:], last)
    flags = np.zeros(n, bool)
    adv = reference_gae(rewards, values, nv, flags, flags, gamma, lam)
    if convention == "spinningup":
        # Spinning Up's rewards-to-go: the discounted return bootstrapped from last_val, not A + V.
        second = discounted_returns(rewards, flags, flags, gamma, next_values=np.full(n, float(last)))
    else:
        second = adv + values
    return adv, second


# -- cases: token batches ----------------------------------------------------------------

#: Shapes (B, L) of token batches on the jax backend: a jitted function compiles once per shape.
_JAX_SHAPES = {"full": ((1, 1), (4, 8)), "padded": ((1, 8), (4, 8)), "whitening": ((4, 8),),
               "single": ((1, 1), (1, 8)), "any": ((1, 8), (4, 8)), "long": ((8, 32),)}


@functools.lru_cache(maxsize=None)
def _ints(low: int, high: int):
    """`st.integers(low, high)`, built once: Hypothesis validates each new strategy on its first draw."""
    return st.integers(low, high)


@functools.lru_cache(maxsize=None)
def _int_lists(low: int, high: int, size: int):
    return st.lists(_ints(low, high), min_size=size, max_size=size)


@functools.lru_cache(maxsize=None)
def _choices(options: tuple):
    return st.sampled_from(options)


_SEEDS = st.integers(0, 2**32 - 1)


@st.composite
def token_batches(draw, *, layout: str, max_B: int = 3, max_L: int = 8, jax: bool = False):
    """A token case: rewards, values (B, L), lengths (B,) in 1..L, gamma, lam.

    `layout`: ``"full"`` every row L tokens; ``"padded"`` at least one row
    shorter than L; ``"whitening"`` two rows or more of different lengths,
    one at least padded; ``"single"`` one row of one token (L >= 1: the
    single-token batch); ``"any"``. Padded entries are drawn like the
    others (nonzero), so that reading them shows. Shrinks towards fewer and
    shorter rows, small integers, gamma 0.9 and lambda 0.8. With `jax`,
    (B, L) is one of a few fixed shapes (`_JAX_SHAPES`).
    """
    if jax:
        B, L = draw(_choices(_JAX_SHAPES["long" if max_L > 8 else layout]))
    else:
        min_B = 2 if layout == "whitening" else 1
        B = 1 if layout == "single" else draw(_ints(min_B, max(min_B, max_B)))
        L = draw(_ints(2 if layout in ("padded", "whitening") else 1, max(2, max_L)))
    rng = np.random.default_rng(draw(_SEEDS))
    rewards, values = random_numbers(rng, (B, L)), random_numbers(rng, (B, L))
    if layout == "full":
        lengths = np.full(B, L)
    elif layout == "single":
        lengths = np.ones(B, dtype=int)
    else:
        lengths = np.array(draw(_int_lists(1, L, B)), dtype=int)
        if layout in ("padded", "whitening") and lengths.min() == L:
            lengths[draw(_ints(0, B - 1))] = draw(_ints(1, L - 1))
        if layout == "whitening" and len(set(lengths.tolist())) == 1:
            lengths[0] = L if lengths[0] < L else L - 1
    gamma = draw(_choices(GAMMAS))
    lam = draw(_choices(LAMBDAS))
    return {"rewards": rewards, "values": values, "lengths": lengths, "gamma": gamma, "lam": lam}


def _token_fits(case, layout) -> bool:
    B, L = case["rewards"].shape
    lengths = case["lengths"]
    if layout == "full":
        return bool((lengths == L).all())
    if layout == "single":
        return B == 1 and lengths[0] == 1
    if layout == "padded":
        return bool((lengths < L).any())
    if layout == "whitening":
        return B >= 2 and bool((lengths < L).any()) and len(set(lengths.tolist())) > 1
    return True


def token_moves(case, layout, *, keep_shape=False) -> list:
    """Smaller token cases of the same `layout`: a row dropped, the last column dropped, a row shortened
    (unless `keep_shape`, for jitted functions), then simpler numbers (padding first), gamma, lambda."""
    B, L = case["rewards"].shape
    out = []
    if not keep_shape:
        if B > 1:
            out += [{**case, "rewards": np.delete(case["rewards"], b, 0), "values": np.delete(case["values"], b, 0),
                     "lengths": np.delete(case["lengths"], b)} for b in range(B)]
        if L > 1:
            out.append({**case, "rewards": case["rewards"][:, :-1], "values": case["values"][:, :-1],
                        "lengths": np.minimum(case["lengths"], L - 1)})
    for b in range(B):
        if case["lengths"][b] > 1:
            lengths = case["lengths"].copy()
            lengths[b] -= 1
            out.append({**case, "lengths": lengths})
    for key in ("rewards", "values"):
        for (b, t), x in np.ndenumerate(case[key]):
            for y in simpler_numbers(float(x)):
                arr = case[key].copy()
                arr[b, t] = y
                out.append({**case, key: arr})
    for key, order in (("gamma", (0.5,)), ("lam", (1.0, 0.5))):
        out += [{**case, key: v} for v in simpler_choices(case[key], order)]
    return [c for c in out if _token_fits(c, layout)]


# -- cases: episodes -----------------------------------------------------------------------

#: Episode lengths on the jax backend (one compilation each).
_JAX_LENGTHS = (1, 4, 8)
_JAX_LONG = (32,)


@st.composite
def episode_sets(draw, *, ends: str, max_len: int = 8, max_episodes: int = 3, lengths: tuple | None = None):
    """An episode case: ``episodes``, a list of (rewards (n,), values (n,), last_val, terminated), gamma, lam.

    `ends`: ``"terminal"`` every episode terminated (last_val = 0),
    ``"truncated"`` every episode cut by a time limit (last_val = V(s_T), never
    0), ``"any"`` either. With `lengths`, each n is drawn from it (jax buckets).
    """
    k = draw(_ints(1, max_episodes))
    rng = np.random.default_rng(draw(_SEEDS))
    episodes = []
    for _ in range(k):
        n = draw(_choices(lengths)) if lengths else draw(_ints(1, max_len))
        terminated = ends == "terminal" or (ends == "any" and draw(st.booleans()))
        last = 0.0 if terminated else float(random_numbers(rng, (1,))[0]) or 1.0
        episodes.append((random_numbers(rng, (n,)), random_numbers(rng, (n,)), last, terminated))
    return {"episodes": episodes, "gamma": draw(_choices(GAMMAS)), "lam": draw(_choices(LAMBDAS))}


def _episodes_fit(case, ends) -> bool:
    eps = case["episodes"]
    if not eps:
        return False
    if ends == "terminal":
        return all(e[3] and e[2] == 0.0 for e in eps)
    if ends == "truncated":
        return all(not e[3] and e[2] != 0.0 for e in eps)
    return all(not e[3] or e[2] == 0.0 for e in eps)


def episode_moves(case, ends, *, keep_shape=False) -> list:
    """Smaller episode cases: an episode dropped, an episode's first or last step dropped (unless
    `keep_shape`), simpler numbers (last_val too), gamma, lambda."""
    eps = case["episodes"]
    out = []
    if len(eps) > 1:
        out += [{**case, "episodes": eps[:i] + eps[i + 1:]} for i in range(len(eps))]
    for i, (r, v, last, term) in enumerate(eps):
        def put(new, i=i):
            return {**case, "episodes": eps[:i] + [new] + eps[i + 1:]}
        if len(r) > 1 and not keep_shape:
            out += [put((r[1:], v[1:], last, term)), put((r[:-1], v[:-1], last, term))]
        for j, x in enumerate(r):
            out += [put((np.where(np.arange(len(r)) == j, y, r), v, last, term)) for y in simpler_numbers(float(x))]
        for j, x in enumerate(v):
            out += [put((r, np.where(np.arange(len(v)) == j, y, v), last, term)) for y in simpler_numbers(float(x))]
        out += [put((r, v, y, term)) for y in simpler_numbers(last)]
    for key, order in (("gamma", (0.5,)), ("lam", (1.0, 0.5))):
        out += [{**case, key: v} for v in simpler_choices(case[key], order)]
    return [c for c in out if _episodes_fit(c, ends)]


# -- calling the function ------------------------------------------------------------------

def _mask(case, convention) -> np.ndarray:
    L = case["rewards"].shape[1]
    valid = np.arange(L)[None, :] < case["lengths"][:, None]
    return valid if convention == "openrlhf" else valid.astype(np.int64)


def _token_args(case, convention) -> list:
    r, v, g, lam = case["rewards"], case["values"], case["gamma"], case["lam"]
    if convention == "rlhf":
        return [("token_level_rewards", r), ("values", v), ("response_mask", _mask(case, convention)),
                ("gamma", g), ("lam", lam)]
    return [("values", v), ("rewards", r), ("action_mask", _mask(case, convention)), ("gamma", g), ("lambd", lam)]


def _episode_args(convention, r, v, last, gamma, lam) -> list:
    if convention == "spinningup":
        return [("rewards", r), ("values", v), ("last_val", float(last)), ("gamma", gamma), ("lam", lam)]
    return [("rewards", r), ("vf_preds", v), ("last_r", float(last)), ("gamma", gamma), ("lambda_", lam)]


def _pair(session, call, inputs, shape, names, order, *, float32_second=False):
    """(advantages, second, outcomes, low): the function's outputs as float64 arrays of `shape` (None when
    unusable or not returned) and the outcomes that say why not.

    `names` are (advantages' name, the second output's name); `order` is the declared output order
    (`_OUTPUTS`). With `float32_second`, a float32 second output of float64 inputs is accepted (RLlib
    casts its value targets to float32) and flagged by `low`.
    """
    raw = call.output
    first_name, second_name = names
    if order == ("advantages",):
        if isinstance(raw, (tuple, list)) and len(raw) == 2 and all(
                tuple(getattr(x, "shape", ())) == tuple(shape) for x in raw):
            return None, None, [Outcome("gae.output_shape",
                                        f"{first_name} should be one array of shape {tuple(shape)}, actual a pair "
                                        f"of arrays of that shape: if the function returns ({first_name}, "
                                        f"{second_name}), leave out output='advantages'", inputs)], False
        adv, outcomes = session.output_array(raw, first_name, shape, inputs)
        return adv, None, outcomes, False
    if not (isinstance(raw, (tuple, list)) and len(raw) == 2):
        kind = f"a {type(raw).__name__} of {len(raw)} items" if isinstance(raw, (tuple, list)) else \
            f"one {type(raw).__name__}"
        pair = ", ".join(first_name if o == "advantages" else second_name for o in order)
        hint = " (if it returns the advantages alone, pass output='advantages')" if not isinstance(
            raw, (tuple, list)) else ""
        return None, None, [Outcome("gae.output_shape",
                                    f"the function should return a pair ({pair}), actual {kind}{hint}",
                                    inputs)], False
    raw_adv, raw_second = (raw[0], raw[1]) if order[0] == "advantages" else (raw[1], raw[0])
    first, outcomes = session.output_array(raw_adv, first_name, shape, inputs)
    low = False
    if float32_second and session.backend.dtype == "float64":
        low = str(getattr(raw_second, "dtype", "")).endswith("float32")
    second, more = session.output_array(raw_second, second_name, shape, inputs, check_id="gae.returns",
                                        dtype_matters=not low)
    return first, second, outcomes + more, low


# -- the check -------------------------------------------------------------------------------

@numerics_of_their_own
def check_layout(fn, *, convention: str, backend: str = "auto", dtype: str = "float64", max_examples: int = 100,
                 seed: int = 0, **options) -> Report:
    r"""Check token-level (RLHF) or episode-at-a-time GAE against the exact recursion [Schulman2016].

    .. math::
        \hat A_t = \delta_t + \gamma\lambda \hat A_{t+1}, \quad
        \delta_t = r_t + \gamma V(s_{t+1}) - V(s_t),

    with :math:`V(s_{t+1}) = 0` after a response's last token (``"rlhf"``,
    ``"openrlhf"``) and ``last_val`` after an episode's last step
    (``"spinningup"``, ``"rllib"``).

    Parameters
    ----------
    fn : callable
        The user's function, with the signature of `convention` (`LAYOUT_CONVENTIONS`).
    convention : {"rlhf", "openrlhf", "spinningup", "rllib"}
    backend : {"auto", "numpy", "torch", "jax"}
        As in `refpg.conformance.check_gae`. On ``"jax"``, token batches come in four shapes
        (B, L): (1, 1), (1, 8), (4, 8) and (8, 32) for the long ones, and
        episodes in lengths 1, 4, 8 (and 32), and shrinking keeps the shape: a
        jitted function compiles four times, not once per case.
    dtype : {"float64", "float32"}
    max_examples : int
        Cases drawn per scenario (B <= 3 rows of L <= 8 tokens, or up to 3
        episodes of <= 8 steps; a fifth as many of up to 8 x 64 or 64 steps).
    seed : int
    **options
        Token conventions, the whitening of `refpg.conformance.check_gae`
        with its defaults and two more: ``whiten`` (False; verl's
        ``compute_gae_advantage_return`` and TRL's PPOTrainer whiten,
        OpenRLHF's ``get_advantages_and_returns`` does not), ``whiten_ddof``
        (1: Bessel's correction, verl's ``masked_var``; 0: TRL's PPOTrainer and
        OpenRLHF), ``whiten_eps`` (1e-8), ``whiten_eps_on`` (``"std"``:
        :math:`\sigma + \epsilon`; ``"var"``: :math:`\sqrt{\sigma^2 +
        \epsilon}`, verl and TRL; ``"clamp"``: :math:`\sqrt{\max(\sigma^2,
        \epsilon)}`, OpenRLHF), ``whiten_count_eps`` (0; recent verl's
        ``masked_mean`` divides by ``mask.sum() + 1e-8``) and
        ``whiten_single_token`` (``"zero"``: a batch of one response token
        whitens to 0; ``"raw"``: whitening is skipped, as alibaba/ROLL issue
        #475 settled). verl's function is ``whiten=True, whiten_eps_on="var"``.
        Every convention: ``output``, what the function returns in order,
        ``"advantages,returns"`` (the default here: verl, OpenRLHF, Spinning
        Up and RLlib return both; "returns" stands for the convention's
        second output, rewards-to-go or value targets), ``"returns,advantages"``
        or ``"advantages"`` (``gae.returns`` is then not run). ``returns`` is
        accepted for `refpg.conformance.check_gae`'s sake.

    Returns
    -------
    Report
        Token conventions: ``gae.recursion`` (rows of full length),
        ``gae.padding_ignored`` (right-padded rows whose padding holds
        nonzero rewards and values), ``gae.whitening`` (with ``whiten``: the
        returns prove the raw advantages right, the whitened ones are wrong),
        ``gae.single_token_batch`` (one response token in the whole batch:
        no exception, no NaN, the declared rule), ``gae.returns``
        (:math:`\hat A + V` on the response tokens, before whitening),
        ``gae.general``. Episode conventions: ``gae.recursion`` (terminated
        episodes, ``last_val = 0``), ``gae.truncation_bootstrapped``
        (``last_val = V(s_T) != 0``), ``gae.returns`` (Spinning Up's
        rewards-to-go :math:`\sum_k \gamma^k r_{t+k} + \gamma^{T-t} last\_val`;
        RLlib's value targets :math:`\hat A + V`), ``gae.general``. Plus
        ``gae.raised``, ``gae.output_shape``, ``gae.output_dtype``,
        ``gae.output_finite`` (padding included) and ``gae.input_mutated``.

    Notes
    -----
    Padding: the mask is right-padded (1...1 0...0, at least one 1 per row),
    as verl and OpenRLHF build it; rows with holes (multi-turn observation
    tokens) are not drawn. The output at padding positions is not compared,
    but it must be finite: a NaN there survives ``(x * mask).sum()``.

    RLlib casts its value targets to float32; a float32 ``value_targets`` of
    float64 inputs is accepted and compared at the float32 tolerance, with
    a warning.

    Examples
    --------
    >>> from refpg.conformance.gae_layouts import check_layout
    >>> from refpg.examples.gae_layouts_examples import spinningup_finish_path
    >>> check_layout(spinningup_finish_path, convention="spinningup", max_examples=10).passed
    True
    """
    check_callable(fn)
    check_choice(convention, "convention", tuple(LAYOUT_CONVENTIONS))
    max_examples = check_positive_int(max_examples, "max_examples")
    seed = check_positive_int(seed, "seed", minimum=0)
    opts = _options(convention, options)
    from refpg.conformance.gae import GAE_CONVENTIONS  # every GAE convention, to name another layout's function

    named = check_signature(fn, "gae", convention, convention_parameters(GAE_CONVENTIONS))
    token = convention in _TOKEN

    def probe(be):
        probe_session = Session("gae", fn, convention, be, max_examples=1, seed=seed, options={})
        if token:
            case = {"rewards": np.array([[1.0, 0.5], [0.0, 2.0]]), "values": np.array([[0.5, 0.25], [1.0, 0.0]]),
                    "lengths": np.array([2, 1]), "gamma": 0.9, "lam": 0.95}
            probe_session.call(_token_args(case, convention))
        else:
            probe_session.call(_episode_args(convention, np.array([1.0, 0.5]), np.array([0.5, 0.25]), 0.75,
                                             0.9, 0.95))
        return probe_session.first_error or True

    be, warnings = resolve_backend(fn, backend, dtype, probe)
    shown = dict(opts)  # the whitening rules read with the report
    session = Session("gae", fn, convention, be, max_examples=max_examples, seed=seed, options=shown,
                      warnings=named + warnings)
    session.declare(*session.generic_ids())
    if token:
        _run_token(session, convention, opts, max_examples)
    else:
        _run_episodes(session, convention, opts, max_examples)
    return session.report()


def _round_token(case, be) -> dict:
    return {**case, "rewards": be.round(case["rewards"]), "values": be.round(case["values"])}


_PADDING_SHOWN = " (expected shows nan at the padding: those positions are not compared)"


def _with_nan_padding(x, valid):
    return np.where(valid, x, np.nan)


def _run_token(session: Session, convention: str, opts: dict, max_examples: int) -> None:
    be = session.backend
    jax = be.name == "jax"
    names = ("advantages", "returns")
    output_order = tuple(opts.get("output", "advantages,returns").split(","))
    with_returns = "returns" in output_order

    def call(case, *, check_id=None):
        """(adv, ret, outcomes, inputs) of one call, both None when unusable."""
        args = _token_args(case, convention)
        inputs = {name: value for name, value in args}
        c = session.call(args)
        outcomes = session.generic_outcomes(c, inputs)
        if check_id is not None:
            # A single-token batch that raises is this check's failure, said so, not a generic one.
            outcomes = [Outcome(check_id, o.message + "; " + _single_rule(opts), o.inputs, traceback=o.traceback)
                        if o.check_id == "gae.raised" else o for o in outcomes]
            if c.error is not None:
                session.ran(check_id)
        if c.error is not None:
            return None, None, outcomes, inputs
        adv, ret, more, _ = _pair(session, c, inputs, case["rewards"].shape, names, output_order)
        if check_id is not None:
            # A NaN (0 / 0 of a lone token's variance) is this check's failure too; a wrong shape is not.
            more = [Outcome(check_id, o.message + "; " + _single_rule(opts), o.inputs, o.expected, o.actual, o.where)
                    if o.check_id == "gae.output_finite" else o for o in more]
            session.ran(check_id)
        return adv, ret, outcomes + more, inputs

    def evaluate_for(check_id):
        def evaluate(case):
            case = _round_token(case, be)
            # A batch of one response token, in whatever scenario, is judged by its own rule.
            single = int(case["lengths"].sum()) == 1
            adv, ret, outcomes, inputs = call(case, check_id="gae.single_token_batch" if single else None)
            cid = "gae.single_token_batch" if single else check_id
            if adv is None or (ret is None and with_returns):
                return outcomes
            valid = _mask(case, "rlhf").astype(bool)
            raw = token_gae(case["rewards"], case["values"], case["lengths"], case["gamma"], case["lam"])
            expected = whiten(raw, valid, opts) if opts["whiten"] else raw
            ret_expected = raw + case["values"]
            # Padding is not compared: its expected value is shown as nan, the function's own as returned.
            gain = whitening_gain(raw, valid, opts)
            bad_adv = session.compare(cid, "advantages", np.where(valid, adv, 0.0),
                                      np.where(valid, expected, 0.0), inputs, why=_HINTS[cid],
                                      scale=gain)
            ret_ok = with_returns and np.all(np.abs(np.where(valid, ret - ret_expected, 0.0))
                                             <= be.tol * (1.0 + np.max(np.abs(ret_expected[valid]))))
            if bad_adv is not None:
                if opts["whiten"] and ret_ok and cid != "gae.single_token_batch":
                    bad_adv.check_id = "gae.whitening"
                    session.ran("gae.whitening")
                    allowed = be.tol * (1.0 + max(gain, float(np.max(np.abs(expected[valid])))))
                    bad_adv.message = bad_adv.message.replace(_HINTS[cid],
                                                              _whitening_why(adv, raw, valid, opts, allowed))
                elif cid == "gae.padding_ignored" or (cid == "gae.general"
                                                      and (case["lengths"] < case["rewards"].shape[1]).any()):
                    bad_adv.message += _padding_diagnosis(call, case, expected, valid, be)
                elif opts["whiten"] and cid == "gae.single_token_batch":
                    bad_adv.message += "; " + _single_rule(opts)
                elif not opts["whiten"] and ret_ok and valid.sum() > 1:
                    bad_adv.message += _looks_whitened(adv, raw, valid, opts, be.tol * (1.0 + max(
                        1.0, float(np.max(np.abs(raw[valid]))))))
                bad_adv.expected, bad_adv.actual = _with_nan_padding(expected, valid), adv
                bad_adv.message += _PADDING_SHOWN if not valid.all() else ""
                outcomes.append(bad_adv)
            if opts["whiten"] and cid != "gae.single_token_batch" and bad_adv is None:
                session.ran("gae.whitening")
            if not with_returns:
                return outcomes
            bad_ret = session.compare("gae.returns", "returns", np.where(valid, ret, 0.0),
                                      np.where(valid, ret_expected, 0.0), inputs,
                                      why="returns = advantages + values with the raw (unwhitened) advantages, "
                                          "on the response tokens (the critic's targets)")
            if bad_ret is not None:
                if np.allclose(np.where(valid, ret, 0.0), np.where(valid, adv + case["values"], 0.0),
                               rtol=0, atol=be.tol * (1 + np.max(np.abs(ret_expected)))) and opts["whiten"]:
                    bad_ret.message += "; they are the whitened advantages + values: take the returns before " \
                                       "whitening"
                bad_ret.expected, bad_ret.actual = _with_nan_padding(ret_expected, valid), ret
                bad_ret.message += _PADDING_SHOWN if not valid.all() else ""
                outcomes.append(bad_ret)
            return outcomes
        return evaluate

    order = ["gae.recursion", "gae.padding_ignored", "gae.whitening", "gae.single_token_batch", "gae.returns",
             "gae.general"]
    session.declare(*order, tracked=True)
    if not opts["whiten"]:
        session.not_run_because("gae.whitening", "whiten=False declares raw advantages", by_design=True)
    if not with_returns:
        session.not_run_because("gae.returns", "output='advantages' declares no returns", by_design=True)
    scenarios = [("gae.recursion", "full"), ("gae.padding_ignored", "padded")]
    if opts["whiten"]:
        scenarios.append(("gae.whitening", "whitening"))
    scenarios.append(("gae.single_token_batch", "single"))
    for check_id, layout in scenarios:
        evaluate = evaluate_for("gae.padding_ignored" if check_id == "gae.whitening" else check_id)
        count = max(1, max_examples // 5) if layout == "single" and not jax else max_examples
        session.run_scenario(token_batches(layout=layout, jax=jax), evaluate, (check_id,),
                             moves=lambda c, layout=layout: token_moves(c, layout, keep_shape=jax),
                             max_examples=count)
    if session.catch_all_blocked("gae.general", order[:-1]):
        return
    general = evaluate_for("gae.general")
    session.run_scenario(token_batches(layout="any", jax=jax), general, ("gae.general",),
                         moves=lambda c: token_moves(c, "any", keep_shape=jax))
    session.run_scenario(token_batches(layout="any", max_B=8, max_L=64, jax=jax), general, ("gae.general",),
                         moves=lambda c: token_moves(c, "any", keep_shape=jax), max_examples=max(1, max_examples // 5))


def _single_rule(opts) -> str:
    if not opts["whiten"]:
        return "a batch of one response token is an ordinary batch when nothing is whitened"
    if opts["whiten_single_token"] == "raw":
        return ("the declared rule for a batch of one response token (whiten_single_token='raw') is to skip the "
                "whitening: its variance is undefined (n - 1 = 0), so return the raw advantage")
    return ("the declared rule for a batch of one response token (whiten_single_token='zero') is a whitened advantage "
            "of 0: the centred value A - mean is exactly 0 whatever the scale, so the Bessel-corrected variance "
            "0/0 must not be computed (verl's masked_var raises here, alibaba/ROLL issue #475); declare "
            "whiten_single_token='raw' if the function skips the whitening instead")


def _whitening_why(adv, raw, valid, opts, tol) -> str:
    """Why the whitened advantages differ: the declared rule, and the common variants that match the output
    within `tol` (another ddof, eps placement or count_eps; statistics that include the padding)."""
    n = int(valid.sum())
    place = {"var": "under the square root", "std": "added to the std", "clamp": "as a floor of the variance"}
    said = (f"the returns show the raw advantages are right; the whitening is not the declared one (over the "
            f"response tokens of the whole batch, whiten_ddof={opts['whiten_ddof']}, whiten_eps={opts['whiten_eps']:g} "
            f"{place[opts['whiten_eps_on']]}, whiten_count_eps={opts['whiten_count_eps']:g})")
    if n < 2:
        return said

    def fits(alt) -> bool:
        return bool(np.all(np.abs(alt[valid] - adv[valid]) <= tol))

    if fits(raw):
        return said + "; the output is the raw advantages: nothing is whitened (declare whiten=False if that " \
                      "is the function's rule)"
    variants = []
    for ddof in (0, 1):
        for where in _EPS_WHERE:
            for count_eps in (0.0, 1e-8):
                other = {**opts, "whiten_ddof": ddof, "whiten_eps_on": where, "whiten_count_eps": count_eps}
                if other != opts and fits(whiten(raw, valid, other)):
                    variants.append(f"whiten_ddof={ddof}, whiten_eps_on={where!r}, whiten_count_eps={count_eps:g}")
    flat = np.where(valid, raw, 0.0)
    if fits(whiten(flat, np.ones_like(valid), opts)):
        variants.append("statistics over every position, padding included (the mask ignored; ray-project/ray "
                        "issue #57989)")
    # NovaSky-AI/SkyRL issue #1305: the mean over every position (padding as the function's 0), the
    # variance over the response tokens only.
    mean_all = flat.mean()
    var = ((flat - mean_all) ** 2 * valid).sum() / n * (n / (n - 1) if opts["whiten_ddof"] == 1 else 1.0)
    eps, where = opts["whiten_eps"], opts["whiten_eps_on"]
    scale = np.sqrt(var + eps) if where == "var" else np.sqrt(var) + eps if where == "std" else \
        np.sqrt(max(var, eps))
    if fits((flat - mean_all) / scale):
        variants.append("the mean taken over every position, padding included (NovaSky-AI/SkyRL issue #1305)")
    declarable = [v for v in variants if v.startswith("whiten_")]
    bugs = [v for v in variants if not v.startswith("whiten_")]
    if declarable:
        said += ("; the output matches " + declarable[0] if len(declarable) == 1 else
                 "; the output matches each of: " + "; ".join(declarable[:3]))
        said += " (if that is the function's rule, declare it)"
    elif bugs:
        # Statistics over the padding are no rule a user can declare: they are the bug.
        said += "; the output matches " + bugs[0] + ": the whitening must use the response tokens only"
    return said


def _looks_whitened(adv, raw, valid, opts, tol) -> str:
    """With whiten=False declared: whether the output is the raw advantages whitened by a common rule."""
    for ddof in (1, 0):
        for where in _EPS_WHERE:
            rule = {**opts, "whiten": True, "whiten_ddof": ddof, "whiten_eps_on": where}
            if np.all(np.abs(whiten(raw, valid, rule)[valid] - adv[valid]) <= tol):
                return (f"; the returns are right and the advantages are the raw ones whitened (whiten_ddof={ddof}, "
                        f"whiten_eps_on={where!r}): declare whiten=True with that rule")
    return ""


def _padding_diagnosis(call, case, expected, valid, be) -> str:
    """A second call with the padding zeroed: if it passes, the function reads the padding."""
    zeroed = {**case, "rewards": np.where(valid, case["rewards"], 0.0), "values": np.where(valid, case["values"], 0.0)}
    adv, _, _, _ = call(zeroed)
    if adv is None:
        return ""
    scale = np.max(np.abs(expected[valid]))
    if np.all(np.abs(np.where(valid, adv - expected, 0.0)) <= be.tol * (1.0 + scale)):
        return ("; with the padded rewards and values set to 0 the same call is right: the function reads the "
                "padding (mask the rewards and values before the loop, or carry through masked tokens as verl "
                "does)")
    return ""


def _run_episodes(session: Session, convention: str, opts: dict, max_examples: int) -> None:
    be = session.backend
    jax = be.name == "jax"
    second_name = "rewards_to_go" if convention == "spinningup" else "value_targets"
    output_order = tuple(opts.get("output", "advantages,returns").split(","))
    with_returns = "returns" in output_order
    warned = {"low": False}

    def evaluate_for(check_id):
        def evaluate(case):
            outcomes = []
            gamma, lam = case["gamma"], case["lam"]
            for i, (r, v, last, term) in enumerate(case["episodes"]):
                r, v, last = be.round(r), be.round(v), float(be.round(np.array(last)))
                args = _episode_args(convention, r, v, last, gamma, lam)
                inputs = {name: value for name, value in args}
                inputs["(episode)"] = (f"{i + 1} of {len(case['episodes'])}, "
                                       f"{'terminated: last_val = 0' if term else 'cut by a time limit: bootstrap'}")
                c = session.call(args)
                outcomes += session.generic_outcomes(c, inputs)
                if c.error is not None:
                    return outcomes
                adv, second, more, low = _pair(session, c, inputs, r.shape, ("advantages", second_name),
                                               output_order, float32_second=convention == "rllib")
                outcomes += more
                if adv is None or (second is None and with_returns):
                    return outcomes
                exp_adv, exp_second = episode_expected(r, v, last, gamma, lam, convention)
                why = _HINTS.get(f"{check_id} (episode)", _HINTS[check_id])
                bad = session.compare(check_id, "advantages", adv, exp_adv, inputs, why=why)
                if bad is not None:
                    outcomes.append(bad)
                if not with_returns:
                    if bad is not None:
                        return outcomes
                    continue
                scale = 0.0
                if low:
                    if not warned["low"]:
                        warned["low"] = True
                        session.warn("value_targets are float32 for float64 inputs, as RLlib's compute_advantages "
                                     "casts them: compared at the float32 tolerance (1e-4)")
                    # The comparison's allowance tol * (1 + scale) made the float32 one, 1e-4 * (1 + |expected|).
                    scale = 1e5 * (1.0 + float(np.max(np.abs(exp_second)))) - 1.0
                why = ("rewards-to-go are the discounted returns bootstrapped from last_val, "
                       "G_t = r_t + gamma * G_{t+1}, G_T = last_val (Spinning Up's discount_cumsum of the rewards "
                       "with last_val appended), not advantages + values" if convention == "spinningup" else
                       "value_targets = advantages + vf_preds (RLlib's use_gae=True)")
                bad2 = session.compare("gae.returns", second_name, second, exp_second, inputs, scale=scale, why=why)
                if bad2 is not None:
                    if convention == "spinningup" and np.allclose(second, exp_adv + v, rtol=0,
                                                                  atol=be.tol * (1 + np.max(np.abs(exp_second)))):
                        bad2.message += "; they are advantages + values, the lambda-returns"
                    outcomes.append(bad2)
                if bad is not None or bad2 is not None:
                    return outcomes
            return outcomes
        return evaluate

    order = ["gae.recursion", "gae.truncation_bootstrapped", "gae.returns", "gae.general"]
    session.declare(*order, tracked=True)
    if not with_returns:
        session.not_run_because("gae.returns", "output='advantages' declares no second output", by_design=True)
    lengths = _JAX_LENGTHS if jax else None
    for check_id, ends in (("gae.recursion", "terminal"), ("gae.truncation_bootstrapped", "truncated")):
        session.run_scenario(episode_sets(ends=ends, lengths=lengths), evaluate_for(check_id), (check_id,),
                             moves=lambda c, ends=ends: episode_moves(c, ends, keep_shape=jax))
    if session.catch_all_blocked("gae.general", order[:-1]):
        return
    general = evaluate_for("gae.general")
    session.run_scenario(episode_sets(ends="any", lengths=lengths), general, ("gae.general",),
                         moves=lambda c: episode_moves(c, "any", keep_shape=jax))
    session.run_scenario(episode_sets(ends="any", max_len=64, lengths=_JAX_LONG if jax else None), general,
                         ("gae.general",), moves=lambda c: episode_moves(c, "any", keep_shape=jax),
                         max_examples=max(1, max_examples // 5))
