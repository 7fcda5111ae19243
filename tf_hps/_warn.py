"""Warnings that point at the user's line, not at tf_hps's, Keras's or TensorFlow's."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARY_DIRS = tuple(os.sep + name + os.sep for name in ("keras", "tensorflow", "absl"))


def _internal(filename: str) -> bool:
    if filename.startswith(_PACKAGE_DIR) or filename.startswith("<frozen "):
        return True
    return "-packages" + os.sep in filename and any(d in filename for d in _LIBRARY_DIRS)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn with the stacklevel of the first frame outside tf_hps, Keras and TensorFlow."""
    frame, level = sys._getframe(0), 1
    while frame is not None and _internal(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
