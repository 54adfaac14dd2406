r"""The IWAE paper's Table 1 beside our runs: `python -m experiments.iwae_table1`.

Burda, Grosse & Salakhutdinov (ICLR 2016), Table 1: MNIST test log-likelihood
(nats, the k = 5000 importance-sampled estimate) of models with 1 or 2
stochastic layers trained with the VAE or the IWAE objective with k = 1, 5 or
50 samples: 12 cells, `PUBLISHED`. Two modes:

--record=RUN_DIR: summarises a run trained with --learning_rate_schedule=iwae
  (its run_config.json and metrics.jsonl) as <--out>/<basename of RUN_DIR>.json:
    {"layers": 1 or 2, "objective": "VAE" | "IWAE", "k": L, "seed": ...,
     "epochs": last record's epoch, "scheduled_epochs": 3280,
     "test_log_likelihood": latest estimate (or null),
     "test_log_likelihood_epoch": its epoch (or null),
     "train_hours": training time without evaluations, "machine": ...,
     "source": "run directory <RUN_DIR>"}
  A run still training gives its latest estimate; record it again later.
--summaries=FOLDER: reads every *.json summary there (a summary may also be
  transcribed by hand, with another "source") and writes --csv, one row per
  cell and seed (a cell without summaries: one row, ours empty), columns
    layers,objective,k,published,ours,epochs,seeds,train_hours,machine
  and prints Table 1 as markdown, rows objective x k, columns published and
  ours for 1 and 2 layers.

Example:
  python -m experiments.iwae_table1 --record=runs/iwae_table1_iwae5 \
      --machine="1 H100, cuda" --out=docs/results/runs
  python -m experiments.iwae_table1 --summaries=docs/results/runs \
      --csv=docs/results/iwae_table1.csv
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from absl import app, flags

from experiments import tables
from vae_jax.training import metrics
from vae_jax.training.state import iwae_stage_ends

_RECORD = flags.DEFINE_string("record", None, "A run directory to summarise.")
_MACHINE = flags.DEFINE_string(
  "machine", None, "Where the run trained (default: this host, e.g. '2-core AMD EPYC 7B13, cpu')."
)
_OUT = flags.DEFINE_string("out", "docs/results/runs", "Where --record writes its summary.")
_SUMMARIES = flags.DEFINE_string("summaries", None, "A folder of summaries to tabulate.")
_CSV = flags.DEFINE_string("csv", "docs/results/iwae_table1.csv", "The CSV --summaries writes.")
_COST_CSV = flags.DEFINE_string(
  "cost_csv",
  "docs/results/iwae_table1_cost.csv",
  "experiments.iwae_table1_cost's table: the markdown marks a cell not run with its cost "
  "(ignored if the file does not exist).",
)


class PublishedCell(NamedTuple):
  layers: int
  objective: str
  k: int
  test_log_likelihood: float
  preset: str  # experiments/configs/<preset>.flags trains the cell


# Table 1 of the paper, MNIST column, in its row order. The k = 1 cells share
# a preset: at k = 1 the two objectives are one.
PUBLISHED = (
  PublishedCell(1, "VAE", 1, -86.76, "iwae_table1_vae"),
  PublishedCell(1, "VAE", 5, -86.47, "iwae_table1_vae5"),
  PublishedCell(1, "VAE", 50, -86.35, "iwae_table1_vae50"),
  PublishedCell(1, "IWAE", 1, -86.76, "iwae_table1_vae"),
  PublishedCell(1, "IWAE", 5, -85.54, "iwae_table1_iwae5"),
  PublishedCell(1, "IWAE", 50, -84.78, "iwae_table1_iwae50"),
  PublishedCell(2, "VAE", 1, -85.33, "iwae_table1_two_layers_vae"),
  PublishedCell(2, "VAE", 5, -85.01, "iwae_table1_two_layers_vae5"),
  PublishedCell(2, "VAE", 50, -84.78, "iwae_table1_two_layers_vae50"),
  PublishedCell(2, "IWAE", 1, -85.33, "iwae_table1_two_layers_vae"),
  PublishedCell(2, "IWAE", 5, -83.89, "iwae_table1_two_layers_iwae5"),
  PublishedCell(2, "IWAE", 50, -82.90, "iwae_table1_two_layers_iwae50"),
)
SCHEDULED_EPOCHS = iwae_stage_ends()[-1]  # 3280
# Estimators A and B both train on the (L-sample) ELBO, the paper's VAE.
OBJECTIVE_OF_ESTIMATOR = {"A": "VAE", "B": "VAE", "iwae": "IWAE"}
CSV_COLUMNS = ("layers", "objective", "k", "published", "ours", "epochs", "seeds")
CSV_COLUMNS += ("train_hours", "machine")


def host_description() -> str:
  """This host as '<cores>-core <CPU model name>, <JAX backend>'."""
  import jax  # only here: the CSV mode never needs it

  model = "unknown CPU"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    model = names[0] if names else model
  except OSError:
    pass
  return f"{os.cpu_count()}-core {model}, {jax.default_backend()}"


def summarise_run(run_dir: str, machine: str | None = None) -> dict[str, Any]:
  """The summary of a run directory described in the module docstring;
  `machine` says where it trained (None: this host, `host_description`).

  Raises SystemExit("FATAL: ...") for a directory that is no run, a run off
  the IWAE schedule, more than one seed, or an estimator outside Table 1.
  """
  try:
    with open(os.path.join(run_dir, "run_config.json"), encoding="utf-8") as f:
      config = json.load(f)
    records = metrics.read_metrics(os.path.join(run_dir, metrics.METRICS_FILENAME))
  except OSError as error:
    raise SystemExit(f"FATAL: {error.strerror}: {error.filename}; is --record a run?") from None
  train = config["train"]
  if train["learning_rate_schedule"] != "iwae":
    raise SystemExit(
      f"FATAL: {run_dir} was trained with --learning_rate_schedule="
      f"{train['learning_rate_schedule']}, not iwae: it is no Table 1 run."
    )
  if train["estimator"] not in OBJECTIVE_OF_ESTIMATOR:
    raise SystemExit(
      f"FATAL: {run_dir} was trained with --estimator={train['estimator']}, "
      f"which is no objective of Table 1 (A or B: VAE, iwae: IWAE)."
    )
  if config.get("num_runs", 1) != 1:
    raise SystemExit(f"FATAL: {run_dir} trained {config['num_runs']} seeds; a summary holds one.")
  if not records:
    raise SystemExit(f"FATAL: {run_dir} has no metrics records yet.")
  estimated = [r for r in records if r.get("test_log_likelihood") is not None]
  return {
    "layers": 2 if "top_encoder" in config else 1,
    "objective": OBJECTIVE_OF_ESTIMATOR[train["estimator"]],
    "k": train["num_samples"],
    "seed": config["seed"],
    "epochs": records[-1]["epoch"],
    "scheduled_epochs": SCHEDULED_EPOCHS,
    "test_log_likelihood": estimated[-1]["test_log_likelihood"] if estimated else None,
    "test_log_likelihood_epoch": estimated[-1]["epoch"] if estimated else None,
    "train_hours": records[-1]["seconds"] / 3600,
    # Described after the checks, so that a FATAL line is not preceded by JAX's start-up log.
    "machine": machine or host_description(),
    "source": f"run directory {run_dir}",
  }


def read_summaries(folder: str) -> list[dict[str, Any]]:
  """Every *.json summary in `folder`, checked to name a Table 1 cell and to
  hold no seed of a cell twice; SystemExit("FATAL: ...") otherwise."""
  if not os.path.isdir(folder):
    raise SystemExit(f"FATAL: No such directory: {folder}; is --summaries a folder of summaries?")
  cells = {cell[:3] for cell in PUBLISHED}
  summaries, seen = [], {}
  for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    with open(path, encoding="utf-8") as f:
      summary = json.load(f)
    cell_and_seed = (summary["layers"], summary["objective"], summary["k"], summary["seed"])
    if cell_and_seed[:3] not in cells:
      raise SystemExit(f"FATAL: {path} is no cell of Table 1: {cell_and_seed[:3]}.")
    if cell_and_seed in seen:
      raise SystemExit(f"FATAL: {path} and {seen[cell_and_seed]} both summarise {cell_and_seed}.")
    seen[cell_and_seed] = path
    summaries.append(summary)
  return summaries


def _summaries_by_cell(summaries: Sequence[Mapping[str, Any]]) -> dict[tuple, list]:
  """PUBLISHED's cells -> their summaries, sorted by seed. A run at k = 1
  fills both k = 1 cells: the VAE and IWAE objectives are then one (value and
  gradient), and the paper prints one number for both."""
  by_cell = {cell[:3]: [] for cell in PUBLISHED}
  for summary in sorted(summaries, key=lambda s: s["seed"]):
    objectives = ("VAE", "IWAE") if summary["k"] == 1 else (summary["objective"],)
    for objective in objectives:
      by_cell[(summary["layers"], objective, summary["k"])].append(summary)
  return by_cell


def csv_rows(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The CSV's rows (dicts keyed by CSV_COLUMNS): one per cell and seed, one
  with ours empty for a cell without summaries; sorted by layers, objective
  (VAE first), k and seed. `epochs` is the epoch of the `ours` estimate."""
  by_cell = _summaries_by_cell(summaries)
  rows = []
  for cell in sorted(PUBLISHED, key=lambda c: (c.layers, c.objective != "VAE", c.k)):
    published = {"layers": cell.layers, "objective": cell.objective, "k": cell.k}
    published["published"] = f"{cell.test_log_likelihood:.2f}"
    if not by_cell[cell[:3]]:
      rows.append({**published, **dict.fromkeys(CSV_COLUMNS[4:], "")})
    for summary in by_cell[cell[:3]]:
      value = summary["test_log_likelihood"]
      ours = {
        "ours": "" if value is None else f"{value:.2f}",
        "epochs": "" if value is None else summary["test_log_likelihood_epoch"],
        "seeds": summary["seed"],
        "train_hours": f"{summary['train_hours']:.2f}",
        "machine": summary["machine"],
      }
      rows.append({**published, **ours})
  return rows


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  """Writes `rows` with the header CSV_COLUMNS."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.DictWriter(f, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def _ours_cell(summaries: Sequence[Mapping[str, Any]]) -> str:
  """The mean estimate over seeds; in parentheses each seed's (when several)
  and the epoch of an estimate before the schedule's end, e.g.
  "-86.33 (-86.23, -86.42)", "-88.10 (epoch 364)"; "" without estimates."""
  estimated = [s for s in summaries if s.get("test_log_likelihood") is not None]
  if not estimated:
    return ""
  notes = []
  for summary in estimated:
    note = f"{summary['test_log_likelihood']:.2f}" if len(estimated) > 1 else ""
    epoch = summary["test_log_likelihood_epoch"]
    if epoch < SCHEDULED_EPOCHS:
      note = f"{note} at epoch {epoch}" if note else f"epoch {epoch}"
    if note:
      notes.append(note)
  mean = sum(s["test_log_likelihood"] for s in estimated) / len(estimated)
  return f"{mean:.2f}" + (f" ({', '.join(notes)})" if notes else "")


def read_costs(path: str) -> dict[str, float]:
  """preset -> hours of its whole cell, from experiments.iwae_table1_cost's
  CSV; empty if the file does not exist."""
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return {row["preset"]: float(row["hours"]) for row in csv.DictReader(f)}


def table1_markdown(
  summaries: Sequence[Mapping[str, Any]], costs: Mapping[str, float] | None = None
) -> str:
  """Table 1 as the paper lays it out: one row per objective and k, columns
  published and ours for 1 and then 2 stochastic layers (nats); a cell not
  run shows its preset's cost in `costs` (preset -> hours), if given."""
  by_cell = _summaries_by_cell(summaries)
  cells = {cell[:3]: cell for cell in PUBLISHED}

  def ours(cell: PublishedCell) -> str:
    value = _ours_cell(by_cell[cell[:3]])
    if not value and costs and cell.preset in costs:
      return f"not run ({costs[cell.preset]:.1f} h here)"
    return value

  rows = [
    [objective, k]
    + [
      text
      for layers in (1, 2)
      for text in (
        f"{cells[(layers, objective, k)].test_log_likelihood:.2f}",
        ours(cells[(layers, objective, k)]),
      )
    ]
    for objective in ("VAE", "IWAE")
    for k in (1, 5, 50)
  ]
  headers = ["objective", "k", "1 layer published", "1 layer ours"]
  headers += ["2 layers published", "2 layers ours"]
  return tables.markdown_table(headers, rows, [False, True, True, True, True, True])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if (_RECORD.value is None) == (_SUMMARIES.value is None):
    raise SystemExit("FATAL: give either --record=RUN_DIR or --summaries=FOLDER.")
  if _RECORD.value is not None:
    run_dir = os.path.normpath(_RECORD.value)
    summary = summarise_run(run_dir, _MACHINE.value)
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, f"{os.path.basename(run_dir)}.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)
      f.write("\n")
    print(f"Wrote {path}")
    return
  summaries = read_summaries(_SUMMARIES.value)
  write_csv(_CSV.value, csv_rows(summaries))
  print(table1_markdown(summaries, read_costs(_COST_CSV.value)))
  print(f"Wrote {_CSV.value}")


if __name__ == "__main__":
  app.run(main)
