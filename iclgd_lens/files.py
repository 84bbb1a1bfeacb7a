"""Writing files so that a reader (or a resumed sweep) never sees half of one."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write into; on success it takes `path`'s place in one rename, with the
    usual permissions (mkstemp makes it private); on an error it is removed and `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~umask())
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and a rename."""
    with replaced_atomically(path) as temporary:
        temporary.write_text(text)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
