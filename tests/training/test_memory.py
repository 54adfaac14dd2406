"""Memory checks of compiled programs before a run starts (`vae_jax.training.memory`)."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import pytest

from vae_jax.errors import ConfigError
from vae_jax.models.functions import init_params
from vae_jax.models.vae import make_vae
from vae_jax.training import evaluation, memory
from vae_jax.training.epoch import make_train_epoch
from vae_jax.training.state import TrainConfig, init_train_state

GB = 1e9


def _shapes(model):
  """The abstract parameters of `model` and an abstract PRNG key: nothing allocated."""
  params = jax.eval_shape(lambda key: init_params(model, key), jax.random.key(0))
  return params, jax.eval_shape(lambda: jax.random.key(0))


@pytest.fixture(scope="module")
def paper_model():
  """The paper's MNIST model (784-500-20) with its abstract parameters and key."""
  model = make_vae(784, 20, hidden_sizes=(500,))
  return (model, *_shapes(model))


def test_footprint_grows_linearly_in_num_samples():
  # Measured on jax 0.10's CPU backend, this model's evaluation footprint is
  # exactly affine in L beyond L = 1 (4,800 bytes per sample: six float32
  # [L, batch, latent_dim] buffers; the decoder, its log-density and the pixel
  # sum run as one fusion, so no [L, batch, data_dim] buffer is held, BUILD.md),
  # so a 1% tolerance only absorbs a change of buffer layout, not of growth.
  data_dim, batch = 50, 100
  model = make_vae(data_dim, 2, hidden_sizes=(16,))
  params, key = _shapes(model)
  data = jax.ShapeDtypeStruct((300, data_dim), jnp.float32)
  # No row limit: with one the batch would shrink as L grows (rows_per_pass).
  sizes = {
    num_samples: memory.footprint(
      evaluation.make_evaluate(model, "B", num_samples, batch, rows_per_pass=10**9),
      params,
      data,
      key,
    ).per_device
    for num_samples in (10, 100, 1000)
  }
  per_sample = (sizes[100] - sizes[10]) / 90
  assert (sizes[1000] - sizes[100]) / 900 == pytest.approx(per_sample, rel=0.01)
  # Each sample holds at least its latent draws, and a few logits' worth at most.
  latents, logits = batch * 2 * 4, batch * data_dim * 4
  assert latents <= per_sample <= 4 * logits


def test_refuses_the_paper_evaluation_at_100000_samples_without_allocating(paper_model):
  # [L, batch, data_dim] float32 logits alone: 100000 * 1000 * 784 * 4 bytes.
  logits = 100_000 * 1000 * 784 * 4
  if (memory.available_bytes() or 0) > 10 * logits:
    pytest.skip("this machine could hold the evaluation at L = 100000")
  model, params, key = paper_model
  # Without a row limit, which would take one example a pass (and fit).
  evaluate = evaluation.make_evaluate(model, "B", 100_000, batch_size=1000, rows_per_pass=10**9)
  test_data = jax.ShapeDtypeStruct((10_000, 784), jnp.float32)
  peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  start = time.perf_counter()
  with pytest.raises(ConfigError) as error:
    memory.check_fits(
      {
        "The evaluation of the bound": memory.Program(
          evaluate, (params, test_data, key), "num_samples"
        )
      }
    )
  # Compiling takes about 1-2 s on an idle 2-core machine, 3x that under load;
  # running the program would not end, or would fail for want of 48 GB.
  assert time.perf_counter() - start < 30
  assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before < 1 * GB
  message = str(error.value)
  assert error.value.parameter == "num_samples"
  assert "\n" not in message and message.endswith("lower num_samples.")
  estimate_gb = float(re.search(r"needs about ([\d.e+]+) GB", message).group(1))
  # At least the [L, batch, latent_dim] draws (the logits are fused away).
  assert estimate_gb >= 100_000 * 1000 * 20 * 4 / GB


def test_paper_settings_fit(paper_model):
  model, params, key = paper_model
  config = TrainConfig()
  state = jax.eval_shape(lambda k: init_train_state(model, config, k, 60_000), jax.random.key(0))
  train_data = jax.ShapeDtypeStruct((60_000, 784), jnp.float32)
  test_data = jax.ShapeDtypeStruct((10_000, 784), jnp.float32)
  log_likelihood = evaluation.make_evaluate(model, "iwae", 5000, 1000, samples_per_pass=100)
  footprints = memory.check_fits(
    {
      "The training epoch": memory.Program(
        make_train_epoch(model, config, 60_000), (state, train_data), "batch_size"
      ),
      "The evaluation of the bound": memory.Program(
        evaluation.make_evaluate(model, "B", 1, 1000), (params, test_data, key), "num_samples"
      ),
      "The test log-likelihood": memory.Program(
        log_likelihood, (params, test_data, key), "eval_batch_size"
      ),
    }
  )
  sizes = {name: footprint.per_device for name, footprint in footprints.items()}
  # The epoch holds at least the training set it is given; the log-likelihood
  # one pass's [samples_per_pass, batch, data_dim] logits, whatever k is (on
  # a CPU the batch is cut to 10 examples, CPU_ROWS_PER_PASS rows).
  assert sizes["The training epoch"] >= 60_000 * 784 * 4
  assert sizes["The test log-likelihood"] >= 100 * 10 * 784 * 4
  assert all(size < 2 * GB for size in sizes.values()), sizes


