"""The configs, one Python file per dataset on top of `default.py` (the paper's recipe, DESIGN.md section 2).

Shipped inside the package as `lstrl_jax.configs` (`lstrl_jax/configs` links to this folder), so a command
run from any directory accepts a shipped config by name (`--config demo`, `--config mars:smoke`) as well as
a config file by path (`--config configs/demo.py`, `--config ~/my_config.py`).
"""
