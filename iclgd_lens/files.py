"""Claiming an output path and writing it so that a reader (or a resumed sweep) never sees half of it.

Every command checks its output with `check_output` before computing anything (a path is new, empty, or the
toolkit's own), and writes through `replaced_atomically` (files and folders alike).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def check_output(
    path: Path, kind: str, is_ours: Callable[[Path], bool], overwrite: bool = True, folder: bool = True
) -> None:
    """Refuse, before any computation, an output `path` that holds anything the toolkit did not write.

    `kind` names the output ("result", "sweep", ...); `is_ours` says whether an existing path is one the toolkit
    wrote; `overwrite=False` also refuses one it did write. A folder output may not be (or contain) the working
    folder, the home folder or the root."""
    if folder:
        resolved = path.expanduser().resolve()
        protected = [Path.cwd().resolve(), Path.home().resolve(), Path(resolved.anchor)]
        if any(resolved == p or resolved in p.parents for p in protected):
            raise ValueError(
                f"refusing to write a {kind} to {str(path)!r}: it is (or contains) the working folder, the home "
                "folder or the root; choose a new sub-folder such as runs/NAME"
            )
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"{str(path)!r} exists and is not a folder; choose another output path")
        if not path.exists() or not any(path.iterdir()):
            return
    else:
        if path.is_dir():
            raise IsADirectoryError(f"{str(path)!r} is a folder; give the {kind}'s file name, e.g. {kind}.html")
        if not path.exists():
            return
    if not is_ours(path):
        held = f" (it holds {sorted(e.name for e in path.iterdir())[:5]})" if folder else ""
        fix = "choose a new or empty folder (nothing in it was touched)" if folder else "choose another file"
        container = "folder" if folder else "file"
        raise FileExistsError(f"{str(path)!r} is not a {kind} {container} written by iclgd-lens{held}; {fix}")
    if not overwrite:
        raise FileExistsError(
            f"{str(path)!r} already holds a {kind}; choose another path or pass overwrite=True (--overwrite)"
        )


def holds_marker(folder: Path, marker: str, format_name: str) -> bool:
    """Whether `folder/marker` is a JSON object whose "format" is `format_name`: how an output folder says which of
    the toolkit's commands wrote it."""
    try:
        return json.loads((folder / marker).read_text()).get("format") == format_name
    except (OSError, ValueError, AttributeError):
        return False


def check_format(folder: Path, marker: str, formats: tuple[str | None, ...], kind: str, verb: str) -> dict:
    """`folder/marker`'s JSON object, if its "format" is one of `formats` (None: a file written before formats were
    named); else a one-line error that says whether the file is missing, unreadable, or written by another version
    of the toolkit (and what to run instead)."""
    try:
        data = json.loads((folder / marker).read_text())
    except OSError:
        raise ValueError(f"{str(folder)!r} is not a {kind} folder (no {marker}); run iclgd-lens {verb}") from None
    except ValueError as error:
        raise ValueError(
            f"{str(folder)!r} holds a corrupt or incomplete {kind} ({marker} is not valid JSON: {error}); "
            f"run iclgd-lens {verb} to write it again"
        ) from None
    written = data.get("format") if isinstance(data, dict) else None
    if written not in formats:
        raise ValueError(
            f"{str(folder)!r} holds a {kind} of format {written!r}, which this iclgd-lens does not read "
            f"(it reads {[f for f in formats if f]}): run iclgd-lens {verb} again with this version, or "
            "read it with the version that wrote it"
        )
    return data


@contextmanager
def replaced_atomically(path: Path, folder: bool = False, keep_first: bool = False) -> Iterator[Path]:
    """A temporary sibling of `path` (a file, or a folder with `folder=True`) to write into. On success it takes
    `path`'s place in one step, with the usual permissions (mkstemp and mkdtemp make it private); on an error it
    is removed and `path` is left as it was. `keep_first`: when `path` appeared meanwhile (a concurrent writer of
    the same content), the new copy is dropped and the first kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
        os.chmod(temporary, 0o777 & ~umask())
    else:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
        os.close(handle)
        temporary = Path(name)
        os.chmod(temporary, 0o666 & ~umask())
    try:
        yield temporary
        if folder:
            for written in temporary.rglob("*"):  # safetensors and others write their files private (0600)
                written.chmod((0o777 if written.is_dir() else 0o666) & ~umask())
            if not (keep_first and path.exists()):
                _replace_folder(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        if folder:
            shutil.rmtree(temporary, ignore_errors=True)  # after an exchange it holds the old content
        else:
            temporary.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and a rename."""
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace_folder(staging: Path, folder: Path) -> None:
    """Move the complete `staging` to `folder`. An existing folder is exchanged atomically (its old content ends
    in `staging`, removed by the caller); where the system cannot exchange, two renames leave a short window."""
    if not folder.exists():
        staging.rename(folder)
    elif not _exchange(staging, folder):
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        folder.rename(old / folder.name)
        staging.rename(folder)
        shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))
