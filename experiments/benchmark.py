r"""Speed and memory against minimal plain JAX: `python -m experiments.benchmark`.

Every figure is printed beside the same work done by `experiments.plain_jax`
(what a competent JAX user writes in an afternoon) on the same machine in the
same run, in each of its simple forms (`--reference_epochs`,
`--reference_estimates`), and the ratio to the fastest. Each measurement runs
in a fresh process (so that its peak resident memory is its own), and the
processes alternate between the library and the references, `--processes`
rounds of them, so that all see the same drift of a shared machine; the tables
give medians. Processes of the same program differ by up to 30% here, so each
work is also timed with every implementation compiled in one process,
alternating (`--alternations` rounds), the library's paired ratios resolving
what separate processes cannot.

The kinds of work:
  --train  an epoch (one compiled `lax.scan` over N // M minibatches; estimator
           B, L = 1) of a model at a minibatch size M with an optimiser;
  --eval   the importance-sampled log-likelihood estimate at k samples;
  --preset the runner (`experiments.train`) on a preset for a few epochs
           (its rate: the median of the epochs after the first, evaluation
           excluded), against the library's epoch of the same settings and
           data called directly; and that epoch against the plain epoch
           (--preset_bare: its model, M and optimiser, estimator B, no
           binarisation, constant rate) compiled in the same process, the two
           alternating, which resolves the few percent that the preset's own
           settings cost where separate processes differ by more.
Beside each training and evaluation figure: the fraction of the machine's
float32 matmul rate (a --matmul_size^3 product, measured after every timed
repetition) that the work's matmul FLOPs reach. Data are random binary
vectors: speed does not depend on their values.

Example:
  python -m experiments.benchmark --processes=3
  python -m experiments.benchmark --train=784-500-20/100/adagrad --eval= --preset= \
      --profile_dir=/tmp/trace
"""

from __future__ import annotations

import collections
import glob
import itertools
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import vae_jax
from experiments import config_flags, plain_jax, tables
from vae_jax import training
from vae_jax.models import vae as models

_TRAIN = flags.DEFINE_list(
  "train",
  ["784-500-20/100/adagrad", "784-500-20/1000/adagrad", "784-200-200-50/20/adam"],
  "Training epochs to time, each D-H...-J/M/optimiser: the model's layer sizes (data, "
  "hidden..., latent), the minibatch size and the optimiser (adagrad, adam, sgd).",
)
_EVAL = flags.DEFINE_list(
  "eval",
  ["784-500-20/5000"],
  "Importance-sampled log-likelihood estimates to time, each D-H...-J/k.",
)
_PRESET = flags.DEFINE_string(
  "preset",
  "experiments/configs/iwae_table1_vae.flags",
  "A runner flagfile to time through `experiments.train` against the library's epoch "
  "of the same settings and data called directly, and against the plain epoch of its "
  "model, M and optimiser (--preset_bare); empty: none.",
)
_PRESET_BARE = flags.DEFINE_string(
  "preset_bare",
  "784-200-200-50/20/adam",
  "The --train work of the preset's model, M and optimiser (added to --train if absent).",
)
_PRESET_FLAGS = flags.DEFINE_list(
  "preset_flags",
  ["--tfds_manual_dir=../shared/data"],
  "Further flags of the preset's runs (where its data set is).",
)
_PRESET_EPOCHS = flags.DEFINE_integer(
  "preset_epochs", 4, "Epochs of each preset run.", lower_bound=2
)
_NUM_TRAIN = flags.DEFINE_integer("num_train", 60000, "Examples per epoch N.", lower_bound=1)
_NUM_EVAL = flags.DEFINE_integer(
  "num_eval", 100, "Examples of each log-likelihood estimate.", lower_bound=1
)
_REFERENCE_EPOCHS = flags.DEFINE_list(
  "reference_epochs",
  list(plain_jax.GATHERS),
  "The plain epochs timed beside the library's, by how they gather minibatches: step "
  "(data[indices] in each step), epoch (one jnp.take of the permuted epoch before the "
  "scan). The library is held to the fastest.",
)
_REFERENCE_ESTIMATES = flags.DEFINE_list(
  "reference_estimates",
  ["1/all", "10/100"],
  "The plain estimates timed beside the library's, each E/S: E examples per lax.map step "
  "(a divisor of --num_eval), their k samples S at a time (a divisor of k; all: at once). "
  "1/all is the simplest; 10/100 is the library's pass shape, and the forms in passes of "
  "100 to 500 samples were the fastest of 15, within a few percent of each other, on one "
  "core of the 2-core CPU (BUILD.md). The library is held to the fastest.",
)
_SAMPLES_PER_PASS = flags.DEFINE_integer(
  "samples_per_pass", 100, "The library's samples per pass of its estimate.", lower_bound=1
)
_PROCESSES = flags.DEFINE_integer(
  "processes", 3, "Rounds: processes per work and implementation.", lower_bound=1
)
_REPEATS = flags.DEFINE_integer(
  "repeats", 2, "Timed repetitions in each process (after a warm-up).", lower_bound=1
)
_ALTERNATIONS = flags.DEFINE_integer(
  "alternations",
  4,
  "Rounds of each one-process measurement (every implementation compiled in one process, "
  "timed once a round, the order reversed every round).",
  lower_bound=1,
)
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
  "If set, trace one library epoch of the first --train into this directory (open it "
  "with Perfetto or TensorBoard) and print where the epoch's time goes.",
)
_WORKER = flags.DEFINE_string(
  "worker", None, "Internal: measure this one work (JSON) in this process and print it."
)

