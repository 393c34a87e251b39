r"""Token-level policy losses of language-model RL, checked by `check_token_policy_loss`.

Correct: PPO clip, GSPO and CISPO under each of the four aggregations (token-mean,
seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm) in NumPy and torch, one jitted JAX
loss, and losses written the way verl, TRL and OpenRLHF write theirs, each in its convention.
Broken: each reproduces a bug reported in a public thread, cited in its description.

Every function is written afresh in its project's style (no project's code is copied). The loss of a
batch is :math:`\sum_{i,t} w_{i,t}\ell_{i,t}` with the per-token loss

.. math::
    \ell_{i,t} = -\min\big(r_{i,t} A_{i,t},\ \mathrm{clip}(r_{i,t}, 1-\epsilon_{low}, 1+\epsilon_{high}) A_{i,t}\big)

(GSPO: the response's ratio :math:`\exp(\mathrm{mean}_t \log r_{i,t})`; CISPO:
:math:`-\mathrm{sg}(\mathrm{clip}(r))A\log\pi`) and the aggregation weights w of
`refpg.losses.tokens.aggregation_weights`. Registered in `refpg.examples` through ``CORRECT`` and
``BROKEN``; torch and jax are imported inside the functions, so this module imports without them.
"""

from __future__ import annotations

import functools

import numpy as np

from refpg.examples._example import Example

__all__ = ["CORRECT", "BROKEN"]

KIND = "token_policy_loss"
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# -- NumPy -------------------------------------------------------------------------------------

def _aggregate_np(loss_mat, mask, mode, norm_length=None):
    """Masked aggregation in NumPy; a response with no token counts in n and contributes 0."""
    m = mask.astype(loss_mat.dtype)
    summed = (loss_mat * m).sum(axis=-1)
    if mode == "token-mean":
        return summed.sum() / max(m.sum(), 1.0)
    if mode == "seq-mean-token-sum":
        return summed.mean()
    if mode == "seq-mean-token-mean":
        return (summed / np.maximum(m.sum(axis=-1), 1.0)).mean()
    return summed.sum() / (m.shape[0] * (m.shape[-1] if norm_length is None else norm_length))


def _token_loss_np(logp, logp_old, advantages, mask, loss, eps_low=0.2, eps_high=0.2, dual_clip=None):
    """Per-token loss (n, L) in NumPy, 0 on masked positions whatever they hold."""
    zero = np.zeros_like(logp)
    log_ratio = np.where(mask, logp - logp_old, zero)
    adv = np.where(mask, advantages, zero)
    if loss == "gspo":
        count = np.maximum(mask.sum(axis=-1, keepdims=True), 1)
        log_ratio = np.broadcast_to(log_ratio.sum(axis=-1, keepdims=True) / count, logp.shape)
    ratio = np.exp(log_ratio)
    if loss == "cispo":
        per_token = -np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv * np.where(mask, logp, zero)
    else:
        per_token = -np.minimum(ratio * adv, np.clip(ratio, 1 - eps_low, 1 + eps_high) * adv)
        if dual_clip is not None:
            per_token = np.where(adv < 0, np.minimum(per_token, -dual_clip * adv), per_token)
    return np.where(mask, per_token, zero)


def _numpy_loss(loss, mode):
    def fn(logp, logp_old, advantages, mask):
        return _aggregate_np(_token_loss_np(logp, logp_old, advantages, mask, loss), mask, mode)
    fn.__name__ = fn.__qualname__ = f"token_loss_{loss}_{mode.replace('-', '_')}_numpy"
    fn.__module__ = __name__
    return fn


# -- torch -------------------------------------------------------------------------------------

def _aggregate_torch(loss_mat, mask, mode, norm_length=None):
    m = mask.to(loss_mat.dtype)
    summed = (loss_mat * m).sum(dim=-1)
    if mode == "token-mean":
        return summed.sum() / m.sum().clamp(min=1.0)
    if mode == "seq-mean-token-sum":
        return summed.mean()
    if mode == "seq-mean-token-mean":
        return (summed / m.sum(dim=-1).clamp(min=1.0)).mean()
    return summed.sum() / (m.shape[0] * (m.shape[-1] if norm_length is None else norm_length))


