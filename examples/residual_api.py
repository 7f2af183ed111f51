"""Build a small ResNet from Python with residual blocks and train it on the 8x8 digits.

    python examples/residual_api.py          # 30 epochs, about 10 s on 2 cores; about 99 % test accuracy
    python examples/residual_api.py 3        # a quick look
"""
import sys

import cnnframe
from cnnframe import (BatchNorm2D, Conv2D, Dense, GlobalAvgPool2D, ReLU, Residual, SGD, Sequential,
                      SoftmaxCrossEntropy, Trainer)
from cnnframe.optim import OneCycle

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 30


def block(channels, stride=1):
    """y = relu(F(x) + S(x)); S projects with a strided 1x1 convolution when the shape changes."""
    body = [Conv2D(channels, 3, stride=stride, padding=1), BatchNorm2D(), ReLU(),
            Conv2D(channels, 3, padding=1), BatchNorm2D()]
    shortcut = [Conv2D(channels, 1, stride=stride), BatchNorm2D()] if stride != 1 else None  # None: identity
    return Residual(body, shortcut=shortcut, activation="relu")


data = cnnframe.load_dataset("digits", seed=0)
model = Sequential([
    Conv2D(16, 3, padding=1), BatchNorm2D(), ReLU(),   # stem: (1, 8, 8) -> (16, 8, 8)
    block(16), block(32, stride=2),                    # -> (16, 8, 8) -> (32, 4, 4)
    GlobalAvgPool2D(), Dense(10),
], input_shape=data.input_shape)
print(model.summary())  # each block's children are listed under it, e.g. "4.shortcut.0.weight" is a parameter

optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
trainer = Trainer(model, SoftmaxCrossEntropy(label_smoothing=0.1), optimizer, data,
                  schedule=OneCycle(base_lr=0.1, total_epochs=epochs), epochs=epochs, batch_size=64, seed=0, shift=1)
summary = trainer.fit()
print(f"test accuracy: {100 * summary['test']['acc']:.2f}%")
