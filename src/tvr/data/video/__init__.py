"""Video decoding backends, one module each, registered by name (see :mod:`tvr.data.video.base`)."""

from tvr.data.video.base import (
    VIDEO_BACKENDS,
    DecodedClip,
    VideoBackend,
    VideoReadError,
    check_readable_file,
    create_backend,
    deadline,
    gather_in_order,
    sample_indices,
)

__all__ = [
    "VIDEO_BACKENDS",
    "DecodedClip",
    "VideoBackend",
    "VideoReadError",
    "check_readable_file",
    "create_backend",
    "deadline",
    "gather_in_order",
    "sample_indices",
]
