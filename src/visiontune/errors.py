"""The exception hierarchy: every error a user can cause is a VisiontuneError.

The CLI turns these into one-line messages and exit codes; the service turns them into 4xx.
Anything else escaping is a bug in visiontune.
"""

from __future__ import annotations


class VisiontuneError(Exception):
    """Base class: a problem the user can fix; the message says how."""

    exit_code = 1


class ConfigError(VisiontuneError):
    """An option or config file value is out of range or inconsistent."""

    exit_code = 2


class DatasetError(VisiontuneError):
    """The data can't be used as given (no images, one class, a bad CSV...)."""

    exit_code = 3


class ImageError(VisiontuneError):
    """One image file can't be decoded; callers usually skip the file and count it."""

    exit_code = 3

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ImageTooLargeError(ImageError):
    """An image over the pixel limit, refused before decoding (decompression-bomb guard)."""


class ModelError(VisiontuneError):
    """A model name, weight file or architecture problem."""

    exit_code = 4


class BundleError(VisiontuneError):
    """A model bundle is missing, incomplete or of an unknown version."""

    exit_code = 5


class MissingPackageError(VisiontuneError):
    """An optional system or Python package is needed for this operation."""

    exit_code = 6


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped the work; the message says what was kept and how to continue (the CLI exits 130).

    A KeyboardInterrupt, not a VisiontuneError: whatever catches Ctrl-C (Optuna, a caller) still does.
    """


class OutputError(VisiontuneError):
    """An output can't be written: the disk is full, the folder is read-only or not ours to write.

    `disk_full` tells the two apart for callers that say what to do next (resume, free space).
    """

    exit_code = 7

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full
