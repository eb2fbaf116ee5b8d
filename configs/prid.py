"""LSTRL on PRID-2011: the paper's recipe (DESIGN.md section 2), ResNet-50, 256x128, T=8, P=8 x K=4.

  python train.py --config configs/prid.py --workdir runs/prid/split0
  python train.py --config configs/prid.py --config.split=3 --workdir runs/prid/split3
  python train.py --config configs/prid.py:smoke --workdir runs/prid_smoke   # CPU smoke run

Data: `prid_2011/multi_shot/cam_{a,b}/` under `data_dir` (default data/prid). Protocol: of the 200 persons
seen by both cameras (person_0001..0200), those with long enough tracklets (178: deep-person-reid's
`splits_prid2011.json` when it is in `data_dir`, else >= `--config.prid_min_frames` (27) frames in both
cameras), 10 random 50/50 splits, query cam_a, gallery cam_b; report the mean over splits (data/README.md).
Paper: not reported in the paper (no reference numbers to compare against).
"""

import ml_collections

from lstrl_jax.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The PRID-2011 config (split 0); `arg='smoke'` gives the CPU smoke variant (`configs.default.smoke`)."""
  config = default.get_config()
  config.dataset = 'prid'
  config.data_dir = 'data/prid'
  config.split = 0
  return default.variant(config, arg, 'configs/prid.py')
