"""Two CPU processes (gloo): ZRewardLoss's running statistics are the statistics of the global batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port, launch_cpu, random_images

from zreward_diffusers import ZRewardLoss
from zreward_diffusers.testing import build_tiny_scorer

PROMPTS = ["two red circles", "a yellow square", "three stars", "a green triangle"]


def _worker(rank: int, world_size: int, port: int, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        loss_fn = ZRewardLoss(build_tiny_scorer("qwen2_vl", seed=0), normalize=True)
        images = random_images(4, 56, 56, seed=11)
        shard = slice(rank * 2, rank * 2 + 2)
        loss = loss_fn(images[shard], PROMPTS[shard])
        if rank == 0:
            torch.save({"mean": loss_fn.running_mean, "var": loss_fn.running_var, "loss": loss.detach()}, result_path)
    finally:
        # Without this barrier the rank that finishes first tears down its gloo pair while the other is still
        # shutting down, and about 1 run in 3 aborts at interpreter exit ("terminate called without an active
        # exception"). Training scripts get the same from accelerate's wait_for_everyone()/end_training().
        dist.barrier()
        dist.destroy_process_group()
    # Even with the barrier, a fresh-clone run aborted once in gloo's teardown at interpreter exit. The
    # result is written and the group destroyed: leave without running the C++ exit-time destructors.
    os._exit(0)


def test_running_stats_are_reduced_over_processes(tmp_path):
    result_path = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, free_port(), result_path), nprocs=2, join=True)
    distributed = torch.load(result_path, weights_only=True)

    loss_fn = ZRewardLoss(build_tiny_scorer("qwen2_vl", seed=0), normalize=True)
    images = random_images(4, 56, 56, seed=11)
    loss_fn(images, PROMPTS)
    torch.testing.assert_close(distributed["mean"], loss_fn.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(distributed["var"], loss_fn.running_var, atol=1e-6, rtol=1e-4)
    # rank 0's loss uses the global statistics on its own half of the batch
    loss_fn.update_running_stats = False
    torch.testing.assert_close(distributed["loss"], loss_fn(images[:2], PROMPTS[:2]), atol=1e-6, rtol=1e-5)


def test_launch_cpu_starts_that_many_processes(tmp_path):
    # the 2-process tests of the training entry points (test_pretrain_base, test_training_teacher) rely on it
    script = tmp_path / "report.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nfrom accelerate import Accelerator\n"
        "accelerator = Accelerator()\n"
        "Path(sys.argv[1], f'rank{accelerator.process_index}').write_text("
        "f'{accelerator.num_processes} {accelerator.distributed_type.value} {accelerator.device.type}')\n"
        "accelerator.wait_for_everyone()\n"
    )
    for processes in (1, 2):
        out = tmp_path / str(processes)
        out.mkdir()
        launch_cpu([str(script), str(out)], processes)
        expected = f"{processes} {'MULTI_CPU' if processes > 1 else 'NO'} cpu"
        assert {path.name: path.read_text() for path in out.iterdir()} == {
            f"rank{rank}": expected for rank in range(processes)
        }
