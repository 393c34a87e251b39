r"""Group advantages of language-model policy gradients: GRPO, RLOO, Dr. GRPO, REINFORCE++.

Registered in `refpg.examples` through ``CORRECT`` and ``BROKEN``; checked by
`refpg.conformance.check_group_advantages` in its three conventions: refpg's
``fn(rewards)`` on (n_prompts, G), TRL's ``fn(rewards, num_generations)`` on a
flat vector of consecutive groups, and verl's
``fn(token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo)``
with groups by uid. Each broken one is one realistic bug away from a correct
one, and its description cites the public thread it reproduces.

torch and JAX are imported inside the functions, so this module imports without them.
"""

from __future__ import annotations

import numpy as np

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN"]


# -- helpers written as a user would, in NumPy -------------------------------------------

def _centred(rewards):
    """R - mean over each row, exactly 0 for a flat row (the mean of equal floats can be an ulp off)."""
    mean = rewards.mean(axis=1, keepdims=True)
    flat = rewards.max(axis=1, keepdims=True) == rewards.min(axis=1, keepdims=True)
    return np.where(flat, 0.0, rewards - mean)


# -- correct ------------------------------------------------------------------------------

def grpo_numpy(rewards):
    r"""GRPO, :math:`A = (R - \bar R)/(\mathrm{std}_{G-1}(R) + 10^{-6})` per row; 0 for G = 1 and flat rows."""
    G = rewards.shape[1]
    dev = _centred(rewards)
    if G == 1:
        return np.zeros_like(rewards)
    std = np.sqrt((dev * dev).sum(axis=1, keepdims=True) / (G - 1))
    return dev / (std + 1e-6)


def rloo_numpy(rewards):
    r"""RLOO, :math:`A_i = R_i - \frac{1}{G-1}\sum_{j\ne i}R_j = \frac{G}{G-1}(R_i - \bar R)`."""
    G = rewards.shape[1]
    return G / (G - 1) * _centred(rewards)


def group_mean_torch(rewards):
    """Dr. GRPO's group-mean baseline R - mean(R), torch (a flat row gives exactly 0)."""
    import torch

    mean = rewards.mean(dim=1, keepdim=True)
    flat = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)
    return torch.where(flat, torch.zeros_like(rewards), rewards - mean)


def reinforce_pp_numpy(rewards):
    r"""REINFORCE++'s batch whitening :math:`(R - \mathrm{mean}_B)/(\mathrm{std}_B + 10^{-8})`, Bessel-corrected."""
    flat = rewards.reshape(-1)
    if flat.max() == flat.min():
        return np.zeros_like(rewards)
    dev = rewards - flat.mean()
    std = np.sqrt((dev * dev).sum() / (flat.size - 1))
    return dev / (std + 1e-8)


def grpo_jax(rewards):
    """GRPO in JAX, jitted (a jitted function compiles once per shape)."""
    return _grpo_jax_jit()(rewards)


def _grpo_jax_jit():
    import jax
    import jax.numpy as jnp

    global _GRPO_JAX
    if _GRPO_JAX is None:
        @jax.jit
        def f(r):
            G = r.shape[1]
            flat = r.max(axis=1, keepdims=True) == r.min(axis=1, keepdims=True)
            dev = jnp.where(flat, 0.0, r - r.mean(axis=1, keepdims=True))
            if G == 1:
                return jnp.zeros_like(r)
            std = jnp.sqrt((dev * dev).sum(axis=1, keepdims=True) / (G - 1))
            return dev / (std + 1e-6)
        _GRPO_JAX = f
    return _GRPO_JAX


_GRPO_JAX = None


def trl_grpo_torch(rewards, num_generations):
    """TRL's GRPOTrainer advantages (scale_rewards="group"): group mean, Bessel std, + 1e-4; G = 1 gives 0."""
    import torch

    G = num_generations
    grouped = rewards.view(-1, G)
    mean = grouped.mean(dim=1).repeat_interleave(G)
    std = grouped.std(dim=1).repeat_interleave(G) if G > 1 else torch.zeros_like(rewards)
    return (rewards - mean) / (std + 1e-4)


