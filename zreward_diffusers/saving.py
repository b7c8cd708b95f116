"""Saving a directory so that nothing is lost: neither what was there before, nor the last complete save.

`atomic_directory(directory)` yields a hidden staging folder beside `directory`; when the block ends, the folder
is completed (a marker file written last), every file and folder in it is fsynced, and it takes `directory`'s place:

    1. `directory` → `.<name>.old-<token>`      (skipped when there is no `directory` yet)
    2. `.<name>.tmp-<token>` → `directory`
    3. the parent folder fsynced, the old copy and any leftovers of earlier interrupted saves removed.

A kill at any instant leaves a complete state on disk: before step 1 the old `directory`; between 1 and 2 both the
old copy and the complete staging folder; after 2 the new `directory`. `recover_directory(directory)` (which the
loaders call when `directory` is missing) renames the newest complete one back into place and says which.

What a save refuses, so that it never destroys what it did not write:
- a non-empty `directory` without our marker (not written by `atomic_directory`) unless `overwrite=True`;
- a `directory` that is the current working directory or holds it;
- a path that exists and is not a folder.
A symbolic link is followed (the folder it points to is replaced, the link kept). The new folder gets the
permissions of the folder it replaces, or the umask's for a new one; the files and folders inside get the umask's
(`normal_permissions`), whatever mode their writer chose.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

MARKER_NAME = ".zreward_save.json"


def is_ours(directory: Path) -> bool:
    """Whether `directory` was written, completely, by `atomic_directory`."""
    return (Path(directory) / MARKER_NAME).is_file()


def _leftovers(target: Path) -> list[Path]:
    """The staging and old copies of interrupted saves of `target`, newest first."""
    found = [path for path in target.parent.glob(f".{target.name}.*-*")
             if path.is_dir() and path.name.rsplit("-", 1)[0] in (f".{target.name}.tmp", f".{target.name}.old")]
    return sorted(found, key=lambda path: path.stat().st_mtime_ns, reverse=True)


def _target(directory: str | os.PathLike) -> Path:
    target = Path(directory)
    if target.is_symlink():
        target = target.resolve()  # the link stays; the folder it names is replaced
    target = Path(os.path.abspath(target))
    here = Path.cwd().resolve()
    if target.resolve() == here or target.resolve() in here.parents:
        raise ValueError(f"cannot save into {str(directory)!r}: it is the current working directory or holds it; "
                         "save into a subdirectory")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"cannot save into {str(directory)!r}: it exists and is not a directory")
    return target


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_permissions(root: Path, keep_root: bool = False) -> None:
    """Give every file under `root` mode 0o666 and every folder 0o777, less the umask, as a plain `open` or `mkdir`
    would: some writers (safetensors among them) create their files 0o600 whatever the umask. With `keep_root`,
    `root`'s own mode is left as it is."""
    mask = _current_umask()
    for folder, folders, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)
        for name in folders:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
    if not keep_root:
        os.chmod(root, 0o777 & ~mask)


def fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every folder bottom-up (so the names are durable too)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        fsync_directory(Path(folder))


def fsync_directory(folder: Path) -> None:
    """fsync a folder's entries (a rename is durable once its parent folder is synced); a no-op where folders
    cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_directory(directory: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder; when the block ends without an error it replaces `directory` as the module docstring
    describes (on an error it is removed and `directory` is untouched).

    `overwrite=True` allows replacing a non-empty folder that was not written by this function.
    """
    target = _target(directory)
    if target.is_dir() and not is_ours(target) and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} is not empty and was not saved by zreward-diffusers; pass overwrite=True "
                              "(--overwrite on the command line) to replace it, or choose another directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    staging = target.parent / f".{target.name}.tmp-{token}"
    staging.mkdir()  # mode 0o777 less the umask
    if target.is_dir():
        os.chmod(staging, stat.S_IMODE(target.stat().st_mode))
    try:
        yield staging
        (staging / MARKER_NAME).write_text(json.dumps({"complete": True}) + "\n")
        normal_permissions(staging, keep_root=True)
        fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{token}"
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    fsync_directory(target.parent)
    for leftover in [old, *_leftovers(target)]:
        shutil.rmtree(leftover, ignore_errors=True)


def save_directory(directory: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """`write(folder)` into a staging folder that then replaces `directory` (`atomic_directory`); returns the
    directory written."""
    with atomic_directory(directory, overwrite=overwrite) as staging:
        write(staging)
    return _target(directory)


def recover_directory(directory: str | os.PathLike) -> Path | None:
    """If `directory` is missing because a save was interrupted, rename the newest complete copy it left (the new
    state if it was complete, else the old one) into place, log which, and return `directory`; None when there is
    nothing to recover. A present `directory` is left as it is."""
    target = Path(os.path.abspath(directory))
    if target.exists() or not target.parent.is_dir():
        return None
    for candidate in _leftovers(target):
        if candidate.name.startswith(f".{target.name}.tmp-") and not is_ours(candidate):
            continue  # a staging folder whose save did not finish
        os.replace(candidate, target)
        fsync_directory(target.parent)
        logger.warning("%s was missing after an interrupted save; restored it from %s", target, candidate.name)
        return target
    return None
