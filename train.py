"""Trains a sparse network with OptG: the command-line entry point.

  python train.py --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist
  python train.py --config=configs/resnet50_imagenet.py --workdir=runs/r50_98 \
      --config.sparsity=0.98 --config.data_dir=/data/tfds

Rerunning a command resumes from the workdir's latest checkpoint; `--config.eval_only=True`
evaluates and exports the latest checkpoint. Bad input (a config value, a workdir of another run)
ends with one `error:` line and exit status 2; a diverged run with exit status 3.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")


def _error(message: str, status: int = 2):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return text.strip("'\"") or type(e).__name__


def parse_flags(argv):
  """absl's flag parsing, with a failure (e.g. an unknown --config field) as one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = _one_line(e)
    if isinstance(e, (AttributeError, KeyError)):
      message = f"unknown config field {message} (see the config file for the known fields)"
    _error(message)


def main(argv):
  if not flags.FLAGS["verbosity"].present:  # Keep orbax's INFO chatter off the terminal.
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    _error(f"unexpected arguments: {' '.join(argv[1:])}")
  if _WORKDIR.value is None:
    _error("--workdir is required")
  try:
    config = _CONFIG.value
    if config is None:
      _error("--config is required (e.g. --config=configs/fashion_mnist.py)")
    config = config.copy_and_resolve_references()  # Raises here if the file did not load.
  except (OSError, AttributeError) as e:
    cause = e.__cause__ or e
    _error(f"cannot load --config={flags.FLAGS['config'].config_filename}: {_one_line(cause)}")

  # Imported here so that `--help` and flag errors do not pay for JAX/TensorFlow start-up.
  from optg_jax import checkpoints  # pylint: disable=import-outside-toplevel
  from optg_jax import training  # pylint: disable=import-outside-toplevel

  try:
    training.train_and_evaluate(config, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:  # Bad input (config, workdir, data): nothing written.
    _error(_one_line(e))
  except (training.TrainingError, checkpoints.CheckpointError) as e:
    _error(_one_line(e), status=3)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
