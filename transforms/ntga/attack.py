"""Neural Tangent Generalization Attack (NTGA; Yuan & Wu, ICML 2021).

Clean-label, black-box, L-inf (or L2) bounded data poisoning. The attacker's
surrogate is the NTK Gaussian process of an infinitely wide network
(`kernels`); its mean prediction on a validation set after training time `t`
on the (poisoned) training block has a closed form (`predict`), so the
attacker runs gradient ascent (`pgd`) on the training inputs to maximise the
validation loss: by default one signed step of the full eps, as the
reference code (measured to transfer best to the paper's CNN victim);
`optimizer="pgd"` or `"momentum"` iterate. Large training sets are attacked
block by block (B-NTGA): each block of `block_size` examples against the
validation set.

Per PGD step and block, `k_train_train` and its decomposition are computed
once, the validation set is streamed through in chunks of `val_chunk_size`
(so the kernel's memory does not grow with it), and the whole step --
kernel, loss, gradient, update, projection -- is one compiled program,
compiled once per block shape. For the FNN, whose kernel is a function of
Gram matrix and norms (`kernels.gram_form`), the Gram matrix against the
whole validation set is one matmul per step, and the validation norms are
computed once per run.

Example:

  >>> config = ntga.NTGAConfig(eps=8 / 255, t=64.)
  >>> x_poison = ntga.poison(x_train, y_train, x_val=x_val, y_val=y_val,
  ...                        key=jax.random.PRNGKey(0), config=config)
  >>> x_poison.dtype, x_poison.shape == x_train.shape
  (dtype('uint8'), True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ntga_tfds.transforms.common import checks as _checks
from ntga_tfds.transforms.common import losses
from ntga_tfds.transforms.common import pgd
from ntga_tfds.transforms.ntga import config as config_lib
from ntga_tfds.transforms.ntga import gp as predict_lib
from ntga_tfds.transforms.ntga import kernels

# Entries (validation x block x spatial positions) per chunk, bounding the
# memory of one chunk's kernel and its backward pass. FNN: 2048 validation
# images per chunk at block 512, measured fastest on CPU (2,000-row chunks
# beat 5,000-row ones by ~5%: the backward's arrays stay in cache).
_CHUNK_BUDGET = {"fnn": 1 << 20, "cnn": 1 << 23}
# On an accelerator (JAX's GPU/TPU backends) small chunks leave it idle
# between sequential kernel launches; memory is plentiful: a CNN chunk's
# pair arrays are ~0.5 GB each at these budgets (a dozen live at once).
_ACCELERATOR_CHUNK_BUDGET = {"fnn": 1 << 24, "cnn": 1 << 27}
# The native CNN kernel (`_cnn_ntk`, C++) materialises no per-position pair
# arrays: a chunk costs only its (chunk, block) kernel. 2,000 validation
# images per chunk measured 3% faster per entry than 1,000 and 10% faster
# than 96 (MNIST, block 512).
_NATIVE_CNN_CHUNK = 2000
# Whether a block smaller than `block_size` (a data set's last) is padded to
# `block_size` with decoupled copies (`predict.pad_train`), so that every
# block runs the same compiled step. None: on accelerators only, where a new
# shape costs a compile of tens of seconds to minutes (an H200 took 32 s for
# the CNN step at block 512 and over 150 s at block 96) against a fraction
# of a second per step; on the CPU compiles are quick and the padding's
# extra work is not.
_PAD_PARTIAL_BLOCKS: Optional[bool] = None
DTYPES = config_lib.DTYPES
NTGAConfig = config_lib.NTGAConfig


class _Programs(NamedTuple):
  step: Callable      # (x, x_clean, y1h, val, step, eps) -> (x, loss)
  loss: Callable      # (x, y1h, val) -> loss
  weights: Callable   # (x_train, y1h) -> alpha
  apply: Callable     # (x_test, x_train, alpha) -> fx_test
  loss_and_grad: Callable  # (x, y1h, val) -> (loss, d loss / d x)
  # (x, x_clean, y1h, val, step, eps, velocity, mu) -> (x, velocity, loss)
  momentum_step: Callable


def _math_key(config: NTGAConfig) -> NTGAConfig:
  """The fields that change compiled programs (not eps, steps or sizes)."""
  return NTGAConfig(surrogate=config.surrogate, loss=config.loss,
                    norm=config.norm, t=config.t, diag_reg=config.diag_reg,
                    depth=config.depth, width=config.width,
                    strides=config.strides, dtype=config.dtype)


@functools.lru_cache(maxsize=16)
def _programs(key: NTGAConfig, num_classes: int,
              image_shape: Tuple[int, ...], padded: bool = False
              ) -> _Programs:
  """The jitted programs. `padded`: rows of `y1h` that are all zero are
  padding, decoupled from the real examples (see `_attack`)."""
  kernel = kernels.kernel_fn(
      key.surrogate, image_shape=image_shape, num_classes=num_classes,
      depth=key.depth, width=key.width, strides=key.strides)
  loss_fn = losses.get(key.loss)
  form = kernels.gram_form(key.surrogate, depth=key.depth)

  def weights(x, y1h):
    return predict_lib.mean_weights(
        kernel(x, x), y1h, t=key.t, diag_reg=key.diag_reg,
        mask=jnp.sum(y1h, axis=-1) if padded else None)

  def chunk_loss(x, alpha, xc, yc, wc):
    return loss_fn(kernel(xc, x) @ alpha, yc, wc)

  def kernel_loss_and_grad(x, alpha, val):
    # Any kernel: each validation chunk's kernel against the block, with its
    # gradient, one chunk at a time.
    chunk_vg = jax.value_and_grad(chunk_loss, argnums=(0, 1))

    def body(carry, chunk):
      gx, galpha, total = carry
      value, (dx, dalpha) = chunk_vg(x, alpha, *chunk)
      return (gx + dx, galpha + dalpha, total + value), None

    init = (jnp.zeros_like(x), jnp.zeros_like(alpha), jnp.zeros((), x.dtype))
    (gx, galpha, total), _ = jax.lax.scan(body, init, (val.x, val.y, val.w))
    return gx, galpha, total

  def gram_loss_and_grad(x, alpha, val):
    # A kernel of Gram matrix and norms: the Gram matrix against the whole
    # validation set is one matmul (its gradient one more), the validation
    # norms come precomputed in `val.p`, and only the elementwise part runs
    # chunk by chunk.
    xv = val.x.reshape(val.w.size, -1)

    def features(x):
      xf = x.reshape(x.shape[0], -1)
      c0 = (form.gram(xv, xf) if val.op is None else
            form.prepared_gram(val.op, xv, xf))
      c0 = c0.reshape(val.w.shape + (x.shape[0],))
      return c0, form.sq_norms(xf)

    (c0, px), features_vjp = jax.vjp(features, x)

    def chunk_loss_from_gram(c, px, alpha, pc, yc, wc):
      return loss_fn(form.from_gram(c, pc, px) @ alpha, yc, wc)

    chunk_vg = jax.value_and_grad(chunk_loss_from_gram, argnums=(0, 1, 2))

    # A Python loop (unrolled; a few chunks at the default budget): read
    # through a scan's dynamic slices and written into its stacked output,
    # the chunks' fused passes ran unvectorised on XLA:CPU.
    gpx, galpha, total = 0.0, 0.0, 0.0
    dc0 = []
    for i in range(val.w.shape[0]):
      value, (dc, dpx, dalpha) = chunk_vg(c0[i], px, alpha, val.p[i],
                                          val.y[i], val.w[i])
      gpx, galpha, total = gpx + dpx, galpha + dalpha, total + value
      dc0.append(dc)
    return features_vjp((jnp.stack(dc0), gpx))[0], galpha, total

  def loss_and_grad(x, y1h, val):
    """Mean validation loss and its gradient in x."""
    alpha, weights_vjp = jax.vjp(lambda x: weights(x, y1h), x)
    chunked = kernel_loss_and_grad if form is None else gram_loss_and_grad
    gx, galpha, total = chunked(x, alpha, val)
    gx = gx + weights_vjp(galpha)[0]
    n_val = jnp.sum(val.w)
    return total / n_val, gx / n_val

  @jax.jit
  def step(x, x_clean, y1h, val, step_size, eps):
    value, grad = loss_and_grad(x, y1h, val)
    x_next = pgd.ascent_step(x, grad, x_clean, step_size=step_size, eps=eps,
                             norm=key.norm)
    return x_next, value

  @jax.jit
  def momentum_step(x, x_clean, y1h, val, step_size, eps, velocity, mu):
    value, grad = loss_and_grad(x, y1h, val)
    x_next, velocity = pgd.momentum_step(
        x, velocity, grad, x_clean, step_size=step_size, eps=eps, mu=mu,
        norm=key.norm)
    return x_next, velocity, value

  @jax.jit
  def loss(x, y1h, val):
    alpha = weights(x, y1h)
    per_chunk = jax.lax.map(lambda c: chunk_loss(x, alpha, *c),
                            (val.x, val.y, val.w))
    return jnp.sum(per_chunk) / jnp.sum(val.w)

  @jax.jit
  def apply(x_test, x_train, alpha):
    return kernel(x_test, x_train) @ alpha

  return _Programs(step, loss, jax.jit(weights), apply,
                   jax.jit(loss_and_grad), momentum_step)


def _precision(config: NTGAConfig):
  """The context the attack's JAX code runs in.

  float64: x64 enabled. float32: matmuls in full float32 precision. On the
  CPU that is what XLA does anyway; on a GPU its default rounds float32
  matmul inputs to TF32 (10-bit mantissa), which would make the Gram
  matrices, and so the poisoned bytes, differ from a CPU run's.
  """
  if config.dtype == "float64":
    from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
    return enable_x64()
  return jax.default_matmul_precision("float32")


def _chunk_size(config: NTGAConfig, n_train: int, image_shape) -> int:
  if config.val_chunk_size is not None:
    return config.val_chunk_size
  if (config.surrogate == "cnn" and config.dtype == "float32"
      and kernels.cnn_native_available()):
    return _NATIVE_CNN_CHUNK
  positions = 1
  if config.surrogate == "cnn":
    strides = config.strides or (
        3 if max(image_shape[:2]) >= kernels.LARGE_IMAGE_SIDE else 2)
    positions = math.ceil(image_shape[0] / strides) * math.ceil(
        image_shape[1] / strides)
  budget = (_CHUNK_BUDGET if jax.default_backend() == "cpu"
            else _ACCELERATOR_CHUNK_BUDGET)
  return max(1, budget[config.surrogate] // (n_train * positions))


class _Validation(NamedTuple):
  x: jnp.ndarray   # (chunks, m, *image_shape)
  y: jnp.ndarray   # (chunks, m)
  w: jnp.ndarray   # (chunks, m): 1 for real examples, 0 for padding
  p: Optional[jnp.ndarray] = None  # (chunks, m): |x|^2 / d, Gram-form kernels
  # The flat validation set as the Gram form's faster operand (AMX, see
  # `_gram`), or None: the plain matmul.
  op: Optional[object] = None


@functools.partial(jax.jit, static_argnums=1)
def _flat_sq_norms(x, sq_norms):
  """`sq_norms` per image of `x (chunks, m, *image_shape)`: `(chunks, m)`."""
  return sq_norms(x.reshape(x.shape[:2] + (-1,)))


def _chunk_validation(x_val, y_val, chunk: int, *, dtype=np.float32,
                      form: Optional[kernels.GramForm] = None) -> _Validation:
  """Splits into equal chunks of at most `chunk`, padding by wrapping around
  with weight 0; chunks are balanced so that padding is < `num_chunks`.
  With a Gram-form kernel, also precomputes its per-example norms."""
  n = x_val.shape[0]
  num_chunks = -(-n // min(chunk, n))
  chunk = -(-n // num_chunks)
  idx = np.arange(num_chunks * chunk) % n
  w = (np.arange(num_chunks * chunk) < n).astype(np.float32)
  shape = (num_chunks, chunk)
  # Gather (only when padding is needed) and snap the images as given:
  # uint8 gathers move a quarter of the bytes of float32 ones.
  x_sel = x_val if idx.shape[0] == n else x_val[idx]
  x_snap, u8 = pgd.snap(x_sel, dtype)
  xv = jnp.asarray(x_snap.reshape(shape + x_val.shape[1:]))
  p = op = None
  if form is not None:
    p = _flat_sq_norms(xv, form.sq_norms)
    if form.prepare is not None:
      op = form.prepare(u8.reshape(idx.shape[0], -1), dtype)
  return _Validation(xv, jnp.asarray(y_val[idx].reshape(shape)),
                     jnp.asarray(w.reshape(shape)), p, op)


class _Checked(NamedTuple):
  # Images as given (uint8, or float in [0, 1]), checked but not converted:
  # `pgd.snap` converts them (per block) onto the 8-bit grid.
  x: np.ndarray
  y: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  num_classes: int


def _check_inputs(x_train, y_train, x_val, y_val, num_classes,
                  config) -> _Checked:
  if not isinstance(config, NTGAConfig):
    raise ValueError(
        f"config must be an NTGAConfig, got {type(config).__name__}.")
  x = _checks.checked_images("x_train", x_train)
  xv = _checks.checked_images("x_val", x_val)
  _checks.same_trailing_shape("x_val", xv, "x_train", x)
  num_classes = _checks.num_classes(num_classes, y_train, y_val)
  y = _checks.labels("y_train", y_train, num_examples=x.shape[0],
                     images_name="x_train", num_classes=num_classes)
  yv = _checks.labels("y_val", y_val, num_examples=xv.shape[0],
                      images_name="x_val", num_classes=num_classes)
  return _Checked(x, y, xv, yv, num_classes)


def _validation_chunks(c: "_Checked", config: NTGAConfig,
                       n_train: int) -> _Validation:
  """The checked validation set, on the 8-bit grid, in equal chunks."""
  chunk = _chunk_size(config, n_train, c.x.shape[1:])
  return _chunk_validation(
      c.x_val, c.y_val, chunk, dtype=config.dtype,
      form=kernels.gram_form(config.surrogate, depth=config.depth))


def _padded_size(config: NTGAConfig, n: int) -> int:
  """The block size a block of `n` examples is run at (see
  `_PAD_PARTIAL_BLOCKS`)."""
  pad = _PAD_PARTIAL_BLOCKS
  if pad is None:
    pad = jax.default_backend() != "cpu"
  return max(n, config.block_size) if pad else n


def _one_blas_thread():
  """A context in which the BLAS libraries loaded in this process run on one
  thread (threadpoolctl; a no-op where it is not installed).

  On the CPU, JAX runs LAPACK (the 512 x 512 eigendecomposition of each
  step's `k_train_train`) through scipy's OpenBLAS. After each call, its
  idle threads spin, and took a core from the XLA matmuls and native
  kernels that run next: the FNN's CIFAR-10 step took 0.33-0.35 s, 0.29-0.30
  s with one BLAS thread (2-core Zen 4).

  scipy's LAPACK is loaded here, before the limit is set: threadpoolctl
  limits only the libraries loaded when it is entered, and JAX loads LAPACK
  lazily at its first eigendecomposition. Without this, the first block a
  process computed ran its eigendecompositions on all BLAS threads and the
  others on one, and the multi-threaded eigh differs in the last bits: a
  build resumed at block b gave other bytes for block b than an
  uninterrupted build.
  """
  try:
    import threadpoolctl  # pylint: disable=g-import-not-at-top
  except ImportError:
    return contextlib.nullcontext()
  try:
    import scipy.linalg.cython_lapack  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pass
  return threadpoolctl.threadpool_limits(1, user_api="blas")


def implementation() -> dict:
  """Which code computes the attack in this process.

  The native kernels (`_native`: C++ FNN and CNN kernels, the AMX or VNNI
  Gram matrix) and the pure-JAX kernels compute the same values up to float32
  rounding, so which one ran, and the switches that choose, change output
  bytes. Generation records this in its checkpoint fingerprint so that a
  resumed build never mixes blocks from different implementations.

  Returns:
    A JSON-able dict: the JAX backend, whether the native FNN and CNN
    kernels run, the FNN Gram kernel ("amx", "vnni" or None), a hash of the
    native sources, and every `NTGA_TFDS_*` switch that is set.
  """
  from ntga_tfds.transforms.ntga import _cnn_ntk  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms.ntga import _fnn_ntk  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms.ntga import _gram  # pylint: disable=g-import-not-at-top
  from ntga_tfds.transforms.ntga import _native  # pylint: disable=g-import-not-at-top
  cpu = jax.default_backend() == "cpu"
  return {
      "backend": jax.default_backend(),
      "native_fnn": bool(cpu and _fnn_ntk.native_available()),
      "native_cnn": bool(cpu and _cnn_ntk.native_available()),
      "gram": _gram.backend() if cpu else None,
      "native_sources_sha256": _native.sources_sha256(),
      "switches": {k: v for k, v in sorted(os.environ.items())
                   if k.startswith("NTGA_TFDS_") and k not in _NO_BYTES},
  }


# Environment variables that do not change what the attack computes.
_NO_BYTES = ("NTGA_TFDS_PROGRESS", "NTGA_TFDS_CACHE_DIR")


def _attack(x_in, y, val: _Validation, *, key, config: NTGAConfig,
            num_classes: int, on_step) -> np.ndarray:
  x_clean, x_u8 = pgd.snap(x_in, config.dtype)
  n = x_in.shape[0]
  size = _padded_size(config, n)
  programs = _programs(_math_key(config), num_classes, x_in.shape[1:],
                       size > n)
  y1h = jax.nn.one_hot(y, num_classes, dtype=config.dtype)

  momentum = config.optimizer == "momentum"
  if size == n:
    def step_fn(x, x0, step_size, eps, *velocity_mu):
      if momentum:
        return programs.momentum_step(x, x0, y1h, val, step_size, eps,
                                      *velocity_mu)
      return programs.step(x, x0, y1h, val, step_size, eps)
  else:
    # Padding: copies of real examples (finite kernel entries), with zero
    # targets, which mark them for `predict.pad_train`. Their gradient and
    # update are dropped; the random start and the real rows are unchanged.
    fill = jnp.asarray(np.arange(n, size) % n)
    y1h = jnp.concatenate(
        [y1h, jnp.zeros((size - n, num_classes), y1h.dtype)])
    x0_pad = jnp.asarray(x_clean)[fill]

    def step_fn(x, x0, step_size, eps, *velocity_mu):
      x_pad, x0_full = jnp.concatenate([x, x[fill]]), jnp.concatenate(
          [x0, x0_pad])
      if momentum:
        velocity, mu = velocity_mu
        x_next, velocity, value = programs.momentum_step(
            x_pad, x0_full, y1h, val, step_size, eps,
            jnp.concatenate([velocity, velocity[fill]]), mu)
        return x_next[:n], velocity[:n], value
      x_next, value = programs.step(x_pad, x0_full, y1h, val, step_size, eps)
      return x_next[:n], value

  with _one_blas_thread():
    x_adv = pgd.ascend(step_fn, x_clean, key=key, eps=config.eps,
                       step_size=config.step_size, nb_iter=config.nb_iter,
                       norm=config.norm, optimizer=config.optimizer,
                       rand_init=config.rand_init,
                       sign_finish=config.sign_finish,
                       momentum_decay=config.momentum_decay, on_step=on_step)
  return pgd.quantize(x_adv, x_u8, eps=config.eps, norm=config.norm)


def _check_key(key):
  try:
    jax.random.fold_in(key, 0)
  except Exception as e:  # noqa: BLE001 - re-raised with the argument name.
    raise ValueError(
        f"key must be a JAX PRNG key (jax.random.PRNGKey(seed)), got "
        f"{key!r}.") from e


def poison_block(x_block, y_block, *, x_val, y_val, key,
                 config: NTGAConfig, num_classes: Optional[int] = None,
                 on_step: Optional[Callable[[int, float], None]] = None
                 ) -> np.ndarray:
  """Poisons one block against a validation set (one B-NTGA block).

  Args:
    x_block: `(b, *image_shape)` uint8, or float in [0, 1].
    y_block: `(b,)` integer labels.
    x_val: `(m, *image_shape)` the attacker's validation images.
    y_val: `(m,)` their labels.
    key: PRNG key (used by the random start).
    config: the attack's settings; `config.block_size` is not used here.
    num_classes: default 1 + the largest label.
    on_step: called as `on_step(step, surrogate_loss)` after each step.

  Returns:
    `(b, *image_shape)` uint8 poisoned images, each pixel within `eps` of
    the clean one (see `pgd.quantize`).
  """
  c = _check_inputs(x_block, y_block, x_val, y_val, num_classes, config)
  _check_key(key)
  with _precision(config):
    val = _validation_chunks(c, config,
                             _padded_size(config, c.x.shape[0]))
    return _attack(c.x, c.y, val, key=key, config=config,
                   num_classes=c.num_classes, on_step=on_step)


def poison(x_train, y_train, *, x_val, y_val, key, config: NTGAConfig,
           num_classes: Optional[int] = None,
           on_block: Optional[Callable[[int, int], None]] = None,
           on_step: Optional[Callable[[int, float], None]] = None
           ) -> np.ndarray:
  """Poisons a whole training set, block by block (B-NTGA).

  Blocks are consecutive runs of `config.block_size` examples; the last,
  partial block is poisoned too. Block `b` uses the key
  `jax.random.fold_in(key, b)`, so any block can be recomputed alone with
  `poison_block`.

  Args:
    x_train: `(n, *image_shape)` uint8, or float in [0, 1].
    y_train: `(n,)` integer labels (returned unchanged by the caller's data).
    x_val, y_val: the attacker's validation set, shared by every block.
    key: PRNG key.
    config: the attack's settings.
    num_classes: default 1 + the largest label.
    on_block: called as `on_block(block_index, num_blocks)` before a block.
    on_step: called as `on_step(step, surrogate_loss)` after each step.

  Returns:
    `(n, *image_shape)` uint8 poisoned images, labels unchanged.
  """
  c = _check_inputs(x_train, y_train, x_val, y_val, num_classes, config)
  _check_key(key)
  n, bs = c.x.shape[0], config.block_size
  out = np.empty(c.x.shape, np.uint8)
  num_blocks = -(-n // bs)
  with _precision(config):
    val = _validation_chunks(c, config, _padded_size(config, min(n, bs)))
    for b in range(num_blocks):
      if on_block is not None:
        on_block(b, num_blocks)
      sl = slice(b * bs, min(n, (b + 1) * bs))
      out[sl] = _attack(c.x[sl], c.y[sl], val,
                        key=jax.random.fold_in(key, b), config=config,
                        num_classes=c.num_classes, on_step=on_step)
  return out


def surrogate_loss(x_block, y_block, *, x_val, y_val, config: NTGAConfig,
                   num_classes: Optional[int] = None) -> float:
  """The validation loss the attack maximises, for training inputs `x_block`."""
  c = _check_inputs(x_block, y_block, x_val, y_val, num_classes, config)
  programs = _programs(_math_key(config), c.num_classes, c.x.shape[1:])
  with _precision(config):
    val = _validation_chunks(c, config, c.x.shape[0])
    y1h = jax.nn.one_hot(c.y, c.num_classes, dtype=config.dtype)
    x = jnp.asarray(_checks.to_unit(c.x), config.dtype)
    return float(programs.loss(x, y1h, val))


def predict(x_train, y_train, x_test, *, config: NTGAConfig,
            num_classes: Optional[int] = None,
            chunk_size: Optional[int] = None) -> np.ndarray:
  """The surrogate's mean prediction on `x_test` after training on x_train.

  Args:
    x_train: `(n, *image_shape)` training images (uint8 or float in [0, 1]).
    y_train: `(n,)` labels.
    x_test: `(m, *image_shape)` images to predict.
    config: supplies the surrogate, `t` and `diag_reg`.
    num_classes: default 1 + the largest label.
    chunk_size: test images per kernel evaluation.

  Returns:
    `(m, num_classes)` GP mean outputs in `config.dtype`; argmax gives the
    class.
  """
  x_test_f = _checks.images("x_test", x_test)
  c = _check_inputs(x_train, y_train, x_test_f[:1], np.zeros(1, np.int32),
                    num_classes, config)
  programs = _programs(_math_key(config), c.num_classes, c.x.shape[1:])
  chunk = chunk_size or _chunk_size(config, c.x.shape[0], c.x.shape[1:])
  chunk = min(chunk, x_test_f.shape[0])
  out = []
  with _precision(config):
    y1h = jax.nn.one_hot(c.y, c.num_classes, dtype=config.dtype)
    x_tr = jnp.asarray(_checks.to_unit(c.x), config.dtype)
    alpha = programs.weights(x_tr, y1h)
    for start in range(0, x_test_f.shape[0], chunk):
      xc = x_test_f[start:start + chunk]
      pad = chunk - xc.shape[0]
      if pad:  # one compiled shape: pad the last chunk, drop its outputs
        xc = np.concatenate([xc, x_test_f[:pad]])
      fx = programs.apply(jnp.asarray(xc, config.dtype), x_tr, alpha)
      out.append(np.asarray(fx)[:chunk - pad])
  return np.concatenate(out)


def accuracy(x_train, y_train, x_test, y_test, *, config: NTGAConfig,
             num_classes: Optional[int] = None) -> float:
  """Surrogate test accuracy after training on (x_train, y_train)."""
  fx = predict(x_train, y_train, x_test, config=config,
               num_classes=num_classes)
  return float(np.mean(np.argmax(fx, -1) == np.asarray(y_test)))
