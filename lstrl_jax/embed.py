"""`python -m lstrl_jax.embed`: see `lstrl_jax.inference.embed`."""

from lstrl_jax.inference import embed

if __name__ == '__main__':
  embed.run()
