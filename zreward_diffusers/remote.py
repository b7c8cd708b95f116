"""A differentiable Z-Reward served from other processes or machines: `serve_reward` and `RemoteReward`.

The reward model lives on its own process (its own GPU, or another machine); the generator processes send decoded
images and prompts and get back the rewards and their gradient with respect to the images, through autograd:

    # reward process (outside the generators' `accelerate launch`; the token, if any, in ZREWARD_REMOTE_TOKEN)
    python -m zreward_diffusers.remote serve --model DIR --port 5555 [--device cuda:7] [--host 127.0.0.1]

    # each generator process (e.g. under `accelerate launch`, ZREWARD_REMOTE_ADDRESS=127.0.0.1:5555)
    remote = RemoteReward()                      # or RemoteReward("127.0.0.1:5555", timeout=120)
    rewards = remote(images, prompts)            # (B,), images float (B, 3, H, W) in [-1, 1], with autograd
    loss = remote.loss(images, prompts)          # −R, reduced: what `ZRewardLoss(images, prompts)` returns
    loss.backward()                              # dR/dimages came back with the rewards

How the gradient travels: the server computes R and dR/dpixels in one go (one forward, one backward of ΣR, which
gives each image its own gradient because the reward of one image does not depend on the others), replies with
both, and a `torch.autograd.Function` on the generator multiplies the stored dR/dpixels by the incoming
`grad_output` in backward. So the server always pays a backward when the images require grad (exactly what a local
`ZRewardLoss` pays in training), keeps no graph between requests, and a generator that never calls backward loses
nothing but that compute. The independence assumption is enforced: `serve_reward` refuses a loss with
`groupwise=True` (each reward compares the images of its prompt) and one with `normalize=True` whose running
statistics still update (each batch moves them); freeze them with `loss_fn.update_running_stats = False` to serve
a normalised reward.

Batching: the server waits up to `batch_wait` seconds after the first request of a batch for the other connected
generators (or until each connected generator has a request waiting, or `max_batch_size` images are waiting) and
scores everything that waits in one forward / backward per image size, then answers each generator with its share.

Transport: one TCP connection per generator process, framed messages, no `torch.distributed`: the generators' process
group (gloo or nccl, `accelerate launch`) is untouched and never includes the reward process, and every wait on the
generator side has a deadline, so a reward process that dies (connection closed) or stalls (no answer within
`timeout`) is a `RemoteRewardError` / `RemoteRewardTimeout` on every generator, naming the server's address, instead
of a hang. A message is `ZRW1` | header length (uint32) | payload length (uint64) | a JSON header | the payload: the
tensors the header lists (`name`, `dtype` float32 or float64, `shape`), raw little-endian, back to back. Nothing is
unpickled; every message is checked (types, shapes, dtypes, byte counts, finite values, prompts) and a malformed one
gets an error reply, never a crash of the server. The server binds 127.0.0.1 unless told otherwise; with a token
(`token=` or ZREWARD_REMOTE_TOKEN) both sides prove they know it (HMAC-SHA256 challenges) before anything else.

Several reward servers: give `RemoteReward` several addresses ("h:p1,h:p2"); generator process `RANK` uses address
`RANK % n` (or `server_index`), so each server batches the requests of its share of the generators.

Environment: ZREWARD_REMOTE_ADDRESS (the address, when `RemoteReward` gets none), ZREWARD_REMOTE_TOKEN (the shared
token, on both sides, when none is passed).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .image_inputs import check_image_range, check_image_tensor, check_prompt_list, to_unit_range
from .loss import _finite

logger = logging.getLogger(__name__)

PROTOCOL = 1
MAGIC = b"ZRW1"
ADDRESS_ENV = "ZREWARD_REMOTE_ADDRESS"
TOKEN_ENV = "ZREWARD_REMOTE_TOKEN"
DEFAULT_TIMEOUT = 300.0
DEFAULT_BATCH_WAIT = 0.05
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30  # 1 GiB: 64 float32 images of 1024 x 1024 take 0.8 GiB
_PREFIX = struct.Struct(">4sIQ")  # magic, header bytes, payload bytes
_HELLO_HEADER_BYTES = 64 << 10  # before authentication
_MAX_HEADER_BYTES = 16 << 20
_MAX_RANK = 8
_WIRE_DTYPES = {"float32": (torch.float32, "<f4"), "float64": (torch.float64, "<f8")}
_DTYPE_NAMES = {dtype: name for name, (dtype, _) in _WIRE_DTYPES.items()}
_ERROR_KINDS = {"ValueError": ValueError, "TypeError": TypeError}
_RECV_CHUNK = 4 << 20


class RemoteRewardError(RuntimeError):
    """The reward server could not be reached, closed the connection, broke the protocol or failed a request."""


class RemoteRewardTimeout(RemoteRewardError, TimeoutError):
    """The reward server did not answer within the timeout (stalled, overloaded or gone without closing)."""


class ProtocolError(ValueError):
    """A malformed message (framing, header, tensor layout)."""


# ------------------------------------------------------------------------------------------------ wire format
def encode_message(header: dict, tensors: dict[str, torch.Tensor] | None = None) -> list:
    """The frame of `header` (JSON-able) and `tensors` (float32 / float64, any device): a list of byte buffers to send
    one after the other."""
    specs, buffers = [], []
    for name, tensor in (tensors or {}).items():
        if tensor.dtype not in _DTYPE_NAMES:
            raise TypeError(f"remote reward: tensor {name!r} must be float32 or float64 on the wire, "
                            f"got {tensor.dtype}")
        array = tensor.detach().to("cpu").contiguous().numpy()
        array = array.astype(_WIRE_DTYPES[_DTYPE_NAMES[tensor.dtype]][1], copy=False)  # little-endian everywhere
        specs.append({"name": name, "dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(array.shape)})
        buffers.append(memoryview(np.ascontiguousarray(array)).cast("B"))
    head = json.dumps(dict(header, tensors=specs), allow_nan=False, separators=(",", ":")).encode("utf-8")
    return [_PREFIX.pack(MAGIC, len(head), sum(len(b) for b in buffers)) + head, *buffers]


def read_prefix(prefix: bytes, max_header: int, max_payload: int) -> tuple[int, int]:
    """Header and payload sizes of a frame's 16-byte prefix; a `ProtocolError` for another protocol or a size over the
    limits."""
    magic, header_bytes, payload_bytes = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"not a Z-Reward remote message (magic {magic!r}, expected {MAGIC!r})")
    if header_bytes > max_header:
        raise ProtocolError(f"header of {header_bytes} bytes exceeds the limit of {max_header}")
    if payload_bytes > max_payload:
        raise ProtocolError(f"payload of {payload_bytes} bytes exceeds the limit of {max_payload} "
                            "(max_message_bytes)")
    return header_bytes, payload_bytes


_MAX_DIMENSION = 2**31 - 1  # a larger extent is no image; numpy refuses some of them with a plain ValueError


def decode_message(head: bytes, payload: bytearray) -> tuple[dict, dict[str, torch.Tensor]]:
    """The header and tensors of a frame (after its prefix); a `ProtocolError` naming what is wrong otherwise."""
    try:
        header = json.loads(bytes(head).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:  # RecursionError: deeply nested JSON
        raise ProtocolError(f"header is not UTF-8 JSON: {type(error).__name__}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("header must be a JSON object with a string 'type'")
    specs = header.pop("tensors", [])
    if not isinstance(specs, list):
        raise ProtocolError("header 'tensors' must be a list")
    tensors, offset = {}, 0
    for spec in specs:
        if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
            raise ProtocolError("each tensor of the header must be {'name', 'dtype', 'shape'}")
        name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
        if not isinstance(name, str) or name in tensors:
            raise ProtocolError(f"tensor names must be distinct strings, got {name!r}")
        if dtype not in _WIRE_DTYPES:
            raise ProtocolError(f"tensor {name!r}: dtype must be one of {sorted(_WIRE_DTYPES)}, got {dtype!r}")
        if (not isinstance(shape, list) or len(shape) > _MAX_RANK
                or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= _MAX_DIMENSION
                           for n in shape)):
            raise ProtocolError(f"tensor {name!r}: shape must be a list of at most {_MAX_RANK} integers in "
                                f"[0, {_MAX_DIMENSION}], got {str(shape)[:200]}")
        torch_dtype, wire = _WIRE_DTYPES[dtype]
        count = math.prod(shape)
        nbytes = count * np.dtype(wire).itemsize
        if offset + nbytes > len(payload):
            raise ProtocolError(f"tensor {name!r} {dtype} {tuple(shape)} needs {nbytes} bytes, the payload has "
                                f"{len(payload) - offset} left")
        array = np.frombuffer(payload, dtype=wire, count=count, offset=offset).reshape(shape)
        tensors[name] = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False))
        offset += nbytes
    if offset != len(payload):
        raise ProtocolError(f"payload has {len(payload)} bytes, the header's tensors {offset}")
    return header, tensors


def _mac(token: str, role: bytes, nonce: str) -> str:
    return hmac.new(token.encode("utf-8"), b"zreward-remote/1/" + role + b"/" + nonce.encode("ascii"),
                    hashlib.sha256).hexdigest()


def parse_address(address) -> tuple[str, int]:
    """`"host:port"` (IPv6 as `"[::1]:port"`) or `(host, port)` → `(host, port)`."""
    if isinstance(address, (tuple, list)) and len(address) == 2:
        host, port = address
    elif isinstance(address, str) and ":" in address:
        host, _, port = address.strip().rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            port = int(port)
        except ValueError:
            raise ValueError(f"remote reward: `address` must be 'host:port', got {address!r}") from None
    else:
        raise ValueError(f"remote reward: `address` must be 'host:port' or (host, port), got {address!r}")
    if not isinstance(host, str) or not host or isinstance(port, bool) or not isinstance(port, int) \
            or not 0 < port < 65536:
        raise ValueError(f"remote reward: `address` must be 'host:port' with a port in 1..65535, got {address!r}")
    return host, port


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _positive(name: str, value, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"remote reward: `{name}` must be a positive number of seconds, got {value!r}")
    return float(value)


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or Inf in `tensor` (a sum first: one pass, no mask, exact check only when the sum is not finite)."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


# ------------------------------------------------------------------------------------------------ generator side
class _AttachGradient(torch.autograd.Function):
    """`reward` (computed elsewhere) as a function of `pixels` whose vector-Jacobian product is
    grad_output[i] · dR_i/dpixels[i] (rewards of different images are independent)."""

    @staticmethod
    def forward(ctx, pixels, reward, grad):
        ctx.save_for_backward(grad)
        return reward.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        scale = grad_output.to(grad.dtype).reshape(-1, *([1] * (grad.dim() - 1)))
        return scale * grad, None, None


class RemoteReward(nn.Module):
    """The reward of a `serve_reward` server as a differentiable function of the images, on a generator process.

    `remote(images, prompts)` → R `(B,)`, with autograd to `images` (float `(B, 3, H, W)` in `image_range`, any float
    dtype and device; checked here as `ZRewardLoss` checks them, before anything is sent); `remote.loss(images,
    prompts)` → −R or ReLU(margin − R), reduced, as `ZRewardLoss.forward`; `remote.reward_with_scores(...)` → R and
    each dimension's expected score and std (detached). Pixels travel as float32 (float64 kept) in [0, 1].

    Args:
        address: `"host:port"`, `(host, port)`, or several (`"h:p1,h:p2"` or a list): process `RANK` uses
            address `RANK % n` (`server_index` overrides). Default: the ZREWARD_REMOTE_ADDRESS variable.
        timeout: seconds a request may wait for its answer (server compute included) before `RemoteRewardTimeout`;
            after any transport error the connection is dropped and the next call reconnects.
        connect_timeout: seconds to keep retrying a refused connection (a server still starting); default `timeout`.
        token: the server's shared token (default: ZREWARD_REMOTE_TOKEN if set); the server must prove it too.
        image_range, reduction, margin: as in `ZRewardLoss` (they shape the loss here; the server computes R of
            [0, 1] pixels whatever its own loss's `image_range`).

    Connection is lazy (first call, or `connect()`); not thread-safe beyond a lock that serialises calls; not for
    `accelerator.prepare` (no parameters). Errors: `ValueError` / `TypeError` for bad input (here, or refused by the
    server), `RemoteRewardTimeout` / `RemoteRewardError` for the server or the connection, naming its address.
    """

    def __init__(self, address=None, *, timeout: float = DEFAULT_TIMEOUT, connect_timeout: float | None = None,
                 token: str | None = None, image_range: str = "-1,1", reduction: str = "mean",
                 margin: float | None = None, server_index: int | None = None):
        super().__init__()
        address = os.environ.get(ADDRESS_ENV) if address is None else address
        if not address:
            raise ValueError(f"remote reward: no `address` given and {ADDRESS_ENV} is not set: pass 'host:port' of a "
                             "server started with `python -m zreward_diffusers.remote serve`")
        if isinstance(address, str):
            addresses = [parse_address(part) for part in address.split(",") if part.strip()]
        elif isinstance(address, tuple) and len(address) == 2 and isinstance(address[1], int):
            addresses = [parse_address(address)]
        else:
            addresses = [parse_address(part) for part in address]
        if server_index is None:
            server_index = int(os.environ.get("RANK", "0") or 0)
        self.addresses = addresses
        self.host, self.port = addresses[server_index % len(addresses)]
        self.address = _format_address(self.host, self.port)
        self.timeout = _positive("timeout", timeout)
        self.connect_timeout = _positive("connect_timeout", connect_timeout, allow_none=True) or self.timeout
        token = (os.environ.get(TOKEN_ENV) or None) if token is None else token
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("remote reward: `token` must be a non-empty string")
        self._token = token
        check_image_range(image_range)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"remote reward: `reduction` must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.image_range, self.reduction = image_range, reduction
        self.margin = None if margin is None else _finite("margin", margin)
        self.server_info: dict | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._warned_unit_range = False

    def extra_repr(self) -> str:
        return f"address={self.address!r}, timeout={self.timeout:g}, image_range={self.image_range!r}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_sock=None, _lock=None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------- connection
    def connect(self) -> dict:
        """Connect and authenticate now (otherwise the first call does); returns the server's description."""
        with self._lock:
            self._ensure_connected()
        return self.server_info

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _ensure_connected(self) -> None:
        if self._sock is not None:
            return
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                sock = socket.create_connection((self.host, self.port),
                                                timeout=max(0.05, min(5.0, deadline - time.monotonic())))
                break
            except (TimeoutError, ConnectionRefusedError, OSError) as error:
                if time.monotonic() >= deadline:
                    raise RemoteRewardError(
                        f"remote reward: no reward server answers at {self.address} ({type(error).__name__}: {error}; "
                        f"retried for connect_timeout={self.connect_timeout:g} s): start one with `python -m "
                        "zreward_diffusers.remote serve --model DIR --port PORT`, or check the address"
                    ) from None
                time.sleep(0.1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        try:
            self._handshake(time.monotonic() + self.timeout)
        except BaseException:
            self.close()
            raise

    def _handshake(self, deadline: float) -> None:
        header, _ = self._receive(deadline, "its greeting", _HELLO_HEADER_BYTES, 0)
        if header.get("type") != "server_hello" or header.get("protocol") != PROTOCOL:
            raise RemoteRewardError(f"remote reward: {self.address} is not a Z-Reward server of protocol {PROTOCOL} "
                                    f"(greeting {str(header)[:200]})")
        needs_token, nonce = header.get("auth"), header.get("nonce")
        if needs_token and self._token is None:
            raise RemoteRewardError(f"remote reward: the reward server at {self.address} requires a token: pass "
                                    f"`token=` or set {TOKEN_ENV}")
        if not needs_token and self._token is not None:
            raise RemoteRewardError(f"remote reward: this client has a token but the server at {self.address} asks "
                                    "for none; refusing it (a server that does not know the token may be another "
                                    "service): start it with the same token")
        client_nonce = secrets.token_hex(16)
        hello = {"type": "client_hello", "protocol": PROTOCOL, "nonce": client_nonce,
                 "client": f"pid {os.getpid()} rank {os.environ.get('RANK', '-')}",
                 "mac": _mac(self._token, b"client", str(nonce)) if needs_token else None}
        self._send(encode_message(hello), deadline, "its greeting")
        reply, _ = self._receive(deadline, "its greeting", _MAX_HEADER_BYTES, 0)
        self._raise_if_error(reply, "the connection")
        if reply.get("type") != "welcome" or not isinstance(reply.get("server"), dict):
            raise RemoteRewardError(f"remote reward: unexpected greeting from {self.address}: {str(reply)[:200]}")
        if needs_token and not hmac.compare_digest(str(reply.get("mac")), _mac(self._token, b"server",
                                                                                client_nonce)):
            raise RemoteRewardError(f"remote reward: the server at {self.address} does not know the token; "
                                    "refusing it")
        self.server_info = reply["server"]

    def _send(self, buffers: list, deadline: float, what: str) -> None:
        try:
            for buffer in buffers:
                self._sock.settimeout(max(1e-3, deadline - time.monotonic()))
                self._sock.sendall(buffer)
        except TimeoutError:
            self.close()
            raise RemoteRewardTimeout(f"remote reward: sending {what} to the reward server at {self.address} did not "
                                      f"finish within timeout={self.timeout:g} s; it may be stalled") from None
        except OSError as error:
            self.close()
            raise RemoteRewardError(f"remote reward: the connection to the reward server at {self.address} broke "
                                    f"while sending {what} ({type(error).__name__}: {error}); it probably died or "
                                    "was stopped (check its log)") from None

    def _receive_exactly(self, size: int, deadline: float, what: str) -> bytearray:
        buffer = bytearray(size)
        view, filled = memoryview(buffer), 0
        while filled < size:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self._sock.settimeout(remaining)
                received = self._sock.recv_into(view[filled:], min(size - filled, _RECV_CHUNK))
            except TimeoutError:
                self.close()
                raise RemoteRewardTimeout(
                    f"remote reward: the reward server at {self.address} did not answer {what} within "
                    f"timeout={self.timeout:g} s; it may be stalled, overloaded or gone (check its log; raise "
                    "`timeout` if a batch legitimately takes longer)") from None
            except OSError as error:
                self.close()
                raise RemoteRewardError(
                    f"remote reward: the connection to the reward server at {self.address} broke while waiting for "
                    f"{what} ({type(error).__name__}: {error}); it probably died or was stopped (check its log)"
                ) from None
            if received == 0:
                self.close()
                raise RemoteRewardError(
                    f"remote reward: the reward server at {self.address} closed the connection before answering "
                    f"{what}; it probably died or was stopped (check its log)")
            filled += received
        return buffer

    def _receive(self, deadline: float, what: str, max_header: int, max_payload: int):
        prefix = self._receive_exactly(_PREFIX.size, deadline, what)
        try:
            header_bytes, payload_bytes = read_prefix(bytes(prefix), max_header, max_payload)
            head = self._receive_exactly(header_bytes, deadline, what)
            payload = self._receive_exactly(payload_bytes, deadline, what)
            return decode_message(head, payload)
        except ProtocolError as error:
            self.close()
            raise RemoteRewardError(f"remote reward: malformed answer from {self.address} to {what}: "
                                    f"{error}") from None

    def _raise_if_error(self, header: dict, what: str) -> None:
        if header.get("type") != "error":
            return
        message = f"remote reward: the reward server at {self.address} refused {what}: {header.get('message')}"
        if header.get("fatal"):
            self.close()
        raise _ERROR_KINDS.get(header.get("kind"), RemoteRewardError)(message)

    # ---------------------------------------------------------------------------------------------- requests
    def _request(self, header: dict, tensors: dict, what: str, max_payload: int):
        with self._lock:
            self._ensure_connected()
            deadline = time.monotonic() + self.timeout
            self._next_id += 1
            header = dict(header, id=self._next_id)
            self._send(encode_message(header, tensors), deadline, what)
            reply, received = self._receive(deadline, what, _MAX_HEADER_BYTES, max_payload)
            if reply.get("type") == "error" and reply.get("id") is None:  # the server could not read the message
                self._raise_if_error(dict(reply, fatal=True), what)
            if reply.get("id") != header["id"]:
                self.close()
                raise RemoteRewardError(f"remote reward: the server at {self.address} answered request "
                                        f"{reply.get('id')!r} while {what} waited; connection dropped")
            self._raise_if_error(reply, what)
            return reply, received

    def server_stats(self) -> dict:
        """The server's counters: requests, images, batches (requests scored together), passes (forward / backward
        passes: more than batches when `max_batch_size` splits one), `batched_requests` (requests scored together
        with another connection's), `max_requests_per_batch`, errors, connections, clients_served."""
        reply, _ = self._request({"type": "stats"}, {}, "a stats request", 0)
        return reply["stats"]

    def reward_with_scores(self, images: torch.Tensor, prompts) -> tuple[torch.Tensor, dict]:
        """`(R (B,), {"dimensions": [...], "expected": (B, D), "std": (B, D)})`: R with autograd to `images`, the
        scores detached, on `images`' device."""
        try:
            found_low, found_high = check_image_tensor(images, self.image_range)
            prompts = check_prompt_list(list(prompts) if isinstance(prompts, tuple) else prompts, images.shape[0])
        except (ValueError, TypeError) as error:
            got = f" (got images {images.dtype} {tuple(images.shape)})" if isinstance(images, torch.Tensor) else ""
            raise type(error)(f"remote reward: {error}{got}") from None
        if self.image_range == "-1,1" and found_low >= 0.0 and not self._warned_unit_range:
            self._warned_unit_range = True
            logger.warning("remote reward: `images` are all >= 0 (values in [%.3g, %.3g]): they look like [0, 1] "
                           "images, but image_range='-1,1' reads them as mid-grey to white; for [0, 1] images use "
                           "RemoteReward(..., image_range='0,1') (shown once)", found_low, found_high)
        pixels = to_unit_range(images, self.image_range)
        need_grad = torch.is_grad_enabled() and pixels.requires_grad
        batch, shape = pixels.shape[0], tuple(pixels.shape)
        what = f"request {self._next_id + 1} ({batch} images {shape[-2]}x{shape[-1]})"
        reply, tensors = self._request({"type": "reward", "prompts": prompts, "need_grad": need_grad},
                                       {"pixels": pixels.detach()}, what,
                                       DEFAULT_MAX_MESSAGE_BYTES)
        dimensions = reply.get("dimensions")
        expected_shapes = {"reward": (batch,), "expected": (batch, len(dimensions or ())),
                           "std": (batch, len(dimensions or ()))}
        if need_grad:
            expected_shapes["grad"] = shape
        got = {name: tuple(t.shape) for name, t in tensors.items()}
        if (reply.get("type") != "result" or not isinstance(dimensions, list)
                or got != expected_shapes):
            self.close()
            raise RemoteRewardError(f"remote reward: the server at {self.address} answered {what} with "
                                    f"{reply.get('type')!r} tensors {got}, expected {expected_shapes}")
        if not all(_all_finite(t) for t in tensors.values()):
            raise RemoteRewardError(f"remote reward: the server at {self.address} returned non-finite rewards or "
                                    f"gradients for {what}")
        reward = tensors["reward"].to(pixels.device)
        if need_grad:
            grad = tensors["grad"].to(device=pixels.device, dtype=pixels.dtype)
            reward = _AttachGradient.apply(pixels, reward, grad)
        scores = {"dimensions": dimensions, "expected": tensors["expected"].to(pixels.device),
                  "std": tensors["std"].to(pixels.device)}
        return reward, scores

    def reward(self, images: torch.Tensor, prompts) -> torch.Tensor:
        """R `(B,)` of float images in `image_range`, differentiable with respect to them."""
        return self.reward_with_scores(images, prompts)[0]

    forward = reward

    def loss(self, images: torch.Tensor, prompts) -> torch.Tensor:
        """−R, or ReLU(margin − R), reduced as configured: `ZRewardLoss.forward` of the served reward."""
        from .loss import loss_from_reward

        return loss_from_reward(self.reward(images, prompts), self.margin, self.reduction)


# ------------------------------------------------------------------------------------------------ reward side
class _Connection:
    def __init__(self, sock: socket.socket, peer: str):
        self.sock, self.peer, self.label = sock, peer, peer
        self.authenticated = False
        self.nonce = secrets.token_hex(16)
        self.closed = False
        self.next_frame()

    def next_frame(self) -> None:
        """Read a frame into buffers of its exact sizes: the prefix, then the header, then the payload."""
        self.stage, self.target, self.filled, self.head = "prefix", bytearray(_PREFIX.size), 0, None


class _Request:
    def __init__(self, connection: _Connection, request_id: int, pixels: torch.Tensor, prompts: list[str],
                 need_grad: bool):
        self.connection, self.id, self.pixels, self.prompts, self.need_grad = (connection, request_id, pixels,
                                                                               prompts, need_grad)


def check_servable(loss_fn) -> None:
    """Refuse a loss whose reward of one image depends on the other images of the batch (the gradient the server
    returns is that of ΣR, per image only when rewards are independent)."""
    if not hasattr(loss_fn, "_reward_of_pixels"):
        raise TypeError(f"remote reward: `loss_fn` must be a ZRewardLoss, got {type(loss_fn).__name__}")
    if getattr(loss_fn, "groupwise", False):
        raise ValueError("remote reward: a groupwise=True loss rewards each image against the other images of its "
                         "prompt in the batch, which the server batches across generators; it cannot be served")
    if getattr(loss_fn, "normalize", False) and getattr(loss_fn, "update_running_stats", True):
        raise ValueError("remote reward: normalize=True updates its running statistics with every batch, so one "
                         "image's reward would depend on the others; freeze them to serve it "
                         "(loss_fn.update_running_stats = False)")


class _Server:
    def __init__(self, loss_fn, host, port, token, max_batch_size, batch_wait, io_timeout, max_message_bytes):
        check_servable(loss_fn)
        self.loss_fn = loss_fn.eval()
        self.token = token
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait
        self.io_timeout = io_timeout
        self.max_message_bytes = max_message_bytes
        self.selector = selectors.DefaultSelector()
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        self.listener = socket.create_server((host, port), family=family, backlog=128)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.host, self.port = self.listener.getsockname()[:2]
        self.connections: set[_Connection] = set()
        self.queue: list[_Request] = []
        self.queue_since = 0.0
        self.stats = {"requests": 0, "images": 0, "batches": 0, "passes": 0, "batched_requests": 0,
                      "max_requests_per_batch": 0, "errors": 0, "connections": 0, "clients_served": 0}
        config = loss_fn.reward_config() if hasattr(loss_fn, "reward_config") else {}
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            config.pop(key, None)
        device = next((b.device for b in loss_fn.buffers()), torch.device("cpu"))
        self.info = {"protocol": PROTOCOL, "dimensions": list(loss_fn.dimensions), "reward": config,
                     "device": str(device), "max_batch_size": max_batch_size, "batch_wait": batch_wait}

    # ---------------------------------------------------------------------------------------------- I/O
    def run(self, stop: threading.Event | None, on_ready) -> dict:
        logger.info("remote reward: serving on %s", _format_address(self.host, self.port))
        if on_ready is not None:
            on_ready((self.host, self.port))
        try:
            while stop is None or not stop.is_set():
                if self.queue:
                    wait = max(0.0, self.queue_since + self.batch_wait - time.monotonic())
                else:
                    wait = 0.2
                for key, _ in self.selector.select(wait):
                    if key.data is None:
                        self._accept()
                    else:
                        self._read(key.data)
                if self.queue and self._batch_ready():
                    queue, self.queue = self.queue, []
                    self._process(queue)
        finally:
            for connection in list(self.connections):
                self._drop(connection, None)
            self.selector.close()
            self.listener.close()
        return dict(self.stats)

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. too many open files: keep serving the others
                logger.warning("remote reward: accept failed: %s", error)
                return
            sock.setblocking(False)  # reads take what is there; replies wait up to io_timeout (`_reply`)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, _format_address(*peer[:2]))
            self.connections.add(connection)
            self.selector.register(sock, selectors.EVENT_READ, connection)
            self._reply(connection, {"type": "server_hello", "protocol": PROTOCOL, "nonce": connection.nonce,
                                     "auth": self.token is not None})

    def _drop(self, connection: _Connection, reason: str | None) -> None:
        if connection.closed:
            return
        connection.closed = True
        if reason:
            logger.info("remote reward: dropping %s: %s", connection.label, reason)
        self.connections.discard(connection)
        if connection.authenticated:
            self.stats["connections"] -= 1
        try:
            self.selector.unregister(connection.sock)
        except (KeyError, ValueError):
            pass
        # Closing with unread input sends a reset, which can discard a last error reply before the client reads
        # it: end our side with a FIN, read away what the client has already sent, then close.
        try:
            connection.sock.shutdown(socket.SHUT_WR)
            connection.sock.setblocking(False)
            for _ in range(64):
                if not connection.sock.recv(_RECV_CHUNK):
                    break
        except OSError:
            pass
        connection.sock.close()
        self.queue = [request for request in self.queue if request.connection is not connection]

    def _reply(self, connection: _Connection, header: dict, tensors: dict | None = None) -> None:
        if connection.closed:
            return
        try:
            connection.sock.settimeout(self.io_timeout)
            for buffer in encode_message(header, tensors):
                connection.sock.sendall(buffer)
            connection.sock.setblocking(False)
        except OSError as error:  # the client is gone, or stopped reading for io_timeout
            self._drop(connection, f"sending failed ({type(error).__name__}: {error})")

    def _error(self, connection: _Connection, request_id, error: BaseException, fatal: bool = False) -> None:
        self.stats["errors"] += 1
        kind = next((name for name, kind in _ERROR_KINDS.items() if isinstance(error, kind)), "RuntimeError")
        message = str(error) if type(error).__name__ == kind else f"{type(error).__name__}: {error}"
        logger.info("remote reward: refusing a message of %s: %s", connection.label, message)
        self._reply(connection, {"type": "error", "id": request_id, "kind": kind, "message": message,
                                 "fatal": fatal})
        if fatal:
            self._drop(connection, message)

    def _read(self, connection: _Connection) -> None:
        """Read what the connection has (its socket is non-blocking) into the frame it is on; handle whole frames."""
        while not connection.closed:
            if connection.filled < len(connection.target):
                try:
                    received = connection.sock.recv_into(memoryview(connection.target)[connection.filled:])
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as error:
                    self._drop(connection, f"{type(error).__name__}: {error}")
                    return
                if received == 0:
                    self._drop(connection, "closed by the client")
                    return
                connection.filled += received
                if connection.filled < len(connection.target):
                    continue
            if connection.stage == "prefix":
                max_header = _MAX_HEADER_BYTES if connection.authenticated else _HELLO_HEADER_BYTES
                max_payload = self.max_message_bytes if connection.authenticated else 0
                try:
                    header_bytes, payload_bytes = read_prefix(bytes(connection.target), max_header, max_payload)
                except ProtocolError as error:  # the stream cannot be resynchronised: answer and hang up
                    self._error(connection, None, error, fatal=True)
                    return
                connection.stage, connection.target, connection.filled = "header", bytearray(header_bytes), 0
                connection.payload_bytes = payload_bytes
            elif connection.stage == "header":
                connection.head = connection.target
                connection.stage, connection.filled = "payload", 0
                connection.target = bytearray(connection.payload_bytes)
            else:
                head, payload = connection.head, connection.target
                connection.next_frame()
                try:
                    self._handle(connection, head, payload)
                except Exception as error:  # whatever a message does, the server goes on serving the others
                    logger.exception("remote reward: a message from %s failed unexpectedly", connection.peer)
                    self._error(connection, None, ProtocolError(f"the message could not be handled: "
                                                                f"{type(error).__name__}"), fatal=True)

    def _handle(self, connection: _Connection, head: bytearray, payload: bytearray) -> None:
        try:
            header, tensors = decode_message(head, payload)
        except ProtocolError as error:  # framing intact: the next message can still be read
            self._error(connection, None, error, fatal=not connection.authenticated)
            return
        kind, request_id = header.get("type"), header.get("id")
        if not connection.authenticated:
            self._authenticate(connection, header)
            return
        if kind == "stats":
            self._reply(connection, {"type": "stats", "id": request_id, "stats": dict(self.stats)})
        elif kind == "reward":
            try:
                request = self._check_request(connection, header, tensors)
            except (ValueError, TypeError) as error:
                self._error(connection, request_id, error)
                return
            if not self.queue:
                self.queue_since = time.monotonic()
            self.queue.append(request)
        else:
            self._error(connection, request_id, ProtocolError(f"unknown message type {kind!r}"))

    def _authenticate(self, connection: _Connection, header: dict) -> None:
        if header.get("type") != "client_hello" or header.get("protocol") != PROTOCOL:
            self._error(connection, None, ProtocolError(f"expected a client_hello of protocol {PROTOCOL}, got "
                                                        f"{str(header)[:200]}"), fatal=True)
            return
        welcome = {"type": "welcome", "server": self.info}
        if self.token is not None:
            mac, client_nonce = header.get("mac"), header.get("nonce")
            if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(self.token, b"client", connection.nonce)):
                self._error(connection, None, PermissionError("wrong or missing token"), fatal=True)
                return
            if not isinstance(client_nonce, str) or len(client_nonce) > 256:
                self._error(connection, None, ProtocolError("client_hello needs a string 'nonce'"), fatal=True)
                return
            welcome["mac"] = _mac(self.token, b"server", client_nonce)
        client = header.get("client")
        connection.label = f"{connection.peer} ({str(client)[:80]})" if client else connection.peer
        connection.authenticated = True
        self.stats["connections"] += 1
        self.stats["clients_served"] += 1
        logger.info("remote reward: connected %s", connection.label)
        self._reply(connection, welcome)

    def _check_request(self, connection, header: dict, tensors: dict) -> _Request:
        request_id, prompts, need_grad = header.get("id"), header.get("prompts"), header.get("need_grad")
        if isinstance(request_id, bool) or not isinstance(request_id, int):
            raise TypeError(f"`id` must be an integer, got {request_id!r}")
        if not isinstance(need_grad, bool):
            raise TypeError(f"`need_grad` must be a bool, got {need_grad!r}")
        if set(tensors) != {"pixels"}:
            raise ValueError(f"a reward request carries one tensor, `pixels`, got {sorted(tensors)}")
        pixels = tensors["pixels"]
        check_image_tensor(pixels, "0,1")
        if not isinstance(prompts, list):
            raise TypeError(f"`prompts` must be a list of strings, one per image, got {type(prompts).__name__}")
        check_prompts = getattr(getattr(self.loss_fn, "scorer", None), "check_prompts", None)
        prompts = (check_prompts(prompts, pixels.shape[0]) if check_prompts is not None
                   else check_prompt_list(prompts, pixels.shape[0]))
        return _Request(connection, request_id, pixels, prompts, need_grad)

    def _batch_ready(self) -> bool:
        if time.monotonic() >= self.queue_since + self.batch_wait:
            return True
        waiting = {id(request.connection) for request in self.queue}
        if all(id(c) in waiting for c in self.connections if c.authenticated):
            return True
        images = sum(request.pixels.shape[0] for request in self.queue)
        return self.max_batch_size is not None and images >= self.max_batch_size

    # ---------------------------------------------------------------------------------------------- compute
    def _process(self, queue: list[_Request]) -> None:
        groups: dict[tuple, list[_Request]] = {}
        for request in queue:
            key = (tuple(request.pixels.shape[1:]), request.pixels.dtype, request.need_grad)
            groups.setdefault(key, []).append(request)
        for requests in groups.values():
            try:
                results = self._compute(requests)
            except Exception as error:  # noqa: BLE001 - a request's failure is its reply, never the server's end
                if len(requests) == 1:
                    if not isinstance(error, (ValueError, TypeError)):
                        logger.exception("remote reward: a request of %s failed", requests[0].connection.label)
                    self._error(requests[0].connection, requests[0].id, error)
                    continue
                for request in requests:  # find the request that failed; the others are answered
                    self._process([request])
                continue
            for request, result in zip(requests, results, strict=True):
                self._reply(request.connection, result[0], result[1])

    def _compute(self, requests: list[_Request]) -> list[tuple[dict, dict]]:
        pixels = torch.cat([request.pixels for request in requests])
        prompts = [prompt for request in requests for prompt in request.prompts]
        need_grad = requests[0].need_grad
        step = self.max_batch_size or pixels.shape[0]
        rewards, grads, expected, std = [], [], [], []
        dimensions = None
        for start in range(0, pixels.shape[0], step):
            chunk = pixels[start:start + step].detach().requires_grad_(need_grad)
            with torch.set_grad_enabled(need_grad):
                reward, output = self.loss_fn._reward_of_pixels(chunk, prompts[start:start + step])
                if need_grad:
                    (grad,) = torch.autograd.grad(reward.sum(), chunk, allow_unused=True)
                    grads.append(torch.zeros_like(chunk) if grad is None else grad.to("cpu"))
            rewards.append(reward.detach().to("cpu", torch.float32 if reward.dtype != torch.float64 else None))
            expected.append(output.expected.detach().float().cpu())
            std.append(output.std.detach().float().cpu())
            dimensions = list(output.dimensions)
            self.stats["passes"] += 1
        self.stats["batches"] += 1
        self.stats["requests"] += len(requests)
        self.stats["images"] += pixels.shape[0]
        if len({id(request.connection) for request in requests}) > 1:
            self.stats["batched_requests"] += len(requests)
        self.stats["max_requests_per_batch"] = max(self.stats["max_requests_per_batch"], len(requests))
        reward, expected, std = torch.cat(rewards), torch.cat(expected), torch.cat(std)
        grad = torch.cat(grads).to(pixels.dtype) if need_grad else None
        results, start = [], 0
        for request in requests:
            share = slice(start, start + request.pixels.shape[0])
            start = share.stop
            tensors = {"reward": reward[share], "expected": expected[share], "std": std[share]}
            if need_grad:
                tensors["grad"] = grad[share]
            header = {"type": "result", "id": request.id, "dimensions": dimensions,
                      "batch": {"requests": len(requests), "images": int(pixels.shape[0])}}
            results.append((header, tensors))
        return results


def serve_reward(loss_fn, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None,
                 max_batch_size: int | None = None, batch_wait: float = DEFAULT_BATCH_WAIT, io_timeout: float = 60.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, stop: threading.Event | None = None,
                 on_ready: Callable[[tuple[str, int]], None] | None = None) -> dict:
    """Serve `loss_fn` (a `ZRewardLoss`, already on its device) to `RemoteReward` clients until `stop` is set (or
    forever); returns the server's counters.

    Requests that wait together — from any of the connected generator processes, of the same image size — are
    scored in one forward (and one backward when they need gradients; at most `max_batch_size` images per pass), for
    up to `batch_wait` seconds after the first of them, or less when every connected generator has one waiting.
    `token` (default: ZREWARD_REMOTE_TOKEN if set) is a shared secret both sides prove; `host` other than 127.0.0.1
    without a token serves anyone who reaches the port (a warning). `io_timeout` bounds sending an answer to a
    client that stopped reading; `max_message_bytes` a request's payload. `on_ready((host, port))` is called once
    listening (`port=0` picks a free port). Input a local `ZRewardLoss` would refuse is refused per request (its
    client gets the `ValueError` / `TypeError`), as is a malformed message; neither stops the server.
    """
    token = (os.environ.get(TOKEN_ENV) or None) if token is None else token
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("remote reward: `token` must be a non-empty string")
    if max_batch_size is not None and (isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int)
                                       or max_batch_size < 1):
        raise ValueError(f"remote reward: `max_batch_size` must be a positive integer, got {max_batch_size!r}")
    if isinstance(batch_wait, bool) or not isinstance(batch_wait, (int, float)) or not 0 <= batch_wait < math.inf:
        raise ValueError(f"remote reward: `batch_wait` must be a non-negative number of seconds, got {batch_wait!r}")
    _positive("io_timeout", io_timeout)
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        logger.warning("remote reward: serving on %s without a token: anyone who reaches this port can use the "
                       "reward model (set %s on both sides)", host, TOKEN_ENV)
    server = _Server(loss_fn, host, port, token, max_batch_size, float(batch_wait), float(io_timeout),
                     int(max_message_bytes))
    return server.run(stop, on_ready)


