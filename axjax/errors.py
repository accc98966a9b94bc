"""Errors axjax raises for bad input: each carries one sentence naming the problem."""


class AxjaxError(ValueError):
  """Bad input to axjax: a wrong path, a malformed file, an argument out of range."""


class UnsupportedModelError(AxjaxError):
  """A checkpoint or config of an architecture axjax does not implement."""


class CheckpointError(AxjaxError):
  """A checkpoint that is missing, incomplete or inconsistent with its config."""