def _token_loss_torch(logp, logp_old, advantages, mask, loss, eps_low=0.2, eps_high=0.2, dual_clip=None,
                      gspo_token=True):
    """Per-token loss (n, L) in torch; GSPO-token: the response's ratio in value, each token's gradient."""
    import torch

    zero = torch.zeros_like(logp)
    log_ratio = torch.where(mask, logp - logp_old, zero)
    adv = torch.where(mask, advantages, zero)
    if loss == "gspo":
        seq = log_ratio.sum(dim=-1, keepdim=True) / mask.sum(dim=-1, keepdim=True).clamp(min=1)
        # GSPO-token (Zheng et al. 2025, Eq. 13): sg(s_i) * pi / sg(pi) on every token.
        log_ratio = (seq.detach() + logp - logp.detach()) if gspo_token else seq.expand_as(logp)
    ratio = torch.exp(log_ratio)
    if loss == "cispo":
        weight = torch.clamp(ratio, 1 - eps_low, 1 + eps_high).detach()
        per_token = -weight * adv * torch.where(mask, logp, zero)
    else:
        per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
        if dual_clip is not None:
            per_token = torch.where(adv < 0, torch.min(per_token, -dual_clip * adv), per_token)
    return torch.where(mask, per_token, zero)


def _torch_loss(loss, mode):
    def fn(logp, logp_old, advantages, mask):
        return _aggregate_torch(_token_loss_torch(logp, logp_old, advantages, mask, loss), mask, mode)
    fn.__name__ = fn.__qualname__ = f"token_loss_{loss}_{mode.replace('-', '_')}_torch"
    fn.__module__ = __name__
    return fn


# -- JAX ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _jitted_ppo_token_mean():
    import jax
    import jax.numpy as jnp

    @jax.jit
    def loss(logp, logp_old, advantages, mask):
        log_ratio = jnp.where(mask, logp - logp_old, 0.0)
        adv = jnp.where(mask, advantages, 0.0)
        ratio = jnp.exp(log_ratio)
        per_token = -jnp.minimum(ratio * adv, jnp.clip(ratio, 0.8, 1.2) * adv)
        return jnp.sum(jnp.where(mask, per_token, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
    return loss


def token_loss_ppo_clip_token_mean_jax(logp, logp_old, advantages, mask):
    """PPO clip, token-mean, in JAX under jax.jit (compiled once per shape)."""
    return _jitted_ppo_token_mean()(logp, logp_old, advantages, mask)


# -- verl --------------------------------------------------------------------------------------

def _verl_agg(loss_mat, loss_mask, loss_agg_mode, dp_size=1, batch_num_tokens=None, global_batch_size=None,
              loss_scale_factor=None):
    """verl's agg_loss semantics: responses without a token leave the sequence count; 1e-8 guards each
    response's token count in seq-mean-token-mean; the global totals come from config.global_batch_info."""
    import torch

    if loss_agg_mode == "token-mean":
        tokens = loss_mask.sum() if batch_num_tokens is None else batch_num_tokens
        return (loss_mat * loss_mask).sum() / tokens * dp_size
    counts = loss_mask.sum(dim=-1)
    seq_mask = (counts > 0).to(loss_mat.dtype)
    if global_batch_size is None:
        global_batch_size = seq_mask.sum()
    if loss_agg_mode == "seq-mean-token-mean":
        seq = (loss_mat * loss_mask).sum(dim=-1) / (counts + 1e-8)
        return (seq * seq_mask).sum() / global_batch_size * dp_size
    seq = (loss_mat * loss_mask).sum(dim=-1)
    out = (seq * seq_mask).sum() / global_batch_size * dp_size
    if loss_agg_mode == "seq-mean-token-sum-norm":
        out = out / (loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return out + torch.zeros((), dtype=loss_mat.dtype)


def _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, *,
                      dual=True, symmetric=False):
    import torch

    low = config.clip_ratio_low
    high = config.clip_ratio_low if symmetric else config.clip_ratio_high
    log_ratio = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    per_token = torch.maximum(unclipped, clipped)
    if dual:
        c = config.get("clip_ratio_c", 3.0)
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -advantages * c), per_token)
    loss = _verl_agg(per_token, response_mask, loss_agg_mode, **config.global_batch_info)
    return loss, {"actor/pg_clipfrac": float(((clipped > unclipped).to(ratio.dtype) * response_mask).sum()
                                             / response_mask.sum().clamp(min=1))}


