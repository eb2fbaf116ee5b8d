"""LSTRL: ResNet backbone + MAE + BME + BNNeck head for video person re-identification (DESIGN.md section 1).

Liu, Zhang, Lu, "Video-based Person Re-identification with Long Short-Term Representation Learning".
Frames are folded into the batch for the backbone (`[B*T, H, W, C]`); after each stage s in `mae_stages` ∪
`bme_stages` the clip map F `[B, T, h, w, C]` becomes F + MAE(F) + BME(F) (a branch only where enabled).
Head: GAP over h x w and TAP over T -> f `[B, C_4]`; BNNeck (BatchNorm1d) -> f_bn (the test feature);
linear classifier without bias on f_bn. The head runs in float32 whatever the compute `dtype` (float64 when
`dtype` is float64, for the parity checks of `benchmarks/train_parity.py`).

Variables: {'params', 'batch_stats'}. Parameter tree: 'backbone' (the `ResNet`, torchvision names, see
`lstrl_jax.models.resnet`), 'mae{s}' / 'bme{s}' for each insertion stage s, 'bnneck' {scale, bias},
'classifier' {kernel `[C_4, num_classes]`}.

BNNeck bias: a trainable-shaped parameter `params/bnneck/bias` (initialised to 0, counted in the parameter
total as in the paper), frozen by the optimiser: `trainable_mask(params)` marks it False, and the training
code must use that mask (e.g. `optax.masked` / `optax.set_to_zero` on the False leaves) so it stays 0.

Intermediates (with `mutable=['intermediates']`, plus 'batch_stats' when training): `mae{s}/D1..D4` and
`bme{s}/M_f, M_b`; shapes in `lstrl_jax.models.mae` and `lstrl_jax.models.bme`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lstrl_jax.models.bme import BME, BME_MODES
from lstrl_jax.models.mae import MAE
from lstrl_jax.models.resnet import ARCHITECTURES, ResNet, batch_norm

Dtype = Any

FROZEN_PARAMS = (('bnneck', 'bias'),)  # parameter paths the optimiser must not update
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


class LSTRL(nn.Module):
  """The LSTRL network. `__call__(clips, *, train)`: clips `[B, T, H, W, 3]` -> dict (see `__call__`).

  Attributes:
    num_classes: training identities (classifier outputs), e.g. 625 on MARS.
    depth: ResNet depth, 18 | 34 | 50 | 101.
    last_stride: stride of layer4 (1: 16x8 maps at 256x128).
    mae_stages: torchvision layer indices (1..4) after which MAE is inserted; () disables MAE.
    mae_granularities: A1..A4 on/off (paper Table 4).
    bme_stages: layer indices after which BME is inserted; () disables BME.
    bme_mode: 'global_to_local' or 'local_to_local' (paper Table 5).
    bme_bidirectional: M^f and M^b (True) or M^f only.
    as_written: evaluate MAE's ω2 and BME's ψ on the repeated / shifted maps as the paper's equations are
      written, the form whose MACs the paper counts (`lstrl_jax.summary` traces it); False (default) applies
      them before repeating / shifting: the same outputs in 6.6% fewer convolution MACs for the full model at
      256x128, T=8 (4.60 instead of 4.93 GMACs per frame; `models.mae`, `models.bme`).
    dtype: compute dtype of backbone, MAE and BME (e.g. jnp.bfloat16); the head computes in float32.
    param_dtype: parameter dtype.
  """

  num_classes: int
  depth: int = 50
  last_stride: int = 1
  mae_stages: Sequence[int] = (2, 3)
  mae_granularities: Sequence[bool] = (True, True, True, True)
  bme_stages: Sequence[int] = (2, 3)
  bme_mode: str = 'global_to_local'
  bme_bidirectional: bool = True
  as_written: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def __post_init__(self):
    check_fields(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, clips: jnp.ndarray, *, train: bool) -> dict[str, jnp.ndarray]:
    """Embeds and classifies clips.

    Args:
      clips: float `[B, T, H, W, 3]`, ImageNet-normalised.
      train: BatchNorm with batch statistics (updating 'batch_stats', which must then be mutable).

    Returns:
      {'features': f `[B, C_4]` float32 (GAP+TAP, BNNeck input), 'bn_features': f_bn `[B, C_4]` float32,
       'logits': `[B, num_classes]` float32}; C_4 = 2048 for ResNet-50. Same keys in train and eval.
    """
    b, t, height, width, _ = clips.shape
    backbone = ResNet(self.depth, self.last_stride, self.dtype, self.param_dtype, name='backbone')
    x = backbone.stem(clips.reshape(b * t, height, width, -1), train=train)
    for stage in (1, 2, 3, 4):
      x = backbone.stage(x, stage, train=train)
      if stage in self.mae_stages or stage in self.bme_stages:
        f = x.reshape(b, t, *x.shape[1:])
        out = f
        if stage in self.mae_stages:
          mae = MAE(self.mae_granularities, as_written=self.as_written, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f'mae{stage}')
          out = out + mae(f, train=train)
        if stage in self.bme_stages:
          bme = BME(self.bme_mode, self.bme_bidirectional, as_written=self.as_written, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f'bme{stage}')
          out = out + bme(f, train=train)
        x = out.reshape(x.shape)
    head_dtype = jnp.promote_types(self.dtype, jnp.float32)  # float32, or float64 for parity checks
    features = jnp.mean(x.reshape(b, -1, x.shape[-1]), axis=1, dtype=head_dtype)  # GAP + TAP
    bn_features = batch_norm(train, head_dtype, self.param_dtype, name='bnneck')(features)
    logits = nn.Dense(
        self.num_classes,
        use_bias=False,
        dtype=head_dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.normal(0.001),
        name='classifier',
    )(bn_features)
    return {'features': features, 'bn_features': bn_features, 'logits': logits}


def check_fields(model: LSTRL) -> None:
  """Raises ValueError (naming the `model.*` config key) when an LSTRL field is out of range."""
  stages = tuple(model.mae_stages) + tuple(model.bme_stages)
  problems = [
      (model.num_classes < 1, 'num_classes', 'a positive class count', model.num_classes),
      (model.depth not in ARCHITECTURES, 'model.depth', f'one of {sorted(ARCHITECTURES)}', model.depth),
      (model.last_stride not in (1, 2), 'model.last_stride', '1 or 2', model.last_stride),
      (any(s not in (1, 2, 3, 4) for s in stages), 'model.mae_stages/bme_stages', 'layer indices in 1..4', stages),
      (
          len(model.mae_granularities) != 4 or not any(model.mae_granularities),
          'model.mae_granularities',
          'four booleans, at least one True',
          model.mae_granularities,
      ),
      (model.bme_mode not in BME_MODES, 'model.bme_mode', f'one of {BME_MODES}', model.bme_mode),
  ]
  for bad, key, expected, value in problems:
    if bad:
      raise ValueError(f'{key}: expected {expected}, got {value!r}')


def model_from_config(model_config: Mapping[str, Any], num_classes: int) -> LSTRL:
  """Builds `LSTRL` from `config.model` (configs/default.py).

  Args:
    model_config: config.model; dtype / optional param_dtype as strings ('float32', 'bfloat16',
      'float16'); stage lists as sequences. Keys the network does not use (`pretrained`) are ignored.
    num_classes: number of training identities.

  Raises:
    ValueError: an unknown dtype string or a field out of range (message names the config key).
  """
  dtypes = {}
  for key in ('dtype', 'param_dtype'):
    name = model_config.get(key, 'float32')
    if name not in DTYPES:
      raise ValueError(f'model.{key}: expected one of {sorted(DTYPES)}, got {name!r}')
    dtypes[key] = DTYPES[name]
  return LSTRL(
      num_classes=int(num_classes),
      depth=int(model_config['depth']),
      last_stride=int(model_config['last_stride']),
      mae_stages=tuple(int(s) for s in model_config['mae_stages']),
      mae_granularities=tuple(bool(g) for g in model_config['mae_granularities']),
      bme_stages=tuple(int(s) for s in model_config['bme_stages']),
      bme_mode=str(model_config['bme_mode']),
      bme_bidirectional=bool(model_config['bme_bidirectional']),
      **dtypes,
  )


def trainable_mask(params: Any) -> Any:
  """Pytree of bools like `params`: False at `FROZEN_PARAMS` (the BNNeck bias), True elsewhere."""
  def trainable(path, _):
    keys = tuple(getattr(k, 'key', k) for k in path)
    return not any(keys[-len(frozen):] == frozen for frozen in FROZEN_PARAMS)

  return jax.tree_util.tree_map_with_path(trainable, params)
