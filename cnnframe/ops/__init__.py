"""Stateless operations the layers call: validate shapes and dtypes, allocate, pick threads, run kernels."""
from cnnframe.ops.conv import conv2d_backward, conv2d_forward, conv2d_input_grad_full, conv2d_output_shape
from cnnframe.ops.pool import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    max_pool2d_backward,
    max_pool2d_forward,
    pool2d_output_shape,
)

__all__ = [
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_input_grad_full",
    "conv2d_output_shape",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "pool2d_output_shape",
]
