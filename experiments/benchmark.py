r"""Training and evaluation speed: `python -m experiments.benchmark [flags]`.

Times, on the default JAX device, the jitted train step and the scanned epoch
(`vae_jax.training.epoch.make_train_epoch`) of an MLP VAE across batch sizes,
estimators and L, plus whole-set evaluation, and compares the matmul FLOP rate
they reach with the device's own float32 matmul rate measured here. Prints a
markdown table and writes JSON (--output).

Data are random binary vectors: speed does not depend on their values, and no
data set has to be prepared. The defaults are the paper's MNIST model
(784-500-20, tanh, Bernoulli, N = 60000).

Example:
  python -m experiments.benchmark --batch_sizes=100,1000 --estimators=A,B --sample_counts=1,10
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import tables
from vae_jax import training
from vae_jax.math import estimators
from vae_jax.models import vae as models

_DATA_DIM = flags.DEFINE_integer("data_dim", 784, "D.", lower_bound=1)
_HIDDEN = flags.DEFINE_integer("hidden_size", 500, "Hidden width H (one layer).", lower_bound=1)
_LATENT_DIM = flags.DEFINE_integer("latent_dim", 20, "J.", lower_bound=1)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 60000, "Examples per epoch N.", lower_bound=1)
_NUM_EVAL = flags.DEFINE_integer("num_eval", 10000, "Examples evaluated.", lower_bound=1)
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["100"], "Minibatch sizes M.")
_ESTIMATORS = flags.DEFINE_list("estimators", ["B"], "Estimators to time.")
_SAMPLE_COUNTS = flags.DEFINE_list("sample_counts", ["1"], "Values of L.")
_EVAL_SAMPLE_COUNTS = flags.DEFINE_list(
  "eval_sample_counts",
  ["1", "100"],
  "k of the evaluation: B at k = 1, else the importance-sampled log-likelihood "
  "estimate (k = 5000 is the standard metric).",
)
_SAMPLES_PER_PASS = flags.DEFINE_integer(
  "samples_per_pass", 100, "Importance samples drawn at once per evaluated example.", lower_bound=1
)
_NUM_RUNS = flags.DEFINE_list(
  "num_runs",
  ["1"],
  "Numbers of independent runs trained as one vmapped program "
  "(first batch size and estimator, L = 1); runs/s is compared with one run.",
)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions (median reported).", lower_bound=1)
_MATMUL_SIZE = flags.DEFINE_integer(
  "matmul_size",
  0,
  "Side of the square float32 product that measures the matmul ceiling; "
  "0: 2048 on a CPU, 8192 on an accelerator (a 2048 product does not fill a GPU).",
  lower_bound=0,
)
_OUTPUT = flags.DEFINE_string("output", "benchmark.json", "Where to write the JSON results.")
_PROFILE_DIR = flags.DEFINE_string(
  "profile_dir",
  None,
  "If set, trace one epoch of the first configuration (first batch "
  "size, estimator and L) into this directory (open it with Perfetto or TensorBoard) and "
  "print where the epoch's time goes.",
)

flags.register_validator(
  "estimators",
  lambda names: bool(names) and set(names) <= set(estimators.ESTIMATORS),
  message=f"--estimators must be names from {sorted(estimators.ESTIMATORS)}.",
)
for _name in ("batch_sizes", "sample_counts", "eval_sample_counts", "num_runs"):
  flags.register_validator(
    _name,
    lambda values: bool(values) and all(v.isdigit() and int(v) > 0 for v in values),
    message=f"--{_name} must be comma-separated positive integers.",
  )


def matmul_flops_per_example(data_dim: int, hidden: int, latent: int, num_samples: int) -> float:
  """Forward + backward matmul FLOPs of one example (backward = 2 x forward).

  Encoder D->H->2J once, decoder J->H->D once per sample. For the paper's
  MNIST model at L = 1 this is 4.88 MFLOP.
  """
  encoder = data_dim * hidden + hidden * 2 * latent
  decoder = latent * hidden + hidden * data_dim
  return 3 * 2 * (encoder + num_samples * decoder)


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - started)
  return statistics.median(times)


def make_matmul_rate(size: int, repeats: int = 3) -> Callable[[], float]:
  """Returns `measure() -> FLOP/s`: the device's float32 matmul rate now, the
  median over `repeats` products of square [size, size] inputs, at JAX's
  default matmul precision (TF32 on recent NVIDIA GPUs, as in training)."""
  a, b = (
    jax.random.normal(k, (size, size), jnp.float32) for k in jax.random.split(jax.random.key(0))
  )
  product = jax.jit(jnp.matmul).lower(a, b).compile()
  jax.block_until_ready(product(a, b))
  return lambda: 2 * size**3 / _median_seconds(lambda: product(a, b), repeats)


def _peak_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()  # None on CPU
  return stats.get("peak_bytes_in_use") if stats else None


def _epoch_runner(epoch, state, data) -> Callable[[], jax.Array]:
  """`run()` trains one epoch from the state the last call left (the epoch
  donates its input state) and returns the epoch's bounds."""
  current = [state]

  def run():
    current[0], bounds = epoch(current[0], data)
    return bounds

  return run


