"""Train a CNN on the 8x8 digits from Python, without YAML.

    python examples/train_api.py          # 20 epochs, a few seconds on 2 cores; about 98 % test accuracy
    python examples/train_api.py 3        # a quick look
"""
import sys

import cnnframe
from cnnframe import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, SGD, Sequential,
                      SoftmaxCrossEntropy, Trainer)
from cnnframe.optim import OneCycle

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 20

data = cnnframe.load_dataset("digits", seed=0)  # stratified train/val/test splits, pixels scaled to [0, 1]
model = Sequential([
    Conv2D(out_channels=16, kernel_size=3, padding=1), BatchNorm2D(), ReLU(),
    MaxPool2D(kernel_size=2),
    Conv2D(out_channels=32, kernel_size=3, padding=1), BatchNorm2D(), ReLU(),
    MaxPool2D(kernel_size=2),
    Flatten(), Dropout(p=0.3), Dense(out_features=10),
], input_shape=data.input_shape)  # (1, 8, 8): in_channels and in_features are inferred
print(model.summary())

optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
schedule = OneCycle(base_lr=0.1, total_epochs=epochs)  # the trainer sets optimizer.lr every step
trainer = Trainer(model, SoftmaxCrossEntropy(label_smoothing=0.1), optimizer, data,
                  schedule=schedule, epochs=epochs, batch_size=64, seed=0, shift=1)  # shift: ±1 px augmentation
summary = trainer.fit()  # prints one line per epoch and the test report; run_dir=... would save checkpoints

print(f"test accuracy: {100 * summary['test']['acc']:.2f}%")
