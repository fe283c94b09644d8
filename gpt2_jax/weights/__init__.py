"""Weights of other codebases: Hugging Face GPT-2 in and out (`huggingface`), OpenAI's original
release in (`openai`), and the TensorFlow checkpoint reader it needs, in numpy (`tf_bundle`).

May import model/, data/, parallel/, optim/."""
