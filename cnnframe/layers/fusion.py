"""Runs of layers that a container executes as one pass each way (BatchNorm, ReLU, max pooling).

A layer that can also do the work of the layers after it declares it: ``fuses(following)`` gets the
tuple of the layers that follow and returns how many of them it runs itself (0: none).  Then
``forward_fused(x, absorbed)`` and ``backward_fused(grad_out, absorbed)`` stand for the ``forward``
and ``backward`` calls of the layer and the ``absorbed`` ones in a row, with the same results.
Fusing saves writing and re-reading the intermediate arrays, which for elementwise layers on big
activations costs as much as the arithmetic.
"""


def fusion_plan(layers):
    """[(i, k), ...] in order: layer i runs itself and the k layers after it (k = 0: alone)."""
    plan, i = [], 0
    while i < len(layers):
        fuses = getattr(layers[i], "fuses", None)  # layers need not derive from Layer
        k = int(fuses(tuple(layers[i + 1:]))) if fuses is not None and i + 1 < len(layers) else 0
        plan.append((i, k))
        i += 1 + k
    return plan


def plan_for(layers, plan):
    """``plan`` when it still covers ``layers`` (the plan of their last forward), else a fresh one."""
    return plan if plan is not None and sum(1 + k for _, k in plan) == len(layers) else fusion_plan(layers)


def forward_step(layers, i, k, x):
    """One entry (i, k) of a plan forward: layer i alone, or with the k layers after it in its passes."""
    return layers[i].forward_fused(x, tuple(layers[i + 1:i + 1 + k])) if k else layers[i].forward(x)


def backward_step(layers, i, k, grad_out):
    """The backward pass of one entry (i, k) of a plan, as ``forward_step`` ran it."""
    return layers[i].backward_fused(grad_out, tuple(layers[i + 1:i + 1 + k])) if k else layers[i].backward(grad_out)
