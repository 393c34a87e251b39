"""Ready-made token trees: random ones for property tests, and the length-bias tree."""

from __future__ import annotations

import numpy as np

from refpg._validation import check_positive_int
from refpg.sequences.tree import TokenTree

__all__ = ["random_tree", "length_bias_tree"]


def random_tree(seed: int = 0, *, n_prompts: int = 2, vocab_size: int = 3, max_length: int = 3,
                binary_reward: bool = False, token_rewards: bool = False, ref_scale: float = 1.0) -> TokenTree:
    """A tree with random outcome rewards and a random reference policy.

    Parameters
    ----------
    seed : int
        Seeds `numpy.random.default_rng`; the same seed gives the same tree.
    n_prompts, vocab_size, max_length : int
        The tree's shape (EOS is token 0).
    binary_reward : bool
        Rewards in {0, 1} (a verifier), else uniform in [0, 1).
    token_rewards : bool
        Add random per-token rewards in [-0.1, 0.1).
    ref_scale : float
        Standard deviation of the reference policy's logits.
    """
    rng = np.random.default_rng(check_positive_int(seed, "seed", minimum=0))
    probe = TokenTree(n_prompts, vocab_size, max_length, lambda x, y: 0.0)
    K = probe.responses.n_responses
    R = rng.integers(0, 2, K).astype(float) if binary_reward else rng.random(K)
    ref = rng.normal(0.0, ref_scale, (probe.n_states, vocab_size))
    tok = None
    if token_rewards:
        table = rng.uniform(-0.1, 0.1, (probe.n_states, vocab_size))
        tok = lambda x, prefix, a: float(table[probe.state_of(x, prefix), a])  # noqa: E731
    return TokenTree(n_prompts, vocab_size, max_length, R, token_reward=tok, ref_logits=ref,
                     name=f"random_tree(seed={seed})")


def length_bias_tree(max_length: int = 4, *, n_prompts: int = 1) -> TokenTree:
    """A tree where right answers are short and wrong ones can be long.

    Tokens: 0 = EOS, 1 = the answer, 2 = filler. R(x, y) = 1 when the response
    states the answer (token 1) and 0 otherwise, so a wrong response is a run of
    fillers, up to `max_length` long, and the shortest right one is ``(1, EOS)``.
    Per-sequence token-mean aggregation with a group-mean baseline pushes the
    wrong responses longer ([Liu2025], Section 3.1); token-sum and Dr. GRPO do not.
    """
    L = check_positive_int(max_length, "max_length", minimum=2)
    return TokenTree(n_prompts, 3, L, lambda x, y: float(1 in y), name="length_bias_tree")
