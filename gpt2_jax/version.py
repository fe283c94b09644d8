"""The package version, one place for setup.cfg, checkpoints' meta and `gpt2_jax.__version__`."""

__version__ = "0.1.0"
