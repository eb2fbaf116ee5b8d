"""The PyTorch reference of LSTRL: network (`torch_resnet`, `torch_lstrl`) and training step (`torch_train`).

Independent second implementations written from DESIGN.md sections 1-2, imported by the tests
(`tests/test_torch_parity.py`, `tests/test_weights.py`, `tests/test_train_parity.py`) and the benchmarks
(`benchmarks/model_throughput.py`, `benchmarks/train_parity.py`). Needs PyTorch (requirements-test.txt).
"""
