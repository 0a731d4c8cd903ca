"""How many ImageNet images per second one host core feeds through our input pipeline.

Writes a few hundred synthetic JPEGs of ImageNet's typical sizes (400-500 x 350-375 pixels,
quality 90, textured so that they compress to about ImageNet's mean of 110 kB) as a TFDS
`imagenet2012` data set in a temporary directory, then pulls batches from
`optg_jax.train.data.train_iterator` and `eval_iterator` on it at 224x224: the code path a training run
uses for ImageNet (decode-and-crop, resize, flip, normalise for training; decode, resize,
central crop, normalise for evaluation). Each core count runs in its own process, pinned to that
many CPUs, and measures every variant (train and eval, deterministic or not, and the float32
images normalised on the host that the device received before uint8) in interleaved rounds so
that a busy machine slows them alike. Reports images/s and images/s per core, bytes per image
sent to the device before (float32) and after (uint8), what a non-deterministic pipeline would
gain, and the host cores one accelerator needs at 2,500 and 5,000 images/s.

  .venv/bin/python -m benchmarks.input_pipeline --quick   # under a minute
  .venv/bin/python -m benchmarks.input_pipeline           # a few minutes

Prints the tables and writes them to benchmarks/results/input_pipeline.md and to the
`input_pipeline` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.report import BENCHMARKS_MD, cpu_name, update_section

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "input_pipeline.md")
IMAGE_SIZE = 224
HEIGHTS, WIDTHS = (350, 375), (400, 500)  # ImageNet's typical sizes, both ends included.
JPEG_QUALITY = 90
TARGET_RATES = (2500, 5000)  # Images/s one accelerator trains ResNet-50 at.
# (kind, deterministic, normalize): uint8 pixels (now), then float32 normalised on the host (before).
VARIANTS = (
    ("train", True, False),
    ("train", False, False),
    ("eval", True, False),
    ("eval", False, False),
    ("train", True, True),
    ("eval", True, True),
)


def variant_key(kind: str, deterministic: bool, normalize: bool) -> str:
    """`<kind>/<deterministic|nondeterministic>` for uint8 pixels, `<kind>/float32` before."""
    if normalize:
        return f"{kind}/float32"
    return f"{kind}/{'deterministic' if deterministic else 'nondeterministic'}"


# ------------------------------------------------------------------------- the synthetic data


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """float32 [height, width, 3]: smooth random colour fields around grey, at four scales (4 to
    160 cells per 360 rows)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    image = np.full((height, width, 3), 118.0, np.float32)
    for cells, amplitude in ((4, 80), (16, 40), (64, 30), (160, 30)):
        rows = max(1, round(cells * height / 360))
        coarse = rng.normal(0, 1, (1, rows, rows * width // height + 1, 3)).astype(np.float32)
        image += amplitude * tf.image.resize(coarse, (height, width), method="bicubic")[0].numpy()
    return image


def synthetic_jpeg(rng: np.random.Generator, canvas: np.ndarray, height: int, width: int) -> bytes:
    """A JPEG (quality 90): a random `height` x `width` crop of `canvas` plus pixel noise.

    Flat or pure-noise images decode much faster or slower than photographs; textured crops with
    noise compress to about the bytes per pixel of ImageNet's photographs.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    top = int(rng.integers(0, canvas.shape[0] - height + 1))
    left = int(rng.integers(0, canvas.shape[1] - width + 1))
    image = canvas[top : top + height, left : left + width] + rng.normal(0, 16, (height, width, 3))
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    return tf.io.encode_jpeg(pixels, quality=JPEG_QUALITY).numpy()


def write_dataset(data_dir: str, num_images: int, seed: int = 0) -> dict:
    """Writes `num_images` synthetic JPEGs as TFDS `imagenet2012` (train and validation).

    Both splits hold the same images, so that training and evaluation decode the same bytes.

    Args:
      data_dir: TFDS data directory to write `imagenet2012/<version>/` into.
      num_images: examples per split.
      seed: seed of the image sizes and content.

    Returns:
      {'num_images', 'mean_jpeg_bytes', 'mean_height', 'mean_width'} of what was written.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)
    shapes = [
        (int(rng.integers(HEIGHTS[0], HEIGHTS[1] + 1)), int(rng.integers(WIDTHS[0], WIDTHS[1] + 1)))
        for _ in range(num_images)
    ]
    # A few large canvases to crop from: textures are the slow part of making an image.
    canvases = [texture(rng, 2 * HEIGHTS[1], 2 * WIDTHS[1]) for _ in range(4)]
    jpegs = [synthetic_jpeg(rng, canvases[i % 4], h, w) for i, (h, w) in enumerate(shapes)]

    # Looked up outside `skip_registration`: the look-up imports (and registers) TFDS's builders.
    registered = tfds.builder_cls("imagenet2012")
    with tfds.core.registered.skip_registration():

        class SyntheticImagenet(registered):
            name = "imagenet2012"  # The registered builder reads what this one writes.

            def _split_generators(self, dl_manager):
                del dl_manager
                return {"train": self._examples(), "validation": self._examples()}

            def _examples(self):
                for i, jpeg in enumerate(jpegs):
                    yield i, {"image": jpeg, "label": i % 1000, "file_name": f"{i}.JPEG"}

    tfds.display_progress_bar(False)
    config = tfds.download.DownloadConfig(num_shards=max(1, min(8, num_images // 32)))
    SyntheticImagenet(data_dir=data_dir).download_and_prepare(download_config=config)
    return {
        "num_images": num_images,
        "mean_jpeg_bytes": float(np.mean([len(j) for j in jpegs])),
        "mean_height": float(np.mean([h for h, _ in shapes])),
        "mean_width": float(np.mean([w for _, w in shapes])),
    }


# ------------------------------------------------------------------------------ measuring


def measure(
    data_dir: str,
    kind: str,
    deterministic: bool,
    batch_size: int,
    warmup: int,
    batches: int,
    normalize: bool = False,
) -> dict:
    """Pulls `warmup` then `batches` batches of 224x224 images from a fresh pipeline.

    Args:
      data_dir: where `write_dataset` wrote the data.
      kind: `train` (`train_iterator`, augmented) or `eval` (`eval_iterator`).
      deterministic: the pipelines' `deterministic` option.
      batch_size: images per batch (one host's batch).
      warmup: untimed batches first (builds the pipeline and fills its buffers).
      batches: timed batches; with `warmup` they must fit in one epoch or pass.
      normalize: float32 images normalised on the host (before) instead of uint8 pixels.

    Returns:
      {'images', 'seconds', 'bytes_per_image', 'dtypes'}: images timed, the seconds they took, and
      the bytes of one batch (every array) per image, as the device would receive them.
    """
    from optg_jax.train import data  # pylint: disable=import-outside-toplevel

    options = data.Options(image_size=IMAGE_SIZE, deterministic=deterministic, normalize=normalize)
    if kind == "train":
        it = data.train_iterator("imagenet2012", data_dir, batch_size, seed=0, options=options)
    else:
        it = data.eval_iterator("imagenet2012", data_dir, batch_size, options=options)
    for _ in range(warmup):
        batch = next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    it.close()
    return {
        "images": batches * batch_size,
        "seconds": seconds,
        "bytes_per_image": sum(v.nbytes for v in batch.values()) / batch_size,
        "dtypes": {k: str(v.dtype) for k, v in batch.items()},
    }


def run_variants(
    data_dir: str, batch_size: int, warmup: int, batches: int, rounds: int
) -> dict[str, dict]:
    """Measures every variant in `VARIANTS`, round-robin for `rounds` rounds.

    An untimed pass of each kind goes first (the process's first pipeline pays for starting
    TensorFlow's thread pools and caches), and every other round runs the variants in reverse
    order, so that no variant always comes first.

    Returns:
      {`variant_key`: {'images_per_s' (median over rounds), 'rounds' (each round's images/s),
      'bytes_per_image', 'dtypes'}}.
    """
    for kind in ("train", "eval"):
        measure(data_dir, kind, True, batch_size, warmup=1, batches=1)
    out: dict[str, dict] = {}
    for r in range(rounds):
        for kind, deterministic, normalize in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            key = variant_key(kind, deterministic, normalize)
            m = measure(data_dir, kind, deterministic, batch_size, warmup, batches, normalize)
            entry = out.setdefault(key, {"rounds": []})
            entry["rounds"].append(m["images"] / m["seconds"])
            entry.update(bytes_per_image=m["bytes_per_image"], dtypes=m["dtypes"])
    for entry in out.values():
        entry["images_per_s"] = statistics.median(entry["rounds"])
    return out


def run_pinned(cores: int, data_dir: str, batch_size: int, warmup: int, batches: int, rounds: int):
    """`run_variants` in a new process pinned to the first `cores` CPUs (TF sizes its thread pools
    by the CPUs a process may run on)."""
    params = dict(
        cores=cores,
        data_dir=data_dir,
        batch_size=batch_size,
        warmup=warmup,
        batches=batches,
        rounds=rounds,
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.input_pipeline", "--worker", json.dumps(params)],
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {cores}-core measurement failed:\n{proc.stderr[-3000:]}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def worker(params: dict) -> None:
    cpus = sorted(os.sched_getaffinity(0))[: params.pop("cores")]
    os.sched_setaffinity(0, cpus)  # Before TensorFlow starts its thread pools.
    result = run_variants(**params)
    print("RESULT " + json.dumps({"cpus": cpus, "variants": result}), flush=True)


# ------------------------------------------------------------------------------- reporting


def cores_needed(rate: float, images_per_s_per_core: float) -> float:
    """Host cores that feed `rate` images/s, at `images_per_s_per_core` each (linear scaling)."""
    return rate / images_per_s_per_core


def render(by_cores: dict[int, dict], dataset: dict, settings: dict) -> str:
    """The Markdown section: throughput table, determinism, bytes per image, cores needed."""
    lines = [
        "## Input pipeline (benchmarks/input_pipeline.py)",
        "",
        f"ImageNet preprocessing of `optg_jax.train.data` at {IMAGE_SIZE}x{IMAGE_SIZE} on "
        f"{dataset['num_images']} synthetic JPEGs (quality {JPEG_QUALITY}, mean "
        f"{dataset['mean_width']:.0f}x{dataset['mean_height']:.0f} pixels, "
        f"{dataset['mean_jpeg_bytes'] / 1000:.0f} kB each; ImageNet's mean is about 110 kB) read "
        f"from a TFDS `imagenet2012` on local disk; one host's batches of "
        f"{settings['batch_size']}, {settings['batches']} timed after {settings['warmup']} "
        f"untimed, median of {settings['rounds']} interleaved round(s). Each row ran in a "
        f"process pinned to that many CPUs of a **2-core machine shared with other jobs** "
        f"({settings['cpu']}; load average {settings['load']:.1f} when it started), so the "
        "figures are a floor, and the 2-core row shares its cores with whatever else ran.",
        "",
        "| host cores | train images/s | train images/s/core | eval images/s | "
        "eval images/s/core | non-deterministic / deterministic (train, eval) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for cores, variants in sorted(by_cores.items()):
        train = variants["train/deterministic"]["images_per_s"]
        evaluation = variants["eval/deterministic"]["images_per_s"]
        train_nd = variants["train/nondeterministic"]["images_per_s"] / train
        eval_nd = variants["eval/nondeterministic"]["images_per_s"] / evaluation
        lines.append(
            f"| {cores} | {train:.0f} | {train / cores:.0f} | {evaluation:.0f} | "
            f"{evaluation / cores:.0f} | {train_nd:.2f}, {eval_nd:.2f} |"
        )
    lines += ["", determinism_note(by_cores)]
    one = by_cores[min(by_cores)]
    per_core = one["train/deterministic"]["images_per_s"] / min(by_cores)
    eval_per_core = one["eval/deterministic"]["images_per_s"] / min(by_cores)
    lines += [
        "",
        "Host cores one accelerator needs, from the single-core rows, assuming the pipeline scales "
        "linearly with cores that are as fast as these, that the cores do nothing else (the "
        "training loop's own Python thread needs one more), and ImageNet-sized JPEGs:",
        "",
        "| accelerator speed | cores for training | cores for evaluation |",
        "|---:|---:|---:|",
    ]
    for rate in TARGET_RATES:
        lines.append(
            f"| {rate:,} images/s | {cores_needed(rate, per_core):.0f} | "
            f"{cores_needed(rate, eval_per_core):.0f} |"
        )
    top = max(TARGET_RATES)
    lines += [
        "",
        "Before and after uint8: the same pipelines sending float32 images normalised on the host "
        "(before) and uint8 pixels that the jitted step normalises (after), measured in the same "
        "rounds:",
        "",
        "| host cores | images as | train bytes/image | train images/s/core | "
        "eval bytes/image | eval images/s/core |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for cores, variants in sorted(by_cores.items()):
        for form, suffix in (("float32 (before)", "float32"), ("uint8 (after)", "deterministic")):
            train, evaluation = variants[f"train/{suffix}"], variants[f"eval/{suffix}"]
            lines.append(
                f"| {cores} | {form} | {train['bytes_per_image']:,.0f} | "
                f"{train['images_per_s'] / cores:.0f} | {evaluation['bytes_per_image']:,.0f} | "
                f"{evaluation['images_per_s'] / cores:.0f} |"
            )
    before = one["train/float32"]["bytes_per_image"]
    after = one["train/deterministic"]["bytes_per_image"]
    dtypes = ", ".join(f"{k} {v}" for k, v in one["eval/deterministic"]["dtypes"].items())
    lines += [
        "",
        f"Bytes per training image that reach the device: {after:,.0f} ({dtypes}) instead of "
        f"{before:,.0f} with float32 pixels, {before / after:.1f}x fewer: at {top:,} images/s "
        f"{top * after / 1e9:.2f} GB/s instead of {top * before / 1e9:.2f} GB/s per accelerator. "
        "The batch goes from tf.data to `jax.make_array_from_process_local_data` without a copy "
        "on the host, and no float64 crosses.",
    ]
    return "\n".join(lines) + "\n"


def determinism_note(by_cores: dict[int, dict]) -> str:
    """What the measurements say about the cost of deterministic pipelines, against their noise.

    A gain counts when it exceeds both 10% and the spread (max/min - 1) of the rounds of the two
    variants compared.

    Args:
      by_cores: `{cores: {'<train|eval>/<deterministic|nondeterministic>': {'images_per_s',
        'rounds'}}}`, the measurements.

    Returns:
      The note, one paragraph of Markdown.
    """
    pairs = []
    for cores, variants in sorted(by_cores.items()):
        for kind in ("train", "eval"):
            compared = (variants[f"{kind}/deterministic"], variants[f"{kind}/nondeterministic"])
            gain = compared[1]["images_per_s"] / compared[0]["images_per_s"] - 1
            spread = max(max(e["rounds"]) / min(e["rounds"]) - 1 for e in compared)
            pairs.append((gain, spread, kind, cores))
    gain, spread, kind, cores = max(pairs)
    where = f"{kind}, {cores} core(s)"
    rounds = min(len(e["rounds"]) for v in by_cores.values() for e in v.values())
    real = [p for p in pairs if p[0] > max(0.10, p[1])]
    if rounds < 2:
        verdict = (
            f"the largest gain of a non-deterministic pipeline is {100 * gain:+.0f}% ({where}), "
            "from one round per variant, which says nothing about the noise (run without --quick)"
        )
    elif real:
        gain, spread, kind, cores = max(real)
        verdict = (
            f"a non-deterministic pipeline gains {100 * gain:+.0f}% ({kind}, {cores} core(s)), "
            f"beyond the {100 * spread:.0f}% spread of the rounds compared: determinism costs more "
            "than 10% there"
        )
    else:
        against = "within" if gain <= spread else "under 10%, if beyond"
        verdict = (
            f"the largest gain of a non-deterministic pipeline is {100 * gain:+.0f}% ({where}), "
            f"{against} the {100 * spread:.0f}% spread of the rounds compared: no measured cost "
            "over 10%"
        )
    return (
        f"Determinism: {verdict}. The pipelines stay deterministic by default: with them a run is "
        "repeatable and a resumed run bitwise equal to an uninterrupted one, which the tests "
        "check; `train.py` keeps them so. Where a host measures a real gain, a program of one's "
        "own can take it with `data.Options(deterministic=False)` in `train_iterator` and "
        "`eval_iterator` (the same examples per epoch, in an order that depends on thread timing)."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds (< 1 min)")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default=OUT, help="results file (Markdown)")
    parser.add_argument("--benchmarks-md", default=BENCHMARKS_MD)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    available = len(os.sched_getaffinity(0))
    if max(args.cores) > available or min(args.cores) < 1:
        parser.error(f"--cores {args.cores}: this process may run on {available} CPU(s)")
    # Timed batches stay inside one epoch (train) or pass (eval): no epoch-start refills.
    batch_size, warmup = 32, 2
    num_images, batches, rounds = (192, 3, 2) if args.quick else (640, 16, 3)
    settings = dict(batch_size=batch_size, warmup=warmup, batches=batches, rounds=rounds)
    settings.update(cpu=cpu_name(), load=os.getloadavg()[0])
    with tempfile.TemporaryDirectory(prefix="input_pipeline_") as data_dir:
        start = time.perf_counter()
        dataset = write_dataset(data_dir, num_images)
        print(f"wrote {num_images} JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
        by_cores = {}
        for cores in args.cores:
            by_cores[cores] = run_pinned(cores, data_dir, batch_size, warmup, batches, rounds)[
                "variants"
            ]
            print(f"{cores} core(s): " + json.dumps(by_cores[cores]), flush=True)
    text = render(by_cores, dataset, settings)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text + "\nEvery measurement (images/s of each round):\n\n```json\n")
        f.write(json.dumps(by_cores, indent=1) + "\n```\n")
    update_section(args.benchmarks_md, "input_pipeline", text)


if __name__ == "__main__":
    main()
