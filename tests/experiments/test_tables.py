"""The runners' markdown tables."""

import pytest

from experiments.tables import final_summary, markdown_table, summary_table


def test_markdown_table_right_aligns_numeric_columns_unless_told():
  assert markdown_table(["a", "b"], [["x", 1], ["y", 2.5]]) == (
    "| a | b |\n|---|---:|\n| x | 1 |\n| y | 2.5 |\n"
  )
  assert markdown_table(["a", "b"], [["x", "1%"]], [True, True]).splitlines()[1] == "|---:|---:|"


def test_summary_table_of_final_bounds():
  records = [
    {"samples_seen": 0, "train_bound": -500.0, "test_bound": -501.0, "seconds": 0.0},
    {
      "samples_seen": 600000,
      "train_bound": -127.714,
      "test_bound": -126.556,
      "seconds": 40.4,
      "epoch": 10,
    },
  ]
  row = {"latent_dim": 20, "method": "AEVB", **final_summary(records)}
  assert row == {
    "latent_dim": 20,
    "method": "AEVB",
    "samples_seen": 600000,
    "train_bound": -127.714,
    "test_bound": -126.556,
    "seconds": 40.4,
  }
  table = summary_table(
    "Final bounds.", [("J", lambda r: r["latent_dim"]), ("method", lambda r: r["method"])], [row]
  )
  assert table == (
    "Final bounds.\n\n"
    "| J | method | training samples | train bound | test bound | training s |\n"
    "|---:|---|---:|---:|---:|---:|\n"
    "| 20 | AEVB | 600,000 | -127.71 | -126.56 | 40 |\n"
  )
  with pytest.raises(ValueError, match="never evaluated"):
    final_summary([])


def test_summary_table_of_other_final_values():
  records = [
    {
      "samples_seen": 1000,
      "train_log_likelihood": -151.17,
      "test_log_likelihood": -155.02,
      "seconds": 12.0,
      "step": 10,
    }
  ]
  row = {"n": 1000, **final_summary(records, "log_likelihood")}
  assert "train_bound" not in row
  table = summary_table(
    "Final.", [("N", lambda r: r["n"])], [row], value="log_likelihood", value_header="log p(x)"
  )
  assert (
    table.splitlines()[2]
    == "| N | training samples | train log p(x) | test log p(x) | training s |"
  )
  assert table.splitlines()[4] == "| 1000 | 1,000 | -151.17 | -155.02 | 12 |"
