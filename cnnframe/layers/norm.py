"""Batch normalisation over features (N, F) and over channels (N, C, H, W)."""
import numpy as np

from cnnframe import ops
from cnnframe.checks import check_int, check_number
from cnnframe.layers._util import check_grad, check_input, check_per_sample, check_size
from cnnframe.layers.activations import ReLU
from cnnframe.layers.base import Layer
from cnnframe.layers.pooling import MaxPool2D
from cnnframe.registry import register_layer
from cnnframe.shards import batch_total, chunk_sizes, current_shard, gather_chunks, map_chunks, tree_sum


class _BatchNorm(Layer):
    """Per-feature normalisation with learned scale γ (``weight``) and shift β (``bias``), as in PyTorch.

    With m values per feature in the batch (N for BatchNorm1D, N·H·W for BatchNorm2D):
      training:  μ = (1/m) Σ x,  σ² = (1/m) Σ (x − μ)²  (biased),
                 x̂ = (x − μ)/√(σ² + eps),  y = γ x̂ + β;
                 running_mean ← (1 − momentum)·running_mean + momentum·μ,
                 running_var  ← (1 − momentum)·running_var  + momentum·σ²·m/(m − 1)  (unbiased);
      evaluation: x̂ = (x − running_mean)/√(running_var + eps),  y = γ x̂ + β.
    Backward with G = dL/dy:  dγ += Σ G·x̂,  dβ += Σ G;
      training:   dx = γ/√(σ² + eps) · (G − mean(G) − x̂ · mean(G·x̂))   (means over the m values);
      evaluation: dx = γ/√(running_var + eps) · G.
    Computed by ``ops.batch_norm_forward``/``ops.batch_norm_backward`` (one pass over a channel for
    its statistics, one for the output); the layer keeps its input and the statistics, not x̂.
    Followed by a ReLU in a ``Sequential``, the two run as one pass each way, and so does a max
    pooling with non-overlapping windows after the ReLU (``fuses``).
    ``num_features`` may be omitted (inferred by ``build``).  γ, β have no weight decay.
    In data-parallel training the m values are those of the global batch: every chunk's per-channel sums
    reach every process (``cnnframe.shards.gather_chunks``, the statistics hook) before normalising and
    before dx, and σ² is combined from the chunks' sums of squares about their own means (Chan et al.):
    Σ(x − μ)² = Σ_j [M2_j + m_j (μ_j − μ)²] -- one exchange per step each way.  That path is NumPy on a
    (N, C, L) view, chunk by chunk, and runs unfused.
    """

    _ndim = None  # input ndim, batch axis included
    _layout = None
    _sample_layout = None

    def __init__(self, num_features=None, eps=1e-5, momentum=0.1, dtype="float32"):
        super().__init__(dtype)
        name = type(self).__name__
        self.num_features = check_int("num_features", num_features, name, ge=1, nullable=True)
        self.eps = check_number("eps", eps, name, gt=0)
        self.momentum = check_number("momentum", momentum, name, ge=0, le=1)
        self._cache = None
        self._chunked = None  # what a chunked (data-parallel) forward keeps for its backward
        if self.num_features is not None:
            self._allocate(self.num_features)

    def _allocate(self, c):
        self.num_features = c
        self.add_parameter("weight", np.ones(c), weight_decay=False)
        self.add_parameter("bias", np.zeros(c), weight_decay=False)
        self.add_buffer("running_mean", np.zeros(c))
        self.add_buffer("running_var", np.ones(c))

    def reset_parameters(self, rng=None):
        """γ = 1, β = 0, running_mean = 0, running_var = 1 (``rng`` is accepted for uniformity, unused)."""
        if self._params:
            self._params["weight"].data[...] = 1
            self._params["bias"].data[...] = 0
            self._buffers["running_mean"][...] = 0
            self._buffers["running_var"][...] = 1

    def output_shape(self, input_shape):
        shape = check_per_sample(self, input_shape, self._ndim - 1, self._sample_layout)
        if self.num_features is not None and shape[0] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: input has {shape[0]} features/channels (per-sample shape {shape}) "
                f"but num_features is {self.num_features}"
            )
        return shape

    def build(self, input_shape):
        shape = self.output_shape(input_shape)
        if not self._params:
            self._allocate(shape[0])
        super().build(shape)

    def forward(self, x):
        if self.training and current_shard() is not None:
            return self._forward_chunked(x)
        return self._forward(x)

    def backward(self, grad_out):
        if self._chunked is not None:
            return self._backward_chunked(grad_out)
        return self._backward(grad_out)

    # -- BatchNorm then ReLU (then max pooling) in one pass --------------------------------------
    def fuses(self, following):
        """A ReLU next runs in this layer's passes (``Sequential`` calls ``forward_fused``/``backward_fused``),
        and so does a MaxPool2D after it whose windows do not overlap (stride = kernel, no padding)."""
        if not following or type(following[0]) is not ReLU:
            return 0
        if self.training and current_shard() is not None:
            return 0  # the global batch's statistics need the chunked path, which runs unfused
        if self._ndim == 4 and len(following) > 1 and type(following[1]) is MaxPool2D and following[1].tiles():
            return 2
        return 1

    def forward_fused(self, x, absorbed):
        """The forward passes of this layer and ``absorbed`` (a ReLU, maybe then a MaxPool2D) in one pass
        over x: z = max(γ·x̂ + β, 0) is written once -- or, pooled, never: only the pooled output and the
        positions of its maxima.  Each layer keeps what its own backward needs, except a ReLU whose output
        was pooled at once (its own backward then has nothing to work on)."""
        return self._forward(x, relu=absorbed[0], pool=absorbed[1] if len(absorbed) > 1 else None)

    def backward_fused(self, grad_out, absorbed):
        """The backward passes of ``absorbed`` and this layer in one: the ReLU's mask [y > 0] is recomputed
        from x, and a pooled gradient is scattered to its maxima one plane at a time, in cache."""
        fused = self._cache[4] if self._cache is not None else 0
        if fused != len(absorbed):
            raise RuntimeError(f"{type(self).__name__}: backward_fused() needs forward_fused() with the same layers first")
        if fused == 2:
            return self._backward(check_grad(absorbed[1], grad_out, absorbed[1].output_size()), fused)
        return self._backward(check_grad(absorbed[0], grad_out, self._cache[0].shape), fused)

    def _forward(self, x, relu=None, pool=None):
        x = self._checked_input(x)
        gamma, beta = self._params["weight"].data, self._params["bias"].data
        stats = {}
        if self.training:
            m = self._values_per_feature(x, x.size // x.shape[1])
        else:
            stats = {"mean": self._buffers["running_mean"].copy(),  # backward needs this pass's statistics
                     "inv_std": 1.0 / np.sqrt(self._buffers["running_var"] + self.dtype.type(self.eps))}
        argmax = None
        if pool is not None:
            try:
                y, argmax, mean, var, inv_std = ops.batch_norm_relu_maxpool_forward(
                    x, gamma, beta, self.eps, pool.kernel_size, **stats)
            except ValueError as e:
                raise ValueError(f"{type(pool).__name__}: {e}") from None
            pool.keep_result(argmax, x.shape, y.shape)
            relu.keep_output(None)
        else:
            y, mean, var, inv_std = ops.batch_norm_forward(x, gamma, beta, self.eps, relu=relu is not None, **stats)
            if relu is not None:
                relu.keep_output(y)
        if self.training:
            self._update_running(mean, var, m)
        window = pool.kernel_size if pool is not None else None
        self._cache = (x, mean, inv_std, self.training, (relu is not None) + (pool is not None), argmax, window)
        self._chunked = None
        return y

    def _backward(self, grad_out, fused=0):
        x, mean, inv_std, training, _, argmax, window = self._cache if self._cache is not None else (None,) * 7
        w, b = self._params["weight"], self._params["bias"]
        if fused == 2:
            dx, dgamma, dbeta = ops.batch_norm_relu_maxpool_backward(grad_out, argmax, x, mean, inv_std, w.data,
                                                                     b.data, window, training)
        else:
            g = check_grad(self, grad_out, None if x is None else x.shape)
            dx, dgamma, dbeta = ops.batch_norm_backward(g, x, mean, inv_std, w.data, b.data, training, relu=fused == 1)
        w.grad += dgamma
        b.grad += dbeta
        return dx

    # Work on a (N, C, L) view (L = H·W, or 1 for features): per-channel sums are then einsum
    # reductions, several times faster than NumPy's strided mean over axes (0, 2, 3) on small images.
    # In data-parallel training they are per chunk of the global batch and reach every process
    # (cnnframe.shards), which adds them in chunk order: the statistics of the global batch.
    def _forward_chunked(self, x):  # training only: evaluation is per sample, chunks or not
        x = self._checked_input(x)
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        m = self._values_per_feature(x, batch_total(n) * x3.shape[2])
        parts = map_chunks(lambda a, b: _moments(x3[a:b]), n)
        rows = gather_chunks(np.stack([np.concatenate(p[:2]) for p in parts]))  # [Σx, M2] of every chunk
        sizes = [k * x3.shape[2] for k in chunk_sizes(n)]
        mean = tree_sum(list(rows[:, :c])) / m
        # biased: normalise with the batch's own spread; M2 + m_j (μ_j − μ)² is M2 itself for one chunk
        var = tree_sum([r[c:] + k * np.square(r[:c] / k - mean) for r, k in zip(rows, sizes)]) / m
        xhat = parts[0][2] if len(rows) == 1 else x3 - mean[:, None]
        inv_std = 1.0 / np.sqrt(var + self.dtype.type(self.eps))
        xhat *= inv_std[:, None]
        self._update_running(mean, var, m)
        self._chunked = (xhat, inv_std, x.shape)
        self._cache = None
        y = xhat * self._params["weight"].data[:, None]
        y += self._params["bias"].data[:, None]
        return y.reshape(x.shape)

    def _backward_chunked(self, grad_out):
        xhat, inv_std, shape = self._chunked
        g = check_grad(self, grad_out, shape)
        g3 = g.reshape(xhat.shape)
        n, c = xhat.shape[:2]
        # [Σ G, Σ G·x̂] per channel and chunk: this process's chunks give the parameter gradients (summed
        # over the processes with the others), every process's chunks what dx needs.
        rows = np.stack(map_chunks(lambda a, b: np.concatenate(
            [np.einsum("ncl->c", g3[a:b]), np.einsum("ncl,ncl->c", g3[a:b], xhat[a:b])]), n))
        own = tree_sum(list(rows))
        self._params["weight"].grad += own[c:]
        self._params["bias"].grad += own[:c]
        scale = (self._params["weight"].data * inv_std)[:, None]
        sums = tree_sum(list(gather_chunks(rows)))
        sum_g, sum_gx = sums[:c], sums[c:]
        m = batch_total(n) * xhat.shape[2]
        dx = xhat * (-sum_gx / m)[:, None]  # γ/σ · (G − mean(G) − x̂·mean(G·x̂))
        dx += g3
        dx -= (sum_g / m)[:, None]
        dx *= scale
        return dx.reshape(shape)

    # -- shared by the compiled and the chunked path ----------------------------------------------
    def _checked_input(self, x):
        x = check_input(self, x, ndim=self._ndim, layout=self._layout)
        if self.num_features is not None:
            check_size(self, x, 1, self.num_features, "features/channels")
        self._ensure_built(x)
        return x

    def _values_per_feature(self, x, m):
        """m, the values each feature's batch statistics are taken over, checked to be at least 2."""
        if m < 2:
            raise ValueError(
                f"{type(self).__name__}: training needs more than one value per feature to compute batch "
                f"statistics, got input shape {x.shape}; use a larger batch or call eval()"
            )
        return m

    def _update_running(self, mean, var, m):
        mom = self.momentum
        rm, rv = self._buffers["running_mean"], self._buffers["running_var"]
        rm[...] = (1 - mom) * rm + mom * mean
        rv[...] = (1 - mom) * rv + mom * var * (m / (m - 1))  # unbiased, as PyTorch

    def get_config(self):
        return {
            **super().get_config(),
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
        }


def _moments(x3):
    """Per channel of a (N, C, L) chunk: Σx, M2 = Σ(x − μ)² about the chunk's mean μ, and x − μ."""
    s = np.einsum("ncl->c", x3)
    centred = x3 - (s / (x3.shape[0] * x3.shape[2]))[:, None]
    return s, np.einsum("ncl,ncl->c", centred, centred), centred


@register_layer("batchnorm1d")
class BatchNorm1D(_BatchNorm):
    """Batch normalisation of (N, F) features (per-sample shape (F,)); statistics over the batch axis."""

    _ndim = 2
    _layout = "(N, F)"
    _sample_layout = "(F,)"


@register_layer("batchnorm2d")
class BatchNorm2D(_BatchNorm):
    """Batch normalisation of (N, C, H, W) images per channel; statistics over N, H and W."""

    _ndim = 4
    _layout = "(N, C, H, W)"
    _sample_layout = "(C, H, W)"
