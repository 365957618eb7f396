"""Neural-tangent surrogates: the attacker's infinite-width networks.

The attacker of NTGA does not train a network. It uses the Gaussian process
given by the neural tangent kernel (NTK) of an infinitely wide network, built
here with `neural_tangents.stax`, as in the paper:

* `fnn`: `depth` x [Dense, Erf] (default 5), W_std^2 = 1.76, b_std^2 = 0.18.
* `cnn`: `depth` x [Conv(5x5, stride, SAME), ReLU] (default 2, stride 2),
  Flatten, Dense 384, Dense 192, Dense num_classes. For large images
  (either side >= 128 pixels, e.g. ImageNet's 224x224) the default stride is
  3, as the paper's ImageNet surrogate.

Widths only matter for finite networks; the kernel is that of the infinite
width limit.

The CNN kernel is computed by default by `_cnn_ntk`, an exact implementation
of the same kernel with a hand-written backward pass (see that module): in
float32 on the CPU by its C++ kernel (`_native`, compiled on first use, run
on all cores through XLA FFI), otherwise in pure JAX (float64, GPU, or where
no C++ compiler is found, or NTGA_TFDS_NATIVE=0). `impl="nt"` uses
neural-tangents' `stax` kernel instead (the reference both are tested
against).

Example:

  >>> kernel_fn = kernels.kernel_fn("fnn", image_shape=(8, 8, 1),
  ...                               num_classes=10)
  >>> k_test_train = kernel_fn(x_test, x_train)   # (n_test, n_train)
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import jax.numpy as jnp

from ntga_tfds.transforms.common import checks as _checks
from ntga_tfds.transforms.ntga import _cnn_ntk
from ntga_tfds.transforms.ntga import _fnn_ntk
from ntga_tfds.transforms.ntga import _gram
from ntga_tfds.transforms.ntga import config as config_lib

SURROGATES = config_lib.SURROGATES
IMPLS = ("fast", "native", "jax", "nt")
W_STD = math.sqrt(1.76)
B_STD = math.sqrt(0.18)
LARGE_IMAGE_SIDE = 128

KernelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _stax():
  """neural-tangents' `stax`, imported on first use.

  The default ("fast") kernels are this package's own, so the attack runs
  where neural-tangents does not import (it needs jax <= 0.5.3), e.g. on an
  accelerator host with a newer JAX; only the stax constructors and
  `impl="nt"` need it.
  """
  from neural_tangents import stax  # pylint: disable=g-import-not-at-top
  return stax


def fnn(*, depth: int = 5, width: int = 512, W_std: float = W_STD,
        b_std: float = B_STD):
  """`depth` x [Dense(width), Erf]: the stax triple (init, apply, kernel)."""
  stax = _stax()
  depth = _checks.positive_int(depth, "depth")
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(width, W_std=W_std, b_std=b_std), stax.Erf()]
  return stax.serial(*layers)


def cnn(*, num_classes: int, depth: int = 2, channels: int = 64,
        filter_shape: Sequence[int] = (5, 5), strides: int = 2,
        hidden: Sequence[int] = (384, 192), W_std: float = W_STD,
        b_std: float = B_STD):
  """`depth` x [Conv, ReLU], Flatten, Dense hidden..., Dense num_classes."""
  stax = _stax()
  depth = _checks.positive_int(depth, "depth")
  strides = _checks.positive_int(strides, "strides")
  layers = []
  for _ in range(depth):
    layers += [
        stax.Conv(channels, tuple(filter_shape), strides=(strides, strides),
                  padding="SAME", W_std=W_std, b_std=b_std),
        stax.Relu(),
    ]
  layers.append(stax.Flatten())
  for units in hidden:
    layers.append(stax.Dense(units, W_std=W_std, b_std=b_std))
  layers.append(stax.Dense(num_classes, W_std=W_std, b_std=b_std))
  return stax.serial(*layers)


def cnn_native_available() -> bool:
  """Whether the CNN's "fast" kernel runs natively (C++, float32, CPU)."""
  return _cnn_ntk.native_available()


