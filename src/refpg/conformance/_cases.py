"""Hypothesis strategies of canonical cases for the checks, built to shrink to readable examples.

Numbers are drawn first from small integers (what a failing example shrinks
to: ``rewards = [[1.]]`` reads at a glance) and otherwise from bounded floats.

Strategies that a composite strategy draws from on every case are built once
(module constants, or cached by their arguments): Hypothesis validates each
new strategy object on its first draw, and that validation, repeated for
every case, cost about a fifth of a GAE check's time. A strategy draws the
same values whether it is new or reused.
"""

from __future__ import annotations

import functools

import numpy as np
from hypothesis import strategies as st

__all__ = ["numbers", "float_arrays", "bool_arrays", "rollouts", "rollout_moves", "simpler_numbers", "GAMMAS", "LAMBDAS"]

#: Discounts drawn by the GAE check, in shrink order (the first is where examples shrink to).
GAMMAS = (0.9, 0.5, 0.99, 1.0, 0.0)
LAMBDAS = (0.8, 0.95, 0.5, 1.0, 0.0)
_GAMMA_CHOICES = st.sampled_from(GAMMAS)
_LAMBDA_CHOICES = st.sampled_from(LAMBDAS)


@functools.lru_cache(maxsize=None)
def numbers(bound: float = 10.0):
    """Floats in [-bound, bound], shrinking towards small integers."""
    small = st.integers(-4, 4).map(float)
    return st.one_of(small, st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=32)
                     .map(float))


def random_numbers(rng, shape) -> np.ndarray:
    """Numbers for an array of a case, drawn by NumPy from a seed that Hypothesis draws.

    Drawing each entry through Hypothesis costs ~0.1 ms; the structure of a
    case (sizes, flags, discounts) is what Hypothesis's exploration is good
    at, and `rollout_moves` shrinks the numbers. Two in three are small
    integers (what counterexamples read best with), the rest float32-exact
    reals in [-10, 10].
    """
    ints = rng.integers(-4, 5, size=shape).astype(np.float64)
    reals = rng.uniform(-10.0, 10.0, size=shape).astype(np.float32).astype(np.float64)
    return np.where(rng.random(shape) < 2 / 3, ints, reals)


def float_arrays(shape, elements=None):
    """float64 arrays of `shape`; a flat list underneath, which shrinks faster than `hnp.arrays`."""
    n = int(np.prod(shape))
    elements = elements if elements is not None else numbers()
    return st.lists(elements, min_size=n, max_size=n).map(lambda xs: np.array(xs, dtype=np.float64)
                                                          .reshape(shape))


@functools.lru_cache(maxsize=None)
def bool_arrays(shape: tuple):
    """bool arrays of `shape` (a tuple); one strategy per shape."""
    n = int(np.prod(shape))
    return st.lists(st.booleans(), min_size=n, max_size=n).map(lambda xs: np.array(xs, dtype=bool)
                                                               .reshape(shape))


@functools.lru_cache(maxsize=None)
def _choice(options: tuple):
    """`st.sampled_from(options)`, one strategy per tuple (see the module's note on reuse)."""
    return st.sampled_from(options)


def _min_rows(flags: str) -> int:
    """The fewest rows a rollout of this episode structure has (a boundary before the last row needs 2)."""
    return 2 if flags in ("boundaries", "truncation_mid") else 1


