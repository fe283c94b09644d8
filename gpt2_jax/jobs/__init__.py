"""One entry module per job a command runs end to end: pre-training an experiment (`pretrain`),
the memory plan (`plan`), weights written as a run (`convert`).

May import api, train/ and everything below; never cli/ or bench/."""
