"""The library installs and imports apart from the training program.

`pip install optg-jax` gives the optax-facing library with jax, optax, chex and numpy only;
the training program (`optg_jax.train`, `train.py`) is the `train` extra, the NNX helpers the
`nnx` extra. Checked here: the core dependency list, what `import optg_jax` loads, what each
library module imports, and (slow: it needs the package index) a fresh virtualenv with the core
install running an `optg_optax` chain.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"jax", "optax", "chex", "numpy"}
# What the training program brings; none of it may be loaded by `import optg_jax`. (absl comes
# with optax itself, so it is not on this list.)
PROGRAM_ONLY = ("flax", "tensorflow", "tensorflow_datasets", "orbax", "ml_collections", "tqdm")

# A small optg_optax chain on a hand-written pytree: two kernels of 4x5 and 5x4 (40 masked
# weights) and two biases (never masked), 75% sparsity: exactly floor(40 * 0.25) = 10 weights
# are kept after the last update. Prints what the test checks, as JSON.
CHAIN = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, optax, optg_jax

    params = {
        "fc1": {"kernel": jnp.linspace(-1.0, 1.0, 20).reshape(4, 5), "bias": jnp.zeros(5)},
        "fc2": {"kernel": jnp.linspace(1.0, -1.0, 20).reshape(5, 4), "bias": jnp.zeros(4)},
    }
    x = jnp.linspace(0.0, 1.0, 12).reshape(3, 4)

    def loss_fn(p):
        h = jnp.tanh(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
        return jnp.sum((h @ p["fc2"]["kernel"] + p["fc2"]["bias"] - 0.5) ** 2)

    tx = optax.chain(
        optg_jax.optg_optax(target_sparsity=0.75, total_steps=12, learning_rate=0.1),
        optax.sgd(0.1, momentum=0.9),
    )
    state = tx.init(params)
    for _ in range(12):
        grads = jax.grad(loss_fn)(optg_jax.apply_masks(params, state))
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    masks = optg_jax.get_masks(state)
    print(json.dumps({
        "kept": {k: int(masks[k]["kernel"].sum()) for k in masks},
        "biases_masked": [k for k in masks if masks[k]["bias"] is not None],
        "sparsity": float(optg_jax.sparsity_summary(state)["global"]),
    }))
""")


def _requirement_name(requirement: str) -> str:
    """'jax>=0.6' -> 'jax'; 'etils[epath]' -> 'etils'."""
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()


def _check_chain_output(stdout: str) -> None:
    out = json.loads(stdout.strip().splitlines()[-1])
    assert sum(out["kept"].values()) == 10  # floor(40 * (1 - 0.75))
    assert out["biases_masked"] == []
    assert out["sparsity"] == 0.75


def test_core_dependencies_are_jax_optax_chex_numpy():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_requirement_name(r) for r in project["dependencies"]} == CORE
    assert len(project["dependencies"]) == len(CORE)
    extras = project["optional-dependencies"]
    assert {"flax", "orbax-checkpoint", "tensorflow-datasets"} <= {
        _requirement_name(r) for r in extras["train"]
    }
    assert {_requirement_name(r) for r in extras["nnx"]} == {"flax"}


def test_import_optg_jax_loads_none_of_the_training_program():
    code = (
        "import json, sys, optg_jax, optg_jax.export, optg_jax.macs, optg_jax.sharding\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = {name.split(".")[0] for name in json.loads(out.stdout.strip().splitlines()[-1])}
    assert not loaded & set(PROGRAM_ONLY), sorted(loaded & set(PROGRAM_ONLY))
    assert "optg_jax.train" not in json.loads(out.stdout.strip().splitlines()[-1])


def _library_modules():
    """The library's modules: optg_jax/*.py, not the training program's subpackage."""
    return sorted((ROOT / "optg_jax").glob("*.py"))


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: p.name)
def test_library_modules_import_only_core_packages(path):
    """Module-level imports of a library module: the standard library, the core dependencies,
    the library itself (never `optg_jax.train`), and flax in `optg_jax/nnx.py` alone."""
    allowed = CORE | set(sys.stdlib_module_names) | {"optg_jax"}
    if path.name == "nnx.py":
        allowed |= {"flax"}
    bad = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in allowed or name.startswith("optg_jax.train"):
                bad.append(name)
    assert not bad, f"{path.name} imports {bad}"


def test_small_chain_keeps_the_hand_computed_count():
    out = subprocess.run(
        [sys.executable, "-c", CHAIN], cwd=ROOT, capture_output=True, text=True, check=True
    )
    _check_chain_output(out.stdout)


@pytest.mark.slow
def test_core_install_in_a_fresh_virtualenv(tmp_path):
    """`pip install <repo>` without extras: no Flax, TensorFlow or orbax, and the chain runs."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "optg_jax", source / "optg_jax", ignore=shutil.ignore_patterns("*.pyc"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = (
        "import importlib.util, json\n"
        f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {PROGRAM_ONLY}}}))"
    )
    found = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path, check=True
    )
    installed = json.loads(found.stdout.strip().splitlines()[-1])
    assert not any(installed[m] for m in ("flax", "tensorflow", "orbax")), installed
    assert not any(installed.values()), installed
    chain = subprocess.run(
        [python, "-c", CHAIN], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert chain.returncode == 0, chain.stderr[-3000:]
    _check_chain_output(chain.stdout)
