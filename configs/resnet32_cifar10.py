"""ResNet-32 on CIFAR-10 with the OptG paper's CIFAR recipe: 160 epochs, batch 256, lr 0.1, wd 5e-4.

python train.py --config=configs/resnet32_cifar10.py --workdir=runs/resnet32_cifar10 --config.sparsity=0.98

The paper trained no ResNet-32: this config takes the paper's hyper-parameters and the library's
`recipe="paper"` with the per-step schedules (`reference_schedules=False`), so that the accuracy
benchmark's method options (refresh interval, frozen masks, end of the ramp) apply to it
(`python -m benchmarks.accuracy_vs_sparsity --config configs/resnet32_cifar10.py`).
"""

from optg_jax.train.config import paper_config


def get_config():
    c = paper_config(
        "resnet32", "cifar10", sparsity=0.9, num_epochs=160, learning_rate=0.1, weight_decay=5e-4
    )
    c.reference_schedules = False
    return c
