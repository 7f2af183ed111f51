"""Adam (Kingma & Ba), with PyTorch's torch.optim.Adam update order and L2-style weight decay."""
from cnnframe import ops
from cnnframe.optim.base import Optimizer, check_number
from cnnframe.registry import register_optimizer


@register_optimizer("adam")
class Adam(Optimizer):
    """Adam. Per step t = 1, 2, ..., with g the (clipped) gradient:

        g ← g + wd·w                      (L2 penalty, only Parameters with weight_decay=True)
        m ← β1·m + (1-β1)·g ;  v ← β2·v + (1-β2)·g²
        w ← w - (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps)

    Each parameter is updated in one pass (``ops.adam_step``), in its dtype, operation by operation
    as written above.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None):
        if isinstance(betas, str) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"Adam: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(check_number(f"betas[{i}]", b, "Adam", ge=0, lt=1) for i, b in enumerate(betas))
        self.eps = check_number("eps", eps, "Adam", gt=0)
        super().__init__(params, lr, weight_decay=weight_decay, clip_norm=clip_norm)

    def slots(self):
        return ("exp_avg", "exp_avg_sq")

    def _apply(self, name, p, scale, weight_decay):
        ops.adam_step(p.data, p.grad, self.state["exp_avg"][name], self.state["exp_avg_sq"][name], self.lr,
                      self.betas, self.eps, self.step_count, scale, weight_decay)

    def get_config(self):
        return {
            "type": self.registered_name,
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "clip_norm": self.clip_norm,
        }
