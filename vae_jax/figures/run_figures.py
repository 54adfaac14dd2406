"""The loop hook that draws a VAE run's figures when its training ends."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from vae_jax.data import Dataset
from vae_jax.figures import images, plots
from vae_jax.models.vae import VAE
from vae_jax.training.loop import Hook
from vae_jax.training.run import RunConfig, host_params, train_and_evaluate
from vae_jax.training.state import TrainConfig, TrainState

NUM_FIGURE_EXAMPLES = 50
NUM_RECONSTRUCTIONS = 20


class RunFigures(Hook):
  """Writes samples.png, reconstructions.png (of test examples, from their
  posterior means), learning_curve.png and, for J = 2, manifold.png into
  the work directory; figures show run 0 of several. In process 0 only, on
  the host, so that plotting runs no program the other processes skip."""

  def __init__(
    self,
    model: VAE,
    test_data: np.ndarray,
    image_shape: tuple[int, int],
    workdir: str,
    key: jax.Array,
    log: Callable[[str], None] = print,
  ):
    self._model = model
    self._test_data = test_data
    self._image_shape = image_shape
    self._workdir = workdir
    self._key = key
    self._log = log

  def on_end(self, state: Any, history: Sequence[dict[str, Any]]) -> None:
    if jax.process_index() != 0:
      return
    written = write_figures(
      self._model,
      host_params(state),
      self._test_data,
      self._image_shape,
      self._workdir,
      self._key,
      history,
    )
    self._log("Figures: " + ", ".join(written))


def write_figures(
  model: VAE,
  params: Any,
  test_data: np.ndarray,
  image_shape: tuple[int, int],
  workdir: str,
  key: jax.Array,
  history: Sequence[dict[str, Any]],
) -> list[str]:
  """Samples, reconstructions, learning curve (if trained), 2-D manifold; the paths."""
  path = lambda name: os.path.join(workdir, name)  # noqa: E731
  paths = [
    plots.plot_image_grid(
      images.sample_images(model, params, key, NUM_FIGURE_EXAMPLES, image_shape),
      path("samples.png"),
    ),
    plots.plot_reconstructions(
      *images.reconstruction_images(
        model, params, np.asarray(test_data[:NUM_RECONSTRUCTIONS]), image_shape
      ),
      path("reconstructions.png"),
    ),
  ]
  if any(record["samples_seen"] > 0 for record in history):
    paths.append(plots.plot_learning_curve(history, path("learning_curve.png")))
  if model.latent_dim == 2:
    paths.append(
      plots.plot_manifold(
        images.manifold_images(model, params, image_shape),
        images.MANIFOLD_GRID_SIZE,
        path("manifold.png"),
      )
    )
  return paths


def train_and_draw(
  model: VAE,
  config: TrainConfig,
  run: RunConfig,
  dataset: Dataset,
  log: Callable[[str], None] = print,
  hooks: Sequence[Hook] = (),
) -> TrainState:
  """`train_and_evaluate` on the data set, with its figures (`RunFigures`,
  drawn with the key seed + 2) in the run directory and `hooks`: a runner's
  VAE run."""
  figures = RunFigures(
    model, dataset.test, dataset.image_shape, run.workdir, jax.random.key(run.seed + 2), log=log
  )
  return train_and_evaluate(
    model, config, run, dataset.train, dataset.test, hooks=[*hooks, figures], log=log
  )
