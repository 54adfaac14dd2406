"""Figures: valid PNGs of sensible size, the Fig. 4 latent grid, log x-axis."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib import image as mpimg
from scipy import special

from vae_jax.figures import plots as figures


def _read_png(path) -> np.ndarray:
  """[height, width, channels]: 1 for the gray mosaics, 4 for RGBA plots."""
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  return np.atleast_3d(mpimg.imread(path))


def _images(n: int, height: int = 28, width: int = 28) -> np.ndarray:
  return np.random.default_rng(0).random((n, height, width), dtype=np.float32)


def test_plot_image_grid_writes_png(tmp_path):
  path = figures.plot_image_grid(_images(100), tmp_path / "sub" / "s.png")
  assert path == str(tmp_path / "sub" / "s.png")
  pixels = _read_png(path)
  height, width, _ = pixels.shape
  # 10 columns of 28-pixel tiles, displayed at roughly 2x.
  assert 400 <= width <= 1200 and 400 <= height <= 1300
  # Not a blank canvas: the random tiles are drawn.
  assert pixels[..., :3].std() > 0.1


def test_plot_reconstructions_writes_png(tmp_path):
  path = figures.plot_reconstructions(_images(15), 1 - _images(15), tmp_path / "r.png", ncols=5)
  height, width, _ = _read_png(path).shape
  # 3 blocks of 2 rows by 5 columns of 28x28 tiles: taller than wide.
  assert 300 <= width <= 800 and height > width


def test_plot_reconstructions_rejects_shape_mismatch(tmp_path):
  with pytest.raises(ValueError, match="same shape"):
    figures.plot_reconstructions(_images(4), _images(5), tmp_path / "r.png")


def test_image_grid_rejects_flat_images(tmp_path):
  with pytest.raises(ValueError, match=r"\[n, height, width\]"):
    figures.plot_image_grid(np.zeros((4, 784)), tmp_path / "s.png")


def _records():
  return [
    {"samples_seen": 0, "train_bound": -550.0, "test_bound": -551.0},
    {"samples_seen": 10**6, "train_bound": -120.0, "test_bound": -121.0},
    {"samples_seen": 10**4, "train_bound": -200.0},
    {"samples_seen": 10**5, "train_bound": -150.0, "test_bound": None},
    {"samples_seen": 10**7, "train_bound": -100.0, "test_bound": math.nan},
    {"samples_seen": 10**8, "train_bound": -98.0, "test_bound": -99.5},
  ]


def test_learning_curve_has_log_x_axis_and_labels():
  fig = figures.learning_curve_figure(_records())
  (ax,) = fig.axes
  assert ax.get_xscale() == "log"
  assert "nats" in ax.get_ylabel()
  assert ax.get_xlabel() and ax.get_title()
  curves = {line.get_label(): line for line in ax.get_lines()}
  assert set(curves) == {"train", "test"}
  # Sorted by samples seen; samples_seen = 0 and missing test values skipped.
  np.testing.assert_array_equal(curves["train"].get_xdata(), [1e4, 1e5, 1e6, 1e7, 1e8])
  np.testing.assert_array_equal(curves["train"].get_ydata(), [-200, -150, -120, -100, -98])
  np.testing.assert_array_equal(curves["test"].get_xdata(), [1e6, 1e8])
  np.testing.assert_array_equal(curves["test"].get_ydata(), [-121, -99.5])


def test_learning_curve_without_test_values(tmp_path):
  records = [{"samples_seen": 10**k, "train_bound": -100.0 - k} for k in (1, 2)]
  fig = figures.learning_curve_figure(records)
  assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train"]
  path = figures.plot_learning_curve(records, tmp_path / "curve.png")
  height, width, _ = _read_png(path).shape
  assert (height, width) == (480, 640)


def test_learning_curve_without_any_bound_raises():
  with pytest.raises(ValueError, match="No record"):
    figures.learning_curve_figure([{"samples_seen": 10, "test_bound": None}])


def test_manifold_latents_are_normal_quantiles_of_a_uniform_grid():
  grid_size = 7
  z = np.asarray(figures.manifold_latents(grid_size))
  assert z.shape == (grid_size**2, 2)
  grid = z.reshape(grid_size, grid_size, 2)
  expected = special.ndtri(np.arange(1, grid_size + 1) / (grid_size + 1))
  # z_1 varies along a row (left to right), z_2 along a column (bottom up).
  for row in range(grid_size):
    np.testing.assert_allclose(grid[row, :, 0], expected, rtol=1e-5)
    np.testing.assert_allclose(grid[row, :, 1], expected[::-1][row], rtol=1e-5)
  coordinates = grid[0, :, 0]
  assert np.all(np.diff(coordinates) > 0)
  np.testing.assert_allclose(coordinates, -coordinates[::-1], atol=1e-6)
  assert coordinates[grid_size // 2] == pytest.approx(0.0, abs=1e-6)


def test_manifold_grid_decodes_the_latent_grid_in_order(tmp_path):
  grid_size, height, width = 5, 4, 3
  seen = []

  def decode_mean_fn(z):
    seen.append(np.asarray(z))
    # Each image encodes its own z, so the layout can be checked.
    return jnp.tile(z[:, :1] + 10 * z[:, 1:], (1, height * width))

  images = figures.manifold_grid(decode_mean_fn, grid_size, (height, width))
  (z,) = seen
  np.testing.assert_array_equal(z, figures.manifold_latents(grid_size))
  assert images.shape == (grid_size**2, height, width)
  np.testing.assert_allclose(images[:, 0, 0], z[:, 0] + 10 * z[:, 1], rtol=1e-6)

  path = figures.plot_manifold(1 / (1 + np.exp(-images)), grid_size, tmp_path / "manifold.png")
  png_height, png_width, _ = _read_png(path).shape
  assert 300 <= png_width <= 1300 and 300 <= png_height <= 1300


def test_plot_manifold_checks_image_count(tmp_path):
  with pytest.raises(ValueError, match="grid_size"):
    figures.plot_manifold(_images(10), 3, tmp_path / "m.png")


def test_plot_image_grids_draws_panels_side_by_side(tmp_path):
  panels = {f"J = {j}": _images(100) for j in (2, 5, 10, 20)}
  height, width, _ = _read_png(figures.plot_image_grids(panels, tmp_path / "f5.png")).shape
  # Four square 10x10 grids in a row share the width of one figure.
  assert 1000 <= width <= 1300 and 250 <= height <= 500
  with pytest.raises(ValueError, match="panel 'J = 2' must have shape"):
    figures.plot_image_grids({"J = 2": np.zeros((4, 784))}, tmp_path / "bad.png")


def test_plot_manifolds_takes_panels_of_different_image_shapes(tmp_path):
  panels = {"Frey Face": _images(9, 28, 20), "MNIST": _images(9)}
  height, width, _ = _read_png(figures.plot_manifolds(panels, 3, tmp_path / "f4.png")).shape
  assert width > height > 300
  with pytest.raises(ValueError, match="panel 'MNIST': expected grid_size"):
    figures.plot_manifolds({"MNIST": _images(8)}, 3, tmp_path / "bad.png")


def test_plot_latent_scatter_writes_png_and_checks_shapes(tmp_path):
  z = np.random.default_rng(0).normal(size=(50, 2))
  labels = np.arange(50) % 10
  path = figures.plot_latent_scatter(
    {"a": (z, labels), "b": (z, labels)}, tmp_path / "s.png", "codes"
  )
  assert mpimg.imread(path).shape[1] > mpimg.imread(path).shape[0]  # two panels side by side
  with pytest.raises(ValueError, match=r"z \[n, 2\]"):
    figures.plot_latent_scatter({"a": (np.zeros((50, 3)), labels)}, tmp_path / "t.png", "x")
