"""Adapter names -> adapter files and table slots. Names only, never paths.

    registry = AdapterRegistry(backbone, settings)     # on the model worker thread
    name = registry.resolve("vqa", request.adapter)    # event loop: 404/422 before queueing
    routing, failed = registry.routing(row_names)      # model worker: loads on demand

Two threads, two sides. The `AdapterTable` is not thread-safe, so it is touched only
on the model worker thread (`routing`, `load`, `unload`, `pin`). The event loop sees
an immutable snapshot of what is loaded, replaced after every mutation, and reads
file headers (cached by size and mtime) to check a name exists and fits the task.

Adapter files live in one or more directories (the user's, then the shipped
`models/adapters`); a name is one file in one of them. A name found in two
directories is refused: at start (`find_adapter_files`, naming both paths, and the
server does not start) and, if such a file appears later, per request (409).
A name with a file in an adapter directory is served even when not loaded: the
first batch naming it loads it (LRU-evicting an unpinned adapter when full).
`none` is the frozen backbone. No name = the task's default adapter when it is usable
(its file fits this task and backbone), else the frozen backbone; a request carrying
a video (or searching videos) first tries the task's video default (`video-vqa`,
`video-retrieval`), then the image default, then the frozen backbone.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from adapters import AdapterTable, read_adapter_meta
from adapters.errors import AdapterFileError, AdapterTableError
from server.errors import Conflict, NotFound, TableFull, Unprocessable, WrongTask
from server.schemas import NAME_PATTERN
from server.settings import DEFAULT_SLOTS, TASKS, Settings, slot_label

log = logging.getLogger("unitrans.adapters")
NAME_RE = re.compile(NAME_PATTERN)
FROZEN = "none"
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Loaded:
    meta: object  # adapters.AdapterMeta
    pinned: bool
    version: str  # file size + mtime at load time: galleries key ITC vectors on it


def check_name(name: str, what: str = "adapter") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise Unprocessable(f"invalid {what} name {name!r}: use 1-64 letters, digits, '-' or '_' "
                            "(names, never paths)")
    return name


class AdapterDirError(ValueError):
    """The adapter directories cannot be served as given (a name in two of them)."""


def _scan(dirs: list[Path]) -> dict[str, list[Path]]:
    """{name: its files, in directory order} over every directory (missing ones hold nothing)."""
    found: dict[str, list[Path]] = {}
    for d in dirs:
        if Path(d).is_dir():
            for p in sorted(Path(d).glob(f"*{SUFFIX}")):
                name = p.name[: -len(SUFFIX)]
                if NAME_RE.fullmatch(name) and p.is_file():
                    found.setdefault(name, []).append(p)
    return found


def find_adapter_files(dirs: list[Path]) -> dict[str, Path]:
    """{name: file} over every directory (missing ones hold nothing). Raises
    AdapterDirError naming both paths when one name is in two directories."""
    found = _scan(dirs)
    clashes = {n: ps for n, ps in found.items() if len(ps) > 1}
    if clashes:
        lines = [f"  {n}: " + " and ".join(map(str, ps)) for n, ps in sorted(clashes.items())]
        raise AdapterDirError("adapter name(s) found in more than one adapter directory; rename or remove one "
                              "of each (or leave out the shipped adapters with --no-shipped-adapters):\n"
                              + "\n".join(lines))
    return {n: ps[0] for n, ps in found.items()}


def _stat_version(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}-{st.st_mtime_ns}"


class AdapterRegistry:
    def __init__(self, backbone, settings: Settings):
        self.backbone = backbone
        self.settings = settings
        self.dirs = settings.adapter_dirs()
        find_adapter_files(self.dirs)  # refuse a name in two directories before serving anything
        self.table = AdapterTable(backbone, capacity=settings.adapter_capacity)
        self._loaded: dict[str, Loaded] = {}  # snapshot, replaced whole (the event loop reads it)
        self._headers: dict[str, tuple[str, object]] = {}  # name -> (stat version, AdapterMeta | AdapterFileError)
        self._serials: dict[str, int] = {}  # name -> number of its latest load/unload (model worker side)
        self._changes = 0
        self.on_change: list = []  # callbacks(name) after a load, reload or unload (e.g. cache drops)

    # -- shared helpers ---------------------------------------------------------------------
    def path(self, name: str) -> Path | None:
        """The file of `name` in the adapter directories, or None. A name in two
        directories (a file added after start) is a 409, its paths only in the log."""
        file = f"{check_name(name)}{SUFFIX}"
        found = [d / file for d in self.dirs if (d / file).is_file()]
        if len(found) > 1:
            log.warning("adapter %r is in several adapter directories: %s", name, ", ".join(map(str, found)))
            raise Conflict(f"adapter {name!r} is in {len(found)} adapter directories; the server will not guess "
                           "which (its log names them)")
        return found[0] if found else None

    def file_names(self) -> list[str]:
        return sorted(_scan(self.dirs))

    def header(self, name: str):
        """AdapterMeta of `<dir>/<name>.safetensors` (cached), an AdapterFileError, or None if absent."""
        path = self.path(name)
        version = _stat_version(path)
        if version is None:
            return None
        cached = self._headers.get(name)
        if cached and cached[0] == version:
            return cached[1]
        try:
            meta = read_adapter_meta(path)
        except AdapterFileError as exc:
            meta = exc
        self._headers[name] = (version, meta)
        return meta

    @property
    def loaded(self) -> dict[str, Loaded]:
        return self._loaded

    def version(self, name: str | None) -> str:
        """Identity of what `name` computes, for cached ITC vectors."""
        if name is None:
            return f"{FROZEN}-{self.backbone.fingerprint}"
        entry = self._loaded.get(name)
        return entry.version if entry else (_stat_version(self.path(name)) or "absent")

    # -- event loop side --------------------------------------------------------------------
    def default_name(self, task: str, video: bool = False) -> str | None:
        """The default adapter a request naming none runs with: for a video, the task's video
        default if usable, else the image default if usable (loaded, or a readable file of
        this task made for this backbone), else None: the frozen backbone. So serving another
        backbone (a real BLIP) with the shipped adapter directory falls back to frozen
        instead of failing every request; a named adapter still gets its 404/422."""
        names = [self.settings.default_adapter(task, video=True)] if video else []
        for name in names + [self.settings.default_adapter(task)]:
            if name == FROZEN:  # set so: this kind of input runs on the frozen backbone
                return None
            if self._usable(task, name):
                return name
        return None

    def _usable(self, task: str, name: str) -> bool:
        entry = self._loaded.get(name)
        meta = entry.meta if entry else self.header(name)
        if meta is None or isinstance(meta, AdapterFileError):
            return False
        return meta.task == task and meta.backbone_fingerprint == self.backbone.fingerprint

    def defaults(self, tasks) -> dict[str, str]:
        """{'vqa': name, 'video-vqa': name, ...} of the defaults `tasks` use now ('none' = frozen)."""
        return {slot_label(t, v): self.default_name(t, v) or FROZEN for t, v in DEFAULT_SLOTS if t in tasks}

    def resolve(self, task: str, name: str | None, video: bool = False) -> str | None:
        """The adapter a request runs with (None = frozen), or 404 / 422; `video`: the request
        carries or searches videos (picks the default when it names none)."""
        assert task in TASKS, task
        if name is None:
            name = self.default_name(task, video)
            if name is None:
                return None
        if name == FROZEN:
            return None
        check_name(name)
        entry = self._loaded.get(name)
        meta = entry.meta if entry else self.header(name)
        if meta is None:
            known = sorted(set(self._loaded) | set(self.file_names()))
            raise NotFound(f"unknown adapter {name!r}; available: {', '.join(known) or 'none'} "
                           f"(and '{FROZEN}', the frozen backbone)")
        if isinstance(meta, AdapterFileError):
            raise Unprocessable(f"adapter {name!r} cannot be loaded: {meta}")
        if meta.task != task:
            raise WrongTask(f"adapter {name!r} is a {meta.task!r} adapter, not a {task!r} one")
        if meta.backbone_fingerprint != self.backbone.fingerprint:
            raise Unprocessable(f"adapter {name!r} was made for backbone {meta.backbone_fingerprint}, "
                                f"this server runs {self.backbone.fingerprint}")
        return name

    # -- model worker side ------------------------------------------------------------------
    def _refresh(self, versions: dict[str, str] | None = None) -> None:
        old = {n: e.version for n, e in self._loaded.items()} | (versions or {})
        self._loaded = {n: Loaded(self.table.meta(n), self.table.pinned(n), old.get(n, ""))
                        for n in self.table.names()}

    def serial(self, name: str) -> int:
        """Changes with every load, reload and unload of `name`: part of cached image-token keys."""
        return self._serials.get(name, 0)

    def _changed(self, name: str) -> None:
        self._changes += 1
        self._serials[name] = self._changes
        for callback in self.on_change:
            callback(name)

    def _full(self) -> bool:
        names = self.table.names()
        return len(names) >= self.table.capacity and all(self.table.pinned(n) for n in names)

    def load(self, name: str, pin: bool | None = None):
        """Load (or reload) `<dir>/<name>.safetensors`. On failure the table is unchanged."""
        path = self.path(name)
        if path is None:
            raise NotFound(f"no adapter file named {name!r} in the adapter directories")
        version = _stat_version(path) or ""
        was_pinned = name in self.table and self.table.pinned(name)
        if name not in self.table and self._full():
            raise TableFull(f"cannot load adapter {name!r}: all {self.table.capacity} table slots hold pinned "
                            "adapters; unpin or unload one (DELETE /adapters/NAME)")
        try:
            meta = self.table.load(name, path)
            if pin is not None or was_pinned:
                self.table.pin(name, bool(pin) if pin is not None else was_pinned)
        except AdapterFileError as exc:
            raise Unprocessable(str(exc)) from None
        except AdapterTableError as exc:  # rank over the table's maximum, another backbone, ...
            raise Unprocessable(f"cannot load adapter {name!r}: {exc}") from None
        finally:
            self._refresh({name: version})
            self._changed(name)
        log.info("loaded adapter %s (%s, %s, rank %s)", name, meta.kind, meta.task, meta.rank)
        return meta

    def unload(self, name: str) -> None:
        check_name(name)
        if name not in self.table:
            raise NotFound(f"adapter {name!r} is not loaded")
        self.table.evict(name)
        self._refresh()
        self._changed(name)

    def load_defaults(self) -> list[str]:
        """Load and pin each default adapter (image and video) whose file exists; log the others."""
        done = []
        for task, video in DEFAULT_SLOTS:
            name, label = self.settings.default_adapter(task, video), slot_label(task, video)
            if name == FROZEN or name in done:
                continue
            if self.path(name) is None:
                log.info("default %s adapter %r: no file in the adapter directories (%s)", label, name,
                         "the image default serves videos" if video else "the frozen backbone serves")
                continue
            try:
                meta = self.load(name, pin=True)
            except (NotFound, Unprocessable, TableFull, Conflict) as exc:
                log.warning("default %s adapter %r not loaded: %s", label, name, exc.message)
                continue
            if meta.task != task:
                log.warning("default %s adapter %r is a %s adapter", label, name, meta.task)
            done.append(name)
        return done

    def prepare(self, names) -> dict[str, Exception]:
        """Load every named adapter not yet in the table; {name: error} for those that failed."""
        failed: dict[str, Exception] = {}
        for name in dict.fromkeys(n for n in names if n is not None):
            if name not in self.table:
                try:
                    self.load(name)
                except (NotFound, Unprocessable, TableFull, Conflict) as exc:
                    failed[name] = exc
        return failed

    def routing(self, names: list[str | None]):
        """Per-row names (all loaded, see `prepare`) -> a routing for adapters.tasks (None = all frozen).
        Raises AdapterTableError when an earlier load of this batch evicted a later name
        (more distinct adapters than free slots); the engine then runs adapter by adapter."""
        if all(n is None for n in names):
            return None
        return self.table.routing(list(names))
