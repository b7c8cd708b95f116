"""Reward fine-tuning of tiny SD1.5 / SDXL / SD3 / Flux pipelines built from config: every family × method gives the
LoRA parameters finite non-zero gradients from ZRewardLoss with the base frozen, saved LoRA weights load with
`load_lora_weights`, the rollout without gradients reproduces the pipeline's own sampling, and the entry point runs
and resumes."""

import json

import numpy as np
import pytest
import torch
from helpers import launch_cpu

from pipelines.attention import configure_attention
from pipelines.lora import add_lora, denoiser_of, diversity, saturation, save_lora
from pipelines.methods import METHODS, sample
from pipelines.rollout import rollout_for
from pipelines.tiny import FAMILIES, build_tiny_pipeline
from zreward_diffusers import ZRewardLoss
from zreward_diffusers.testing import build_tiny_scorer

PROMPTS = ["two red circles on a blue background", "a yellow star"]
GUIDANCE = {"sd15": 3.0, "sdxl": 3.0, "sd3": 3.0, "flux": 1.0}


@pytest.fixture(scope="module")
def reward():
    return ZRewardLoss(build_tiny_scorer("qwen2_vl", seed=0))


def _pipeline_kwargs(family):
    return {"max_sequence_length": 16} if family in ("sd3", "flux") else {}


@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_without_gradients_reproduces_the_pipeline(family):
    pipe = build_tiny_pipeline(family, seed=1)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(PROMPTS, num_inference_steps=3, height=32, width=32, guidance_scale=GUIDANCE[family],
                     generator=torch.Generator().manual_seed(5), output_type="pt", **_pipeline_kwargs(family)).images
    rollout = rollout_for(pipe, 32, 32, GUIDANCE[family], max_sequence_length=16)
    with torch.no_grad():
        ours = sample(rollout, PROMPTS, 3, "draft", generator=torch.Generator().manual_seed(5)).images
    torch.testing.assert_close(ours / 2 + 0.5, reference, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_lora_gets_reward_gradients_and_the_base_stays_frozen(family, method, reward, tmp_path):
    pipe = build_tiny_pipeline(family)
    lora = add_lora(pipe, rank=4, seed=0)
    denoiser = denoiser_of(pipe)
    frozen = {n: p.detach().clone() for n, p in denoiser.named_parameters() if "lora_" not in n}
    assert all(not p.requires_grad for n, p in denoiser.named_parameters() if "lora_" not in n)
    assert all(not p.requires_grad for p in pipe.vae.parameters())
    rollout = rollout_for(pipe, 32, 32, GUIDANCE[family], max_sequence_length=16)
    result = sample(rollout, PROMPTS, 3, method, k=2, lv_samples=2, refl_last_steps=2,
                    generator=torch.Generator().manual_seed(0), rng=np.random.default_rng(0), use_checkpoint=True,
                    velocity_l2=True)
    prompts = [PROMPTS[i] for i in result.prompt_index]
    loss = reward(result.images, prompts) + result.velocity_l2
    loss.backward()
    grads = [p.grad for p in lora]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    torch.optim.SGD(lora, lr=1e-2).step()
    for name, p in denoiser.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, frozen[name]), name
    if method == "draft":  # saved LoRA weights load into a fresh pipeline and give the same denoiser outputs
        save_lora(pipe, tmp_path / "lora")
        fresh = build_tiny_pipeline(family)
        fresh.load_lora_weights(str(tmp_path / "lora"))
        fresh_rollout = rollout_for(fresh, 32, 32, GUIDANCE[family], max_sequence_length=16)
        with torch.no_grad():
            a = sample(rollout, PROMPTS, 2, "draft", generator=torch.Generator().manual_seed(3)).images
            b = sample(fresh_rollout, PROMPTS, 2, "draft", generator=torch.Generator().manual_seed(3)).images
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_methods_take_gradients_where_they_say():
    pipe = build_tiny_pipeline("sd15")
    add_lora(pipe, rank=2)
    rollout = rollout_for(pipe, 32, 32)
    rng = np.random.default_rng(0)
    assert sample(rollout, PROMPTS, 4, "draft", k=2, rng=rng).grad_steps == [2, 3]
    assert sample(rollout, PROMPTS, 4, "draft_lv", lv_samples=3, rng=rng).images.shape[0] == 6
    refl = sample(rollout, PROMPTS, 4, "refl", refl_last_steps=2, rng=rng).grad_steps
    assert len(refl) == 1 and refl[0] in (2, 3)
    steps = {len(sample(rollout, PROMPTS, 4, "alignprop", rng=rng).grad_steps) for _ in range(12)}
    assert steps <= {1, 2, 3, 4} and len(steps) > 1  # a random truncation


