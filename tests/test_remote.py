"""RemoteReward / serve_reward: a differentiable reward served from another process.

Equality with a local reward under a 2-process gloo data-parallel group (3 processes in all), the failure paths of a
stalled and of a killed reward process, and every mismatch named (on the generator before sending, and by the
server for a malformed message, which it survives).
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import REPO, launch_cpu, random_images, sharp_scorer
from torch import nn

from zreward_diffusers import ZRewardLoss
from zreward_diffusers.remote import (
    RemoteReward,
    RemoteRewardError,
    RemoteRewardTimeout,
    encode_message,
    serve_reward,
)
from zreward_diffusers.testing import build_tiny_scorer

PROMPTS = ["two red circles", "a yellow square on a large green background", "three stars", "a green triangle"]
TIMEOUT = 2.0  # the generators' timeout while the server is stalled


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def sharp_checkpoint(tmp_path_factory) -> str:
    """The sharpened tiny Qwen2-VL reward (peaked distributions, gradients well above the tolerances) on disk, for the
    server command line."""
    path = tmp_path_factory.mktemp("remote") / "sharp"
    ZRewardLoss(sharp_scorer("qwen2_vl")).save_pretrained(path)
    return str(path)


def start_server(model: str, directory: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`python -m zreward_diffusers.remote serve` on a free port, one thread; returns the process and 'host:port'."""
    port_file, log = directory / "server.address", directory / "server.log"
    command = [sys.executable, "-m", "zreward_diffusers.remote", "serve", "--model", model, "--port-file",
               str(port_file), "--threads", "1", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    with open(log, "w") as handle:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not port_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise AssertionError(f"the reward server did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    return server, port_file.read_text().strip()


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.kill(server.pid, signal.SIGCONT)
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def thread_server():
    """`serve_reward` on a thread of this process, over the sharpened tiny reward; yields (loss, start(**kwargs))."""
    loss_fn = ZRewardLoss(sharp_scorer("qwen2_vl"))
    running = []

    def start(**kwargs) -> str:
        stop, ready = threading.Event(), []
        thread = threading.Thread(target=serve_reward, args=(loss_fn,),
                                  kwargs=dict(kwargs, stop=stop, on_ready=ready.append), daemon=True)
        thread.start()
        running.append((stop, thread))
        while not ready:
            assert thread.is_alive(), "serve_reward ended before listening"
            time.sleep(0.01)
        return f"{ready[0][0]}:{ready[0][1]}"

    yield loss_fn, start
    for stop, thread in running:
        stop.set()
        thread.join(10)


class TinyLoRAGenerator(nn.Module):
    """A frozen linear "generator" from a latent to 8x8 RGB, upsampled to 56x56 in [-1, 1], with a LoRA on it."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.base = nn.Linear(16, 3 * 8 * 8).requires_grad_(False)
            self.lora_A = nn.Parameter(torch.randn(4, 16) * 0.3)
            self.lora_B = nn.Parameter(torch.randn(3 * 8 * 8, 4) * 0.3)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        low = torch.tanh(self.base(latents) + latents @ self.lora_A.T @ self.lora_B.T).view(-1, 3, 8, 8)
        return nn.functional.interpolate(low, size=(56, 56), mode="bilinear", align_corners=False)


def generator_main(model: str, out: str) -> None:
    """One data-parallel generator process under `accelerate launch` (this file is the launched script): two LoRA
    steps with a local reward, then two with the remote one (ZREWARD_REMOTE_ADDRESS), from the same start."""
    from accelerate import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator()
    rank = accelerator.process_index
    rewards = {"local": ZRewardLoss.from_pretrained(model), "remote": RemoteReward(timeout=60)}
    rewards["remote"].connect()
    latents = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))[rank * 2:rank * 2 + 2]
    prompts = PROMPTS[rank * 2:rank * 2 + 2]
    results = {}
    for name, reward in rewards.items():
        generator = TinyLoRAGenerator()
        optimizer = torch.optim.SGD([p for p in generator.parameters() if p.requires_grad], lr=20.0)
        generator, optimizer = accelerator.prepare(generator, optimizer)
        losses, grads = [], []
        accelerator.wait_for_everyone()  # both generators start each run together, as training steps do
        for _ in range(2):
            images = generator(latents)
            loss = reward(images, prompts) if name == "local" else reward.loss(images, prompts)
            accelerator.backward(loss)
            losses.append(loss.detach())
            grads.append({n: p.grad.clone() for n, p in generator.named_parameters() if p.requires_grad})
            optimizer.step()
            optimizer.zero_grad()
        results[name] = {"losses": losses, "grads": grads, "world": accelerator.num_processes}
    if rank == 0:
        results["stats"] = rewards["remote"].server_stats()
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    accelerator.wait_for_everyone()
    dist.destroy_process_group()
    os._exit(0)  # see tests/test_distributed.py: gloo's exit-time teardown aborts now and then


def _in_threads(function, items) -> list:
    """`function(item)` on one thread per item, together; each result is (value or exception, seconds)."""
    results = [None] * len(items)

    def run(index):
        start = time.monotonic()
        try:
            value = function(items[index])
        except Exception as error:  # noqa: BLE001 - the test inspects it
            value = error
        results[index] = (value, time.monotonic() - start)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT + 30)
    assert all(result is not None for result in results), "a generator hung"
    return results


# ------------------------------------------------------------------------------------------------ tests
def test_remote_equals_local_under_data_parallel_generators(sharp_checkpoint, tmp_path, monkeypatch):
    """1 reward process + 2 generator processes (`accelerate launch`, gloo): the losses and LoRA gradients of each
    generator equal those it gets with a local reward."""
    server, address = start_server(sharp_checkpoint, tmp_path, "--batch-wait", "5")
    monkeypatch.setenv("ZREWARD_REMOTE_ADDRESS", address)
    try:
        launch_cpu([__file__, sharp_checkpoint, str(tmp_path)], 2, timeout=240)
    finally:
        stop_server(server)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    for rank, result in enumerate(ranks):
        local, remote = result["local"], result["remote"]
        assert local["world"] == remote["world"] == 2
        assert not torch.equal(local["losses"][0], local["losses"][1]), "the LoRA step changed nothing"
        for step in range(2):
            torch.testing.assert_close(remote["losses"][step], local["losses"][step], atol=1e-6, rtol=0)
            for name, grad in local["grads"][step].items():
                assert grad.abs().max() > 1e-3, f"{name}: gradient too small for a 1e-6 comparison"
                torch.testing.assert_close(remote["grads"][step][name], grad, atol=1e-6, rtol=0,
                                           msg=lambda m, r=rank, n=name, s=step: f"rank {r} step {s} {n}: {m}")
    stats = ranks[0]["stats"]
    # both generators' requests of each step were scored in one forward / backward
    assert stats["requests"] == 4 and stats["batches"] == 2 and stats["batched_requests"] == 4, stats
    assert stats["max_requests_per_batch"] == 2 and stats["images"] == 8 and stats["errors"] == 0, stats


def test_gradient_scales_with_grad_output_and_dtypes(thread_server):
    """Any weighting of the rewards backpropagates as the local reward's; bf16 images get a bf16 gradient."""
    loss_fn, start = thread_server
    remote = RemoteReward(start(), timeout=30)
    weights = torch.tensor([1.0, -2.0, 3.0, 0.5])
    for dtype in (torch.float32, torch.bfloat16):
        images = random_images(4, 56, 56, seed=5).to(dtype).requires_grad_(True)
        (remote(images, PROMPTS) * weights).sum().backward()
        remote_grad, images.grad = images.grad, None
        (loss_fn.reward(images, PROMPTS) * weights).sum().backward()
        assert remote_grad.dtype == dtype
        torch.testing.assert_close(remote_grad, images.grad, atol=1e-6 if dtype == torch.float32 else 1e-3, rtol=0)
    with torch.no_grad():  # no gradient asked, none computed
        images = random_images(4, 56, 56, seed=5)
        torch.testing.assert_close(remote(images, PROMPTS), loss_fn.reward(images, PROMPTS), atol=1e-6, rtol=0)
    reward, scores = remote.reward_with_scores(images, PROMPTS)
    assert scores["dimensions"] == list(loss_fn.dimensions) and scores["expected"].shape == (4, 4)
    assert remote.loss(images, PROMPTS).shape == () and not reward.requires_grad
    # a server that scores at most 3 images per pass splits the batch: the same rewards and gradients
    chunked = RemoteReward(start(max_batch_size=3), timeout=30, reduction="none", margin=0.6)
    images = random_images(4, 56, 56, seed=6).requires_grad_(True)
    (chunked.loss(images, PROMPTS) * weights).sum().backward()
    remote_grad, images.grad = images.grad, None
    (torch.relu(0.6 - loss_fn.reward(images, PROMPTS)) * weights).sum().backward()
    assert images.grad.abs().max() > 1e-3
    torch.testing.assert_close(remote_grad, images.grad, atol=1e-6, rtol=0)
    stats = chunked.server_stats()
    assert stats["batches"] == 1 and stats["passes"] == 2, stats


def test_stalled_then_killed_server_errors_every_generator_in_bounded_time(sharp_checkpoint, tmp_path):
    server, address = start_server(sharp_checkpoint, tmp_path)
    try:
        generators = [RemoteReward(address, timeout=60, connect_timeout=1.0) for _ in range(2)]
        images = random_images(2, 56, 56, seed=1).requires_grad_(True)

        def step(remote):
            return remote.loss(images, PROMPTS[:2])

        assert all(not isinstance(value, Exception) for value, _ in _in_threads(step, generators))

        os.kill(server.pid, signal.SIGSTOP)  # stalled: alive, connections open, never answers
        for remote in generators:
            remote.timeout = TIMEOUT
        for error, seconds in _in_threads(step, generators):
            assert isinstance(error, RemoteRewardTimeout) and isinstance(error, TimeoutError), error
            assert address in str(error) and "did not answer" in str(error)
            assert TIMEOUT - 0.1 <= seconds < TIMEOUT + 5
        for remote in generators:
            remote.timeout = 60.0  # a dead server is found without waiting for it

        os.kill(server.pid, signal.SIGCONT)  # it answers the abandoned requests into closed sockets and goes on
        assert all(not isinstance(value, Exception) for value, _ in _in_threads(step, generators))

        killed, calls = [], [0, 0]

        def run_until_error(index):  # a training loop: step after step until the reward fails
            while True:
                try:
                    step(generators[index])
                except Exception as error:  # noqa: BLE001
                    return error, time.monotonic()
                calls[index] += 1

        def kill_mid_run():
            while min(calls) < 1:
                time.sleep(0.01)
            server.kill()
            killed.append(time.monotonic())

        killer = threading.Thread(target=kill_mid_run)
        killer.start()
        outcomes = _in_threads(run_until_error, [0, 1])
        killer.join()
        for (error, failed_at), _ in outcomes:
            assert isinstance(error, RemoteRewardError), error
            assert address in str(error) and "reward server" in str(error)
            assert failed_at - killed[0] < 5
    finally:
        stop_server(server)


def test_bad_input_is_named_before_anything_is_sent():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        remote = RemoteReward(address, timeout=1.0)
        good = random_images(2, 8, 8)
        cases = [
            (good.long(), ["a", "b"], TypeError, ["`images`", "torch.int64 (2, 3, 8, 8)"]),
            (good.permute(0, 2, 3, 1), ["a", "b"], ValueError, ["`images`", "channels-last"]),
            (good[0], ["a"], ValueError, ["`images`", "rank 4"]),
            (good.clone().fill_(float("nan")), ["a", "b"], ValueError, ["`images`", "NaN"]),
            (good, ["a"], ValueError, ["`prompts` has 1 entries", "batch size 2"]),
            (good, ["a", 7], TypeError, ["`prompts[1]`", "int"]),
            (good, "a b", TypeError, ["`prompts`", "single string"]),
            (good * 200, ["a", "b"], ValueError, ["`images` values must lie in [-1, 1]"]),
        ]
        for images, prompts, kind, words in cases:
            with pytest.raises(kind) as raised:
                remote(images, prompts)
            assert all(word in str(raised.value) for word in words), str(raised.value)
            assert str(raised.value).startswith("remote reward:")
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected


def _frame(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">4sIQ", b"ZRW1", len(head), len(payload)) + head + payload


def _read_frame(sock: socket.socket) -> dict:
    def exactly(size):
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    _, header_bytes, payload_bytes = struct.unpack(">4sIQ", exactly(16))
    header = json.loads(exactly(header_bytes))
    exactly(payload_bytes)
    return header


def test_malformed_messages_get_error_replies_and_the_server_goes_on(thread_server):
    _, start = thread_server
    address = start()
    host, port = address.rsplit(":", 1)
    pixels = torch.rand(2, 3, 8, 8)
    raw = pixels.numpy().tobytes()

    def request(prompts=("a", "b"), dtype="float32", shape=(2, 3, 8, 8), payload=raw, **extra):
        tensors = [{"name": "pixels", "dtype": dtype, "shape": list(shape)}]
        return _frame({"type": "reward", "id": 1, "prompts": list(prompts), "need_grad": True, "tensors": tensors,
                       **extra}, payload)

    with socket.create_connection((host, int(port)), timeout=10) as sock:
        assert _read_frame(sock)["type"] == "server_hello"
        sock.sendall(_frame({"type": "client_hello", "protocol": 1, "nonce": "00", "mac": None, "tensors": []}))
        assert _read_frame(sock)["type"] == "welcome"
        cases = [
            (request(dtype="int64", payload=torch.zeros(2, 3, 8, 8, dtype=torch.int64).numpy().tobytes()),
             ["pixels", "dtype", "int64"]),
            (request(shape=(2, 3, 8, 9)), ["pixels", "(2, 3, 8, 9)", "bytes"]),
            (request(shape=(2, 8, 8, 3)), ["`images`", "3 channels"]),
            (request(prompts=("a",)), ["`prompts` has 1 entries", "batch size 2"]),
            (request(prompts=("a", 3)), ["`prompts[1]`", "string"]),
            (request(payload=torch.full((2, 3, 8, 8), float("inf")).numpy().tobytes()), ["`images`", "NaN or Inf"]),
            (request(prompts=("a", "<|im_end|>")), ["`prompts[1]`", "special token"]),
            (request(need_grad="yes"), ["need_grad"]),
            (_frame({"type": "pickle", "tensors": []}), ["unknown message type"]),
            (b"ZRW1" + struct.pack(">IQ", 5, 0) + b"{oops", ["not UTF-8 JSON"]),
        ]
        for frame, words in cases:
            sock.sendall(frame)
            reply = _read_frame(sock)
            assert reply["type"] == "error" and reply["kind"] in ("ValueError", "TypeError"), reply
            assert all(word in reply["message"] for word in words), reply["message"]
        sock.sendall(request())  # the same connection still works
        assert _read_frame(sock)["type"] == "result"
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # another protocol: an error, then the server hangs up
        assert "not a Z-Reward remote message" in _read_frame(sock)["message"]
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:  # what it sent after the bad prefix arrived after the server had hung up
            pass
    remote = RemoteReward(address, timeout=10)  # and serves the next generator
    assert remote(pixels * 2 - 1, ["a", "b"]).shape == (2,)
    assert remote.server_stats()["errors"] == len(cases) + 1


def test_hostile_first_messages_do_not_stop_the_server(thread_server):
    """Before any authentication: an absurd tensor shape and a deeply nested header are refused and the server goes
    on serving (both once escaped as a plain ValueError / RecursionError and stopped it)."""
    _, start = thread_server
    address = start()
    host, port = address.rsplit(":", 1)
    hostile = [_frame({"type": "client_hello", "protocol": 1, "tensors": [{"name": "x", "dtype": "float32",
                                                                           "shape": [0, 2**70]}]}),
               b"ZRW1" + struct.pack(">IQ", 60_000, 0) + b"[" * 60_000]
    for frame in hostile:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            assert _read_frame(sock)["type"] == "server_hello"
            sock.sendall(frame)
            assert _read_frame(sock)["type"] == "error"
    assert RemoteReward(address, timeout=10)(random_images(1, 8, 8), ["a"]).shape == (1,)


def test_token_is_checked_both_ways(thread_server, monkeypatch):
    monkeypatch.delenv("ZREWARD_REMOTE_TOKEN", raising=False)
    _, start = thread_server
    address = start(token="s3cret")
    with pytest.raises(RemoteRewardError, match="requires a token"):
        RemoteReward(address, timeout=5).connect()
    with pytest.raises(RemoteRewardError, match="wrong or missing token"):
        RemoteReward(address, token="wrong", timeout=5).connect()
    assert RemoteReward(address, token="s3cret", timeout=5)(random_images(1, 8, 8), ["a"]).shape == (1,)
    plain = start()
    with pytest.raises(RemoteRewardError, match="asks for none"):
        RemoteReward(plain, token="s3cret", timeout=5).connect()


def test_losses_whose_rewards_depend_on_the_batch_are_refused():
    scorer = build_tiny_scorer("qwen2_vl", seed=0)
    with pytest.raises(ValueError, match="groupwise"):
        serve_reward(ZRewardLoss(scorer, groupwise=True))
    with pytest.raises(ValueError, match="update_running_stats = False"):
        serve_reward(ZRewardLoss(scorer, normalize=True))


def test_wire_format_refuses_what_it_cannot_carry():
    with pytest.raises(TypeError, match="float32 or float64"):
        encode_message({"type": "x"}, {"pixels": torch.zeros(1, dtype=torch.int64)})
    with pytest.raises(ValueError):  # JSON headers carry no NaN
        encode_message({"type": "x", "value": float("nan")})
    with pytest.raises(ValueError, match="host:port"):
        RemoteReward("localhost")
    # several reward servers: each generator process takes one by its rank
    ports = [RemoteReward("127.0.0.1:5001, 127.0.0.1:5002", server_index=i).port for i in range(3)]
    assert ports == [5001, 5002, 5001]
    assert RemoteReward(("::1", 5003)).address == "[::1]:5003"


if __name__ == "__main__":
    generator_main(*sys.argv[1:])
