"""Optimizers (``SGD``, ``Adam``; registered "sgd", "adam") and learning-rate schedules
(``cnnframe.optim.schedules``; registered "constant", "step", "exponential", "cosine", "onecycle")."""
from cnnframe.optim import schedules
from cnnframe.optim.adam import Adam
from cnnframe.optim.base import Optimizer
from cnnframe.optim.schedules import Constant, Cosine, Exponential, OneCycle, Schedule, Step
from cnnframe.optim.sgd import SGD

__all__ = [
    "Optimizer", "SGD", "Adam", "schedules",
    "Schedule", "Constant", "Step", "Exponential", "Cosine", "OneCycle",
]
