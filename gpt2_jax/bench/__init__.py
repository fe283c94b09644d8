"""Every `gpt2-jax bench` kind: train steps with MFU (`train`), decoding (`decode`), scoring
(`scoring`), data (`data`), checkpoint saves (`ckpt`), GPU sweeps (`sweep`), the PyTorch peers
(`peers`) and shared helpers (`common`).

May import api, train/ and everything below; never cli/ or jobs/."""
