"""`training.optim`: Muon on hidden weight matrices, AdamW on the rest, as one optimizer."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from training.optim import MuonAdamW, muon_parameters, orthogonalize
from training.state import CheckpointManager, Progress


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_orthogonalize_gives_the_matrix_orthogonal_part(shape):
    matrix = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = orthogonalize(matrix)
    assert out.shape == matrix.shape and out.dtype == torch.float32
    # singular values near one (Jordan et al.'s quintic iteration leaves them in about [0.7, 1.2])
    singular = torch.linalg.svdvals(out)
    assert singular.min() > 0.6 and singular.max() < 1.25
    # the same singular vectors as U V^T, the exact orthogonal part of the SVD
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    cosine = (out * (u @ vh)).sum() / (out.norm() * (u @ vh).norm())
    assert cosine > 0.98
    # scale-free
    torch.testing.assert_close(orthogonalize(1000.0 * matrix), out, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="`matrix` must be 2-D"):
        orthogonalize(torch.randn(2, 3, 4))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 4), nn.LayerNorm(4))


def _batches(steps: int):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=generator), torch.randn(8, 4, generator=generator)) for _ in range(steps)]


def _train(net: nn.Module, optimizer, batches) -> list[float]:
    losses = []
    for inputs, targets in batches:
        loss = nn.functional.mse_loss(net(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_without_matrices_for_muon_it_is_torch_adamw():
    batches = _batches(6)
    ours, reference = _net(), _net()
    _train(ours, MuonAdamW([], ours.parameters(), muon_lr=0.02, lr=1e-2, weight_decay=0.1), batches)
    _train(reference, torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1), batches)
    for mine, theirs in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_a_muon_step_by_hand():
    """With gradients along one rank-1 direction u v^T, every look-ahead is a positive multiple of it, the
    normalised matrix has its one singular value at 1, and Newton-Schulz is the scalar quintic s <- a s + b s^3 +
    c s^5 from s = 1: each step is W <- W (1 - lr wd) - lr sqrt(12 / 6) s_5 u v^T / (|u| |v|), in plain Python."""
    u = [1.0, -2.0, 0.5, 3.0, 0.0, 1.5, -1.0, 2.0, 0.25, -0.5, 1.0, 2.5]
    v = [2.0, 1.0, -1.0, 0.5, 3.0, -2.0]
    norm = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(x * x for x in v))
    direction = [[ui * vj / norm for vj in v] for ui in u]
    s = 1.0
    for _ in range(5):
        s = 3.4445 * s - 4.7750 * s**3 + 2.0315 * s**5
    assert 0.6 < s < 1.25
    start = torch.randn(12, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    weight = nn.Parameter(start.float().clone())
    optimizer = MuonAdamW([weight], [], muon_lr=0.05, lr=1e-3, weight_decay=0.1, momentum=0.9)
    expected = start.tolist()
    for scale in (1.0, 2.0, 0.5):
        weight.grad = scale * torch.tensor(u)[:, None] * torch.tensor(v)[None, :]
        optimizer.step()
        expected = [[w * (1 - 0.05 * 0.1) - 0.05 * math.sqrt(12 / 6) * s * d for w, d in zip(row, drow, strict=True)]
                    for row, drow in zip(expected, direction, strict=True)]
    torch.testing.assert_close(weight.detach().double(), torch.tensor(expected, dtype=torch.float64), rtol=0,
                               atol=2e-6)


@pytest.mark.parametrize("shape", [(12, 6), (6, 12), (8, 8)])
def test_a_muon_step_matches_torch_muon(shape):
    """Two steps against `torch.optim.Muon` (same lr, decoupled weight decay, momentum, Nesterov, Newton-Schulz
    coefficients, and its "original" lr scale sqrt(max(1, rows / cols))). Its buffer is the EMA m B + (1 − m) G,
    (1 − m) times ours, and so is its look-ahead; the orthogonalisation divides the scale out. It iterates in bf16,
    hence the tolerance: about 1e-3 apart, where dropping Nesterov or the shape scale moves the weight by 2e-2."""
    weight = nn.Parameter(torch.randn(*shape, generator=torch.Generator().manual_seed(2)))
    reference = nn.Parameter(weight.detach().clone())
    start = weight.detach().clone()
    optimizer = MuonAdamW([weight], [], muon_lr=0.05, lr=1e-3, weight_decay=0.1, momentum=0.9)
    torch_muon = torch.optim.Muon([reference], lr=0.05, weight_decay=0.1, momentum=0.9, nesterov=True,
                                  ns_coefficients=(3.4445, -4.7750, 2.0315), ns_steps=5, adjust_lr_fn="original")
    for i in range(2):
        grad = torch.randn(*shape, generator=torch.Generator().manual_seed(3 + i))
        weight.grad, reference.grad = grad.clone(), grad.clone()
        optimizer.step()
        torch_muon.step()
    assert (weight.detach() - start).abs().max() > 0.05
    torch.testing.assert_close(weight.detach(), reference.detach(), rtol=0, atol=4e-3)


def test_muon_takes_the_matrices_and_learns():
    net = _net()
    muon, adamw = muon_parameters(net, exclude=("2.",))  # the output layer stays with AdamW
    assert [p.shape for p in muon] == [torch.Size([12, 6])]
    assert {id(p) for p in adamw} == {id(p) for p in net.parameters()} - {id(muon[0])}
    batches = _batches(60)
    losses = _train(net, MuonAdamW(muon, adamw, muon_lr=0.02, lr=1e-2), batches)
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])


def test_a_schedule_scales_both_groups_and_the_state_resumes_exactly(tmp_path):
    batches = _batches(8)

    def build():
        net = _net()
        optimizer = MuonAdamW(*muon_parameters(net, exclude=("2.",)), muon_lr=0.02, lr=1e-2, weight_decay=0.01)
        return net, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))

    accelerator = Accelerator(cpu=True)
    net, optimizer, scheduler = accelerator.prepare(*build())
    full = []
    for i, batch in enumerate(batches):
        full += _train(net, optimizer, [batch])
        scheduler.step()
        if i == 3:
            CheckpointManager(accelerator, tmp_path / "state").save(Progress(step=4))
    assert [group["lr"] for group in optimizer.param_groups] == [0.02 / 9, 1e-2 / 9]
    accelerator.free_memory()
    net, optimizer, scheduler = accelerator.prepare(*build())
    assert CheckpointManager(accelerator, tmp_path / "state").resume().step == 4
    resumed = []
    for batch in batches[4:]:
        resumed += _train(net, optimizer, [batch])
        scheduler.step()
    assert resumed == full[4:]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(muon_lr=-1.0), "`muon_lr` must be a finite number >= 0"),
    (dict(lr=float("nan")), "`lr` must be a finite number >= 0"),
    (dict(weight_decay=True), "`weight_decay` must be a finite number >= 0"),
    (dict(momentum=1.0), "`momentum` must be in"),
])
def test_bad_settings_are_refused(kwargs, message):
    net = _net()
    with pytest.raises(ValueError, match=message):
        MuonAdamW(*muon_parameters(net), **dict(dict(muon_lr=0.02, lr=1e-3), **kwargs))
    with pytest.raises(ValueError, match="Muon's parameters must be 2-D"):
        MuonAdamW(list(net.parameters()), [], muon_lr=0.02, lr=1e-3)
