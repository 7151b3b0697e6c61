"""Write evaluation episodes as mp4 files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.files import atomic_replace


def save_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 30) -> Path:
    """Encode RGB uint8 frames ``[H, W, 3]`` as H.264 mp4 (imageio + ffmpeg), written atomically."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    # macro_block_size=1 keeps odd frame sizes instead of resizing with a warning.
    with (
        atomic_replace(path) as tmp,  # keeps the .mp4 suffix: imageio picks the format from it
        imageio.get_writer(tmp, fps=fps, codec="libx264", quality=7, macro_block_size=1) as w,
    ):
        for f in frames:
            w.append_data(np.asarray(f, dtype=np.uint8))
    return path
