"""`optg_jax.train.checkpoints` as a module: save and restore of a train state, the latest
readable step, refusal of another run's workdir or model, the JSON files, and the export."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optg_jax
from optg_jax.train import checkpoints
from optg_jax.train.config import ConfigError
from optg_jax.train.steps import TrainState


def state_at(step, scale=1.0):
    """A small train state whose values depend on `step` (so restores can be told apart)."""
    return TrainState(
        step=jnp.asarray(step, jnp.int32),
        params={
            "conv": {"kernel": scale * step * jnp.arange(12.0).reshape(2, 2, 1, 3)},
            "fc": {"kernel": jnp.full((3, 2), float(step)), "bias": jnp.zeros(2)},
        },
        batch_stats={"bn": {"mean": jnp.ones(3) * step, "var": jnp.ones(3)}},
        opt_state={"mask": jnp.asarray([1, 0, 1], jnp.uint8), "count": jnp.asarray(step)},
    )


def abstract(state):
    cpu = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cpu), state)


def assert_states_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_and_restore_round_trip_the_latest_step(tmp_path):
    workdir = str(tmp_path / "w")
    mngr = checkpoints.manager(workdir, keep=2)
    for step in (1, 2, 3):
        checkpoints.save(mngr, step, state_at(step))
    checkpoints.save(mngr, 3, state_at(3, scale=-1.0))  # A saved step is not written again.
    mngr.wait_until_finished()  # Saves are asynchronous: on disk once this returns.
    assert checkpoints.checkpoint_steps_on_disk(workdir) == [2, 3]  # keep=2
    mngr.close()
    mngr = checkpoints.manager(workdir, keep=2, create=False)
    restored, step = checkpoints.restore_latest(mngr, abstract(state_at(0)), workdir)
    assert step == 3
    assert_states_equal(restored, state_at(3))
    mngr.close()


def test_saves_run_in_the_background_and_keep_their_metadata(tmp_path):
    workdir = str(tmp_path / "w")
    mngr = checkpoints.manager(workdir, keep=2)
    position = {"data_position": {"step": 5, "epoch": 1, "process_count": 2}}
    state = state_at(5)
    checkpoints.save(mngr, 5, state, position)
    # The state is copied off the devices before save returns: changing it now (as a donated
    # train step does) cannot reach the checkpoint.
    state.params["fc"]["kernel"].delete()
    mngr.wait_until_finished()
    assert checkpoints.checkpoint_steps_on_disk(workdir) == [5]
    mngr.close()
    mngr = checkpoints.manager(workdir, keep=2, create=False)
    assert checkpoints.read_metadata(mngr, 5) == position
    restored, step = checkpoints.restore_latest(mngr, abstract(state_at(0)), workdir)
    assert step == 5
    assert_states_equal(restored, state_at(5))
    mngr.close()
    sync = checkpoints.manager(str(tmp_path / "s"), keep=2, asynchronous=False)
    checkpoints.save(sync, 1, state_at(1))  # No metadata.
    assert checkpoints.checkpoint_steps_on_disk(str(tmp_path / "s")) == [1]
    assert checkpoints.read_metadata(sync, 1) == {}
    sync.close()


def test_a_save_cut_short_leaves_the_last_complete_checkpoint(tmp_path):
    """A process killed during a save (a second SIGTERM, the end of a grace period) leaves the
    checkpoint under orbax's temporary name; the complete one before it is the latest."""
    workdir = str(tmp_path / "w")
    mngr = checkpoints.manager(workdir, keep=3)
    for step in (1, 2):
        checkpoints.save(mngr, step, state_at(step))
    mngr.close()
    root = tmp_path / "w" / checkpoints.CHECKPOINT_DIR
    os.rename(root / "2", root / "2.orbax-checkpoint-tmp-1234")  # As a save killed midway.
    _truncate(root / "2.orbax-checkpoint-tmp-1234")
    assert checkpoints.checkpoint_steps_on_disk(workdir) == [1]
    mngr = checkpoints.manager(workdir, keep=3, create=False)
    restored, step = checkpoints.restore_latest(mngr, abstract(state_at(0)), workdir)
    assert step == 1
    assert_states_equal(restored, state_at(1))
    mngr.close()


def test_an_empty_workdir_has_nothing_to_restore(tmp_path):
    workdir = str(tmp_path / "w")
    assert checkpoints.checkpoint_steps_on_disk(workdir) == []
    mngr = checkpoints.manager(workdir, keep=2)
    assert checkpoints.restore_latest(mngr, abstract(state_at(0)), workdir) == (None, 0)
    mngr.close()


def _truncate(directory):
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)


def test_an_unreadable_latest_checkpoint_is_set_aside_for_the_one_before(tmp_path):
    workdir = str(tmp_path / "w")
    mngr = checkpoints.manager(workdir, keep=3)
    for step in (1, 2):
        checkpoints.save(mngr, step, state_at(step))
    mngr.close()
    _truncate(tmp_path / "w" / checkpoints.CHECKPOINT_DIR / "2")
    said = []
    mngr = checkpoints.manager(workdir, keep=3, create=False)
    restored, step = checkpoints.restore_latest(mngr, abstract(state_at(0)), workdir, said.append)
    assert step == 1
    assert_states_equal(restored, state_at(1))
    assert len(said) == 1 and "step 2 is unreadable" in said[0] and "step 1" in said[0]
    assert os.listdir(tmp_path / "w" / "corrupt_checkpoints") == ["2"]
    assert checkpoints.checkpoint_steps_on_disk(workdir) == [1]
    mngr.close()


