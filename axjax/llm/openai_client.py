"""A client of any OpenAI-compatible chat-completions endpoint: the judges' and the data generator's LLM.

Works with OpenAI, vLLM, llama.cpp's server and Ollama; stdlib HTTP, a bounded thread pool, retries with backoff,
an on-disk reply cache keyed by (model, prompt) so a rerun pays only for prompts it has not seen, and token and
cost accounting (`usage`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import email.utils
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Sequence

from axjax.errors import AxjaxError
from axjax.judges.base import Progress
from axjax.judges.reply_cache import CachedReply, ReplyCache

RETRY_STATUSES = (408, 409, 429)  # besides every 5xx: the statuses OpenAI's own client retries
# US dollars per million (prompt, completion) tokens, for `usage`'s cost (AxBench's PRICING_DOLLAR_PER_1M_TOKEN);
# models not listed get no cost.
PRICES_PER_MILLION = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o-mini-2024-07-18": (0.15, 0.60), "gpt-4o": (5.00, 15.00)}


@dataclasses.dataclass(frozen=True)
class OpenAIConfig:
  """Where the LLM is and how hard to try. The paper rated with gpt-4o-mini at its default temperature, 1.0."""

  model: str
  base_url: str  # up to and including the API version, e.g. https://api.openai.com/v1 or http://localhost:8000/v1
  cache_path: str
  api_key_env: str = "OPENAI_API_KEY"
  concurrency: int = 16
  timeout_s: float = 60.0
  max_retries: int = 6  # further attempts after the first one
  backoff_s: float = 1.0  # the first retry waits about this long, each later one twice as long (with jitter)
  max_backoff_s: float = 60.0  # cap on any wait, including a server's Retry-After
  temperature: float = 1.0
  max_tokens: int = 256
  seed: int | None = 0  # sent for servers that support reproducible sampling; None leaves it out

  def __post_init__(self):
    if not self.base_url.startswith(("http://", "https://")):
      raise AxjaxError(f"the base URL {self.base_url!r} must start with http:// or https://")
    if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0 or self.max_tokens < 1:
      raise AxjaxError("an OpenAI-compatible client needs concurrency >= 1, max_retries >= 0, timeout_s > 0 and "
                       "max_tokens >= 1")


class _Retry(Exception):
  """A failed attempt worth repeating: `what` describes it, `wait_s` is the server's Retry-After if it sent one."""

  def __init__(self, what: str, wait_s: float | None = None):
    super().__init__(what)
    self.what = what
    self.wait_s = wait_s


class _Stopped(Exception):
  """Raised in workers once another request has failed for good, so they stop retrying."""


