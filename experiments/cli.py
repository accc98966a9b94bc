"""What every axjax entry point shares: absl flags, and bad input ending in one `error:` line, exit status 2."""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags, logging
import jax
from tqdm.auto import tqdm

from axjax import atomic_files, processes
from axjax.errors import AxjaxError

# The flag every experiment that writes results names its results folder with.
OUTPUT_DIR_FLAG = "output_dir"
_PRECISION = flags.DEFINE_enum(
    "matmul_precision", "default", ["default", "high", "highest"],
    "Precision of the model's float32 matmuls on GPU/TPU: 'default' is the backend's fast mode (TF32 on NVIDIA, "
    "bf16 passes on TPU), 'highest' full float32. The CPU always computes in full float32. Detection scores, "
    "latents, closed-form statistics and probe logits are computed at full precision whatever this says.")


def run(main: Callable[[list[str]], None]) -> None:
  """Runs an absl `main`; an AxjaxError becomes one sentence on stderr instead of a traceback.

  A program defining `--output_dir` has a given folder checked first (usable or creatable; nothing is created),
  so a bad output path fails before any data or model loading. Folders are created by `axjax.atomic_files`,
  which raises AxjaxError too, so a default or later-made output folder fails in one sentence as well.
  Logging defaults to warnings and errors (Orbax logs every save step at INFO); --verbosity=0 shows INFO.
  """
  def quiet_main(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # absl's app.run ignores a changed default of this flag
    if _PRECISION.value != "default":
      jax.config.update("jax_default_matmul_precision", _PRECISION.value)
    if OUTPUT_DIR_FLAG in flags.FLAGS and flags.FLAGS[OUTPUT_DIR_FLAG].value:
      atomic_files.check_output_dir(flags.FLAGS[OUTPUT_DIR_FLAG].value)
    main(argv)

  try:
    app.run(quiet_main)
  except AxjaxError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def say(text: str) -> None:
  """Prints `text` on process 0 only (in a multi-host job every process runs the same program)."""
  if processes.is_writer():
    print(text, flush=True)


def progress_bars() -> Callable[[str, int, int], None]:
  """A progress callback `(stage, done, total)` drawing one tqdm bar per stage (on process 0 only)."""
  bars: dict[str, tqdm] = {}

  def progress(stage: str, done: int, total: int) -> None:
    if stage not in bars:
      bars[stage] = tqdm(total=total, desc=stage, disable=not processes.is_writer())
    bars[stage].update(done - bars[stage].n)
    if done >= total:
      bars[stage].close()

  return progress
