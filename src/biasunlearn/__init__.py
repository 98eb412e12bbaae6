"""biasunlearn: remove social bias from causal language models by unlearning."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["__version__", "evaluate", "train"]


def evaluate(*args, **kwargs):
    """Evaluate a model on bias benchmarks; see :func:`biasunlearn.evaluation.evaluate`."""
    from biasunlearn.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def train(*args, **kwargs):
    """Train a debiasing adapter; see :func:`biasunlearn.train.train` (takes a ``TrainConfig``)."""
    from biasunlearn.train import TrainConfig
    from biasunlearn.train import train as _train

    if not args and "cfg" not in kwargs:
        return _train(TrainConfig(**kwargs))
    return _train(*args, **kwargs)
