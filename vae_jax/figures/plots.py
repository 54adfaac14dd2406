"""PNG figures of the paper: samples, reconstructions, learning curves, manifold.

Figures are drawn on `matplotlib.figure.Figure` objects rendered by the Agg
canvas, without pyplot: no display is needed, no backend is switched
globally, and no figure outlives its function.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

_DPI = 100
# Display inches per tile of an image grid: 28x28 MNIST digits get ~2x zoom,
# up to a width that still fits a screen or a page.
_INCHES_PER_TILE = 0.6
_MAX_WIDTH_INCHES = 12.0


def _check_images(images: np.ndarray, name: str = "images") -> np.ndarray:
  images = np.asarray(images, dtype=np.float32)
  if images.ndim != 3 or images.shape[0] == 0:
    raise ValueError(f"{name} must have shape [n, height, width] with n > 0, got {images.shape}.")
  return images


def _tile(images: np.ndarray, ncols: int, pad: int) -> np.ndarray:
  """Lays out images row-major on a canvas.

  Args:
    images: [n, height, width].
    ncols: Tiles per row; the last row is padded with blank tiles.
    pad: Pixels of white space between tiles.

  Returns:
    [nrows * (height + pad) - pad, ncols * (width + pad) - pad].
  """
  n, height, width = images.shape
  nrows = math.ceil(n / ncols)
  canvas = np.ones(
    (nrows * (height + pad) - pad, ncols * (width + pad) - pad),
    dtype=np.float32,
  )
  for index, image in enumerate(images):
    row, col = divmod(index, ncols)
    top, left = row * (height + pad), col * (width + pad)
    canvas[top : top + height, left : left + width] = image
  return canvas


def _save(fig: Figure, path: str | os.PathLike[str], gray: bool = False) -> str:
  """Writes `fig` as a PNG; with `gray`, as one gray channel instead of RGBA."""
  # Attaching the canvas renders with Agg whatever the default backend is.
  canvas = FigureCanvasAgg(fig)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if gray:
    # Image mosaics are gray pictures and black text: one channel keeps a
    # large grid of faces at half the file size of RGBA.
    canvas.draw()
    Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("L").save(path, format="png")
  else:
    fig.savefig(path, format="png", dpi=_DPI)
  return os.fspath(path)


def _mosaic_figure(
  canvases: Mapping[str, np.ndarray], ncols: int, title: str | None = None
) -> Figure:
  """A figure showing each canvas ([rows, cols] in [0, 1]) in gray, no ticks.

  Args:
    canvases: {panel title: canvas}, drawn side by side in this order.
    ncols: Tiles per canvas row, which sets the display width.
    title: Figure title above the panels; None for none.
  """
  # The panels split the figure's width (at most _MAX_WIDTH_INCHES) in
  # proportion to their canvases' widths, so that all are drawn at one scale.
  width = min(_MAX_WIDTH_INCHES, len(canvases) * max(4.0, _INCHES_PER_TILE * ncols))
  widths = [canvas.shape[1] for canvas in canvases.values()]
  tallest = max(canvas.shape[0] for canvas in canvases.values())
  # 0.5 inch above the images for their titles, 0.4 more for a figure title.
  height = width * tallest / sum(widths) + 0.5 + (0.4 if title else 0.0)
  fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(canvases), gridspec_kw={"width_ratios": widths}))
  for ax, (panel, canvas) in zip(axes, canvases.items(), strict=False):
    # Values outside [0, 1] (e.g. Gaussian decoder means) saturate.
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(panel)
  if title:
    fig.suptitle(title)
  return fig


def plot_image_grids(
  panels: Mapping[str, np.ndarray],
  path: str | os.PathLike[str],
  ncols: int = 10,
  title: str | None = None,
) -> str:
  """Writes one image grid per panel, side by side; returns `path`.

  Args:
    panels: {panel title: images [n, height, width] in [0, 1]}; the paper's
      Fig. 5 has one panel of samples per latent size.
    path: PNG file to write.
    ncols: Images per grid row (at most the smallest panel's n).
    title: Figure title above the panels.
  """
  if not panels:
    raise ValueError("No panels to plot.")
  panels = {name: _check_images(images, f"panel {name!r}") for name, images in panels.items()}
  ncols = min(ncols, *(images.shape[0] for images in panels.values()))
  canvases = {name: _tile(images, ncols, pad=1) for name, images in panels.items()}
  return _save(_mosaic_figure(canvases, ncols, title), path, gray=True)


def plot_image_grid(
  images: np.ndarray,
  path: str | os.PathLike[str],
  ncols: int = 10,
  title: str = "Samples from the generative model",
) -> str:
  """Writes `images` ([n, height, width], in [0, 1]) as a grid; returns `path`."""
  return plot_image_grids({title: images}, path, ncols)


def plot_reconstructions(
  originals: np.ndarray,
  reconstructions: np.ndarray,
  path: str | os.PathLike[str],
  ncols: int = 10,
  title: str = "Data and reconstructions",
) -> str:
  """Writes originals above their reconstructions; returns `path`.

  Args:
    originals: [n, height, width] in [0, 1].
    reconstructions: [n, height, width] in [0, 1], same order.
    path: PNG file to write.
    ncols: Pairs per row; with more than `ncols` pairs, blocks of an originals
      row followed by a reconstructions row are stacked.
    title: Figure title.
  """
  originals = _check_images(originals, "originals")
  reconstructions = _check_images(reconstructions, "reconstructions")
  if originals.shape != reconstructions.shape:
    raise ValueError(
      f"originals {originals.shape} and reconstructions"
      f" {reconstructions.shape} must have the same shape."
    )
  n, height, width = originals.shape
  ncols = min(ncols, n)
  num_blocks = math.ceil(n / ncols)
  blank = np.ones((num_blocks * ncols - n, height, width), np.float32)
  originals = np.concatenate([originals, blank]).reshape(num_blocks, ncols, height, width)
  reconstructions = np.concatenate([reconstructions, blank]).reshape(
    num_blocks, ncols, height, width
  )
  interleaved = np.stack([originals, reconstructions], axis=1).reshape(-1, height, width)
  fig = _mosaic_figure({title: _tile(interleaved, ncols, pad=1)}, ncols)
  ax = fig.axes[0]
  row_centers = (np.arange(2 * num_blocks) * (height + 1)) + (height - 1) / 2
  ax.set_yticks(row_centers, ["data", "recon."] * num_blocks)
  # Row labels only: tick marks would clutter the image grid.
  ax.tick_params(axis="y", length=0)
  return _save(fig, path, gray=True)


def _finite_points(
  records: Sequence[Mapping[str, Any]], key: str, x_key: str = "samples_seen"
) -> tuple[np.ndarray, np.ndarray]:
  """(records[x_key], records[key]) over records where both are plottable."""
  points = sorted(
    (float(r[x_key]), float(r[key]))
    for r in records
    if r.get(key) is not None
    and r.get(x_key) is not None
    and math.isfinite(r[key])
    # A log axis cannot show the evaluation before any training.
    and r[x_key] > 0
  )
  return np.array([x for x, _ in points]), np.array([y for _, y in points])


_BOUND_CURVES = (("train_bound", "train", "-"), ("test_bound", "test", "--"))


def _draw_bound_curves(ax, records, label: str = "", color=None, curves=_BOUND_CURVES) -> bool:
  """Train (solid) and test (dashed) curves, by default the bounds, on `ax`;
  False if nothing drawn. curves: (record key, name, line style) triples."""
  plotted = False
  for key, name, style in curves:
    x, y = _finite_points(records, key)
    if x.size:
      ax.plot(x, y, style, color=color, label=f"{label} ({name})" if label else name)
      plotted = True
  return plotted


_BOUND_LABEL = "Lower bound per example (nats)"


def _bound_axes(ax, title: str, ylabel: str = _BOUND_LABEL) -> None:
  ax.set_xscale("log")
  ax.set_xlabel("Training samples evaluated")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()


def learning_curve_figure(
  records: Sequence[Mapping[str, Any]],
  title: str = "Variational lower bound",
) -> Figure:
  """Lower bound per example vs. training samples evaluated, log x-axis.

  Args:
    records: Dicts with `samples_seen` and `train_bound` and/or `test_bound`
      (nats per example); records missing a value, or with `None`/NaN, are
      left out of that curve. Order does not matter.
    title: Figure title.

  Raises:
    ValueError: if no record has a plottable bound.
  """
  fig = Figure(figsize=(6.4, 4.8), dpi=_DPI, layout="constrained")
  ax = fig.add_subplot()
  if not _draw_bound_curves(ax, records):
    raise ValueError("No record has samples_seen > 0 and a finite train_bound or test_bound.")
  _bound_axes(ax, title)
  return fig


def plot_bound_comparison(
  panels: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
  path: str | os.PathLike[str],
  title: str,
  value: str = "bound",
  ylabel: str = _BOUND_LABEL,
) -> str:
  """The paper's Figs. 2 and 3 layout: one panel per setting, one colour per
  method, train (solid) and test (dashed).

  Args:
    panels: {panel title: {method label: metrics records}}, records with
      `samples_seen` and `train_<value>` / `test_<value>` as for
      `learning_curve_figure`; a method without plottable records is left out.
    path: where to write the PNG.
    title: figure title.
    value: which records' values to plot: "bound" (Fig. 2), or e.g.
      "log_likelihood" (Fig. 3).
    ylabel: the y-axis label.
  """
  curves = [(f"{split}_{value}", split, style) for split, style in (("train", "-"), ("test", "--"))]
  fig = Figure(figsize=(4.2 * len(panels), 4.2), dpi=_DPI, layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  colors = [f"C{i}" for i in range(10)]
  for ax, (panel, methods) in zip(axes, panels.items(), strict=False):
    for color, (method, records) in zip(colors, methods.items(), strict=False):
      _draw_bound_curves(ax, records, method, color, curves)
    _bound_axes(ax, panel, ylabel)
  fig.suptitle(title)
  return _save(fig, path)


def plot_learning_curve(
  records: Sequence[Mapping[str, Any]],
  path: str | os.PathLike[str],
  title: str = "Variational lower bound",
) -> str:
  """Writes `learning_curve_figure(records, title)` to `path`; returns it."""
  return _save(learning_curve_figure(records, title), path)


def plot_curve_by_epoch(
  records: Sequence[Mapping[str, Any]],
  path: str | os.PathLike[str],
  title: str,
  reference: tuple[str, float] | None = None,
) -> str:
  """The train and test bounds at every evaluation and the k-sample test
  log-likelihood where it was estimated, against epochs on a log axis.

  Args:
    records: metrics records with `epoch` and any of `train_bound`,
      `test_bound`, `test_log_likelihood` (nats per example); epoch 0 and
      missing or non-finite values are left out.
    path: where to write the PNG.
    title: figure title.
    reference: (label, nats) drawn as a horizontal line, e.g. a published value.
  """
  fig = Figure(figsize=(7.0, 4.8), dpi=_DPI, layout="constrained")
  ax = fig.add_subplot()
  for key, label, style in (
    ("train_bound", "train bound", "-"),
    ("test_bound", "test bound", "--"),
    ("test_log_likelihood", "test log-likelihood (k-sample estimate)", "o"),
  ):
    epochs, values = _finite_points(records, key, "epoch")
    if epochs.size:
      ax.plot(epochs, values, style, label=label)
  if not ax.lines:
    raise ValueError("No record has epoch > 0 and a finite bound or log-likelihood.")
  if reference is not None:
    ax.axhline(reference[1], color="black", linestyle=":", label=reference[0])
  ax.set_xscale("log")
  ax.set_xlabel("Epochs")
  ax.set_ylabel("Nats per test or training example")
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  return _save(fig, path)


def manifold_latents(grid_size: int) -> jax.Array:
  """Latent coordinates of the paper's Fig. 4 grid.

  The probabilities i / (grid_size + 1), i = 1..grid_size, equally spaced in
  the open interval (0, 1), are mapped through the standard normal inverse
  CDF, so that each cell covers equal prior mass.

  Returns:
    [grid_size**2, 2] float32, row-major over the displayed grid: z_1 grows
    left to right along a row, z_2 grows bottom to top, as on a plot.
  """
  if grid_size < 1:
    raise ValueError(f"grid_size must be >= 1, got {grid_size}.")
  # NumPy and the standard library's inverse CDF: eager JAX would compile
  # every operation of these few numbers (more than a second on a CPU).
  coordinates = np.array(
    [NormalDist().inv_cdf(i / (grid_size + 1)) for i in range(1, grid_size + 1)], np.float32
  )
  z2, z1 = np.meshgrid(coordinates[::-1], coordinates, indexing="ij")
  return jnp.asarray(np.stack([z1.ravel(), z2.ravel()], axis=-1))


def manifold_grid(
  decode_mean_fn: Callable[[jax.Array], jax.Array],
  grid_size: int,
  image_shape: tuple[int, int],
) -> np.ndarray:
  """Decodes the `manifold_latents` grid of a model with a 2-D latent space.

  Args:
    decode_mean_fn: z [n, 2] -> decoder means [n, height * width].
    grid_size: Tiles per side.
    image_shape: (height, width) of one image.

  Returns:
    [grid_size**2, height, width], in `manifold_latents` order.
  """
  means = np.asarray(decode_mean_fn(manifold_latents(grid_size)))
  return means.reshape(grid_size * grid_size, *image_shape)


def plot_manifolds(
  panels: Mapping[str, np.ndarray],
  grid_size: int,
  path: str | os.PathLike[str],
  title: str | None = None,
) -> str:
  """Writes `manifold_grid` outputs side by side (the paper's Fig. 4); returns `path`.

  Args:
    panels: {panel title: images [grid_size**2, height, width] in [0, 1]},
      e.g. one learned manifold per data set.
    grid_size: Tiles per side of each square grid.
    path: PNG file to write.
    title: Figure title above the panels.
  """
  if not panels:
    raise ValueError("No panels to plot.")
  canvases = {}
  for name, images in panels.items():
    images = _check_images(images, f"panel {name!r}")
    if images.shape[0] != grid_size * grid_size:
      raise ValueError(
        f"panel {name!r}: expected grid_size**2 = {grid_size**2} images, got {images.shape[0]}."
      )
    canvases[name] = _tile(images, grid_size, pad=0)
  fig = _mosaic_figure(canvases, grid_size, title)
  for ax in fig.axes:
    ax.set_xlabel("$z_1$ (increasing to the right)")
    ax.set_ylabel("$z_2$ (increasing upwards)")
  return _save(fig, path, gray=True)


def plot_manifold(
  images: np.ndarray,
  grid_size: int,
  path: str | os.PathLike[str],
  title: str = "Learned data manifold",
) -> str:
  """Writes `manifold_grid` output ([grid_size**2, h, w]) as a square grid."""
  return plot_manifolds({title: images}, grid_size, path)


VARIANCE_PANELS = (
  ("bound_variance", "Var[bound estimate] (nats$^2$)"),
  ("encoder_variance", "tr Cov[encoder gradient]"),
  ("decoder_variance", "tr Cov[decoder gradient]"),
)


SNR_PANELS = (
  ("encoder_snr", "encoder SNR, |E g| / sqrt(tr Cov)"),
  ("decoder_snr", "decoder SNR, |E g| / sqrt(tr Cov)"),
  ("encoder_parameter_snr", "encoder SNR per parameter"),
  ("decoder_parameter_snr", "decoder SNR per parameter"),
)


def plot_variance_vs_samples(
  rows: Sequence[Mapping[str, Any]],
  path: str | os.PathLike[str],
  title: str = "Estimator variance",
  panels: Sequence[tuple[str, str]] = VARIANCE_PANELS,
) -> str:
  """A figure of each row against L on log-log axes, one line per estimator.

  Args:
    rows: dicts with `estimator`, `num_samples` (L) and, for each key of
      `panels`, a value and `<key>_ci` (95% half-width, drawn as error
      bars). Rows of one stage only.
    path: where to write the PNG.
    title: figure title.
    panels: (key, axis label) per panel: `VARIANCE_PANELS`, `SNR_PANELS`.
  """
  fig = Figure(figsize=(5 * len(panels), 4.5), dpi=_DPI, layout="constrained")
  axes = fig.subplots(1, len(panels))
  for ax, (key, label) in zip(axes, panels, strict=True):
    for estimator in dict.fromkeys(r["estimator"] for r in rows):
      points = sorted(
        (r["num_samples"], r[key], r[f"{key}_ci"])
        for r in rows
        if r["estimator"] == estimator and r[key] > 0
      )
      if points:
        L, value, ci = (np.array(column, float) for column in zip(*points, strict=False))
        ax.errorbar(L, value, yerr=np.nan_to_num(ci), marker="o", capsize=3, label=estimator)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Samples per example L")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend()
  fig.suptitle(title)
  return _save(fig, path)


def plot_latent_scatter(
  panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
  path: str | os.PathLike[str],
  title: str,
) -> str:
  """2-D latent codes coloured by class, one panel per model; returns `path`.

  Args:
    panels: {panel title: (z [n, 2] codes, e.g. encoder means of test data,
      labels [n] int class of each)}.
    path: PNG file to write.
    title: figure title.
  """
  if not panels:
    raise ValueError("No panels to plot.")
  fig = Figure(figsize=(4.2 * len(panels) + 0.8, 4.2), dpi=_DPI, layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  for ax, (panel, (z, labels)) in zip(axes, panels.items(), strict=False):
    z, labels = np.asarray(z), np.asarray(labels)
    if z.ndim != 2 or z.shape[1] != 2 or labels.shape != z.shape[:1]:
      raise ValueError(
        f"panel {panel!r}: expected z [n, 2] and labels [n], got {z.shape}, {labels.shape}."
      )
    points = ax.scatter(
      z[:, 0], z[:, 1], c=labels, cmap="tab10", s=3, vmin=-0.5, vmax=9.5, rasterized=True
    )
    ax.set_title(panel)
    ax.set_xlabel("z1")
    ax.set_ylabel("z2")
  fig.colorbar(points, ax=axes.tolist(), ticks=range(10), label="class")
  fig.suptitle(title)
  return _save(fig, path)
