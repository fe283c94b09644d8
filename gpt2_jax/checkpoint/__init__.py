"""Orbax checkpoints of a run (`manager`: async saves, keep latest + best, sealed file lists,
damage detection, restore onto any mesh) and weights-only exports (`export`).

May import model/, data/, parallel/, optim/."""
