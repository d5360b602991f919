"""Hot reload: the service serves the store's live version and swaps in a newer one when the
indexer publishes it (a local store's CURRENT, or a Milvus alias switched to a new version). A new
version is loaded completely in the background before the swap; a request keeps the version it started
with until it ends, so none fails across a re-index.

A store whose engine stops answering (a Milvus server down or unreachable) makes the service not
ready: /readyz and every read answer 503 with the reason until the engine answers again."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from indexer import store as st
from indexer.reader import VersionWatch
from service.index import LoadedIndex

log = logging.getLogger("ragqa.service")


class NotReadyError(Exception):
    pass


class IndexHolder:
    def __init__(self, store: str | Path, model_name: str, interval: float) -> None:
        self.store = store
        self.model_name = model_name
        self.interval = interval
        self.last_error: str | None = None
        self.unavailable: str | None = None  # why the store's engine does not answer, while it does not
        # the loaded model's weights digest, once it is known (require_weights): a version of other
        # weights is not served
        self.weights: str | None = None
        self._current: LoadedIndex | None = None
        self._watch = VersionWatch(store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch_store, name="ragqa-reload", daemon=True)

    @property
    def current(self) -> LoadedIndex:
        index = self._current
        if self.unavailable is not None:
            raise NotReadyError(self.unavailable)
        if index is None:
            raise NotReadyError(self.last_error or f"no index in {self.store} yet: run ragqa-index first")
        return index

    @property
    def ready(self) -> bool:
        return self._current is not None and self.unavailable is None

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._watch.close()

    def refresh(self) -> bool:
        """Load the store's live version if it is not the one served; True when it swapped. Also how
        the service notices its store's engine going down and coming back: back after an outage, the
        live version is opened afresh, as a restarted engine may have released its collections."""
        try:
            version_id = self._watch.live()
        except st.StoreError as exc:  # the engine down or unreachable, or an alias naming no version
            self._unavailable(exc)
            return False
        recovered = self.unavailable is not None
        served = self._current.version_id if self._current is not None else None
        if version_id is None or (version_id == served and not recovered):
            self._available()
            return False
        try:
            index = LoadedIndex.load(self.store, self.model_name, version_id, previous=self._current)
            if self.weights is not None:
                st.check_weights(self.store, index.model, self.weights)
        except st.StoreUnavailableError as exc:
            self._unavailable(exc)
            return False
        except Exception as exc:  # keep serving what we have; say why on /readyz and in the log
            self._available()
            self._refused(version_id, exc)
            return False
        self._current = index
        self._available()
        self.last_error = None
        log.info("index.loaded", extra={"version": version_id, "previous": served})
        return True

    def require_weights(self, weights: str) -> None:
        """Serve only versions whose vectors come from these weights (the model the service loaded,
        indexer.embedding's weights_digest), the version already loaded included: the version is
        opened while the model loads, before its digest is known."""
        self.weights = weights
        index = self._current
        if index is None:
            return
        try:
            st.check_weights(self.store, index.model, weights)
        except st.ModelMismatchError as exc:
            self._current = None
            self._refused(index.version_id, exc)

    def _refused(self, version_id: str, exc: Exception) -> None:
        """A version that cannot be served: why, on /readyz and in the log."""
        self.last_error = f"could not load index version {version_id}: {exc}"
        log.error("index.load_failed", extra={"version": version_id, "error": str(exc)})

    def _unavailable(self, exc: Exception) -> None:
        if self.unavailable is None:
            log.error("index.store_unavailable", extra={"store": str(self.store), "error": str(exc)})
        what = "does not answer" if isinstance(exc, st.StoreUnavailableError) else "names no version"
        self.unavailable = self.last_error = f"the store {what}: {exc}"
        self._watch.close()  # a new connection next time

    def _available(self) -> None:
        if self.unavailable is not None:
            log.info("index.store_available", extra={"store": str(self.store)})
            self.unavailable = self.last_error = None

    def _watch_store(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()
