"""Tests of the input pipeline and of the offline Fashion-MNIST preparation."""

import gzip
import hashlib
import io
import itertools
import os
import threading

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from optg_jax.train import data
from optg_jax.train.data import fashion_mnist, in_memory

HAS_DEBIAN_FILES = all(
    os.path.isfile(os.path.join(fashion_mnist.DEBIAN_DIR, f)) for f in fashion_mnist.UPSTREAM_MTIMES
)
needs_debian = pytest.mark.skipif(
    not HAS_DEBIAN_FILES,
    reason=f"Debian package dataset-fashion-mnist is not installed ({fashion_mnist.DEBIAN_DIR})",
)

# Under mock_data the data_dir is ignored; a missing directory shows nothing is read from it.
MOCK_DIR = "/nonexistent/tfds"
NORMALISED = data.Options(normalize=True)  # float32 normalised on the host, as before uint8.
AT_16 = data.Options(image_size=16)


def _gzip_bytes(content: bytes, name: str, mtime: int) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buffer, mtime=mtime) as f:
        f.write(content)
    return buffer.getvalue()


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ------------------------------------------------------------------------------- gzip header


def test_rebuilt_header_equals_gzip_module_output():
    content = bytes(range(256)) * 50
    stripped = _gzip_bytes(content, name="", mtime=0)  # Like Debian's: no name, no time.
    assert stripped[3] == 0
    rebuilt = fashion_mnist.rebuild_gzip_header(stripped, "some-file-ubyte", 1504176606)
    assert rebuilt == _gzip_bytes(content, name="some-file-ubyte", mtime=1504176606)
    assert gzip.decompress(rebuilt) == content


def test_rebuilt_header_replaces_existing_name_and_optional_fields():
    content = b"fashion" * 100
    named = _gzip_bytes(content, name="old-name", mtime=7)
    # Hand-built header with FEXTRA, FCOMMENT and FHCRC set in front of the same payload.
    payload = named[fashion_mnist.gzip_payload_offset(named) :]
    header = (
        b"\x1f\x8b\x08"
        + bytes([4 | 16 | 2])
        + (7).to_bytes(4, "little")
        + named[8:10]
        + (3).to_bytes(2, "little")
        + b"xyz"
        + b"a comment\0"
        + b"\0\0"
    )
    assert fashion_mnist.gzip_payload_offset(header + payload) == len(header)
    rebuilt = fashion_mnist.rebuild_gzip_header(header + payload, "new-name", 1504176627)
    assert rebuilt == _gzip_bytes(content, name="new-name", mtime=1504176627)


def test_rebuild_rejects_bad_input():
    with pytest.raises(ValueError, match="not a gzip"):
        fashion_mnist.rebuild_gzip_header(b"PK\x03\x04 not gzip", "x", 0)
    with pytest.raises(ValueError, match="2\\*\\*32|32 unsigned"):
        fashion_mnist.rebuild_gzip_header(_gzip_bytes(b"a", "", 0), "x", 2**32)


@needs_debian
def test_debian_files_rebuild_to_tfds_checksums(tmp_path):
    paths = fashion_mnist.rebuild_upstream_files(str(tmp_path))
    checksums = fashion_mnist.tfds_checksums()
    assert sorted(paths) == sorted(checksums) == sorted(fashion_mnist.UPSTREAM_MTIMES)
    for filename, path in paths.items():
        with open(path, "rb") as f:
            content = f.read()
        assert (len(content), hashlib.sha256(content).hexdigest()) == checksums[filename]


def test_missing_debian_files_say_what_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as e:
        fashion_mnist.rebuild_upstream_files(str(tmp_path / "out"), str(tmp_path))
    assert "data_dir" in str(e.value)


def test_wrong_source_files_fail_the_checksum(tmp_path):
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    for filename in fashion_mnist.UPSTREAM_MTIMES:
        (source / filename).write_bytes(_gzip_bytes(b"not fashion", "", 0))
    with pytest.raises(ValueError, match="does not match TFDS's checksum"):
        fashion_mnist.rebuild_upstream_files(str(out), str(source))