@st.composite
def rollouts(draw, *, flags: str, max_T: int = 8, max_N: int = 3, min_size: int = 1, sizes=None):
    """A canonical GAE case: dict of rewards, values, next_values, terminated, truncated, gamma, lam.

    `flags` selects the episode structure:

    * ``"none"``: one episode per column, cut by the end of the rollout;
    * ``"terminal"``: terminations only, at least one (possibly at the last row);
    * ``"truncation_end"``: truncation at the last row of at least one column, nothing else;
    * ``"truncation_mid"``: truncations only, at least one before the last row, and lambda = 0;
    * ``"boundaries"``: terminations and truncations, at least one before the last row;
    * ``"any"``: any flags, both at once included.

    ``next_values[t]`` equals ``values[t + 1]`` inside an episode (as it is
    in a real rollout); after a flag or at the last row it is the value of the
    final observation, drawn independently. ``start`` is whether row 0 starts
    an episode (SB3's ``episode_starts[0]``, CleanRL's ``dones[0]``), which
    must not matter.

    `min_size` is the fewest entries T * N (a whitened output needs two for
    its standard deviation). `sizes`, a pair (row counts, column counts),
    draws the shape from those lists only: a jitted JAX function compiles once
    per input shape, so its cases come in a few fixed shapes. Shrinks towards
    one column, few rows, small integers (`rollout_moves`).
    """
    min_T = _min_rows(flags)
    if sizes is None:
        T = draw(st.integers(min_T, max(max_T, min_T)))
        N = draw(st.integers(min(max_N, -(-min_size // T)), max_N))
    else:
        T = draw(_choice(tuple(t for t in sizes[0] if t >= min_T)))
        N = draw(_choice(tuple(n for n in sizes[1] if T * n >= min_size) or (max(sizes[1]),)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rewards, values, finals = (random_numbers(rng, (T, N)) for _ in range(3))
    term = np.zeros((T, N), dtype=bool)
    trunc = np.zeros((T, N), dtype=bool)
    bools = bool_arrays((T, N))
    if sizes is not None and T * N > 64:
        # A fixed long shape (jax): 1,024 flags drawn one by one through Hypothesis cost more than the
        # calls they feed; NumPy draws them from the seed instead, and `rollout_moves` clears them.
        bools = st.just(None).map(lambda _: rng.random((T, N)) < 0.5)
    if flags == "terminal":
        term = draw(bools)
        if not term.any():
            term[draw(st.integers(0, T - 1)), draw(st.integers(0, N - 1))] = True
    elif flags == "truncation_mid":
        trunc = draw(bools)
        if not trunc[:-1].any():
            trunc[draw(st.integers(0, T - 2)), draw(st.integers(0, N - 1))] = True
    elif flags == "truncation_end":
        cols = draw(bool_arrays((N,)))
        if not cols.any():
            cols[draw(st.integers(0, N - 1))] = True
        trunc[T - 1] = cols
    elif flags in ("boundaries", "any"):
        term = draw(bools)
        trunc = draw(bools)
        if flags == "boundaries":
            term &= ~trunc  # one kind of boundary per row keeps the example readable
            if not (term[:-1] | trunc[:-1]).any():
                row, col = draw(st.integers(0, T - 2)), draw(st.integers(0, N - 1))
                if draw(st.booleans()):
                    trunc[row, col] = True
                else:
                    term[row, col] = True
    elif flags != "none":  # pragma: no cover - internal misuse
        raise ValueError(flags)
    done = term | trunc
    next_values = finals.copy()
    inside = ~done[:-1]
    next_values[:-1][inside] = values[1:][inside]
    gamma = draw(_GAMMA_CHOICES)
    # With lambda = 0 nothing flows between rows, so a mid-rollout truncation tests the bootstrap alone.
    lam = 0.0 if flags == "truncation_mid" else draw(_LAMBDA_CHOICES)
    start = draw(bool_arrays((N,)))
    return {"rewards": rewards, "values": values, "next_values": next_values, "terminated": term,
            "truncated": trunc, "gamma": gamma, "lam": lam, "start": start}


def link(case: dict) -> dict:
    """Restore ``next_values[t] = values[t + 1]`` inside episodes after a move changed a case."""
    done = case["terminated"] | case["truncated"]
    nv = case["next_values"].copy()
    inside = ~done[:-1]
    nv[:-1][inside] = case["values"][1:][inside]
    return {**case, "next_values": nv}


def simpler_numbers(x: float) -> list:
    """Simpler values to try for one number: 0, its sign, its integer part, one decimal."""
    out = []
    for y in (0.0, float(np.sign(x)), float(np.trunc(x)), float(np.round(x, 1))):
        if y != x and y not in out and abs(y) <= abs(x):
            out.append(y)
    return out


def rollout_fits(case: dict, flags: str, *, min_size: int = 1, sizes=None) -> bool:
    """Whether `case` has the episode structure, size and shape `rollouts(flags=flags, min_size=min_size,
    sizes=sizes)` promises (see there)."""
    T, N = case["rewards"].shape
    if T * N < min_size or T < _min_rows(flags):
        return False
    if sizes is not None and (T not in sizes[0] or N not in sizes[1]):
        return False
    term, trunc = case["terminated"], case["truncated"]
    if flags == "none":
        return not (term.any() or trunc.any())
    if flags == "terminal":
        return bool(term.any()) and not trunc.any()
    if flags == "truncation_end":
        return not term.any() and not trunc[:-1].any() and bool(trunc[-1].any())
    if flags == "truncation_mid":
        return not term.any() and bool(trunc[:-1].any()) and case["lam"] == 0.0
    if flags == "boundaries":
        return not (term & trunc).any() and bool((term[:-1] | trunc[:-1]).any())
    return True


def rollout_moves(case: dict, flags: str = "any", *, min_size: int = 1, sizes=None) -> list:
    """Smaller valid rollouts than `case`, structural moves first, each with the episode structure,
    size and shape `rollouts` promises for these arguments (`rollout_fits`): shrinking never goes
    below what the scenario draws, and with `sizes` never leaves its shapes.

    One column; the first or last row dropped (with `sizes`: the first or
    last rows kept down to each smaller listed row count, so that the case
    stays in a listed shape); a flag cleared; then each free number made
    simpler (`simpler_numbers`); then gamma and lambda made simpler. Every
    move keeps the rollout consistent (`link`).
    """
    return [c for c in _rollout_moves(case, sizes) if rollout_fits(c, flags, min_size=min_size, sizes=sizes)]


def _rollout_moves(case: dict, sizes=None) -> list:
    T, N = case["rewards"].shape
    arrays = ("rewards", "values", "next_values", "terminated", "truncated")
    out = []
    if N > 1:
        out += [{**case, **{k: case[k][:, n:n + 1] for k in arrays}, "start": case["start"][n:n + 1]}
                for n in range(N)]
    if sizes is None:
        if T > 1:
            out.append({**case, **{k: case[k][1:] for k in arrays}})
            out.append(link({**case, **{k: case[k][:-1] for k in arrays}}))
    else:
        for t in sorted((t for t in sizes[0] if t < T), reverse=True):
            out.append({**case, **{k: case[k][T - t:] for k in arrays}})
            out.append(link({**case, **{k: case[k][:t] for k in arrays}}))
    for flag in ("terminated", "truncated"):
        for t, n in zip(*np.nonzero(case[flag])):
            arr = case[flag].copy()
            arr[t, n] = False
            out.append(link({**case, flag: arr}))
    done = case["terminated"] | case["truncated"]
    free = done.copy()
    free[-1] = True  # next_values is free only where it is not values[t + 1]
    for key in ("rewards", "values", "next_values"):
        for (t, n), x in np.ndenumerate(case[key]):
            if key == "next_values" and not free[t, n]:
                continue
            for y in simpler_numbers(float(x)):
                arr = case[key].copy()
                arr[t, n] = y
                out.append(link({**case, key: arr}))
    if case["start"].any():
        out.append({**case, "start": np.zeros_like(case["start"])})
    for key, order in (("gamma", (0.5,)), ("lam", (1.0, 0.5))):
        out += [{**case, key: v} for v in simpler_choices(case[key], order)]
    return out


def simpler_choices(value, order) -> tuple:
    """The entries of `order` simpler than `value`: those before it (all of them if it is not listed).

    Moving only towards the front of a fixed order keeps greedy shrinking from cycling.
    """
    return tuple(order[:order.index(value)] if value in order else order)


def sample_moves(case: dict, keys: tuple, choices: dict | None = None, *, n_min: int = 1) -> list:
    """Smaller variants of a case of per-sample arrays `keys` (all of one length): drop a sample
    (never below `n_min`, the fewest the strategy draws), then make one number simpler, then move a
    scalar towards the front of its `choices` order."""
    n = len(case[keys[0]])
    out = []
    if n > max(1, n_min):
        out += [{**case, **{k: np.delete(case[k], i) for k in keys}} for i in range(n)]
    for key in keys:
        for i, x in enumerate(case[key]):
            for y in simpler_numbers(float(x)):
                arr = case[key].copy()
                arr[i] = y
                out.append({**case, key: arr})
    for key, order in (choices or {}).items():
        out += [{**case, key: v} for v in simpler_choices(case[key], order)]
    return out


def samples(n_min: int = 1, n_max: int = 8, **columns):
    """A dict of equal-length float64 arrays, one per keyword (name=element strategy), plus ``n``."""
    @st.composite
    def build(draw):
        n = draw(st.integers(n_min, n_max))
        return {name: np.array(draw(st.lists(elem, min_size=n, max_size=n)), dtype=np.float64)
                for name, elem in columns.items()}
    return build()