def trl_grpo_batch_torch(rewards, num_generations):
    """TRL's scale_rewards="batch": the group's mean, the std of the whole batch (Bessel), + 1e-4."""
    import torch

    G = num_generations
    mean = rewards.view(-1, G).mean(dim=1).repeat_interleave(G)
    std = rewards.std() if rewards.numel() > 1 else torch.zeros(())
    return (rewards - mean) / (std + 1e-4)


def _verl_scores_by_uid(token_level_rewards, index):
    scores = token_level_rewards.sum(dim=-1)
    members = {}
    for i, uid in enumerate(index):
        members.setdefault(uid, []).append(i)
    return scores, members


def verl_grpo_torch(token_level_rewards, response_mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True,
                    config=None):
    """verl's compute_grpo_outcome_advantage as documented: groups by uid, torch.std, a lone uid has mean 0 and
    std 1; (advantages, returns), the sequence advantage on every valid token."""
    import torch

    with torch.no_grad():
        scores, members = _verl_scores_by_uid(token_level_rewards, index)
        adv = torch.zeros_like(scores)
        for rows in members.values():
            s = scores[rows]
            if len(rows) == 1:
                mean, std = torch.zeros((), dtype=s.dtype), torch.ones((), dtype=s.dtype)
            else:
                mean, std = s.mean(), s.std()
            dev = torch.where(s.amax() == s.amin(), torch.zeros_like(s), s - mean) if len(rows) > 1 else s - mean
            adv[rows] = dev / (std + epsilon) if norm_adv_by_std_in_grpo else dev
        adv = adv.unsqueeze(-1) * response_mask
    return adv, adv


def verl_rloo_torch(token_level_rewards, response_mask, index, epsilon=1e-6, config=None):
    """verl's compute_rloo_outcome_advantage: n/(n-1) (R - mean) per uid; a lone uid keeps its score."""
    import torch

    with torch.no_grad():
        scores, members = _verl_scores_by_uid(token_level_rewards, index)
        adv = scores.clone()
        for rows in members.values():
            if len(rows) > 1:
                s = scores[rows]
                dev = torch.where(s.amax() == s.amin(), torch.zeros_like(s), s - s.mean())
                adv[rows] = len(rows) / (len(rows) - 1) * dev
        adv = adv.unsqueeze(-1) * response_mask
    return adv, adv


# -- broken ----------------------------------------------------------------------------------

def grpo_population_std(rewards):
    """GRPO with NumPy's default std (ddof=0) where Bessel's correction (torch.std) is declared."""
    return (rewards - rewards.mean(axis=1, keepdims=True)) / (rewards.std(axis=1, keepdims=True) + 1e-6)


def grpo_nan_single_sample_torch(rewards):
    """GRPO with torch.std unguarded: a group of one response has std NaN (0/0), so its advantage is NaN."""
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + 1e-6)


def grpo_no_eps_numpy(rewards):
    """GRPO dividing by the std without eps or a guard: a flat group gives 0/0 = NaN."""
    G = rewards.shape[1]
    dev = rewards - rewards.mean(axis=1, keepdims=True)
    return dev / np.sqrt((dev * dev).sum(axis=1, keepdims=True) / max(G - 1, 1))


def grpo_eps_in_sqrt(rewards):
    """GRPO with eps inside the square root, (R - mean) / sqrt(var + eps)."""
    G = rewards.shape[1]
    dev = _centred(rewards)
    if G == 1:
        return np.zeros_like(rewards)
    return dev / np.sqrt((dev * dev).sum(axis=1, keepdims=True) / (G - 1) + 1e-6)


def rloo_as_group_mean(rewards):
    """RLOO written as R - mean(R): the mean includes R_i itself, so the factor G/(G-1) is lost."""
    return _centred(rewards)


def grpo_batch_normalised(rewards):
    """GRPO with the mean and std over the whole batch instead of each group."""
    flat = rewards.reshape(-1)
    if flat.max() == flat.min():
        return np.zeros_like(rewards)
    return (rewards - flat.mean()) / (flat.std(ddof=1) + 1e-6)


