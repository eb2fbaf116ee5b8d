"""Packed datasets: TFDS builders writing ArrayRecord files, read back by random access (no TensorFlow).

`python -m lstrl_jax.data.pack --config configs/<dataset>.py --config.packed_dir=DIR` packs a dataset; setting
`config.packed_dir=DIR` then makes `lstrl_jax.data.pipeline` read frames from DIR instead of the folder layout.
"""
