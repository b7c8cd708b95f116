"""The reward as the clients people already use call it: TRL's AlignProp / DDPO `reward_fn`, GRPO-family no-grad
batch scoring, imscore's `score(pixels, prompts)`; and one meaning of "reward" across `ScoreOutput` and the loss."""

import numpy as np
import pytest
import torch
from helpers import REPO, random_images, sharp_scorer
from PIL import Image

from zreward_diffusers import ZRewardLoss

WORLD = REPO / "world"
PROMPTS = ["two red circles on a blue background", "a yellow square", "three green stars", "a purple triangle"]


@pytest.fixture(scope="module")
def scorer():
    return sharp_scorer("qwen2_vl")


def by_hand(out, kappa: float = 0.0) -> torch.Tensor:
    """Eq. 15 without normalisation, from the distributions: uniform weights, levels 1..5."""
    return ((out.expected - 1.0) / 4.0 - kappa * out.std / 4.0).mean(-1)


def test_alignprop_reward_fn_is_called_as_trl_calls_it_and_backpropagates(scorer):
    loss_fn = ZRewardLoss(scorer, kappa=0.3)
    reward_fn = loss_fn.as_reward_fn()
    # as TRL's AlignPropTrainer: a differentiable decode to [0, 1], prompts and metadata as tuples, then
    # `rewards, reward_metadata = reward_fn(images, prompts, prompt_metadata)` and `loss = 10 - rewards.mean()`
    latents = (random_images(4, 56, 56) * 2).requires_grad_()
    images = (torch.tanh(latents) + 1) / 2
    rewards, metadata = reward_fn(images, tuple(PROMPTS), tuple({} for _ in PROMPTS))
    (10.0 - rewards.mean()).backward()
    assert rewards.dtype == torch.float32 and rewards.shape == (4,)
    # the same images through the loss's own [-1, 1] path, and by hand from its distributions
    reference_latents = latents.detach().clone().requires_grad_()
    reference = loss_fn.reward(torch.tanh(reference_latents), PROMPTS)
    (10.0 - reference.mean()).backward()
    torch.testing.assert_close(rewards, reference)
    torch.testing.assert_close(latents.grad, reference_latents.grad)
    assert latents.grad.abs().sum() > 0
    out = loss_fn.score(torch.tanh(latents.detach()), PROMPTS)
    torch.testing.assert_close(rewards.detach(), by_hand(out, kappa=0.3))
    assert set(metadata) == {"expected", "std"} and list(metadata["expected"]) == list(out.dimensions)
    torch.testing.assert_close(metadata["expected"]["realism"], out.expected[:, out.dimensions.index("realism")])
    assert not metadata["std"]["alignment"].requires_grad


def test_alignprop_reward_fn_takes_bf16_images_and_refuses_minus_one_to_one(scorer):
    reward_fn = ZRewardLoss(scorer).as_reward_fn()
    images = ((random_images(2, 56, 56) + 1) / 2).to(torch.bfloat16).requires_grad_()
    rewards, _ = reward_fn(images, PROMPTS[:2], None)
    rewards.sum().backward()
    assert rewards.dtype == torch.float32 and torch.isfinite(rewards).all()
    assert images.grad.dtype == torch.bfloat16 and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="images"):  # [-1, 1] images are not [0, 1] ones
        reward_fn(random_images(2, 56, 56) * 1.0 - 0.5, PROMPTS[:2], None)
    with pytest.raises(ValueError, match="prompts"):
        reward_fn(torch.rand(2, 3, 56, 56), PROMPTS[:1], None)


def test_score_output_reward_is_the_loss_reward(scorer):
    images = random_images(4, 56, 56)
    plain = ZRewardLoss(scorer)
    # with kappa and normalisation off, the scorer's own reward, the loss's reward and its score's reward agree
    torch.testing.assert_close(scorer(images.add(1).div(2), PROMPTS).reward, plain.reward(images, PROMPTS))
    shaped = ZRewardLoss(scorer, kappa=0.5, normalize=True)
    shaped.reward(images, PROMPTS)  # one batch of running statistics
    tracked = int(shaped.num_batches_tracked)
    mean, var = shaped.running_mean.clone(), shaped.running_var.clone()
    out = shaped.score(images, PROMPTS)
    assert int(shaped.num_batches_tracked) == tracked  # logging never moves the statistics
    scale = (var + 1e-6).sqrt()
    expected = ((out.expected - mean) / scale - 0.5 * out.std / scale).mean(-1)
    torch.testing.assert_close(out.reward, expected)
    shaped.update_running_stats = False
    torch.testing.assert_close(shaped.reward(images, PROMPTS), out.reward)
    reward, output = shaped.reward_with_scores(images, PROMPTS)
    torch.testing.assert_close(output.reward, reward)
    # a subset of the loss's dimensions, in another order: their own statistics, their weights renormalised
    dims = ["realism", "alignment"]
    part = shaped.score(images, PROMPTS, dimensions=dims)
    index = [list(shaped.dimensions).index(d) for d in dims]
    by_dim = ((part.expected - mean[index]) / scale[index] - 0.5 * part.std / scale[index]).mean(-1)
    torch.testing.assert_close(part.reward, by_dim)
    # the scorer alone has no kappa: its reward differs from the shaped one
    assert not torch.allclose(scorer(images.add(1).div(2), PROMPTS).reward, out.reward)
    with pytest.raises(ValueError, match="running statistics"):
        ZRewardLoss(scorer, normalize=True, dimensions=["realism"]).score(images, PROMPTS, dimensions=["alignment"])


