"""The README opens with the two commands, and its quickstart runs as written (the shipped world student)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text()
    block = re.search(r"<!-- quickstart:start -->\s*```python\n(.*?)```\s*<!-- quickstart:end -->", text, re.S)
    assert block, "README quickstart block not found"
    return block.group(1)


def test_readme_opens_with_the_two_commands():
    first_block = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("make demo") and first_block.splitlines()[1].startswith("make test")


def test_quickstart_runs(monkeypatch, capsys):
    """As written, from the repository root, with the shipped world student."""
    monkeypatch.chdir(README.parent)
    code = quickstart_code()
    assert '"world/student_risd"' in code
    namespace = {}
    exec(compile(code, "README", "exec"), namespace)
    assert namespace["decoded"].grad is not None and namespace["decoded"].grad.abs().sum() > 0
    assert "torch.Size([2, 4, 9])" in capsys.readouterr().out


def test_clients_snippet_runs(monkeypatch, capsys):
    """The README's snippet for TRL's AlignProp / DDPO, GRPO-family trainers and imscore runs as written."""
    monkeypatch.chdir(README.parent)
    block = re.search(r"<!-- clients:start -->\s*```python\n(.*?)```\s*<!-- clients:end -->", README.read_text(), re.S)
    assert block, "README clients block not found"
    namespace = {}
    exec(compile(block.group(1), "README", "exec"), namespace)
    assert namespace["rewards"].shape == (2,) and set(namespace["metadata"]) == {"expected", "std"}
    assert set(namespace["scores"]) == {"reward", "alignment", "aesthetics", "realism", "physical_plausibility"}
