"""Markdown tables of the runners' results, written by one helper.

`markdown_table` lays out any table (the benchmark's, the variance
benchmark's); `summary_table` is the runners' table of final values, one line
per run, and `write_summary` saves it with its rows as JSON;
`iwae_stage_rows` summarises a run on the IWAE schedule stage by stage;
`device_description` names the device under a table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from vae_jax.training.state import iwae_learning_rate, iwae_stage_ends


def markdown_table(
  headers: Sequence[str], rows: Sequence[Sequence[Any]], right_aligned: Sequence[bool] | None = None
) -> str:
  """A markdown table: a header line, the alignment line and one line per row.

  Args:
    headers: the column names.
    rows: the cells, already formatted or any value (written with `str`).
    right_aligned: per column; by default the columns whose every cell is a
      number.

  Returns:
    The table's lines joined by newlines, with a final newline.
  """
  if right_aligned is None:
    right_aligned = [
      all(isinstance(row[i], (int, float)) for row in rows) if rows else False
      for i in range(len(headers))
    ]
  lines = [
    "| " + " | ".join(headers) + " |",
    "|" + "|".join("---:" if right else "---" for right in right_aligned) + "|",
  ]
  lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def final_summary(records: Sequence[Mapping[str, Any]], value: str = "bound") -> dict[str, Any]:
  """A run's result: samples_seen, train_<value>, test_<value> and seconds of
  its last record (value "bound", or e.g. "log_likelihood")."""
  if not records:
    raise ValueError("No metrics records: the run was never evaluated.")
  keys = ("samples_seen", f"train_{value}", f"test_{value}", "seconds")
  return {key: records[-1][key] for key in keys}


def summary_table(
  caption: str,
  columns: Sequence[tuple[str, Callable[[Mapping[str, Any]], Any]]],
  rows: Sequence[Mapping[str, Any]],
  value: str = "bound",
  value_header: str = "bound",
) -> str:
  """A markdown table of runs' final values, one line per run.

  Args:
    caption: the line above the table.
    columns: the leading columns, (header, row -> cell) pairs; a column of
      numbers is right-aligned.
    rows: dicts holding the `final_summary(records, value)` keys and what
      `columns` read.
    value: which final values: "bound" or e.g. "log_likelihood".
    value_header: their name in the headers ("train <value_header>").

  Returns:
    The caption, a blank line and the table: the leading columns, then
    training samples, the train and test values (nats) and training seconds.
  """
  leading = [[cell(row) for _, cell in columns] for row in rows]
  numeric = [
    all(isinstance(line[i], (int, float)) for line in leading) for i in range(len(columns))
  ]
  headers = [header for header, _ in columns]
  headers += ["training samples", f"train {value_header}", f"test {value_header}", "training s"]
  cells = [
    line
    + [
      f"{row['samples_seen']:,}",
      f"{row[f'train_{value}']:.2f}",
      f"{row[f'test_{value}']:.2f}",
      f"{row['seconds']:.0f}",
    ]
    for line, row in zip(leading, rows, strict=False)
  ]
  return f"{caption}\n\n" + markdown_table(headers, cells, numeric + [True] * 4)


def write_summary(
  directory: str | os.PathLike[str], name: str, table: str, rows: Sequence[Mapping[str, Any]]
) -> None:
  """Writes a runner's results as `<name>.md` (the `summary_table`) and
  `<name>.json` (the rows) in `directory`."""
  with open(os.path.join(directory, f"{name}.md"), "w", encoding="utf-8") as f:
    f.write(table)
  with open(os.path.join(directory, f"{name}.json"), "w", encoding="utf-8") as f:
    json.dump(list(rows), f, indent=2)


def iwae_stage_rows(records: Sequence[Mapping[str, Any]], learning_rate: float) -> list[list]:
  """A run on the IWAE schedule (`vae_jax.training.iwae_learning_rate`)
  stage by stage: one row per stage whose last epoch has a record, then one
  for an unfinished stage's latest record. Each row: the stage, its epochs,
  its rate, its training seconds (evaluation excluded) and the train and
  test bounds, test log-likelihood and active units after it."""
  rate_at_epoch = iwae_learning_rate(learning_rate, steps_per_epoch=1)
  by_epoch = {r["epoch"]: r for r in records}
  rows, first_epoch, seconds_before = [], 1, 0.0
  for stage, last_epoch in enumerate(iwae_stage_ends()):
    record, note = by_epoch.get(last_epoch), ""
    if record is None:
      record, note = records[-1], " (so far)"
      if record["epoch"] < first_epoch:
        break
    rows.append(
      [
        stage,
        f"{first_epoch}-{record['epoch']}{note}",
        f"{float(rate_at_epoch(first_epoch - 1)):.2e}",
        f"{record['seconds'] - seconds_before:,.0f}",
        *(
          f"{record[key]:.2f}" if record.get(key) is not None else ""
          for key in ("train_bound", "test_bound", "test_log_likelihood")
        ),
        active_units_cell(record),
      ]
    )
    if note:
      break
    first_epoch, seconds_before = last_epoch + 1, record["seconds"]
  return rows


def active_units_cell(record: Mapping[str, Any]) -> str:
  """A record's active units per stochastic layer, h1 first: "19" or "19/5";
  "" for a record without them."""
  counts, layer = [], 1
  while record.get(f"active_units_layer{layer}") is not None:
    counts.append(f"{record[f'active_units_layer{layer}']:g}")
    layer += 1
  return "/".join(counts)


def device_description() -> str:
  """The device a table's figures come from: "cpu: cpu, 1 of 2 CPUs" (the
  CPUs this process may run on, of the machine's)."""
  device = jax.devices()[0]
  return (
    f"{device.platform}: {device.device_kind}, {len(os.sched_getaffinity(0))} of "
    f"{os.cpu_count()} CPUs"
  )
