"""Learning-rate schedules: pure functions of a fractional epoch (``epoch + batch / batches``).

A schedule keeps no state, so resuming a run only needs the epoch: ``opt.lr = sched.lr_at(epoch)``.

Optional linear warm-up (every schedule but ``onecycle``, which has its own): for ``e < W``
(``W = warmup_epochs``) ``lr = base_lr · (s + (1 - s) · e / W)`` with ``s = warmup_start_factor``;
from ``W`` on the schedule's own shape runs over the remaining ``total_epochs - W`` epochs, starting
at ``base_lr`` (as PyTorch's ``SequentialLR([LinearLR, ...], milestones=[W])`` does).
"""
import math
import numbers

from cnnframe.optim.base import check_number
from cnnframe.registry import register_schedule

__all__ = ["Schedule", "Constant", "Step", "Exponential", "Cosine", "OneCycle"]


class Schedule:
    """Base class: subclasses implement ``_decay(t)``, the lr ``t`` epochs after warm-up (``_decay(0) = base_lr``)."""

    registered_name = None

    def __init__(self, base_lr, total_epochs, warmup_epochs=0.0, *, warmup_start_factor=0.0):
        owner = type(self).__name__
        self.base_lr = check_number("base_lr", base_lr, owner, gt=0)
        self.total_epochs = check_number("total_epochs", total_epochs, owner, gt=0)
        self.warmup_epochs = check_number("warmup_epochs", warmup_epochs, owner, ge=0)
        if self.warmup_epochs >= self.total_epochs:
            raise ValueError(
                f"{owner}: warmup_epochs ({warmup_epochs}) must be smaller than total_epochs ({total_epochs})"
            )
        self.warmup_start_factor = check_number("warmup_start_factor", warmup_start_factor, owner, ge=0, le=1)

    @property
    def decay_epochs(self):
        """Length of the phase after warm-up: ``total_epochs - warmup_epochs``."""
        return self.total_epochs - self.warmup_epochs

    def lr_at(self, epoch):
        """The learning rate at fractional ``epoch`` (>= 0; past ``total_epochs`` the formula continues)."""
        ok = isinstance(epoch, numbers.Real) and not isinstance(epoch, bool)
        e = float(epoch) if ok else math.nan
        if not math.isfinite(e) or e < 0:
            raise ValueError(f"{type(self).__name__}.lr_at: epoch must be a finite number >= 0, got {epoch!r}")
        w = self.warmup_epochs
        if e < w:
            s = self.warmup_start_factor
            return self.base_lr * (s + (1.0 - s) * e / w)
        return float(self._decay(e - w))

    __call__ = lr_at

    def _decay(self, t):
        raise NotImplementedError

    def get_config(self):
        return {
            "type": self.registered_name or type(self).__name__,
            "base_lr": self.base_lr,
            "total_epochs": self.total_epochs,
            "warmup_epochs": self.warmup_epochs,
            "warmup_start_factor": self.warmup_start_factor,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**{k: v for k, v in config.items() if k != "type"})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


@register_schedule("constant")
class Constant(Schedule):
    """``lr = base_lr`` (after the optional warm-up)."""

    def _decay(self, t):
        return self.base_lr


@register_schedule("step")
class Step(Schedule):
    """``lr = base_lr · gamma^floor(t / step_size)``, t = epochs since warm-up ended (PyTorch's StepLR)."""

    def __init__(self, base_lr, total_epochs, warmup_epochs=0.0, *, step_size, gamma=0.1, warmup_start_factor=0.0):
        super().__init__(base_lr, total_epochs, warmup_epochs, warmup_start_factor=warmup_start_factor)
        self.step_size = check_number("step_size", step_size, "Step", gt=0)
        self.gamma = check_number("gamma", gamma, "Step", gt=0, le=1)

    def _decay(self, t):
        # The small tolerance keeps e.g. t = 3 * 0.1 / 0.1 = 2.9999999999999996 in step 3.
        return self.base_lr * self.gamma ** math.floor(t / self.step_size + 1e-9)

    def get_config(self):
        return {**super().get_config(), "step_size": self.step_size, "gamma": self.gamma}


