"""SGD (momentum, Nesterov), Adam and AdamW from optax, with optax learning-rate schedules.

Every optimizer has the schedule fields of `framework.schedule_fields()`: `learning_rate`,
`schedule` (constant | cosine | warmup_cosine | piecewise), `warmup_steps`,
`end_learning_rate`, `boundaries`, `scales`. Adam's and AdamW's other fields default to optax's
values: `b1=0.9`, `b2=0.999`, `eps=1e-8` (PyTorch's too), AdamW `weight_decay=1e-4` (PyTorch's
AdamW: 1e-2). Keras uses `eps=1e-7`: the experiments that reproduce the Keras tutorial set it.
"""

from __future__ import annotations

import ml_collections
import optax

import framework


def _fields(**extra: tuple[object, str]) -> ml_collections.ConfigDict:
    return framework.fields(framework.schedule_fields(), **extra)


def _sgd_config() -> ml_collections.ConfigDict:
    config = _fields(momentum=(0.9, "Momentum; 0: plain SGD."),
                     nesterov=(False, "Nesterov momentum instead of the classical one."))
    config.learning_rate = 0.1
    return config


_ADAM = {"b1": (0.9, "Decay rate of the first-moment (mean) estimate."),
         "b2": (0.999, "Decay rate of the second-moment (uncentred variance) estimate.")}
_EPS = ("Added to the denominator for numerical stability; 1e-8 as in optax and PyTorch "
        "(Keras: 1e-7).")


def _sgd(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    return optax.sgd(framework.make_schedule(config, num_steps),
                     momentum=config.momentum or None, nesterov=config.nesterov)


def _adam(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    return optax.adam(framework.make_schedule(config, num_steps), b1=config.b1, b2=config.b2,
                      eps=config.eps)


def _adamw(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    return optax.adamw(framework.make_schedule(config, num_steps), b1=config.b1, b2=config.b2,
                       eps=config.eps, weight_decay=config.weight_decay)


sgd = framework.Plugin(
    build=_sgd, default_config=_sgd_config,
    validate=framework.validate_schedule, api_version=1,
    description="Stochastic gradient descent with optional (Nesterov) momentum.")

adam = framework.Plugin(
    build=_adam, default_config=lambda: _fields(**_ADAM, eps=(1e-8, _EPS)),
    validate=framework.validate_schedule, api_version=1,
    description="Adam (optax.adam; optax's defaults: eps=1e-8, Keras uses 1e-7).")

adamw = framework.Plugin(
    build=_adamw,
    default_config=lambda: _fields(
        **_ADAM, eps=(1e-8, _EPS),
        weight_decay=(1e-4, "Decoupled weight decay, scaled by the learning rate (optax.adamw).")),
    validate=framework.validate_schedule, api_version=1,
    description="Adam with decoupled weight decay (optax.adamw; optax's defaults: eps=1e-8, "
                "weight_decay=1e-4).")
