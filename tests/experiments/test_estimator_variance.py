"""The variance runner's estimator specs, checked before anything trains."""

import copy

import pytest
from absl import flags

from experiments import estimator_variance
from vae_jax.errors import ConfigError
from vae_jax.inference.bounds import check_estimator


@pytest.mark.parametrize(
  "spec, parsed",
  [
    ("dreg", ("dreg", {})),
    ("miwae:4", ("miwae", {"num_groups": 4})),
    ("piwae:2", ("piwae", {"num_groups": 2})),
    ("ciwae:0.05", ("ciwae", {"ciwae_beta": 0.05})),
  ],
)
def test_estimator_specs_parse(spec, parsed):
  assert estimator_variance.parse_estimator(spec) == parsed


@pytest.mark.parametrize(
  "spec, problem",
  [
    ("dreeg", "unknown estimator 'dreeg'"),
    ("iwae:2", "'iwae' takes no setting"),
    ("miwae:two", "takes its num_groups after a colon"),
    ("ciwae:", "takes its ciwae_beta after a colon"),
  ],
)
def test_bad_estimator_specs_are_one_error(spec, problem):
  with pytest.raises(ConfigError, match=problem) as error:
    estimator_variance.parse_estimator(spec)
  assert error.value.parameter == "estimators"


def test_a_group_count_that_does_not_divide_l_is_refused_with_its_setting():
  name, settings = estimator_variance.parse_estimator("miwae:4")
  check_estimator(name, 8, **settings)
  with pytest.raises(ConfigError, match="L = 6 is not a multiple of num_groups M = 4") as error:
    check_estimator(name, 6, **settings)
  assert error.value.parameter == "num_groups"
  name, settings = estimator_variance.parse_estimator("ciwae:2")
  with pytest.raises(ConfigError, match=r"must be in \[0, 1\], got 2.0"):
    check_estimator(name, 6, **settings)


@pytest.mark.parametrize("value", ["1,0,10", "1,abc", ""])
def test_a_list_of_positive_integers_is_checked_at_start(value):
  """The validator every runner's integer-list flag registers
  (`config_flags.require_positive_integers`), here --sample_counts."""
  flag_values = copy.deepcopy(flags.FLAGS)
  flag_values.unparse_flags()
  with pytest.raises(
    flags.IllegalFlagValueError,
    match="--sample_counts must be comma-separated positive integers, e.g. 1,2,5,10,100",
  ):
    flag_values(["runner", f"--sample_counts={value}"])
