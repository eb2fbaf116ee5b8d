"""LSTRL in plain PyTorch: an independent second implementation of DESIGN.md section 1.

Used as the reference in `tests/test_torch_parity.py` (outputs equal to the Flax model's once the same weights
are loaded), in `benchmarks/train_parity.py` (training steps, with `reference/torch_train.py`) and as the
PyTorch side of `benchmarks/model_throughput.py`. Written from DESIGN.md, not from the
Flax code (only the module names and the BME ReLU's gradient at 0 follow it): MAE with an explicit softmax
(the dependency maps D^i are materialised), BME with replicate padding at the clip ends, zero-initialised
last BatchNorm scales, GAP + TAP, BNNeck (bias frozen at 0) and a bias-free classifier. The backbone is
`reference/torch_resnet.py` (torchvision's ResNet and keys).

Import from the repository root (`python -m benchmarks.train_parity`, `python -m pytest`).
"""

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from reference.torch_resnet import ResNet

STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck width of layer1..layer4 (output width / expansion)


def _conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
  return nn.Conv2d(c_in, c_out, 1, bias=False)


class MAE(nn.Module):
  """Multi-granularity appearance extractor: `[B*T, C, H, W] -> F^a [B*T, C, H, W]` (DESIGN.md section 1).

  X1 = omega1(F) `[B, THW, C/4]`; X2 temporal mean `[B, HW, C/4]`, X3 spatial mean `[B, T, C/4]`, X4
  spatio-temporal mean `[B, 1, C/4]`; D^i = softmax(X_i X1^T) over THW (no 1/sqrt(d) scale);
  A_i = D^i X1 broadcast back to `[B, T, H, W, C/4]`; F^a = BN(omega2([A_1..A_4])), BN scale starts at 0.
  `granularities` switches A1..A4 (Table 4); omega2 reads the enabled ones, `n * C/4` channels.
  """

  def __init__(self, channels: int, seq_len: int, granularities: tuple[bool, ...] = (True,) * 4):
    super().__init__()
    self.seq_len = seq_len
    self.granularities = tuple(granularities)
    self.omega1 = _conv1x1(channels, channels // 4)
    self.omega2 = _conv1x1(sum(self.granularities) * (channels // 4), channels)
    self.bn = nn.BatchNorm2d(channels)
    nn.init.zeros_(self.bn.weight)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    bt, _, h, w = x.shape
    t = self.seq_len
    x1 = self.omega1(x)  # [B*T, C', H, W]
    c = x1.shape[1]
    x1 = x1.reshape(bt // t, t, c, h, w).permute(0, 1, 3, 4, 2)  # [B, T, H, W, C']
    keys = x1.reshape(bt // t, t * h * w, c)  # X1, [B, THW, C']
    queries = (x1, x1.mean(1, keepdim=True), x1.mean((2, 3), keepdim=True), x1.mean((1, 2, 3), keepdim=True))
    outputs = []
    for enabled, query in zip(self.granularities, queries):
      if not enabled:
        continue
      d = torch.softmax(query.reshape(bt // t, -1, c) @ keys.transpose(1, 2), dim=-1)  # D^i
      a = (d @ keys).reshape(query.shape)  # A_i at its own granularity
      outputs.append(a.expand(x1.shape))
    a = torch.cat(outputs, dim=-1).reshape(bt, h, w, -1).permute(0, 3, 1, 2)
    return self.bn(self.omega2(a))


class BME(nn.Module):
  """Bi-direction motion estimator: `[B*T, C, H, W] -> F^m [B*T, C, H, W]` (DESIGN.md section 1).

  M^f_t = phi(F_t^g) * psi(F_{t+1}), M^b_t = phi(F_t^g) * psi(F_{t-1}) with F_t^g the spatial mean
  ('global_to_local') or F_t itself ('local_to_local'); the missing neighbour at a clip end is the frame
  itself. F^m = ReLU(BN(upsilon([M^f, M^b]))), BN scale starts at 0; single direction uses M^f only.
  The ReLU passes gradient 1 at exactly 0 (as the Flax model's `relu_open_at_zero`): with the zero-initialised
  BN scale and bias every pre-activation starts at exactly 0, where `F.relu`'s gradient 0 would leave the
  whole branch untrained forever. Forward values are an ordinary ReLU's. `open_relu=False` uses `F.relu`
  (the paper code's `nn.ReLU`), to measure that difference.
  """

  def __init__(self, channels: int, seq_len: int, mode: str = 'global_to_local', bidirectional: bool = True,
               open_relu: bool = True):
    super().__init__()
    if mode not in ('global_to_local', 'local_to_local'):
      raise ValueError(f'bme_mode must be global_to_local or local_to_local, got {mode!r}')
    self.seq_len, self.mode, self.bidirectional, self.open_relu = seq_len, mode, bidirectional, open_relu
    self.phi = _conv1x1(channels, channels // 2)
    self.psi = _conv1x1(channels, channels // 2)
    self.upsilon = _conv1x1((2 if bidirectional else 1) * (channels // 2), channels)
    self.bn = nn.BatchNorm2d(channels)
    nn.init.zeros_(self.bn.weight)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    bt, _, h, w = x.shape
    t = self.seq_len
    g = x.mean((2, 3), keepdim=True) if self.mode == 'global_to_local' else x
    query = self.phi(g).reshape(bt // t, t, -1, *g.shape[2:])
    key = self.psi(x).reshape(bt // t, t, -1, h, w)
    following = torch.cat([key[:, 1:], key[:, -1:]], dim=1)  # F_{t+1}, last frame replicated
    motions = [query * following]
    if self.bidirectional:
      preceding = torch.cat([key[:, :1], key[:, :-1]], dim=1)  # F_{t-1}, first frame replicated
      motions.append(query * preceding)
    m = torch.cat(motions, dim=2).reshape(bt, -1, h, w)
    m = self.bn(self.upsilon(m))
    return torch.where(m >= 0, m, torch.zeros_like(m)) if self.open_relu else torch.relu(m)


class LSTRL(nn.Module):
  """ResNet + MAE/BME after the chosen stages + GAP/TAP + BNNeck + classifier (DESIGN.md section 1).

  `forward(clips)`: clips `[B, T, 3, H, W]` float32 (ImageNet-normalised, NCHW frames) ->
  {'features': f `[B, D]`, 'bn_features': f_bn `[B, D]`, 'logits': `[B, num_classes]`}, the same
  dict in train and eval mode (the Flax model's contract). At stage s in `mae_stages`/`bme_stages`,
  F <- F + MAE(F) + BME(F). Submodules are named like the Flax model's: `backbone` (torchvision keys,
  no `fc`), `mae{s}`, `bme{s}`, `bnneck` (bias frozen at 0), `classifier`. `bme_open_relu`: see `BME`.
  """

  def __init__(self, num_classes: int, seq_len: int, depth: int = 50, last_stride: int = 1,
               mae_stages: tuple[int, ...] = (2, 3), mae_granularities: tuple[bool, ...] = (True,) * 4,
               bme_stages: tuple[int, ...] = (2, 3), bme_mode: str = 'global_to_local',
               bme_bidirectional: bool = True, bme_open_relu: bool = True):
    super().__init__()
    self.backbone = ResNet(depth, last_stride)
    del self.backbone.fc
    expansion = 1 if depth < 50 else 4
    for s in mae_stages:
      setattr(self, f'mae{s}', MAE(STAGE_WIDTHS[s - 1] * expansion, seq_len, mae_granularities))
    for s in bme_stages:
      setattr(self, f'bme{s}', BME(STAGE_WIDTHS[s - 1] * expansion, seq_len, bme_mode, bme_bidirectional,
                                            bme_open_relu))
    dim = STAGE_WIDTHS[-1] * expansion
    self.bnneck = nn.BatchNorm1d(dim)
    nn.init.zeros_(self.bnneck.bias)
    self.bnneck.bias.requires_grad_(False)
    self.classifier = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(self.classifier.weight, std=0.001)

  def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
    b, t = clips.shape[:2]
    x = self.backbone.stem(clips.flatten(0, 1))
    for s in range(1, 5):
      x = getattr(self.backbone, f'layer{s}')(x)
      branches = [getattr(self, name) for name in (f'mae{s}', f'bme{s}') if hasattr(self, name)]
      if branches:
        x = x + sum(branch(x) for branch in branches)
    f = x.mean((2, 3)).reshape(b, t, -1).mean(1)  # GAP then TAP
    f_bn = self.bnneck(f)
    return {'features': f, 'bn_features': f_bn, 'logits': self.classifier(f_bn)}


def state_dict_from_flax(variables: Mapping[str, Any], dtype: Any = np.float32) -> dict[str, np.ndarray]:
  """PyTorch `LSTRL.state_dict()` entries (without `num_batches_tracked`), numpy `dtype`, from Flax variables.

  Names: Flax path components become dotted keys (`layer1_0` -> `layer1.0`, kernel/scale -> weight,
  mean/var -> running_mean/running_var, see `lstrl_jax.models.weights.torch_key`); convolution kernels go
  HWIO -> OIHW, the classifier kernel `[D, N]` -> weight `[N, D]`.
  """
  # Imported here so that the PyTorch model above loads without JAX (the benchmark's PyTorch process).
  from flax import traverse_util
  from lstrl_jax.models.weights import HWIO_TO_OIHW, torch_key

  state = {}
  for collection in ('params', 'batch_stats'):
    for path, value in traverse_util.flatten_dict(dict(variables[collection])).items():
      value = np.asarray(value, dtype)
      if value.ndim == 4:
        value = value.transpose(HWIO_TO_OIHW)
      elif value.ndim == 2:
        value = value.T
      state[torch_key(collection, path)] = np.ascontiguousarray(value)
  return state


def load_state_dict_(model: LSTRL, state: Mapping[str, np.ndarray]) -> LSTRL:
  """Copies a `state_dict_from_flax` dict into `model` in place; returns it.

  Raises:
    ValueError: the two parameter sets differ (every missing and unexpected key named).
    RuntimeError: a shape differs (from `torch.nn.Module.load_state_dict`).
  """
  tensors = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state.items()}
  result = model.load_state_dict(tensors, strict=False)
  missing = [k for k in result.missing_keys if not k.endswith('num_batches_tracked')]
  if missing or result.unexpected_keys:
    raise ValueError(f'Flax -> PyTorch LSTRL: missing {missing}, unexpected {result.unexpected_keys}')
  return model


def load_flax_variables_(model: LSTRL, variables: Mapping[str, Any]) -> LSTRL:
  """Copies Flax LSTRL variables into `model` in place; returns it. Raises as `load_state_dict_`."""
  return load_state_dict_(model, state_dict_from_flax(variables))


def random_flax_variables(variables: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
  """Random values for every leaf of Flax LSTRL variables (or their `jax.ShapeDtypeStruct`s), same dtypes.

  Kernels ~ N(0, 1/fan_in), BN scale and running var ~ U(0.5, 1.5), BN bias and running mean ~ N(0, 0.1^2);
  the BNNeck bias stays 0 (frozen by design). The zero-initialised last BN scales of MAE and BME become
  nonzero, so both branches contribute and learn. Random enough that a transposed axis or a swapped mean/var
  cannot go unnoticed in a comparison.
  """
  import jax  # here so that the PyTorch model above loads without JAX
  import jax.numpy as jnp

  def draw(path, leaf):
    keys = tuple(k.key for k in path)
    name = keys[-1]
    if name == 'kernel':
      return rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 1.5, leaf.shape)
    if keys[-2:] == ('bnneck', 'bias'):
      return np.zeros(leaf.shape)
    return rng.normal(0.0, 0.1, leaf.shape)

  return jax.tree_util.tree_map_with_path(lambda p, x: jnp.asarray(draw(p, x), x.dtype), dict(variables))
