"""Training: TrainState, loss and the jitted sharded train/eval steps (`steps`), the loop with
its one-step-late metrics, checkpoints and stop signals (`loop`), where a run starts (`resume`),
metric logs (`metrics`) and the loss plot (`plots`).

May import config and everything below it (evaluate/, checkpoint/, model/, data/, ...)."""
