"""A whole training run in a work directory: resume, evaluate, log, checkpoint, plot.

`train_and_evaluate` is what `python -m experiments.train` calls once the
flags are parsed; it takes plain values, so notebooks and scripts can call it
too. The work directory holds:

  run_config.json   the model and optimiser settings (a resumed run must match)
  metrics.jsonl     one record per evaluation (see `vae_jax.metrics`)
  checkpoints/      orbax checkpoints of the `TrainState`, the last few kept
  *.png             samples, reconstructions, learning curve, 2-D manifold

Several processes (`jax.distributed.initialize`, one per host) call
`train_and_evaluate` with the same arguments and work directory, which must be
on a file system every process sees: all of them take part in training,
evaluation and the orbax checkpoints, and process 0 alone writes the other
files and the log lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from vae_jax import api, figures, training
from vae_jax.checkpoints import Checkpointer
from vae_jax.data.transforms import binarize
from vae_jax.metrics import MetricsWriter, ProgressLogger, read_metrics
from vae_jax.models import VAE

# The evaluation data of a dynamically binarised set is binarised once, with
# this fixed key, so that runs with different seeds are scored on the same bits.
EVAL_BINARIZATION_SEED = 0
NUM_FIGURE_EXAMPLES = 50
MANIFOLD_GRID_SIZE = 20


class TrainingDivergedError(RuntimeError):
  """The bound became NaN or infinite; the last good checkpoint is kept."""


class RunSettingsMismatchError(ValueError):
  """The work directory holds a run with other settings; nothing was changed."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Where and for how long to train.

  Attributes:
    workdir: the run directory; an existing run there is resumed.
    num_epochs: total passes over the training set (a resumed run trains
      only the missing ones).
    eval_every: evaluate, checkpoint and log every this many epochs.
    seed: seeds parameters, shuffling, binarisation and the noise eps.
    keep_checkpoints: how many recent checkpoints to keep.
    eval_batch_size: examples per evaluation batch.
    num_devices: devices to split each minibatch over (data-parallel); with
      several processes, devices of all of them, a multiple of their number.
      With several runs (`multi_run`), the devices of this process to split
      the runs over instead, a divisor of their number.
    num_runs: independent runs (seeds seed, seed + 1, ...) trained together
      by one vmapped program; metrics give their mean and each run's bound,
      examples_per_second counts every run's examples, figures show run 0.
    learning_rates: a learning-rate sweep: `num_runs` seeds at each of these
      rates (in place of the TrainConfig's; with a schedule, its starting
      rate), all in the one vmapped program, ordered as `runs` says; ()
      for none.
    log_likelihood_samples: k of the importance-sampled test log-likelihood
      (`api.make_log_likelihood_estimate`) logged after the last epoch as
      "test_log_likelihood"; 0 skips it.
  """

  workdir: str
  num_epochs: int
  eval_every: int = 1
  seed: int = 0
  keep_checkpoints: int = 3
  eval_batch_size: int = 1000
  num_devices: int = 1
  num_runs: int = 1
  learning_rates: tuple[float, ...] = ()
  log_likelihood_samples: int = 0

  @property
  def runs(self) -> list[dict[str, Any]]:
    """Each run's {"seed": ..., "learning_rate": ...} in the order of the
    vmapped axis and of the metrics' "_run<i>" names: the rates of a sweep
    outer, the seeds inner; "learning_rate" is None without a sweep."""
    seeds = [self.seed + i for i in range(self.num_runs)]
    return [{"seed": seed, "learning_rate": rate}
            for rate in (self.learning_rates or (None,)) for seed in seeds]

  @property
  def multi_run(self) -> bool:
    """Whether training is the vmapped program of several runs (or a sweep)."""
    return self.num_runs > 1 or bool(self.learning_rates)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"train": {"learning_rate": 0.1}} -> {"train.learning_rate": 0.1}."""
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{name}."))
    else:
      flat[prefix + name] = value
  return flat


def check_run_settings(
    model: VAE, config: training.TrainConfig, run: RunConfig, write: bool = False
) -> None:
  """Raises RunSettingsMismatchError unless `run.workdir` is new or holds a
  run with these settings; with `write`, a new run's are written to its
  run_config.json. `train_and_evaluate` calls it (writing) before anything
  else; a runner calls it first to write nothing into another run's
  directory."""
  _check_run_config(
      run.workdir, describe(model, config, run.seed, run.num_runs, run.learning_rates), write
  )


