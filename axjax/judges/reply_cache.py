"""On-disk cache of judge replies keyed by (model, prompt), in sqlite: reruns never pay twice for the same rating.

Every reply is committed as it arrives, so a killed run keeps all replies received so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading

from axjax.errors import AxjaxError


@dataclasses.dataclass(frozen=True)
class CachedReply:
  """A judge's reply text and the tokens it cost."""

  text: str
  prompt_tokens: int = 0
  completion_tokens: int = 0


def cache_key(model: str, prompt: str) -> str:
  """sha256 of the (model, prompt) pair; JSON keeps the two fields from running into each other."""
  return hashlib.sha256(json.dumps([model, prompt]).encode()).hexdigest()


class ReplyCache:
  """A thread-safe sqlite table of replies; one connection shared under a lock."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._lock = threading.Lock()
    self._db = sqlite3.connect(path, check_same_thread=False, timeout=30.0)
    try:
      self._db.execute("PRAGMA journal_mode=WAL")
      self._db.execute("PRAGMA synchronous=NORMAL")  # no fsync per commit; a killed process still loses nothing
      self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                       "text TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL)")
      self._db.commit()
    except sqlite3.DatabaseError as error:
      self._db.close()
      raise AxjaxError(f"the judge reply cache {path} is not a usable sqlite database ({error})") from None

  def get(self, model: str, prompt: str) -> CachedReply | None:
    with self._lock:
      row = self._db.execute("SELECT text, prompt_tokens, completion_tokens FROM replies WHERE key = ?",
                             (cache_key(model, prompt),)).fetchone()
    return None if row is None else CachedReply(*row)

  def put(self, model: str, prompt: str, reply: CachedReply) -> None:
    with self._lock:
      self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)",
                       (cache_key(model, prompt), model, reply.text, reply.prompt_tokens, reply.completion_tokens))
      self._db.commit()

  def __len__(self) -> int:
    with self._lock:
      return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

  def close(self) -> None:
    with self._lock:
      self._db.close()