def time_training(model, data, batch_size, estimator, num_samples, repeats, matmul_rate):
  """Epoch and step speed. The matmul rate is measured after every timed
  epoch, so that each epoch is compared with the machine as it was then (a
  shared machine's speed drifts between minutes); the fraction reported is
  the median over the repeats."""
  config = training.TrainConfig(batch_size=batch_size, estimator=estimator, num_samples=num_samples)
  state = training.init_train_state(model, config, jax.random.key(0))
  started = time.perf_counter()
  epoch = training.make_train_epoch(model, config, data.shape[0]).lower(state, data).compile()
  compile_seconds = time.perf_counter() - started
  step = jax.jit(training.make_train_step(model, config, data.shape[0]))
  batch, key = data[:batch_size], jax.random.key(1)
  jax.block_until_ready(step(state, batch, key))
  # Timed before the epochs, which donate (delete) this state's buffers.
  step_seconds = _median_seconds(lambda: step(state, batch, key), repeats)

  run_epoch = _epoch_runner(epoch, state, data)
  run_epoch()  # warm-up
  examples = (data.shape[0] // batch_size) * batch_size
  flops = examples * matmul_flops_per_example(
    model.data_dim, _HIDDEN.value, model.latent_dim, num_samples
  )
  epoch_seconds, fractions = [], []
  for _ in range(repeats):
    epoch_seconds.append(_median_seconds(run_epoch, 1))
    fractions.append(flops / epoch_seconds[-1] / matmul_rate())
  median_seconds = statistics.median(epoch_seconds)
  return {
    "batch_size": batch_size,
    "estimator": estimator,
    "num_samples": num_samples,
    "compile_seconds": compile_seconds,
    "epoch_ms": 1e3 * median_seconds,
    "epoch_examples_per_second": examples / median_seconds,
    "step_examples_per_second": batch_size / step_seconds,
    "fraction_of_matmul_rate": statistics.median(fractions),
  }


def time_runs(model, data, batch_size, estimator, num_runs, repeats):
  """Seconds per epoch of `num_runs` vmapped runs."""
  config = training.TrainConfig(batch_size=batch_size, estimator=estimator)
  keys = jax.random.split(jax.random.key(0), num_runs)
  state = training.init_train_states(model, config, keys)
  epoch = training.make_train_epoch(model, config, data.shape[0], multi_run=True)

  run_epoch = _epoch_runner(epoch, state, data)
  run_epoch()  # compiles and warms up
  return {"num_runs": num_runs, "epoch_ms": 1e3 * _median_seconds(run_epoch, repeats)}


# Ops are put in these groups by their compiled HLO line: matmuls first (a dot,
# a fusion whose root is a dot_general, a gemm fusion or library call), then the
# `jax.named_scope`s of `vae_jax.training`, then JAX's PRNG functions.
_SCOPES = {"optimizer_update": "optimizer update", "shuffle_and_binarize": "shuffle, binarise"}
_RANDOM = re.compile(r"threefry|_uniform|_normal|random_bits")
# The shape may be a tuple (a multi-output fusion): "%f = (f32[2]{0}, f32[2]{0}) fusion(".
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?[\w.\-]+ = (?:\([^=]*?\)|\S+) ([\w\-]+)\(")
_GEMM = re.compile(r"gemm|cublas|onednn|matmul", re.I)


def op_category(hlo_line: str) -> str:
  """The group of one compiled HLO instruction, from its text."""
  opcode = _INSTRUCTION.match(hlo_line)
  opcode = opcode.group(1) if opcode else ""
  name = re.search(r'op_name="([^"]*)"', hlo_line)
  name = name.group(1) if name else ""
  target = re.search(r'custom_call_target="([^"]*)"', hlo_line)
  called = re.search(r"calls=%([\w.\-]+)", hlo_line)
  if (
    opcode == "dot"
    or name.rsplit("/", 1)[-1] == "dot_general"
    or (target and _GEMM.search(target.group(1)))
    or (opcode == "fusion" and called and _GEMM.search(called.group(1)))
  ):
    return "matmuls"
  for scope, category in _SCOPES.items():
    if scope in name:
      return category
  if _RANDOM.search(name):
    return "random numbers"
  if opcode in ("while", "conditional"):
    return "loop control"
  # XLA:GPU pads operands to the matmul kernels' tile sizes (500 -> 512).
  if opcode in ("copy", "pad") or (called and called.group(1).startswith("fused_pad")):
    return "copies and padding"
  return "other ops (elementwise, reductions)"


def _exclusive_ns(events) -> dict[str, int]:
  """Time per event name on one timeline, minus the events nested inside it."""
  totals, stack = collections.Counter(), []
  for event in sorted(events, key=lambda e: (e.start_ns, -e.duration_ns)):
    while stack and stack[-1].end_ns <= event.start_ns:
      stack.pop()
    if stack:
      totals[stack[-1].name] -= event.duration_ns
    totals[event.name] += event.duration_ns
    stack.append(event)
  return totals


def hlo_name(name: str) -> str:
  """An HLO instruction's or GPU kernel's name in one spelling: a kernel is
  named after its instruction with "." and "-" made "_"."""
  return re.sub(r"[.\-]", "_", name)


def device_op_times(profile) -> tuple[dict[str, int], dict[str, int]]:
  """Nanoseconds and runs per HLO op (`hlo_name`): the kernels on the GPU's
  streams, else the exclusive time on the CPU's XLA thread-pool lines."""
  totals, counts = collections.Counter(), collections.Counter()
  gpu = [
    line
    for plane in profile.planes
    if plane.name.startswith("/device:GPU")
    for line in plane.lines
    if line.name.startswith("Stream")
  ]
  if gpu:
    # Kernels do not nest, but with programmatic dependent launch a kernel may
    # start before the one before it ends: their durations are summed as they are.
    for line in gpu:
      for event in line.events:
        totals[hlo_name(event.name)] += event.duration_ns
        counts[hlo_name(event.name)] += 1
    return totals, counts
  for plane in profile.planes:
    if plane.name == "/host:CPU":
      for line in plane.lines:
        if "XLA" in line.name and "Client" not in line.name:
          for name, ns in _exclusive_ns(line.events).items():
            totals[hlo_name(name)] += ns
          counts.update(hlo_name(event.name) for event in line.events)
  return totals, counts


def profile_epoch(model, data, batch_size, estimator, num_samples, trace_dir):
  """Traces one epoch and sorts its op time into `op_category` groups."""
  config = training.TrainConfig(batch_size=batch_size, estimator=estimator, num_samples=num_samples)
  state = training.init_train_state(model, config, jax.random.key(0))
  compiled = training.make_train_epoch(model, config, data.shape[0]).lower(state, data).compile()
  hlo = {
    hlo_name(m.group(1)): line
    for line in compiled.as_text().splitlines()
    if (m := re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line))
  }
  state, _ = compiled(state, data)
  jax.block_until_ready(state)
  with jax.profiler.trace(trace_dir):
    started = time.perf_counter()
    state, bounds = compiled(state, data)
    jax.block_until_ready(bounds)
    wall_ns = 1e9 * (time.perf_counter() - started)
  paths = sorted(
    glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime
  )
  times, counts = device_op_times(jax.profiler.ProfileData.from_file(paths[-1]))
  by_category = collections.Counter()
  for name, ns in times.items():
    if name in hlo:
      by_category[op_category(hlo[name])] += ns
  top = [
    (
      name,
      ns,
      re.search(r'op_name="([^"]*)"', hlo[name]).group(1) if 'op_name="' in hlo[name] else "",
    )
    for name, ns in times.most_common()
    if name in hlo
  ][:12]
  num_steps = data.shape[0] // batch_size
  return {
    "wall_ms": wall_ns / 1e6,
    "op_ms": sum(by_category.values()) / 1e6,
    "ops_per_step": sum(n for name, n in counts.items() if name in hlo) / num_steps,
    "categories": {c: ns / 1e6 for c, ns in by_category.most_common()},
    "top_ops": [{"op": n, "ms": ns / 1e6, "source": src} for n, ns, src in top],
  }


def time_evaluation(model, params, data, num_samples, repeats):
  estimator = "B" if num_samples == 1 else "iwae"
  evaluate = training.make_evaluate(
    model,
    estimator,
    num_samples,
    batch_size=min(1000, data.shape[0]),
    samples_per_pass=_SAMPLES_PER_PASS.value,
  )
  key = jax.random.key(2)
  jax.block_until_ready(evaluate(params, data, key))
  seconds = _median_seconds(lambda: evaluate(params, data, key), repeats)
  return {
    "estimator": estimator,
    "num_samples": num_samples,
    "seconds": seconds,
    "examples_per_second": data.shape[0] / seconds,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  model = models.make_vae(_DATA_DIM.value, _LATENT_DIM.value, hidden_sizes=(_HIDDEN.value,))
  rng = np.random.default_rng(0)
  data = jnp.asarray(rng.integers(0, 2, (_NUM_TRAIN.value, _DATA_DIM.value)), jnp.float32)
  eval_data = data[: _NUM_EVAL.value]
  matmul_size = _MATMUL_SIZE.value or (2048 if jax.devices()[0].platform == "cpu" else 8192)
  matmul_rate = make_matmul_rate(matmul_size)
  train_rows = [
    time_training(model, data, int(m), e, int(L), _REPEATS.value, matmul_rate)
    for m in _BATCH_SIZES.value
    for e in _ESTIMATORS.value
    for L in _SAMPLE_COUNTS.value
  ]
  run_rows = [
    time_runs(model, data, int(_BATCH_SIZES.value[0]), _ESTIMATORS.value[0], int(r), _REPEATS.value)
    for r in _NUM_RUNS.value
  ]
  params = training.init_train_state(model, training.TrainConfig(), jax.random.key(0)).params
  eval_rows = [
    time_evaluation(model, params, eval_data, int(k), _REPEATS.value)
    for k in _EVAL_SAMPLE_COUNTS.value
  ]
  profile = None
  if _PROFILE_DIR.value:
    profile = profile_epoch(
      model,
      data,
      int(_BATCH_SIZES.value[0]),
      _ESTIMATORS.value[0],
      int(_SAMPLE_COUNTS.value[0]),
      _PROFILE_DIR.value,
    )
  device = jax.devices()[0]
  results = {
    "device": f"{device.platform}: {device.device_kind}",
    "model": f"{_DATA_DIM.value}-{_HIDDEN.value}-{_LATENT_DIM.value}",
    "matmul_size": matmul_size,
    "matmul_flops_per_second": matmul_rate(),
    "peak_memory_bytes": _peak_memory_bytes(),
    "train": train_rows,
    "eval": eval_rows,
    "runs": run_rows,
    "profile": profile,
  }
  with open(_OUTPUT.value, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  print_results(results)
  if profile:
    print_profile(profile)


def print_results(results: dict) -> None:
  """The device line and the tables of training, vmapped runs and evaluation."""
  train_rows, run_rows, eval_rows = results["train"], results["runs"], results["eval"]
  print(
    f"Device {results['device']}; model {results['model']}; float32 matmul rate "
    f"{results['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s at the end "
    f"({results['matmul_size']}^3 "
    f"product, matmul precision {jax.config.jax_default_matmul_precision or 'default'}); "
    "peak device memory "
    f"{results['peak_memory_bytes'] or 'n/a (not reported on CPU)'}\n"
  )
  print(
    tables.markdown_table(
      [
        "M",
        "estimator",
        "L",
        "compile s",
        "ms/epoch",
        "examples/s (epoch)",
        "examples/s (step)",
        "of matmul rate",
      ],
      [
        [
          r["batch_size"],
          r["estimator"],
          r["num_samples"],
          f"{r['compile_seconds']:.1f}",
          f"{r['epoch_ms']:.1f}",
          f"{r['epoch_examples_per_second']:,.0f}",
          f"{r['step_examples_per_second']:,.0f}",
          f"{100 * r['fraction_of_matmul_rate']:.0f}%",
        ]
        for r in train_rows
      ],
      [True, False] + [True] * 6,
    )
  )
  one_run_ms = next((r["epoch_ms"] for r in run_rows if r["num_runs"] == 1), None)
  print(
    tables.markdown_table(
      [
        f"runs (M={_BATCH_SIZES.value[0]}, {_ESTIMATORS.value[0]})",
        "ms/epoch",
        "runs/s",
        "vs one run",
      ],
      [
        [
          r["num_runs"],
          f"{r['epoch_ms']:.1f}",
          f"{1e3 * r['num_runs'] / r['epoch_ms']:.3f}",
          f"{r['num_runs'] * one_run_ms / r['epoch_ms']:.2f}x" if one_run_ms else "n/a",
        ]
        for r in run_rows
      ],
      [True] * 4,
    )
  )
  print(
    tables.markdown_table(
      [f"evaluation of {_NUM_EVAL.value} examples", "k", "s", "examples/s"],
      [
        [
          r["estimator"],
          r["num_samples"],
          f"{r['seconds']:.2f}",
          f"{r['examples_per_second']:,.0f}",
        ]
        for r in eval_rows
      ],
      [False, True, True, True],
    )
  )


def print_profile(profile: dict) -> None:
  print(
    f"\nProfile of one epoch (M={_BATCH_SIZES.value[0]}, {_ESTIMATORS.value[0]}, "
    f"L={_SAMPLE_COUNTS.value[0]}): {profile['wall_ms']:.0f} ms wall, "
    f"{profile['op_ms']:.0f} ms in XLA ops, {profile['ops_per_step']:.1f} ops run per step "
    f"(profiling adds overhead; the trace is in {_PROFILE_DIR.value})\n"
  )
  print(
    tables.markdown_table(
      ["where", "ms", "share of op time"],
      [
        [category, f"{ms:.0f}", f"{100 * ms / profile['op_ms']:.1f}%"]
        for category, ms in profile["categories"].items()
      ],
      [False, True, True],
    )
  )
  print(
    tables.markdown_table(
      ["op", "ms", "source"],
      [[op["op"], f"{op['ms']:.1f}", op["source"][-90:]] for op in profile["top_ops"]],
      [False, True, False],
    )
  )


if __name__ == "__main__":
  app.run(main)
