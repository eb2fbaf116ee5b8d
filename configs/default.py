"""Shared defaults for every LSTRL config: the paper's recipe (DESIGN.md section 2) on MARS-sized data.

Dataset configs (`configs/mars.py`, ...) start from `get_config()` here and override what differs.
Schedules are written in epochs; `lstrl_jax.train` turns them into steps, so overriding the batch size
never leaves them stale. One epoch visits every training identity once (num_train_pids // P steps).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the paper's default configuration (full LSTRL, 256x128, T=8, P=8 x K=4)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data (DESIGN.md section 3).
  config.dataset = 'mars'  # mars | ilidsvid | prid | lsvid | duke | demo
  config.data_dir = 'data/mars'  # root of the layout a user downloads
  config.split = 0  # iLIDS-VID / PRID-2011 split index 0..9
  config.prid_min_frames = 27  # PRID-2011 without splits_prid2011.json: frames in both cameras (datasets/prid.py)
  config.packed_dir = ''  # ArrayRecord files written by the TFDS builders; '' reads the folder layout
  config.seq_len = 8  # T, frames per clip
  config.height = 256
  config.width = 128
  config.num_identities = 8  # P identities per batch
  config.num_instances = 4  # K tracklets per identity; global batch = P * K clips
  config.num_workers = 2  # grain worker processes (0: decode in the main process)
  config.augment = ml_collections.ConfigDict(
      dict(
          pad=10,  # pixels of zero padding before the random crop
          flip_prob=0.5,
          erasing_prob=0.5,
          erasing_area=(0.02, 0.4),  # fraction of the frame area
          erasing_aspect=(0.3, 3.3),
      )
  )

  # Model (DESIGN.md section 1).
  config.model = ml_collections.ConfigDict(
      dict(
          depth=50,  # ResNet depth: 18 | 34 | 50 | 101
          last_stride=1,
          mae_stages=(2, 3),  # torchvision layer indices after which MAE is inserted; () disables MAE
          mae_granularities=(True, True, True, True),  # A1..A4 on/off (Table 4)
          bme_stages=(2, 3),  # () disables BME
          bme_mode='global_to_local',  # or 'local_to_local' (Table 5)
          bme_bidirectional=True,  # False: forward motion M^f only (Table 5)
          dtype='float32',  # compute dtype; 'bfloat16' with float32 parameters
          pretrained='',  # torchvision resnet50-*.pth or timm model.safetensors for the backbone
      )
  )

  # Optimisation (DESIGN.md section 2).
  config.num_epochs = 400
  config.learning_rate = 3e-4
  config.weight_decay = 5e-4  # added to the gradient before Adam (PyTorch Adam style)
  config.warmup_epochs = 10
  config.decay_every_epochs = 70
  config.decay_factor = 0.1
  config.label_smoothing = 0.1
  config.triplet_margin = 0.3

  # Evaluation (DESIGN.md section 3).
  config.eval_every_epochs = 50  # periodic evaluation during training; 0 disables it
  config.eval_clip_selection = 'rrs'  # clip selection of the periodic evaluation
  config.final_clip_selection = 'dense'  # clip selection of the final evaluation
  config.eval_batch_size = 32  # clips per evaluation batch (global)
  config.distance = 'cosine'  # cosine | euclidean

  # Bookkeeping.
  config.log_every_steps = 10
  config.checkpoint_every_epochs = 10
  config.max_checkpoints = 3
  config.stop_at_step = 0  # save a checkpoint and stop at this global step (rerun to resume); 0 = off
  config.max_loss_ratio = 10.0  # stop when a step's loss exceeds this times the running median; 0 = off
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks `config` in place to a CPU smoke run of a couple of minutes, returning it (the `:smoke` variant).

  Full LSTRL (MAE and BME at layer2/layer3) on a ResNet-18 backbone, 96x48 frames, T=4, P=4 x K=2 clips,
  3 epochs with an RRS evaluation after every epoch and a dense one at the end. Exercises every code path;
  the numbers it reaches say nothing about the paper's.
  """
  config.seq_len = 4
  config.height = 96  # layer4 maps of 6x3: XLA's CPU 3x3 convolutions crawl on maps narrower than 3
  config.width = 48
  config.num_identities = 4
  config.num_instances = 2
  config.num_workers = 0
  config.augment.pad = 4
  config.model.depth = 18
  config.num_epochs = 3
  config.warmup_epochs = 1
  config.decay_every_epochs = 2
  config.eval_every_epochs = 1
  config.eval_batch_size = 16
  config.log_every_steps = 2
  config.checkpoint_every_epochs = 1
  return config


def variant(config: ml_collections.ConfigDict, arg: str | None, path: str) -> ml_collections.ConfigDict:
  """Applies the variant named after the config path (`configs/x.py:<arg>`): none or 'smoke'.

  Raises:
    ValueError: an unknown variant, naming `path`.
  """
  if not arg:
    return config
  if arg == 'smoke':
    return smoke(config)
  raise ValueError(f'{path}:{arg}: unknown config variant; expected {path} or {path}:smoke')
