"""GPT-2 124M trained from scratch on WikiText-103 (raw), from TFDS's Hugging Face namespace.

Prepare the dataset once on a connected machine, then copy `DIR/wikitext` into `data.data_dir`:
    python -c "import tensorflow_datasets as tfds; tfds.builder('huggingface:wikitext/wikitext-103-raw-v1',
               data_dir='DIR').download_and_prepare(file_format='array_record')"
Each record is one line of a Wikipedia article; lines are joined by EOS like documents.
"""

from gpt2_jax.config import base_config


def get_config():
    c = base_config()
    c.model.preset = "gpt2"
    c.model.vocab_multiple = 128
    c.model.dtype = "bfloat16"
    c.data.source = "tfds:huggingface:wikitext/wikitext-103-raw-v1"
    c.data.text_field = "text"
    c.data.tokenizer = "gpt2"
    c.data.seq_len = 1024
    c.data.batch_size = 32
    c.optim.lr = 6e-4
    c.optim.warmup_steps = 1000
    c.train.steps = 50_000
    c.train.eval_every = 2000
    c.train.run_dir = "runs/wikitext103_gpt2"
    c.train.sample_prompt = " = Valkyria Chronicles = \n"
    c.eval.batch_size = 32
    c.eval.max_batches = 50
    c.checkpoint.every = 2000
    return c
