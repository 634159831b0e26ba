"""`python -m ndpsim.tune` and `python -m ndpsim.probe`: help exits 0 with the
flags, bad values give one line and exit 2 (issue 12), and (slow) a tune run
on a model *path* prints its progress and a held-out table."""
from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

DATA = pathlib.Path(__file__).parent / "data"


def _run(*args, timeout=900):  # hang guard
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                        timeout=timeout, check=False)


@pytest.mark.e2e
def test_tune_help_lists_flags_and_says_held_out():
  r = _run("ndpsim.tune", "--help")
  assert r.returncode == 0, r.stderr
  for flag in ("--models", "--system", "--num_ndp_units", "--num_seqs", "--prompt_len",
               "--output_len", "--routing", "--steps", "--out"):
    assert flag in r.stdout, flag
  assert "held-out" in r.stdout


@pytest.mark.parametrize("args,words", [
    (("--models=no-such-model",), ("unknown model 'no-such-model'", "path")),
    (("--num_seqs=0",), ("--num_seqs", "positive integer")),
    (("--train_seed=3", "--heldout_seed=3"), ("--train_seed", "different seeds")),
    (("--routing=nope",), ("routing preset",)),
    (("--out=/no/such/folder/tune.json",), ("--out", "does not exist")),
])
@pytest.mark.inputs
def test_tune_bad_values_one_line_exit_2(args, words):
  r = _run("ndpsim.tune", *args)
  assert r.returncode == 2, (r.stdout, r.stderr)
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1, r.stderr
  for w in words:
    assert w in lines[0], lines[0]


@pytest.mark.e2e
def test_tune_out_document_names_the_knobs_and_the_held_out_means():
  """--out's JSON: the workload, and per model the knobs by name and the
  held-out mean latencies (issue 12 item 3)."""
  import json  # pylint: disable=import-outside-toplevel
  from ndpsim import tune  # pylint: disable=import-outside-toplevel
  c = {"model": "m", "knobs": {"tuned": [0.5, 1.25, 0.75], "grid_best_on_train": [1, 1, 1],
                              "grid_best_on_heldout": [0.3, 0.5, 2.0]},
       "heldout_e2e_s": {"tp_lb_prefetch": 2.0, "tuned": 1.5, "grid_best_on_train": 1.75,
                         "grid_best_on_heldout": 1.4},
       "tuned_vs_heuristic": -0.25, "tuned_vs_grid_best": 0.07,
       "evaluations": {"tuner": 26, "grid": 275}, "wall_s": 3.0, "history": {"x": 1}}
  doc = json.loads(json.dumps(tune.result_document({"system": "s", "prompt_len": 4}, [c])))
  assert doc["workload"] == {"system": "s", "prompt_len": 4}
  m = doc["models"][0]
  assert m["knobs"]["tuned"] == {"resident_fraction": 0.5, "gpu_bias": 1.25, "ndp_bias": 0.75}
  assert m["knobs"]["grid_best_on_heldout"]["resident_fraction"] == 0.3
  assert m["heldout_mean_e2e_s"]["tuned"] == 1.5 and "history" not in m
  assert "held-out" in doc["heldout_mean_e2e_s"]


@pytest.mark.e2e
def test_probe_help_lists_subcommands_and_flags():
  r = _run("ndpsim.probe", "--help")
  assert r.returncode == 0, r.stderr
  for sub in ("dram", "ndp", "gpu", "link", "model", "routing"):
    assert f"  {sub} " in r.stdout, sub
  r = _run("ndpsim.probe", "gpu", "--help")
  assert r.returncode == 0, r.stderr
  assert "--preset" in r.stdout and "--op" in r.stdout
  r = _run("ndpsim.probe", "gpu", "--nope=1")
  assert r.returncode == 2 and "unknown flag --nope" in r.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_tune_runs_on_a_model_path_with_progress(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  out = tmp_path / "tune.json"
  r = _run("ndpsim.tune", f"--models={DATA / 'exp_tiny_model.json'}", "--num_seqs=1",
           "--prompt_len=4", "--output_len=2", "--steps=2", "--num_ndp_units=2",
           f"--out={out}", timeout=900)  # hang guard
  assert r.returncode == 0, r.stderr[-2000:]
  assert "[1/1] exp-tiny-moe: fitting (2 Adam steps" in r.stderr
  assert "exp-tiny-moe step 2/2: relaxed training e2e" in r.stderr  # per-step progress
  assert "held-out hard-mode means" in r.stdout
  header = [ln for ln in r.stdout.splitlines() if ln.startswith("| model |")][0]
  assert header.count("held-out s:") == 4, header  # every latency column says so
  row = [ln for ln in r.stdout.splitlines() if ln.startswith("| exp-tiny-moe |")]
  assert len(row) == 1 and "/ 275 |" in row[0], r.stdout
  assert "resident_fraction=" in row[0] and "ndp_bias=" in row[0]
  doc = json.loads(out.read_text())
  assert doc["workload"]["system"] == "paper_rtx5080_ndp_dimm"
  assert doc["workload"]["num_ndp_units"] == 2 and doc["workload"]["steps"] == 2
  m = doc["models"][0]
  assert m["model"] == "exp-tiny-moe"
  assert set(m["knobs"]["tuned"]) == {"resident_fraction", "gpu_bias", "ndp_bias"}
  assert set(m["heldout_mean_e2e_s"]) == {"tp_lb_prefetch", "tuned", "grid_best_on_train",
                                          "grid_best_on_heldout"}
  assert m["evaluations"]["grid"] == 275


@pytest.mark.inputs
def test_probe_refuses_to_print_non_finite_numbers():
  r = _run("ndpsim.probe", "link", "--bytes=1e300", "--count=1e18")
  assert r.returncode == 2, r.stdout
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and "--bytes x --count is inf bytes" in lines[0], r.stderr
  assert "Infinity" not in r.stdout and "NaN" not in r.stdout
