"""Uploaded images, kept in memory under their content id and dropped least-recently-used first."""

from __future__ import annotations

import threading
from collections import OrderedDict

from tsfm_backend.server.errors import NotFound, TooLarge
from tsfm_backend.server.wire import image_digest
from tsfm_backend.volume import Volume


class ImageStore:
    """Content-addressed volumes: the id is ``wire.image_digest`` of the geometry and voxels.

    Args:
        max_bytes: total voxel bytes kept; adding an image evicts the least recently used ones.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._images: OrderedDict[str, Volume] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, volume: Volume) -> tuple[str, bool]:
        """Store ``volume``; returns (image id, True when it was already stored)."""
        image_id = image_digest(volume.array, volume.spacing, volume.origin, volume.direction)
        size = volume.array.nbytes
        if size > self.max_bytes:
            raise TooLarge(f"image of {size} bytes exceeds the server's image store of {self.max_bytes} bytes")
        with self._lock:
            if image_id in self._images:
                self._images.move_to_end(image_id)
                return image_id, True
            while self._images and self._bytes + size > self.max_bytes:
                _, dropped = self._images.popitem(last=False)
                self._bytes -= dropped.array.nbytes
            self._images[image_id] = volume
            self._bytes += size
        return image_id, False

    def get(self, image_id: str) -> Volume:
        """The stored volume; raises NotFound (upload it again) for an unknown or evicted id."""
        with self._lock:
            volume = self._images.get(image_id)
            if volume is None:
                raise NotFound(f"image {image_id} is not on the server (never uploaded, or evicted): upload it again")
            self._images.move_to_end(image_id)
            return volume

    def __contains__(self, image_id: str) -> bool:
        with self._lock:
            return image_id in self._images

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)
