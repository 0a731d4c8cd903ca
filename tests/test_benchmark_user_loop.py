"""benchmarks/user_loop: method presets, IDX reading, tiny runs of the user loop, the tables."""

import json

import numpy as np
import pytest

import optg_jax
from benchmarks import report
from benchmarks import user_loop as lenet
from optg_jax.masking import masked_paths
from tests.test_masking import VIT_MASKED_PER_BLOCK


def test_method_presets_are_the_calls_a_user_makes():
    assert lenet.method_kwargs("dense", 468) is None
    assert lenet.method_kwargs("optg", 468) == {"criterion": "optg"}
    assert lenet.method_kwargs("optg-epoch", 468) == {"criterion": "optg", "mask_update_every": 468}
    assert lenet.method_kwargs("optg-paper", 468) == {
        "criterion": "optg",
        "recipe": "paper",
        "mask_update_every": 468,
    }
    assert lenet.method_kwargs("optg:score_momentum=0.9,every=50,schedule=sigmoid", 468) == {
        "criterion": "optg",
        "score_momentum": 0.9,
        "mask_update_every": 50,
        "schedule": "sigmoid",
    }
    kw = lenet.method_kwargs("optg:keep_dense=patch_embed+head", 468)
    tree = {name: {"kernel": np.zeros((2, 2))} for name in ("patch_embed", "fc", "head")}
    assert masked_paths(tree, kw.pop("is_masked")) == ["fc/kernel"]
    assert kw == {"criterion": "optg"}
    with pytest.raises(ValueError, match="unknown method 'snip'"):
        lenet.method_kwargs("snip", 468)


@pytest.mark.slow  # ~1 minute on a 2-core CPU
def test_a_tiny_run_reaches_the_target_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 28, 28, 1)).astype(np.float32)
    y = (x.reshape(512, -1)[:, :10].argmax(1)).astype(np.int32)  # learnable labels
    seen = []
    progress = lambda e, loss, s: seen.append((e, float(loss), optg_jax.sparsity_summary(s)))
    result = lenet.train("optg", 0.9, 2, 0, (x, y, x[:128], y[:128]), progress=progress)
    # 784*300 + 300*100 + 100*10 = 266,200 kernel weights; floor(266,200 * 0.1) = 26,620 kept.
    assert result["sparsity"] == pytest.approx(1 - 26_620 / 266_200, abs=1e-12)
    assert set(result["layers"]) == {"Dense_0", "Dense_1", "Dense_2"}
    assert 10.0 < result["top1"] <= 100.0
    # One report per epoch, with the state as it stands then: 4 updates an epoch (512 / 128).
    assert [(e, summary["step"]) for e, _, summary in seen] == [(1, 4), (2, 8)]
    assert seen[-1][2]["global"] == result["sparsity"]
    assert all(0.0 < loss < 10.0 for _, loss, _ in seen)
    dense_seen = []
    dense = lenet.train(
        "dense", 0.0, 2, 0, (x, y, x[:128], y[:128]), progress=lambda *a: dense_seen.append(a)
    )
    assert dense["sparsity"] == 0.0 and dense["layers"] == {}
    assert [(e, s) for e, _, s in dense_seen] == [(1, None), (2, None)]


def test_table_means_and_bold():
    rows = [
        {"method": m, "sparsity_target": 0.99, "epochs": 10, "seed": s, "split": "test", "top1": t}
        for m, s, t in [("optg", 0, 88.0), ("optg", 1, 89.0), ("magnitude", 0, 87.0)]
    ]
    rows.append(
        {
            "method": "dense",
            "sparsity_target": 0.0,
            "epochs": 10,
            "seed": 0,
            "split": "test",
            "top1": 90.0,
        }
    )
    text = "\n".join(lenet.table(rows, "test"))
    assert "Dense: 90.00 (1)." in text
    assert f"| {lenet.LABELS['optg']} | **88.50 ± 0.71** (2) |" in text
    assert f"| {lenet.LABELS['magnitude']} | 87.00 (1) |" in text


def test_read_idx_by_hand(tmp_path):
    import gzip

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (2, 3, 4))
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + images.tobytes())
    np.testing.assert_array_equal(lenet.read_idx(str(path)), images)
    bad = tmp_path / "bad"
    bad.write_bytes(bytes([0, 0, 13, 1, 0, 0, 0, 1, 0, 0, 0, 0]))  # float32 IDX
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        lenet.read_idx(str(bad))