def verl_vanilla_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                             config=None):
    """verl's compute_policy_loss_vanilla shape: dual clip at clip_ratio_c, agg_loss, (loss, metrics)."""
    return _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config)


def verl_gspo_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="seq-mean-token-mean",
                          config=None):
    """verl's GSPO-token loss: log r = log pi - sg(log pi) + sg(s_i), PPO-clipped, agg_loss, (loss, metrics)."""
    import torch

    count = response_mask.sum(dim=-1, keepdim=True).clamp(min=1)
    seq = ((log_prob - old_log_prob) * response_mask).sum(dim=-1, keepdim=True) / count
    ratio = torch.exp(torch.clamp(log_prob - log_prob.detach() + seq.detach(), max=10.0))
    low, high = config.clip_ratio_low, config.clip_ratio_high
    per_token = torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - low, 1 + high))
    return _verl_agg(per_token, response_mask, loss_agg_mode, **config.global_batch_info), {}


def verl_cispo_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                           config=None):
    """verl's CISPO: -sg(clip(r, 1 - low, 1 + high)) A log pi, two-sided, agg_loss, (loss, metrics)."""
    import torch

    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0))
    weight = torch.clamp(ratio, 1 - config.clip_ratio_low, 1 + config.clip_ratio_high).detach()
    per_token = -weight * advantages * log_prob
    return _verl_agg(per_token, response_mask, loss_agg_mode, **config.global_batch_info), {}


# -- TRL ---------------------------------------------------------------------------------------

def _trl_loss(per_token_logps, old_per_token_logps, advantages, completion_mask, num_items_in_batch,
              gradient_accumulation_steps, *, loss_type, level="token", epsilon=0.2, epsilon_high=0.2, delta=None,
              max_completion_length=None, steps_again=False, generation_factor=1.0, clamp_rows=True,
              mask_rows=True):
    """A GRPOTrainer-style _compute_loss on its own: advantages (B,), the loss_type's aggregation, and the
    loss's share of one optimiser step (1/GA for the local ones, 1/num_items_in_batch for dapo and cispo)."""
    import torch

    mask = completion_mask.to(per_token_logps.dtype)
    log_ratio = per_token_logps - old_per_token_logps
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_ratio)
    adv = advantages.unsqueeze(1)
    if loss_type == "cispo":
        per_token = -torch.clamp(coef_1, max=epsilon_high).detach() * adv * per_token_logps
    else:
        coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon_high)
        if delta is not None:
            coef_1 = torch.clamp(coef_1, max=delta)
        per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    ga = gradient_accumulation_steps
    if loss_type == "grpo":
        rows = mask.sum(-1).clamp(min=1.0) if clamp_rows else mask.sum(-1)
        return ((per_token * mask).sum(-1) / rows).mean() / ga
    if loss_type == "bnpo":
        return (per_token * mask).sum() / mask.sum().clamp(min=1.0) / ga
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (per_token.size(0) * max_completion_length) / ga
    if loss_type == "luspo":
        if mask_rows:
            return (per_token * mask).sum(-1).mean() / ga
        # per_token is (B, T) here: every position, padding included, is weighted by the response length
        return (per_token * mask.sum(-1, keepdim=True)).mean() / ga
    normalizer = torch.clamp(num_items_in_batch * generation_factor, min=1.0)
    loss = (per_token * mask).sum() / normalizer
    return loss / ga if steps_again else loss


def _trl(name, **kwargs):
    def fn(per_token_logps, old_per_token_logps, advantages, completion_mask, num_items_in_batch,
           gradient_accumulation_steps):
        return _trl_loss(per_token_logps, old_per_token_logps, advantages, completion_mask, num_items_in_batch,
                         gradient_accumulation_steps, **kwargs)
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    return fn


# -- OpenRLHF ----------------------------------------------------------------------------------