@register_schedule("exponential")
class Exponential(Schedule):
    """``lr = base_lr · gamma^t``, t = (fractional) epochs since warm-up ended
    (PyTorch's ExponentialLR at integer t)."""

    def __init__(self, base_lr, total_epochs, warmup_epochs=0.0, *, gamma, warmup_start_factor=0.0):
        super().__init__(base_lr, total_epochs, warmup_epochs, warmup_start_factor=warmup_start_factor)
        self.gamma = check_number("gamma", gamma, "Exponential", gt=0, le=1)

    def _decay(self, t):
        return self.base_lr * self.gamma**t

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


@register_schedule("cosine")
class Cosine(Schedule):
    """``lr = min_lr + (base_lr - min_lr) · (1 + cos(π · t / D)) / 2`` with D = total - warm-up epochs;
    ``min_lr`` once t >= D (PyTorch's CosineAnnealingLR with T_max = D, eta_min = min_lr)."""

    def __init__(self, base_lr, total_epochs, warmup_epochs=0.0, *, min_lr=0.0, warmup_start_factor=0.0):
        super().__init__(base_lr, total_epochs, warmup_epochs, warmup_start_factor=warmup_start_factor)
        self.min_lr = check_number("min_lr", min_lr, "Cosine", ge=0)
        if self.min_lr > self.base_lr:
            raise ValueError(f"Cosine: min_lr ({min_lr}) must not exceed base_lr ({base_lr})")

    def _decay(self, t):
        frac = min(t / self.decay_epochs, 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def get_config(self):
        return {**super().get_config(), "min_lr": self.min_lr}


def _anneal_cos(start, end, frac):
    """Cosine interpolation from ``start`` (frac 0) to ``end`` (frac 1)."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


@register_schedule("onecycle")
class OneCycle(Schedule):
    """One-cycle policy (continuous form of PyTorch's OneCycleLR with anneal_strategy="cos"):
    cosine rise from ``base_lr / div_factor`` at epoch 0 to ``base_lr`` at ``pct_start · total_epochs``,
    then cosine fall to ``base_lr / (div_factor · final_div_factor)`` at ``total_epochs`` (held after).
    ``base_lr`` is the peak (PyTorch's ``max_lr``). Its rise is the warm-up, so ``warmup_epochs`` must be 0.
    """

    def __init__(self, base_lr, total_epochs, warmup_epochs=0.0, *, pct_start=0.3, div_factor=25.0,
                 final_div_factor=1e4, warmup_start_factor=0.0):
        super().__init__(base_lr, total_epochs, warmup_epochs, warmup_start_factor=warmup_start_factor)
        if self.warmup_epochs:
            raise ValueError(
                "OneCycle: warmup_epochs must be 0; the cycle's rise is its warm-up (set its length with pct_start)"
            )
        self.pct_start = check_number("pct_start", pct_start, "OneCycle", gt=0, lt=1)
        self.div_factor = check_number("div_factor", div_factor, "OneCycle", ge=1)
        self.final_div_factor = check_number("final_div_factor", final_div_factor, "OneCycle", ge=1)

    @property
    def initial_lr(self):
        return self.base_lr / self.div_factor

    @property
    def final_lr(self):
        return self.initial_lr / self.final_div_factor

    def _decay(self, t):
        peak_at = self.pct_start * self.total_epochs
        if t <= peak_at:
            return _anneal_cos(self.initial_lr, self.base_lr, t / peak_at)
        frac = min((t - peak_at) / (self.total_epochs - peak_at), 1.0)
        return _anneal_cos(self.base_lr, self.final_lr, frac)

    def get_config(self):
        return {
            **super().get_config(),
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
        }