def test_idx_and_tfds_sources_hold_the_same_examples():
    """Same splits, same images as multisets (TFDS stores them in another order)."""
    a = lenet.load_fashion_mnist(0, "idx")
    b = lenet.load_fashion_mnist(0, "tfds")
    for i in (1, 3):  # labels
        assert np.array_equal(np.bincount(a[i]), np.bincount(b[i]))
    assert len(a[0]) == len(b[0]) == 60_000 and len(a[2]) == len(b[2]) == 10_000
    np.testing.assert_allclose(
        np.sort(a[2].sum(axis=(1, 2, 3))), np.sort(b[2].sum(axis=(1, 2, 3))), rtol=1e-5
    )


def test_user_optimizer_first_step_by_hand():
    # One step from w = 1 with gradient 2 and lr 0.1. SGD with momentum after weight decay
    # (LeNet's 5e-4): -0.1 * (2 + 5e-4 * 1). AdamW's first step is the sign of the gradient
    # (bias-corrected moments g and g^2) plus the decoupled decay 0.05: -0.1 * (1 + 0.05 * 1).
    params, grads = {"w": np.float32(1.0)}, {"w": np.float32(2.0)}
    for name, want in (("lenet", -0.20005), ("vit_tiny_p7_adamw", -0.105)):
        tx = lenet.user_optimizer(lenet.MODELS[name], lambda step: 0.1)
        updates, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_allclose(float(updates["w"]), want, rtol=1e-5)  # float32


@pytest.mark.slow  # ~30 s of ViT compile on 2 cores; the ViT's masking is in test_masking.py
def test_a_tiny_vit_run():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.int32)
    result = lenet.train("optg", 0.9, 1, 0, (x, y, x[:64], y[:64]), "vit_tiny")
    # Masked: the patch embedding, 4 x (q, k, v, out, 2 MLP) kernels and the head; not the
    # position embedding, norms or biases (optg_jax.masking's default).
    kept = 1 - result["sparsity"]
    assert 0.0999 < kept <= 0.1 and "pos_embedding" not in str(result["layers"])
    # One entry per masked kernel, named by its path (the blocks are not merged).
    want = {f"block{i}/{k.rsplit('/', 1)[0]}" for i in range(4) for k in VIT_MASKED_PER_BLOCK}
    assert set(result["layers"]) == want | {"head", "patch_embed"}


def test_main_resumes_and_copies_the_notes_into_its_section(tmp_path, monkeypatch):
    """Recorded runs are skipped; the section holds the table, then the hand-written notes."""
    calls = []

    def fake_train(method, sparsity, epochs, seed, arrays, model_name, progress):
        calls.append((method, sparsity, seed))
        progress(epochs, 0.5, None)  # the run's own progress callback takes the last epoch
        return {"top1": 80.0 + seed, "sparsity": sparsity, "layers": {}}

    monkeypatch.setattr(lenet, "train", fake_train)
    monkeypatch.setattr(lenet, "load_fashion_mnist", lambda *a: None)
    (tmp_path / "user_loop_vit_tiny_notes.md").write_text("Verdict: by hand.\n")
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n")
    argv = ["--model", "vit_tiny", "--epochs", "2", "--sparsities", "0.9", "--methods", "optg"]
    argv += ["--results-dir", str(tmp_path), "--benchmarks-md", str(md), "--seeds", "0"]
    assert lenet.main(argv) == 0
    assert lenet.main(argv[:-1] + ["0", "1"]) == 0  # seed 0 is recorded: only seed 1 trains
    assert calls == [("optg", 0.9, 0), ("optg", 0.9, 1)]
    # Each record says which code trained it and where (a rerun elsewhere need not equal it).
    rows = [json.loads(line) for line in (tmp_path / "user_loop_vit_tiny.jsonl").open()]
    assert {r["code"] for r in rows} == {report.code_version()}
    assert {r["host"] for r in rows} == {report.run_host()}
    text = md.read_text()
    assert "kept" in text
    section = text[text.index("<!-- user_loop_vit_tiny:begin -->") :]
    assert "## A Vision Transformer (vit_tiny) in a user's optax loop" in section  # its title
    assert f"| {lenet.LABELS['optg']} | **80.50 ± 0.71** (2) |" in section
    assert section.index("80.50") < section.index("Verdict: by hand.") < section.index(":end -->")
