"""`python -m experiments.generate_data` end to end against a real OpenAI-compatible server with scripted replies
(`generation_script`): every template asked, the contrast filter, unusable replies retried then skipped, AxBench's
schema read back by axjax and pandas, 429/500/timeouts survived, a killed run resumed to identical files, the folder
trained on by experiments.detect; bad input refused in one sentence with nothing written."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd

import generation_script as script
from axjax.data.axbench_format import BUILTIN_ROOT, read_axbench
from axjax.generation.sampling import SamplingConfig
from axjax.generation.text import generate_text
from openai_stub_server import Faults, StubServer, stub_prompt_tokens

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_ENV = "AXJAX_TEST_LLM_KEY"
SHIPPED = BUILTIN_ROOT / "concept10" / "prod_2b_l20_v1"
CONCEPTS = [script.CODE, script.BROKEN, script.TEXT, script.FLAKY]  # ids 0-3; 1 is skipped
OUTPUTS = ["generate/metadata.jsonl", "generate/train_data.parquet", "inference/latent_eval_data.parquet",
           "generate/summary.json", "generate/pool.json"]


def environment(**extra):
  return {**os.environ, KEY_ENV: "test-key", "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
          **extra}


def command(concepts, out, url, cache, model="gemma-3-270m", *extra):
  return [sys.executable, "-m", "experiments.generate_data", f"--concepts={concepts}", f"--output_dir={out}",
          f"--model={model}", "--llm=openai", "--llm_model=stub", f"--llm_base_url={url}",
          f"--llm_api_key_env={KEY_ENV}", f"--llm_cache={cache}", "--num_of_examples=8", "--latent_num_of_examples=4",
          "--output_length=24", "--retries=1", *extra]


def run(args, timeout=900, **env):
  return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env=environment(**env))


def concept_file(tmp_path, concepts=CONCEPTS, name="concepts.txt"):
  path = tmp_path / name
  path.write_text("".join(f"{c}\n" for c in concepts))
  return path


def asked(server):
  """(template, fields, draw) of every chat request the server answered."""
  out = []
  for r in server.chat_requests():
    if r.failure is None:
      name, fields = script.template_of(r.body["messages"][0]["content"])
      out.append((name, fields, r.body["seed"] - script.SEED))
  return out


def test_generated_folder_has_axbench_schema_and_trains_with_detect(embedded, tmp_path):
  """The CI-sized offline run: the embedded model as target, the scripted server as LLM."""
  out = tmp_path / "data"
  with StubServer(reply=script.reply) as server:
    done = run(command(concept_file(tmp_path), out, server.url, tmp_path / "llm.sqlite", "gemma-3-270m",
                       "--mode=train,latent,pairs", "--pair_tokens=12"))
    assert done.returncode == 0, done.stderr[-3000:]
    requests = asked(server)
  assert {name for name, _, _ in requests} == set(script.PATTERNS) - {"T_RESPONSE"}  # every template AxBench uses
  assert any(f.get("CONCEPT") == script.FLAKY and draw == 1 for name, f, draw in requests)  # the retry
  assert "skipped: concept 1 (train): 4 of 4 responses with the concept stayed empty after 1 retries" in done.stdout

  data = read_axbench(str(out))
  assert [(c.concept_id, c.name, c.genre) for c in data.concepts] == [
      (0, script.CODE, "code"), (2, script.TEXT, "text"), (3, script.FLAKY, "text")]
  train = pd.read_parquet(out / "generate" / "train_data.parquet")
  assert train["concept_id"].value_counts().to_dict() == {-1: 12, 0: 4, 2: 4, 3: 4}
  assert (train[train["concept_id"] == 3]["output"].str.startswith(f"Here is {script.FLAKY}")).all()
  evals = pd.read_parquet(out / "inference" / "latent_eval_data.parquet")
  counts = evals.groupby(["concept_id", "category"]).size().to_dict()
  assert counts == {(0, "negative"): 4, (0, "positive"): 4, (2, "hard negative"): 1, (2, "negative"): 4,
                    (2, "positive"): 4, (3, "hard negative"): 1, (3, "negative"): 4, (3, "positive"): 4}
  hard = evals[evals["category"] == "hard negative"].iloc[0]
  assert hard["output_concept"] == f"lease//{script.MEANINGS['lease']}"  # hire (<NONE>), brolly (one word) dropped
  assert hard["output"] == "The lease here means a new lease of life: ren"  # tags and final period stripped
  for part in ("generate/train_data.parquet", "inference/latent_eval_data.parquet"):
    ours, theirs = pd.read_parquet(out / part), pd.read_parquet(SHIPPED / part)
    assert ours.dtypes.to_dict() == theirs.dtypes.to_dict(), part
  assert not set(evals["input"]) & set(train["input"])  # the test split is held out

  pairs = pd.read_parquet(out / "generate" / "dpo_train_data.parquet")
  positives = pairs[pairs["category"] == "positive"]
  assert len(positives) == 12 and (pairs[pairs["category"] == "negative"].eval("winning_output == losing_output")).all()
  first = positives.iloc[0]
  assert first["losing_output"] == generate_text(embedded, [first["input"]],
                                                 sampling=SamplingConfig(12, temperature=0.0))[0]

  summary = json.loads((out / "generate" / "summary.json").read_text())
  assert [s["concept_id"] for s in summary["skipped"]] == [1, 1]
  usage = [json.loads(line) for line in (out / "generate" / "llm_usage.jsonl").read_text().splitlines()]
  assert [u["mode"] for u in usage] == ["train", "latent", "pairs"]
  assert sum(u["calls"] for u in usage) == len(requests)
  assert sum(u["prompt_tokens"] for u in usage) == sum(
      stub_prompt_tokens(r.body["messages"][0]["content"]) for r in server.chat_requests())

  detected = run([sys.executable, "-m", "experiments.detect", f"--data={out}", "--layer=6", "--methods=DiffMean",
                  f"--output_dir={tmp_path / 'detect'}"])
  assert detected.returncode == 0, detected.stderr[-3000:]
  report = json.loads((tmp_path / "detect" / "detection.json").read_text())
  assert [c["concept_id"] for c in report["DiffMean"]["concepts"]] == [0, 2, 3]


def test_killed_run_resumes_to_identical_files_through_server_failures(tiny_with_tokenizer, tmp_path):
  concepts = concept_file(tmp_path)
  with StubServer(Faults(failure="500", first=3), reply=script.reply) as server:
    whole = run(command(concepts, tmp_path / "whole", server.url, tmp_path / "whole.sqlite", tiny_with_tokenizer))
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert sum(r.failure == "500" for r in server.chat_requests()) == 3  # each retried

  out = tmp_path / "killed"
  slow = Faults(failure="429", first=2, retry_after="0", delay_s=0.2)
  with StubServer(slow, reply=script.reply) as server:
    process = subprocess.Popen(command(concepts, out, server.url, tmp_path / "killed.sqlite", tiny_with_tokenizer,
                                       "--llm_concurrency=1"), cwd=REPO, env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "generate" / "concepts" / "000000.json"
    deadline = time.time() + 600
    while not first.exists():
      assert process.poll() is None and time.time() < deadline, "the run ended before its first concept"
      time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
  records = sorted(p.name for p in (out / "generate" / "concepts").iterdir() if p.suffix == ".json")
  assert 1 <= len(records) < 4 and not (out / "inference").exists()
  stamp = first.stat().st_mtime_ns

  timeouts = Faults(failure="sleep", first=2, sleep_s=2.0)
  with StubServer(timeouts, reply=script.reply) as server:
    resumed = run(command(concepts, out, server.url, tmp_path / "killed.sqlite", tiny_with_tokenizer,
                          "--llm_timeout_s=0.5"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r.failure for r in server.chat_requests()][:2] == ["sleep", "sleep"]  # timed out, then retried
    genres_asked = [f["CONCEPT"] for name, f, _ in asked(server) if name == "T_DETERMINE_GENRE"]
  assert script.CODE not in genres_asked  # the finished concept is not redone
  assert first.stat().st_mtime_ns == stamp
  for part in OUTPUTS:
    if part.endswith(".parquet"):
      pd.testing.assert_frame_equal(pd.read_parquet(out / part), pd.read_parquet(tmp_path / "whole" / part))
    else:
      assert (out / part).read_text() == (tmp_path / "whole" / part).read_text(), part


def closed_port_url():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def listing(folder):
  return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*")) if folder.exists() else None


def test_bad_input_is_one_sentence_and_writes_nothing(tiny_with_tokenizer, tmp_path):
  (tmp_path / "empty.txt").write_text("\n\n")
  (tmp_path / "concepts.yaml").write_text("- a\n")
  duplicated = concept_file(tmp_path, [script.CODE, script.TEXT, script.CODE], "twice.txt")
  good = concept_file(tmp_path, [script.CODE])
  url = closed_port_url()
  out = tmp_path / "out"
  cases = [
      (tmp_path / "empty.txt", {}, [], "lists no concepts"),
      (duplicated, {}, [], f"lists the concept {script.CODE!r} twice (entries 1 and 3)"),
      (tmp_path / "concepts.yaml", {}, [], "is not a concept list axjax reads"),
      (good, {}, ["--mode=train,guess"], "--mode train,guess is not a list of train, latent, pairs"),
      (good, {}, [], f"the LLM server at {url} refuses connections"),
      (good, {KEY_ENV: ""}, [], f"the openai LLM needs an API key in ${KEY_ENV}"),
  ]
  for concepts, env, extra, sentence in cases:
    done = run(command(concepts, out, url, tmp_path / "llm.sqlite", tiny_with_tokenizer, *extra), **env)
    assert done.returncode == 2 and sentence in done.stderr, (sentence, done.stderr[-2000:])
    assert done.stderr.count("\n") == 1 and not out.exists(), sentence

  with StubServer(reply=script.reply) as server:
    early = run(command(good, out, server.url, tmp_path / "llm.sqlite", tiny_with_tokenizer, "--mode=latent"))
    assert early.returncode == 2 and f"concept 0 ({script.CODE!r}) has no training data in {out} yet: run " \
        "--mode=train first" in early.stderr and not out.exists(), early.stderr[-2000:]
    first = run(command(good, out, server.url, tmp_path / "llm.sqlite", tiny_with_tokenizer, "--mode=train"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = listing(out)
    other = concept_file(tmp_path, [script.TEXT], "other.txt")
    refused = run(command(other, out, server.url, tmp_path / "llm.sqlite", tiny_with_tokenizer))
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"{out} was generated for another concept list (1 concepts, first {script.CODE!r})" in refused.stderr
    changed = run([*command(good, out, server.url, tmp_path / "llm.sqlite", tiny_with_tokenizer, "--seed=7"),
                   f"--llm={server.url}"])  # the endpoint given as --llm itself
    assert changed.returncode == 2 and "was generated with seed=42, not 7" in changed.stderr
    assert listing(out) == before


def test_a_local_model_can_be_the_llm(tiny_with_tokenizer, tmp_path):
  """Offline generation with an axjax model as the LLM (here a tiny random one: its replies are noise, but every
  step runs through axjax's batched generation and the folder is complete)."""
  out = tmp_path / "local"
  done = run([sys.executable, "-m", "experiments.generate_data", f"--concepts={concept_file(tmp_path, [script.TEXT])}",
              f"--output_dir={out}", f"--model={tiny_with_tokenizer}", f"--llm={tiny_with_tokenizer}",
              "--llm_max_tokens=6", "--num_of_examples=4", "--latent_num_of_examples=2", "--output_length=8"])
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.loads((out / "generate" / "summary.json").read_text())
  entry = summary["concepts"][0]
  assert entry["train"] == {"positives": 2} or "skipped" in entry["train"]  # noise may be empty after stripping
  assert entry["latent"] is not None  # the latent steps ran too
  settings = json.loads((out / "generate" / "generation.json").read_text())
  assert settings["llm"] == f"local:{os.path.basename(tiny_with_tokenizer)}"
  assert not (out / "generate" / "llm_usage.jsonl").exists()  # no endpoint, nothing to bill


def test_pairs_refuse_a_folder_whose_concepts_were_all_skipped(tmp_path):
  from axjax.data_generation import run_state
  from axjax.data_generation.concept_lists import ListedConcept
  from axjax.data_generation.generator import Job, generate_pairs
  from axjax.errors import AxjaxError

  concepts = [ListedConcept("cats", None), ListedConcept("rain", None)]
  for cid in range(len(concepts)):
    run_state.write_record(str(tmp_path), "train", cid, {"skipped": "2 of 72 responses were empty"})
  job = Job(str(tmp_path), concepts, model=None, writer=None, seeds={})
  try:
    generate_pairs(job)
  except AxjaxError as error:
    assert str(error) == f"{tmp_path} has no training data to pair: every concept was skipped in training"
  else:
    raise AssertionError("generate_pairs wrote pairs with no training data")
  assert not (tmp_path / "generate" / "dpo_train_data.parquet").exists()
