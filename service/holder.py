"""Hot reload: the service serves the store's live version and swaps in a newer one when the
indexer publishes it. A new version is loaded completely in the background before the swap; a request
keeps the version it started with until it ends, so none fails across a re-index."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from indexer import store as st
from service.index import LoadedIndex

log = logging.getLogger("ragqa.service")


class NotReadyError(Exception):
    pass


class IndexHolder:
    def __init__(self, store: Path, model_name: str, interval: float) -> None:
        self.store = store
        self.model_name = model_name
        self.interval = interval
        self.last_error: str | None = None
        self._current: LoadedIndex | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ragqa-reload", daemon=True)

    @property
    def current(self) -> LoadedIndex:
        index = self._current
        if index is None:
            raise NotReadyError(self.last_error or f"no index in {self.store} yet: run ragqa-index first")
        return index

    @property
    def ready(self) -> bool:
        return self._current is not None

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def refresh(self) -> bool:
        """Load the store's live version if it is not the one served; True when it swapped."""
        version_id = st.current_version_id(self.store)
        if version_id is None or (self._current is not None and self._current.version_id == version_id):
            return False
        try:
            index = LoadedIndex.load(self.store, self.model_name, version_id, previous=self._current)
        except Exception as exc:  # keep serving what we have; say why on /readyz and in the log
            self.last_error = f"could not load index version {version_id}: {exc}"
            log.error("index.load_failed", extra={"version": version_id, "error": str(exc)})
            return False
        previous = self._current.version_id if self._current is not None else None
        self._current = index
        self.last_error = None
        log.info("index.loaded", extra={"version": version_id, "previous": previous})
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()