LIBRARY = "vae-jax"
# The job that times every implementation of a work in one process, alternating.
ONE_PROCESS = "one process"
_SPEC = re.compile(r"^(\d+(?:-\d+)+)/(\d+)(?:/(adagrad|adam|sgd))?$")


def parse_work(kind: str, spec: str) -> dict:
  """'784-500-20/100/adagrad' (train) or '784-500-20/5000' (eval) -> a dict."""
  match = _SPEC.match(spec)
  if not match or (kind == "train") != bool(match.group(3)) or "-" not in match.group(1):
    form = "D-H...-J/M/optimiser" if kind == "train" else "D-H...-J/k"
    raise app.UsageError(f"--{kind} entry {spec!r} is not of the form {form}.")
  sizes = [int(size) for size in match.group(1).split("-")]
  work = {"kind": kind, "spec": spec, "data_dim": sizes[0], "hidden": sizes[1:-1]}
  work["latent_dim"], number = sizes[-1], int(match.group(2))
  if kind == "train":
    work.update(batch_size=number, optimizer=match.group(3))
  else:
    work["num_samples"] = number
  if min(sizes) < 1 or number < 1:
    raise app.UsageError(f"--{kind} entry {spec!r} has a size below 1.")
  return work


def matmul_flops_per_example(
  data_dim: int, hidden: tuple[int, ...], latent: int, num_samples: int, backward: bool = True
) -> float:
  """Matmul FLOPs of one example: the encoder D->H...->2J once, the decoder
  J->...->D once per sample; with the backward pass, 3 x the forward. For
  the paper's MNIST model (784-500-20) at L = 1 this is 4.88 MFLOP."""
  encoder_sizes, decoder_sizes = [data_dim, *hidden, 2 * latent], [latent, *hidden[::-1], data_dim]
  encoder = sum(m * n for m, n in itertools.pairwise(encoder_sizes))
  decoder = sum(m * n for m, n in itertools.pairwise(decoder_sizes))
  return (3 if backward else 1) * 2 * (encoder + num_samples * decoder)


def _seconds(fn: Callable[[], object]) -> float:
  started = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - started