def grpo_one_pass_variance(rewards):
    r"""GRPO with the one-pass variance :math:`E[R^2] - E[R]^2`, which cancels catastrophically on 1e6 + O(1)."""
    G = rewards.shape[1]
    if G == 1:
        return np.zeros_like(rewards)
    dev = _centred(rewards)
    mean = rewards.mean(axis=1, keepdims=True)
    var = np.maximum((rewards * rewards).mean(axis=1, keepdims=True) - mean * mean, 0.0) * G / (G - 1)
    return np.where(dev == 0, 0.0, dev / (np.sqrt(var) + 1e-6))


def trl_strided_groups_torch(rewards, num_generations):
    """TRL-style advantages with the groups read strided, rewards.view(G, -1), where they are consecutive."""
    import torch

    G = num_generations
    grouped = rewards.view(G, -1)
    mean = grouped.mean(dim=0).repeat(G)
    std = grouped.std(dim=0).repeat(G) if G > 1 else torch.zeros_like(rewards)
    return (rewards - mean) / (std + 1e-4)


def verl_contiguous_groups_torch(token_level_rewards, response_mask, index, epsilon=1e-6,
                                 norm_adv_by_std_in_grpo=True, config=None):
    """verl-style GRPO that assumes the batch holds each uid's rows contiguously, in blocks of the group size."""
    import torch

    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        n = max(list(index).count(u) for u in set(index))
        adv = torch.zeros_like(scores)
        for k in range(0, scores.numel(), n):
            s = scores[k:k + n]
            if s.numel() == 1 or s.amax() == s.amin():
                adv[k:k + n] = 0.0 if s.numel() > 1 else s / (1 + epsilon)
                continue
            dev = s - s.mean()
            adv[k:k + n] = dev / (s.std() + epsilon) if norm_adv_by_std_in_grpo else dev
        adv = adv.unsqueeze(-1) * response_mask
    return adv, adv


def verl_padding_leak_torch(token_level_rewards, response_mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True,
                            config=None):
    """verl-style GRPO that broadcasts the advantage over the whole response length, padding included."""
    adv, _ = verl_grpo_torch(token_level_rewards, response_mask, index, epsilon, norm_adv_by_std_in_grpo)
    full = adv[:, :1].expand_as(response_mask).clone()
    first = response_mask.sum(dim=-1) > 0
    full[~first] = 0.0
    # The sequence advantage sits at column 0 of every row (every response has a token).
    return full, full


CORRECT: tuple[Example, ...] = (
    Example("grpo_advantages_numpy", "group_advantages", grpo_numpy, "refpg", "numpy", {"estimator": "grpo"}, None,
            "GRPO per row, Bessel std + 1e-6, flat rows and G = 1 give 0 [Shao2024]"),
    Example("rloo_advantages_numpy", "group_advantages", rloo_numpy, "refpg", "numpy", {"estimator": "rloo"}, None,
            "RLOO, G/(G-1) (R - mean) [Ahmadian2024]"),
    Example("group_mean_advantages_torch", "group_advantages", group_mean_torch, "refpg", "torch",
            {"estimator": "group_mean"}, None, "Dr. GRPO's group-mean baseline R - mean(R), torch [Liu2025]"),
    Example("reinforce_pp_advantages_numpy", "group_advantages", reinforce_pp_numpy, "refpg", "numpy",
            {"estimator": "reinforce_pp"}, None, "REINFORCE++ batch whitening, Bessel std + 1e-8"),
    Example("grpo_advantages_jax", "group_advantages", grpo_jax, "refpg", "jax", {"estimator": "grpo"}, None,
            "GRPO in JAX, jitted"),
    Example("trl_grpo_advantages_torch", "group_advantages", trl_grpo_torch, "trl", "torch", {}, None,
            "TRL GRPOTrainer's inline advantages, scale_rewards='group' (consecutive groups, nanstd + 1e-4)"),
    Example("trl_grpo_batch_advantages_torch", "group_advantages", trl_grpo_batch_torch, "trl", "torch",
            {"scale_rewards": "batch"}, None, "TRL's scale_rewards='batch': group mean, batch std"),
    Example("verl_grpo_advantages_torch", "group_advantages", verl_grpo_torch, "verl", "torch", {"estimator": "grpo"},
            None, "verl's compute_grpo_outcome_advantage as documented (uids, lone uid: mean 0, std 1)"),
    Example("verl_rloo_advantages_torch", "group_advantages", verl_rloo_torch, "verl", "torch", {"estimator": "rloo"},
            None, "verl's compute_rloo_outcome_advantage as documented (lone uid keeps its score)"),
)

