"""`check_grad_flow(pipe, reward)`: does the reward's gradient reach the generator's trainable parameters, and if
not, where does the graph break?

Reward fine-tuning by backpropagation (ReFL, DRaFT, AlignProp) fails silently when anything between the trainable
weights and the reward drops the autograd graph: diffusers decorates every pipeline's `__call__` with
`torch.no_grad()`, a reward wrapper runs under `torch.inference_mode()`, an image goes through PIL or NumPy (which
needs a `.detach()`), or pixels are quantised to uint8. The loss then trains nothing, or raises far from the cause.

`check_grad_flow` runs one tiny step (one denoising step at the pipeline's smallest size, or the user's own
`step`), scores it with the reward and backpropagates, while a `torch.overrides.TorchFunctionMode` watches every
torch call: a call that takes a tensor requiring grad and returns none is a *break*, classified as `no_grad`,
`inference_mode`, `detach`, `integer cast`, `PIL / NumPy round trip` (a detach whose result goes to `.numpy()`) or
`non-differentiable op`, with the source line that made it. Forward hooks on the denoiser and the VAE decoder and
a wrapper around the reward say at which stage the gradient stops. The report lists, per pipeline component, how
many trainable parameters there are and how many the gradient reached; with `raise_on_break=True` (the
default) a step whose trainable parameters get no gradient raises `GradFlowError` naming the stage, the kind of
break and the place. The parameters' `.grad` are restored afterwards: the check leaves no gradient behind.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["Break", "ComponentFlow", "GradFlowError", "GradFlowReport", "check_grad_flow"]

_HERE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_INTEGER_CASTS = {"to", "type", "long", "int", "short", "byte", "char", "bool"}


class GradFlowError(RuntimeError):
    """The reward's gradient does not reach the trainable parameters; the message names where it stops."""


@dataclass
class Break:
    """One torch call that took a tensor requiring grad and returned none: its kind, the op, and where it ran."""

    kind: str
    op: str
    location: str
    stage: str = ""

    def __str__(self) -> str:
        return f"{self.kind} ({self.op}) at {self.location}"


@dataclass
class ComponentFlow:
    """A pipeline component's trainable parameters, how many the gradient reached (a `.grad` was set: the tensor is
    in the reward's graph) and how many got a non-zero one (LoRA's A matrices get zeros while B is still zero)."""

    trainable: int
    reached: int
    nonzero: int
    max_abs_grad: float

    @property
    def ok(self) -> bool:
        return self.trainable == 0 or self.reached == self.trainable


@dataclass
class GradFlowReport:
    """What one checked step showed.

    Attributes:
        components: per pipeline component with parameters, its `ComponentFlow`.
        stages: `(stage, input requires grad, output requires grad)` in the order they ran: the denoiser, the VAE
            decoder and the reward.
        breaks: every break seen, in order (some are harmless, e.g. a statistic logged with `.detach()`).
        blocking: the break that stopped the gradient, when one did.
        reward_requires_grad: whether the reward came out attached to the graph.
    """

    components: dict[str, ComponentFlow]
    stages: list[tuple[str, bool, bool]]
    breaks: list[Break] = field(default_factory=list)
    blocking: Break | None = None
    reward_requires_grad: bool = False

    @property
    def ok(self) -> bool:
        return self.reward_requires_grad and all(flow.ok for flow in self.components.values()) and any(
            flow.trainable for flow in self.components.values())

    def summary(self) -> str:
        lines = [f"gradient flow: {'ok' if self.ok else 'BROKEN'}"]
        for name, flow in self.components.items():
            if flow.trainable:
                lines.append(f"  {name}: {flow.reached}/{flow.trainable} trainable tensors reached, {flow.nonzero} "
                             f"with a non-zero gradient (max |grad| {flow.max_abs_grad:.3g})")
        for stage, into, out in self.stages:
            lines.append(f"  stage {stage}: input requires grad {into}, output requires grad {out}")
        if self.blocking is not None:
            lines.append(f"  broken by {self.blocking} (stage: {self.blocking.stage})")
        return "\n".join(lines)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _location() -> str:
    """The innermost frame outside torch and this module (the line that made the call) and, when it differs, the
    outermost one below `check_grad_flow` (the line of the step or reward that led there)."""
    frames = []
    frame = sys._getframe(2)  # a plain walk up the frames: no source lines read (a broken step records many breaks)
    while frame is not None:
        code = frame.f_code
        path = os.path.abspath(code.co_filename)
        if path == _HERE and code.co_name == "check_grad_flow":
            break
        if path != _HERE and not path.startswith(_TORCH_DIR) and "contextlib" not in path:
            frames.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        frame = frame.f_back
    if not frames:
        return "<unknown>"
    return frames[0] if len(frames) == 1 else f"{frames[0]}, called from {frames[-1]}"


