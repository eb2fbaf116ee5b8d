"""LSTRL on MARS: the paper's recipe (DESIGN.md section 2), ResNet-50, 256x128, T=8, P=8 x K=4, 400 epochs.

  python train.py --config configs/mars.py --workdir runs/mars
  python train.py --config configs/mars.py:smoke --workdir runs/mars_smoke   # CPU smoke run

Data: the MARS download (`bbox_train/`, `bbox_test/`, `info/`) under `data_dir` (default data/mars).
Paper (dense test clips, `paper` scoring convention): mAP 86.8 %, R-1 91.6 %; the ResNet-50 baseline
(`--config.model.mae_stages='()' --config.model.bme_stages='()'`): mAP 84.2 %, R-1 89.4 %.
"""

import ml_collections

from lstrl_jax.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The MARS config; `arg='smoke'` gives the CPU smoke variant (`configs.default.smoke`)."""
  config = default.get_config()
  config.dataset = 'mars'
  config.data_dir = 'data/mars'
  return default.variant(config, arg, 'configs/mars.py')
