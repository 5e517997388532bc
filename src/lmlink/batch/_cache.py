"""An SQLite response cache, so a re-run sends nothing it already has an answer for.

The key is a SHA-256 over everything that shapes an answer: the endpoint (without any
user:password part), the model, every request parameter and the messages. The API key is
never part of the key or of the stored value, and neither are request headers. The database
runs in WAL mode, so a reader never waits for a writer and a killed run leaves it
consistent. ``sqlite3`` is imported only when a cache is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from lmlink import _json
from lmlink._errors import ConfigurationError
from lmlink._log import log

if TYPE_CHECKING:
    import sqlite3

__all__ = ["ResponseCache", "cache_key", "check_cache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    created REAL NOT NULL
)
"""


def _public_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _canonical(value: Any) -> Any:
    """orjson's fallback for a request value that is not JSON: a pydantic model class stands
    for its JSON schema (not its name, which stays the same when its fields change); any
    other class has no content to key on."""
    if isinstance(value, type):
        schema = getattr(value, "model_json_schema", None)
        if schema is None:
            raise TypeError(f"{value!r} has no JSON form")
        return schema()
    return str(value)


def cache_key(endpoint: str, model: str, messages: Any, params: Mapping[str, Any]) -> str | None:
    """The cache key of one request, or None if the request holds a value with no JSON form
    (such a request is never cached).

    >>> cache_key("http://127.0.0.1:8080/v1", "qwen3", [{"role": "user", "content": "Hi"}],
    ...           {"max_tokens": 5})
    '3f1c...'
    """
    material = {
        "v": 1,
        "endpoint": _public_endpoint(endpoint),
        "model": model,
        "params": dict(params),
        "messages": messages,
    }
    try:
        blob = orjson.dumps(material, default=_canonical, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # orjson.JSONEncodeError included
        return None
    return hashlib.sha256(blob).hexdigest()


def check_cache(path: str | Path) -> None:
    """Raise ConfigurationError, with one line saying why, if ``path`` cannot be a cache
    (a directory, a file that cannot be read and written, a file that is not an SQLite
    database, a database of something else, a folder that does not exist). Nothing on
    disk changes: a run checks its cache this way before it opens its output.
    """
    import sqlite3

    path = Path(path)
    if path.is_dir():
        raise ConfigurationError(f"the cache {path} is a directory; give the path of a file")
    if not path.exists():
        parent = path.parent
        if not parent.is_dir():
            raise ConfigurationError(
                f"cannot create the cache {path}: the folder {parent} does not exist"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigurationError(f"cannot create the cache {path}: {parent} is read-only")
        return
    try:
        # r+b neither truncates nor touches the file; it fails if it is not ours to write.
        with open(path, "r+b") as f:
            head = f.read(16)
    except OSError as exc:
        raise ConfigurationError(f"cannot use the cache {path}: {exc.strerror or exc}") from exc
    if not head:
        return  # an empty file: SQLite makes it a database
    if head != b"SQLite format 3\x00":
        raise ConfigurationError(
            f"{path} is not an lmlink cache (not an SQLite database); give the cache another file"
        )
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            columns = {row[1] for row in db.execute("PRAGMA table_info(responses)")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ConfigurationError(
            f"{path} is not a usable lmlink cache ({exc}); give the cache another file"
        ) from exc
    if tables and not {"key", "value", "created"} <= columns:
        raise ConfigurationError(
            f"{path} is an SQLite database of something else, not an lmlink cache; "
            "give the cache another file"
        )


class ResponseCache:
    """Answers by :func:`cache_key`, in an SQLite file.

    >>> cache = ResponseCache("responses.sqlite")
    >>> cache.put(key, {"content": "Hello", ...}); cache.get(key)["content"]
    'Hello'
    """

    def __init__(self, path: str | Path) -> None:
        import sqlite3

        self.path = Path(path)
        self.hits = 0
        self.stored = 0  # answers put by this instance
        #: True when this instance made the file (a run that stored nothing removes it).
        self.created = not self.path.exists()
        self.error: str | None = None  # why a read or write failed; the cache is off since
        try:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the cache {self.path}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            raise ConfigurationError(
                f"{self.path} is not a usable lmlink cache (an SQLite database): {exc}"
            ) from exc
        self._db: sqlite3.Connection | None = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ConfigurationError(f"the cache {self.path} is closed")
        return self._db

    def _failed(self, exc: Exception) -> None:
        """A read or write failed (a full disk, a file removed under us): a cache is an
        optimisation, so the run goes on without it, and says so once."""
        self.error = f"the cache {self.path} failed ({exc}); going on without it"
        log.warning("lmlink: %s", self.error)
        self.close()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored answer for ``key``, or None."""
        import sqlite3

        if self.error is not None:
            return None
        try:
            row = (
                self._conn().execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
            )
        except sqlite3.Error as exc:
            self._failed(exc)
            return None
        if row is None:
            return None
        try:
            value = _json.loads_exact(row[0])
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        """Store ``value`` (a JSON-able mapping) under ``key``."""
        import sqlite3

        if self.error is not None:
            return
        blob = _json.dumps_record(value)
        try:
            self._conn().execute(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                (key, blob, time.time()),
            )
        except sqlite3.Error as exc:
            self._failed(exc)
        else:
            self.stored += 1

    def __len__(self) -> int:
        (count,) = self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the database; idempotent."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def discard_if_unused(self) -> None:
        """Close, and remove the file if this instance created it and stored nothing in
        it (a run that could not start leaves no file behind)."""
        self.close()
        if self.created and not self.stored:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(OSError):
                    os.unlink(f"{self.path}{suffix}")
