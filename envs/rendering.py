"""Rendering support shared by the suites: square RGB frames and GL-context lifetime.

Two jobs that every rendering env needs and that have nothing to do with the task itself:

* :func:`to_square_frame` turns whatever an env renders into an ``(size, size, 3)`` ``uint8`` frame.
* :func:`close_at_exit` makes sure envs whose GL contexts are still open get closed at interpreter
  exit *before* MuJoCo tears down the shared EGL display. MuJoCo's ``mujoco.egl`` registers an
  ``atexit`` hook that calls ``eglTerminate`` on the (process-wide) EGL display the first time it
  creates a context; ``atexit`` runs hooks last-in-first-out, so a dm_control context created
  *before* that hook is freed *after* the display is gone and prints an ``EGL_BAD_DISPLAY``
  traceback. Closing envs explicitly (``env.close()``) avoids this; :func:`close_at_exit` is the
  safety net for envs that were never closed.
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any

import numpy as np

_OPEN_ENVS: weakref.WeakSet[Any] = weakref.WeakSet()


def _close_open_envs() -> None:
    for env in list(_OPEN_ENVS):
        try:
            env.close()
        except Exception:
            pass  # best effort at interpreter exit: there is nothing useful left to report to


def close_at_exit(env: Any) -> None:
    """Close ``env`` at interpreter exit if it is still alive and open then.

    Call this right after an env created a GL context (its first ``render()``). The hook is moved to
    the end of the ``atexit`` stack on every call, so it runs before any EGL teardown hook that was
    registered while creating that context.
    """
    _OPEN_ENVS.add(env)
    atexit.unregister(_close_open_envs)
    atexit.register(_close_open_envs)


def forget_at_exit(env: Any) -> None:
    """Remove ``env`` from the exit-time close list (call from ``close()``)."""
    _OPEN_ENVS.discard(env)


def to_square_frame(frame: Any, size: int) -> np.ndarray:
    """Return ``frame`` as a ``(size, size, 3)`` ``uint8`` RGB array (bilinear resize if needed).

    Accepts ``HxWx3`` or ``HxWx4`` (alpha dropped) arrays of ``uint8`` or floats in ``[0, 1]``.
    Non-square frames are stretched to a square.
    """
    if frame is None:
        raise RuntimeError(
            "render() returned None: the env was not created with render_mode='rgb_array' "
            "(for envs from register_env, create it with render_mode='rgb_array')."
        )
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB frame of shape (H, W, 3), got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr * 255.0, 0, 255)
        arr = arr.astype(np.uint8)
    if arr.shape[0] != size or arr.shape[1] != size:
        from PIL import Image  # pillow ships with imageio, the project's video writer

        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(arr)
