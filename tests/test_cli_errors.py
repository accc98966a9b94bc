"""Bad output paths end every CLI with one `error:` line naming the path (exit status 2), never a traceback."""

import os
import re
import subprocess
import sys

import pytest

from axjax import atomic_files
from axjax.errors import AxjaxError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(module, *flags, cwd=REPO, timeout=300):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def exactly(text):
  return f"^{re.escape(text)}$"


def starts(text):
  return f"^{re.escape(text)}"


def assert_one_error_line(result, *names):
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == errors[0]
  for name in names:
    assert str(name) in errors[0], errors[0]
  return errors[0]


@pytest.fixture
def existing_file(tmp_path):
  path = tmp_path / "results.txt"
  path.write_bytes(b"keep me\n")
  os.utime(path, (1_000_000_000, 1_000_000_000))
  return path


def assert_unchanged(path):
  assert path.read_bytes() == b"keep me\n" and os.stat(path).st_mtime == 1_000_000_000


@pytest.mark.parametrize("module", ["experiments.detect", "experiments.steer"])
def test_output_dir_that_is_a_file(module, existing_file):
  """Answered before any data or model loading (the shared CLI wrapper checks --output_dir first)."""
  line = assert_one_error_line(run_cli(module, f"--output_dir={existing_file}"), existing_file)
  assert line == f"error: {existing_file} exists and is not a directory"
  assert_unchanged(existing_file)
  assert os.listdir(existing_file.parent) == [existing_file.name]


@pytest.mark.parametrize("module", ["experiments.detect", "experiments.steer"])
def test_output_dir_under_a_file(module, existing_file):
  target = existing_file / "run1" / "out"
  line = assert_one_error_line(run_cli(module, f"--output_dir={target}"), target, existing_file)
  assert line == f"error: cannot create directory {target}: {existing_file} is not a directory"
  assert_unchanged(existing_file)


def test_default_output_dir_refused_when_first_written(tiny_with_tokenizer, tmp_path):
  """No --output_dir: the default folder under ./checkpoints is made by atomic_files, which raises AxjaxError."""
  blocker = tmp_path / "checkpoints"
  blocker.write_bytes(b"keep me\n")
  os.utime(blocker, (1_000_000_000, 1_000_000_000))
  result = run_cli("experiments.detect", f"--model={tiny_with_tokenizer}", "--layer=1", "--max_concepts=1",
                   "--methods=DiffMean", cwd=tmp_path)
  line = assert_one_error_line(result, blocker)
  assert line.startswith("error: cannot create directory checkpoints/detect-") and "is not a directory" in line
  assert_unchanged(blocker)


# The shared helpers the CLIs rely on.

def test_check_output_dir_creates_nothing(tmp_path, existing_file):
  atomic_files.check_output_dir(str(tmp_path))  # an existing folder
  atomic_files.check_output_dir(str(tmp_path / "a" / "b"))  # creatable
  assert sorted(os.listdir(tmp_path)) == [existing_file.name]
  with pytest.raises(AxjaxError, match=exactly(f"{existing_file} exists and is not a directory")):
    atomic_files.check_output_dir(str(existing_file))
  under = f"cannot create directory {existing_file}/x: {existing_file} is not a directory"
  with pytest.raises(AxjaxError, match=exactly(under)):
    atomic_files.check_output_dir(str(existing_file / "x"))


def test_writes_into_bad_folders_raise_axjax_error(tmp_path, existing_file):
  with pytest.raises(AxjaxError, match=exactly(f"{existing_file} exists and is not a directory")):
    atomic_files.make_dirs(str(existing_file))
  under = f"cannot create directory {existing_file}/d: {existing_file} is not a directory"
  with pytest.raises(AxjaxError, match=exactly(under)):
    atomic_files.write_json(str(existing_file / "d" / "run.json"), {"a": 1})
  with pytest.raises(AxjaxError, match=exactly(f"{existing_file} exists and is not a directory")):
    atomic_files.write_text(str(existing_file / "summary.md"), "x")
  (tmp_path / "folder").mkdir()
  with pytest.raises(AxjaxError, match=exactly(f"cannot write {tmp_path / 'folder'}: it is a directory")):
    atomic_files.write_text(str(tmp_path / "folder"), "x")
  assert_unchanged(existing_file)
  assert sorted(os.listdir(tmp_path)) == ["folder", existing_file.name]  # no temporary files left behind
  assert os.listdir(tmp_path / "folder") == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_permission_denied(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  denied = f"cannot create directory {locked}/out: {locked} is not writable"
  try:
    with pytest.raises(AxjaxError, match=starts(denied)):
      atomic_files.check_output_dir(str(locked / "out"))
    with pytest.raises(AxjaxError, match=starts(denied)):
      atomic_files.write_json(str(locked / "out" / "run.json"), {})
    with pytest.raises(AxjaxError, match=starts(f"directory {locked} is not writable")):
      atomic_files.check_output_dir(str(locked))
    with pytest.raises(AxjaxError, match=starts(f"cannot write {locked}/run.json: ")):
      atomic_files.write_json(str(locked / "run.json"), {})
  finally:
    locked.chmod(0o700)
