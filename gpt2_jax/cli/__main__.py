"""`python -m gpt2_jax.cli`: the `gpt2-jax` command."""

import sys

from gpt2_jax.cli.app import main

sys.exit(main())
