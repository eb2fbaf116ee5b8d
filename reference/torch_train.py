"""The paper's training step in plain PyTorch: the reference the JAX trainer is run against, step for step.

Written from DESIGN.md section 2 and the author group's public PyTorch recipe (PSTA/DCCT lineage, after
reid-strong-baseline), not from `lstrl_jax.train`:
  * `CrossEntropyLabelSmooth` (epsilon 0.1) on the BNNeck logits and `TripletLoss` (batch-hard, margin 0.3,
    `MarginRankingLoss`) on the pre-BNNeck clip feature f, in the codebases' own form (per-anchor loop);
  * `torch.optim.Adam(lr, weight_decay=5e-4)` over the parameters that require a gradient (the BNNeck bias is
    frozen at 0 by `requires_grad=False` in `reference.torch_lstrl.LSTRL`);
  * the schedule from PyTorch's own schedulers, stepped once per optimiser step: `LinearLR` warm-up
    (factor (s + 1) / W at step s < W) chained with `StepLR` (x0.1 every D steps);
  * BatchNorm in training mode with PyTorch's momentum 0.1 (`model.train()`).
Optionally, `replicas > 1` reproduces `torch.nn.DataParallel`'s per-GPU BatchNorm on one device: the batch is
cut into `replicas` chunks of whole clips, each normalised with its own statistics; the losses see the
gathered outputs, and only the first chunk's statistics reach the running buffers (DataParallel keeps
device 0's replica's buffers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(clips: np.ndarray) -> torch.Tensor:
  """uint8 clips `[B, T, H, W, 3]` -> float32 `[B, T, 3, H, W]`, ImageNet mean/std normalisation.

  Computed as (x - 255 mean) * (1 / (255 std)) in float32, which is what XLA makes of
  `lstrl_jax.data.pipeline.normalize`, so both frameworks see bit-identical inputs: torchvision's
  (x / 255 - mean) / std differs in the last bit, and training here is chaotic enough (README "Faithfulness")
  that a 1e-7 input difference grows to 1e-4 in the loss by the second step.
  """
  x = torch.from_numpy(np.asarray(clips)).float()
  x = (x - torch.tensor(IMAGENET_MEAN) * 255) * (1 / (torch.tensor(IMAGENET_STD) * 255))
  return x.permute(0, 1, 4, 2, 3).contiguous()


class CrossEntropyLabelSmooth(nn.Module):
  """Cross-entropy with label smoothing (Szegedy et al. 2016), as in the ReID codebases.

  `forward(logits [B, N], targets [B] int64)` -> scalar: targets (1 - eps) one-hot + eps / N, loss
  sum over classes of the batch-mean of -target * log_softmax.
  """

  def __init__(self, num_classes: int, epsilon: float = 0.1):
    super().__init__()
    self.num_classes, self.epsilon = num_classes, epsilon

  def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_probs = torch.log_softmax(logits, dim=1)
    one_hot = torch.zeros_like(log_probs).scatter_(1, targets.unsqueeze(1), 1)
    smoothed = (1 - self.epsilon) * one_hot + self.epsilon / self.num_classes
    return (-smoothed * log_probs).mean(0).sum()


class TripletLoss(nn.Module):
  """Batch-hard triplet loss (Hermans et al. 2017) in the author codebases' form.

  `forward(features [B, D], targets [B])` -> scalar: Euclidean distances via |a|^2 + |b|^2 - 2ab clamped at
  1e-12 before the square root; per anchor the farthest same-pid clip and the nearest other-pid clip;
  `MarginRankingLoss(margin)(d_an, d_ap, 1)` = mean of max(0, d_ap - d_an + margin). Needs a negative for
  every anchor (P >= 2).
  """

  def __init__(self, margin: float = 0.3):
    super().__init__()
    self.ranking_loss = nn.MarginRankingLoss(margin=margin)

  def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    n = features.size(0)
    dist = features.pow(2).sum(dim=1, keepdim=True).expand(n, n)
    dist = (dist + dist.t()).addmm(features, features.t(), beta=1, alpha=-2).clamp(min=1e-12).sqrt()
    same = targets.expand(n, n).eq(targets.expand(n, n).t())
    dist_ap = torch.stack([dist[i][same[i]].max() for i in range(n)])
    dist_an = torch.stack([dist[i][~same[i]].min() for i in range(n)])
    return self.ranking_loss(dist_an, dist_ap, torch.ones_like(dist_an))


def make_optimizer(model: nn.Module, learning_rate: float, weight_decay: float = 5e-4) -> torch.optim.Adam:
  """`torch.optim.Adam` (betas 0.9/0.999, eps 1e-8, L2 decay added to the gradient) on the trainable parameters."""
  return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                          weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, decay_every_steps: int,
                   decay_factor: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
  """Linear warm-up over `warmup_steps` then x`decay_factor` every `decay_every_steps`; `.step()` per optimiser step.

  The rate at step s (0-based) is lr * min(1, (s + 1) / W) * factor ** (s // D); W <= 1 or D = 0 switch
  the respective part off.
  """
  schedulers = []
  if warmup_steps > 1:
    schedulers.append(torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1))
  if decay_every_steps > 0:
    schedulers.append(torch.optim.lr_scheduler.StepLR(optimizer, step_size=decay_every_steps, gamma=decay_factor))
  if not schedulers:
    schedulers.append(torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0))
  return torch.optim.lr_scheduler.ChainedScheduler(schedulers)


def forward(model: nn.Module, clips: torch.Tensor, replicas: int = 1) -> dict[str, torch.Tensor]:
  """`model(clips)` as on `replicas` GPUs under `nn.DataParallel` (module docstring); clips `[B, T, 3, H, W]`.

  Raises:
    ValueError: B is not a multiple of `replicas`.
  """
  if clips.shape[0] % replicas:
    raise ValueError(f'replicas: {replicas} does not divide the batch of {clips.shape[0]} clips')
  chunks = clips.chunk(replicas)
  outputs = [model(chunks[0])]
  parameters = dict(model.named_parameters())
  for chunk in chunks[1:]:  # the other replicas: shared parameters, their own copy of the buffers
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    outputs.append(torch.func.functional_call(model, {**parameters, **buffers}, (chunk,)))
  return {key: torch.cat([o[key] for o in outputs]) for key in outputs[0]}


class Trainer:
  """One model, its Adam, schedule and losses; `step(clips, pids)` is one training step of DESIGN.md section 2.

  Args:
    model: a `reference.torch_lstrl.LSTRL` (put in training mode here).
    num_classes: classifier outputs (for the label smoothing).
    learning_rate, weight_decay, warmup_steps, decay_every_steps, decay_factor: the recipe in steps.
    label_smoothing: epsilon (0.1); triplet_margin: margin (0.3).
    replicas: per-GPU BatchNorm emulation (`forward`); 1 is one device.
    dtype: the model's floating dtype (float32; float64 for a rounding-free reference); clips are cast to it.
  """

  def __init__(self, model: nn.Module, num_classes: int, *, learning_rate: float, weight_decay: float = 5e-4,
               warmup_steps: int = 0, decay_every_steps: int = 0, decay_factor: float = 0.1,
               label_smoothing: float = 0.1, triplet_margin: float = 0.3, replicas: int = 1,
               dtype: torch.dtype = torch.float32):
    self.model = model.train()
    self.dtype = dtype
    self.optimizer = make_optimizer(model, learning_rate, weight_decay)
    self.scheduler = make_scheduler(self.optimizer, warmup_steps, decay_every_steps, decay_factor)
    self.cross_entropy = CrossEntropyLabelSmooth(num_classes, label_smoothing)
    self.triplet = TripletLoss(triplet_margin)
    self.replicas = replicas

  def step(self, clips: np.ndarray, pids: np.ndarray) -> dict[str, Any]:
    """One step on uint8 clips `[B, T, H, W, 3]` and int pids `[B]`.

    Returns:
      floats 'ce', 'triplet', 'loss' (their sum, before the update), 'accuracy' (a fraction) and
      'learning_rate' (the rate this step used).
    """
    targets = torch.from_numpy(np.asarray(pids)).long()
    outputs = forward(self.model, normalize(clips).to(self.dtype), self.replicas)
    ce = self.cross_entropy(outputs['logits'], targets)
    triplet = self.triplet(outputs['features'], targets)
    loss = ce + triplet
    learning_rate = self.optimizer.param_groups[0]['lr']
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    self.optimizer.step()
    self.scheduler.step()
    accuracy = (outputs['logits'].argmax(1) == targets).float().mean()
    return {'ce': ce.item(), 'triplet': triplet.item(), 'loss': loss.item(), 'accuracy': accuracy.item(),
            'learning_rate': learning_rate}
