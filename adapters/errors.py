"""Typed errors of the model library. Callers (the server, the CLI tools) map them
to user-facing messages; each message names the file or field that was wrong."""


class UnitransError(Exception):
    """Base of every expected error raised by `adapters`."""


class BackboneLoadError(UnitransError):
    """A backbone directory is missing a file, holds a corrupt one, or is inconsistent."""


class TaskUnavailableError(UnitransError):
    """The loaded backbone lacks the parts a task needs (e.g. no ITM head for retrieval)."""


class AdapterFileError(UnitransError):
    """An adapter file is corrupt, truncated, of the wrong shape, holds NaN/inf,
    was made for another backbone, or has an unknown format version."""


class AdapterTableError(UnitransError):
    """The adapter table cannot satisfy a request (full with everything pinned, unknown name)."""
