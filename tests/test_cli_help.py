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


def test_tune_help_lists_flags_and_says_held_out():
  r = _run("ndpsim.tune", "--help")
  assert r.returncode == 0, r.stderr
  for flag in ("--models", "--system", "--num_ndp_units", "--num_seqs", "--prompt_len",
               "--output_len", "--routing", "--steps"):
    assert flag in r.stdout, flag
  assert "held-out" in r.stdout


@pytest.mark.parametrize("args,words", [
    (("--models=no-such-model",), ("unknown model 'no-such-model'", "path")),
    (("--num_seqs=0",), ("--num_seqs", "positive integer")),
    (("--train_seed=3", "--heldout_seed=3"), ("--train_seed", "different seeds")),
    (("--routing=nope",), ("routing preset",)),
])
def test_tune_bad_values_one_line_exit_2(args, words):
  r = _run("ndpsim.tune", *args)
  assert r.returncode == 2, (r.stdout, r.stderr)
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1, r.stderr
  for w in words:
    assert w in lines[0], lines[0]


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
def test_tune_runs_on_a_model_path_with_progress():
  r = _run("ndpsim.tune", f"--models={DATA / 'exp_tiny_model.json'}", "--num_seqs=1",
           "--prompt_len=4", "--output_len=2", "--steps=2", "--num_ndp_units=2",
           timeout=900)  # hang guard
  assert r.returncode == 0, r.stderr[-2000:]
  assert "[1/1] exp-tiny-moe: fitting (2 Adam steps" in r.stderr
  assert "held-out hard-mode means" in r.stdout
  row = [ln for ln in r.stdout.splitlines() if ln.startswith("| exp-tiny-moe |")]
  assert len(row) == 1 and "/ 275 |" in row[0], r.stdout


def test_probe_refuses_to_print_non_finite_numbers():
  r = _run("ndpsim.probe", "link", "--bytes=1e300", "--count=1e18")
  assert r.returncode == 2, r.stdout
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and "is not finite" in lines[0], r.stderr
  assert "Infinity" not in r.stdout and "NaN" not in r.stdout
