"""LSTRL on LS-VID: the paper's recipe (DESIGN.md section 2), ResNet-50, 256x128, T=8, P=8 x K=4, 400 epochs.

  python train.py --config configs/lsvid.py --workdir runs/lsvid
  python train.py --config configs/lsvid.py:smoke --workdir runs/lsvid_smoke   # CPU smoke run

Data: the LS-VID download (`list_sequence/`, `tracklet_*/`, `test/data/info_test.mat`) under `data_dir`
(default data/lsvid). Paper (dense test clips): mAP 82.4 %, R-1 89.8 %.
"""

import ml_collections

from lstrl_jax.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The LS-VID config; `arg='smoke'` gives the CPU smoke variant (`configs.default.smoke`)."""
  config = default.get_config()
  config.dataset = 'lsvid'
  config.data_dir = 'data/lsvid'
  return default.variant(config, arg, 'configs/lsvid.py')
