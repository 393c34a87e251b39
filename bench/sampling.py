"""Steps per second of refpg's vectorized sampler against Gymnasium stepped in a Python loop.

Baseline (named, same run): ``gymnasium.make("FrozenLake-v1", map_name="8x8",
is_slippery=True)`` stepped one transition at a time in a Python loop, with
actions drawn from the same uniform policy by a NumPy generator and a reset at
the end of each episode (TimeLimit 200, as registered). refpg: `sample_steps`
on the same MDP (imported from that very env) with N = 1024 environments and
the same time limit.

Usage: ``python bench/sampling.py [--quick]``. Target: ratio >= 100x.
"""

import argparse
import time

import numpy as np

import refpg
from refpg.sampling import Sampler


def gym_loop_steps_per_second(n_steps: int, seed: int = 0) -> float:
    import gymnasium as gym

    env = gym.make("FrozenLake-v1", map_name="8x8", is_slippery=True)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(n_steps):
        # The policy is uniform: one categorical draw per step, as refpg does.
        _, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
        if terminated or truncated:
            env.reset()
    return n_steps / (time.perf_counter() - start)


def refpg_steps_per_second(n_envs: int, n_steps: int, repeats: int, seed: int = 0, *,
                           hold: bool = True) -> float:
    mdp = refpg.envs.from_gymnasium("FrozenLake-v1", map_name="8x8", is_slippery=True)
    pi = np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
    sampler = Sampler(mdp, pi)  # built once, as a training loop would
    rng = np.random.default_rng(seed)
    # As in a training loop, each batch is held while the next is sampled.
    # (Dropping it at once lets glibc return the freed pages to the OS, so
    # every call would pay page faults on fresh (T, N) arrays: about 2x.)
    # Warm-up at full size for the allocator to reach that steady state.
    batch = None
    for _ in range(3):
        batch = sampler.steps(n_envs, n_steps, rng=rng, max_episode_steps=200)
        if not hold:
            batch = None
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        batch = sampler.steps(n_envs, n_steps, rng=rng, max_episode_steps=200)
        best = min(best, time.perf_counter() - start)
        if not hold:
            batch = None
    del batch
    return n_envs * n_steps / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke test)")
    args = parser.parse_args()
    gym_steps = 5_000 if args.quick else 100_000
    T = 50 if args.quick else 500
    repeats = 2 if args.quick else 5
    gym_sps = max(gym_loop_steps_per_second(gym_steps) for _ in range(1 if args.quick else 3))
    ours = refpg_steps_per_second(1024, T, repeats)
    cold = refpg_steps_per_second(1024, T, repeats, hold=False)
    ratio = ours / gym_sps
    print(f"Gymnasium FrozenLake-v1 8x8 slippery, Python loop ({gym_steps} steps, best of runs): "
          f"{gym_sps:,.0f} steps/s")
    print(f"refpg sample_steps, N=1024 x T={T}, batch held while the next is drawn (training loop), "
          f"best of {repeats}: {ours:,.0f} steps/s")
    print(f"refpg sample_steps, same, each batch dropped at once (fresh pages every call):    "
          f"{cold:,.0f} steps/s  ({cold / gym_sps:.0f}x)")
    print(f"ratio (training-loop pattern): {ratio:.0f}x  (target >= 100x: {'PASS' if ratio >= 100 else 'MISS'})")


if __name__ == "__main__":
    main()
