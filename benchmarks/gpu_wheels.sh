#!/bin/sh
# Downloads the wheels benchmarks/gpu_check.py needs beyond what the GPU machine holds (jax 0.11 + CUDA plugin,
# flax, optax, orbax-checkpoint, numpy, torch, onnxruntime, pillow, h5py, tqdm and their dependencies) into
# wheels/ (git-ignored), for CPython 3.12 on manylinux x86_64. The list is what importing gpu_check's modules
# loads here, less the dependency closure of those packages. Then, on the GPU machine (carry wheels/):
#   pip install --no-index --no-deps --target /tmp/lstrl_wheels wheels/*.whl
#   PYTHONPATH=/tmp/lstrl_wheels timeout 480 python -m benchmarks.gpu_check --out gpu_check.json
set -eu
cd "$(dirname "$0")/.."
dest=${1:-wheels}
python -m pip download --quiet --only-binary=:all: --no-deps --implementation cp --python-version 3.12 \
  --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$dest" \
  grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 tensorflow-datasets==4.9.10 tensorboardX==2.6.5 \
  tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 immutabledict==4.3.1 toml==0.10.2 \
  wrapt==2.5.2 cloudpickle==3.1.3 portpicker==1.6.0 attrs==26.1.0 six==1.17.0 packaging==26.4 \
  charset-normalizer==3.5.3 matplotlib==3.11.2 kiwisolver==1.5.1 cycler==0.12.1 pyparsing==3.3.3 \
  python-dateutil==4.0.0 fonttools
python -m pip wheel --quiet --no-deps -w "$dest" promise==2.3  # sdist only: a pure-Python wheel
du -sh "$dest"
