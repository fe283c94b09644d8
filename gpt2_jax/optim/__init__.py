"""Optimizers (`optimizers`: AdamW with a decay mask, clipping, accumulation) and learning-rate
schedules (`schedules`), as optax transformations built from plain arguments or a config.

Imports nothing else of gpt2_jax."""
