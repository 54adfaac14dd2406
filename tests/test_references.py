"""Every backticked `vae_jax....` name in the package's docstrings, README.md,
BUILD.md and docs/ names a real module or attribute, at its current place: a
name that answers only through a deprecated old name counts as broken."""

import dataclasses
import importlib
import re
import warnings

from runners import REPO

SOURCES = [
  *sorted((REPO / "vae_jax").rglob("*.py")),
  REPO / "README.md",
  REPO / "BUILD.md",
  *sorted((REPO / "docs").rglob("*.md")),
]
CITED_NAME = re.compile(r"`(vae_jax(?:\.\w+)+)")


def _resolves(name: str) -> bool:
  """Whether `name` is a module, or the longest module prefix of it has
  the rest as attributes (or dataclass fields)."""
  parts = name.split(".")
  for split in range(len(parts), 0, -1):
    try:
      found = importlib.import_module(".".join(parts[:split]))
    except ModuleNotFoundError:
      continue
    for attribute in parts[split:]:
      if dataclasses.is_dataclass(found) and attribute in {
        f.name for f in dataclasses.fields(found)
      }:
        return True  # a field without a default is no class attribute
      if not hasattr(found, attribute):
        return False
      found = getattr(found, attribute)
    return True
  return False


def test_every_cited_vae_jax_name_resolves():
  broken = []
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)
    for path in SOURCES:
      for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        for name in CITED_NAME.findall(line):
          try:
            resolves = _resolves(name)
          except DeprecationWarning:
            resolves = False
          if not resolves:
            broken.append(f"{path.relative_to(REPO)}:{number}: {name}")
  assert not broken, "\n".join(broken)
