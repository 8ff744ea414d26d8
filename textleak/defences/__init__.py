"""Defences against gradient leakage, one module each, registered by name in `DEFENCES`.

    parse_defence("noise:1e-3")                  -> a Defence (one-line error on a bad spec)
    defence.apply(gradients, generator)          -> defended copy of a finished gradient
    shared_gradients(defence, model, loss_of, n, generator)   what a victim shares for a batch
    apply_to_model_grads(model, defence, generator)           in place on .grad (training)
"""

from . import batch, dpsgd, fedavg, noise, none, prune, quantise  # noqa: F401  (register)
from .base import DEFENCES, BatchGradients, Defence, Param, parse_defence, parse_defences
from .sharing import batch_gradients, shared_gradients
from .training import apply_to_model_grads

__all__ = ["DEFENCES", "BatchGradients", "Defence", "Param", "apply_to_model_grads", "batch_gradients",
           "parse_defence", "parse_defences", "shared_gradients"]
