"""Prints the parameters and GMACs per frame of the configured LSTRL (the paper's Table 3 columns).

  python -m lstrl_jax.summary --config configs/default.py [--num_classes 625] [--config.model.bme_stages='()']

Parameters: trainable parameters per module and in total (BatchNorm running statistics excluded; the frozen
BNNeck bias included, as in the paper). GMACs: one clip `[1, T, H, W, 3]` at the configured T and frame size
is traced (nothing runs), its convolutions and dot products are counted (`lstrl_jax.models.macs`) and divided
by T. At 256x128 the paper reports 4.05 / 4.39 / 4.93 GMACs of convolutions for baseline / +MAE / full LSTRL.
The traced model evaluates the equations as the paper writes them (`LSTRL.as_written`); the model that trains and
runs computes the same function in fewer MACs (MAE's ω2 before the repeat, BME's ψ before the shift: 4.60
GMACs of convolutions at 256x128, T=8).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags
from ml_collections import config_flags

from lstrl_jax import cli
from lstrl_jax.models import macs
from lstrl_jax.models.lstrl import model_from_config

def define_flags() -> None:
  """Defines the command's flags (only when run as a program, so importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py) or shipped config name (mars, demo).')
  flags.DEFINE_integer('num_classes', 625, 'Classifier outputs (training identities; MARS: 625).', lower_bound=1)
  flags.mark_flag_as_required('config')


@dataclasses.dataclass(frozen=True)
class ModelSummary:
  """Counts of one model configuration.

  Attributes:
    params: module name -> trainable parameters, in tree order (backbone split into stem, layer1..layer4).
    macs: {'conv', 'attention', 'other'} -> MACs per frame.
    clip_shape: (T, H, W) the MACs were counted at.
  """

  params: dict[str, int]
  macs: dict[str, float]
  clip_shape: tuple[int, int, int]

  @property
  def total_params(self) -> int:
    return sum(self.params.values())


def _module_rows(params) -> dict[str, int]:
  """Top-level modules, with the backbone broken into 'backbone/stem' and 'backbone/layer1'..'layer4'."""
  rows: dict[str, int] = {}
  for name, count in macs.params_by_module(params, depth=2).items():
    top, _, child = name.partition('/')
    if top == 'backbone':
      top = 'backbone/' + (child.split('_')[0] if child.startswith('layer') else 'stem')
    rows[top] = rows.get(top, 0) + count
  return rows


def summarize(config: ml_collections.ConfigDict, num_classes: int) -> ModelSummary:
  """Counts parameters and per-frame MACs of `model_from_config(config.model, num_classes)`.

  Args:
    config: a full config (configs/default.py or a dataset config): reads model, seq_len, height, width.
    num_classes: classifier outputs.

  Raises:
    ValueError: a model field out of range (message names the config key).
  """
  model = model_from_config(config.model, num_classes)
  shape = (config.seq_len, config.height, config.width)
  clips = jax.ShapeDtypeStruct((1, *shape, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), clips)
  return ModelSummary(
      params=_module_rows(variables['params']),
      macs=macs.model_macs_per_frame(model.clone(as_written=True), variables, *shape),
      clip_shape=shape,
  )


def format_summary(summary: ModelSummary, model_config: ml_collections.ConfigDict, num_classes: int) -> str:
  """The printed report: a parameter table and a GMACs table (exact integers with thousands separators)."""
  t, h, w = summary.clip_shape
  def after(stages):
    return ', '.join(f'layer{s}' for s in stages)

  mae = f'MAE after {after(model_config.mae_stages)}' if model_config.mae_stages else 'no MAE'
  bme = (
      f'BME after {after(model_config.bme_stages)} ({model_config.bme_mode}, '
      f'{"bi" if model_config.bme_bidirectional else "forward-only"})'
      if model_config.bme_stages
      else 'no BME'
  )
  lines = [f'LSTRL: ResNet-{model_config.depth}, {mae}, {bme}, {num_classes} classes', '', 'parameters']
  width = max(len(name) for name in summary.params) + 2
  lines += [f'  {name:<{width}}{count:>14,}' for name, count in summary.params.items()]
  lines += [f'  {"total":<{width}}{summary.total_params:>14,}', '', f'GMACs per frame ({h}x{w}, T={t})']
  labels = {'conv': 'convolutions', 'attention': 'attention (MAE D^i X1)', 'other': 'other (classifier)'}
  rows = list(summary.macs.items()) + [('total', sum(summary.macs.values()))]
  lines += [f'  {labels.get(k, k):<24}{v / 1e9:>8.2f}   ({round(v):,} MACs)' for k, v in rows]
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  """Prints the summary of --config's model; a bad config value is a ValueError (one line, exit 1, `cli.run`)."""
  del argv  # cli.run refuses positional arguments
  config = flags.FLAGS.config
  summary = summarize(config, flags.FLAGS.num_classes)
  print(format_summary(summary, config.model, flags.FLAGS.num_classes))


if __name__ == '__main__':
  cli.run(main, errors=(ValueError,), define=define_flags, doc=__doc__, help_config=cli.config_for_help)