class OpenRLHFStylePolicyLoss:
    """An OpenRLHF-style PolicyLoss: built from the clip range, dual clip and token_level_loss; forward
    returns (loss, clip_ratio); global totals (batch_num_tokens, global_batch_size) when given."""

    def __init__(self, clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=None, token_level_loss=True,
                 policy_loss_type="ppo"):
        self.clip_eps_low, self.clip_eps_high, self.dual_clip = clip_eps_low, clip_eps_high, dual_clip
        self.token_level_loss = token_level_loss and policy_loss_type != "gspo"
        self.policy_loss_type = policy_loss_type

    def __call__(self, log_probs, old_log_probs, advantages, action_mask=None, rollout_log_probs=None, dp_size=1,
                 batch_num_tokens=None, global_batch_size=None):
        return self.forward(log_probs, old_log_probs, advantages, action_mask, rollout_log_probs, dp_size,
                            batch_num_tokens, global_batch_size)

    def forward(self, log_probs, old_log_probs, advantages, action_mask=None, rollout_log_probs=None, dp_size=1,
                batch_num_tokens=None, global_batch_size=None):
        import torch

        mask = action_mask.to(log_probs.dtype)
        log_ratio = log_probs - old_log_probs
        if self.policy_loss_type == "gspo":
            seq = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            ratio = seq.exp().unsqueeze(-1) * mask
        else:
            ratio = log_ratio.clamp(-20.0, 20.0).exp()
        surr1 = ratio * advantages
        surr2 = ratio.clamp(1 - self.clip_eps_low, 1 + self.clip_eps_high) * advantages
        objective = torch.min(surr1, surr2)
        if self.dual_clip is not None:
            objective = torch.where(advantages < 0, torch.max(objective, self.dual_clip * advantages), objective)
        loss = -objective
        if self.token_level_loss:
            tokens = mask.sum() if batch_num_tokens is None else batch_num_tokens
            out = (loss * mask).sum() / tokens * dp_size
        else:
            counts = mask.sum(-1)
            seq_loss = (loss * mask).sum(-1) / (counts + 1e-8)
            keep = (counts > 0).to(loss.dtype)
            out = (seq_loss * keep).sum() / (keep.sum() if global_batch_size is None else global_batch_size) * dp_size
        clip_ratio = ((surr2 < surr1).to(loss.dtype) * mask).sum() / mask.sum()
        return out, clip_ratio


# -- broken ------------------------------------------------------------------------------------

def gspo_token_sum_torch(logp, logp_old, advantages, mask):
    """GSPO aggregated by seq-mean-token-sum: each response's sequence loss counted once per token."""
    return _aggregate_torch(_token_loss_torch(logp, logp_old, advantages, mask, "gspo"), mask, "seq-mean-token-sum")


def seq_mean_token_mean_torch(logp, logp_old, advantages, mask):
    """PPO clip averaged per response then over responses (seq-mean-token-mean)."""
    return _aggregate_torch(_token_loss_torch(logp, logp_old, advantages, mask, "ppo_clip"), mask,
                            "seq-mean-token-mean")


def ppo_mask_ignored_torch(logp, logp_old, advantages, mask):
    """PPO clip averaged over every position of the padded batch: the mask is never applied."""
    import torch

    ratio = torch.exp(logp - logp_old)
    per_token = -torch.min(ratio * advantages, torch.clamp(ratio, 0.8, 1.2) * advantages)
    return per_token.mean()


def ppo_clip_symmetric_torch(logp, logp_old, advantages, mask):
    """PPO clip with one epsilon on both sides: a declared eps_high is never used."""
    return _aggregate_torch(_token_loss_torch(logp, logp_old, advantages, mask, "ppo_clip", 0.2, 0.2), mask,
                            "token-mean")


def verl_vanilla_without_dual_clip(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                                   config=None):
    """verl-style vanilla loss without the dual clip (clip_ratio_c ignored)."""
    return _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, dual=False)


def verl_vanilla_clip_higher_ignored(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean",
                                     config=None):
    """verl-style vanilla loss clipping at 1 + clip_ratio_low above too (clip_ratio_high ignored)."""
    return _verl_policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                             symmetric=True)


def _correct(fn, description, backend="torch", convention="refpg", **options):
    return Example(fn.__name__, KIND, fn, convention, backend, options, None, description)


