"""Devices: the mesh and logical-axis sharding rules (`sharding`), multi-process start-up and
collectives (`distributed`), liveness links that stop a run whose process was lost (`watchdog`), and
jax.profiler trace windows (`profiling`).

Imports nothing else of gpt2_jax."""
