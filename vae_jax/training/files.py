"""Writing a run directory's small files so that a kill never leaves half of one."""

from __future__ import annotations

import os


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename: a reader
  (or a process killed mid-write) sees the old file or the new, never a part."""
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