def _broken(fn, expected, description, backend="torch", convention="refpg", name=None, **options):
    return Example(name or fn.__name__, KIND, fn, convention, backend, options, f"{KIND}.{expected}", description)


_TORCH = tuple(_correct(_torch_loss(loss, mode), f"{loss} per token, {mode}, torch (GSPO-token for gspo)",
                        loss=loss, aggregation=mode)
               for loss in ("ppo_clip", "gspo", "cispo") for mode in AGGREGATIONS)
_NUMPY = tuple(_correct(_numpy_loss(loss, mode), f"{loss} per token, {mode}, NumPy", backend="numpy",
                        loss=loss, aggregation=mode)
               for loss, mode in (("ppo_clip", "token-mean"), ("gspo", "seq-mean-token-mean"),
                                  ("cispo", "seq-mean-token-sum"), ("ppo_clip", "seq-mean-token-sum-norm")))

CORRECT: tuple[Example, ...] = _TORCH + _NUMPY + (
    _correct(token_loss_ppo_clip_token_mean_jax, "PPO clip, token-mean, jax.jit", backend="jax"),
    _correct(verl_vanilla_policy_loss, "verl's vanilla policy loss (dual clip c = 3), token-mean, as verl's "
             "trainer calls it (config.global_batch_info under gradient accumulation)", convention="verl"),
    Example("verl_vanilla_policy_loss_clip_higher", KIND, verl_vanilla_policy_loss, "verl", "torch",
            {"eps_high": 0.28, "aggregation": "seq-mean-token-mean"}, None, "verl's vanilla loss with clip-higher (eps_high = 0.28), "
             "seq-mean-token-mean"),
    _correct(verl_gspo_policy_loss, "verl's GSPO-token loss, seq-mean-token-mean", convention="verl", loss="gspo",
             aggregation="seq-mean-token-mean"),
    _correct(verl_cispo_policy_loss, "verl's CISPO loss (two-sided weight clip), seq-mean-token-sum-norm",
             convention="verl", loss="cispo", eps_high=0.28, aggregation="seq-mean-token-sum-norm"),
    _correct(_trl("trl_grpo_loss", loss_type="grpo"), "TRL's loss_type='grpo': per-completion token mean, "
             "divided by gradient_accumulation_steps", convention="trl", loss_type="grpo"),
    _correct(_trl("trl_dapo_loss", loss_type="dapo", epsilon_high=0.28), "TRL's loss_type='dapo': token sum over "
             "num_items_in_batch, clip-higher", convention="trl", loss_type="dapo", eps_high=0.28),
    _correct(_trl("trl_dr_grpo_loss", loss_type="dr_grpo", max_completion_length=16), "TRL's "
             "loss_type='dr_grpo' with max_completion_length = 16", convention="trl", loss_type="dr_grpo",
             norm_length=16),
    _correct(_trl("trl_gspo_loss", loss_type="grpo", level="sequence"), "TRL's GSPO: importance_sampling_level="
             "'sequence' with loss_type='grpo'", convention="trl", loss_type="grpo",
             importance_sampling_level="sequence"),
    _correct(_trl("trl_cispo_loss", loss_type="cispo", epsilon_high=5.0), "TRL's loss_type='cispo': weight "
             "min(r, epsilon_high = 5), detached", convention="trl", loss_type="cispo", eps_high=5.0),
    _correct(_trl("trl_two_sided_clip_loss", loss_type="dapo", delta=3.0), "TRL's two-sided clip (delta = 3, "
             "INTELLECT-2), the dual clip at c = delta", convention="trl", loss_type="dapo", dual_clip=3.0),
    _correct(_trl("trl_luspo_loss", loss_type="luspo", level="sequence"), "TRL's loss_type='luspo' (mean of "
             "per-completion token sums) with masked aggregation", convention="trl", loss_type="luspo",
             importance_sampling_level="sequence"),
    Example("openrlhf_policy_loss_token_level", KIND, OpenRLHFStylePolicyLoss, "openrlhf", "torch",
            {"dual_clip": 3.0}, None, "an OpenRLHF-style PolicyLoss class, built by the check "
            "(token_level_loss=True, dual_clip=3)"),
    Example("openrlhf_policy_loss_sequence_level", KIND, OpenRLHFStylePolicyLoss(0.2, 0.28, None, False), "openrlhf",
            "torch", {"eps_high": 0.28, "aggregation": "seq-mean-token-mean"}, None,
            "an OpenRLHF-style PolicyLoss instance, token_level_loss=False (mean of per-response token means)"),
)

