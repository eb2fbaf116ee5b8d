"""The first real run: LSTRL from random initialisation on the real images of `../shared/data/pku2cam`.

  python train.py --config configs/pku2cam.py --workdir runs/pku2cam          # < 20 min on a 2-core CPU
  python train.py --config configs/pku2cam.py:short --workdir runs/pku2cam    # the short form CI runs

pku2cam: 74 persons seen by two outdoor cameras, 8 images per person and camera (48x128, walking
orientations rather than consecutive frames), in the iLIDS-VID layout with a 10-split file; split 0 has 37
training and 37 test persons, query cam1, gallery cam2. No ImageNet weights can be had here, so the model is
full LSTRL on a ResNet-18 trained from scratch at the native 128x48, T=4, P=8 x K=4. The bar: a handcrafted colour-
histogram matcher scores R-1 29.7 % on split 0 (chance 2.7 %). Measured figures: benchmarks/README.md.
"""

import ml_collections

from lstrl_jax.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The pku2cam run; `arg='short'` is the CI form (fewer epochs), `arg='smoke'` the smoke variant."""
  config = default.get_config()
  config.dataset = 'ilidsvid'
  config.data_dir = '../shared/data/pku2cam'
  config.split = 0
  config.seq_len = 4
  config.height = 128
  config.width = 48  # the native 48x128 frames; layer4 maps of 8x3
  config.augment.pad = 5
  config.num_workers = 0
  config.model.depth = 18
  config.learning_rate = 1e-3
  config.num_epochs = 40
  config.warmup_epochs = 5
  config.decay_every_epochs = 30
  config.eval_every_epochs = 20
  config.eval_batch_size = 32
  config.log_every_steps = 8
  config.checkpoint_every_epochs = 20
  if arg == 'short':
    config.num_epochs = 10
    config.decay_every_epochs = 8
    config.eval_every_epochs = 0
    config.checkpoint_every_epochs = 10
    return config
  return default.variant(config, arg, 'configs/pku2cam.py')