def test_sampling_rejects_bad_arguments():
    rollout = rollout_for(build_tiny_pipeline("sd15"), 32, 32)
    with pytest.raises(ValueError, match="method"):
        sample(rollout, PROMPTS, 2, "ddpo")
    with pytest.raises(ValueError, match="`k`"):
        sample(rollout, PROMPTS, 2, "draft", k=3)
    with pytest.raises(ValueError, match="refl_last_steps"):
        sample(rollout, PROMPTS, 2, "refl", refl_last_steps=5)
    with pytest.raises(ValueError, match="unsupported pipeline"):
        rollout_for(object(), 32, 32)


def test_monitors():
    flat = torch.zeros(2, 3, 4, 4)
    assert float(saturation(flat)) == 0.0 and float(diversity(flat)) == 0.0
    red = torch.full((1, 3, 4, 4), -1.0)
    red[:, 0] = 1.0
    assert float(saturation(red)) == pytest.approx(1.0)
    assert float(diversity(torch.stack([flat[0], red[0]]))) > 0


def test_attention_falls_back_to_sdpa_on_cpu():
    pipe = build_tiny_pipeline("sd15")
    assert configure_attention(pipe) == "sdpa"
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"AttnProcessor2_0"}


def _finetune_args(out, steps, *extra, batch_size=2):
    return ["--pretrained", "tiny:sd15", "--reward", "tiny", "--steps", str(steps), "--num_inference_steps", "3",
            "--batch_size", str(batch_size), "--eval_prompts", "2", "--num_prompts", "8", "--output_dir", str(out),
            "--log_with", "none", "--save_every", "1", "--lr", "1e-3", *extra]


def test_reward_finetune_runs_saves_and_resumes(tmp_path):
    from diffusers import StableDiffusionPipeline  # noqa: F401  (the class load_lora_weights lives on)

    from pipelines import reward_finetune

    full = reward_finetune.main(_finetune_args(tmp_path / "full", 2))
    assert (tmp_path / "full" / "lora" / "pytorch_lora_weights.safetensors").exists()
    saved = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert len(saved["history"]) == 2 and "eval_judge_score" in saved["evaluations"][-1]
    reward_finetune.main(_finetune_args(tmp_path / "half", 1))
    ran, step_function = [], reward_finetune.RewardFinetuner.training_step

    def counted(self, step):
        ran.append(step)
        return step_function(self, step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reward_finetune.RewardFinetuner, "training_step", counted)
        resumed = reward_finetune.main(_finetune_args(tmp_path / "half", 2, "--resume"))
    assert ran == [1] and resumed["resumed_from_step"] == 1  # only the remaining step ran
    np.testing.assert_allclose([h["reward_mean"] for h in resumed["history"]],
                               [h["reward_mean"] for h in full["history"]], rtol=1e-4, atol=1e-6)
    pipe = build_tiny_pipeline("sd15")
    pipe.load_lora_weights(str(tmp_path / "full" / "lora"))
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())


