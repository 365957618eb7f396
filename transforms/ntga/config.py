"""`NTGAConfig`: everything that defines an NTGA run, except data and key.

Kept apart from the attack's maths (`attack`), and free of JAX, so that
dataset configs can carry it without importing JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

from ntga_tfds.transforms.common import checks as _checks

SURROGATES = ("fnn", "cnn")
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class NTGAConfig:
  """Everything that defines an NTGA run, except the data and the key.

  Attributes:
    eps: perturbation budget in pixel units, in (0, 1); `k / 255` allows
      exactly k levels per pixel (L-inf).
    t: surrogate training time, > 0; `math.inf` for the converged GP.
    surrogate: "fnn" or "cnn" (see `kernels`).
    loss: validation loss to maximise, "cross_entropy" or "mse".
    norm: "linf" or "l2".
    optimizer: "as_published" (default: one signed step of the full eps
      from the clean block, what the reference code computes; measured the
      strongest against the paper's CNN victim, docs/benchmarks.md), "pgd"
      (true PGD: stronger against MLP victims) or "momentum" (PGD along an
      accumulated gradient, MI-FGSM: Dong et al., CVPR 2018; see
      `common.pgd`). `nb_iter`, `eps_iter`, `rand_init`, `sign_finish`
      and `momentum_decay` apply to the iterative ones.
    nb_iter: PGD iterations.
    eps_iter: PGD step size; default `2.5 * eps / nb_iter` ("pgd"),
      `eps / nb_iter` ("momentum", as MI-FGSM).
    momentum_decay: "momentum" only: the decay mu of the accumulated
      gradient (MI-FGSM's 1.0).
    rand_init: start PGD from a random point of the eps ball.
    sign_finish: after the last PGD step, move every perturbed pixel to
      +-eps along its sign (L-inf, "pgd" only; see `common.pgd`).
    block_size: examples attacked together (B-NTGA).
    diag_reg: diagonal regulariser of `k_train_train`, relative to its mean
      trace (as `nt.predict.gradient_descent_mse(diag_reg=...)`).
    val_chunk_size: validation examples per chunk; default from a memory
      budget.
    depth, width, strides: surrogate overrides (default: the paper's).
    dtype: "float32" (default) or "float64", the attack's arithmetic;
      float64 is for checking what float32 changes (it runs under
      `jax.experimental.enable_x64`, at a fraction of the speed).
  """
  eps: float = 8 / 255
  t: float = 64.0
  surrogate: str = "fnn"
  loss: str = "cross_entropy"
  norm: str = "linf"
  optimizer: str = "as_published"
  nb_iter: int = 10
  eps_iter: Optional[float] = None
  momentum_decay: float = 1.0
  rand_init: bool = False
  sign_finish: bool = False
  block_size: int = 512
  diag_reg: float = 1e-4
  val_chunk_size: Optional[int] = None
  depth: Optional[int] = None
  width: Optional[int] = None
  strides: Optional[int] = None
  dtype: str = "float32"

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    set_("eps", _checks.eps(self.eps))
    set_("t", _checks.time(self.t))
    _checks.choice(self.surrogate, "surrogate", SURROGATES)
    _checks.choice(self.loss, "loss", _checks.LOSSES)
    _checks.choice(self.norm, "norm", _checks.NORMS)
    _checks.choice(self.optimizer, "optimizer", _checks.OPTIMIZERS)
    _checks.choice(self.dtype, "dtype", DTYPES)
    _checks.positive_int(self.nb_iter, "nb_iter")
    _checks.positive_int(self.block_size, "block_size")
    _checks.flag(self.rand_init, "rand_init")
    _checks.sign_finish(self.sign_finish, norm=self.norm,
                        optimizer=self.optimizer)
    if self.eps_iter is not None and not (
        isinstance(self.eps_iter, (int, float)) and self.eps_iter > 0):
      raise ValueError(f"eps_iter must be > 0, got {self.eps_iter!r}.")
    if (isinstance(self.momentum_decay, bool)
        or not isinstance(self.momentum_decay, (int, float))
        or not 0 <= self.momentum_decay < math.inf):
      raise ValueError(f"momentum_decay must be a number >= 0, got "
                       f"{self.momentum_decay!r}.")
    if not (isinstance(self.diag_reg, (int, float)) and self.diag_reg >= 0):
      raise ValueError(f"diag_reg must be >= 0, got {self.diag_reg!r}.")
    if self.val_chunk_size is not None:
      _checks.positive_int(self.val_chunk_size, "val_chunk_size")
    for name in ("depth", "width", "strides"):
      if getattr(self, name) is not None:
        _checks.positive_int(getattr(self, name), name)

  @property
  def step_size(self) -> float:
    if self.eps_iter is not None:
      return float(self.eps_iter)
    if self.optimizer == "momentum":
      return self.eps / self.nb_iter
    return 2.5 * self.eps / self.nb_iter

  def replace(self, **changes) -> "NTGAConfig":
    return dataclasses.replace(self, **changes)
