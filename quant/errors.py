"""The tool's error types. The CLI is the only place that turns them into exit codes."""

from __future__ import annotations

import errno

# OS errors that mean "the output place cannot take this write" (disk full, quota, file too large, read-only),
# reported as bad input (exit 2) naming the folder, not as a bug.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class QuantError(Exception):
    """Base of every error the tool raises on purpose."""


class InputError(QuantError):
    """Bad input from the user: exit code 2 (the CLI maps it), one clear line, nothing written to the release."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        self.detail = message
        where = ", ".join(part for part in (file, f"field '{field}'" if field else None) if part)
        text = f"{where}: {message}" if where else message
        # One line, always: values echoed from a recipe or a file name may hold line breaks.
        super().__init__(text.replace("\r", "\\r").replace("\n", "\\n"))


class RecipeError(InputError):
    """The recipe file is unreadable or does not match the schema."""


class ModelError(InputError):
    """The model is missing, corrupt, not ONNX, or does not fit the recipe."""


class DataError(InputError):
    """Calibration or evaluation data is missing, unreadable or of the wrong shape."""


class OutputError(InputError):
    """The run or release folder cannot be written."""


class BuildError(QuantError):
    """A method failed to build or load a variant; reported per variant, never fatal to the run."""
