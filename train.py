"""Trains and evaluates LSTRL: `python train.py --config configs/mars.py --workdir runs/mars`.

A thin wrapper kept for the README's commands: the command is `python -m lstrl_jax.train` (lstrl_jax/train/
__main__.py, which documents the flags), and works the same from any directory once the package is installed.
"""

from lstrl_jax.train.__main__ import run

if __name__ == '__main__':
  run()
