"""LSTRL on own data in the 'folders' layout or a CSV manifest (data/README.md, DESIGN.md section 6).

  python -m lstrl_jax.data.stats --config configs/folders.py --config.data_dir=data/own
  python train.py --config configs/folders.py --config.data_dir=data/own --workdir runs/own
  python train.py --config configs/folders.py:smoke --config.data_dir=data/own.csv --workdir runs/own_smoke

`data_dir` is a folder holding train/, query/ and gallery/ (`<pid>/<camera>/<tracklet>/<frames>`) or a
`.csv` manifest (columns frames,pid,camid,subset). The recipe is the paper's (ResNet-50, 256x128, T=8,
P=8 x K=4, 400 epochs); scoring is 'cross_camera'. Fewer than P=8 training identities needs
`--config.num_identities`; without ImageNet weights (`--config.model.pretrained`) expect a long training.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The own-data config; `arg='smoke'` gives the CPU smoke variant (`configs.default.smoke`)."""
  config = default.get_config()
  config.dataset = 'folders'
  config.data_dir = 'data/own'
  return default.variant(config, arg, 'configs/folders.py')
