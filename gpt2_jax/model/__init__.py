"""The GPT-2 network: the Flax Linen module and its presets (`gpt2`), attention implementations
(`attention`), and FLOP counts and device peaks for MFU (`flops`).

Imports nothing else of gpt2_jax: every other stage builds on it."""
