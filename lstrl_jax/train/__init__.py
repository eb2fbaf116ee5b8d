"""Training: losses, optimiser, train state, checkpoints and the train loop (DESIGN.md section 2).

Modules: `losses` (label-smoothed cross-entropy, batch-hard triplet), `optim` (PyTorch-style Adam, warm-up
and step decay), `state` (`TrainState`), `checkpoint` (orbax checkpoints, failed saves, `load_for_eval`),
`guards` (SIGTERM/Ctrl-C/preemption, divergence), `workdir` (one writer per run directory), `preflight`
(checks before training), `writers` (progress bar, TensorBoard, metrics.jsonl) and `trainer` (`train_step`,
`train_and_evaluate`).
"""
