"""`python -m lstrl_jax.search`: see `lstrl_jax.inference.search`."""

from lstrl_jax.inference import search

if __name__ == '__main__':
  search.run()