def make_matmul_rate(size: int, repeats: int = 3) -> Callable[[], float]:
  """Returns `measure() -> FLOP/s`: the device's float32 matmul rate now, the
  median over `repeats` products of square [size, size] inputs, at JAX's
  default matmul precision (TF32 on recent NVIDIA GPUs, as in training)."""
  a, b = (
    jax.random.normal(k, (size, size), jnp.float32) for k in jax.random.split(jax.random.key(0))
  )
  product = jax.jit(jnp.matmul).lower(a, b).compile()
  jax.block_until_ready(product(a, b))
  return lambda: (
    2 * size**3 / statistics.median(_seconds(lambda: product(a, b)) for _ in range(repeats))
  )


def _random_binary(num_examples: int, data_dim: int) -> jax.Array:
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.integers(0, 2, (num_examples, data_dim)), jnp.float32)


def _model(work: dict) -> models.VAE:
  return models.make_vae(work["data_dim"], work["latent_dim"], hidden_sizes=tuple(work["hidden"]))


def compiled_epoch(
  model: models.VAE, config: training.TrainConfig, data: jax.Array
) -> tuple[jax.stages.Compiled, Callable[[], jax.Array]]:
  """The library's compiled epoch and `run()`, which trains one epoch from
  where the last call left off (the epoch donates its input state) and
  returns the epoch's bounds."""
  state = [training.init_train_state(model, config, jax.random.key(0), data.shape[0])]
  epoch = training.make_train_epoch(model, config, data.shape[0]).lower(state[0], data).compile()

  def run():
    state[0], bounds = epoch(state[0], data)
    return bounds

  return epoch, run


def _train_config(work: dict) -> training.TrainConfig:
  return training.TrainConfig(batch_size=work["batch_size"], optimizer=work["optimizer"])


def _library_epoch(work: dict, data: jax.Array) -> Callable[[], jax.Array]:
  return compiled_epoch(_model(work), _train_config(work), data)[1]


def _reference_epoch(work: dict, data: jax.Array, gather: str) -> Callable[[], jax.Array]:
  config = training.TrainConfig(optimizer=work["optimizer"])  # the same optax optimiser
  optimizer = training.make_optimizer(config, data.shape[0])
  params = plain_jax.init(jax.random.key(0), work["data_dim"], work["hidden"], work["latent_dim"])
  carry = [params, optimizer.init(params), jax.random.key(1)]
  epoch = plain_jax.make_epoch(optimizer, work["batch_size"], gather)

  def run():
    carry[2], key = jax.random.split(carry[2])
    carry[0], carry[1], bounds = epoch(carry[0], carry[1], data, key)
    return bounds

  return run


def _library_estimate(work: dict, data: jax.Array) -> Callable[[], jax.Array]:
  """The public estimate, as a user calls it on the whole batch."""
  model = _model(work)
  params = training.init_train_state(model, training.TrainConfig(), jax.random.key(0)).params
  estimate = jax.jit(
    vae_jax.make_log_likelihood_estimate(model, work["num_samples"], _SAMPLES_PER_PASS.value)
  )
  return lambda: estimate(params, data, jax.random.key(2))


def _reference_estimate(
  work: dict, data: jax.Array, form: tuple[int, int | None]
) -> Callable[[], jax.Array]:
  params = plain_jax.init(jax.random.key(0), work["data_dim"], work["hidden"], work["latent_dim"])
  estimate = plain_jax.make_log_likelihood(work["num_samples"], *form)
  return lambda: estimate(params, data, jax.random.key(2))


def parse_estimate_form(text: str, num_samples: int, num_eval: int) -> tuple[int, int | None]:
  """'10/100' -> (10, 100), '1/all' -> (1, None): a --reference_estimates entry."""
  match = re.fullmatch(r"(\d+)/(\d+|all)", text)
  if not match:
    raise app.UsageError(f"--reference_estimates entry {text!r} is not of the form E/S or E/all.")
  examples, samples = int(match.group(1)), match.group(2)
  samples = None if samples == "all" else int(samples)
  if examples < 1 or num_eval % examples:
    raise app.UsageError(
      f"--reference_estimates entry {text!r}: E = {examples} does not divide "
      f"--num_eval = {num_eval}."
    )
  if samples is not None and (samples < 1 or num_samples % samples):
    raise app.UsageError(
      f"--reference_estimates entry {text!r}: S = {samples} does not divide k = {num_samples}."
    )
  return examples, samples


