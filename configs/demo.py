"""LSTRL on the generated demo dataset: a CPU-sized run for trying the code end to end.

  python -m lstrl_jax.data.demo --out data/demo
  python train.py --config configs/demo.py --workdir runs/demo
  python train.py --config configs/demo.py:smoke --workdir runs/demo_smoke   # even smaller

The demo data use the iLIDS-VID layout (two cameras, a 10-split file); `dataset='demo'` reads them with the
iLIDS-VID reader and names them `demo` in logs, tables and results.json.
Full LSTRL on a ResNet-18 backbone at 128x64, T=4, P=4 x K=2, 10 epochs, evaluated every 5. Paper: the demo
data are synthetic, so there are no paper numbers; they only show that training lowers the loss and lifts
R-1 above chance.
"""

import ml_collections

from lstrl_jax.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config; `arg='smoke'` gives the CPU smoke variant (`configs.default.smoke`)."""
  config = default.get_config()
  config.dataset = 'demo'
  config.data_dir = 'data/demo'
  config.seq_len = 4
  config.height = 128
  config.width = 64
  config.num_identities = 4
  config.num_instances = 2
  config.augment.pad = 5
  # Decode in the main process: on a 2-core CPU grain workers only compete with XLA (train 133 s with none
  # against 141 s with 2, identical scores), and they leave shared-memory warnings at exit (grain issue #398).
  config.num_workers = 0
  config.model.depth = 18
  config.num_epochs = 10
  config.warmup_epochs = 2
  config.decay_every_epochs = 7
  config.eval_every_epochs = 5
  config.eval_batch_size = 16
  config.log_every_steps = 5
  config.checkpoint_every_epochs = 5
  return default.variant(config, arg, 'configs/demo.py')
