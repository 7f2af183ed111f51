"""Layer pairs that a container runs as one pass each way (e.g. BatchNorm then ReLU).

A layer that can also compute its successor's work declares it: ``fuses(next_layer)`` returns True,
and ``forward_fused(x, next_layer)`` / ``backward_fused(grad_out, next_layer)`` stand for the two
layers' ``forward``/``backward`` calls in a row, leaving both layers as their own calls would.
Fusing saves writing and re-reading the intermediate array, which for elementwise layers on big
activations costs as much as the arithmetic.
"""


def fused_pairs(layers):
    """Indices i at which ``layers[i]`` runs fused with ``layers[i + 1]``: left to right, never overlapping."""
    pairs, i = [], 0
    while i < len(layers) - 1:
        fuses = getattr(layers[i], "fuses", None)  # layers need not derive from Layer
        if fuses is not None and fuses(layers[i + 1]):
            pairs.append(i)
            i += 2
        else:
            i += 1
    return frozenset(pairs)
