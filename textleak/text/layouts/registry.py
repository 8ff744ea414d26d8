"""The layouts registered by `config.model_type` (one class may serve several types)."""

from __future__ import annotations

from typing import Callable

from ...registry import Registry

#: model_type -> Layout subclass
LAYOUTS: Registry[type] = Registry("model layout")


def register(*model_types: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        for t in model_types:
            LAYOUTS.register(t)(cls)
        cls.model_types = tuple(model_types)
        return cls

    return add