def test_reward_finetune_two_processes_match_one(tmp_path):
    # batch_size is per process: 2 processes of 1 prompt draw what 1 process of 2 does (prompts and noise)
    runs = {}
    for processes in (1, 2):
        args = _finetune_args(tmp_path / str(processes), 2, "--eval_batch_size", "2", batch_size=2 // processes)
        launch_cpu(["-m", "pipelines.reward_finetune", *args], processes)
        runs[processes] = json.loads((tmp_path / str(processes) / "metrics.json").read_text())
    for key in ("reward_mean", "reward_std", "loss", "expected_score", "saturation", "grad_norm"):
        np.testing.assert_allclose([h[key] for h in runs[2]["history"]], [h[key] for h in runs[1]["history"]],
                                   rtol=1e-4, atol=1e-4, err_msg=key)  # the normalised reward's mean is ~1e-5
    judged = [run["evaluations"][-1]["eval_judge_score"] for run in (runs[1], runs[2])]
    assert judged[1] == pytest.approx(judged[0])


def test_reward_finetune_two_process_resume_equals_the_uninterrupted_two_process_run(tmp_path):
    def launch(out: str, steps: int, *extra: str) -> dict:
        args = _finetune_args(tmp_path / out, steps, *extra, batch_size=1)
        launch_cpu(["-m", "pipelines.reward_finetune", *args], 2)
        return json.loads((tmp_path / out / "metrics.json").read_text())

    full = launch("full", 2)
    launch("half", 1)
    resumed = launch("half", 2, "--resume")
    assert resumed["resumed_from_step"] == 1
    for key in ("reward_mean", "loss", "grad_norm"):
        np.testing.assert_allclose([h[key] for h in resumed["history"]], [h[key] for h in full["history"]],
                                   rtol=1e-4, atol=1e-5, err_msg=key)


# ------------------------------------------------------------------------------------------------ judging, rewards
def test_best_of_n_keeps_the_highest_reward(reward):
    """Each prompt's n candidates drawn from the pipeline itself (seeds seed · 1_000_003 + p · n + i, one explicit
    generator each) and scored with `ZRewardLoss.reward` (R = Σ_d w_d (μ_d − 1) / 4 on levels 1..5, so the weighted
    mean μ is 1 + 4R): best_of_n returns the candidate of the highest R and its μ."""
    from pipelines.judging import best_of_n, reward_scores

    pipe = build_tiny_pipeline("sd15")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, height=32, width=32)
    images, scores = best_of_n(pipe, reward, PROMPTS, n=3, seed=0, **kwargs)
    assert images.shape == (2, 3, 32, 32) and scores.shape == (2,)
    levels = reward.scorer.levels.tolist()
    assert (levels[0], levels[-1]) == (1.0, 5.0) and not reward.normalize and reward.kappa == 0.0
    chosen_rewards = reward.reward(images, PROMPTS).tolist()
    best = []
    for p, prompt in enumerate(PROMPTS):
        candidates = torch.cat([
            pipe([prompt], guidance_scale=1.0, generator=torch.Generator().manual_seed(p * 3 + i), output_type="pt",
                 **kwargs).images * 2 - 1 for i in range(3)])
        with torch.no_grad():
            values = reward.reward(candidates, [prompt] * 3).tolist()
        top = max(range(3), key=lambda i: values[i])
        assert sorted(values)[-1] - sorted(values)[-2] > 1e-5  # a unique best candidate
        best.append(top)
        torch.testing.assert_close(images[p], candidates[top])
        assert chosen_rewards[p] >= max(values) - 1e-6
        assert scores[p] == pytest.approx(1.0 + 4.0 * values[top], abs=1e-5)
    assert best != [0, 0]  # the first candidate is not the answer everywhere
    cautious = reward_scores(reward, images, PROMPTS, kappa=1.0)
    assert (cautious < reward_scores(reward, images, PROMPTS)).all()  # μ − κσ < μ
    with pytest.raises(ValueError, match="`n`"):
        best_of_n(pipe, reward, PROMPTS, n=0)


def test_gsb_compare_with_a_callable_and_the_oracle():
    from pipelines.judging import gsb_compare

    a = torch.zeros(4, 3, 32, 32)
    b = torch.ones(4, 3, 32, 32)
    prompts = ["p1", "p1", "p2", "p2"]
    result = gsb_compare(a, b, prompts, lambda x, y, p: np.array([1, 1, 0, -1]), num_resamples=200)
    assert result["good"] == 0.5 and result["bad"] == 0.25 and result["net"] == pytest.approx(0.25)
    oracle = gsb_compare(a, a, ["one red circle on a blue background"] * 4, "oracle", num_resamples=50)
    assert oracle["same"] == 1.0 and oracle["net"] == 0.0  # identical images tie


def test_clipscore_is_differentiable_and_mixes_with_zreward(reward):
    from zreward_diffusers.rewards import CLIPScoreLoss, WeightedRewardLoss

    clip = CLIPScoreLoss.tiny(weight=1.0, reduction="none")
    images = (torch.rand(2, 3, 48, 40) * 2 - 1).requires_grad_(True)
    loss = clip(images, PROMPTS)
    assert loss.shape == (2,) and (loss <= 0).all()
    loss.sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    mixed = WeightedRewardLoss({"zreward": reward, "clip": CLIPScoreLoss.tiny()}, {"zreward": 1.0, "clip": 0.1})
    images.grad = None
    total = mixed(images, PROMPTS)
    torch.testing.assert_close(total, reward(images, PROMPTS) + 0.1 * CLIPScoreLoss.tiny()(images, PROMPTS),
                               atol=1e-5, rtol=1e-5)
    assert set(mixed.last_terms) == {"zreward", "clip"}
    with pytest.raises(ValueError, match="weights"):
        WeightedRewardLoss({"zreward": reward}, {"clip": 1.0})
    with pytest.raises(FileNotFoundError):
        CLIPScoreLoss.from_pretrained("ViT-B-32", "/nonexistent/open_clip.bin")


