"""LSTRL on DukeMTMC-VideoReID: the paper's recipe (DESIGN.md section 2), ResNet-50, 256x128, T=8, P=8 x K=4.

  python train.py --config configs/duke.py --workdir runs/duke
  python train.py --config configs/duke.py:smoke --workdir runs/duke_smoke   # CPU smoke run

Data: `train/`, `query/`, `gallery/` under `data_dir` (default data/duke); 702 training identities, the
given query/gallery split. Paper: not reported in the paper (no reference numbers to compare against).
"""

import ml_collections

from lstrl_jax.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The DukeMTMC-VideoReID config; `arg='smoke'` gives the CPU smoke variant (`configs.default.smoke`)."""
  config = default.get_config()
  config.dataset = 'duke'
  config.data_dir = 'data/duke'
  return default.variant(config, arg, 'configs/duke.py')
