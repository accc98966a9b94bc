"""`python -m experiments.steer` end to end on a tiny model with a real judge server: a killed run, restarted,
ends with the same results as an uninterrupted one and pays no judge call twice; bad input fails fast."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from axjax.judges.base import RatingRequest
from axjax.judges.rubrics import prompts
from openai_stub_server import StubServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_ENV = "AXJAX_TEST_JUDGE_KEY"


def command(model, out, url, cache, *extra):
  return [sys.executable, "-m", "experiments.steer", f"--model={model}", "--layer=1", "--max_concepts=2",
          "--methods=DiffMean,PCA", "--factors=0.5,4", "--num_instructions=4", "--max_new_tokens=8",
          "--batch_size=4", "--judge=openai", "--judge_model=stub-judge", f"--judge_base_url={url}",
          f"--judge_api_key_env={KEY_ENV}", f"--judge_cache={cache}", f"--output_dir={out}", *extra]


def environment():
  return {**os.environ, KEY_ENV: "test-key", "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


def steer(*args, timeout=900):
  return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=environment())


def comparable(out):
  """results.json without what legitimately differs between runs (judge call counts)."""
  results = json.load(open(os.path.join(out, "results.json")))
  results["judge"].pop("usage")
  return results


def test_killed_run_resumes_to_identical_results(tiny_with_tokenizer, tmp_path):
  with StubServer() as server:
    whole = steer(*command(tiny_with_tokenizer, tmp_path / "whole", server.url, tmp_path / "whole.sqlite"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    calls_whole = len(server.chat_requests())
    rows = pd.read_parquet(tmp_path / "whole" / "steering" / "rows.parquet")
    table = rows.merge(pd.read_parquet(tmp_path / "whole" / "steering" / "generations.parquet"), on="row_id")
    distinct = {p for r in table.itertuples() for p in prompts(RatingRequest(r.concept, r.instruction, r.generation))}
    assert len(rows) == 2 * 2 * 2 * 4 and calls_whole == len(distinct)  # each distinct rubric prompt asked once
    for name in ("report.md", "results.json", "steering_factors.png", "detection_roc.png", "descriptions.json"):
      assert (tmp_path / "whole" / name).exists(), name
    assert "## Output-centric descriptions" in (tmp_path / "whole" / "report.md").read_text()

    out, cache = tmp_path / "killed", tmp_path / "killed.sqlite"
    process = subprocess.Popen(command(tiny_with_tokenizer, out, server.url, cache), cwd=REPO, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = out / "steering" / "generations"
    deadline = time.time() + 600
    while not (shards.exists() and any(p.suffix == ".parquet" for p in shards.iterdir())):
      assert process.poll() is None and time.time() < deadline, "the run ended before its first batch was written"
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "results.json").exists()
    done_before = len(list(shards.glob("part-*.parquet")))
    assert 0 < done_before < 8

    resumed = steer(*command(tiny_with_tokenizer, out, server.url, cache))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert comparable(out) == comparable(tmp_path / "whole")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "steering" / "generations.parquet"),
                                  pd.read_parquet(tmp_path / "whole" / "steering" / "generations.parquet"))

    before = len(server.chat_requests())
    again = steer(*command(tiny_with_tokenizer, out, server.url, cache))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(server.chat_requests()) == before  # every reply cached: a rerun costs no judge call
    assert json.load(open(out / "results.json"))["judge"]["usage"]["calls"] == 0


@pytest.mark.parametrize("flag, message", [
    ("--methods=DiffMean,Telepathy", "error: unknown method 'Telepathy'"),
    ("--layer=99", "error: layer 99"),
    ("--judge_base_url=http://127.0.0.1:9/v1", "error: the judge server at http://127.0.0.1:9/v1 refuses connections"),
    ("--judge_api_key_env=AXJAX_NO_SUCH_KEY", "error: the openai judge needs an API key in $AXJAX_NO_SUCH_KEY"),
    ("--baseline=LAT", "error: --baseline LAT is not among the steering methods ['DiffMean', 'PCA']"),
])
def test_bad_input_fails_fast_with_one_sentence(tiny_with_tokenizer, tmp_path, flag, message):
  with StubServer() as server:
    result = steer(*command(tiny_with_tokenizer, tmp_path / "x", server.url, tmp_path / "c.sqlite"), flag,
                   timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-500:]
  assert not (tmp_path / "x" / "steering").exists()


@pytest.mark.parametrize("width, model_name, message", [
    (64, "gemma-2-2b", "was trained on model 'gemma-2-2b', not "),
    (32, None, "has width 32 but the model's hidden size is 64"),
])
def test_dictionary_of_another_model_is_refused(tiny_with_tokenizer, tmp_path, width, model_name, message):
  import numpy as np

  import axjax

  name = model_name or axjax.load(tiny_with_tokenizer).name
  for method in ("DiffMean", "PCA"):
    axjax.save_dictionary(tmp_path / "earlier" / "dictionaries" / method, axjax.Dictionary(
        weights=np.ones((2, width), np.float32), biases=np.zeros(2), concept_ids=[0, 1], concept_names=["a", "b"],
        method=method, model_name=name, layer=1))
  with StubServer() as server:
    result = steer(*command(tiny_with_tokenizer, tmp_path / "x", server.url, tmp_path / "c.sqlite"),
                   f"--dictionaries={tmp_path / 'earlier'}", timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: dictionary {tmp_path / 'earlier' / 'dictionaries' / 'DiffMean'}") and message in last
  assert not (tmp_path / "x").exists()
