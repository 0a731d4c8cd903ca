"""File helpers for paths that may be local or remote (`gs://...`), over `etils.epath`."""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names a remote file system (it has a scheme, e.g. `gs://bucket/x`).

    Args:
      path: a path or URL.

    Returns:
      True for `scheme://...`, False for a local path.
    """
    return "://" in str(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename, creating the parent.

    A reader sees the old file or the new one, never half a file; a crash leaves at most the
    temporary `<name>.tmp` beside it.

    Args:
      path: the file to write (local or remote).
      text: its new content, written as UTF-8.
    """
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_bytes(text.encode("utf-8"))  # UTF-8 whatever the locale.
    tmp.replace(path)
