"""ImageNet weight import: a random torchvision-layout ResNet saved as .pth and as timm .safetensors, loaded into
the Flax backbone, must give the PyTorch model's features; mismatching files fail with every problem named."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from lstrl_jax.models import resnet
from lstrl_jax.models import weights
from reference import torch_resnet

HEIGHT, WIDTH, BATCH = 64, 32, 2


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
  """||actual - expected|| / ||expected|| (Frobenius)."""
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def abstract_variables(depth: int) -> dict:
  """Shapes and dtypes of a bare Flax ResNet's variables, without running its initialiser."""
  model = resnet.ResNet(depth=depth, last_stride=1)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, HEIGHT, WIDTH, 3)), train=False))


def random_torch_resnet(depth: int, seed: int) -> torch_resnet.ResNet:
  generator = torch.Generator().manual_seed(seed)
  return torch_resnet.randomize_(torch_resnet.ResNet(depth, last_stride=1), generator).eval()


@pytest.fixture(scope='module')
def resnet50_files(tmp_path_factory):
  """(torch model, torchvision .pth path, timm .safetensors path) of one random ResNet-50."""
  model = random_torch_resnet(50, seed=0)
  root = tmp_path_factory.mktemp('weights')
  pth, st = str(root / 'resnet50-random.pth'), str(root / 'model.safetensors')
  torch.save(model.state_dict(), pth)
  # timm's resnet50 has the same keys; its hub files carry no num_batches_tracked.
  safetensors.torch.save_file(
      {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}, st)
  return model, pth, st


def test_pth_and_safetensors_give_pytorch_features(resnet50_files):
  torch_model, pth, st = resnet50_files
  images = np.random.default_rng(0).standard_normal((BATCH, 3, HEIGHT, WIDTH)).astype(np.float32)
  with torch.no_grad():
    expected = torch_model.forward_stages(torch.from_numpy(images))[-1].numpy().transpose(0, 2, 3, 1)
  apply = jax.jit(lambda v, x: resnet.ResNet(depth=50, last_stride=1).apply(v, x, train=False))
  template = abstract_variables(50)
  for path in (pth, st):
    variables = weights.load_pretrained(template, path)
    actual = np.asarray(apply(variables, images.transpose(0, 2, 3, 1)))
    assert actual.shape == expected.shape == (BATCH, HEIGHT // 16, WIDTH // 16, 2048)
    assert relative_error(actual, expected) < 1e-4, path


def test_kernel_layout_and_batch_stats():
  """Spot checks of the rename and the OIHW -> HWIO transpose, on a ResNet-18 (another depth) state dict."""
  state = {k: v.numpy() for k, v in random_torch_resnet(18, seed=1).state_dict().items()}
  variables = weights.import_backbone(abstract_variables(18), state)
  kernel = np.asarray(variables['params']['layer2_0']['downsample_0']['kernel'])
  assert kernel.shape == (1, 1, 64, 128)
  np.testing.assert_array_equal(kernel[0, 0], state['layer2.0.downsample.0.weight'][:, :, 0, 0].T)
  assert variables['params']['conv1']['kernel'][2, 5, 1, 7] == state['conv1.weight'][7, 1, 2, 5]
  stats = variables['batch_stats']
  np.testing.assert_array_equal(stats['layer4_1']['bn2']['var'], state['layer4.1.bn2.running_var'])
  np.testing.assert_array_equal(stats['bn1']['mean'], state['bn1.running_mean'])
  np.testing.assert_array_equal(variables['params']['layer3_1']['bn1']['scale'], state['layer3.1.bn1.weight'])


def test_every_problem_is_named_in_one_error(tmp_path):
  state = random_torch_resnet(18, seed=2).state_dict()
  del state['layer3.1.bn2.running_var']
  state['layer5.0.conv1.weight'] = torch.zeros(1)
  state['layer1.0.conv2.weight'] = torch.zeros(64, 64, 1, 1)
  path = str(tmp_path / 'broken.safetensors')
  safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
  with pytest.raises(weights.WeightImportError) as error:
    weights.load_pretrained(abstract_variables(18), path)
  message = str(error.value)
  assert message.startswith(path)
  assert 'missing keys (1): layer3.1.bn2.running_var' in message
  assert 'unexpected keys (1): layer5.0.conv1.weight' in message
  assert 'shape mismatches (1): layer1.0.conv2.weight (64, 64, 1, 1) vs model (64, 64, 3, 3)' in message


def test_wrong_depth_is_refused():
  state = {k: v.numpy() for k, v in random_torch_resnet(18, seed=3).state_dict().items()}
  expected = r'^resnet18\.pth: .*missing keys \(80\): layer1\.2\.bn1\.bias, '
  with pytest.raises(weights.WeightImportError, match=expected):
    weights.import_backbone(abstract_variables(34), state, source='resnet18.pth')


@pytest.mark.parametrize('name, content, match', [
    ('absent.pth', None, 'not found'),
    ('weights.npz', b'x', 'unknown weight format'),
    ('garbage.safetensors', b'not a safetensors file', 'cannot read safetensors'),
    ('garbage.pth', b'not a zip', 'not a weights-only PyTorch state dict'),
])
def test_unreadable_files(tmp_path, name, content, match):
  path = tmp_path / name
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(weights.WeightImportError, match=match):
    weights.read_state_dict(str(path))


def test_pickled_objects_are_not_loaded(tmp_path):
  """A whole pickled module (not a state dict) is refused by weights_only unpickling."""
  path = str(tmp_path / 'model.pth')
  torch.save({'model': torch.nn.Linear(2, 2)}, path)
  with pytest.raises(weights.WeightImportError, match='weights-only'):
    weights.read_state_dict(path)


def test_nested_checkpoint_is_refused(tmp_path):
  path = str(tmp_path / 'checkpoint.pth')
  torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}, 'epoch': 3}, path)
  with pytest.raises(weights.WeightImportError, match='flat state dict'):
    weights.read_state_dict(path)


def test_pth_without_torch_suggests_safetensors(tmp_path, monkeypatch):
  path = tmp_path / 'resnet50.pth'
  path.write_bytes(b'x')
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` raise ImportError
  with pytest.raises(weights.WeightImportError, match=r'needs torch .*safetensors'):
    weights.read_state_dict(str(path))
