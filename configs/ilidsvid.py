"""LSTRL on iLIDS-VID: the paper's recipe (DESIGN.md section 2), ResNet-50, 256x128, T=8, P=8 x K=4.

  python train.py --config configs/ilidsvid.py --workdir runs/ilidsvid/split0
  python train.py --config configs/ilidsvid.py --config.split=3 --workdir runs/ilidsvid/split3
  python train.py --config configs/ilidsvid.py:smoke --config.data_dir=../shared/data/pku2cam \
      --workdir runs/smoke   # CPU smoke run (a couple of minutes)

Data: `i-LIDS-VID/sequences/` and `train-test people splits/` under `data_dir` (default data/ilidsvid).
Protocol: 150 training / 150 test identities per split, query cam1, gallery cam2; the paper reports the
mean over the 10 splits (train one workdir per `--config.split=0..9`): R-1 92.2 %, R-5 98.6 %.
"""

import ml_collections

from lstrl_jax.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The iLIDS-VID config (split 0); `arg='smoke'` gives the CPU smoke variant (`configs.default.smoke`)."""
  config = default.get_config()
  config.dataset = 'ilidsvid'
  config.data_dir = 'data/ilidsvid'
  config.split = 0
  return default.variant(config, arg, 'configs/ilidsvid.py')
