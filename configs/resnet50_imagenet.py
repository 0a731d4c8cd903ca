"""ResNet-50 on ImageNet, as in the OptG paper: 100 epochs, batch 256, lr 0.1, wd 1e-4.

  python train.py --config=configs/resnet50_imagenet.py --workdir=runs/r50 --config.sparsity=0.98
"""

from optg_jax.config import base_config


def get_config():
  c = base_config()
  c.model = "resnet50"
  c.dataset = "imagenet2012"
  c.image_size = 224
  c.num_epochs = 100
  c.batch_size = 256
  c.learning_rate = 0.1
  c.weight_decay = 1e-4
  c.label_smoothing = 0.1
  c.warmup_epochs = 5.0
  # As in the paper: the sigmoid (beta = 1 per epoch) is centred at the middle of training and
  # within 1% of the target about 5 epochs later, leaving ~45% of the run to recover.
  c.pruning_end_fraction = 1.0
  c.sparsity = 0.9
  c.checkpoint_every_steps = 5000
  return c