@needs_debian
@pytest.mark.slow
def test_prepare_and_load_real_fashion_mnist(tmp_path):
    data_dir = str(tmp_path / "tfds")
    data.ensure_dataset("fashion_mnist", data_dir)
    assert not os.path.exists(os.path.join(data_dir, "downloads"))
    data.ensure_dataset("fashion_mnist", data_dir)  # Prepared: returns at once.
    info = data.dataset_info("fashion_mnist", data_dir)
    assert (info.num_train_examples, info.num_eval_examples) == (60_000, 10_000)
    assert info.image_shape == (28, 28, 1) and info.num_classes == 10
    batches = list(data.eval_iterator("fashion_mnist", data_dir, 1000))
    labels = np.concatenate([b["label"] for b in batches])
    assert len(labels) == 10_000 and sum(b["mask"].sum() for b in batches) == 10_000
    assert set(np.unique(labels)) == set(range(10))
    batch = next(data.train_iterator("fashion_mnist", data_dir, 128, seed=0))
    assert batch["image"].shape == (128, 28, 28, 1) and batch["image"].dtype == np.uint8
    spec = data.dataset_spec("fashion_mnist")
    normalised = data.normalize(batch["image"], spec)
    assert abs(normalised.mean()) < 0.3 and 0.7 < normalised.std() < 1.3
    host = next(data.train_iterator("fashion_mnist", data_dir, 128, 0, options=NORMALISED))
    np.testing.assert_array_equal(host["image"], normalised)


# ---------------------------------------------------------------------- in-memory data sets


@pytest.fixture
def mock_small():
    """50 mocked examples per split for the in-memory data sets."""
    with tfds.testing.mock_data(num_examples=50):
        yield


@pytest.mark.parametrize(
    "name,augment,cache",
    [("fashion_mnist", False, True), ("cifar10", True, True), ("cifar10", True, False)],
)
def test_resume_yields_the_uninterrupted_batches(mock_small, name, augment, cache):
    # 50 examples, batch 8: 6 steps per epoch, so 14 steps cross two epoch boundaries.
    options = data.Options(augment=augment, cache=cache)
    full = _take(data.train_iterator(name, MOCK_DIR, 8, seed=3, options=options), 14)
    assert not np.array_equal(full[0]["image"], full[6]["image"])
    for start in (1, 6, 9):
        resumed = _take(
            data.train_iterator(name, MOCK_DIR, 8, seed=3, start_step=start, options=options),
            14 - start,
        )
        _assert_batches_equal(resumed, full[start:])


def test_epochs_are_seeded_permutations(mock_small):
    def epoch_images(seed, epoch):
        it = data.train_iterator("fashion_mnist", MOCK_DIR, 10, seed=seed, start_step=5 * epoch)
        return np.concatenate([b["image"] for b in _take(it, 5)])

    ((images, _),) = [
        (b["image"], b["label"]) for b in data.eval_iterator("fashion_mnist", MOCK_DIR, 50)
    ]
    as_set = lambda x: sorted(row.tobytes() for row in x)
    epoch0, epoch1 = epoch_images(0, 0), epoch_images(0, 1)
    assert as_set(epoch0) == as_set(epoch1) == as_set(images)
    assert not np.array_equal(epoch0, epoch1)
    np.testing.assert_array_equal(epoch_images(0, 1), epoch1)
    assert not np.array_equal(epoch_images(1, 0), epoch0)


