"""Seeds derived from (purpose, seed, index): one user seed gives every random stream its own.

Layer i's initial weights, its dropout masks and epoch e's batch order each get a seed of their own,
so streams never overlap and adding a layer does not change the seeds of the others.
"""
import numpy as np

__all__ = ["derive_seed"]


def derive_seed(purpose, seed, index):
    """A 64-bit seed from ``SeedSequence([purpose, seed, index])``."""
    return int(np.random.SeedSequence([purpose, seed, index]).generate_state(1, np.uint64)[0])
