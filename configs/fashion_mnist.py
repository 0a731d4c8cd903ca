"""The default run: a small CNN on Fashion-MNIST at 95% sparsity in a few minutes on a CPU.

bash scripts/run_default.sh     # or
python train.py --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist
"""

from optg_jax.train.config import base_config


def get_config():
    c = base_config()
    c.model = "fmnist_cnn"
    c.dataset = "fashion_mnist"
    c.image_size = 28
    c.num_epochs = 8
    c.batch_size = 128
    c.learning_rate = 0.2  # Base lr at batch 256: the effective lr at batch 128 is 0.1.
    c.weight_decay = 5e-4
    c.label_smoothing = 0.0
    c.warmup_epochs = 0.5
    c.sparsity = 0.95
    # The library's default recipe (base_config's): a cubic ramp ending at 2/3 of training, masks
    # frozen after it, so the last third trains the final sparse network.
    c.checkpoint_every_steps = 500
    c.log_every_steps = 50
    return c
