"""What every axjax entry point shares: absl flags, and bad input ending in one `error:` line, exit status 2."""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags, logging

from axjax.errors import AxjaxError


def run(main: Callable[[list[str]], None]) -> None:
  """Runs an absl `main`; an AxjaxError becomes one sentence on stderr instead of a traceback.

  Logging defaults to warnings and errors (Orbax logs every save step at INFO); --verbosity=0 shows INFO.
  """
  flags.FLAGS.set_default("verbosity", logging.WARNING)
  try:
    app.run(main)
  except AxjaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