class _Watcher(TorchFunctionMode):
    """Records breaks, and which tensors descend from a detach (to tell a NumPy / PIL round trip apart)."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[int, Break]] = []
        self.counter = itertools.count()
        self.detached: dict[int, tuple[torch.Tensor, int]] = {}  # id -> (tensor kept alive, event index)

    def tick(self) -> int:
        return next(self.counter)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = list(_tensors((args, kwargs)))
        name = getattr(func, "__name__", repr(func))
        if name == "numpy":
            for tensor in inputs:
                if id(tensor) in self.detached and self.detached[id(tensor)][0] is tensor:
                    event = self.events[self.detached[id(tensor)][1]][1]
                    event.kind = "PIL / NumPy round trip"
                    event.op = f"{event.op} then .numpy()"
            return result
        descends = [self.detached[id(t)][1] for t in inputs
                    if id(t) in self.detached and self.detached[id(t)][0] is t]
        if descends:  # follow a detached tensor through .cpu(), .permute(), ... to a later .numpy()
            for output in _tensors(result):
                self.detached[id(output)] = (output, descends[0])
        if not any(t.requires_grad for t in inputs if t.is_floating_point() or t.is_complex()):
            return result
        outputs = list(_tensors(result))
        if not outputs or any(o.requires_grad for o in outputs):
            return result
        if all(o.dtype == torch.bool for o in outputs) and name not in _INTEGER_CASTS:
            return result  # comparisons and masks are never differentiable: not a break
        if torch.is_inference_mode_enabled():
            kind = "inference_mode"
        elif not torch.is_grad_enabled():
            kind = "no_grad"
        elif name in ("detach", "detach_"):
            kind = "detach"
        elif name in _INTEGER_CASTS and not any(o.is_floating_point() or o.is_complex() for o in outputs):
            kind = "integer cast"
        else:
            kind = "non-differentiable op"
        self.events.append((self.tick(), Break(kind, name, _location())))
        if kind == "detach":
            for output in outputs:
                self.detached[id(output)] = (output, len(self.events) - 1)
        return result


def _requires_grad(value) -> bool:
    return any(t.requires_grad for t in _tensors(value))


def _default_step(pipe, prompts: list[str], height: int | None, width: int | None) -> torch.Tensor:
    """One denoising step of the pipeline's own sampling code, with autograd on: diffusers' `__call__` is wrapped
    in `torch.no_grad()`, whose `__wrapped__` is the undecorated function."""
    call = type(pipe).__call__
    call = getattr(call, "__wrapped__", call)
    options = {"num_inference_steps": 1, "output_type": "pt", "guidance_scale": 1.0}
    if height is not None:
        options.update(height=height, width=width)
    return call(pipe, prompts, **options).images


def _reward_values(reward, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    from .loss import ZRewardLoss

    if isinstance(reward, ZRewardLoss):
        return reward._reward_of_pixels(images, prompts)[0]
    value = reward(images, prompts)
    if isinstance(value, tuple):  # TRL's (rewards, metadata)
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`reward` must return a tensor (or a (tensor, metadata) tuple), got {type(value).__name__}")
    return value


def check_grad_flow(
    pipe,
    reward,
    prompts: list[str] | None = None,
    *,
    step: Callable | None = None,
    height: int | None = None,
    width: int | None = None,
    raise_on_break: bool = True,
) -> GradFlowReport:
    """Run one tiny step and report whether the reward's gradient reaches `pipe`'s trainable parameters.

    Args:
        pipe: a diffusers pipeline whose trainable parameters (e.g. LoRA on the UNet / transformer) require grad.
        reward: a `ZRewardLoss` (its reward of [0, 1] images) or any `reward(images, prompts)` returning a tensor of
            rewards, or TRL's `(rewards, metadata)`; images are float `(B, 3, H, W)` in [0, 1].
        prompts: the prompts of the step (default one short prompt).
        step: `step(pipe, prompts) -> images` in [0, 1], your own differentiable sampling code; default: one step of
            the pipeline's own `__call__` with autograd on, at `height` x `width` (default: the pipeline's).
        raise_on_break: raise `GradFlowError` when a trainable parameter gets no gradient.

    Returns:
        A `GradFlowReport`; `report.summary()` prints it.

    Raises:
        ValueError: if no component of `pipe` has a trainable parameter.
        GradFlowError: with `raise_on_break`, when the gradient stops; the message names the stage and the place.
    """
    prompts = ["a photo"] if prompts is None else list(prompts)
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f"`prompts` must be a non-empty list of non-empty strings, got {prompts!r}")
    modules = {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    trainable = {name: [p for p in module.parameters() if p.requires_grad] for name, module in modules.items()}
    if not any(trainable.values()):
        raise ValueError("`pipe` has no trainable parameter (none requires grad): add LoRA adapters to the denoiser "
                         "(or unfreeze what you train) before checking the gradient flow")
    saved_grads = {id(p): p.grad for params in trainable.values() for p in params}
    for params in trainable.values():
        for p in params:
            p.grad = None
    watcher = _Watcher()
    stages: list[tuple[str, bool, bool, int, int]] = []
    handles = []
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    vae = getattr(pipe, "vae", None)
    for stage, module in (("denoiser", denoiser), ("vae decoder", getattr(vae, "decoder", None))):
        if module is None:
            continue
        starts: list[int] = []

        def pre_hook(module, args, kwargs, starts=starts):
            starts.append(watcher.tick())

        def post_hook(module, args, kwargs, output, stage=stage, starts=starts):
            stages.append((stage, _requires_grad((args, kwargs)), _requires_grad(output), starts.pop(),
                           watcher.tick()))

        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    try:
        with watcher:
            images = step(pipe, prompts) if step is not None else _default_step(pipe, prompts, height, width)
            if not isinstance(images, torch.Tensor):
                raise TypeError(f"the step must return an image tensor in [0, 1], got {type(images).__name__}")
            start = watcher.tick()
            values = _reward_values(reward, images, prompts)
            stages.append(("reward", images.requires_grad, values.requires_grad, start, watcher.tick()))
        if values.requires_grad:
            values.float().sum().backward()
        components = {}
        for name, params in trainable.items():
            grads = [p.grad for p in params]
            reached = sum(1 for g in grads if g is not None)
            nonzero = sum(1 for g in grads if g is not None and bool(g.abs().sum() > 0))
            largest = max((float(g.abs().max()) for g in grads if g is not None), default=0.0)
            components[name] = ComponentFlow(len(params), reached, nonzero, largest)
    finally:
        for handle in handles:
            handle.remove()
        for params in trainable.values():
            for p in params:
                p.grad = saved_grads[id(p)]
    report = GradFlowReport(components, [s[:3] for s in stages], [event for _, event in watcher.events],
                            reward_requires_grad=bool(values.requires_grad))
    report.blocking = _blocking(watcher.events, stages, values.requires_grad)
    if raise_on_break and not report.ok:
        raise GradFlowError(_message(report))
    return report


def _blocking(events, stages, reward_requires_grad: bool) -> Break | None:
    """The break that stopped the gradient: the first one inside the first stage whose output lost the grad its
    input had, or between the last stage that still had grad and the next one."""
    if reward_requires_grad:
        return None
    previous_end, previous_grad, previous_name = -1, False, "the step before the denoiser"
    for name, into, out, start, end in stages:
        if previous_grad and not into:  # lost between two stages
            return _first(events, previous_end, start, f"between the {previous_name} and the {name}")
        if into and not out:
            return _first(events, start, end, f"inside the {name}")
        if not into and not out and name == "denoiser":
            return _first(events, start, end, "inside the denoiser (its trainable weights were not used with "
                                              "autograd on)")
        previous_end, previous_grad, previous_name = end, out, name
    return _first(events, -1, float("inf"), "somewhere in the step")


def _first(events, start, end, stage: str) -> Break | None:
    for tick, event in events:
        if start < tick < end:
            event.stage = stage
            return event
    return None


def _message(report: GradFlowReport) -> str:
    missing = [f"{name} ({flow.reached}/{flow.trainable} trainable tensors)" for name, flow in
               report.components.items() if not flow.ok]
    if report.blocking is not None:
        where = (f"the graph breaks {report.blocking.stage}: {report.blocking.kind} ({report.blocking.op}) at "
                 f"{report.blocking.location}")
    elif report.reward_requires_grad:
        where = "the reward is attached to the graph, but these parameters were not used by the step"
    else:
        where = "the reward is not attached to the graph, and no torch call was seen dropping it (the images may " \
                "come from outside torch, e.g. a PIL image converted by NumPy)"
    hint = {
        "no_grad": "run the sampling and the reward with autograd on (diffusers' pipeline __call__ is decorated "
                   "with torch.no_grad(): use a training rollout instead)",
        "inference_mode": "tensors made under torch.inference_mode() can never join a graph: use autograd there",
        "detach": "drop the .detach() on the path from the generator to the reward",
        "integer cast": "keep images in floating point up to the reward (no uint8 / long conversion)",
        "PIL / NumPy round trip": "pass the reward the image tensor itself, not a PIL image or NumPy array made "
                                  "from it",
        "non-differentiable op": "replace the op by a differentiable one",
    }.get(report.blocking.kind if report.blocking is not None else "", "")
    text = f"the reward's gradient does not reach {', '.join(missing) or 'the trainable parameters'}: {where}"
    return f"{text}. Fix: {hint}." if hint else text + "."
