"""Towers: the paths from frames and token ids to the features heads read (see :mod:`tvr.models.towers.base`).

>>> from tvr.models.towers import create_tower, list_towers
"""

from __future__ import annotations

from tvr.models.towers.base import (
    TOWERS,
    TextTower,
    Tower,
    TowerMismatchError,
    VideoTower,
    VisionGeometry,
    check_state_dict_towers,
    create_tower,
)


def list_towers() -> list[str]:
    return TOWERS.names()


__all__ = [
    "TOWERS",
    "TextTower",
    "Tower",
    "TowerMismatchError",
    "VideoTower",
    "VisionGeometry",
    "check_state_dict_towers",
    "create_tower",
    "list_towers",
]
