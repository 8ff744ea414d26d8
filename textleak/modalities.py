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


MODALITIES: Registry[Modality] = Registry("modality")
_PLUGINS = ("textleak.text.modality", "textleak.image.modality")


def modality(name: str) -> Modality:
    for plugin in _PLUGINS:
        try:
            importlib.import_module(plugin)
        except ModuleNotFoundError as exc:
            # a missing plugin (or its parent package) is skipped; one that fails inside is a bug
            if exc.name is None or not (plugin == exc.name or plugin.startswith(exc.name + ".")):
                raise
    return MODALITIES.get(name)
