"""One prepared accelerator check of lstrl_jax: train step, MAE attention, extraction, ranking, input pipeline.

  python -m benchmarks.gpu_check [--out gpu_check.json] [--reduced] [--mars_info DIR]

Run from the repository root on a machine with an NVIDIA GPU (JAX with its CUDA plugin); it finishes in a few
minutes (budget: 8) and prints one table, also written as JSON to --out. Sections, each timed as the median of
--repeats calls after compilation and one warm-up (a section that fails records its error and the rest run):
  - train step (bf16, then fp32 compute; float32 parameters) of the full LSTRL (ResNet-50, MAE + BME after
    layer2/3) at the paper's batch P8 x K4 clips x T8 frames of 256x128: the trainer's own jitted step
    (`trainer.make_train_step`, state donated). ms/step, frames/s, the device's peak memory so far, and model
    FLOP utilisation: 3 x 2 x counted MACs per frame (`models.macs` on the equations as written,
    `LSTRL.as_written`: the paper's Table 3 count; backward taken as 2x) x frames/s
    over the device's dense peak (TF32 tensor-core peak for fp32, which XLA uses for float32 by default);
  - MAE attention at layer2 of that batch (queries T h w + T + h w + 1, keys T h w, width C/4 = 128, bf16),
    forward + backward of `jax.nn.dot_product_attention` with implementation='cudnn' and 'xla';
  - dense feature extraction: eval-mode `bn_features` of 32 clips x 8 frames, frames/s, bf16 and fp32;
  - ranking at MARS size: 1,980 queries x 11,310 gallery, 2048-d random features, 'paper' convention
    (`metrics.scores_from_features`); labels from --mars_info where given, else random of MARS's size;
  - input pipeline: `pipeline.train_loader` frames/s on a temporary JPEG dataset (`benchmarks.input_pipeline`)
    with one grain worker per host core but one.
`--reduced` (the default on the CPU backend) runs every section at toy sizes (ResNet-18, 32x16 frames, fp32
only, a tiny ranking), which is what tests/test_gpu_check.py executes. Peaks: `PEAK_TFLOPS` (vendor dense figures),
or --peak_tflops.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time
from typing import Any, Callable

import numpy as np

# device-kind substring -> dense peak TFLOP/s (TF32 tensor core, BF16 tensor core), vendor data sheets (SXM).
PEAK_TFLOPS = {'H200': (494.7, 989.4), 'H100': (494.7, 989.4), 'A100': (156.0, 312.0), 'L40S': (183.0, 362.0),
               'L4': (60.0, 121.0), 'A10': (62.5, 125.0)}
FULL = dict(identities=8, instances=4, seq_len=8, height=256, width=128, depth=50, extract_clips=32,
            ranking=(1980, 11310, 2048), persons=32, frames=32, batches=8, dtypes=('bfloat16', 'float32'))
REDUCED = dict(identities=2, instances=2, seq_len=2, height=32, width=16, depth=18, extract_clips=2,
               ranking=(40, 160, 16), persons=4, frames=8, batches=2, dtypes=('float32',))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='gpu_check.json', help='JSON file written with the table')
  parser.add_argument('--reduced', action='store_true', help='toy sizes (default on the CPU backend)')
  parser.add_argument('--repeats', type=int, default=5, help='timed calls per figure')
  parser.add_argument('--mars_info', default='', help="MARS's info/ folder for the ranking's labels")
  parser.add_argument('--peak_tflops', type=float, nargs=2, default=None, metavar=('TF32', 'BF16'),
                      help='device dense peaks in TFLOP/s, instead of PEAK_TFLOPS')
  return parser.parse_args(argv)


def median_seconds(call: Callable[[], Any], repeats: int) -> float:
  """Median wall seconds of `call()` (blocked on) over `repeats` calls after one compile/warm-up call."""
  import jax

  jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_memory_mib() -> float:
  """The device's peak bytes in use so far (GPU/TPU), else this process's peak RSS (CPU), in MiB."""
  import jax

  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_peaks(args: argparse.Namespace) -> tuple[float, float] | None:
  """(TF32, BF16) dense peak TFLOP/s of device 0, or None where unknown (e.g. CPU)."""
  import jax

  if args.peak_tflops:
    return tuple(args.peak_tflops)
  kind = jax.devices()[0].device_kind
  return next((peaks for name, peaks in PEAK_TFLOPS.items() if name in kind), None)


def train_and_extract(size: dict, dtype: str, peaks, repeats: int) -> dict[str, Any]:
  """Train step and extraction figures of the full LSTRL in compute `dtype` (see the module docstring)."""
  import jax

  from benchmarks import model_throughput
  from configs import default
  from lstrl_jax.data import pipeline
  from lstrl_jax.models import macs

  shape = argparse.Namespace(seq_len=size['seq_len'], height=size['height'], width=size['width'], dtype=dtype,
                             depth=size['depth'], baseline=False, num_classes=625)
  model = model_throughput.flax_model(shape)
  config = default.get_config()
  config.seq_len, config.height, config.width = size['seq_len'], size['height'], size['width']
  config.num_identities, config.num_instances = size['identities'], size['instances']
  clips_per_step = size['identities'] * size['instances']
  frames_per_step = clips_per_step * size['seq_len']
  rng = np.random.default_rng(0)
  clips = rng.integers(0, 256, (clips_per_step, size['seq_len'], size['height'], size['width'], 3), np.uint8)
  pids = np.repeat(np.arange(size['identities'], dtype=np.int32), size['instances'])
  train_call, holder = model_throughput.jax_train_call(model, config, clips, pids)
  seconds = median_seconds(train_call, repeats)
  result = {'train ms/step': 1e3 * seconds, 'train frames/s': frames_per_step / seconds,
            'train peak memory MiB': peak_memory_mib()}
  variables = {'params': holder[0].params, 'batch_stats': holder[0].batch_stats}
  counted = model.clone(as_written=True)  # the paper's MACs (Table 3), not the cheaper evaluation's
  per_frame = sum(macs.model_macs_per_frame(counted, variables, size['seq_len'], size['height'],
                                            size['width']).values())
  result['train TFLOP/s'] = 6 * per_frame * frames_per_step / seconds / 1e12
  if peaks:
    result['train MFU %'] = 100 * result['train TFLOP/s'] / peaks[dtype == 'bfloat16']
  forward = jax.jit(lambda v, x: model.apply(v, pipeline.normalize(x), train=False)['bn_features'])
  extract = jax.device_put(np.resize(clips, (size['extract_clips'],) + clips.shape[1:]))
  seconds = median_seconds(lambda: forward(variables, extract), repeats)
  result['extraction frames/s'] = size['extract_clips'] * size['seq_len'] / seconds
  return result


def attention(size: dict, repeats: int) -> dict[str, Any]:
  """ms of forward + backward MAE attention at layer2 of the train batch, cuDNN and XLA (bf16)."""
  import jax
  import jax.numpy as jnp

  b = size['identities'] * size['instances']
  t, h, w = size['seq_len'], size['height'] // 8, size['width'] // 8
  keys, queries, width = t * h * w, t * h * w + t + h * w + 1, 128
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((b, queries, 1, width)), jnp.bfloat16)
  kv = jnp.asarray(rng.standard_normal((b, keys, 1, width)), jnp.bfloat16)
  result = {'attention shape': f'B{b} Nq{queries} Nk{keys} c{width} bf16'}
  for implementation in ('cudnn', 'xla'):
    loss = lambda q, k: jax.nn.dot_product_attention(q, k, k, scale=1.0, implementation=implementation).astype(
        jnp.float32).sum()
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    try:
      result[f'attention {implementation} ms'] = 1e3 * median_seconds(lambda: grad(q, kv), repeats)
    except Exception as error:  # pylint: disable=broad-except
      result[f'attention {implementation} ms'] = f'unavailable: {str(error).splitlines()[0][:100]}'
  return result


def ranking(size: dict, mars_info: str, repeats: int) -> dict[str, Any]:
  """Seconds of 'paper' ranking from features at MARS size (`metrics.scores_from_features`)."""
  import jax

  from lstrl_jax.evaluation import metrics

  num_query, num_gallery, dim = size['ranking']
  rng = np.random.default_rng(0)
  if mars_info:
    from lstrl_jax.data.datasets import load_dataset
    dataset = load_dataset('mars', pathlib.Path(mars_info).parent)
    query, gallery = np.asarray(dataset.query), np.asarray(dataset.galleries['paper'])
    pids = np.asarray([t.pid for t in dataset.test])
    camids = np.asarray([t.camid for t in dataset.test])
    labels = (pids[query], camids[query], pids[gallery], camids[gallery])
    num_query, num_gallery = len(query), len(gallery)
  else:
    labels = (rng.integers(1, 626, num_query), rng.integers(0, 6, num_query), rng.integers(0, 626, num_gallery),
              rng.integers(0, 6, num_gallery))
  features = jax.device_put((rng.standard_normal((num_query, dim), np.float32),
                             rng.standard_normal((num_gallery, dim), np.float32)) + labels)
  seconds = median_seconds(lambda: metrics.scores_from_features(*features, convention='paper'), repeats)
  return {'ranking shape': f'{num_query} x {num_gallery}, {dim}-d' + (' (MARS labels)' if mars_info else ''),
          'ranking s': seconds}


def input_pipeline(size: dict) -> dict[str, Any]:
  """frames/s of `pipeline.train_loader` with cores - 1 grain workers on a temporary JPEG dataset."""
  from benchmarks import input_pipeline as bench
  from configs.default import get_config
  from lstrl_jax.data.datasets import load_dataset

  config = get_config()
  config.height, config.width, config.seq_len = size['height'], size['width'], size['seq_len']
  config.num_identities, config.num_instances = size['identities'], size['instances']
  config.num_workers = max((os.cpu_count() or 1) - 1, 1)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp) / 'jpegs'
    bench.write_jpeg_dataset(root, size['persons'], size['frames'], config.height, config.width)
    clips = bench.loader_clips_per_second(load_dataset('ilidsvid', root), config, size['batches'], repeats=2)
  return {'pipeline workers': config.num_workers, 'pipeline frames/s': clips * config.seq_len}


def section(results: dict, name: str, run: Callable[[], dict]) -> None:
  """Runs one section into `results[name]`; an exception becomes {'error': its first line}."""
  start = time.perf_counter()
  try:
    results[name] = run()
  except Exception as error:  # pylint: disable=broad-except
    results[name] = {'error': f'{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ""}'}
  results[name]['section seconds'] = time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  import jax
  from absl import flags

  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags; this script takes none of its own

  device = jax.devices()[0]
  reduced = args.reduced or device.platform == 'cpu'
  size = REDUCED if reduced else FULL
  peaks = device_peaks(args)
  header = {'device': f'{device.platform} {device.device_kind} x{jax.device_count()}', 'jax': jax.__version__,
            'host': f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
            'form': 'reduced' if reduced else 'full', 'peak TFLOP/s (TF32, BF16)': peaks}
  results: dict[str, Any] = {'header': header}
  start = time.perf_counter()
  for dtype in size['dtypes']:  # bf16 first: the device's peak memory only grows
    section(results, f'LSTRL {dtype}', lambda dtype=dtype: train_and_extract(size, dtype, peaks, args.repeats))
  section(results, 'MAE attention', lambda: attention(size, args.repeats))
  section(results, 'ranking', lambda: ranking(size, args.mars_info, args.repeats))
  section(results, 'input pipeline', lambda: input_pipeline(size))
  header['total seconds'] = time.perf_counter() - start
  print(' | '.join(f'{k}: {v}' for k, v in header.items()))
  for name, values in results.items():
    if name != 'header':
      for key, value in values.items():
        print(f'{name:<16} {key:<24} {value:.4g}' if isinstance(value, float) else f'{name:<16} {key:<24} {value}')
  pathlib.Path(args.out).write_text(json.dumps(results, indent=1, default=str))
  print(f'written: {args.out}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
