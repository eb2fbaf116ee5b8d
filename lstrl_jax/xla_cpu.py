"""XLA compile options for the CPU backend: convolutions on XLA's own kernels rather than YNNPACK.

jaxlib 0.10.2's CPU compiler hands every convolution, forward and both gradients, to YNNPACK by default
(`xla_cpu_experimental_ynn_fusion_type` = individual_dot, individual_convolution, reduce). On LSTRL's network that
path is the measured cause of the CPU train step's gap to PyTorch: its kernel-gradient convolutions on the large,
narrow maps of the stem and layer1 take 3-17x PyTorch's time, while XLA's own kernel gradients (Eigen's, used
when the list leaves convolutions out) take 0.5-1.5x, except layer1's 1x1 (3.3x; `models.conv` computes that
one as a matrix product) (`python -m benchmarks.conv_backward`; benchmarks/README.md, issue 12). Dots and
reductions keep YNNPACK: dropping reductions too made the train step 35% slower, adding elementwise fusions 75%
slower. A YNNPACK reduction fusion can still take in a chain of convolutions that feeds only a reduction over
pixels: in LSTRL's eval forward, layer4's tail and the global pooling (6 of its 23 convolutions; that forward
took 94.6 ms/frame with reductions on YNNPACK and 95.9 without, one process, interleaved); the train step has
none.

`compiler_options(devices)` is the `jax.jit(..., compiler_options=...)` dict that the project's own compiled
programs use (the train step, and feature extraction for evaluation and `embed`): `{}` unless the devices are CPUs,
so GPU and TPU programs are compiled exactly as before. It is also `{}` when the user's `XLA_FLAGS` already set
`xla_cpu_experimental_ynn_fusion_type` (their setting wins: `--xla_cpu_experimental_ynn_fusion_type=
individual_dot,individual_convolution,reduce` restores jaxlib's default), and when the installed jaxlib does not know
the option (probed once by compiling a one-addition program), so a newer jaxlib never fails on it. Only the
choice of kernel library changes: the program (HLO) is the same, and gradients agree with jaxlib's default to
float32 rounding (tests/test_xla_cpu.py).
"""

from __future__ import annotations

import functools
import os
import re
from typing import Iterable

import jax
import numpy as np

YNN_FUSION_OPTION = 'xla_cpu_experimental_ynn_fusion_type'
CPU_OPTIONS = {YNN_FUSION_OPTION: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}


@functools.cache
def _cpu_accepts_options(device: jax.Device) -> bool:
  """Whether this jaxlib's compiler for `device` (a CPU) knows `CPU_OPTIONS` (one tiny compile, cached)."""
  try:
    x = jax.device_put(np.float32(0), device)
    jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(x).compile()
  except Exception:  # an unknown option or enum value: jaxlib's error type differs between versions
    return False
  return True


def compiler_options(devices: Iterable[jax.Device] | None = None) -> dict[str, str]:
  """`compiler_options` for a `jax.jit` whose program runs on `devices` (default: `jax.devices()`).

  Returns:
    `CPU_OPTIONS` when every device is a CPU, the user's `XLA_FLAGS` does not set the option and the installed
    jaxlib accepts it; `{}` otherwise (GPU, TPU, a user's own setting, an unknown option).
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices or any(device.platform != 'cpu' for device in devices):
    return {}
  if YNN_FUSION_OPTION in os.environ.get('XLA_FLAGS', ''):
    return {}
  return dict(CPU_OPTIONS) if _cpu_accepts_options(devices[0]) else {}


def ynn_convolutions(hlo_text: str) -> int:
  """How many convolutions a compiled CPU program runs on YNNPACK.

  Args:
    hlo_text: `jax.stages.Compiled.as_text()` of a program compiled for the CPU backend (optimised HLO).

  Returns:
    The number of `convolution` instructions inside the fused computations of its `__ynn_fusion` fusions (XLA's
    own convolutions are top-level `convolution` instructions; see the module docstring for the ones that a
    reduction fusion takes in).
  """
  fused = set(re.findall(r'calls=(%[\w.-]+)[^\n]*"kind":"__ynn_fusion"', hlo_text))
  bodies = re.findall(r'^(%[\w.-]+) \([^\n]*\{\n(.*?)\n\}', hlo_text, re.M | re.S)
  return sum(body.count(' convolution(') for name, body in bodies if name in fused)
