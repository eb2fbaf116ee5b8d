"""lstrl_jax: LSTRL video person re-identification in JAX/Flax.

Liu, Zhang, Lu, "Video-based Person Re-identification with Long Short-Term Representation Learning".
Subpackages: `models` (ResNet, MAE, BME, LSTRL), `data` (dataset readers, grain pipeline), `train`
(losses, optimiser, train loop, checkpoints), `evaluation` (ranking metrics, feature extraction, pictures).
"""