def test_score_batch_reads_every_image_form_the_same_way_without_grad(scorer):
    loss_fn = ZRewardLoss(scorer, kappa=0.2)
    unit = (random_images(4, 56, 56) + 1) / 2
    pixels = (unit * 255).round().to(torch.uint8)  # what GRPO-family trainers hold
    exact = pixels.float() / 255
    reference = loss_fn.score(exact * 2 - 1, PROMPTS)
    result = loss_fn.score_batch(exact.requires_grad_(), PROMPTS, batch_size=3)
    assert list(result) == ["reward", *reference.dimensions]
    torch.testing.assert_close(result["reward"], reference.reward.detach())
    torch.testing.assert_close(result["aesthetics"], reference.expected[:, reference.dimensions.index("aesthetics")])
    assert not result["reward"].requires_grad and result["reward"].dtype == torch.float32
    for form in (pixels, pixels.permute(0, 2, 3, 1)):
        torch.testing.assert_close(loss_fn.score_batch(form, PROMPTS)["reward"], result["reward"])
    # PIL images and uint8 arrays take the official processor, as `score` does for them
    pil = [Image.fromarray(image) for image in pixels.permute(0, 2, 3, 1).numpy()]
    official = loss_fn.score(pil, PROMPTS)
    from_pil = loss_fn.score_batch(pil, PROMPTS, batch_size=2)
    torch.testing.assert_close(from_pil["reward"], official.reward.float())
    torch.testing.assert_close(loss_fn.score_batch(np.stack([np.asarray(p) for p in pil]), PROMPTS)["reward"],
                               from_pil["reward"])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            loss_fn.score_batch(pixels, PROMPTS, batch_size=bad)
    with pytest.raises(ValueError, match="prompts"):
        loss_fn.score_batch(pixels, PROMPTS[:3])
    with pytest.raises(ValueError, match="uint8"):
        loss_fn.score_batch(pixels[0], PROMPTS[:1])


def test_score_batch_leaves_the_running_statistics_alone(scorer):
    loss_fn = ZRewardLoss(scorer, normalize=True)
    loss_fn.reward(random_images(4, 56, 56), PROMPTS)
    state = (loss_fn.running_mean.clone(), int(loss_fn.num_batches_tracked))
    loss_fn.score_batch(torch.rand(4, 3, 56, 56), PROMPTS)
    assert torch.equal(loss_fn.running_mean, state[0]) and int(loss_fn.num_batches_tracked) == state[1]


def test_imscore_style_score_is_the_reward_of_unit_pixels(scorer):
    loss_fn = ZRewardLoss(scorer)
    pixels = ((random_images(2, 56, 56) + 1) / 2).requires_grad_()
    scores = loss_fn.as_imscore().score(pixels, PROMPTS[:2])
    scores.sum().backward()
    torch.testing.assert_close(scores.detach(), loss_fn.reward(pixels.detach() * 2 - 1, PROMPTS[:2]))
    assert pixels.grad.abs().sum() > 0


@pytest.fixture
def fresh_accelerate_state():
    """TRL's trainer leaves accelerate's process-wide state in bf16 mixed precision; later in-process trainers of
    this test session would inherit it. Reset it before and after."""
    from accelerate.state import AcceleratorState, GradientState

    def reset():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    yield
    reset()


def test_trl_alignprop_trains_a_lora_with_the_reward_fn_in_bf16(tmp_path, fresh_accelerate_state):
    """TRL's own AlignPropTrainer (trl 0.23, the last release that has it), bf16 mixed precision on the CPU, the
    world's tiny SD pipeline and its trained student through `as_reward_fn()`: the LoRA trains, and every reward it
    sees is the loss's R for those images."""
    from accelerate import PartialState
    from trl import AlignPropConfig, AlignPropTrainer, DefaultDDPOStableDiffusionPipeline

    PartialState()  # TRL's pipeline logs through accelerate before its trainer creates the state
    loss_fn = ZRewardLoss.from_pretrained(WORLD / "student_risd")
    reward_fn = loss_fn.as_reward_fn()
    seen = []

    def recording_reward_fn(images, prompts, prompt_metadata):
        rewards, metadata = reward_fn(images, prompts, prompt_metadata)
        seen.append((images.detach().float().clone(), list(prompts), rewards.detach().clone(), images.dtype))
        return rewards, metadata

    pipeline = DefaultDDPOStableDiffusionPipeline(str(WORLD / "generator"), use_lora=True)
    config = AlignPropConfig(num_epochs=2, train_batch_size=2, sample_num_steps=4, truncated_backprop_rand=False,
                             truncated_backprop_timestep=2, sample_guidance_scale=3.0, mixed_precision="bf16",
                             log_with=None, save_freq=100, project_kwargs={"project_dir": str(tmp_path)})
    trainer = AlignPropTrainer(config, recording_reward_fn, lambda: (PROMPTS[len(seen) % 2], {}), pipeline)
    lora = {name: p.detach().clone() for name, p in pipeline.unet.named_parameters() if p.requires_grad}
    trainer.train()
    trained = dict(pipeline.unet.named_parameters())
    assert lora and all("lora" in name for name in lora)
    assert all(not torch.equal(lora[name], trained[name].detach()) for name in lora)
    assert [dtype for *_, dtype in seen] == [torch.bfloat16, torch.bfloat16]  # bf16 images reached the reward
    for images, prompts, rewards, _ in seen:
        torch.testing.assert_close(rewards, loss_fn.reward(images * 2 - 1, prompts), atol=2e-2, rtol=0)
