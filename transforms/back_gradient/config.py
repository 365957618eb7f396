"""`BackGradientConfig`: everything that defines a back-gradient poisoning run.

Kept apart from the attack's maths (`_models`, `_inner`, `_attack`), and free
of JAX, so that dataset configs can carry it without importing JAX.

Defaults follow the authors' MATLAB code (Munoz-Gonzalez et al., AISec 2017,
`testAttackMLPmnist.m`, `reverseLR2.m`) where it has one: full-batch
gradient descent without momentum or weight decay (`trainLR2.m`,
`trainMLP.m`), 200 normalised-gradient steps of 0.2 on each poison point
(`testAttackMLPmnist.m`), learning rate 0.1 for the inner training.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Tuple

from ntga_tfds.transforms.common import checks as _checks

MODELS = ("logreg", "mlp", "cnn")
ATTACKS = ("generic", "specific")
LABEL_POLICIES = ("flip", "worst")
METHODS = ("checkpoint", "reverse")
DTYPES = ("float32", "float64")


def _target_map(value, attack: str) -> Tuple[Tuple[int, int], ...]:
  """`value` as a tuple of (source, target) int pairs, checked."""
  try:
    pairs = tuple(tuple(p) for p in value)
  except TypeError:
    raise ValueError(
        f"target_map must be a sequence of (source class, target class) "
        f"pairs, got {value!r}.") from None
  if attack == "generic":
    if pairs:
      raise ValueError(
          f"target_map is only used by attack='specific'; got {value!r} "
          f"with attack='generic'.")
    return ()
  if not pairs:
    raise ValueError(
        "attack='specific' needs a non-empty target_map of (source class, "
        "target class) pairs, e.g. ((1, 7),).")
  out = []
  for pair in pairs:
    if len(pair) != 2 or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in pair):
      raise ValueError(
          f"target_map entries must be pairs of class ids >= 0, got "
          f"{pair!r}.")
    if pair[0] == pair[1]:
      raise ValueError(
          f"target_map maps class {pair[0]} to itself; a target must be "
          f"another class.")
    out.append((int(pair[0]), int(pair[1])))
  sources = [s for s, _ in out]
  if len(set(sources)) != len(sources):
    raise ValueError(
        f"target_map names a source class twice: {value!r}; each source "
        f"class has one target.")
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class BackGradientConfig:
  """Everything that defines a back-gradient poisoning run, except data/key.

  Attributes:
    model: the inner (victim) learner: "logreg" (multinomial logistic
      regression on the flattened pixels, zero initialisation as the
      authors' `trainLR2.m`), "mlp" (one hidden layer of 10 tanh units, as
      the paper's MLP) or "cnn" (conv 3x3 x 8, tanh, 2x2 average pool,
      dense); see `_models`.
    attack: "generic" (maximise the validation cross-entropy: an
      error-generic attack) or "specific" (the paper's error-specific
      attack: maximise minus the validation cross-entropy computed with the
      labels of each source class of `target_map` replaced by its target,
      the other labels kept, i.e. make the mapped classes be predicted as
      their targets while the rest stay correct).
    target_map: (source class, target class) pairs for attack="specific"
      (empty for "generic").
    inner_steps: T, full-batch training steps of the inner problem.
    inner_lr: learning rate of those steps.
    momentum: heavy-ball momentum mu in [0, 1): `v <- mu v - lr g(w)`,
      `w <- w + v` (0: plain gradient descent, the authors' code).
    weight_decay: L2 penalty `weight_decay / 2 * |w|^2` in the inner loss.
    outer_steps: normalised-gradient ascent steps on each poison point.
    outer_lr: their length in pixel units, `x <- clip(x + outer_lr * g /
      |g|, 0, 1)` (the authors' 0.2).
    label_policy: the poison's label; each poison starts from a keyed random
      validation point (for "specific", one of a source class). "flip":
      binary: the other class; multiclass generic: a keyed uniformly random
      other class; specific: the target of the point's class in
      `target_map`. "worst": the wrong class whose poison (at its initial
      pixels) gives the highest outer objective after the inner training
      (num_classes - 1 forward trainings per point).
    method: how the hypergradient goes back through the T steps.
      "checkpoint" (default): exact reverse-mode autodiff of the training
      run, with `jax.checkpoint` around segments of `checkpoint_every`
      steps; stores ceil(T / k) + k trajectory states. "reverse": the
      paper's back-gradient (Maclaurin et al. 2015): the trajectory is
      reversed step by step from the final state in floating point (no
      states stored; approximate, see `_inner`).
    checkpoint_every: k, steps per checkpointed segment (the memory knob);
      None: ceil(sqrt(T)), which minimises ceil(T / k) + k.
    dtype: "float32" (default) or "float64" (runs under
      `jax.experimental.enable_x64`; for checking gradients).
  """
  model: str = "logreg"
  attack: str = "generic"
  target_map: Tuple[Tuple[int, int], ...] = ()
  inner_steps: int = 200
  inner_lr: float = 0.1
  momentum: float = 0.0
  weight_decay: float = 0.0
  outer_steps: int = 200
  outer_lr: float = 0.2
  label_policy: str = "flip"
  method: str = "checkpoint"
  checkpoint_every: Optional[int] = None
  dtype: str = "float32"

  def __post_init__(self):
    set_ = functools.partial(object.__setattr__, self)
    _checks.choice(self.model, "model", MODELS)
    _checks.choice(self.attack, "attack", ATTACKS)
    set_("target_map", _target_map(self.target_map, self.attack))
    _checks.positive_int(self.inner_steps, "inner_steps")
    set_("inner_lr", _checks.positive_number(self.inner_lr, "inner_lr"))
    momentum = _checks.number(self.momentum, "momentum")
    if not 0.0 <= momentum < 1.0:
      raise ValueError(
          f"momentum must be in [0, 1) (0: plain gradient descent), got "
          f"{self.momentum!r}.")
    set_("momentum", momentum)
    set_("weight_decay",
         _checks.nonnegative_number(self.weight_decay, "weight_decay"))
    _checks.positive_int(self.outer_steps, "outer_steps")
    set_("outer_lr", _checks.positive_number(self.outer_lr, "outer_lr"))
    _checks.choice(self.label_policy, "label_policy", LABEL_POLICIES)
    _checks.choice(self.method, "method", METHODS)
    if self.checkpoint_every is not None:
      _checks.positive_int(self.checkpoint_every, "checkpoint_every")
    _checks.choice(self.dtype, "dtype", DTYPES)

  @property
  def segment_length(self) -> int:
    """k: steps per checkpointed segment (`checkpoint_every` or its
    default ceil(sqrt(inner_steps)), at most inner_steps)."""
    if self.checkpoint_every is not None:
      return min(self.checkpoint_every, self.inner_steps)
    return math.isqrt(self.inner_steps - 1) + 1

  def replace(self, **changes) -> "BackGradientConfig":
    return dataclasses.replace(self, **changes)


def stored_states(config: BackGradientConfig) -> int:
  """Trajectory states `(w_t, v_t)` held at the peak of the backward pass.

  "checkpoint": ceil(T / k) segment inputs saved by the forward pass, plus
  the k states of one segment re-materialised in its backward pass;
  O(sqrt(T)) for the default k = ceil(sqrt(T)). "reverse": 1 (the current
  state, recovered in place). Plain unrolled autodiff (for comparison:
  `unrolled_stored_states`) stores T. The working set of one step (its
  adjoints, activations) is not counted.
  """
  _checks.instance(config, BackGradientConfig)
  if config.method == "reverse":
    return 1
  t, k = config.inner_steps, config.segment_length
  return -(-t // k) + k


def unrolled_stored_states(config: BackGradientConfig) -> int:
  """Trajectory states plain unrolled autodiff stores: one per step, T."""
  return config.inner_steps
