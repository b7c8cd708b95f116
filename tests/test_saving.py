"""`zreward_diffusers.saving`: a save never destroys what it did not write, and a kill at any point of it leaves the
last complete state (found again by `recover_directory`)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zreward_diffusers.saving import MARKER_NAME, atomic_directory, recover_directory, save_directory

SAVING = Path(__file__).resolve().parents[1] / "zreward_diffusers" / "saving.py"


def write_version(version: str):
    def write(folder: Path) -> None:
        (folder / "weights.txt").write_text(version * 1000)
        (folder / "sub").mkdir()
        (folder / "sub" / "config.json").write_text(f'{{"version": "{version}"}}')
    return write


def read_version(folder: Path) -> str:
    text = (folder / "weights.txt").read_text()
    assert text == text[0] * 1000, "a half-written file"
    assert (folder / "sub" / "config.json").read_text() == f'{{"version": "{text[0]}"}}'
    return text[0]


def hidden(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith("."))


def test_a_folder_it_did_not_write_is_refused_unless_overwrite(tmp_path):
    """The issue's case: `zreward create-tiny runs` with a run inside `runs` deleted it, exit code 0."""
    runs = tmp_path / "runs"
    (runs / "exp1").mkdir(parents=True)
    (runs / "exp1" / "metrics.json").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_directory(runs, write_version("a"))
    assert (runs / "exp1" / "metrics.json").read_text() == "x" and hidden(tmp_path) == []
    save_directory(runs, write_version("a"), overwrite=True)
    assert read_version(runs) == "a" and not (runs / "exp1").exists()


def test_our_own_folder_and_an_empty_one_are_replaced(tmp_path):
    (tmp_path / "empty").mkdir()
    save_directory(tmp_path / "empty", write_version("a"))
    save_directory(tmp_path / "empty", write_version("b"))  # ours now: no overwrite needed
    assert read_version(tmp_path / "empty") == "b" and (tmp_path / "empty" / MARKER_NAME).is_file()
    assert hidden(tmp_path) == []


def test_an_error_inside_the_block_leaves_the_old_folder(tmp_path):
    save_directory(tmp_path / "model", write_version("a"))
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(tmp_path / "model") as staging:
            (staging / "weights.txt").write_text("partial")
            raise RuntimeError("disk full")
    assert read_version(tmp_path / "model") == "a" and hidden(tmp_path) == []


def test_the_working_directory_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    """`save_pretrained('.')` failed and left a full temporary copy behind."""
    inside = tmp_path / "project"
    inside.mkdir()
    monkeypatch.chdir(inside)
    for directory in (".", str(tmp_path)):
        with pytest.raises(ValueError, match="current working directory"):
            save_directory(directory, write_version("a"))
    assert list(inside.iterdir()) == [] and hidden(tmp_path) == []


def test_a_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(FileExistsError, match="not a directory"):
        save_directory(tmp_path / "model", write_version("a"))


def test_a_symbolic_link_is_followed_and_kept(tmp_path):
    """Saving onto a link replaced the link and left a hidden link."""
    real = tmp_path / "store" / "model"
    save_directory(real, write_version("a"))
    link = tmp_path / "model"
    link.symlink_to(real, target_is_directory=True)
    save_directory(link, write_version("b"))
    assert link.is_symlink() and read_version(real) == "b" and read_version(link) == "b"
    assert hidden(tmp_path) == [] and hidden(tmp_path / "store") == []


def test_permissions_follow_the_umask_and_the_replaced_folder(tmp_path):
    """Saved folders were mode 0700 whatever the umask, even replacing a 2775 shared folder."""
    previous = os.umask(0o002)
    try:
        save_directory(tmp_path / "new", write_version("a"))
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o775
        assert stat.S_IMODE((tmp_path / "new" / "weights.txt").stat().st_mode) == 0o664
        assert stat.S_IMODE((tmp_path / "new" / "sub").stat().st_mode) == 0o775

        def safetensors_writer(folder: Path) -> None:  # safetensors creates its files 0o600
            save_file({"w": torch.zeros(2)}, folder / "model.safetensors")

        save_directory(tmp_path / "weights", safetensors_writer)
        assert stat.S_IMODE((tmp_path / "weights" / "model.safetensors").stat().st_mode) == 0o664
        shared = tmp_path / "shared"
        shared.mkdir()
        os.chmod(shared, 0o2775)
        save_directory(shared, write_version("b"))
        assert stat.S_IMODE(shared.stat().st_mode) == 0o2775
    finally:
        os.umask(previous)


# A child process saves version "b" over version "a" and is killed (`os._exit`) at the n-th call of one function.
KILL = """
import importlib.util, os, shutil, sys
spec = importlib.util.spec_from_file_location("saving", sys.argv[1])
saving = importlib.util.module_from_spec(spec)
spec.loader.exec_module(saving)
target, function, nth = sys.argv[2], sys.argv[3], int(sys.argv[4])
module = {"replace": os, "fsync": os, "rmtree": shutil}[function]
original, calls = getattr(module, function), []

def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth:
        os._exit(17)
    return original(*args, **kwargs)

setattr(module, function, dying)
with saving.atomic_directory(target) as folder:
    (folder / "weights.txt").write_text("b" * 1000)
    (folder / "sub").mkdir()
    (folder / "sub" / "config.json").write_text('{"version": "b"}')
os._exit(0)
"""


@pytest.mark.parametrize(("function", "nth", "expected"), [
    ("fsync", 1, "a"),    # syncing the first file of the staging folder
    ("fsync", 5, "a"),    # syncing the staging folder itself (2 files and the marker, `sub`, then the folder)
    ("replace", 1, "a"),  # moving the old folder aside
    ("replace", 2, "b"),  # moving the complete staging folder into place: only the two hidden copies exist
    ("fsync", 6, "b"),    # syncing the parent after the renames
    ("rmtree", 1, "b"),   # removing the old copy
])
def test_a_kill_at_each_step_leaves_the_last_complete_state(tmp_path, function, nth, expected):
    target = tmp_path / "model"
    save_directory(target, write_version("a"))
    result = subprocess.run([sys.executable, "-c", KILL, str(SAVING), str(target), function, str(nth)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 17, result.stderr  # killed where intended
    if expected == "b" and function == "replace":
        assert not target.exists()  # the window: neither name holds a folder
    recovered = recover_directory(target)
    assert (recovered is not None) == (function == "replace" and nth == 2)
    assert read_version(target) == expected
    save_directory(target, write_version("c"))  # the next save cleans every leftover
    assert read_version(target) == "c" and hidden(tmp_path) == []


def test_an_unfinished_staging_folder_is_never_recovered(tmp_path):
    target = tmp_path / "model"
    (tmp_path / ".model.tmp-0123456789ab").mkdir()
    (tmp_path / ".model.tmp-0123456789ab" / "weights.txt").write_text("half")
    assert recover_directory(target) is None and not target.exists()
