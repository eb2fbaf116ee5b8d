"""Evaluates trained LSTRL checkpoints: `python eval.py --ckpt runs/mars`.

A thin wrapper kept for the README's commands: the command is `python -m lstrl_jax.eval` (lstrl_jax/eval.py,
which documents the flags), and works the same from any directory once the package is installed.
"""

from lstrl_jax.eval import run

if __name__ == '__main__':
  run()