class OpenAIClient:
  """One chat completion per (deduplicated, uncached) user prompt. `role` names it in error sentences ("judge",
  "LLM")."""

  def __init__(self, config: OpenAIConfig, role: str = "judge"):
    self.config, self.role = config, role
    self.name = f"openai:{config.model}"
    self._url = config.base_url.rstrip("/")
    self._cache = ReplyCache(config.cache_path)
    self._lock = threading.Lock()
    self._usage = dict(calls=0, cached=0, malformed=0, prompt_tokens=0, completion_tokens=0)
    self._random = random.Random()  # unseeded: parallel runs must not retry in lockstep

  def check(self) -> None:
    """Fails with one sentence without a key, without a server, or when the server rejects the key."""
    request = urllib.request.Request(f"{self._url}/models", headers=self._headers(self._api_key()))
    try:
      with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
        response.read()
    except urllib.error.HTTPError as error:
      if error.code in (401, 403) or error.code >= 500:
        raise AxjaxError(self._refused(error)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
      reason = error.reason if isinstance(error, urllib.error.URLError) else error
      if isinstance(reason, ConnectionRefusedError):
        raise AxjaxError(f"the {self.role} server at {self._url} refuses connections") from None
      if isinstance(reason, socket.gaierror):
        raise AxjaxError(f"the {self.role} server's host in {self._url} is unknown") from None
      raise AxjaxError(f"the {self.role} server at {self._url} cannot be reached ({_describe(error)})") from None

  def complete(self, prompts: Sequence[str], progress: Progress | None = None, draw: int = 0) -> list[str]:
    """The reply text to each user prompt, in order (e.g. steering prompts to write), asked and cached as `rate`.
    `draw` k > 0 asks for another, independent reply (sampling seed + k, its own cache entry): a retry of a
    reply that could not be used, which the cache would otherwise return again."""
    replies = self._replies(prompts, progress, draw)
    return [replies[p] for p in prompts]

  def _replies(self, prompts: Sequence[str], progress: Progress | None, draw: int = 0) -> dict[str, str]:
    """Each distinct prompt's reply: from the cache where it is there, else asked."""
    unique = list(dict.fromkeys(prompts))
    replies: dict[str, str] = {}
    for prompt in unique:
      hit = self._cache.get(self._cache_model(draw), prompt)
      if hit is not None:
        replies[prompt] = hit.text
    self._count(cached=len(replies))
    if progress is not None:
      progress(len(replies), len(unique))
    missing = [p for p in unique if p not in replies]
    if missing:
      self._ask_all(missing, replies, progress, len(unique), draw)
    return replies

  def _cache_model(self, draw: int) -> str:
    """The cache's model key of the `draw`-th reply to a prompt (draw 0: the model's name, as before draws)."""
    return self.config.model if draw == 0 else f"{self.config.model}#draw{draw}"

  def usage(self) -> dict[str, float]:
    """calls (HTTP requests sent, retries included), cached, malformed (judges: rated 0), the tokens of new replies
    and, for a model in PRICES_PER_MILLION, their cost_usd."""
    with self._lock:
      usage = dict(self._usage)
    if self.config.model in PRICES_PER_MILLION:
      prompt, completion = PRICES_PER_MILLION[self.config.model]
      usage["cost_usd"] = (usage["prompt_tokens"] * prompt + usage["completion_tokens"] * completion) / 1e6
    return usage

  def _ask_all(self, prompts: list[str], replies: dict[str, str], progress: Progress | None, total: int,
               draw: int) -> None:
    """Asks all prompts on the pool; on the first request that fails for good, lets the in-flight ones finish."""
    key = self._api_key()
    stop = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(min(self.config.concurrency, len(prompts)), f"openai-{self.role}")
    futures = {pool.submit(self._ask, prompt, key, stop, draw): prompt for prompt in prompts}
    try:
      for future in concurrent.futures.as_completed(futures):
        replies[futures[future]] = future.result()
        if progress is not None:
          progress(len(replies), total)
    except BaseException:
      stop.set()
      raise
    finally:
      pool.shutdown(wait=True, cancel_futures=True)

  def _ask(self, prompt: str, key: str, stop: threading.Event, draw: int) -> str:
    """One prompt's reply text, retried with backoff; cached as soon as it arrives."""
    body = json.dumps({"model": self.config.model, "messages": [{"role": "user", "content": prompt}],
                       "temperature": self.config.temperature, "max_tokens": self.config.max_tokens,
                       **({} if self.config.seed is None else {"seed": self.config.seed + draw})}).encode()
    failures = 0
    while True:
      if stop.is_set():
        raise _Stopped()
      self._count(calls=1)
      try:
        reply = self._post(body, key)
        break
      except _Retry as failure:
        failures += 1
        if failures > self.config.max_retries:
          stop.set()
          raise AxjaxError(f"the {self.role} at {self._url} failed {failures} times on one request "
                           f"(last: {failure.what})") from None
        if stop.wait(self._wait_s(failures - 1, failure.wait_s)):
          raise _Stopped() from None
      except AxjaxError:
        stop.set()  # set here, not by the caller, so no queued prompt starts after a failure for good
        raise
    self._cache.put(self._cache_model(draw), prompt, reply)
    self._count(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
    return reply.text

  def _post(self, body: bytes, key: str) -> CachedReply:
    """One attempt: the reply, or _Retry for failures worth repeating, or AxjaxError for those that are not."""
    request = urllib.request.Request(f"{self._url}/chat/completions", data=body, headers=self._headers(key),
                                     method="POST")
    try:
      with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
        data = response.read()
    except urllib.error.HTTPError as error:
      if error.code in RETRY_STATUSES or error.code >= 500:
        raise _Retry(f"HTTP {error.code}", _retry_after_s(error.headers)) from None
      raise AxjaxError(self._refused(error)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
      raise _Retry(_describe(error)) from None
    return _completion(data)

  def _wait_s(self, attempt: int, retry_after_s: float | None) -> float:
    """The server's Retry-After if given, else exponential backoff with jitter; capped at max_backoff_s."""
    if retry_after_s is None:
      retry_after_s = self.config.backoff_s * 2 ** attempt * self._random.uniform(0.5, 1.5)
    return min(retry_after_s, self.config.max_backoff_s)

  def _api_key(self) -> str:
    key = os.environ.get(self.config.api_key_env, "").strip()
    if not key:
      env = self.config.api_key_env
      raise AxjaxError(f"the openai {self.role} needs an API key in ${env}; local servers that ignore keys accept any "
                       f"value, e.g. {env}=none")
    return key

  def _headers(self, key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "User-Agent": f"axjax-{self.role}"}

  def _refused(self, error: urllib.error.HTTPError) -> str:
    """One sentence for an HTTP status that retrying will not fix."""
    if error.code in (401, 403):
      return (f"the {self.role} server at {self._url} rejects the API key in ${self.config.api_key_env} "
              f"(HTTP {error.code})")
    return f"the {self.role} server at {self._url} answered HTTP {error.code} to {error.url}{_server_message(error)}"

  def _count(self, **increments: int) -> None:
    with self._lock:
      for name, value in increments.items():
        self._usage[name] += value


def _completion(data: bytes) -> CachedReply:
  """The message text and token counts of a chat-completion body; _Retry if the body is not one."""
  try:
    reply = json.loads(data)
    content = reply["choices"][0]["message"]["content"]
  except (ValueError, KeyError, IndexError, TypeError):
    raise _Retry("a reply that is not chat-completion JSON") from None
  if content is not None and not isinstance(content, str):
    raise _Retry("a reply that is not chat-completion JSON")
  usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
  tokens = [usage.get(k) if isinstance(usage.get(k), int) else 0 for k in ("prompt_tokens", "completion_tokens")]
  return CachedReply(content or "", *tokens)


def _retry_after_s(headers) -> float | None:
  """Seconds from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date); None if absent."""
  try:
    if headers.get("retry-after-ms"):
      return max(0.0, float(headers["retry-after-ms"]) / 1000)
    value = headers.get("Retry-After")
    if not value:
      return None
    try:
      return max(0.0, float(value))
    except ValueError:
      return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
  except (ValueError, TypeError):
    return None


def _describe(error: BaseException) -> str:
  """A few words on a network failure, for error sentences."""
  reason = error.reason if isinstance(error, urllib.error.URLError) else error
  if isinstance(reason, TimeoutError):
    return "timed out"
  if isinstance(reason, ConnectionRefusedError):
    return "connection refused"
  if isinstance(reason, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                         http.client.IncompleteRead)):
    return "connection dropped"
  return str(reason) or type(reason).__name__


def _server_message(error: urllib.error.HTTPError) -> str:
  """': <message>' from an OpenAI-style error body, or '' when there is none."""
  try:
    message = json.loads(error.read())["error"]["message"]
  except Exception:
    return ""
  return f": {' '.join(str(message).split())[:200]}"
