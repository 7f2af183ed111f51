"""Compiled kernels. Private: layers reach them only through :mod:`cnnframe.ops`."""