@pytest.mark.parametrize("name,cache", [("fashion_mnist", True), ("cifar10", True)])
def test_processes_slice_the_global_batch(mock_small, name, cache):
    options = data.Options(cache=cache)
    single = _take(data.train_iterator(name, MOCK_DIR, 8, seed=0, start_step=4, options=options), 4)
    for count in (2, 4):
        parts = [
            _take(
                data.train_iterator(
                    name,
                    MOCK_DIR,
                    8,
                    seed=0,
                    start_step=4,
                    options=options,
                    process_index=i,
                    process_count=count,
                ),
                4,
            )
            for i in range(count)
        ]
        joined = [
            {k: np.concatenate([p[s][k] for p in parts]) for k in single[s]} for s in range(4)
        ]
        _assert_batches_equal(joined, single)
        assert parts[0][0]["image"].shape == (8 // count,) + single[0]["image"].shape[1:]


def test_eval_counts_every_example_once(mock_small):
    (reference,) = data.eval_iterator("cifar10", MOCK_DIR, 64)  # One padded batch of 64.
    assert reference["mask"].sum() == 50
    count = 4  # Global batch 16: 4 batches, the last holds 2 real examples on process 0 only.
    per_process = [
        list(data.eval_iterator("cifar10", MOCK_DIR, 16, process_index=i, process_count=count))
        for i in range(count)
    ]
    assert all(len(batches) == 4 for batches in per_process)
    rows = [b for step in zip(*per_process) for b in step]
    mask = np.concatenate([b["mask"] for b in rows]).astype(bool)
    assert mask.sum() == 50 and rows[-1]["mask"].sum() == 0
    for key in ("image", "label"):
        np.testing.assert_array_equal(
            np.concatenate([b[key] for b in rows])[mask], reference[key][:50]
        )


def test_cifar_crop_and_flip():
    images = np.arange(2 * 4 * 5 * 1, dtype=np.uint8).reshape(2, 4, 5, 1)
    same = in_memory.pad_crop_flip(images, np.full((2, 2), 4), np.array([False, True]))
    np.testing.assert_array_equal(same[0], images[0])
    np.testing.assert_array_equal(same[1], images[1, :, ::-1])
    # Offset (2, 6) in the 4-padded image: 2 rows of padding on top, 2 columns on the right.
    shifted = in_memory.pad_crop_flip(images[:1], np.array([[2, 6]]), np.array([False]))
    expected = np.zeros_like(images[:1])
    expected[0, 2:, :3] = images[0, :2, 2:]
    np.testing.assert_array_equal(shifted, expected)


def test_dataset_info_and_steps(mock_small):
    info = data.dataset_info("cifar10", MOCK_DIR)
    assert info == data.DatasetInfo(10, 50, 50, (32, 32, 3), "train", "test")
    assert data.steps_per_epoch(info, 8) == 6
    with pytest.raises(ValueError, match="global_batch_size=64"):
        data.steps_per_epoch(info, 64)


def test_validation_split_holds_out_the_last_training_examples(mock_small):
    # 50 mocked training examples, 12 held out: train on rows 0..37, evaluate on rows 38..49.
    info = data.dataset_info("fashion_mnist", MOCK_DIR, validation_examples=12)
    assert (info.num_train_examples, info.num_eval_examples) == (38, 12)
    assert (info.train_split, info.eval_split) == ("train[:-12]", "train[-12:]")
    held_out = data.Options(validation_examples=12)
    (held,) = data.eval_iterator("fashion_mnist", MOCK_DIR, 16, options=held_out)
    assert held["mask"].sum() == 12 and len(held["label"]) == 16
    full = in_memory.load_split("fashion_mnist", data.resolve_data_dir(MOCK_DIR), "train", 28)
    np.testing.assert_array_equal(held["label"][:12], full[1][-12:])
    np.testing.assert_array_equal(held["image"][:12], full[0][-12:])
    # One epoch of the training iterator (batch 19: 2 steps) covers only rows 0..37.
    it = data.train_iterator("fashion_mnist", MOCK_DIR, 19, seed=3, options=held_out)
    seen = np.concatenate([next(it)["image"] for _ in range(2)])
    flat = full[0].reshape(50, -1)
    rows = [int(np.flatnonzero((flat == x.reshape(-1)).all(axis=1))[0]) for x in seen]
    assert len(set(rows)) == 38 and max(rows) < 38
    for bad in (-1, 60_000, 1.5):
        with pytest.raises(ValueError, match=f"validation_examples={bad!r}"):
            data.dataset_info("fashion_mnist", MOCK_DIR, validation_examples=bad)
    with pytest.raises(ValueError, match="leaves no training examples"):
        data.dataset_info("fashion_mnist", MOCK_DIR, validation_examples=50)


def test_dataset_info_of_unprepared_data_uses_published_sizes(tmp_path):
    info = data.dataset_info("imagenet2012", str(tmp_path), image_size=128)
    assert info == data.DatasetInfo(1000, 1_281_167, 50_000, (128, 128, 3), "train", "validation")
    assert data.dataset_info("fashion_mnist", str(tmp_path)).image_shape == (28, 28, 1)


# ------------------------------------------------------------------------ ImageNet (mocked)


@pytest.fixture
def mock_imagenet():
    with tfds.testing.mock_data(num_examples=20):
        yield


def test_imagenet_under_mock_data(mock_imagenet):
    data.ensure_dataset("imagenet2012", MOCK_DIR)
    info = data.dataset_info("imagenet2012", MOCK_DIR, image_size=32)
    assert info.image_shape == (32, 32, 3) and info.num_train_examples == 20
    # 20 examples, batch 6: 3 steps per epoch; 5 steps cross an epoch boundary.
    at_32 = data.Options(image_size=32)
    full = _take(data.train_iterator("imagenet2012", MOCK_DIR, 6, seed=5, options=at_32), 5)
    for batch in full:
        assert batch["image"].shape == (6, 32, 32, 3) and batch["image"].dtype == np.uint8
        assert batch["label"].dtype == np.int32
    resumed = _take(
        data.train_iterator("imagenet2012", MOCK_DIR, 6, seed=5, start_step=2, options=at_32), 3
    )
    _assert_batches_equal(resumed, full[2:])
    evals = list(data.eval_iterator("imagenet2012", MOCK_DIR, 8, options=at_32))
    assert [b["mask"].sum() for b in evals] == [8, 8, 4]
    assert evals[-1]["image"].shape == (8, 32, 32, 3)


# ------------------------------------------- streamed data: each process reads only its share

# A real TFDS `imagenet2012` written to a temporary directory: tiny JPEGs whose label is the
# example's number, so that a batch's labels say which examples it holds. 50 training examples in
# 4 shards of [12, 13, 13, 12], 10 eval examples in 4 shards of [2, 3, 3, 2].
NUM_TRAIN, NUM_EVAL, FIRST_EVAL_LABEL = 50, 10, 500


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    # Looked up outside `skip_registration`: the look-up imports (and registers) TFDS's builders.
    registered = tfds.builder_cls("imagenet2012")
    with tfds.core.registered.skip_registration():

        class TinyImagenet(registered):
            name = "imagenet2012"  # The registered builder reads what this one writes.

            def _split_generators(self, dl_manager):
                del dl_manager
                return {
                    "train": self._numbered(range(NUM_TRAIN)),
                    "validation": self._numbered(
                        range(FIRST_EVAL_LABEL, FIRST_EVAL_LABEL + NUM_EVAL)
                    ),
                }

            def _numbered(self, labels):
                for label in labels:
                    pixels = np.full((40, 48, 3), label % 256, np.uint8)
                    jpeg = tf.io.encode_jpeg(pixels, quality=90).numpy()
                    yield label, {"image": jpeg, "label": label, "file_name": f"{label}.JPEG"}

    config = tfds.download.DownloadConfig(num_shards=4)
    TinyImagenet(data_dir=data_dir).download_and_prepare(download_config=config)
    splits = tfds.builder("imagenet2012", data_dir=data_dir).info.splits
    assert splits["train"].shard_lengths == [12, 13, 13, 12]
    assert splits["validation"].shard_lengths == [2, 3, 3, 2]
    return data_dir


class RecordCounter:
    """Counts the records every `tf.data.TFRecordDataset` built while patched hands out.

    The count is taken before TFDS's per-file skip/take, so a record TFDS reads only to skip it
    counts too (the real reader skips by seeking).
    """

    def __init__(self, monkeypatch):
        self.count = 0
        self._lock = threading.Lock()
        real = tf.data.TFRecordDataset

        def counted(*args, **kwargs):
            return real(*args, **kwargs).map(self._counted_record)

        monkeypatch.setattr(tf.data, "TFRecordDataset", counted)

    def _tick(self):
        with self._lock:
            self.count += 1
        return np.int64(0)

    def _counted_record(self, record):
        with tf.control_dependencies([tf.py_function(self._tick, [], tf.int64)]):
            return tf.identity(record)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def _share_labels(data_dir, split, process_index, process_count):
    """The labels of a TFDS even split, read directly (not through our pipeline)."""
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    part = tfds.even_splits(split, process_count)[process_index]
    ds = builder.as_dataset(split=part, decoders={"image": tfds.decode.SkipDecoding()})
    return sorted(int(ex["label"]) for ex in tfds.as_numpy(ds))


# Records each process reads from the [12, 13, 13, 12] shards, by hand: H = 4 shares are
# [0, 13), [13, 26), [26, 38), [38, 50); the 2nd starts 1 record into shard 2 and the 3rd 1
# record into shard 3, records read only to be skipped.
RECORDS_READ = {1: [50], 2: [25, 25], 4: [13, 14, 13, 12]}


@pytest.mark.parametrize("count", [1, 2, 4])
def test_each_process_reads_only_its_share_and_the_shares_make_the_epoch(
    tiny_imagenet, monkeypatch, count
):
    counter = RecordCounter(monkeypatch)
    global_batch, steps = 8, NUM_TRAIN // 8  # 6 steps: 48 of the 50 examples per epoch.
    epochs = {0: [], 1: []}
    for i in range(count):
        counter.take()  # Only what the iterator reads counts.
        it = data.train_iterator(
            "imagenet2012",
            tiny_imagenet,
            global_batch,
            seed=7,
            options=AT_16,
            process_index=i,
            process_count=count,
        )
        batches = _take(it, 2 * steps)
        it.close()
        read = counter.take()
        # Two epochs read the share twice: records read / (N / H) = 1 plus a rounding term.
        assert read == 2 * RECORDS_READ[count][i]
        assert read / (2 * NUM_TRAIN / count) <= 1 + 12 / (NUM_TRAIN / count)
        share = _share_labels(tiny_imagenet, "train", i, count)
        assert len(share) in (NUM_TRAIN // count, -(-NUM_TRAIN // count))
        for epoch in (0, 1):
            labels = np.concatenate([b["label"] for b in batches[epoch * steps :][:steps]])
            assert len(labels) == steps * global_batch // count
            assert len(set(labels)) == len(labels) and set(labels) <= set(share)
            epochs[epoch].append(labels)
    for epoch, parts in epochs.items():
        union = np.concatenate(parts)
        assert len(union) == len(set(union)) == steps * global_batch
        assert set(union) <= set(range(NUM_TRAIN))
    assert not np.array_equal(epochs[0][0], epochs[1][0])  # Each epoch is shuffled anew.


def test_streamed_order_is_a_function_of_seed_step_and_process_count(tiny_imagenet):
    def batches(count, index, start_step=0, seed=7, n=8):
        it = data.train_iterator(
            "imagenet2012",
            tiny_imagenet,
            8,
            seed=seed,
            start_step=start_step,
            options=AT_16,
            process_index=index,
            process_count=count,
        )
        return _take(it, n)

    two = [batches(2, i) for i in range(2)]
    for i in range(2):  # Resumed mid-epoch: bitwise the batches of the uninterrupted run.
        _assert_batches_equal(batches(2, i, start_step=3, n=5), two[i][3:])
    # Another process count: the same examples per epoch (the first 6 steps), in another order.
    one = batches(1, 0, n=6)
    joined = [np.concatenate([two[0][s]["label"], two[1][s]["label"]]) for s in range(6)]
    flat_one, flat_two = np.concatenate([b["label"] for b in one]), np.concatenate(joined)
    assert len(set(flat_one)) == len(set(flat_two)) == 48
    assert not np.array_equal(flat_one, flat_two)
    assert not np.array_equal(batches(2, 0, seed=8, n=1)[0]["label"], two[0][0]["label"])


def _global_batches(data_dir, count, start, n, start_count=None):
    """The global batches of `count` processes from `start` (with the process count that began
    its epoch), each the processes' local batches joined."""
    parts = [
        _take(
            data.train_iterator(
                "imagenet2012",
                data_dir,
                8,
                7,
                data.Position(start, start_count),
                i,
                count,
                AT_16,
            ),
            n,
        )
        for i in range(count)
    ]
    return [{k: np.concatenate([p[s][k] for p in parts]) for k in parts[0][s]} for s in range(n)]


# One resize in the default run (about 5 s); the others, 10-17 s each, with the slow tests.
@pytest.mark.parametrize(
    "old,new",
    [(2, 1), *(pytest.param(*p, marks=pytest.mark.slow) for p in [(1, 2), (2, 4), (4, 1)])],
)
def test_streamed_resize_mid_epoch_finishes_the_epoch_in_the_old_order(tiny_imagenet, old, new):
    """What a resize of a streamed run keeps: resumed at step 2 of epoch 0 (6 steps of 8 of the
    50 examples) on another process count, the processes read the old count's shares that cover
    their rows, so the rest of the epoch is bitwise the old count's batches (augmentation
    included): every example of the epoch once, none twice. The next epoch is the new count's
    own, again every example once."""
    steps = NUM_TRAIN // 8
    uninterrupted = _global_batches(tiny_imagenet, old, 0, steps)
    resized = _global_batches(tiny_imagenet, new, 2, 2 * steps - 2, start_count=old)
    _assert_batches_equal(resized[: steps - 2], uninterrupted[2:])
    epoch = np.concatenate([b["label"] for b in uninterrupted[:2] + resized[: steps - 2]])
    assert len(epoch) == len(set(epoch)) == steps * 8
    _assert_batches_equal(resized[steps - 2 :], _global_batches(tiny_imagenet, new, steps, steps))
    labels = np.concatenate([b["label"] for b in resized[steps - 2 :]])
    assert len(labels) == len(set(labels)) == steps * 8
    # Without the old count, another order: examples of the epoch would be seen twice.
    plain = _global_batches(tiny_imagenet, new, 2, steps - 2)
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(plain, resized))
    with pytest.raises(ValueError, match="process_count=3"):
        _global_batches(tiny_imagenet, new, 2, 1, start_count=3)  # 8 rows, 3 processes.


@pytest.mark.parametrize("count", [1, 2, 4])
def test_streamed_eval_reads_each_share_once_and_counts_every_example(
    tiny_imagenet, monkeypatch, count
):
    counter = RecordCounter(monkeypatch)
    global_batch = 8  # 10 examples: 2 global batches.
    labels = []
    for i in range(count):
        counter.take()
        it = data.eval_iterator(
            "imagenet2012",
            tiny_imagenet,
            global_batch,
            options=AT_16,
            process_index=i,
            process_count=count,
        )
        batches = list(it)
        read = counter.take()
        share = _share_labels(tiny_imagenet, "validation", i, count)
        assert len(batches) == 2
        assert len(share) <= read <= len(share) + 1  # At most one record skipped at the start.
        mask = np.concatenate([b["mask"] for b in batches]).astype(bool)
        assert mask.sum() == len(share)
        mine = np.concatenate([b["label"] for b in batches])[mask]
        assert sorted(mine) == share
        labels.extend(mine)
        for b in batches:
            assert b["image"].shape == (global_batch // count, 16, 16, 3)
    assert sorted(labels) == list(range(FIRST_EVAL_LABEL, FIRST_EVAL_LABEL + NUM_EVAL))


def test_tensorflow_sees_no_gpu_after_the_pipeline_starts(tiny_imagenet):
    next(data.train_iterator("imagenet2012", tiny_imagenet, 8, seed=0, options=AT_16))
    assert tf.config.get_visible_devices("GPU") == []
    assert all(d.device_type != "GPU" for d in tf.config.list_logical_devices())
    data.hide_gpus_from_tensorflow()  # Once TF runs: harmless, no error.


# -------------------------------------------------------------------------- bad arguments


def test_bad_arguments_name_the_value(mock_small):
    with pytest.raises(ValueError, match="'mnist'.*cifar10, fashion_mnist, imagenet2012"):
        data.dataset_info("mnist", MOCK_DIR)
    with pytest.raises(ValueError, match="global_batch_size=10.*process_count=3"):
        data.train_iterator("cifar10", MOCK_DIR, 10, seed=0, process_count=3)
    with pytest.raises(ValueError, match="process_index=2"):
        data.eval_iterator("cifar10", MOCK_DIR, 10, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="seed.*-1"):
        data.train_iterator("cifar10", MOCK_DIR, 10, seed=-1)
    with pytest.raises(ValueError, match="start_step.*-3"):
        data.train_iterator("cifar10", MOCK_DIR, 10, seed=0, start_step=-3)
    with pytest.raises(ValueError, match="global_batch_size.*0"):
        data.train_iterator("cifar10", MOCK_DIR, 0, seed=0)
    with pytest.raises(ValueError, match="image_size.*-5"):
        data.dataset_info("cifar10", MOCK_DIR, image_size=-5)
    with pytest.raises(ValueError, match="global_batch_size=64 exceeds the 50"):
        data.train_iterator("cifar10", MOCK_DIR, 64, seed=0)


def test_unprepared_data_sets_say_what_is_needed(tmp_path):
    for name in ("imagenet2012", "cifar10"):
        with pytest.raises(FileNotFoundError, match=f"{name} is not prepared under {tmp_path}"):
            data.ensure_dataset(name, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="manually"):
        data.ensure_dataset("imagenet2012", str(tmp_path))
    data.ensure_dataset("imagenet2012", "gs://some-bucket/tfds")  # Remote: only ever read.


def test_ensure_dataset_accepts_mocked_data(mock_small):
    for name in ("fashion_mnist", "cifar10", "imagenet2012"):
        data.ensure_dataset(name, MOCK_DIR)


def test_cifar10_is_normalised_with_the_reference_constants():
    """The reference's `Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))`."""
    pixels = np.array([0, 128, 255], np.uint8).reshape(3, 1, 1, 1).repeat(3, axis=-1)
    got = data.normalize(pixels, data.dataset_spec("cifar10"))
    mean, std = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2023, 0.1994, 0.2010])
    want = (np.array([0, 128, 255]).reshape(3, 1, 1, 1) / 255 - mean) / std
    np.testing.assert_allclose(got, want, rtol=1e-5)
