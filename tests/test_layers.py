"""The package's layers, as BUILD.md's layout section states them: every
module imports only the layers below its own, and the third-party libraries
its layer may use. Read from the source (every import statement, those inside
functions too), so a new import that breaks the layering fails here."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vae_jax"
# A layer may import the layers of lower rank; two layers of one rank may not
# import each other. The package's __init__ (the public facade) may import all.
RANKS = {
  "errors": 0,
  "math": 1,
  "data": 1,
  "models": 2,
  "inference": 3,
  "training": 4,
  "figures": 5,
}
# Third-party modules a layer must not import.
FORBIDDEN = {
  "math": ("flax", "optax", "orbax", "absl", "matplotlib", "tensorflow", "tensorflow_datasets"),
  "models": ("optax", "orbax", "absl", "matplotlib"),
  "inference": ("optax", "orbax", "absl", "matplotlib"),
  "training": ("absl", "matplotlib"),
}


def _layer(module: str) -> str:
  """vae_jax.training.loop -> training; vae_jax.errors -> errors."""
  return module.split(".")[1]


def _imports(path: Path) -> list[str]:
  """Every module an import statement of the file names (absolute imports)."""
  names = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.append(node.module)
      # `from vae_jax import estimators` names the module vae_jax.estimators.
      if node.module == "vae_jax":
        names += [f"vae_jax.{alias.name}" for alias in node.names]
  return names


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    if path == PACKAGE / "__init__.py":
      continue
    yield path, _layer("vae_jax." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))


@pytest.mark.parametrize("path, layer", list(_modules()), ids=lambda p: str(p))
def test_a_module_imports_only_layers_below_its_own(path, layer):
  assert layer in RANKS, f"{path}: layer {layer!r} is not in BUILD.md's layout"
  for name in _imports(path):
    if name.startswith("vae_jax.") and _layer(name) != layer:
      imported = _layer(name)
      assert RANKS[imported] < RANKS[layer], f"{path} ({layer}) imports {name} ({imported})"
    top = name.split(".")[0]
    # The runners sit above the library: nothing in it imports them.
    assert top not in ("experiments", *FORBIDDEN.get(layer, ())), f"{path} ({layer}) imports {name}"


def test_training_imports_neither_matplotlib_nor_tensorflow():
  """A run that draws no figure never loads matplotlib; the library never TensorFlow
  (TFDS loads it on demand, for the TFDS data sets alone)."""
  code = (
    "import sys, vae_jax, vae_jax.training, vae_jax.inference.marginal_likelihood\n"
    "print(sorted(m for m in ('matplotlib', 'tensorflow') if m in sys.modules))\n"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
  )
  assert result.stdout.strip() == "[]"
