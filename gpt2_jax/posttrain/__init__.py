"""Post-training tasks plugged into the one train step and loop (train/tasks.py says what a task is):
sequence classification (`classify`), prompt->completion fine-tuning (`sft`), their splits
(`examples`), classification metrics (`metrics`), the config -> task/groups/LoRA wiring (`build`),
the classical baseline (`baseline`) and prediction with a trained classifier (`predict`).

May import train and everything below it (config, evaluate/, checkpoint/, model/, data/, optim/, ...)."""
