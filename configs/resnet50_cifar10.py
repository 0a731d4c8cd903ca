"""ResNet-50 on CIFAR-10 with the OptG paper's CIFAR recipe: 160 epochs, batch 256, lr 0.1, wd 5e-4.

python train.py --config=configs/resnet50_cifar10.py --workdir=runs/resnet50_cifar10 --config.sparsity=0.98
"""

from optg_jax.train.config import paper_config


def get_config():
    return paper_config(
        "resnet50_cifar",
        "cifar10",
        sparsity=0.95,
        num_epochs=160,
        learning_rate=0.1,
        weight_decay=5e-4,
    )
