"""The interface every data source implements (register one with ``@cnnframe.register_dataset("name")``).

- ``describe()`` → (per-sample input shape, number of classes), cheap, so a config is checked before
  any data loads;
- ``load()`` → (X of shape (N, C, H, W), integer labels y of shape (N,)), raw values;
- ``transform(X_train)`` → (offset, scale): inputs are fed as ``(X - offset) * scale``; computed from the
  training part only and saved in checkpoints so ``predict`` preprocesses new inputs the same way.
"""


class Dataset:
    """Base class of registered data sets (see the module docstring for the three methods)."""

    #: constructor arguments that are file paths (made absolute relative to the config file)
    path_keys = ()

    def describe(self):
        raise NotImplementedError

    def load(self):
        raise NotImplementedError

    def transform(self, X_train):
        return 0.0, 1.0
