"""The README's quickstart runs as written, with a tiny checkpoint in place of the hub id."""

import re
from pathlib import Path

from zreward_diffusers.testing import create_tiny_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text()
    block = re.search(r"<!-- quickstart:start -->\s*```python\n(.*?)```\s*<!-- quickstart:end -->", text, re.S)
    assert block, "README quickstart block not found"
    return block.group(1)


def test_readme_opens_with_the_two_commands():
    first_block = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("make demo") and first_block.splitlines()[1].startswith("make test")


def test_quickstart_runs(tmp_path, capsys):
    create_tiny_checkpoint(tmp_path / "tiny", "qwen2_vl")
    code = quickstart_code()
    assert '"your-org/zreward-student"' in code
    namespace = {}
    code = code.replace('"your-org/zreward-student"', repr(str(tmp_path / "tiny")))
    exec(compile(code, "README", "exec"), namespace)
    assert namespace["decoded"].grad is not None and namespace["decoded"].grad.abs().sum() > 0
    assert "torch.Size([2, 4, 9])" in capsys.readouterr().out
