"""Looking inside a model: one jitted forward that collects what the model sows (attention
probabilities, the residual stream) and derives entropy, top-k, the logit lens and per-token
loss (`forward`); token embeddings: nearest neighbours and a 2-D PCA (`embeddings`); the
pictures and the JSON of `gpt2-jax inspect` (`plots`, `report`).

May import model/, data/, parallel/ (not evaluate/ or generate/, its neighbours on one row)."""