# ------------------------------------------------------------------------------------------------ command line
def _write_port_file(path: Path, address: tuple[str, int]) -> None:
    temporary = path.with_name(path.name + f".tmp{os.getpid()}")
    temporary.write_text(_format_address(*address) + "\n")
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zreward_diffusers.remote",
                                     description="Serve a Z-Reward to RemoteReward clients (generator processes).")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="load a checkpoint and serve its reward until stopped (Ctrl-C, SIGTERM)")
    serve.add_argument("--model", required=True, help="checkpoint directory or hub id (ZRewardLoss.from_pretrained)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (default 0: a free one, see --port-file)")
    serve.add_argument("--port-file", type=Path, help="write 'host:port' here once listening")
    serve.add_argument("--device", help="device of the reward model, e.g. cuda:7 (default: the CPU)")
    serve.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="backbone dtype")
    serve.add_argument("--max-batch-size", type=int, help="most images per forward/backward (default: all waiting)")
    serve.add_argument("--batch-wait", type=float, default=DEFAULT_BATCH_WAIT,
                       help=f"seconds to wait for the other generators' requests (default {DEFAULT_BATCH_WAIT})")
    serve.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    from .loss import ZRewardLoss

    dtype = getattr(torch, args.dtype) if args.dtype else None
    loss_fn = ZRewardLoss.from_pretrained(args.model, torch_dtype=dtype, device=args.device)
    if loss_fn.normalize:
        loss_fn.update_running_stats = False  # served with the checkpoint's statistics, frozen
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def ready(address):
        if args.port_file is not None:
            _write_port_file(args.port_file, address)
        sys.stderr.write(f"zreward remote: serving {args.model} on {_format_address(*address)}\n")
        sys.stderr.flush()

    try:
        stats = serve_reward(loss_fn, args.host, args.port, max_batch_size=args.max_batch_size,
                             batch_wait=args.batch_wait, stop=stop, on_ready=ready)
    except KeyboardInterrupt:
        return 0
    sys.stderr.write(f"zreward remote: stopped; {json.dumps(stats)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
