"""Stochastic gradient descent with momentum and Nesterov momentum (PyTorch's torch.optim.SGD rules)."""
from cnnframe import ops
from cnnframe.optim.base import Optimizer, check_number
from cnnframe.registry import register_optimizer


@register_optimizer("sgd")
class SGD(Optimizer):
    """SGD. Per step, with g the (clipped) gradient:

        g ← g + wd·w                 (only Parameters with weight_decay=True)
        v ← μ·v + g                  (momentum buffer, starts at 0; skipped when μ = 0)
        d = g + μ·v if nesterov else v   (d = g when μ = 0)
        w ← w - lr·d

    ``clip_norm`` rescales all gradients together when their global L2 norm exceeds it.
    Each parameter is updated in one pass (``ops.sgd_step``), in its dtype, operation by operation
    as written above.
    """

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None):
        self.momentum = check_number("momentum", momentum, "SGD", ge=0, lt=1)
        if not isinstance(nesterov, bool):
            raise TypeError(f"SGD: nesterov must be true or false, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True requires momentum > 0")
        self.nesterov = nesterov
        super().__init__(params, lr, weight_decay=weight_decay, clip_norm=clip_norm)

    def slots(self):
        return ("momentum_buffer",) if self.momentum else ()

    def _apply(self, name, p, scale, weight_decay):
        buf = self.state["momentum_buffer"][name] if self.momentum else None
        ops.sgd_step(p.data, p.grad, buf, self.lr, self.momentum, self.nesterov, scale, weight_decay)

    def get_config(self):
        return {
            "type": self.registered_name,
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
            "clip_norm": self.clip_norm,
        }
