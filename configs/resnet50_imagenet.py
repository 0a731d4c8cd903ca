"""ResNet-50 on ImageNet, as in the OptG paper: 100 epochs, batch 256, lr 0.1, wd 1e-4.

python train.py --config=configs/resnet50_imagenet.py --workdir=runs/r50 --config.sparsity=0.98
"""

from optg_jax.train.config import paper_config


def get_config():
    return paper_config(
        "resnet50",
        "imagenet2012",
        sparsity=0.9,
        num_epochs=100,
        learning_rate=0.1,
        weight_decay=1e-4,
    )
