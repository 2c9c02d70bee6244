"""Head registry: ``create_head(name, **cfg)`` and ``list_heads()``."""

from __future__ import annotations

from tvr.registry import Registry

HEADS: Registry = Registry("head", package="tvr.models.heads")


def register_head(name: str):
    def decorator(cls):
        cls.name = name
        return HEADS.register(name)(cls)

    return decorator
