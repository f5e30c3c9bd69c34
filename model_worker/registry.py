"""The models in use, kept in step with MODEL_PATH.

A daemon thread polls the path (mtime and size of each file, SHA-256 when they
move; no inotify, so it works on any file system and in containers) and loads
new or changed files itself, off the scoring path. The set of models is an
immutable mapping replaced in one reference assignment, so the scoring loop,
which takes `current()` once per batch, scores a whole batch with one set and
switches between batches. A file that fails to load is recorded and the model
it meant to replace stays in use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from contracts.errors import ModelError
from model_worker import metrics
from model_worker.models import DEFAULT_NAME, LoadedModel, load_model, model_files

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class LoadFailure:
    path: str
    error: str
    at_ns: int


@dataclass(slots=True)
class _Watched:
    signature: tuple[int, int]
    failure: LoadFailure | None = None


@dataclass
class ModelRegistry:
    root: Path
    trust_pickle: bool
    grid_step_s: int
    poll_s: float = 1.0
    clock_ns: Callable[[], int] = time.time_ns
    _models: Mapping[str, LoadedModel] = field(default_factory=lambda: MappingProxyType({}))
    _watched: dict[Path, _Watched] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def current(self) -> Mapping[str, LoadedModel]:
        return self._models

    def for_sensor(self, models: Mapping[str, LoadedModel], sensor: str) -> LoadedModel | None:
        return models.get(sensor) or models.get(DEFAULT_NAME)

    def failures(self) -> list[LoadFailure]:
        return [w.failure for w in self._watched.values() if w.failure is not None]

    def refresh(self) -> bool:
        """One poll: load what appeared or changed, drop what disappeared.
        Returns True when the set of models in use changed."""
        files = model_files(self.root)
        models = dict(self._models)
        changed = False
        for name in [n for n, m in models.items() if files.get(n) != m.path]:
            if name not in files:
                log.info("model file gone, model retired", extra={"model": name})
            del models[name]
            changed = True
        for path in [p for p in self._watched if p not in files.values()]:
            del self._watched[path]
        for name, path in files.items():
            try:
                stat = path.stat()
            except OSError:
                continue  # vanished between listing and stat: the next poll sees it gone
            signature = (stat.st_mtime_ns, stat.st_size)
            watched = self._watched.get(path)
            if watched is not None and watched.signature == signature and (
                    name in models or watched.failure is not None):
                continue
            self._watched[path] = _Watched(signature)
            loaded = self._load(name, path, models.get(name))
            if loaded is not None:
                models[name] = loaded
                changed = True
        if changed:
            self._models = MappingProxyType(models)
            metrics.set_models(self._models.values())
        return changed

    def _load(self, name: str, path: Path, previous: LoadedModel | None) -> LoadedModel | None:
        started = time.perf_counter()
        try:
            loaded = load_model(path, trust_pickle=self.trust_pickle,
                                grid_step_s=self.grid_step_s, now_ns=self.clock_ns())
        except ModelError as exc:
            failure = LoadFailure(str(path), str(exc), self.clock_ns())
            self._watched[path].failure = failure
            metrics.MODEL_LOAD_FAILURES.labels(model=name).inc()
            log.error("model load failed, previous model stays in use",
                      extra={"model": name, "path": str(path), "error": str(exc),
                             "kept": None if previous is None else previous.stamp.sha256_12})
            return None
        if previous is not None and previous.stamp.sha256_12 == loaded.stamp.sha256_12:
            return None  # touched, not changed: keep the stamp results already carry
        metrics.MODEL_LOADS.labels(model=name, kind=loaded.stamp.kind).inc()
        log.info("model loaded" if previous is None else "model swapped",
                 extra={"model": name, "kind": loaded.stamp.kind, "hash": loaded.stamp.sha256_12,
                        "path": str(path), "load_s": round(time.perf_counter() - started, 3),
                        "replaced": None if previous is None else previous.stamp.sha256_12})
        return loaded

    def start(self) -> ModelRegistry:
        self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # the watcher must outlive any surprise in one poll
                log.exception("model watch poll failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
