"""ImageNet initialisation of the ResNet backbone from a local torchvision `.pth` or timm `.safetensors` file.

Usage (what `config.model.pretrained` triggers):

  variables = model.init(rng, clips, train=False)
  variables = load_pretrained(variables, 'resnet50-0676ba61.pth')  # or timm's model.safetensors

Both files use torchvision's key names (timm's `resnet50` keeps them): `conv1.weight`, `bn1.*`,
`layer{s}.{b}.conv{i}.weight`, `layer{s}.{b}.bn{i}.*`, `layer{s}.{b}.downsample.{0,1}.*`, `fc.*`. The Flax
backbone (`lstrl_jax.models.resnet`) names the same layers `layer{s}_{b}/conv{i}` etc., so each Flax leaf
names its PyTorch key (a `_<digits>` suffix becomes `.<digits>`) and:

  PyTorch                          Flax                                  transform
  *.weight of a convolution        params/.../kernel                     OIHW -> HWIO, transpose(2, 3, 1, 0)
  bn*.weight, bn*.bias             params/.../scale, params/.../bias     none
  bn*.running_mean, running_var    batch_stats/.../mean, .../var         none

Ignored by design: `*.num_batches_tracked` (PyTorch's momentum=None bookkeeping, no Flax counterpart) and
`fc.*` (the 1000-class ImageNet classifier; LSTRL has its own BNNeck and classifier). Everything else is strict:
every backbone leaf must be in the file, every other key in the file is an error, shapes must match; all
problems are reported at once in one `WeightImportError` (`import_backbone` does the same for a state dict
already in memory). Any depth works when the file matches the model
(a resnet18 file for `depth=18`). MAE, BME, BNNeck and classifier keep their initial values.

Safety: `.pth` files are read with `torch.load(..., weights_only=True)` (no arbitrary unpickling); torch is
imported only then, so it stays optional. `.safetensors` files are read with `safetensors.numpy`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

PTH_SUFFIXES = ('.pth', '.pt', '.bin')
SAFETENSORS_SUFFIX = '.safetensors'
IGNORED_KEY = re.compile(r'(^fc\.|\.num_batches_tracked$)')
# Flax leaf name -> PyTorch parameter name (kernel: convolution weight, scale: BatchNorm weight).
LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
OIHW_TO_HWIO = (2, 3, 1, 0)
HWIO_TO_OIHW = (3, 2, 0, 1)


class WeightImportError(ValueError):
  """A pretrained-weight file is missing, unreadable, or does not match the backbone (message names the file)."""


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict from a `.pth`/`.pt`/`.bin` or `.safetensors` file.

  Args:
    path: local file; the suffix picks the reader.

  Returns:
    {key: array} with the file's dtypes (bfloat16/float16 `.pth` tensors are returned as float32).

  Raises:
    WeightImportError: the file is missing, has another suffix, is not a flat {name: tensor} mapping, holds
      pickled objects other than tensors, or a `.pth` is given without torch installed.
  """
  if not os.path.isfile(path):
    raise WeightImportError(f'{path}: pretrained weight file not found')
  if path.endswith(SAFETENSORS_SUFFIX):
    return _read_safetensors(path)
  if path.endswith(PTH_SUFFIXES):
    return _read_pth(path)
  raise WeightImportError(
      f'{path}: unknown weight format, expected a torchvision {"/".join(PTH_SUFFIXES)} or a timm '
      f'{SAFETENSORS_SUFFIX} file')


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  try:
    return load_file(path)
  except Exception as e:  # safetensors raises its own error types and KeyError for dtypes numpy lacks (bf16)
    raise WeightImportError(f'{path}: cannot read safetensors file ({type(e).__name__}: {e})') from e


