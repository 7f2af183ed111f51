"""Stateless operations the layers call: validate shapes and dtypes, allocate, pick threads, run kernels."""
from cnnframe.ops.augment import shift_images
from cnnframe.ops.activation import leaky_relu_backward, leaky_relu_forward, relu_backward, relu_forward
from cnnframe.ops.dense import dense_backward, dense_forward
from cnnframe.ops.conv import conv2d_backward, conv2d_forward, conv2d_input_grad_full, conv2d_output_shape
from cnnframe.ops.pool import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    pool2d_output_shape,
)
from cnnframe.ops.loss import softmax_cross_entropy
from cnnframe.ops.norm import (
    batch_norm_backward,
    batch_norm_forward,
    batch_norm_relu_maxpool_backward,
    batch_norm_relu_maxpool_forward,
)
from cnnframe.ops.optim import adam_step, sgd_step, sum_squares

__all__ = [
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_input_grad_full",
    "conv2d_output_shape",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "global_avg_pool2d_forward",
    "global_avg_pool2d_backward",
    "pool2d_output_shape",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_relu_maxpool_forward",
    "batch_norm_relu_maxpool_backward",
    "dense_forward",
    "dense_backward",
    "softmax_cross_entropy",
    "sgd_step",
    "adam_step",
    "sum_squares",
    "shift_images",
    "relu_forward",
    "relu_backward",
    "leaky_relu_forward",
    "leaky_relu_backward",
]