def test_arguments_already_on_the_device_are_not_counted_again():
  fn = jax.jit(lambda x: jnp.tanh(x) * 2)
  x = jnp.ones((1000, 100), jnp.float32)
  abstract = memory.footprint(fn, jax.ShapeDtypeStruct(x.shape, x.dtype)).per_device
  assert memory.footprint(fn, x).per_device == abstract - x.nbytes


def test_first_program_that_does_not_fit_names_its_setting(monkeypatch):
  fn = jax.jit(lambda x: jnp.tanh(x) * 2)
  small, large = (jax.ShapeDtypeStruct((n, 100), jnp.float32) for n in (10, 1000))
  need = memory.footprint(fn, large).per_device
  monkeypatch.setattr(memory, "available_bytes", lambda device=None: int(1.05 * need))
  programs = {
    "the small one": memory.Program(fn, (small,), "batch_size"),
    "the large one": memory.Program(fn, (large,), "eval_batch_size"),
  }
  assert memory.check_fits(programs, headroom=0)["the large one"].per_device == need
  with pytest.raises(ConfigError, match=r"^the large one needs .* lower eval_batch_size\.$") as e:
    memory.check_fits(programs, headroom=0.1)
  assert e.value.parameter == "eval_batch_size"


def test_available_bytes_is_positive_and_below_the_machine_memory():
  available = memory.available_bytes(jax.devices("cpu")[0])
  assert 0 < available <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(
  ("files", "cap"),
  [
    # cgroup v2: limit 1 GB, 0.6 GB used of which 0.1 GB reclaimable page cache.
    ({"memory.max": "1000000000", "memory.current": "600000000"}, 500_000_000),
    ({"memory.max": "max", "memory.current": "600000000"}, None),
    # cgroup v1, whose usage counts the page cache too.
    (
      {
        "memory/memory.limit_in_bytes": "2000000000",
        "memory/memory.usage_in_bytes": "1200000000",
        "memory/memory.stat": "cache 5\ntotal_inactive_file 200000000\n",
      },
      1_000_000_000,
    ),
  ],
)
def test_a_container_limit_caps_the_available_memory(tmp_path, monkeypatch, files, cap):
  files.setdefault("memory.stat", "anon 5\ninactive_file 100000000\n")
  for name, text in files.items():
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text(text)
  meminfo = tmp_path / "meminfo"
  meminfo.write_text("MemTotal:       8000000 kB\nMemAvailable:   3000000 kB\n")
  monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path)
  monkeypatch.setattr(memory, "MEMINFO", meminfo)
  assert memory.available_bytes(jax.devices("cpu")[0]) == (cap or 3_072_000_000)


class _Accelerator:
  platform = "gpu"

  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    return self.stats


def test_an_accelerator_reports_its_allocator_pool():
  assert memory.available_bytes(_Accelerator({"bytes_limit": 10, "bytes_in_use": 3})) == 7
  assert memory.available_bytes(_Accelerator(None)) is None


def test_cpu_devices_share_the_machine_memory():
  # Two CPU devices (forced, in a fresh process) each hold half of a sharded
  # program, both in the one machine's memory: the check must add the halves,
  # so memory for 0.75 of the whole program is too little although each half fits.
  script = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from vae_jax.errors import ConfigError
    from vae_jax.training import memory
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("b",)), PartitionSpec("b"))
    fn = jax.jit(lambda x: jnp.tanh(x) * 2, in_shardings=sharding, out_shardings=sharding)
    x = jax.ShapeDtypeStruct((1000, 100), jnp.float32, sharding=sharding)
    single = memory.footprint(jax.jit(lambda x: jnp.tanh(x) * 2), x.update(sharding=None))
    sharded = memory.footprint(fn, x)
    assert len(sharded.devices) == 2 and len(single.devices) == 1, (sharded, single)
    assert sharded.per_device * 2 == single.per_device, (sharded, single)
    memory.available_bytes = lambda device=None: int(0.75 * single.per_device)
    try:
      memory.check_fits({"it": memory.Program(fn, (x,), "batch_size")}, headroom=0)
    except ConfigError:
      raise SystemExit(0)
    raise SystemExit("2 CPU devices' shares were not counted together")
    """
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-3000:]
