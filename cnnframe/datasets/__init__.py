"""Data sources, one module each; importing this package registers them (``dataset: <name>`` in a config).

A new source: a module here with a ``Dataset`` subclass registered by ``@register_dataset("name")``
(see ``base.py`` for the three methods), and one import line below.
"""
from cnnframe.datasets import digits, npz  # noqa: F401  (registers "digits" and "npz")
from cnnframe.datasets.idx import IdxData  # noqa: F401  (registers "idx")
from cnnframe.datasets.image_folder import ImageFolder  # noqa: F401  (registers "image_folder")
from cnnframe.datasets.synthetic import Synthetic  # noqa: F401  (registers "synthetic")
from cnnframe.datasets.base import Dataset  # noqa: F401
from cnnframe.datasets.digits import Digits  # noqa: F401
from cnnframe.datasets.npz import NpzData  # noqa: F401