def test_no_readable_checkpoint_is_an_error(tmp_path):
    workdir = str(tmp_path / "w")
    mngr = checkpoints.manager(workdir, keep=3)
    checkpoints.save(mngr, 1, state_at(1))
    mngr.close()
    _truncate(tmp_path / "w" / checkpoints.CHECKPOINT_DIR / "1")
    mngr = checkpoints.manager(workdir, keep=3, create=False)
    with pytest.raises(checkpoints.CheckpointError, match="no readable checkpoint") as e:
        checkpoints.restore_latest(mngr, abstract(state_at(0)), workdir, lambda line: None)
    assert "\n" not in str(e.value)
    mngr.close()


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    workdir = str(tmp_path / "w")
    mngr = checkpoints.manager(workdir, keep=2)
    checkpoints.save(mngr, 1, state_at(1))
    other = state_at(0).replace(params={"fc": {"kernel": jnp.zeros((5, 2))}})
    with pytest.raises(ConfigError, match="parameters of another model"):
        checkpoints.restore_latest(mngr, abstract(other), workdir)
    mngr.close()


def test_shapes_name_every_leaf_by_its_path():
    assert checkpoints.shapes(state_at(1).params) == {
        "conv/kernel": [2, 2, 1, 3],
        "fc/bias": [2],
        "fc/kernel": [3, 2],
    }


def test_a_workdir_of_another_run_is_refused(tmp_path):
    workdir = str(tmp_path)
    identity = {"model": "tiny_resnet", "sparsity": 0.9}
    shapes = {"fc/kernel": [3, 2]}
    assert not checkpoints.check_workdir(workdir, identity, shapes)  # No config.json yet.
    checkpoints.write_workdir_config(workdir, {"any": "thing"}, identity, shapes)
    assert checkpoints.check_workdir(workdir, identity, shapes)
    with pytest.raises(ConfigError) as e:
        checkpoints.check_workdir(workdir, dict(identity, sparsity=0.95), shapes)
    assert "sparsity=0.9 (this config: 0.95)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="other parameters .*fc/kernel"):
        checkpoints.check_workdir(workdir, identity, {"fc/kernel": [4, 2]})
    (tmp_path / checkpoints.CONFIG_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        checkpoints.check_workdir(workdir, identity, shapes)


def test_workdir_written_before_a_field_existed_takes_its_old_default(tmp_path):
    """An identity field added later is read as its default from an older workdir's config.json."""
    identity = {"model": "tiny_resnet", "sparsity": 0.9, "validation_examples": 0}
    shapes = {"w": [2, 2]}
    checkpoints.write_workdir_config(
        str(tmp_path), {}, {"model": "tiny_resnet", "sparsity": 0.9}, shapes
    )
    defaults = {"validation_examples": 0}
    assert checkpoints.check_workdir(str(tmp_path), identity, shapes, defaults)
    with pytest.raises(ConfigError, match=r"validation_examples=0 \(this config: 500\)"):
        checkpoints.check_workdir(
            str(tmp_path), dict(identity, validation_examples=500), shapes, defaults
        )
    with pytest.raises(ConfigError, match=r"validation_examples=None \(this config: 0\)"):
        checkpoints.check_workdir(str(tmp_path), identity, shapes)  # No default known.


def test_json_files(tmp_path):
    path = tmp_path / "sub" / "r.json"
    checkpoints.write_json(path, {"a": 1.5, "b": np.float32(2)})  # Other values as str().
    assert checkpoints.read_json(path) == {"a": 1.5, "b": "2.0"}
    assert not (tmp_path / "sub" / "r.json.tmp").exists()
    assert checkpoints.read_json(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{")
    assert checkpoints.read_json(tmp_path / "bad.json") is None
    assert str(checkpoints.workdir_path("rel")) == os.path.abspath("rel")
    assert str(checkpoints.workdir_path("gs://bucket/run")) == "gs://bucket/run"


def test_export_writes_the_masked_weights_both_ways(tmp_path):
    masked = {"fc": {"kernel": np.array([[0.0, 1.5], [0.0, 0.0], [2.0, 0.0]], np.float32)}}
    stats = {"bn": {"mean": np.ones(2, np.float32)}}
    path = checkpoints.export(str(tmp_path), masked, stats, {"model": "m", "sparsity": 0.67})
    assert path == str(tmp_path / checkpoints.EXPORT_DIR / "model.npz")
    with np.load(path) as plain:
        assert sorted(plain.files) == ["batch_stats/bn/mean", "params/fc/kernel"]
        np.testing.assert_array_equal(plain["params/fc/kernel"], masked["fc"]["kernel"])
    loaded = optg_jax.load_sparse(tmp_path / checkpoints.EXPORT_DIR)
    np.testing.assert_array_equal(loaded["params"]["fc"]["kernel"], masked["fc"]["kernel"])
    np.testing.assert_array_equal(loaded["batch_stats"]["bn"]["mean"], stats["bn"]["mean"])
    info = json.loads((tmp_path / checkpoints.EXPORT_DIR / "info.json").read_text())
    assert info == {"model": "m", "sparsity": 0.67}
