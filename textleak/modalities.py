"""Each modality plugs in how to load the attacker's model, check it, and score a prediction.

The core and the attacks stay modality-free; `recover` looks the modality up here from the
gradient file's metadata.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .registry import Registry
from .threat import Reference


@dataclass(frozen=True)
class Modality:
    name: str
    #: (model argument or None, gradient metadata) -> target; None means "the model the file names"
    load_target: Callable[[Any, Mapping[str, Any]], Any]
    #: raise ModelMismatchError unless target produced these gradients
    check: Callable[[Any, Mapping[str, Any], Mapping[str, Any]], None]
    #: (prediction, reference, target) -> metrics dict
    score: Callable[[Mapping[str, Any], Reference, Any], dict]
    #: reads a --reference file that is not a textleak reference JSON (e.g. plain sentences)
    read_reference: Callable[[str], Reference]
    #: metadata -> {parameter name: shape} of the model the file names, built on the meta device
    #: (no memory), or None when that model is not available here
    declared_shapes: Callable[[Mapping[str, Any]], Mapping[str, tuple] | None] = lambda metadata: None


MODALITIES: Registry[Modality] = Registry("modality")
_PLUGINS = ("textleak.text.modality", "textleak.image.modality")


def modality(name: str) -> Modality:
    for plugin in _PLUGINS:
        try:
            importlib.import_module(plugin)
        except ModuleNotFoundError as exc:
            if exc.name not in (plugin, plugin.rpartition(".")[0]):  # one that exists but fails is a bug
                raise
    return MODALITIES.get(name)