def _check_run_config(
    workdir: str, description: dict[str, Any], write: bool,
    defaults: dict[str, Any] | None = None,
) -> None:
  """Checks the settings against the run being resumed; a new run's are
  written if `write`. They are compared as they read back from JSON (a
  tuple as the list it is saved as). `defaults`: settings (as `description`
  nests them) that a run saved before they existed trained with; a
  TrainConfig's under "train" always count."""
  description = json.loads(json.dumps(description))
  path = os.path.join(workdir, "run_config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
    # A training setting added after the run was saved reads as its default,
    # which is how that run trained, so that older runs still resume.
    now = _flatten(description)
    defaults = _flatten(json.loads(json.dumps(
        {"train": dataclasses.asdict(training.TrainConfig()), **(defaults or {})})))
    saved = {**{name: value for name, value in defaults.items() if name in now},
             **_flatten(saved)}
    differences = [
        f"{name}: saved {saved.get(name)!r}, now {now.get(name)!r}"
        for name in sorted(saved.keys() | now.keys())
        if saved.get(name) != now.get(name)
    ]
    if differences:
      raise RunSettingsMismatchError(
          f"{workdir} holds a run with other settings; use another --workdir or "
          "the same settings. Differences:\n  " + "\n  ".join(differences)
      )
    return
  if not write:
    return
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(description, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


def completed_steps(state: training.TrainState) -> int:
  """Minibatch updates done; the runs of a multi-run state move in lockstep."""
  return int(np.max(state.step))


def _module_settings(module) -> dict[str, Any]:
  return {
      field.name: getattr(module, field.name)
      for field in dataclasses.fields(module)
      if field.name not in ("parent", "name")
  }


def describe_parts(**parts: Any) -> dict[str, Any]:
  """Settings of a run that `describe` does not cover (another model, a
  runner's own configuration), as they read back from JSON: a Flax module
  becomes its fields, any other dataclass `dataclasses.asdict`. A TrainConfig
  goes under "train", where a field added later reads as its default."""
  def settings_of(value):
    if isinstance(value, nn.Module):
      return _module_settings(value)
    if dataclasses.is_dataclass(value):
      return dataclasses.asdict(value)
    return value

  return json.loads(json.dumps({name: settings_of(value) for name, value in parts.items()}))


def describe(
    model: VAE, config: training.TrainConfig, seed: int, num_runs: int = 1,
    learning_rates: tuple[float, ...] = (),
) -> dict[str, Any]:
  """The settings that define a run, as they read back from JSON."""
  settings = {
      "encoder": _module_settings(model.encoder),
      "decoder": _module_settings(model.decoder),
      "likelihood": model.likelihood,
      "train": dataclasses.asdict(config),
      "seed": seed,
      "num_runs": num_runs,
  }
  if learning_rates:  # absent otherwise, as in the runs saved before sweeps existed
    settings["learning_rates"] = list(learning_rates)
  return json.loads(json.dumps(settings))


def images(flat: np.ndarray, image_shape: tuple[int, int], model: VAE) -> np.ndarray:
  """Data or decoder means as intensities in [0, 1]: [N, height, width]. A
  Categorical model's values are levels in [0, K - 1], scaled by 1 / (K - 1)."""
  levels = model.decoder.num_categories - 1 if model.likelihood == "categorical" else 1
  intensities = np.asarray(flat, np.float32) / np.float32(levels)
  return np.clip(intensities, 0.0, 1.0).reshape(-1, *image_shape)


def sample_images(
    model: VAE, params: Any, key: jax.Array, num: int, image_shape: tuple[int, int]
) -> np.ndarray:
  """[num, height, width]: decoder means E[x|z] at z ~ N(0, I), clipped to [0, 1]."""
  return images(api.sample(model, params, key, num), image_shape, model)


def manifold_images(
    model: VAE, params: Any, image_shape: tuple[int, int],
    grid_size: int = MANIFOLD_GRID_SIZE,
) -> np.ndarray:
  """[grid_size**2, height, width]: decoder means over `figures.manifold_latents`
  (a model with J = 2), clipped to [0, 1]."""
  grid = figures.manifold_grid(
      lambda z: api.decode_mean(model, params, z), grid_size, image_shape
  )
  return images(grid, image_shape, model)


def reconstruction_images(
    model: VAE, params: Any, x: np.ndarray, image_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
  """(x, E[x | z = encoder mean of x]) as images [n, height, width] in [0, 1]."""
  mean, _ = api.encode(model, params, x)
  return (images(x, image_shape, model),
          images(api.decode_mean(model, params, mean), image_shape, model))


def host_params(state: training.TrainState) -> Any:
  """The parameters of the state's run 0 (`RunConfig.runs`), on the host."""
  params = jax.device_get(state.params)
  if np.ndim(state.step):  # the state of several runs, stacked
    params = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
  return params


def write_figures(
    model: VAE,
    params: Any,
    test_data: np.ndarray,
    image_shape: tuple[int, int],
    workdir: str,
    key: jax.Array,
) -> list[str]:
  """Samples, reconstructions (posterior means), learning curve, 2-D manifold."""
  paths = [
      figures.plot_image_grid(
          sample_images(model, params, key, NUM_FIGURE_EXAMPLES, image_shape),
          os.path.join(workdir, "samples.png"),
      )
  ]
  paths.append(
      figures.plot_reconstructions(
          *reconstruction_images(model, params, test_data[:20], image_shape),
          os.path.join(workdir, "reconstructions.png"),
      )
  )
  records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  if any(record["samples_seen"] > 0 for record in records):
    paths.append(
        figures.plot_learning_curve(
            records, os.path.join(workdir, "learning_curve.png")
        )
    )
  if model.latent_dim == 2:
    paths.append(
        figures.plot_manifold(
            manifold_images(model, params, image_shape), MANIFOLD_GRID_SIZE,
            os.path.join(workdir, "manifold.png"),
        )
    )
  return paths


def train_epochs_resumably(
    workdir: str,
    state: Any,
    epoch: Callable[[Any], tuple[Any, Any]],
    num_epochs: int,
    evaluate_at: Callable[[int], bool],
    score: Callable[[Any, int, Any], dict[str, Any]],
    samples_per_epoch: int,
    keep_checkpoints: int = 1,
    log: Callable[[str], None] = print,
    *,
    settings: dict[str, Any],
    setting_defaults: dict[str, Any] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
  """Runs `epoch` up to `num_epochs` epochs in `workdir`, resuming there.

  `settings` define the run (`describe`, `describe_parts`): a new run writes
  them to <workdir>/run_config.json, and a workdir holding a run with other
  settings raises `RunSettingsMismatchError` before anything is restored or
  written, as in `train_and_evaluate`. A setting missing from a saved run
  (added to the code after it) reads as its value in `setting_defaults`
  (nested as `settings`; a TrainConfig's defaults always count).

  A run of a runner that is not `train_and_evaluate` (Fig. 3's methods, M2):
  the state is restored from the last checkpoint in <workdir>/checkpoints if
  there is one (`state` is the template), then each epoch `number` runs
  `state, aux = epoch(state)`; where `evaluate_at(number)` (and after the
  last epoch), `score(state, number, aux)` gives the metrics written to
  <workdir>/metrics.jsonl with "samples_seen" and the training "seconds"
  (the epochs alone), and the state is checkpointed. `score` may raise
  (e.g. `TrainingDivergedError`): the last checkpoint stays. So does a NaN
  or infinite floating value in any epoch's `aux` (its per-step bounds,
  objectives or acceptance rates), which raises `TrainingDivergedError` in
  that epoch rather than at the next evaluation, or in the scores, which
  raises it before they are written or the state is checkpointed (as in
  `train_and_evaluate`).

  Returns:
    (the final state, every metrics record of the run).
  """
  os.makedirs(workdir, exist_ok=True)
  _check_run_config(workdir, settings, write=True, defaults=setting_defaults)
  with Checkpointer(os.path.join(workdir, "checkpoints"),
                    max_to_keep=keep_checkpoints) as checkpointer:
    done = checkpointer.latest_step() or 0
    if done:
      state = checkpointer.restore(state)
      log(f"Resumed {workdir} from epoch {done}")
    with MetricsWriter(workdir, resume_step=done) as writer:
      records = read_metrics(writer.path)
      seconds = records[-1]["seconds"] if records else 0.0
      for number in range(done + 1, num_epochs + 1):
        started = time.perf_counter()
        state, aux = jax.block_until_ready(epoch(state))
        seconds += time.perf_counter() - started
        _check_finite(aux, number, workdir, checkpointer.latest_step())
        if not evaluate_at(number) and number != num_epochs:
          continue
        scores = score(state, number, aux)
        _check_finite(scores, number, workdir, checkpointer.latest_step(), "evaluated")
        writer.write(number, {"samples_seen": number * samples_per_epoch, **scores,
                              "seconds": seconds})
        checkpointer.save(number, state)
  return state, read_metrics(writer.path)


def _check_finite(outputs: Any, epoch: int, workdir: str, last_checkpoint: int | None,
                  kind: str = "training") -> None:
  """Raises `TrainingDivergedError` if a floating value of an epoch's
  `outputs` (a pytree: per-step bounds, objectives, acceptance rates, or the
  evaluated scores with kind="evaluated") is NaN or infinite, naming the
  value, the epoch and the checkpoint that is kept."""
  for path, value in jax.tree_util.tree_leaves_with_path(outputs):
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
      raise TrainingDivergedError(
          f"The {kind} value {jax.tree_util.keystr(path) or '(bound)'} became "
          f"{value[~np.isfinite(value)].flat[0]} in epoch {epoch}; stopping. The last good "
          f"checkpoint (step {last_checkpoint}) is kept in {workdir}; lower the learning "
          "rate or set a variance floor, then rerun to resume.")


def binarize_for_evaluation(sets: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Each grey-level evaluation set [N, data_dim] binarised once, with keys
  fixed by EVAL_BINARIZATION_SEED and the set's position: every run and
  every evaluation scores the same bits."""
  key = jax.random.key(EVAL_BINARIZATION_SEED)
  return {name: binarize(jax.random.fold_in(key, i), data)
          for i, (name, data) in enumerate(sets.items())}


def train_and_evaluate(
    model: VAE,
    config: training.TrainConfig,
    run: RunConfig,
    train_data: np.ndarray,
    test_data: np.ndarray,
    image_shape: tuple[int, int],
    log: Callable[[str], None] = print,
) -> training.TrainState:
  """Trains `model` on `train_data`, resuming from `run.workdir` if possible.

  Args:
    model: the VAE.
    config: optimisation settings.
    run: work directory, budget, seed.
    train_data: [N, data_dim]; test_data: [N_test, data_dim]. Grey levels in
      [0, 1] when `config.dynamic_binarization`.
    image_shape: (height, width) of one example, for figures.
    log: receives human-readable progress lines (in process 0 only).

  Returns:
    The final train state.

  Raises:
    TrainingDivergedError: the bound became NaN/inf; the checkpoint of the
      last evaluation is kept and a rerun resumes from it.
  """
  for name, data in (("train_data", train_data), ("test_data", test_data)):
    try:
      api.check_data(data, model)
    except (ValueError, TypeError) as error:
      raise type(error)(f"{name}: {error}") from None
  # With several processes, process 0 alone writes files and logs.
  is_main = jax.process_index() == 0
  log = log if is_main else (lambda line: None)
  os.makedirs(run.workdir, exist_ok=True)
  check_run_settings(model, config, run, write=is_main)

  num_train = train_data.shape[0]
  steps_per_epoch = num_train // config.batch_size
  # One device of one process needs no mesh; several processes always use one
  # (`make_mesh` rejects a device count they cannot share).
  multi_device = run.num_devices > 1 or jax.process_count() > 1
  mesh = training.make_mesh(run.num_devices) if multi_device else None
  multi_run = run.multi_run
  train_epoch = training.make_train_epoch(
      model, config, num_train, mesh, multi_run,
      [r["learning_rate"] for r in run.runs] if run.learning_rates else None,
  )
  evaluate = training.make_evaluate(
      model,
      config.estimator,
      config.num_samples,
      run.eval_batch_size,
      multi_run,
      posterior=config.posterior_family,
  )
  place = jax.device_put if mesh is None else lambda tree: training.replicate(tree, mesh)
  train_data = place(train_data)
  eval_sets = {"train": train_data, "test": place(test_data)}
  if config.dynamic_binarization:
    eval_sets = binarize_for_evaluation(eval_sets)
  eval_key = jax.random.key(run.seed + 1)

  log_likelihood = training.make_evaluate(
      model, "iwae", run.log_likelihood_samples, run.eval_batch_size, multi_run,
      posterior=config.posterior_family,
  ) if run.log_likelihood_samples else None

  def evaluation(state, final=False):
    """{"train_bound": ..., "test_bound": ...}: means over the runs, and with
    several runs also each run's, as "train_bound_run<i>". With `final`, also
    the test log-likelihood estimate if configured."""
    scores = {}

    def record(name, values):
      means = np.atleast_1d(training.mean_nats(values))
      scores[name] = float(means.mean())
      if multi_run:
        scores.update({f"{name}_run{i}": float(m) for i, m in enumerate(means)})

    for name, data in eval_sets.items():
      record(f"{name}_bound", evaluate(state.params, data, eval_key))
    if final and log_likelihood is not None:
      record("test_log_likelihood", log_likelihood(state.params, eval_sets["test"], eval_key))
    return scores

  if multi_run:
    # Each run is seeded as the single run with its seed would be.
    keys = jax.numpy.stack([jax.random.key(r["seed"]) for r in run.runs])
    state = training.init_train_states(model, config, keys, num_train)
    log("Runs (the metrics' _run<i>): " + "; ".join(
        f"{i}: seed {r['seed']}" + (f", learning rate {r['learning_rate']:g}"
                                    if r["learning_rate"] is not None else "")
        for i, r in enumerate(run.runs)))
  else:
    state = training.init_train_state(model, config, jax.random.key(run.seed), num_train)
  # Placed before a restore, the state is its template, so that every process
  # restores straight into the devices of the mesh.
  state = training.shard_runs(state, mesh) if mesh is not None and multi_run else place(state)
  with Checkpointer(
      os.path.join(run.workdir, "checkpoints"), max_to_keep=run.keep_checkpoints
  ) as checkpointer:
    resume_step = checkpointer.latest_step()
    if resume_step is not None:
      state = checkpointer.restore(state)
      log(f"Resumed from the checkpoint at step {resume_step} in {run.workdir}.")
    start_step = completed_steps(state)
    start_epoch = start_step // steps_per_epoch
    if start_epoch < run.num_epochs:
      started = time.perf_counter()
      # Compiling ahead keeps compilation out of the first epoch's throughput.
      train_epoch = train_epoch.lower(state, train_data).compile()
      log(f"Compiled the training epoch in {time.perf_counter() - started:.1f} s.")
    total_steps = run.num_epochs * steps_per_epoch
    progress = ProgressLogger(
        total_steps,
        steps_per_epoch * run.eval_every,
        start_step=start_step,
        start_samples=start_step * config.batch_size,
        print_fn=log,
    )
    metrics_writer = (
        MetricsWriter(run.workdir, resume_step=resume_step)
        if is_main else contextlib.nullcontext()
    )
    with metrics_writer as writer:
      # The writer has dropped the records a killed run logged after the checkpoint.
      previous = read_metrics(writer.path) if writer and resume_step is not None else []
      train_seconds = previous[-1]["seconds"] if previous else 0.0
      if resume_step is None:
        scores = evaluation(state)  # every process takes part
        if writer:
          writer.write(0, {"epoch": 0, "samples_seen": 0, **scores,
                           "seconds": 0.0, "examples_per_second": None})
        checkpointer.save(0, state)
      if resume_step is not None and start_epoch >= run.num_epochs:
        log(f"{run.workdir} is already trained for {start_epoch} epochs; nothing to do.")
      round_bounds, round_seconds = [], 0.0
      for epoch in range(start_epoch + 1, run.num_epochs + 1):
        started = time.perf_counter()
        state, bounds = train_epoch(state, train_data)
        bounds = np.asarray(bounds)  # waits for the epoch to finish
        round_seconds += time.perf_counter() - started
        round_bounds.append(bounds)
        _check_finite(bounds, epoch, run.workdir, checkpointer.latest_step())
        if epoch % run.eval_every and epoch != run.num_epochs:
          continue
        step = completed_steps(state)
        scores = evaluation(state, final=epoch == run.num_epochs)
        _check_finite(scores, epoch, run.workdir, checkpointer.latest_step(), "evaluated")
        train_seconds += round_seconds
        examples = sum(b.size for b in round_bounds) * config.batch_size
        checkpointer.save(step, state)
        if writer:
          writer.write(step, {
              "epoch": epoch,
              "samples_seen": step * config.batch_size,
              **scores,
              "train_minibatch_bound": float(np.mean(np.concatenate(round_bounds))),
              "seconds": train_seconds,
              "examples_per_second": examples / round_seconds,
          })
        progress(step, step * config.batch_size, scores["train_bound"])
        log(f"epoch {epoch}: train bound {scores['train_bound']:.2f}, "
            f"test bound {scores['test_bound']:.2f} nats per example"
            + (f", test log-likelihood {scores['test_log_likelihood']:.2f} (k = "
               f"{run.log_likelihood_samples})" if "test_log_likelihood" in scores else ""))
        round_bounds, round_seconds = [], 0.0
  if is_main:
    # On the host, so that plotting runs no program the other processes skip.
    written = write_figures(
        model, host_params(state), np.asarray(eval_sets["test"]),
        image_shape, run.workdir, jax.random.key(run.seed + 2),
    )
    log("Figures: " + ", ".join(written))
  return state
