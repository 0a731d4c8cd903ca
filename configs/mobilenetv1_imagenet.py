"""MobileNet-V1 on ImageNet, as in the OptG paper: 180 epochs, batch 256, lr 0.05, wd 4e-5.

  python train.py --config=configs/mobilenetv1_imagenet.py --workdir=runs/mbv1 --config.sparsity=0.9
"""

from optg_jax.config import base_config


def get_config():
  c = base_config()
  c.model = "mobilenet_v1"
  c.dataset = "imagenet2012"
  c.image_size = 224
  c.num_epochs = 180
  c.batch_size = 256
  c.learning_rate = 0.05
  c.weight_decay = 4e-5
  c.label_smoothing = 0.1
  c.warmup_epochs = 5.0
  # As in the paper: the sigmoid (beta = 1 per epoch) is centred at the middle of training and
  # within 1% of the target about 5 epochs later, leaving ~45% of the run to recover.
  c.pruning_end_fraction = 1.0
  c.sparsity = 0.8
  c.checkpoint_every_steps = 5000
  return c