def kernel_fn(surrogate: str, *, image_shape: Sequence[int], num_classes: int,
              depth: Optional[int] = None, width: Optional[int] = None,
              strides: Optional[int] = None, impl: str = "fast",
              step_size: Optional[int] = None) -> KernelFn:
  """The NTK of a surrogate, as `k(x1, x2) -> (n1, n2)` on image batches.

  Args:
    surrogate: "fnn" or "cnn".
    image_shape: `(H, W, C)` or `(H, W)` of one image; FNN flattens it.
    num_classes: width of the CNN's readout layer (the NTK does not depend
      on it).
    depth, width, strides: override the paper's defaults (see module doc);
      `strides` applies to the CNN only, `width` to the FNN only.
    impl: "fast" (default: `_fnn_ntk` / `_cnn_ntk`, native C++ in float32
      on the CPU, else pure JAX) or "nt" (neural-tangents' `stax` kernel);
      all compute the same kernel. "native" or "jax" force one
      implementation of the fast kernel.
    step_size: CNN pure-JAX kernel only: x2 images per step of its loop
      (default: a cache-sized choice, `_cnn_ntk.default_step_size`).

  Returns:
    A pure function `(x1 (n1, *image_shape), x2 (n2, *image_shape)) ->
    ntk (n1, n2)`, differentiable in both inputs (the fast CNN kernel: in
    reverse mode). With the fast CNN kernel, `k(x, x)` on one array object
    is the symmetric self-kernel (exact diagonal, one backward pass).
  """
  _checks.choice(surrogate, "surrogate", SURROGATES)
  image_shape = tuple(int(s) for s in image_shape)
  if surrogate == "fnn":
    _checks.choice(impl, "impl", IMPLS)
    depth = _checks.positive_int(5 if depth is None else depth, "depth")
    if impl == "nt":
      _, _, stax_kernel = fnn(depth=depth,
                              width=512 if width is None else width)

    def k(x1, x2):
      # One array object for both: `_fnn_ntk.ntk` then takes the self-Gram
      # path (its backward is one matmul instead of two).
      same = x1 is x2
      x1 = x1.reshape(x1.shape[0], -1)
      x2 = x1 if same else x2.reshape(x2.shape[0], -1)
      if impl == "nt":
        return stax_kernel(x1, x2, "ntk")
      return _fnn_ntk.ntk(x1, x2, depth=depth, W_std=W_STD, b_std=B_STD,
                          impl="auto" if impl == "fast" else impl)
    return k

  if len(image_shape) not in (2, 3):
    raise ValueError(
        f"The cnn surrogate needs images of shape (H, W[, C]), got "
        f"{image_shape}.")
  _checks.choice(impl, "impl", IMPLS)
  if strides is None:
    strides = 3 if max(image_shape[:2]) >= LARGE_IMAGE_SIDE else 2
  depth = 2 if depth is None else depth
  if impl != "nt":
    spec = _cnn_ntk.CNNSpec(
        image_shape=tuple(image_shape[:2]) + (
            image_shape[2] if len(image_shape) == 3 else 1,),
        depth=_checks.positive_int(depth, "depth"),
        strides=_checks.positive_int(strides, "strides"),
        W_std=W_STD, b_std=B_STD, num_dense=3)
    fast = _cnn_ntk.ntk_fn(spec, step_size=step_size,
                           impl="auto" if impl == "fast" else impl)

    def k(x1, x2):
      if x1.ndim == 3:
        same = x1 is x2
        x1 = x1[..., None]
        x2 = x1 if same else x2[..., None]
      return fast(x1, x2)
    return k

  _, _, stax_kernel = cnn(num_classes=num_classes, depth=depth,
                          strides=strides)

  def k(x1, x2):
    if x1.ndim == 3:
      x1, x2 = x1[..., None], x2[..., None]
    return stax_kernel(x1, x2, "ntk")
  return k


class GramForm(NamedTuple):
  """A kernel that sees its flattened inputs only through Gram and norms.

  `from_gram(gram(x1, x2), sq_norms(x1), sq_norms(x2))` equals
  `kernel_fn(...)(x1, x2)` for flat `x1 (n1, d)`, `x2 (n2, d)`.
  """
  gram: Callable       # (x1 (n1, d), x2 (n2, d)) -> c0 = x1 x2^T / d
  sq_norms: Callable   # (x (n, d),) -> p = |x|^2 / d, shape (n,)
  from_gram: Callable  # (c0 (n1, n2), p1 (n1,), p2 (n2,)) -> ntk (n1, n2)
  # Optional faster Gram matrix against a fixed set of 8-bit images
  # (`ntga`'s validation set, x1 = u8 / 255): op = prepare(u8, dtype) once
  # (None where it cannot run), then prepared_gram(op, x1, x2) ==
  # gram(x1, x2), differentiable in x2 (the FNN: AMX or VNNI, `_gram`).
  prepare: Optional[Callable] = None
  prepared_gram: Optional[Callable] = None


def gram_form(surrogate: str, *, depth: Optional[int] = None
              ) -> Optional[GramForm]:
  """The kernel as a function of Gram matrix and squared norms, if it is one.

  The FNN's NTK sees its (flattened) inputs only through `c0 = x1 x2^T / d`
  and `p = |x|^2 / d`. `ntga` uses this to compute the Gram matrix against
  the whole validation set in one matmul, and the validation set's norms
  once, instead of per chunk and per step.

  Args:
    surrogate: "fnn" or "cnn".
    depth: as in `kernel_fn`.

  Returns:
    For "fnn", a `GramForm` of the same kernel as `kernel_fn("fnn", ...)`
    with `impl="fast"`; None for "cnn", whose kernel has no such form.

  Example:

    >>> form = kernels.gram_form("fnn")
    >>> k = form.from_gram(form.gram(x1, x2), form.sq_norms(x1),
    ...                    form.sq_norms(x2))
  """
  _checks.choice(surrogate, "surrogate", SURROGATES)
  if surrogate != "fnn":
    return None
  depth = _checks.positive_int(5 if depth is None else depth, "depth")

  def from_gram(c0, p1, p2):
    return _fnn_ntk.ntk_from_gram(c0, p1, p2, depth=depth, W_std=W_STD,
                                  b_std=B_STD)
  return GramForm(_fnn_ntk.gram, _fnn_ntk.sq_norms, from_gram,
                  prepare=_gram.prepare, prepared_gram=_gram.val_gram)
