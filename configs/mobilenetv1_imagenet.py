"""MobileNet-V1 on ImageNet, as in the OptG paper: 180 epochs, batch 256, lr 0.05, wd 4e-5.

python train.py --config=configs/mobilenetv1_imagenet.py --workdir=runs/mbv1 --config.sparsity=0.9
"""

from optg_jax.train.config import paper_config


def get_config():
    return paper_config(
        "mobilenet_v1",
        "imagenet2012",
        sparsity=0.8,
        num_epochs=180,
        learning_rate=0.05,
        weight_decay=4e-5,
    )
