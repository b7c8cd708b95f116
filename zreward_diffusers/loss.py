"""`ZRewardLoss`: the student's expected rubric score as a differentiable loss for generator fine-tuning.

Reward (Z-Reward, arXiv 2606.09076; eq. 15 as implemented, in docs/method.md, 'The reward a generator optimises'),
per image, over the rubric dimensions d with weights w_d (summing to 1):

    without running normalisation:  R = Σ_d w_d (μ_d − v_1) / (v_K − v_1)  −  κ Σ_d w_d σ_d / (v_K − v_1)
    with running normalisation:     R = Σ_d w_d (μ_d − m_d) / s_d           −  κ Σ_d w_d σ_d / s_d

μ_d and σ_d are the mean and std of the predicted score distribution, m_d and s_d running mean and std of μ_d
(e.g. over base-model samples), κ ≥ 0 an uncertainty aversion against reward hacking.

Guards against reward hacking read more of the distribution than its mean (docs/method.md, 'Objectives from the
distribution'): `statistic` replaces μ_d by a lower quantile, CVaR_α (the mean of the lowest α of the mass) or
P(score ≥ threshold) (already in [0, 1]); `combine` replaces the weighted sum over dimensions by their minimum or a
weighted soft minimum; `floors` subtract `floor_weight` · ReLU(floor_d − r_d) for each floored dimension; and
`groupwise=True` rewards each image by its mean probability of beating the other images of its prompt in the batch,
R_i = Σ_d w_d mean_{j ≠ i, same prompt} P(i ≻ j)_d − 1/2 (eq. 4), a group-relative reward with no scale to drift.
The loss is −R, or the
saturating ReFL loss ReLU(margin − R) (ImageReward, arXiv 2304.05977) when `margin` is set. One sign convention:
lower loss = higher reward.

The module is frozen but keeps autograd to the images. It does not own a device (`.to()` moves it) and is not
meant to go through `accelerator.prepare` (it has no trainable parameters); move it next to the generator's VAE
output, or to another device: images are moved to the backbone's device, and their gradient comes back to theirs.

Every entry (`forward`, `reward`, `reward_with_scores`, `score`) runs the shared input checks of `image_inputs`
before the backbone does (docs/design.md, 'Public contract'), so bad input is a `ValueError` / `TypeError` that names
`images`, `prompts` or `prompts[i]`; prompts are data, never control (a special token of the tokenizer in a prompt
is refused, see `ZRewardScorer`).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from . import __version__
from .checkpoint import (
    load_backbone,
    read_config,
    resolve_checkpoint,
    save_backbone,
    write_config,
    zero_shot_config,
)
from .distributions import (
    conditional_value_at_risk,
    lower_quantile,
    preference_probability,
    soft_minimum,
    tail_probability,
)
from .image_inputs import check_image_range, check_image_tensor, check_prompt_list, to_unit_range
from .rubric import Rubric
from .saving import MARKER_NAME, atomic_directory
from .scorer import ScoreOutput, ZRewardScorer

logger = logging.getLogger(__name__)

REDUCTIONS = ("mean", "sum", "none")
STATISTICS = ("mean", "quantile", "cvar", "tail")
COMBINATIONS = ("weighted", "min", "softmin")
DEFAULT_ALPHA = 0.25
DEFAULT_TEMPERATURE = 0.05


class ZRewardLoss(nn.Module):
    """Differentiable Z-Reward loss: `loss = loss_fn(images, prompts)`.

    Images are float tensors `(B, 3, H, W)` in `image_range`, of any float dtype (computed in float32 inside, the
    gradient comes back in their dtype) and on any device (moved to the backbone's). Refused, naming `images`:
    other ranks or channel counts (channels-last layouts with the `permute` that fixes them), integer or bool
    tensors, NaN / Inf, values outside the range by more than a quarter of its width. Images that are all ≥ 0 under
    `image_range="-1,1"` look like [0, 1] images: a warning, once per loss. Prompts are a list of non-empty strings,
    one per image, without special tokens of the tokenizer, short enough for the backbone's positions (checked
    before it runs; see `ZRewardScorer`).

    Args:
        scorer: a `ZRewardScorer` (backbone, processor, rubric).
        image_range: `"-1,1"` (diffusers VAE output, default) or `"0,1"`. Values slightly outside (VAE overshoot, up
            to a quarter of the range's width) are clamped to the range as diffusers' post-processing does; values
            further outside raise.
        reduction: `"mean"`, `"sum"` or `"none"` (per-image losses `(B,)`).
        kappa: uncertainty aversion κ ≥ 0, finite (reward minus κ times the weighted score std).
        margin: if set (a finite number), the loss is ReLU(margin − R) (saturating φ of ReFL) instead of −R.
        normalize: standardise each dimension's expected score with running statistics (`statistic="mean"` only).
        momentum: update rate of the running statistics, in (0, 1].
        dimensions: score only these rubric dimensions (default all).
        statistic: what each dimension contributes, r_d: `"mean"` (μ_d, default), `"quantile"` (the `alpha`
            lower quantile), `"cvar"` (CVaR at `alpha`), each rescaled by (x − v_1) / (v_K − v_1), or `"tail"`
            (P(score ≥ `threshold`)).
        alpha: the level of `"quantile"` / `"cvar"`, in (0, 1] (default 0.25); only with those statistics.
        threshold: the score of `"tail"`, in (v_1, v_K]; required by it, refused otherwise.
        combine: across dimensions, `"weighted"` (Σ_d w_d r_d, default), `"min"` (the lowest r_d of a positively
            weighted dimension) or `"softmin"` (−τ log Σ_d w_d exp(−r_d / τ)).
        temperature: τ of `"softmin"`, positive (default 0.05); only with it.
        floors: `{dimension: floor}` in the statistic's units before rescaling (level units; a probability for
            `"tail"`): R −= `floor_weight` · Σ ReLU(r(floor_d) − r_d).
        floor_weight: the weight of the floor penalty, positive (default 1.0).
        groupwise: reward each image by its mean P(i ≻ j) over the other images of its prompt in the batch (every
            prompt must appear at least twice); not with the options above but `dimensions` and `margin`.

    >>> import torch
    >>> from zreward_diffusers.testing import build_tiny_scorer
    >>> loss_fn = ZRewardLoss(build_tiny_scorer("qwen2_vl"))
    >>> images = torch.rand(2, 3, 56, 56, requires_grad=True)
    >>> loss = loss_fn(images * 2 - 1, ["a red circle", "two blue squares"])
    >>> loss.backward()
    >>> bool(images.grad.abs().sum() > 0)
    True
    """

    def __init__(
        self,
        scorer: ZRewardScorer,
        image_range: str = "-1,1",
        reduction: str = "mean",
        kappa: float = 0.0,
        margin: float | None = None,
        normalize: bool = False,
        momentum: float = 0.01,
        dimensions: list[str] | None = None,
        statistic: str = "mean",
        alpha: float | None = None,
        threshold: float | None = None,
        combine: str = "weighted",
        temperature: float | None = None,
        floors: dict[str, float] | None = None,
        floor_weight: float = 1.0,
        groupwise: bool = False,
    ):
        super().__init__()
        check_image_range(image_range)
        if reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
        kappa, momentum = _finite("kappa", kappa), _finite("momentum", momentum)
        margin = None if margin is None else _finite("margin", margin)
        if kappa < 0:
            raise ValueError(f"`kappa` must be non-negative, got {kappa}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"`momentum` must be in (0, 1], got {momentum}")
        self.scorer = scorer
        self.image_range = image_range
        self.reduction = reduction
        self.kappa = kappa
        self.margin = margin
        self.normalize = normalize
        self.momentum = momentum
        self.dimensions = scorer._dimensions(dimensions)
        self._set_objective(statistic, alpha, threshold, combine, temperature, floors, floor_weight, groupwise)
        self.update_running_stats = True
        self._warned_unit_range = False
        num_dims = len(self.dimensions)
        self.register_buffer("running_mean", torch.zeros(num_dims))
        self.register_buffer("running_var", torch.ones(num_dims))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self.requires_grad_(False)
        self.eval()

    @property
    def rubric(self) -> Rubric:
        return self.scorer.rubric

    def _set_objective(self, statistic, alpha, threshold, combine, temperature, floors, floor_weight,
                       groupwise) -> None:
        """Check and keep the objective's settings (`objective_settings`)."""
        settings = objective_settings(statistic, alpha, threshold, combine, temperature, floors, floor_weight,
                                      groupwise, kappa=self.kappa, normalize=self.normalize,
                                      levels=self.rubric.levels, dimensions=self.dimensions)
        for key, value in settings.items():
            setattr(self, key, value)

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint the reward backbone's layers (recompute activations in backward to save memory)."""
        self.scorer.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        self.scorer.disable_gradient_checkpointing()

    # ------------------------------------------------------------------------------------------------ inputs
    def _unit_images(self, images) -> torch.Tensor:
        """The shared image check in `image_range` (`image_inputs.check_image_tensor`), the one-time warning for
        [0, 1]-looking images under "-1,1", then `(B, 3, H, W)` in [0, 1], float32 (float64 kept)."""
        found_low, found_high = check_image_tensor(images, self.image_range)
        if self.image_range == "-1,1" and found_low >= 0.0 and not self._warned_unit_range:
            self._warned_unit_range = True
            logger.warning(
                "`images` are all >= 0 (values in [%.3g, %.3g]): they look like [0, 1] images, but this loss reads "
                "them as [-1, 1] (image_range='-1,1'), i.e. as mid-grey to white; for [0, 1] images construct it "
                "with image_range='0,1' (this warning is shown once)",
                found_low, found_high,
            )
        return to_unit_range(images, self.image_range)

    # ------------------------------------------------------------------------------------------------ scoring
    def score(self, images, prompts: list[str], dimensions=None, reasoning=None) -> ScoreOutput:
        """Score distributions for logging: tensors take the differentiable path (checked as in `forward`); PIL
        images and uint8 arrays `(H, W, 3)` / `(B, H, W, 3)` take the official processor path, no gradient. The
        output's `reward` is this loss's reward R (its `kappa` and normalisation; the running statistics are read,
        never updated here)."""
        dimensions = self.dimensions if dimensions is None else dimensions
        if isinstance(images, torch.Tensor):
            unit = self._unit_images(images)
            prompts = check_prompt_list(prompts, unit.shape[0])
            output = self.scorer(unit, prompts, dimensions=dimensions, reasoning=reasoning)
        else:
            output = self.scorer.score_pil(images, prompts, dimensions=dimensions, reasoning=reasoning)
        return replace(output, reward=self._shape(output, prompts, update=False))

    def reward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The reward R `(B,)` of float images (module docstring: κ, normalisation), differentiable with respect to
        `images`; the loss is −R (or ReLU(margin − R)). `ScoreOutput.reward` of this loss's outputs is the same R."""
        return self.reward_with_scores(images, prompts)[0]

    def reward_with_scores(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, ScoreOutput]:
        """`(R, score output)` from one forward pass: the reward `(B,)` and the distributions behind it (for logging
        μ and σ of every dimension without scoring twice; the output's `reward` is R)."""
        return self._reward_of_unit(self._unit_images(images), prompts)

    def _reward_of_pixels(self, pixels: torch.Tensor, prompts) -> tuple[torch.Tensor, ScoreOutput]:
        """`_reward_of_unit` of float pixels in [0, 1] whatever `image_range` (the clients' convention), prompts
        as a list or a tuple."""
        check_image_tensor(pixels, "0,1")
        return self._reward_of_unit(to_unit_range(pixels, "0,1"), _prompt_list(prompts))

    def _reward_of_unit(self, unit: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, ScoreOutput]:
        prompts = check_prompt_list(prompts, unit.shape[0])
        output = self.scorer(unit, prompts, dimensions=self.dimensions)
        reward = self._shape(output, prompts)
        return reward, replace(output, reward=reward)

    # ------------------------------------------------------------------------------------------------ clients
    def as_reward_fn(self):
        """This reward with the call convention of TRL's AlignProp and DDPO trainers (and the trainers built on
        them): `rewards, metadata = reward_fn(images, prompts, prompt_metadata)`.

        `images` are float `(B, 3, H, W)` in [0, 1] whatever this loss's `image_range` (what a diffusers pipeline
        returns with `output_type="pt"`), any float dtype (bf16 included); `prompts` a list or tuple of strings;
        `prompt_metadata` is accepted and not read. `rewards` is R `(B,)` in float32, differentiable with respect to
        `images` when they require grad (AlignProp backpropagates through it); `metadata` holds each dimension's
        expected score and std, detached: `{"expected": {dimension: (B,)}, "std": {dimension: (B,)}}`.

        >>> import torch
        >>> from zreward_diffusers.testing import build_tiny_scorer
        >>> reward_fn = ZRewardLoss(build_tiny_scorer("qwen2_vl")).as_reward_fn()
        >>> rewards, metadata = reward_fn(torch.rand(2, 3, 56, 56), ("a red circle", "two stars"), ({}, {}))
        >>> rewards.shape, sorted(metadata["expected"])[:2]
        (torch.Size([2]), ['aesthetics', 'alignment'])
        """
        def reward_fn(images, prompts, prompt_metadata=None):
            reward, output = self._reward_of_pixels(images, prompts)
            metadata = {key: {d: values[:, i].detach() for i, d in enumerate(output.dimensions)}
                        for key, values in (("expected", output.expected), ("std", output.std))}
            return reward.float(), metadata

        return reward_fn

    @torch.no_grad()
    def score_batch(self, images, prompts, batch_size: int = 32) -> dict[str, torch.Tensor]:
        """No-gradient scores of a batch, as GRPO-family trainers (Flow-GRPO, DanceGRPO, Flow-Factory style) call a
        reward: `{"reward": R (B,), <dimension>: expected score μ (B,) for each dimension}`, float32 on the CPU.

        `images`: a list of PIL images, a uint8 array `(B, H, W, 3)` (both through the official processor, as
        `score` reads them), a uint8 tensor `(B, 3, H, W)` or `(B, H, W, 3)`, or a float tensor `(B, 3, H, W)` in
        [0, 1]; scored `batch_size` images at a time. R is this loss's reward (`reward`); the running statistics of
        `normalize` are read, never updated here.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        prompts = _prompt_list(prompts)
        if isinstance(images, torch.Tensor):
            unit = _unit_batch(images)
            count = unit.shape[0]
        else:
            from .image_inputs import to_pil_images

            unit = to_pil_images(images)
            count = len(unit)
        prompts = check_prompt_list(prompts, count)
        outputs = []
        for start in range(0, count, batch_size):
            chunk, chunk_prompts = unit[start:start + batch_size], prompts[start:start + batch_size]
            if isinstance(chunk, torch.Tensor):
                outputs.append(self.scorer(chunk, chunk_prompts, dimensions=self.dimensions))
            else:
                outputs.append(self.scorer.score_pil(chunk, chunk_prompts, dimensions=self.dimensions))
        # shaped together: a groupwise reward compares images across chunks
        whole = replace(outputs[0], **{key: torch.cat([getattr(o, key) for o in outputs])
                                       for key in ("probs", "expected", "std", "entropy", "reward",
                                                   "score_token_mass", "logits")})
        reward = self._shape(whole, prompts, update=False).float().cpu()
        expected = whole.expected.float().cpu()
        return {"reward": reward, **{d: expected[:, i] for i, d in enumerate(self.dimensions)}}

    def as_imscore(self) -> ImscoreScorer:
        """This reward behind imscore's interface: `scorer.score(pixels, prompts)` → R `(B,)`, pixels float
        `(B, 3, H, W)` in [0, 1], differentiable."""
        return ImscoreScorer(self)

    def _shape(self, output: ScoreOutput, prompts: list[str], update: bool = True) -> torch.Tensor:
        """R of `output` (module docstring) over its dimensions; `update`: advance the running statistics of
        `normalize` with this batch (the reward path) or only read them (logging, no-grad scoring)."""
        index = torch.tensor([self.rubric.dimension_index(d) for d in output.dimensions],
                             device=output.expected.device)
        weights = self.scorer.dimension_weights[index]
        weights = weights / weights.sum()
        levels = self.scorer.levels
        if self.groupwise:
            return _groupwise_reward(output.probs, weights, prompts)
        if self.normalize:
            missing = [d for d in output.dimensions if d not in self.dimensions]
            if missing:
                raise ValueError(f"`dimensions` {missing} have no running statistics in this loss (normalize=True; "
                                 f"its dimensions: {list(self.dimensions)})")
            if update:
                self._update_running_stats(output.expected)
            stats = torch.tensor([self.dimensions.index(d) for d in output.dimensions],
                                 device=self.running_mean.device)
            offset, scale = self.running_mean[stats], (self.running_var[stats] + 1e-6).sqrt()
        else:
            offset, scale = levels[0], levels[-1] - levels[0]
        if self.statistic == "mean":
            value = output.expected
        elif self.statistic == "quantile":
            value = lower_quantile(output.probs, levels, self.alpha)
        elif self.statistic == "cvar":
            value = conditional_value_at_risk(output.probs, levels, self.alpha)
        else:
            value = tail_probability(output.probs, levels, self.threshold)
        per_dimension = value if self.statistic == "tail" else (value - offset) / scale
        per_dimension = per_dimension - self.kappa * output.std / scale
        if self.combine == "weighted":
            reward = (weights * per_dimension).sum(-1)
        elif self.combine == "min":
            reward = per_dimension.masked_fill(weights <= 0, torch.inf).amin(-1)
        else:
            reward = soft_minimum(per_dimension, weights, self.temperature)
        if self.floors:
            floored = torch.tensor([d in self.floors for d in output.dimensions], device=per_dimension.device)
            floor = torch.tensor([self.floors.get(d, 0.0) for d in output.dimensions], device=per_dimension.device,
                                 dtype=per_dimension.dtype)
            floor = floor if self.statistic == "tail" else (floor - offset) / scale
            shortfall = torch.relu(floor - per_dimension) * floored
            reward = reward - self.floor_weight * shortfall.sum(-1)
        return reward

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Loss of float images `(B, 3, H, W)` in `image_range`: −R, or ReLU(margin − R); reduced."""
        return self.loss_from_reward(self.reward(images, prompts))

    def loss_from_reward(self, reward: torch.Tensor) -> torch.Tensor:
        """−R, or ReLU(margin − R), reduced as configured."""
        return loss_from_reward(reward, self.margin, self.reduction)

    @torch.no_grad()
    def _update_running_stats(self, expected: torch.Tensor) -> None:
        """EMA of the per-dimension mean and variance of μ; summed over processes when distributed."""
        if not self.update_running_stats:
            return
        values = expected.detach().double()  # float64 sums: the variance of μ can be tiny next to μ²
        stats = torch.cat([values.new_tensor([values.shape[0]]), values.sum(0), (values**2).sum(0)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        count, total, total_sq = stats[0], stats[1 : 1 + values.shape[1]], stats[1 + values.shape[1] :]
        mean = total / count
        var = (total_sq / count - mean**2).clamp_min(0.0)
        mean, var = mean.to(self.running_mean.dtype), var.to(self.running_var.dtype)
        if self.num_batches_tracked == 0:
            self.running_mean.copy_(mean)
            self.running_var.copy_(var if count > 1 else torch.ones_like(var))
        else:
            self.running_mean.lerp_(mean, self.momentum)
            if count > 1:
                self.running_var.lerp_(var, self.momentum)
        self.num_batches_tracked += 1

    # ------------------------------------------------------------------------------------------------ I/O
    def reward_config(self) -> dict:
        """The reward-shaping settings and running statistics, saved next to the weights."""
        return {
            "image_range": self.image_range,
            "reduction": self.reduction,
            "kappa": self.kappa,
            "margin": self.margin,
            "normalize": self.normalize,
            "momentum": self.momentum,
            "dimensions": list(self.dimensions),
            "statistic": self.statistic,
            "alpha": self.alpha,
            "threshold": self.threshold,
            "combine": self.combine,
            "temperature": self.temperature,
            "floors": dict(self.floors),
            "floor_weight": self.floor_weight,
            "groupwise": self.groupwise,
            "running_mean": self.running_mean.tolist(),
            "running_var": self.running_var.tolist(),
            "num_batches_tracked": int(self.num_batches_tracked),
        }

    def save_pretrained(self, save_directory: str | os.PathLike, base_model: str | None = None,
                        overwrite: bool = False) -> None:
        """Write the checkpoint so that `ZRewardLoss.from_pretrained(save_directory)` restores it.

        The save is atomic and never destroys what it did not write (`zreward_diffusers.saving`): a non-empty
        `save_directory` that is not a checkpoint saved here is refused unless `overwrite=True`. `base_model` names
        the base of a PEFT backbone (default: the adapter's own). In multi-process training, call it from the main
        process only.
        """
        scorer = self.scorer
        with atomic_directory(save_directory, overwrite=overwrite) as tmp:
            if getattr(scorer, "model_config", None) is not None:  # the CLIP-sized student
                from .clip_student import FAMILY

                config = {"family": FAMILY, "backbone": scorer.save_pretrained(tmp)}
            else:
                backbone = save_backbone(scorer.model, scorer.processor, tmp, base_model=base_model)
                config = {"family": _model_type(scorer.model), "backbone": backbone, "quantize": scorer.quantize,
                          "preprocessing": scorer.image_transform.to_dict()}
            config.update({
                "rubric": scorer.rubric.to_dict(),
                "reward": self.reward_config(),
                "library_version": __version__,
                "transformers_version": _transformers_version(),
            })
            write_config(tmp, config)

    def push_to_hub(self, repo_id: str, private: bool | None = None, token=None, commit_message: str | None = None):
        """Save to a temporary directory and upload it to the hub repo `repo_id`."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(Path(tmp) / "checkpoint")
            return api.upload_folder(
                repo_id=repo_id, folder_path=str(Path(tmp) / "checkpoint"), ignore_patterns=[MARKER_NAME],
                commit_message=commit_message or "Upload Z-Reward checkpoint",
            )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        revision: str | None = None,
        token=None,
        trust_remote_code: bool = False,
        **overrides,
    ) -> ZRewardLoss:
        """Load a checkpoint directory or hub repo id; `overrides` replace saved reward settings (e.g. `kappa`).

        `torch_dtype` sets the backbone's dtype (scores are always soft-maxed in float32); `device` moves it.

        A plain transformers VLM of a supported family (a directory or hub id without `zreward_config.json`, e.g. an
        instruct Qwen2.5-VL, Qwen3-VL or Gemma 3) loads too, untrained: its next-token distribution is read at the
        default rubric's score tokens (zero-shot, as Q-Align reads a rating), with a warning that says so and the
        probability mass it puts on those tokens for a blank image (`ScoreOutput.score_token_mass` per input).
        """
        directory = resolve_checkpoint(pretrained_model_name_or_path, revision=revision, token=token)
        zero_shot = zero_shot_config(directory)
        config = zero_shot if zero_shot is not None else read_config(directory)
        if config.get("family") == "open_clip":
            from .clip_student import ClipStudentScorer

            scorer = ClipStudentScorer.from_checkpoint(directory, config)
            if torch_dtype is not None:
                scorer.to(torch_dtype)
        else:
            model, processor = load_backbone(
                directory, config, torch_dtype=torch_dtype, trust_remote_code=trust_remote_code, revision=revision,
                token=token,
            )
            scorer = ZRewardScorer(model, processor, Rubric.from_dict(config["rubric"]),
                                   quantize=config.get("quantize", True))
        saved = dict(config.get("reward", {}))
        running = {key: saved.pop(key) for key in ("running_mean", "running_var", "num_batches_tracked")
                   if key in saved}
        unknown = set(overrides) - set(saved) - set(RESTORED_SETTINGS)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {sorted(unknown)} for ZRewardLoss.from_pretrained")
        # a saved setting that belongs to an overridden choice goes with it (e.g. the saved `alpha` of a CVaR
        # checkpoint loaded with statistic="mean")
        for choice, dependents in (("statistic", ("alpha", "threshold")), ("combine", ("temperature",))):
            if choice in overrides:
                for key in dependents:
                    if key not in overrides:
                        saved.pop(key, None)
        loss = cls(scorer, **{**saved, **overrides})
        if running and "dimensions" not in overrides:
            loss.running_mean.copy_(torch.tensor(running["running_mean"]))
            loss.running_var.copy_(torch.tensor(running["running_var"]))
            loss.num_batches_tracked.fill_(running["num_batches_tracked"])
        loss = loss if device is None else loss.to(device)
        if zero_shot is not None:
            mass = loss.blank_score_token_mass()
            logger.warning(
                "%s is a plain %s checkpoint, not a trained Z-Reward: it is read zero-shot at the default rubric's "
                "score tokens %s (untrained; train it with the teacher / student recipes for a real reward). On a "
                "blank image it puts %.3f of its next-token probability on those tokens (1.0: it answers in the "
                "rubric's format).", directory, config["family"], list(scorer.rubric.score_tokens), mass,
            )
        return loss

    @torch.no_grad()
    def blank_score_token_mass(self) -> float:
        """Mean probability mass (over dimensions) on the score tokens for a mid-grey 56-pixel image and a generic
        prompt: how well the backbone follows the rubric's answer format."""
        device = self.running_mean.device
        grey = torch.full((1, 3, 56, 56), 0.5, device=device)
        output = self.scorer(grey, ["a photo"], dimensions=self.dimensions)
        return float(output.score_token_mass.mean())


class ImscoreScorer(nn.Module):
    """A `ZRewardLoss` behind imscore's interface (`score(pixels, prompts)`, pixels in [0, 1]): `as_imscore()`."""

    def __init__(self, loss: ZRewardLoss):
        super().__init__()
        self.loss = loss

    def score(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """R `(B,)` of float pixels `(B, 3, H, W)` in [0, 1], differentiable with respect to them."""
        return self.loss._reward_of_pixels(pixels, prompts)[0]

    forward = score


def loss_from_reward(reward: torch.Tensor, margin: float | None, reduction: str) -> torch.Tensor:
    """−R, or ReFL's ReLU(margin − R) when `margin` is set, reduced by `reduction` ("mean", "sum" or "none")."""
    loss = -reward if margin is None else torch.relu(margin - reward)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def objective_settings(statistic="mean", alpha=None, threshold=None, combine="weighted", temperature=None,
                       floors=None, floor_weight=1.0, groupwise=False, *, kappa=0.0, normalize=False, levels,
                       dimensions) -> dict:
    """The objective's settings (`ZRewardLoss`'s class docstring), checked together and completed with their
    defaults: `{"statistic", "alpha", "threshold", "combine", "temperature", "floors", "floor_weight", "groupwise"}`.
    Every mismatch is a `ValueError` (a non-number a `TypeError`) naming the argument; `checkpoint.read_config`
    runs the same checks on a saved config."""
    if statistic not in STATISTICS:
        raise ValueError(f"`statistic` must be one of {STATISTICS}, got {statistic!r}")
    if combine not in COMBINATIONS:
        raise ValueError(f"`combine` must be one of {COMBINATIONS}, got {combine!r}")
    if not isinstance(groupwise, bool):
        raise TypeError(f"`groupwise` must be a bool, got {groupwise!r}")
    if alpha is not None:
        if statistic not in ("quantile", "cvar"):
            raise ValueError(f"`alpha` applies to statistic='quantile' or 'cvar', not {statistic!r}")
        alpha = _finite("alpha", alpha)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"`alpha` must be in (0, 1], got {alpha}")
    elif statistic in ("quantile", "cvar"):
        alpha = DEFAULT_ALPHA
    if statistic == "tail":
        if threshold is None:
            raise ValueError("statistic='tail' needs a `threshold`: the score whose exceedance probability is "
                             "rewarded")
        threshold = _finite("threshold", threshold)
        if not levels[0] < threshold <= levels[-1]:
            raise ValueError(f"`threshold` must be in ({levels[0]}, {levels[-1]}], got {threshold}")
        if kappa > 0:
            raise ValueError("`kappa` subtracts a share of the score's std, which has no meaning next to a "
                             "probability: not with statistic='tail'")
    elif threshold is not None:
        raise ValueError(f"`threshold` applies to statistic='tail', not {statistic!r}")
    if temperature is not None:
        if combine != "softmin":
            raise ValueError(f"`temperature` applies to combine='softmin', not {combine!r}")
        temperature = _finite("temperature", temperature)
        if temperature <= 0:
            raise ValueError(f"`temperature` must be positive, got {temperature}")
    elif combine == "softmin":
        temperature = DEFAULT_TEMPERATURE
    floor_weight = _finite("floor_weight", floor_weight)
    if floor_weight <= 0:
        raise ValueError(f"`floor_weight` must be positive, got {floor_weight}")
    if floors is not None and not isinstance(floors, dict):
        raise TypeError(f"`floors` must be a mapping of dimension to floor, got {type(floors).__name__}")
    checked_floors = {}
    for dimension, floor in dict(floors or {}).items():
        if dimension not in dimensions:
            raise ValueError(f"`floors` names {dimension!r}, which is not among this loss's dimensions "
                             f"{list(dimensions)}")
        floor = _finite(f"floors[{dimension!r}]", floor)
        low, high = (0.0, 1.0) if statistic == "tail" else (levels[0], levels[-1])
        if not low <= floor <= high:
            raise ValueError(f"`floors[{dimension!r}]` must be in [{low}, {high}] for statistic={statistic!r}, "
                             f"got {floor}")
        checked_floors[dimension] = floor
    if normalize and statistic != "mean":
        raise ValueError(f"`normalize` standardises the expected score; it does not apply to "
                         f"statistic={statistic!r}")
    if groupwise:
        others = [name for name, used in (("statistic", statistic != "mean"), ("combine", combine != "weighted"),
                                          ("floors", bool(checked_floors)), ("kappa", kappa > 0),
                                          ("normalize", normalize)) if used]
        if others:
            raise ValueError(f"`groupwise` compares whole distributions; it does not combine with {others}")
    return {"statistic": statistic, "alpha": alpha, "threshold": threshold, "combine": combine,
            "temperature": temperature, "floors": checked_floors, "floor_weight": floor_weight,
            "groupwise": groupwise}


RESTORED_SETTINGS = ("image_range", "reduction", "kappa", "margin", "normalize", "momentum", "dimensions", "statistic",
                     "alpha", "threshold", "combine", "temperature", "floors", "floor_weight", "groupwise")


def _groupwise_reward(probs: torch.Tensor, weights: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """R_i = Σ_d w_d mean_{j ≠ i, prompt_j = prompt_i} P(i ≻ j)_d − 1/2 (eq. 4) over a batch `(B, D, K)`."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    alone = [prompt for prompt, members in groups.items() if len(members) < 2]
    if alone:
        raise ValueError(f"groupwise=True compares the images of one prompt, but `prompts` has {len(alone)} prompt(s) "
                         f"with a single image, e.g. {alone[0]!r}: give each prompt two or more samples")
    same = torch.tensor([[prompts[i] == prompts[j] and i != j for j in range(len(prompts))]
                         for i in range(len(prompts))], device=probs.device)
    beats = preference_probability(probs[:, None], probs[None, :])  # (B, B, D): P(i beats j) per dimension
    mean_beats = (beats * same[..., None]).sum(1) / same.sum(1, keepdim=True)
    return (weights.to(mean_beats) * mean_beats).sum(-1) - 0.5


def _prompt_list(prompts) -> list[str]:
    """Clients pass prompts as a list or a tuple (TRL's trainers: a tuple); anything else is refused later."""
    return list(prompts) if isinstance(prompts, tuple) else prompts


def _unit_batch(images: torch.Tensor) -> torch.Tensor:
    """A uint8 `(B, 3, H, W)` / `(B, H, W, 3)` or float `(B, 3, H, W)` [0, 1] tensor as float `(B, 3, H, W)` in
    [0, 1] (float input checked as `forward` checks it)."""
    if images.dtype == torch.uint8:
        if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
            raise ValueError(f"uint8 `images` must be (B, 3, H, W) or (B, H, W, 3), got shape {tuple(images.shape)}")
        if images.shape[1] != 3:
            images = images.permute(0, 3, 1, 2)
        return images.float() / 255.0
    check_image_tensor(images, "0,1")
    return to_unit_range(images, "0,1")


def _finite(name: str, value) -> float:
    """`value` as a float; a `TypeError` unless it is a real number, a `ValueError` unless it is finite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    return float(value)


def _model_type(model) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config.model_type


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
