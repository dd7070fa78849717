"""Video frames as images: FiftyOne's frames views, decoded with eta's FFmpeg reader.

A video dataset (or a clips view) is segmented frame by frame: :func:`as_frames` gives the
frames view, whose samples are the frames; labels saved on it land on the videos' frames.
Frames are not written to disk (``sample_frames="dynamic"``): each frame sample keeps the
video's path and its frame number, and :class:`FrameReader` decodes them in order.
"""

from __future__ import annotations

import os

import numpy as np

from conceptseg.errors import ConceptSegError, ImageReadError

VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}


def is_video_path(path: str) -> bool:
    """Whether a file is a video by its extension (as FiftyOne's media type guess)."""
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def as_frames(collection) -> tuple[object, list[dict]]:
    """A collection whose samples are images, and the videos that cannot be read.

    Videos and clips become their frames view; a video whose frames cannot be counted
    (undecodable, missing) is left out and returned as a failure record. Patches views
    are refused: each patch's file is its whole source image, so a mask written there
    would not be the patch's.
    """
    if getattr(collection, "_is_patches", False):
        raise ConceptSegError(
            "Patches views cannot be segmented (a patch's file is its whole image): run on the "
            "source images instead, e.g. `dataset.select(patches.distinct('sample_id'))`, whose "
            "labels the patches view then shows."
        )
    if collection._is_frames:
        _ensure_frames(collection, collection.distinct("sample_id"))
        return collection, []
    if collection.media_type != "video":
        return collection, []
    from fiftyone import ViewField as F

    _require_ffmpeg()
    collection.compute_metadata()
    readable = collection.match(F("metadata.total_frame_count") > 0)
    broken = collection.exclude(readable.values("id"))
    failures = [
        {"sample_id": i, "filepath": p, "error": f"Video {p} has no decodable frames (ffprobe could not read it)."}
        for i, p in zip(*broken.values(["sample_id" if collection._is_clips else "id", "filepath"]))
    ]
    _ensure_frames(readable, readable.distinct("sample_id") if collection._is_clips else readable.values("id"))
    return readable.to_frames(sample_frames="dynamic"), failures


def _ensure_frames(collection, video_ids: list[str]) -> None:
    """Gives every frame of these videos its (empty) frame document in the dataset.

    Labels saved on a frames view reach a video only through frames the video already
    has (FiftyOne merges them, never inserts). ``Dataset.ensure_frames`` covers only a
    whole dataset, hence the view argument of its private form.
    """
    dataset = collection._root_dataset
    dataset._ensure_frames(view=dataset.select(video_ids))


def _require_ffmpeg() -> None:
    import shutil

    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise ConceptSegError(
            f"Video needs {' and '.join(missing)} on PATH to read frames: install ffmpeg "
            "(Debian/Ubuntu: sudo apt install ffmpeg; scripts/setup.sh does it when it can)."
        )


class FrameReader:
    """Decodes video frames by number, keeping one video open while frames come in order."""

    def __init__(self):
        self._path: str | None = None
        self._reader = None

    def read(self, path: str, frame_number: int) -> np.ndarray:
        """Frame ``frame_number`` (1-based) of the video at ``path`` as HxWx3 uint8 RGB."""
        import eta.core.video as etav

        if frame_number < 1:
            raise ImageReadError(f"Frame numbers start at 1; got {frame_number} for {path}.")
        if self._path != path or self._reader is None or self._reader.frame_number >= frame_number:
            self.close()
            try:
                self._reader = etav.FFmpegVideoReader(path)
            except Exception as e:  # eta raises plain errors for missing or undecodable files
                raise ImageReadError(f"Cannot open video {path}: {e}") from e
            self._path = path
        frame = None
        try:
            while self._reader.frame_number < frame_number:
                frame = self._reader.read()
        except StopIteration:
            frame = None
        except Exception as e:
            self.close()
            raise ImageReadError(f"Cannot decode frame {frame_number} of {path}: {e}") from e
        if frame is None or self._reader.frame_number != frame_number:
            self.close()
            raise ImageReadError(f"Video {path} has no decodable frame {frame_number}.")
        return frame

    def close(self) -> None:
        """Releases the open video, if any."""
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:  # closing a reader whose ffmpeg already died
                pass
        self._reader, self._path = None, None
