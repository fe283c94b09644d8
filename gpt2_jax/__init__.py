"""gpt2_jax: GPT-2 language models in JAX/Flax."""

from gpt2_jax.version import __version__


def load(path, step="latest", devices=None, dtype=None):
    """Load a trained run or an export for sampling and scoring; see `gpt2_jax.api.load`."""
    from gpt2_jax import api  # imported on use so `import gpt2_jax` stays light

    return api.load(path, step, devices=devices, dtype=dtype)