def test_tiny_generator_trains_saves_and_resumes(tmp_path):
    from diffusers import StableDiffusionPipeline

    from pipelines.train_tiny_generator import GeneratorConfig, train_generator

    small = dict(num_groups=2, vae_steps=2, unet_steps=3, batch_size=4, save_every=1, vae_channels=[16, 32],
                 unet_channels=[32, 32], text_hidden=32)
    metrics = train_generator(GeneratorConfig(output_dir=str(tmp_path / "full"), **small))
    assert metrics["images"] == 8 and np.isfinite(metrics["unet_final_loss"])
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "full" / "pipeline"), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(["two red circles on a blue background"], num_inference_steps=2, height=32, width=32,
                 output_type="pt").images
    assert image.shape == (1, 3, 32, 32)
    assert train_generator(GeneratorConfig(output_dir=str(tmp_path / "full"), resume=True, **small)) == metrics
    with pytest.raises(ValueError, match="--resume.*--overwrite"):  # a rerun never replaces a finished run silently
        train_generator(GeneratorConfig(output_dir=str(tmp_path / "full"), **small))
    # an interrupted run (VAE done, UNet at step 1) resumes to the same UNet loss curve
    train_generator(GeneratorConfig(output_dir=str(tmp_path / "half"), **dict(small, unet_steps=1)))
    (tmp_path / "half" / "metrics.json").unlink()
    resumed = train_generator(GeneratorConfig(output_dir=str(tmp_path / "half"), resume=True, **small))
    assert metrics["resumed_from_step"] == {"vae": 0, "unet": 0}
    assert resumed["resumed_from_step"] == {"vae": 2, "unet": 1}
    assert resumed["unet_final_loss"] == pytest.approx(metrics["unet_final_loss"], rel=1e-4)
    assert metrics["unet_loss_curve"][-1][0] == small["unet_steps"]  # the curve the demo report plots

    # the GSB command: two saved pipelines, held-out prompts after the skipped (validation) ones, same seeds
    from pipelines.judging import main as judging_main
    from pipelines.reward_finetune import world_prompts

    pipeline = str(tmp_path / "full" / "pipeline")
    result = judging_main(["--a", pipeline, "--b", pipeline, "--num_prompts", "2", "--seeds_per_prompt", "2",
                           "--skip_prompts", "3", "--num_inference_steps", "2", "--out", str(tmp_path / "gsb.json")])
    held_out = world_prompts(512, 5, seed=0)[1]
    assert result["prompts"] == [held_out[3], held_out[3], held_out[4], held_out[4]]
    assert result["same"] == 1.0  # identical generators, identical seeds: every pair ties
    assert json.loads((tmp_path / "gsb.json").read_text())["num_judgements"] == 4


