"""Devices: the mesh and logical-axis sharding rules (`sharding`), multi-process start-up and
collectives (`distributed`), liveness links that stop a run whose process was lost (`watchdog`),
jax.profiler trace windows (`profiling`), and the malloc settings that let XLA:CPU reuse host
memory between steps (`host_memory`).

Imports nothing else of gpt2_jax."""
