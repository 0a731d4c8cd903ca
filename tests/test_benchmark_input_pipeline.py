"""benchmarks/input_pipeline.py: its data, measurement and report on a handful of images."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

PIXELS = 224 * 224 * 3


@pytest.fixture(scope="module")
def bench():
    from benchmarks import input_pipeline

    return input_pipeline


@pytest.fixture(scope="module")
def written(bench, tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data_dir, bench.write_dataset(data_dir, num_images=6)


def test_synthetic_jpegs_have_imagenet_sizes(written):
    data_dir, dataset = written
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    for split in ("train", "validation"):
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        examples = list(ds)
        assert len(examples) == 6
        shapes = np.array([tf.io.extract_jpeg_shape(ex["image"]).numpy() for ex in examples])
        assert (shapes[:, 0] >= 350).all() and (shapes[:, 0] <= 375).all()
        assert (shapes[:, 1] >= 400).all() and (shapes[:, 1] <= 500).all()
        assert (shapes[:, 2] == 3).all()
        sizes = [len(ex["image"].numpy()) for ex in examples]
        assert np.mean(sizes) == pytest.approx(dataset["mean_jpeg_bytes"])
    # Textured like photographs: ImageNet's JPEGs average about 110 kB.
    assert 70_000 < dataset["mean_jpeg_bytes"] < 160_000


def test_measurement_and_report(bench, written, tmp_path):
    data_dir, dataset = written
    variants = bench.run_variants(data_dir, batch_size=2, warmup=1, batches=2, rounds=1)
    assert sorted(variants) == [
        "eval/deterministic",
        "eval/float32",
        "eval/nondeterministic",
        "train/deterministic",
        "train/float32",
        "train/nondeterministic",
    ]
    for key, entry in variants.items():
        assert entry["images_per_s"] > 0 and len(entry["rounds"]) == 1
        assert "float64" not in entry["dtypes"].values()
        # uint8 pixels (float32 before), an int32 label, and for eval a float32 mask.
        extra = 8 if key.startswith("eval") else 4
        pixel_bytes = 4 if key.endswith("float32") else 1
        assert entry["bytes_per_image"] == pixel_bytes * PIXELS + extra
        assert entry["dtypes"]["image"] == ("float32" if pixel_bytes == 4 else "uint8")

    settings = dict(batch_size=2, warmup=1, batches=2, rounds=1, cpu="test CPU", load=0.5)
    text = bench.render({1: variants}, dataset, settings)
    train = variants["train/deterministic"]["images_per_s"]
    evaluation = variants["eval/deterministic"]["images_per_s"]
    nondeterministic = variants["train/nondeterministic"]["images_per_s"] / train
    assert f"| 1 | {train:.0f} | {train:.0f} | {evaluation:.0f} | {evaluation:.0f} |" in text
    assert f"{nondeterministic:.2f}, " in text
    assert f"| 2,500 images/s | {2500 / train:.0f} | {2500 / evaluation:.0f} |" in text
    assert f"| 5,000 images/s | {5000 / train:.0f} | {5000 / evaluation:.0f} |" in text
    before = variants["train/float32"]["images_per_s"]
    assert f"| 1 | float32 (before) | {4 * PIXELS + 4:,} | {before:.0f} |" in text
    assert f"| 1 | uint8 (after) | {PIXELS + 4:,} | {train:.0f} |" in text
    assert f"{PIXELS + 4:,} (image uint8, label int32, mask float32) instead of " in text
    assert f"{4 * PIXELS + 4:,} with float32 pixels, 4.0x fewer" in text

    path = tmp_path / "BENCHMARKS.md"
    bench.update_section(str(path), "input_pipeline", text)
    written_text = path.read_text()
    assert written_text.count("<!-- input_pipeline:begin -->") == 1
    assert text.strip() in written_text


def _variants(train_det, train_nondet, eval_det=(100.0,), eval_nondet=(100.0,)):
    rounds = {
        "train/deterministic": train_det,
        "train/nondeterministic": train_nondet,
        "eval/deterministic": eval_det,
        "eval/nondeterministic": eval_nondet,
    }
    return {k: {"rounds": list(v), "images_per_s": float(np.median(v))} for k, v in rounds.items()}


def test_determinism_note_weighs_the_gain_against_the_noise(bench):
    steady = (100.0, 101.0, 102.0)
    # +50% with rounds that spread by 2%: a real cost of determinism.
    note = bench.determinism_note({1: _variants(steady, (150.0, 151.0, 152.0), steady, steady)})
    assert "gains +50% (train, 1 core(s)), beyond the 2% spread" in note
    assert "costs more than 10%" in note
    # +20% with rounds of the deterministic pipeline from 80 to 120 (50% spread): noise.
    note = bench.determinism_note(
        {2: _variants((80.0, 100.0, 120.0), (120.0,) * 3, steady, steady)}
    )
    assert "is +20% (train, 2 core(s)), within the 50% spread" in note
    assert "no measured cost over 10%" in note
    # +8%, steady: under 10%, not a cost either.
    note = bench.determinism_note({1: _variants(steady, (108.0, 109.0, 110.0), steady, steady)})
    assert "is +8% (train, 1 core(s)), under 10%, if beyond the 2% spread" in note
    assert "no measured cost over 10%" in note
    note = bench.determinism_note({1: _variants((100.0,), (150.0,))})
    assert "one round per variant" in note


def test_cores_needed(bench):
    assert bench.cores_needed(2500, 125.0) == 20.0
    assert bench.cores_needed(5000, 125.0) == 40.0


@pytest.mark.slow
def test_whole_benchmark_in_pinned_processes(bench, tmp_path):
    out, md = tmp_path / "input_pipeline.md", tmp_path / "BENCHMARKS.md"
    bench.main(["--quick", "--cores", "1", "--out", str(out), "--benchmarks-md", str(md)])
    text = (
        md.read_text().split("<!-- input_pipeline:begin -->")[1].split("<!-- input_pipeline:end")[0]
    )
    assert out.read_text().startswith(text.strip())
    assert "| 1 | " in text and "| 2 | " not in text
