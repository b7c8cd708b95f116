"""`check_grad_flow`: a healthy step reaches every LoRA tensor, and each planted break of the graph is named, with the
kind, the stage and the line that made it."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.lora import add_lora
from pipelines.tiny import build_tiny_pipeline
from zreward_diffusers import ZRewardLoss
from zreward_diffusers.grad_flow import GradFlowError, check_grad_flow
from zreward_diffusers.testing import build_tiny_scorer

PROMPTS = ["a red circle"]


@pytest.fixture(scope="module")
def loss_fn():
    return ZRewardLoss(build_tiny_scorer("qwen2_vl"), image_range="0,1")


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline("sd15")
    add_lora(pipe, rank=2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_healthy_step_reaches_every_lora_tensor_and_leaves_no_gradient(pipe, loss_fn):
    lora = [p for p in pipe.unet.parameters() if p.requires_grad]
    sentinel = torch.full_like(lora[0], 7.0)
    lora[0].grad = sentinel
    report = check_grad_flow(pipe, loss_fn, PROMPTS)
    assert report.ok and report.blocking is None and report.reward_requires_grad
    assert report.components["unet"].trainable == report.components["unet"].reached == len(lora)
    assert 0 < report.components["unet"].nonzero < len(lora)  # LoRA B gets a gradient, A not while B is zero
    assert [stage for stage, _, _ in report.stages] == ["denoiser", "vae decoder", "reward"]
    assert report.stages[0][1:] == (False, True)  # noise in, grad out: the LoRA joins the graph there
    assert lora[0].grad is sentinel and all(p.grad is None for p in lora[1:])  # restored
    assert "gradient flow: ok" in report.summary()


def test_trl_style_reward_and_a_transformer_pipeline(loss_fn):
    pipe = build_tiny_pipeline("sd3")
    add_lora(pipe, rank=2)
    pipe.set_progress_bar_config(disable=True)
    report = check_grad_flow(pipe, loss_fn.as_reward_fn(), PROMPTS)  # returns (rewards, metadata)
    assert report.ok and report.components["transformer"].reached == report.components["transformer"].trainable


def reward_under_no_grad(loss_fn):
    def reward(images, prompts):
        with torch.no_grad():
            return loss_fn.as_imscore().score(images, prompts)
    return reward


def reward_under_inference_mode(loss_fn):
    def reward(images, prompts):
        with torch.inference_mode():
            return loss_fn.as_imscore().score(images, prompts)
    return reward


def reward_of_detached(loss_fn):
    def reward(images, prompts):
        return loss_fn.as_imscore().score(images.detach(), prompts)
    return reward


def reward_of_uint8(loss_fn):
    def reward(images, prompts):
        quantised = (images * 255).round().to(torch.uint8)
        return loss_fn.as_imscore().score(quantised.float() / 255, prompts)
    return reward


def reward_through_pil(loss_fn):
    def reward(images, prompts):
        pictures = [Image.fromarray((image.detach().permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8))
                    for image in images]
        back = torch.stack([torch.from_numpy(np.asarray(p).copy()).permute(2, 0, 1) for p in pictures]) / 255
        return loss_fn.as_imscore().score(back.float(), prompts)
    return reward


@pytest.mark.parametrize("planted, kind", [
    (reward_under_no_grad, "no_grad"),
    (reward_under_inference_mode, "inference_mode"),
    (reward_of_detached, "detach"),
    (reward_of_uint8, "integer cast"),
    (reward_through_pil, "PIL / NumPy round trip"),
])
def test_each_planted_break_in_the_reward_is_named(pipe, loss_fn, planted, kind):
    with pytest.raises(GradFlowError) as raised:
        check_grad_flow(pipe, planted(loss_fn), PROMPTS)
    message = str(raised.value)
    assert f"inside the reward: {kind} (" in message
    assert "test_grad_flow.py" in message and " in reward" in message  # the planted function's own line
    assert "unet (0/" in message and "Fix:" in message
    report = check_grad_flow(pipe, planted(loss_fn), PROMPTS, raise_on_break=False)
    assert not report.ok and report.blocking.kind == kind and report.components["unet"].reached == 0


def test_a_detach_between_the_denoiser_and_the_decoder(pipe, loss_fn):
    def step(pipe, prompts):
        call = type(pipe).__call__.__wrapped__

        def detach_latents(pipe, index, timestep, callback_kwargs):
            return {"latents": callback_kwargs["latents"].detach()}

        return call(pipe, prompts, num_inference_steps=1, output_type="pt", guidance_scale=1.0,
                    callback_on_step_end=detach_latents).images

    with pytest.raises(GradFlowError, match="between the denoiser and the vae decoder: detach .* in detach_latents"):
        check_grad_flow(pipe, loss_fn, PROMPTS, step=step)


def test_the_pipelines_own_call_is_named_as_no_grad(pipe, loss_fn):
    def step(pipe, prompts):
        return pipe(prompts, num_inference_steps=1, output_type="pt", guidance_scale=1.0).images

    with pytest.raises(GradFlowError) as raised:
        check_grad_flow(pipe, loss_fn, PROMPTS, step=step)
    assert "inside the denoiser" in str(raised.value) and ": no_grad (" in str(raised.value)
    assert "called from" in str(raised.value) and "in step" in str(raised.value)


def test_refuses_a_pipeline_with_nothing_to_train(loss_fn):
    pipe = build_tiny_pipeline("sd15")
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        check_grad_flow(pipe, loss_fn, PROMPTS)
    with pytest.raises(ValueError, match="`prompts`"):
        check_grad_flow(pipe, loss_fn, [""])
