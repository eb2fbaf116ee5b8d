"""`python -m lstrl_jax.export`: see `lstrl_jax.inference.export`."""

from lstrl_jax.inference import export

if __name__ == '__main__':
  export.run()
