"""VGG-19 on CIFAR-10 with the OptG paper's CIFAR recipe: 160 epochs, batch 256, lr 0.1, wd 5e-4.

  python train.py --config=configs/vgg19_cifar10.py --workdir=runs/vgg19_cifar10 --config.sparsity=0.98
"""

from optg_jax.config import base_config


def get_config():
  c = base_config()
  c.model = "vgg19_cifar"
  c.dataset = "cifar10"
  c.image_size = 32
  c.num_epochs = 160
  c.batch_size = 256
  c.learning_rate = 0.1
  c.weight_decay = 5e-4
  c.label_smoothing = 0.0
  c.warmup_epochs = 5.0
  # As in the paper: the sigmoid (beta = 1 per epoch) is centred at the middle of training and
  # within 1% of the target about 5 epochs later, leaving ~45% of the run to recover.
  c.pruning_end_fraction = 1.0
  c.sparsity = 0.95
  c.checkpoint_every_steps = 2000
  return c
