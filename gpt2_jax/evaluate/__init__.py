"""Scoring text: sliding-window NLL, perplexity and bits per byte (`scoring`), LAMBADA (`lambada`),
detokenizers (`detokenize`), dataset specs of eval/table (`datasets`) and tables (`tables`).

May import model/, data/, parallel/, optim/."""
