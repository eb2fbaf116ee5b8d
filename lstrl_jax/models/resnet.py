"""ResNet-18/34/50/101 backbone in the torchvision layout, NHWC (DESIGN.md section 1).

One definition covers the four depths: `BasicBlock` (18, 34) and `Bottleneck` (50, 101, torchvision v1.5:
the stride sits on the 3x3 convolution). Frames are folded into the batch by the caller, so every array
here is `[N, H, W, C]` with N = B*T. The last stage keeps stride `last_stride` (1 by default, the ReID
convention: a 16x8 map at 256x128 input instead of 8x4).

Parameter names follow torchvision, so importing ImageNet weights is a rename (`lstrl_jax.models.weights`):

  torchvision key                    Flax path (inside the `ResNet` module)
  conv1.weight                       params/conv1/kernel
  bn1.{weight,bias}                  params/bn1/{scale,bias}
  bn1.{running_mean,running_var}     batch_stats/bn1/{mean,var}
  layer{s}.{b}.conv{i}.weight        params/layer{s}_{b}/conv{i}/kernel
  layer{s}.{b}.bn{i}.*               params|batch_stats/layer{s}_{b}/bn{i}/*
  layer{s}.{b}.downsample.0.weight   params/layer{s}_{b}/downsample_0/kernel
  layer{s}.{b}.downsample.1.*        params|batch_stats/layer{s}_{b}/downsample_1/*

i.e. a numeric key component is joined to the one before it with `_`. Kernels are HWIO
(`[kh, kw, C_in, C_out]`): a torchvision OIHW weight maps with `transpose(2, 3, 1, 0)`. `bn*.num_batches_tracked`
has no counterpart. torchvision's `fc` is not part of the backbone. Inside `LSTRL` this module is named
`backbone`, so the paths there start with `params/backbone/`.

BatchNorm matches PyTorch (`lstrl_jax.models.norm.BatchNorm`: the running variance takes the unbiased batch
variance, n/(n-1)): momentum 0.1 (Flax `momentum=0.9`), eps 1e-5; scale/bias are float32 parameters
(`param_dtype`), the convolutions compute in `dtype` (e.g. bfloat16).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lstrl_jax.models import conv as conv_lib
from lstrl_jax.models import norm
from lstrl_jax.models import pool

Dtype = Any

BN_MOMENTUM = 0.9  # Flax convention: running = 0.9 * running + 0.1 * batch (PyTorch momentum 0.1)
BN_EPSILON = 1e-5

# He (Kaiming) normal init with fan_out, as torchvision's ResNet.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def batch_norm(
    train: bool | None, dtype: Dtype, param_dtype: Dtype, name: str | None, zero_scale: bool = False
) -> norm.BatchNorm:
  """PyTorch-equivalent BatchNorm over the last axis (batch statistics when `train`, running ones otherwise).

  Args:
    train: normalise with the batch statistics and update `batch_stats/{mean,var}`; None defers the choice
      to the call (`use_running_average=not train`).
    dtype: compute/output dtype.
    param_dtype: dtype of scale and bias.
    name: module name (torchvision's, e.g. 'bn1').
    zero_scale: initialise the scale to 0, so the layer first outputs its bias (0).
  """
  return norm.BatchNorm(
      use_running_average=None if train is None else not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      dtype=dtype,
      param_dtype=param_dtype,
      scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
      name=name,
  )


def conv(features: int, kernel: int, stride: int, dtype: Dtype, param_dtype: Dtype,
         name: str | None) -> conv_lib.Conv:
  """Bias-free `kernel`x`kernel` convolution with PyTorch's symmetric padding `kernel // 2` (`conv.Conv`: the
  parameter of `nn.Conv`; on CPU a 1x1 kernel gradient is one matrix product)."""
  return conv_lib.Conv(features, kernel, stride, dtype=dtype, param_dtype=param_dtype, kernel_init=conv_init,
                       name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with an identity/projection shortcut (ResNet-18/34).

  `[N, H, W, C_in] -> [N, H/stride, W/stride, features]`.
  """

  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  expansion = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    conv_ = functools.partial(conv, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = functools.partial(batch_norm, train, self.dtype, self.param_dtype)
    y = nn.relu(bn('bn1')(conv_(self.features, 3, self.stride, name='conv1')(x)))
    y = bn('bn2')(conv_(self.features, 3, 1, name='conv2')(y))
    return nn.relu(y + _shortcut(self, x, self.features, train))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 bottleneck, torchvision v1.5 (ResNet-50/101).

  `[N, H, W, C_in] -> [N, H/stride, W/stride, 4 * features]`.
  """

  features: int
  stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  expansion = 4

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    conv_ = functools.partial(conv, dtype=self.dtype, param_dtype=self.param_dtype)
    bn = functools.partial(batch_norm, train, self.dtype, self.param_dtype)
    out_features = self.features * self.expansion
    y = nn.relu(bn('bn1')(conv_(self.features, 1, 1, name='conv1')(x)))
    y = nn.relu(bn('bn2')(conv_(self.features, 3, self.stride, name='conv2')(y)))
    y = bn('bn3')(conv_(out_features, 1, 1, name='conv3')(y))
    return nn.relu(y + _shortcut(self, x, out_features, train))


def _shortcut(block: BasicBlock | Bottleneck, x: jnp.ndarray, out_features: int, train: bool) -> jnp.ndarray:
  """Identity, or torchvision's `downsample` (1x1 strided conv + BN) when the shape changes."""
  if block.stride == 1 and x.shape[-1] == out_features:
    return x
  y = conv(out_features, 1, block.stride, block.dtype, block.param_dtype, name='downsample_0')(x)
  return batch_norm(train, block.dtype, block.param_dtype, name='downsample_1')(y)


# depth -> (block, blocks per stage), as torchvision.
ARCHITECTURES = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck width (BasicBlock output width) of layer1..layer4


def stage_channels(depth: int) -> tuple[int, ...]:
  """Output channels of layer1..layer4, e.g. (256, 512, 1024, 2048) for ResNet-50.

  Raises:
    ValueError: `depth` is not 18, 34, 50 or 101.
  """
  block, _ = _architecture(depth)
  return tuple(width * block.expansion for width in STAGE_WIDTHS)


def _architecture(depth: int) -> tuple[type[nn.Module], Sequence[int]]:
  if depth not in ARCHITECTURES:
    raise ValueError(f'model.depth: expected one of {sorted(ARCHITECTURES)}, got {depth!r}')
  return ARCHITECTURES[depth]


class ResNet(nn.Module):
  """ImageNet ResNet without the `fc` head, exposing the stem and each stage so modules can be inserted.

  `stem`: `[N, H, W, 3] -> [N, H/4, W/4, 64]` (conv1 7x7/2, bn1, ReLU, 3x3/2 max pool).
  `stage(x, s)`: torchvision's `layer{s}`, s in 1..4; strides 1, 2, 2, `last_stride`.
  `__call__`: stem then layer1..layer4, `[N, H, W, 3] -> [N, H/32*last_stride, W/32*last_stride, C_4]`
  (`[N, 16, 8, 2048]` for ResNet-50 at 256x128 with last stride 1).

  Attributes:
    depth: 18, 34, 50 or 101 (ValueError otherwise, raised at init/apply).
    last_stride: stride of layer4 (1 or 2).
    dtype: compute dtype of convolutions and BatchNorm outputs.
    param_dtype: dtype of the parameters.
  """

  depth: int = 50
  last_stride: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    block, sizes = _architecture(self.depth)
    self.conv1 = conv(64, 7, 2, self.dtype, self.param_dtype, name=None)
    self.bn1 = batch_norm(None, self.dtype, self.param_dtype, name=None)
    strides = (1, 2, 2, self.last_stride)
    layers = [
        [
            block(width, stride if b == 0 else 1, self.dtype, self.param_dtype)
            for b in range(count)
        ]
        for width, count, stride in zip(STAGE_WIDTHS, sizes, strides)
    ]
    # Lists assigned in setup are named `<attribute>_<index>`: layer1_0, layer1_1, ... as torchvision.
    self.layer1, self.layer2, self.layer3, self.layer4 = layers

  def stem(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """conv1, bn1, ReLU, max pool 3x3/2 (padding 1, as PyTorch). `[N, H, W, 3] -> [N, H/4, W/4, 64]`."""
    x = self.conv1(jnp.asarray(x, self.dtype))
    x = nn.relu(self.bn1(x, use_running_average=not train))
    return pool.max_pool(x, 3, 2, 1)

  def stage(self, x: jnp.ndarray, index: int, *, train: bool) -> jnp.ndarray:
    """Applies torchvision's `layer{index}` (index 1..4) to `[N, h, w, C]`.

    Raises:
      ValueError: `index` is not in 1..4.
    """
    if index not in (1, 2, 3, 4):
      raise ValueError(f'ResNet stage index: expected 1..4, got {index!r}')
    for block in (self.layer1, self.layer2, self.layer3, self.layer4)[index - 1]:
      x = block(x, train=train)
    return x

  def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
    """Stem and all four stages; see the class docstring for shapes."""
    x = self.stem(x, train=train)
    for index in (1, 2, 3, 4):
      x = self.stage(x, index, train=train)
    return x
