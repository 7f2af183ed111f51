"""Seeds derived from one seed: every random stream gets its own.

Layer i's initial weights, its dropout masks and epoch e's batch order each get a seed of their own
(``derive_seed``), and so does each child of a block, by its path (``seed_for_path``): streams never
overlap, and adding a layer or a child does not change the seeds of the others.
"""
import numpy as np

__all__ = ["derive_seed", "seed_for_path"]


def derive_seed(purpose, seed, index):
    """A 64-bit seed from ``SeedSequence([purpose, seed, index])``."""
    return int(np.random.SeedSequence([purpose, seed, index]).generate_state(1, np.uint64)[0])


def seed_for_path(base, path):
    """A 64-bit seed for the child at ``path`` (``"layers.0"``) from a block's ``base`` seed."""
    return int(np.random.SeedSequence([int(base), *path.encode()]).generate_state(1, np.uint64)[0])