def references(work: dict) -> dict[str, object]:
  """{name: form} of the plain-JAX forms timed beside the library on `work`."""
  if work["kind"] == "train":
    for gather in _REFERENCE_EPOCHS.value:
      if gather not in plain_jax.GATHERS:
        raise app.UsageError(
          f"--reference_epochs entry {gather!r} is not one of {', '.join(plain_jax.GATHERS)}."
        )
    return {f"minimal JAX, gather per {gather}": gather for gather in _REFERENCE_EPOCHS.value}
  return {
    f"minimal JAX, {text} samples a pass": parse_estimate_form(
      text, work["num_samples"], _NUM_EVAL.value
    )
    for text in _REFERENCE_ESTIMATES.value
  }


def implementations(work: dict) -> list[str]:
  return [LIBRARY, *references(work)]


def _work_data(work: dict) -> tuple[jax.Array, int, float]:
  """(data, examples one call processes, matmul FLOPs per example)."""
  if work["kind"] == "train":
    data = _random_binary(_NUM_TRAIN.value, work["data_dim"])
    examples = (data.shape[0] // work["batch_size"]) * work["batch_size"]
    samples, backward = 1, True
  else:
    data = _random_binary(_NUM_EVAL.value, work["data_dim"])
    examples, samples, backward = data.shape[0], work["num_samples"], False
  flops = matmul_flops_per_example(
    work["data_dim"], tuple(work["hidden"]), work["latent_dim"], samples, backward
  )
  return data, examples, flops


def prepare(work: dict, implementation: str, data: jax.Array) -> Callable[[], jax.Array]:
  """`run()`: one call of `implementation`'s epoch or estimate on `data`."""
  train = work["kind"] == "train"
  if implementation == LIBRARY:
    return (_library_epoch if train else _library_estimate)(work, data)
  form = references(work)[implementation]
  return (_reference_epoch if train else _reference_estimate)(work, data, form)


def measure(work: dict, implementation: str) -> dict:
  """Times one work in this process: examples/s and the fraction of the
  matmul rate (medians over --repeats, after a warm-up), and the process's
  peak resident memory."""
  matmul_rate = make_matmul_rate(_MATMUL_SIZE.value or default_matmul_size())
  data, examples, flops_per_example = _work_data(work)
  run = prepare(work, implementation, data)
  jax.block_until_ready(run())  # compiles and warms up
  rates, fractions = [], []
  for _ in range(_REPEATS.value):
    rates.append(examples / _seconds(run))
    fractions.append(rates[-1] * flops_per_example / matmul_rate())
  return {
    "examples_per_second": statistics.median(rates),
    "fraction_of_matmul_rate": statistics.median(fractions),
    # Linux reports kilobytes.
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def alternate(runs: dict[str, tuple[Callable[[], object], int]]) -> dict[str, list[float]]:
  """Examples/s of each `name: (run, examples per call)` compiled in this
  process: each warmed up, then timed once a round for --alternations rounds,
  the order reversed every round, so that all see the same drift."""
  for run, _ in runs.values():
    jax.block_until_ready(run())
  rates = {name: [] for name in runs}
  names = list(runs)
  for round_index in range(_ALTERNATIONS.value):
    for name in names if round_index % 2 == 0 else names[::-1]:
      run, examples = runs[name]
      rates[name].append(examples / _seconds(run))
  return rates


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
  """The median ratio of rates timed in the same rounds."""
  return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def measure_together(work: dict) -> dict:
  """Every implementation of `work` compiled in this process and timed
  alternating (`alternate`): each one's median examples/s and the library's
  median ratio to it, which resolves differences that separate processes on
  a shared machine cannot."""
  data, examples, _ = _work_data(work)
  rates = alternate({name: (prepare(work, name, data), examples) for name in implementations(work)})
  return {
    "examples_per_second": {name: statistics.median(r) for name, r in rates.items()},
    "library_ratio": {name: paired_ratio(rates[LIBRARY], r) for name, r in rates.items()},
  }


def measure_preset(flagfile: str) -> dict:
  """The runner on `flagfile` for --preset_epochs epochs in a fresh work
  directory, evaluated after each: the median of the training examples/s it
  records for the epochs after the first (a run's first epoch is its first
  pass over the freshly loaded data; the epoch called directly is timed
  after a warm-up too)."""
  with tempfile.TemporaryDirectory() as workdir:
    subprocess.run(
      [
        sys.executable,
        "-m",
        "experiments.train",
        f"--flagfile={flagfile}",
        f"--num_epochs={_PRESET_EPOCHS.value}",
        "--eval_every=1",
        "--log_likelihood_samples=0",
        f"--workdir={workdir}",
        *_PRESET_FLAGS.value,
      ],
      check=True,
      capture_output=True,
      text=True,
    )
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
  return {"examples_per_second": statistics.median(r["examples_per_second"] for r in records[2:])}


def measure_preset_epoch(flagfile: str, bare: dict) -> dict:
  """The library's epoch with the preset's model, settings and data, called
  directly (no run directory, hooks or evaluation), and the plain library
  epoch of `bare` (a --train work) on random binary data of the same size,
  both compiled in this process and timed alternating (`alternate`)."""
  config = config_flags.preset_config(flagfile, [sys.argv[0], *_PRESET_FLAGS.value])
  dataset = config_flags.load_data(config.data)
  model = config_flags.make_model(config, dataset)
  data = jnp.asarray(dataset.train)
  _, preset_run = compiled_epoch(model, config.train, data)
  bare_run = _library_epoch(bare, _random_binary(*data.shape))
  rates = alternate(
    {
      "preset": (preset_run, (data.shape[0] // config.train.batch_size) * config.train.batch_size),
      "bare": (bare_run, (data.shape[0] // bare["batch_size"]) * bare["batch_size"]),
    }
  )
  return {
    "examples_per_second": statistics.median(rates["preset"]),
    "bare_examples_per_second": statistics.median(rates["bare"]),
    "ratio_to_bare": paired_ratio(rates["preset"], rates["bare"]),
  }


def default_matmul_size() -> int:
  return 2048 if jax.devices()[0].platform == "cpu" else 8192


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


def profile_epoch(work: dict, trace_dir: str) -> dict:
  """Traces one library epoch of a --train work and sorts its op time into
  `op_category` groups."""
  config = _train_config(work)
  data = _random_binary(_NUM_TRAIN.value, work["data_dim"])
  compiled, run = compiled_epoch(_model(work), config, data)
  hlo = {
    hlo_name(m.group(1)): line
    for line in compiled.as_text().splitlines()
    if (m := re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line))
  }
  jax.block_until_ready(run())
  with jax.profiler.trace(trace_dir):
    wall_ns = 1e9 * _seconds(run)
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
  num_steps = data.shape[0] // config.batch_size
  return {
    "wall_ms": wall_ns / 1e6,
    "op_ms": sum(by_category.values()) / 1e6,
    "ops_per_step": sum(n for name, n in counts.items() if name in hlo) / num_steps,
    "categories": {c: ns / 1e6 for c, ns in by_category.most_common()},
    "top_ops": [{"op": n, "ms": ns / 1e6, "source": src} for n, ns, src in top],
  }


def run_worker(work: dict, implementation: str) -> dict:
  """`measure` (`measure_together` for ONE_PROCESS; for a preset
  `measure_preset` or `measure_preset_epoch`) in a fresh process of this
  module."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.benchmark",
      f"--worker={json.dumps({'work': work, 'implementation': implementation})}",
      *(flags.FLAGS[name].serialize() for name in _PASSED_ON),
    ],
    check=False,
    capture_output=True,
    text=True,
  )
  if result.returncode:
    raise RuntimeError(
      f"The {implementation} process for {work['spec']} failed:\n{result.stderr[-3000:]}"
    )
  return json.loads(result.stdout.strip().splitlines()[-1])


# The flags a worker needs to measure as the parent was asked to.
_PASSED_ON = (
  "num_train",
  "num_eval",
  "reference_epochs",
  "reference_estimates",
  "samples_per_pass",
  "repeats",
  "alternations",
  "matmul_size",
  "preset_flags",
  "preset_epochs",
)


def _medians(results: list[dict]) -> dict:
  """The median of each figure over processes (per name where a figure is a
  dict of them), and the processes' own results."""
  return {
    key: {name: statistics.median(r[key][name] for r in results) for name in value}
    if isinstance(value, dict)
    else statistics.median(r[key] for r in results)
    for key, value in results[0].items()
  } | {"processes": results}


def run_rounds(works: list[dict], preset: dict | None, log: Callable[[str], None]) -> list[dict]:
  """Every work in every implementation, each in its own process, and all of
  them in one process (ONE_PROCESS); --processes rounds, interleaved (the
  order reversed every round); returns one row per work."""
  measured = collections.defaultdict(list)
  jobs = [(work, name) for work in works for name in [*implementations(work), ONE_PROCESS]]
  if preset:
    jobs += [(preset, "runner"), (preset, "its epoch")]
  for round_index in range(_PROCESSES.value):
    for work, implementation in jobs if round_index % 2 == 0 else jobs[::-1]:
      result = run_worker(work, implementation)
      log(f"round {round_index + 1}: {work['spec']} {implementation}: {result}")
      measured[work["spec"], implementation].append(result)
  return [
    {"work": work}
    | {
      name: _medians(results) for (spec, name), results in measured.items() if spec == work["spec"]
    }
    for work in works + ([preset] if preset else [])
  ]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _WORKER.value:
    job = json.loads(_WORKER.value)
    work, implementation = job["work"], job["implementation"]
    if implementation == ONE_PROCESS:
      result = measure_together(work)
    elif work["kind"] != "preset":
      result = measure(work, implementation)
    elif implementation == "runner":
      result = measure_preset(work["flagfile"])
    else:
      result = measure_preset_epoch(work["flagfile"], work["bare"])
    print(json.dumps(result))
    return
  works = [parse_work("train", spec) for spec in _TRAIN.value]
  works += [parse_work("eval", spec) for spec in _EVAL.value]
  preset = None
  if _PRESET.value:
    bare = parse_work("train", _PRESET_BARE.value)
    if bare["spec"] not in _TRAIN.value:
      works.insert(0, bare)
    preset = {"kind": "preset", "spec": _PRESET.value, "flagfile": _PRESET.value, "bare": bare}
  for work in works:
    implementations(work)  # a bad reference form stops here, before any process
  rows = run_rounds(works, preset, lambda line: print(line, file=sys.stderr, flush=True))
  matmul_size = _MATMUL_SIZE.value or default_matmul_size()
  results = {
    "device": tables.device_description(),
    "matmul_size": matmul_size,
    "matmul_flops_per_second": make_matmul_rate(matmul_size)(),
    "rows": rows,
    "profile": None,
  }
  if _PROFILE_DIR.value and _TRAIN.value:
    results["profile"] = profile_epoch(parse_work("train", _TRAIN.value[0]), _PROFILE_DIR.value)
  with open(_OUTPUT.value, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  print_results(results)
  if results["profile"]:
    print_profile(results["profile"])


def _work_name(work: dict) -> str:
  if work["kind"] == "train":
    return (
      f"epoch {work['data_dim']}-{'-'.join(map(str, work['hidden']))}-{work['latent_dim']}, "
      f"M={work['batch_size']}, {work['optimizer']}"
    )
  return (
    f"log p(x) {work['data_dim']}-{'-'.join(map(str, work['hidden']))}-"
    f"{work['latent_dim']}, k={work['num_samples']}"
  )


def fastest_reference(row: dict) -> str:
  """The reference form with the most examples/s in its own processes."""
  return max(
    (name for name in implementations(row["work"]) if name != LIBRARY),
    key=lambda name: row[name]["examples_per_second"],
  )


def print_results(results: dict) -> None:
  """The device line; the works against their fastest reference, in
  separate processes and in one; every reference form; the preset's row
  against the bare epoch."""
  print(
    f"\nDevice {results['device']}; float32 matmul rate "
    f"{results['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s at the end "
    f"({results['matmul_size']}^3 product, matmul precision "
    f"{jax.config.jax_default_matmul_precision or 'default'}); medians of "
    f"{_PROCESSES.value} processes each, interleaved; in one process: median "
    f"ratios of {_ALTERNATIONS.value} alternating rounds, the median over the processes\n"
  )
  works = [row for row in results["rows"] if row["work"]["kind"] != "preset"]
  table, forms = [], []
  for row in works:
    ours, fastest = row[LIBRARY], fastest_reference(row)
    theirs, together = row[fastest], row[ONE_PROCESS]
    slowest_ratio = min(
      (ratio, name) for name, ratio in together["library_ratio"].items() if name != LIBRARY
    )
    table.append(
      [
        _work_name(row["work"]),
        f"{ours['examples_per_second']:,.1f}",
        fastest.removeprefix("minimal JAX, "),
        f"{theirs['examples_per_second']:,.1f}",
        f"{ours['examples_per_second'] / theirs['examples_per_second']:.2f}x",
        f"{slowest_ratio[0]:.2f}x ({slowest_ratio[1].removeprefix('minimal JAX, ')})",
        f"{100 * ours['fraction_of_matmul_rate']:.0f}%",
        f"{100 * theirs['fraction_of_matmul_rate']:.0f}%",
        f"{ours['peak_rss_mib']:,.0f}",
        f"{theirs['peak_rss_mib']:,.0f}",
        f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x",
      ]
    )
    for name in implementations(row["work"])[1:]:
      forms.append(
        [
          _work_name(row["work"]),
          name,
          f"{row[name]['examples_per_second']:,.1f}",
          f"{ours['examples_per_second'] / row[name]['examples_per_second']:.2f}x",
          f"{together['library_ratio'][name]:.2f}x",
        ]
      )
  print(
    tables.markdown_table(
      [
        "work",
        "vae-jax ex/s",
        "fastest minimal JAX",
        "its ex/s",
        "ratio",
        "ratio in one process (to the fastest there)",
        "vae-jax of matmul rate",
        "minimal JAX of matmul rate",
        "vae-jax peak RSS MiB",
        "minimal JAX peak RSS MiB",
        "RSS ratio",
      ],
      table,
      [False, True, False] + [True] * 8,
    )
  )
  print(
    tables.markdown_table(
      ["work", "reference form", "ex/s", "vae-jax / it", "vae-jax / it, one process"],
      forms,
      [False, False, True, True, True],
    )
  )
  for row in results["rows"]:
    if row["work"]["kind"] != "preset":
      continue
    bare = next(r for r in results["rows"] if r["work"]["spec"] == row["work"]["bare"]["spec"])
    runner, own = row["runner"], row["its epoch"]
    plain = bare[LIBRARY]["examples_per_second"]
    print(
      tables.markdown_table(
        [
          "runner (evaluation excluded)",
          "ex/s",
          "its epoch called directly",
          "runner / epoch",
          f"plain vae-jax {_work_name(bare['work'])}",
          "runner / plain",
          "epoch / plain epoch, same process",
        ],
        [
          [
            row["work"]["spec"],
            f"{runner['examples_per_second']:,.0f}",
            f"{own['examples_per_second']:,.0f}",
            f"{runner['examples_per_second'] / own['examples_per_second']:.2f}x",
            f"{plain:,.0f}",
            f"{runner['examples_per_second'] / plain:.2f}x",
            f"{own['ratio_to_bare']:.3f}x ({own['bare_examples_per_second']:,.0f} ex/s plain)",
          ]
        ],
        [False] + [True] * 6,
      )
    )


def print_profile(profile: dict) -> None:
  print(
    f"\nProfile of one vae-jax {_work_name(parse_work('train', _TRAIN.value[0]))}: "
    f"{profile['wall_ms']:.0f} ms wall, "
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
