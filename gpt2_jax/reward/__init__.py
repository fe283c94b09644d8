"""Reward tuning: policy-gradient fine-tuning against a reward with a KL leash to the reference model.

objective.py (group advantages, the clipped policy-gradient loss, KL estimators: pure functions),
rewards.py (lexical, `module:function`, classifier), prompts.py (text windows or JSONL prompts),
task.py (the task: rollouts with the jitted KV-cache sampler, the update, evaluations),
report.py (samples tables, reward/KL curves). May import train/ and the stages below it.
"""
