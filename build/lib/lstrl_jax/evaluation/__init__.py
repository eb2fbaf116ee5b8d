"""Evaluation: pure ranking metrics (`metrics`), k-reciprocal re-ranking (`rerank`), the harness that embeds
the test set (`extract`), the per-convention evaluator and its table (`evaluator`), and pictures of ranked
results and of the MAE / BME maps (`visualize`).
"""
