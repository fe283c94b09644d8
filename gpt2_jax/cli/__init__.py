"""The `gpt2-jax` command line: one small module per command group that parses flags, calls the
library and prints (`train` with `plan`, `finetune` with `predict`, `sample`, `inspect`, `data`,
`evaluate`, `weights`, `bench`), the parser and dispatch (`app`, the only module that reads the
environment) and shared helpers (`common`).

The top layer: may import anything in gpt2_jax; nothing imports it."""