def _read_pth(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as e:
    raise WeightImportError(
        f'{path}: reading a PyTorch .pth file needs torch (pip install torch); or convert it to '
        f'{SAFETENSORS_SUFFIX}, which needs no torch') from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pickle/zip errors, or objects that weights_only refuses to unpickle
    # torch's refusal advises weights_only=False, which runs arbitrary code from the file: never pass it on.
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else ''
    detail = 'it holds pickled Python objects, which are not loaded' if 'weights_only' in str(e) else first_line
    raise WeightImportError(
        f'{path}: not a weights-only PyTorch state dict ({type(e).__name__}: {detail}); save '
        f'model.state_dict() or use {SAFETENSORS_SUFFIX}') from e
  if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    raise WeightImportError(
        f'{path}: expected a flat state dict {{name: tensor}} (torch.save(model.state_dict())), got '
        f'{type(state).__name__}')
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """PyTorch key of the backbone leaf `collection/path`, e.g. ('layer1_0', 'downsample_0', 'kernel') ->
  'layer1.0.downsample.0.weight'; ('bn1', 'mean') in batch_stats -> 'bn1.running_mean'.

  Raises:
    WeightImportError: the leaf name has no PyTorch counterpart.
  """
  *modules, leaf = path
  if leaf not in LEAF_NAMES or (collection == 'batch_stats') != (leaf in ('mean', 'var')):
    raise WeightImportError(f'backbone leaf {collection}/{"/".join(path)} has no torchvision counterpart')
  return '.'.join([re.sub(r'_(\d+)$', r'.\1', m) for m in modules] + [LEAF_NAMES[leaf]])


def backbone_leaves(variables: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], Any]]:
  """Maps each PyTorch key to (flat path in `variables`, leaf) for the backbone of `variables`.

  The backbone is `variables[...]['backbone']` for an `LSTRL` model, or the whole tree for a bare `ResNet`.
  Leaves may be arrays or `jax.ShapeDtypeStruct`s.
  """
  params = variables['params']
  prefix = ('backbone',) if 'backbone' in params else ()
  leaves = {}
  for collection in ('params', 'batch_stats'):
    flat = traverse_util.flatten_dict(dict(variables.get(collection, {})))
    for path, leaf in flat.items():
      if path[:len(prefix)] == prefix:
        leaves[torch_key(collection, path[len(prefix):])] = ((collection, *path), leaf)
  return leaves


def load_pretrained(variables: Mapping[str, Any], path: str) -> dict[str, Any]:
  """Returns `variables` with the ResNet backbone's params and batch_stats read from `path`.

  Args:
    variables: {'params', 'batch_stats'} of an `LSTRL` model (backbone under 'backbone') or a bare `ResNet`.
    path: torchvision `.pth` state dict or timm `.safetensors` with the same depth as the model.

  Returns:
    A new dict of the same structure; backbone leaves replaced (cast to the leaf's dtype), others unchanged.

  Raises:
    WeightImportError: unreadable file (see `read_state_dict`) or one that does not match the backbone
      (see `import_backbone`).
  """
  return import_backbone(variables, read_state_dict(path), source=path)


def import_backbone(variables: Mapping[str, Any], state_dict: Mapping[str, np.ndarray], *,
                    source: str = 'state dict') -> dict[str, Any]:
  """`load_pretrained` for a state dict already in memory ({torchvision key: array}, OIHW kernels).

  Raises:
    WeightImportError: `source` does not match the backbone; the message lists every missing key, every
      unexpected key and every shape mismatch (shapes in PyTorch layout).
  """
  state = {k: np.asarray(v) for k, v in state_dict.items() if not IGNORED_KEY.search(k)}
  leaves = backbone_leaves(variables)
  missing = sorted(set(leaves) - set(state))
  unexpected = sorted(set(state) - set(leaves))
  converted, mismatched = {}, []
  for key in sorted(set(leaves) & set(state)):
    flat_path, leaf = leaves[key]
    value = state[key]
    is_kernel = flat_path[-1] == 'kernel'
    if is_kernel and value.ndim == 4:
      value = value.transpose(OIHW_TO_HWIO)
    if value.shape != tuple(leaf.shape):
      order = HWIO_TO_OIHW if is_kernel else range(len(leaf.shape))
      mismatched.append(f'{key} {state[key].shape} vs model {tuple(leaf.shape[i] for i in order)}')
      continue
    converted[flat_path] = jnp.asarray(value, dtype=leaf.dtype)
  problems = [f'{name} ({len(items)}): {", ".join(items)}'
              for name, items in (('missing keys', missing), ('unexpected keys', unexpected),
                                  ('shape mismatches', mismatched)) if items]
  if problems:
    raise WeightImportError(f'{source}: does not match the ResNet backbone; ' + '; '.join(problems))
  flat = traverse_util.flatten_dict({k: dict(v) for k, v in variables.items()})
  flat.update(converted)
  return traverse_util.unflatten_dict(flat)
