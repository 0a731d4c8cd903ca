"""Trains a sparse network with OptG: the command-line entry point.

  python train.py --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist
  python train.py --config=configs/resnet50_imagenet.py --workdir=runs/r50_98 \
      --config.sparsity=0.98 --config.data_dir=/data/tfds

Rerunning a command resumes from the workdir's latest checkpoint; `--config.eval_only=True`
evaluates and exports the latest checkpoint. Bad input (a config value, a workdir of another run)
ends with one `error:` line and exit status 2; a diverged run with exit status 3. SIGTERM (a
preempted Cloud TPU VM) finishes the step in flight, saves it and ends with one `preempted:` line
and exit status 75 (EX_TEMPFAIL: rerun the same command to resume).
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")


def _error(message: str, status: int = 2):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _unknown_field(e: BaseException) -> str:
    """ml_collections' KeyError/AttributeError text -> "unknown config field 'x' (did you mean..."."""
    text = str(e).encode().decode("unicode_escape")
    names = re.findall(r"'([^'\s]+)'", text)
    guess = re.search(r'Did you mean "([^"]+)"', text)
    message = f"unknown config field {names[0]!r}" if names else f"unknown config field: {text}"
    return message + (f" (did you mean {guess.group(1)!r}?)" if guess else "")


def parse_flags(argv):
    """absl's flag parsing, with a failure (e.g. an unknown --config field) as one line."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        _error(_unknown_field(e))
    except (flags.Error, TypeError, ValueError) as e:
        _error(_one_line(e))
    except SyntaxError as e:
        _error(f"config file {e.filename}, line {e.lineno}: {e.msg}")
    except Exception as e:  # pylint: disable=broad-except  # An error inside get_config().
        _error(f"cannot load the config: {type(e).__name__}: {_one_line(e)}")


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
        filename = flags.FLAGS["config"].config_filename
        if not os.path.exists(filename):
            _error(f"config file {filename} does not exist")
        _error(f"cannot load --config={filename}: {_one_line(e.__cause__ or e)}")

    # Imported here so that `--help` and flag errors do not pay for JAX start-up, and validated
    # before `training` (which imports TensorFlow) so that a bad value fails within seconds.
    from optg_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel

    # With an N:M pattern the sparsity is the pattern's, unless given here too (then both must agree).
    given = "sparsity" in config_flags.get_override_values(flags.FLAGS["config"])
    config_lib.pattern_sparsity(config, sparsity_given=given)
    try:
        config_lib.validate(config)
    except config_lib.ConfigError as e:
        _error(_one_line(e))
    from optg_jax.train import (  # pylint: disable=import-outside-toplevel
        checkpoints,
        preemption,
        training,
    )

    try:
        training.train_and_evaluate(config, _WORKDIR.value)
    except preemption.Preempted as e:  # The state is saved: rerunning resumes at its step.
        print(f"preempted: {_one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(preemption.EXIT_PREEMPTED)
    except (
        ValueError,
        FileNotFoundError,
    ) as e:  # Bad input (config, workdir, data): nothing written.
        _error(_one_line(e))
    except (training.TrainingError, checkpoints.CheckpointError) as e:
        _error(_one_line(e), status=3)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main, flags_parser=parse_flags)
