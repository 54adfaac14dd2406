"""A short real run: the paper's MNIST model on the real data, prepared offline by TFDS."""

from vae_jax import training
from vae_jax.models import vae as models
from vae_jax.training.metrics import read_metrics

# One epoch (600 Adagrad steps) of the paper's model took the test bound from
# -543.5 to -176.3 nats when measured (README); 200 nats leaves room for
# other seeds and platforms while still failing for a model that barely learns.
REQUIRED_IMPROVEMENT_NATS = 200.0


def test_one_epoch_of_the_paper_model_on_mnist_improves_the_test_bound(mnist, tmp_path):
  model = models.make_vae(784, 20, hidden_sizes=(500,))
  config = training.TrainConfig(dynamic_binarization=True, weight_prior=True)
  run = training.RunConfig(str(tmp_path), num_epochs=1)
  training.train_and_evaluate(model, config, run, mnist.train, mnist.test, log=lambda _: None)
  first, last = read_metrics(tmp_path / "metrics.jsonl")
  assert (first["samples_seen"], last["samples_seen"]) == (0, 60_000)
  assert last["test_bound"] - first["test_bound"] > REQUIRED_IMPROVEMENT_NATS, (first, last)
  assert last["test_bound"] < 0