def test_world_generator_options_build_what_they_say_and_train(tmp_path):
    """generator_world.yaml's switches: one token per world word, the pooled prompt in the time embedding,
    cross-attention in every block, latents scaled to unit std, a zero-terminal-SNR v-prediction schedule, and a
    cosine learning rate; the trained pipeline saves, loads and samples."""
    from diffusers import StableDiffusionPipeline

    from pipelines.reward_finetune import world_prompts
    from pipelines.train_tiny_generator import (
        GeneratorConfig,
        _unet_lr_factor,
        diffusion_target,
        train_generator,
        world_data,
    )

    options = dict(tokenizer="words", text_pooling=True, cross_attention_everywhere=True, normalize_latents=True,
                   noise_schedule="zero_terminal_snr", unet_lr_schedule="cosine")
    small = dict(num_groups=2, vae_steps=2, unet_steps=3, batch_size=4, save_every=1, vae_channels=[16, 32],
                 unet_channels=[32, 32], text_hidden=32, **options)
    config = GeneratorConfig(output_dir=str(tmp_path / "gen"), **small)
    train_generator(config)
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "gen" / "pipeline"), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    for prompt in world_prompts(8, 8, seed=0)[1]:  # every word of a world prompt is one token, then </s>
        ids = pipe.tokenizer(prompt).input_ids
        assert len(ids) == len(prompt.split()) + 1 and pipe.tokenizer.unk_token_id not in ids, prompt
    assert pipe.unet.config.addition_embed_type == "text" and pipe.unet.add_embedding is not None
    assert all("CrossAttn" in block for block in pipe.unet.config.down_block_types + pipe.unet.config.up_block_types)
    images, _ = world_data(config)
    with torch.no_grad():
        latents = pipe.vae.encode(images).latent_dist.mode()
    assert pipe.vae.config.scaling_factor == pytest.approx(1 / latents.std().item(), rel=1e-4)
    scheduler = pipe.scheduler
    assert scheduler.config.prediction_type == "v_prediction" and float(scheduler.alphas_cumprod[-1]) == 0.0
    scheduler.set_timesteps(20)
    assert int(scheduler.timesteps[0]) == 999  # trailing spacing: sampling starts at the pure-noise step
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(diffusion_target(scheduler, x0, noise, t), scheduler.get_velocity(x0, noise, t))
    torch.testing.assert_close(diffusion_target(scheduler, x0, noise, t)[2], -x0[2])  # pure noise: v = −x0
    image = pipe(["two red circles on a blue background"], num_inference_steps=2, height=32, width=32,
                 output_type="pt").images
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    # the learning rate: 100 warm-up steps, then a cosine from 1 to 0 over the remaining steps
    cosine = GeneratorConfig(unet_steps=1100, unet_lr_schedule="cosine")
    assert [_unet_lr_factor(s, cosine) for s in (0, 99, 100, 600, 1100)] == pytest.approx([0.01, 1, 1, 0.5, 0])
    assert _unet_lr_factor(600, GeneratorConfig(unet_steps=1100)) == 1.0
    with pytest.raises(ValueError, match="text_hidden must be a multiple of 4"):
        GeneratorConfig(text_pooling=True, text_hidden=30)


def test_generate_draws_each_image_from_its_own_seed_whatever_the_batch():
    from pipelines.judging import generate

    pipe = build_tiny_pipeline("sd15", seed=0)
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ["a red circle", "two blue stars", "a green square"], [5, 6, 7]
    kwargs = dict(num_inference_steps=3, guidance_scale=3.0)
    batched = generate(pipe, prompts, seeds, batch_size=2, **kwargs)
    one_by_one = torch.cat([generate(pipe, [p], [s], batch_size=1, **kwargs)
                            for p, s in zip(prompts, seeds, strict=True)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], generate(pipe, prompts[:1], [8], **kwargs)[0])  # another seed differs
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate(pipe, prompts, seeds[:2])


def test_oracle_report_counts_what_the_prompt_asks_for():
    """Perfect renders of their own prompts hit every attribute; the same images under prompts that change exactly
    one attribute miss exactly that one."""
    from pipelines.judging import oracle_report
    from zreward_diffusers.synthetic.grammar import PromptSpec
    from zreward_diffusers.synthetic.render import render
    from zreward_diffusers.synthetic.scene import perfect_scene

    specs = [PromptSpec(3, "red", "triangle", "blue"), PromptSpec(1, "green", "circle", "white"),
             PromptSpec(2, "yellow", "square", "black")]
    rng = np.random.default_rng(0)
    pixels = np.stack([render(perfect_scene(spec, rng), size=56) for spec in specs])  # (3, 56, 56, 3) uint8
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    report = oracle_report(images, [spec.text() for spec in specs])
    assert report["images"] == 3 and report["hit_rates"] == dict.fromkeys(
        ("count", "colour", "shape", "background", "all"), 1.0)
    assert report["oracle"]["alignment"] == 5.0
    changed = [PromptSpec(4, "red", "triangle", "blue"), PromptSpec(1, "green", "star", "white"),
               PromptSpec(2, "yellow", "square", "black")]
    report = oracle_report(images, [spec.text() for spec in changed])
    assert report["hit_rates"]["count"] == report["hit_rates"]["shape"] == pytest.approx(2 / 3)
    assert report["hit_rates"]["colour"] == report["hit_rates"]["background"] == 1.0
    assert report["hit_rates"]["all"] == pytest.approx(1 / 3)