BROKEN: tuple[Example, ...] = (
    Example("advantages_population_std", "group_advantages", grpo_population_std, "refpg", "numpy", {"estimator": "grpo"},
            "group_advantages.value",
            "np.std's ddof=0 where torch.std's Bessel correction is declared (the mismatch of NVIDIA/TorchFort "
            "issue #38 and pytorch/pytorch issue #1082)"),
    Example("advantages_nan_single_sample_torch", "group_advantages", grpo_nan_single_sample_torch, "refpg", "torch",
            {"estimator": "grpo"}, "group_advantages.degenerate_groups",
            "torch.std of a single completion is NaN: NaN advantages for num_generations = 1 (modelscope/ms-swift "
            "issue #3980: the degenerate group's advantage should be 0; huggingface/trl PR #5902: a group with one "
            "scorable completion yields 0/0)"),
    Example("advantages_no_eps_numpy", "group_advantages", grpo_no_eps_numpy, "refpg", "numpy", {"estimator": "grpo"},
            "group_advantages.degenerate_groups",
            "(R - mean) / std with no eps: NaN on a zero-variance group, common with verifier rewards "
            "(huggingface/trl issue #6367 on zero-variance groups)"),
    Example("advantages_eps_in_sqrt", "group_advantages", grpo_eps_in_sqrt, "refpg", "numpy", {"estimator": "grpo"},
            "group_advantages.value", "eps inside the square root, (R - mean)/sqrt(var + eps), where GRPO adds it "
                                      "to the std (TRL, verl)"),
    Example("advantages_rloo_as_group_mean", "group_advantages", rloo_as_group_mean, "refpg", "numpy", {"estimator": "rloo"},
            "group_advantages.value",
            "RLOO as R - mean(R), which keeps R_i in its own baseline and drops the factor G/(G-1) (the identity "
            "spelled out in redai-studio/Relax issue #174)"),
    Example("advantages_batch_normalised", "group_advantages", grpo_batch_normalised, "refpg", "numpy",
            {"estimator": "grpo"}, "group_advantages.value",
            "the mean and std over the whole batch instead of each group (XU-YIJIE/grpo-flat issue #2)"),
    Example("advantages_one_pass_variance", "group_advantages", grpo_one_pass_variance, "refpg", "numpy",
            {"estimator": "grpo"}, "group_advantages.large_offset",
            "the one-pass variance E[R^2] - E[R]^2 (NVIDIA-NeMo/RL PR #4161: its residue amplified advantages "
            "~1000x)"),
    Example("advantages_trl_strided_groups_torch", "group_advantages", trl_strided_groups_torch, "trl", "torch", {},
            "group_advantages.value",
            "groups read as rewards.view(G, -1), every n-th completion, where TRL lays them out consecutively "
            "(the grouping questioned in dllm-reasoning/d1 issue #19)"),
    Example("advantages_verl_contiguous_groups_torch", "group_advantages", verl_contiguous_groups_torch, "verl", "torch",
            {"estimator": "grpo"}, "group_advantages.value",
            "groups taken as contiguous blocks of the batch instead of by uid (PeterGriffinJin/Search-R1 issue #65 "
            "on grouping by position in the batch)"),
    Example("advantages_verl_padding_leak_torch", "group_advantages", verl_padding_leak_torch, "verl", "torch",
            {"estimator": "grpo"}, "group_advantages.mask",
            "the advantage broadcast over padding as well (OpenRLHF 0.11.2's reinforce_baseline leaves "
            "-mean/std on padded positions; verl multiplies by response_mask)"),
)
