"""Stochastic gradient descent with momentum and Nesterov momentum (PyTorch's torch.optim.SGD rules)."""
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
    """

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None):
        self.momentum = check_number("momentum", momentum, "SGD", ge=0, lt=1)
        if not isinstance(nesterov, bool):
            raise TypeError(f"SGD: nesterov must be true or false, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov=True requires momentum > 0")
        self.nesterov = nesterov
        self._slots = ("momentum_buffer",) if self.momentum else ()
        super().__init__(params, lr, weight_decay=weight_decay, clip_norm=clip_norm)

    def _update(self, name, p, g):
        if self.momentum:
            mu = g.dtype.type(self.momentum)
            buf = self.state["momentum_buffer"][name]
            buf *= mu
            buf += g
            if self.nesterov:
                g += mu * buf
            else:
                g = buf
        p.data -= g.dtype.type(self.lr) * g

    def get_config(self):
        return {
            "type": self.registered_name,
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
            "clip_norm": self.clip_norm,
        }
