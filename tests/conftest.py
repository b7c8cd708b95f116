import pytest

from zreward_diffusers.testing import TINY_FAMILIES


@pytest.fixture(params=TINY_FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: a test that builds an `Accelerator` with other settings (bf16) starts
    from a fresh one and leaves a fresh one behind."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    """A tiny Qwen2-VL Z-Reward checkpoint on disk (random weights), for the trainers' tests."""
    from zreward_diffusers.testing import create_tiny_checkpoint

    path = tmp_path_factory.mktemp("base") / "tiny"
    create_tiny_checkpoint(path, seed=0)
    return str(path)
