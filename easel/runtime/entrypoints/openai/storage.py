"""Generated files the server keeps: images behind `url` answers, and videos until they are deleted."""

import collections
import shutil
import tempfile
import uuid
from pathlib import Path

MAX_KEPT_IMAGES = 256  # `url` images are kept until this many newer ones replace them
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "mp4": "video/mp4"}


class OutputStore:
    """Files in one temporary folder, named by id; the folder goes at shutdown."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="easel-serve-"))
        self._images: collections.OrderedDict[str, Path] = collections.OrderedDict()

    def put_image(self, data: bytes, image_format: str) -> str:
        """Keeps an encoded image; returns its id."""
        image_id = f"img_{uuid.uuid4().hex}"
        path = self.root / f"{image_id}.{image_format}"
        path.write_bytes(data)
        self._images[image_id] = path
        while len(self._images) > MAX_KEPT_IMAGES:
            _, oldest = self._images.popitem(last=False)
            oldest.unlink(missing_ok=True)
        return image_id

    def image(self, image_id: str) -> Path | None:
        return self._images.get(image_id)

    def video_path(self, video_id: str) -> Path:
        """Where the worker writes a video job's MP4."""
        return self.root / f"{video_id}.mp4"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