BROKEN: tuple[Example, ...] = (
    _broken(gspo_token_sum_torch, "value", "GSPO aggregated with seq-mean-token-sum: each response's sequence "
            "loss counted once per token, a length-weighted loss (huggingface/trl issue #3823; alibaba/ROLL issue "
            "#165)", loss="gspo", aggregation="seq-mean-token-mean"),
    _broken(seq_mean_token_mean_torch, "value", "a seq-mean-token-mean loss (vanilla GRPO) declared token-mean "
            "(DAPO): the two confused, as in verl-project/verl issue #957 and huggingface/trl PR #3256"),
    _broken(ppo_mask_ignored_torch, "masked_positions", "the loss averaged over every padded position: padding "
            "and post-EOS tokens leak into the loss (huggingface/trl PR #6654, luspo's padded positions)"),
    _broken(_trl("trl_luspo_padding_leak", loss_type="luspo", mask_rows=False), "masked_positions",
            "TRL's luspo loss (per_token_loss * mask.sum(1)).mean() over (B, T): padded positions enter the loss "
            "(fixed by huggingface/trl PR #6654)", convention="trl", loss_type="luspo"),
    _broken(_trl("trl_grpo_nan_on_empty_completion", loss_type="grpo", clamp_rows=False), "output_finite",
            "per-completion token mean without clamp(min=1): a completion with no token gives 0/0 = NaN "
            "(huggingface/trl PR #3248)", convention="trl", loss_type="grpo"),
    _broken(_trl("trl_dapo_divided_by_steps_again", loss_type="dapo", steps_again=True), "accumulation",
            "DAPO's loss, already normalised by the whole batch's token count, divided by "
            "gradient_accumulation_steps again: 1/GA twice (modelscope/ms-swift issue #10117)",
            convention="trl", loss_type="dapo"),
    _broken(_trl("trl_dapo_generation_batch_count", loss_type="dapo", generation_factor=0.25), "accumulation",
            "DAPO normalised by the token count of a generation batch a quarter of the accumulation window "
            "(steps_per_generation = 8, gradient_accumulation_steps = 32): gradients x 4 (huggingface/trl PR #6024)",
            convention="trl", loss_type="dapo"),
    _broken(_torch_loss("ppo_clip", "token-mean"), "accumulation", "each micro-batch's own token-mean divided by "
            "the number of accumulation steps: micro-batches of unequal token counts get equal weight "
            "(huggingface/transformers PR #34191; ml-explore/mlx-lm PR #1413)", accumulation="steps",
            name="token_mean_divided_by_steps_torch"),
    _broken(verl_vanilla_policy_loss, "accumulation", "verl's legacy FSDP actor: token-mean micro-batch losses "
            "(empty global_batch_info) scaled by the micro-batch's share of the samples, not of the tokens "
            "(verl-project/verl issue #5625, PR #5641)", convention="verl", accumulation="sequences",
            name="verl_legacy_sample_ratio_scaling"),
    _broken(ppo_clip_symmetric_torch, "value", "clip-higher declared (eps_high = 0.28) but the ratio clipped with "
            "one epsilon on both sides, as before DAPO's decoupled range (modelscope/ms-swift PR #3599, "
            "areal-project/AReaL PR #285)", eps_high=0.28),
    _broken(verl_vanilla_clip_higher_ignored, "value", "verl-style loss clipping above at 1 + clip_ratio_low: "
            "clip_ratio_high = 0.28 ignored (modelscope/ms-swift PR #3599)", convention="verl", eps_high=0.28),
    _broken(verl_vanilla_without_dual_clip, "clipped_zero_gradient", "verl-style loss without the dual clip: "
            "where A < 0 and the ratio exceeds clip_ratio_c the gradient should be 0 (dual clip added to verl by "
            "verl-project/verl PR #784)", convention="verl"),
)
