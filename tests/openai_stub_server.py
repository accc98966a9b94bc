"""A real HTTP server speaking OpenAI's chat-completions protocol, for judge and data-generation tests: deterministic
ratings (or scripted replies), injectable failures, and a log of every request with the peak number in flight."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import threading
import time
from typing import Callable

FAILURES = ("500", "429", "400", "sleep", "invalid_json", "not_completion", "no_rating", "drop")
COMPLETION_TOKENS = 9  # every reply claims this many completion tokens


def stub_rating(prompt: str) -> int:
  """The rating the stub gives a prompt: a hash, so tests know it without asking."""
  return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 3


def stub_prompt_tokens(prompt: str) -> int:
  return len(prompt.split())


@dataclasses.dataclass(frozen=True)
class Faults:
  """Which chat requests fail and how: the first `first` ones, plus every one whose prompt contains `marker`."""

  failure: str = "500"  # one of FAILURES
  first: int = 0
  marker: str | None = None
  retry_after: str | None = None  # Retry-After header sent with 429
  sleep_s: float = 1.0  # how long a "sleep" failure stalls before answering (make it exceed the client timeout)
  delay_s: float = 0.0  # every chat request waits this long, so concurrent ones overlap
  api_key: str | None = None  # when set, any other bearer key gets 401
  models_status: int = 200  # status of GET /v1/models

  def __post_init__(self):
    assert self.failure in FAILURES, self.failure


@dataclasses.dataclass
class Recorded:
  method: str
  path: str
  authorization: str | None
  body: dict | None
  failure: str | None  # the failure injected into this request, None if answered normally


class _Server(http.server.ThreadingHTTPServer):
  request_queue_size = 128  # the default backlog of 5 drops concurrent connects, costing clients a 1 s SYN retry


class StubServer:
  """`with StubServer(Faults(...)) as server:` serves on 127.0.0.1 at `server.url` (…/v1) until the block ends."""

  def __init__(self, faults: Faults = Faults(), reply: Callable[[str, dict], str] | None = None):
    """`reply(prompt, request body)` scripts the answers (default: a rating of `stub_rating`)."""
    self.faults, self.reply = faults, reply
    self.requests: list[Recorded] = []
    self.in_flight = 0
    self.max_in_flight = 0
    self._lock = threading.Lock()
    self._chat_count = 0
    self._httpd = _Server(("127.0.0.1", 0), _handler(self))
    self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

  def __enter__(self) -> StubServer:
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()

  def chat_requests(self) -> list[Recorded]:
    with self._lock:
      return [r for r in self.requests if r.path == "/v1/chat/completions"]

  def _chat_failure(self, prompt: str) -> str | None:
    """Counts a chat request and decides whether it fails."""
    with self._lock:
      self._chat_count += 1
      index = self._chat_count
    marked = self.faults.marker is not None and self.faults.marker in prompt
    return self.faults.failure if index <= self.faults.first or marked else None


def _completion(prompt: str, content: str) -> dict:
  return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": stub_prompt_tokens(prompt), "completion_tokens": COMPLETION_TOKENS,
                    "total_tokens": stub_prompt_tokens(prompt) + COMPLETION_TOKENS}}


def _handler(stub: StubServer) -> type[http.server.BaseHTTPRequestHandler]:
  faults = stub.faults

  class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
      pass

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
      try:
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
          self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
      except OSError:  # the client gave up (timed out) before the answer
        pass

    def _authorized(self) -> bool:
      if faults.api_key is None or self.headers.get("Authorization") == f"Bearer {faults.api_key}":
        return True
      self._send(401, json.dumps({"error": {"message": "Incorrect API key provided"}}).encode())
      return False

    def do_GET(self) -> None:
      with stub._lock:
        stub.requests.append(Recorded("GET", self.path, self.headers.get("Authorization"), None, None))
      if self.path != "/v1/models":
        self._send(404, b'{"error": {"message": "not found"}}')
      elif self._authorized():
        self._send(faults.models_status, json.dumps({"object": "list", "data": [{"id": "stub"}]}).encode())

    def do_POST(self) -> None:
      body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
      prompt = body["messages"][0]["content"]
      failure = stub._chat_failure(prompt) if self.path == "/v1/chat/completions" else None
      with stub._lock:
        stub.requests.append(Recorded("POST", self.path, self.headers.get("Authorization"), body, failure))
        stub.in_flight += 1
        stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
      try:
        time.sleep(faults.delay_s)
      finally:
        # Out of flight before the answer is written: once the client has it, it may send its next request
        # before this thread runs again, which would count one request twice.
        with stub._lock:
          stub.in_flight -= 1
      self._answer(prompt, body, failure)

    def _answer(self, prompt: str, body: dict, failure: str | None) -> None:
      if self.path != "/v1/chat/completions":
        self._send(404, b'{"error": {"message": "not found"}}')
      elif not self._authorized():
        pass
      elif failure == "drop":
        self.close_connection = True  # no status line at all: the client sees the connection close
      elif failure == "500":
        self._send(500, b'{"error": {"message": "internal error"}}')
      elif failure == "429":
        self._send(429, b'{"error": {"message": "rate limited"}}',
                   {} if faults.retry_after is None else {"Retry-After": faults.retry_after})
      elif failure == "400":
        self._send(400, json.dumps({"error": {"message": "The model `stub-judge` does not exist"}}).encode())
      elif failure == "invalid_json":
        self._send(200, b'{"choices": [{"message": ')
      elif failure == "not_completion":
        self._send(200, b'{"object": "list", "data": []}')
      elif failure == "no_rating":
        self._send(200, json.dumps(_completion(prompt, "I would rather not rate this.")).encode())
      else:
        if failure == "sleep":
          time.sleep(faults.sleep_s)
        content = (stub.reply(prompt, body) if stub.reply is not None else
                   f"The fragment was read carefully.\nRating: [[{stub_rating(prompt)}]]")
        self._send(200, json.dumps(_completion(prompt, content)).encode())

  return Handler
