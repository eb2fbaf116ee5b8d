"""A torchvision-compatible ResNet in plain PyTorch: the independent reference for weight import and parity.

torchvision is not installed here, so this file rebuilds `torchvision.models.resnet` (v1.5: the stride of a
bottleneck sits on its 3x3 convolution) with identical module names, hence identical `state_dict` keys:
`conv1.weight`, `bn1.{weight,bias,running_mean,running_var,num_batches_tracked}`,
`layer1.0.conv1.weight`, ..., `layer1.0.downsample.0.weight`, `layer1.0.downsample.1.*`, `fc.{weight,bias}`.
timm's `resnet50` uses the same names. A `last_stride` argument gives the re-identification variant
(stage 4 keeps stride 16; DESIGN.md section 1). Layout NCHW, as in PyTorch.
"""

import torch
from torch import nn

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet-18/34); `[N, C_in, H, W] -> [N, planes, H/s, W/s]`."""

  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 bottleneck (ResNet-50/101/152); `[N, C_in, H, W] -> [N, 4 planes, H/s, W/s]`."""

  expansion = 4

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class ResNet(nn.Module):
  """torchvision's ResNet with a configurable last stride.

  Args:
    depth: 18, 34, 50, 101 or 152.
    last_stride: stride of stage 4 (torchvision: 2; re-identification: 1).
    num_classes: outputs of the ImageNet classifier `fc` (kept so the keys match torchvision's).

  `forward_stages(x)` maps images `[N, 3, H, W]` float32 to the four stage outputs (`layer1`..`layer4`);
  `forward(x)` returns `fc(GAP(layer4))`, `[N, num_classes]`. Raises KeyError for an unknown depth.
  """

  def __init__(self, depth: int = 50, last_stride: int = 2, num_classes: int = 1000):
    super().__init__()
    block = BasicBlock if depth < 50 else Bottleneck
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    strides = (1, 2, 2, last_stride)
    for index, (planes, blocks, stride) in enumerate(zip((64, 128, 256, 512), STAGE_SIZES[depth], strides)):
      setattr(self, f'layer{index + 1}', self._make_layer(block, planes, blocks, stride))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
          nn.BatchNorm2d(planes * block.expansion),
      )
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def stem(self, x: torch.Tensor) -> torch.Tensor:
    """conv1 -> bn1 -> ReLU -> 3x3/2 max-pool: `[N, 3, H, W] -> [N, 64, H/4, W/4]`."""
    return self.maxpool(self.relu(self.bn1(self.conv1(x))))

  def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
    """Returns `[layer1(.), layer2(.), layer3(.), layer4(.)]` outputs, NCHW, for images `[N, 3, H, W]`."""
    outputs = []
    x = self.stem(x)
    for index in range(1, 5):
      x = getattr(self, f'layer{index}')(x)
      outputs.append(x)
    return outputs

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc(torch.flatten(self.avgpool(self.forward_stages(x)[-1]), 1))


def randomize_(model: nn.Module, generator: torch.Generator) -> nn.Module:
  """Fills every parameter and BatchNorm running statistic with random values, in place; returns `model`.

  Convolution and linear weights ~ N(0, 1/fan_in) (keeps activations O(1) through 50 layers), BN scale
  ~ U(0.5, 1.5), bias and running mean ~ N(0, 0.1^2), running variance ~ U(0.5, 1.5): random enough that
  a transposed axis or a swapped mean/var cannot go unnoticed in a comparison.
  """
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        module.weight.normal_(0.0, fan_in ** -0.5, generator=generator)
        if module.bias is not None:
          module.bias.normal_(0.0, 0.1, generator=generator)
      elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.weight is not None:
          module.weight.uniform_(0.5, 1.5, generator=generator)
        if module.bias is not None and module.bias.requires_grad:
          module.bias.normal_(0.0, 0.1, generator=generator)
        module.running_mean.normal_(0.0, 0.1, generator=generator)
        module.running_var.uniform_(0.5, 1.5, generator=generator)
  return model
