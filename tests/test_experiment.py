"""The experiment binary and its studies, on a tiny model (a few seconds each).

The binary runs in subprocesses (its absl flags and, for the sharding test,
XLA_FLAGS must be its own); numbers are checked against direct
``engine.simulate`` calls made here.
"""
from __future__ import annotations

import csv
import json
import re
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from ndpsim import engine, policies, studies
from ndpsim.base import ConfigError
from ndpsim.hw import system as system_mod
from ndpsim.workload import models as M
from ndpsim.workload import routing as R
from tests.child_env import child_env

pytestmark = pytest.mark.e2e

DATA = pathlib.Path(__file__).parent / "data"
TINY = str(DATA / "exp_tiny_model.json")
P, T, S, N = 8, 4, 4, 2
POLS = ("monde", "tp_lb_prefetch")
TINY_FLAGS = [f"--models={TINY}", f"--policies={','.join(POLS)}", f"--prompt_len={P}",
              f"--output_len={T}", f"--num_seqs={S}", f"--num_ndp_units={N}",
              "--studies=headline"]


def _binary() -> list[str]:
  script = pathlib.Path(sys.executable).parent / "ndpsim-experiment"
  return [str(script)] if script.exists() else [sys.executable, "-m", "ndpsim.experiment"]


def _tiny_config(**kw) -> studies.StudyConfig:
  base = dict(models=(TINY,), policies=POLS, prompt_len=P, output_len=T, num_seqs=S,
              num_ndp_units=(N,), studies=("headline",))
  base.update(kw)
  return studies.StudyConfig(**base)


@pytest.fixture(scope="module")
def direct():
  """Direct engine.simulate calls reproducing the binary's documented inputs."""
  sysp = system_mod.load_system("paper_rtx5080_ndp_dimm", N)
  model = M.model_from_any(TINY)
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  spec = R.RoutingSpec(num_seqs=S, prompt_len=P, output_len=T, num_layers=L,
                       num_experts=E, top_k=k)
  params = R.preset("mixtral_8x7b", E, k)
  key = jax.random.PRNGKey(0)
  ev = R.generate(key, spec, params)
  pr = R.generate(jax.random.fold_in(key, 1), spec, params)
  prof = np.zeros((L, E), np.float32)
  for ids in (pr.prefill_ids, pr.decode_ids):
    for l in range(L):
      prof[l] += np.bincount(np.asarray(ids)[:, :, l].reshape(-1), minlength=E)
  out = {}
  for pol, budget in ((p, 1.0) for p in POLS):
    r = engine.simulate((sysp.spec, sysp.params), model, ev, pol,
                        policies.PolicyParams(resident_fraction=budget), profile_counts=prof)
    out[pol] = np.asarray(r.e2e_s, np.float64)
    out[f"{pol}:ttft"] = np.asarray(r.ttft_s, np.float64)
    out[f"{pol}:tpot"] = np.asarray(r.tpot_s, np.float64)
  r = engine.simulate((sysp.spec, sysp.params), model, ev, "tp_lb_prefetch",
                      policies.PolicyParams(resident_fraction=0.5), profile_counts=prof)
  out["tp_lb_prefetch@0.5"] = np.asarray(r.e2e_s, np.float64)
  return out


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
  """The binary interrupted (SIGINT) right after its first finished cell, then
  resumed.  The interrupt is deterministic: ``NDPSIM_INTERRUPT_AFTER_CELLS=1``
  makes the binary send itself SIGINT once its first cell is written (the
  same handler as a Ctrl-C), so no timing decides whether it lands."""
  out = tmp_path_factory.mktemp("exp")
  # The session's compilation cache (tests/conftest.py), shared with the
  # other binary runs and the direct calls; a folder of its own otherwise.
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or tmp_path_factory.mktemp("jaxcache")
  cmd = _binary() + TINY_FLAGS + [f"--out_dir={out}", f"--cache_dir={cache}"]
  r1 = subprocess.run(cmd, env=child_env(NDPSIM_INTERRUPT_AFTER_CELLS="1"), capture_output=True,
                      text=True, timeout=900)  # hang guard
  cells = out / "cells"
  first = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in cells.glob("*.json")}
  r2 = subprocess.run(cmd + ["--resume"], env=child_env(), capture_output=True, text=True,
                      timeout=900)  # hang guard
  return dict(out=out, rc1=r1.returncode, err1=r1.stderr, first=first, r2=r2, cache=cache)


def test_interrupted_run_keeps_cells_and_resume_skips_them(interrupted_run):
  run = interrupted_run
  assert run["rc1"] == 130, run["err1"][-2000:]
  assert "rerun with --resume" in run["err1"]
  assert len(run["first"]) == 1, run["first"].keys()  # stopped right after cell 1
  r2 = run["r2"]
  assert r2.returncode == 0, r2.stderr[-3000:]
  assert f"{len(POLS)} cells, {len(run['first'])} already finished" in r2.stderr
  # Issue 12: progress lines carry an estimate of the time left.
  assert re.search(rf"\[\s*{len(POLS)}/{len(POLS)} \d+:\d\d ETA ~0:00\] ", r2.stderr), \
      r2.stderr[-2000:]
  cells = run["out"] / "cells"
  for name, (mtime, text) in run["first"].items():  # skipped, not rewritten
    assert (cells / name).stat().st_mtime_ns == mtime
    assert (cells / name).read_text() == text
  assert len(list(cells.glob("*.json"))) == len(POLS)
  assert not list(cells.glob(".*tmp"))  # no half-written files left behind


def test_two_runs_write_byte_identical_results(interrupted_run, tmp_path):
  """Issue 13: the same settings give byte-identical results.json and
  results.csv -- here an interrupted-then-resumed run against a fresh one
  (the JAX cache of the first makes the second cheap); wall times live in
  timing.json."""
  first = interrupted_run["out"]
  out = tmp_path / "again"
  cmd = _binary() + TINY_FLAGS + [f"--out_dir={out}",
                                  f"--cache_dir={interrupted_run['cache']}"]
  r = subprocess.run(cmd, env=child_env(), capture_output=True, text=True,
                     timeout=900)  # hang guard
  assert r.returncode == 0, r.stderr[-2000:]
  for name in ("results.json", "results.csv", "requests.csv", "report.md"):
    assert (out / name).read_bytes() == (first / name).read_bytes(), name
  timing = json.loads((out / "timing.json").read_text())
  assert timing["total_wall_s"] > 0 and len(timing["cells"]) == len(POLS)
  assert all(c["wall_s"] > 0 for c in timing["cells"])
  assert "wall_s" not in (out / "results.csv").read_text().splitlines()[0].split(",")


def test_an_earlier_run_is_not_overwritten_silently(interrupted_run):
  """Issue 12: a folder holding an earlier run needs --resume or --overwrite."""
  out = interrupted_run["out"]
  before = (out / "results.json").read_bytes()
  for extra, says in (([], "holds an earlier run"), (["--resume", "--overwrite"], "keep one")):
    r = subprocess.run(_binary() + TINY_FLAGS + [f"--out_dir={out}"] + extra, env=child_env(),
                       capture_output=True, text=True, timeout=900)  # hang guard
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0], r.stderr
  assert (out / "results.json").read_bytes() == before


def test_binary_files_schema_and_numbers(interrupted_run, direct):
  out = interrupted_run["out"]
  assert interrupted_run["r2"].returncode == 0
  doc = json.loads((out / "results.json").read_text())
  cfgd = doc["config"]
  assert cfgd["ndpsim_version"]
  assert cfgd["systems"][str(N)]["name"] == "paper_rtx5080_ndp_dimm"
  assert cfgd["systems"][str(N)]["parts"]["gpu"] == "rtx5080"
  assert cfgd["routing"]["mixtral_8x7b"]["params"]["zipf_exponent"] == pytest.approx(
      float(R.preset("mixtral_8x7b", 8, 2).zipf_exponent))
  assert cfgd["flags"]["seed"] == 0 and cfgd["flags"]["num_seqs"] == S
  rows = doc["rows"]
  assert [r["policy"] for r in rows] == list(POLS)
  need = ("model", "policy", "num_ndp_units", "resident_fraction", "e2e_latency_s_mean",
          "e2e_latency_s_ci95", "ttft_s_mean", "tpot_s_mean", "speedup_vs_monde")
  for r in rows:
    assert all(k in r for k in need), sorted(r)
    assert r["model"] == "exp-tiny-moe" and r["num_ndp_units"] == N
    assert r["resident_fraction"] == 1.0
    assert r["ttft_s_mean"] < r["e2e_latency_s_mean"]
  by = {r["policy"]: r for r in rows}
  for pol in POLS:  # the binary's numbers are engine.simulate's
    e2e = direct[pol]
    assert by[pol]["e2e_latency_s_mean"] == pytest.approx(e2e.mean(), rel=1e-5)
    # Each field against the direct call's own field (not e2e against
    # ttft + T x tpot, which holds by the engine's definition of tpot).
    assert by[pol]["ttft_s_mean"] == pytest.approx(direct[f"{pol}:ttft"].mean(), rel=1e-5)
    assert by[pol]["tpot_s_mean"] == pytest.approx(direct[f"{pol}:tpot"].mean(), rel=1e-5)
    assert by[pol]["e2e_latency_s_ci95"] == pytest.approx(
        1.96 * e2e.std(ddof=1) / np.sqrt(S), rel=1e-3, abs=1e-12)
  want = direct["monde"].mean() / direct["tp_lb_prefetch"].mean()
  assert by["tp_lb_prefetch"]["speedup_vs_monde"] == pytest.approx(want, rel=1e-5)
  assert by["monde"]["speedup_vs_monde"] == 1.0
  summ = doc["summary"]["tp_lb_prefetch"]
  assert summ["mean_speedup"] == pytest.approx(want, rel=1e-5)
  assert summ["max_speedup"] == pytest.approx(want, rel=1e-5)
  with open(out / "results.csv") as f:
    crow = list(csv.DictReader(f))
  assert [c["policy"] for c in crow] == list(POLS)
  for c, r in zip(crow, rows):
    assert float(c["e2e_latency_s_mean"]) == pytest.approx(r["e2e_latency_s_mean"], rel=1e-9)
    assert float(c["speedup_vs_monde"]) == pytest.approx(r["speedup_vs_monde"], rel=1e-9)
  for png in ("speedup.png", "lane_breakdown.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "tp_lb_prefetch" in interrupted_run["r2"].stdout  # the printed table


WORKLOAD_WORDS = ("paper_rtx5080_ndp_dimm", f"{N} NDP units", f"{P} prompt + {T} output tokens",
                  "routing preset mixtral_8x7b", f"{S} sequences per cell, batch 1")


def test_report_and_plot_titles_state_the_workload(interrupted_run):
  """Issue 12 item 5: report.md and every plot title say what was simulated;
  the paper's number comes in its own section saying what it compares."""
  from ndpsim import experiment, plots  # pylint: disable=import-outside-toplevel
  out = interrupted_run["out"]
  report = (out / "report.md").read_text()
  first = report.splitlines()[0]
  assert first.startswith("Workload: ")
  for w in WORKLOAD_WORDS:
    assert w in first, (w, first)
  assert "## Comparison with the paper" in report and "over `monde`" in report
  doc = json.loads((out / "results.json").read_text())
  for png in doc["plots"]:
    title = plots.png_title(out / png)
    for w in WORKLOAD_WORDS:
      assert w in title, (png, w, title)
  # Without the headline study there is no paper paragraph.
  sweep_only = {**doc, "config": {**doc["config"], "studies": {"ndp_units": doc["config"][
      "studies"]["headline"]}}, "summary": {}, "summary_by_num_ndp_units": {}}
  text = experiment.format_tables(sweep_only)
  assert text.startswith("Workload: ") and "Comparison with the paper" not in text
  assert "2.41" not in text
  assert "Study ndp_units" in text


def test_requests_csv_has_one_row_per_cell_and_sequence(interrupted_run, direct):
  """Issue 12 item 5: requests.csv beside results.csv, one row per (cell,
  sequence) with TTFT, TPOT, e2e, bytes and hits -- the engine's own
  per-sequence values, averaging to the cell rows."""
  out = interrupted_run["out"]
  with open(out / "requests.csv") as f:
    req = list(csv.DictReader(f))
  assert list(req[0]) == ["model", "policy", "num_ndp_units", "resident_fraction", "routing",
                          "sequence_group", "sequences", "ttft_s", "tpot_s", "e2e_s",
                          "bytes_to_gpu", "bytes_to_ndp", "prefetched_bytes", "gpu_hits",
                          "gpu_misses"]
  assert [(r["policy"], r["sequences"]) for r in req] == [
      (p, str(i)) for p in POLS for i in range(S)]
  rows = {r["policy"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
  for pol in POLS:
    mine = [r for r in req if r["policy"] == pol]
    e2e = np.array([float(r["e2e_s"]) for r in mine])
    np.testing.assert_allclose(e2e, direct[pol], rtol=1e-5)
    for f in ("ttft", "tpot"):
      np.testing.assert_allclose([float(r[f"{f}_s"]) for r in mine], direct[f"{pol}:{f}"],
                                 rtol=1e-5, err_msg=f"{pol} {f}")
    assert np.mean([float(r["ttft_s"]) for r in mine]) == pytest.approx(
        rows[pol]["ttft_s_mean"], rel=1e-6)
    assert np.mean([float(r["bytes_to_gpu"]) for r in mine]) == pytest.approx(
        rows[pol]["bytes_to_gpu_mean"], rel=1e-6)
    assert all(float(r["gpu_hits"]) + float(r["gpu_misses"]) > 0 for r in mine)
  # The per-sequence values stay out of results.json / results.csv.
  assert studies.REQUESTS_KEY not in (out / "results.json").read_text()
  assert studies.REQUESTS_KEY not in (out / "results.csv").read_text()


def test_split_requests_names_the_sequences_of_each_batch():
  per = {f: [1.0, 2.0] for f in ("ttft_s", "tpot_s", "e2e_s", "bytes_to_gpu",
                                 "bytes_to_ndp", "prefetched_bytes", "gpu_hits",
                                 "gpu_misses")}
  row = {"model": "m", "policy": "p", "num_ndp_units": 2, "resident_fraction": 1.0,
         "routing": "r", "e2e_latency_s_mean": 1.5, studies.REQUESTS_KEY: per}
  rows, req = studies.split_requests([row], batch_size=4)
  assert rows == [{k: v for k, v in row.items() if k != studies.REQUESTS_KEY}]
  assert [(r["sequence_group"], r["sequences"], r["e2e_s"]) for r in req] == [
      (0, "0-3", 1.0), (1, "4-7", 2.0)]


def test_eta_is_the_mean_cell_time_times_the_cells_left():
  from ndpsim import experiment  # pylint: disable=import-outside-toplevel
  assert experiment.eta_text(done=2, total=10, skipped=0, elapsed_s=20.0) == "~1:20"
  assert experiment.eta_text(done=5, total=10, skipped=4, elapsed_s=3.0) == "~0:15"
  assert experiment.eta_text(done=3, total=3, skipped=3, elapsed_s=0.0) == "~?"
  assert experiment.eta_text(done=1, total=400, skipped=0, elapsed_s=30.0) == "~3:19:30"


# ---------------------------------------------------------------------------
# Bad input fails fast, with one line naming the flag.

@pytest.mark.parametrize("kw, flag", [
    (dict(models=("qwen3-30b-a3", )), "--models"),
    (dict(policies=("monde", "tp_lbb")), "--policies"),
    (dict(prefetch_policies=("nope",), studies=("prefetch",)), "--prefetch_policies"),
    (dict(studies=("headline", "speed")), "--studies"),
    (dict(resident_fractions=(0.5, 1.5), studies=("prefetch",)), "--resident_fractions"),
    (dict(resident_fraction=-0.1), "--resident_fraction"),
    (dict(num_ndp_units=(9,)), "--num_ndp_units"),
    (dict(num_ndp_units=(0,)), "--num_ndp_units"),
    (dict(models=("mixtral-8x7b",), num_ndp_units=(1,)), "--num_ndp_units"),
    (dict(overrides=("gpu.memory_capacity_bytes=1e8",)), "--set"),
    (dict(overrides=("gpu.no_such_field=3",)), "--set"),
    (dict(overrides=("bandwidth=3",)), "--set"),
    (dict(overrides=("system.num_ndp_units=3",)), "--set"),
    (dict(routing="zipfy"), "--routing"),
    (dict(routing="/nonexistent/trace.npz"), "--routing"),
    (dict(num_seqs=3, batch_size=2), "--num_seqs"),
    (dict(num_seqs=0), "--num_seqs"),
    (dict(prompt_len=-1), "--prompt_len"),
    (dict(dtype="fp7"), "--dtype"),
    (dict(system="rtx9090_box"), "--system"),
    (dict(routing_layout="decoder_batch"), "--routing_layout"),
    (dict(routing_layout="rows"), "--routing_layout"),
])
def test_bad_config_is_one_line_naming_the_flag(kw, flag):
  with pytest.raises(ConfigError) as e:
    studies.resolve(_tiny_config(**kw))
  msg = str(e.value)
  assert msg.startswith(flag + ":"), msg
  assert "\n" not in msg
  assert any(w in msg for w in ("write", "use", "give", "drop", "fields are")), msg


def test_platform_that_cannot_hold_the_model_says_so():
  with pytest.raises(ConfigError, match=r"--num_ndp_units: .*mixtral-8x7b.*GB"):
    studies.resolve(_tiny_config(models=("mixtral-8x7b",), num_ndp_units=(1,)))
  with pytest.raises(ConfigError, match=r"--models: .*GPU memory"):
    studies.resolve(_tiny_config(models=("mixtral-8x7b",), num_ndp_units=(4,),
                                 overrides=("gpu.memory_capacity_bytes=2e9",)))


@pytest.mark.parametrize("args, flag", [
    (["--num_seqs=abc"], "--num_seqs"),
    (["--models=olmoe-1b-7b,no-such-model"], "--models"),
    (["--num_ndp_units=2,x"], "--num_ndp_units"),
    (["--routing_layout=rows"], "--routing_layout"),
])
def test_binary_bad_flag_exits_2_with_one_line(args, flag, tmp_path):
  r = subprocess.run(_binary() + args + [f"--out_dir={tmp_path}"], env=child_env(),
                     capture_output=True, text=True, timeout=900)  # hang guard
  assert r.returncode == 2
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith("error: ") and flag in lines[0], lines[0]
  assert not list(tmp_path.iterdir())  # failed before writing anything


@pytest.mark.parametrize("old, new", [("--headline_budget=0.5", "--resident_fraction=0.5"),
                                      ("--prefetch_budgets=0,1", "--resident_fractions=0,1")])
def test_renamed_flags_are_refused_naming_the_new_one(old, new, tmp_path):
  """One name per knob (issue 11 item 4): the old budget flags do not work
  silently; one line names the flag to write instead, exit 2, nothing written."""
  r = subprocess.run(_binary() + TINY_FLAGS + [old, f"--out_dir={tmp_path}"], env=child_env(),
                     capture_output=True, text=True, timeout=900)  # hang guard
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, r.stderr
  assert f"{old.split('=')[0]} was renamed {new.split('=')[0]}" in lines[0], lines[0]
  assert f"write {new}" in lines[0], lines[0]
  assert not list(tmp_path.iterdir())


def test_binary_help_lists_the_flags_of_experiment_flags():
  """The flags live in ndpsim.experiment_flags; --help still lists them, from
  the console script and from ``python -m`` (absl's --help exits 1)."""
  for cmd in (_binary(), [sys.executable, "-m", "ndpsim.experiment"]):
    r = subprocess.run(cmd + ["--help"], env=child_env(), capture_output=True, text=True,
                       timeout=900)  # hang guard
    assert r.returncode in (0, 1), r.stderr[-2000:]
    for flag in ("--resident_fraction:", "--resident_fractions:", "--models:", "--set:",
                 "--headline_budget: renamed --resident_fraction"):
      assert flag in r.stdout, (cmd, flag)


def test_resident_fraction_and_set_keep_one_name_into_results_and_fingerprints(tmp_path):
  """``resident_fraction`` is the flag's, StudyConfig's, the cells', the rows',
  requests.csv's and the fingerprint's name; a ``--set`` value appears under its
  field's path in results.json and under "set" in the fingerprint (the name
  ``--resume`` reports)."""
  from ndpsim import experiment  # pylint: disable=import-outside-toplevel
  over = "gpu.memory_bandwidth_gbps=800"
  res = studies.resolve(_tiny_config(policies=("tp_lb_prefetch",), resident_fraction=0.5,
                                     overrides=(over,)))
  rows, requests = studies.split_requests(studies.run_cells(res, tmp_path), 1)
  doc = experiment.build_document(res, rows, None)
  assert doc["config"]["flags"]["resident_fraction"] == 0.5
  assert [c[3] for c in doc["config"]["studies"]["headline"]] == [0.5, 0.5]
  assert [r["resident_fraction"] for r in doc["rows"]] == [0.5, 0.5]
  assert [r["resident_fraction"] for r in requests] == [0.5] * 2 * S
  bw = doc["config"]["systems"][str(N)]["values"]["gpu.memory_bandwidth_gbps"]
  assert bw["value"] == 800 and bw["overridden"]
  keys = {*doc["config"]["flags"], *(k for r in rows for k in r), *requests[0]}
  assert not [k for k in keys if "budget" in k], sorted(keys)
  assert "resident_fraction" in experiment.rows_csv(rows).splitlines()[0].split(",")
  for c in res.all_cells():
    parts = studies.fingerprint_parts(res, c)
    assert parts[0]["set"] == [over] and parts[3]["resident_fraction"] == 0.5
    obj = json.loads(studies.cell_path(tmp_path, c).read_text())
    assert obj["fingerprint"] == studies.cell_fingerprint(res, c)
    assert obj["row"]["resident_fraction"] == 0.5
    assert studies.cell_fingerprint(res, c._replace(resident_fraction=0.25)) != (
        obj["fingerprint"])


@pytest.mark.parametrize("args, flag, says", [
    (["--out_dir="], "--out_dir", "empty"),
    (["--set=system.num_ndp_units=3", "--out_dir=out"], "--set", "--num_ndp_units=3"),
    (["--distributed", "--out_dir=out"], "--distributed", "--coordinator_address"),
    (["--out_dir=/proc/ndpsim_cannot_write_here"], "--out_dir", "cannot write"),
])
def test_binary_refuses_silent_fallbacks(args, flag, says, tmp_path):
  """An empty --out_dir would write into the current folder, and --set
  system.num_ndp_units would lose to --num_ndp_units while results.json records
  it: both are one line and exit 2, nothing written (issue 13)."""
  r = subprocess.run(_binary() + TINY_FLAGS + args, env=child_env(), cwd=tmp_path,
                     capture_output=True, text=True, timeout=900)  # hang guard
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, r.stderr
  assert lines[0].startswith(f"error: {flag}:") and says in lines[0], lines[0]
  assert not list(tmp_path.iterdir())


def test_load_system_refuses_two_different_unit_counts():
  with pytest.raises(ConfigError, match="disagree"):
    system_mod.load_system("paper_rtx5080_ndp_dimm", 4, {"system": {"num_ndp_units": 3}})
  s = system_mod.load_system("paper_rtx5080_ndp_dimm", 3, {"system": {"num_ndp_units": 3}})
  assert s.spec.num_ndp_units == 3


# ---------------------------------------------------------------------------
# In-process: resume logic, determinism, settings mismatch.

def test_resume_in_process_recomputes_only_unfinished_cells(tmp_path):
  res = studies.resolve(_tiny_config())
  events = []

  def stop_after_first(ev):
    events.append(ev)
    if ev["event"] == "cell":
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    studies.run_cells(res, tmp_path, progress=stop_after_first)
  assert len(list((tmp_path / "cells").glob("*.json"))) == 1
  events.clear()
  rows = studies.run_cells(res, tmp_path, resume=True, progress=events.append)
  assert events[0] == {"event": "start", "total": 2, "skipped": 1, "distrusted": []}
  assert [e["cell"].policy for e in events[1:]] == ["tp_lb_prefetch"]
  again = studies.run_cells(res, tmp_path / "fresh")  # same flags and seed
  for a, b in zip(rows, again):
    assert a["e2e_latency_s_per_group"] == b["e2e_latency_s_per_group"]
    assert a["speedup_vs_monde"] == b["speedup_vs_monde"]
  other = studies.resolve(_tiny_config(seed=1))
  with pytest.raises(ConfigError, match=r"^--resume: .*seed=0.*seed=1.*--seed"):
    studies.run_cells(other, tmp_path, resume=True)


def test_fingerprint_changes_with_hardware_override():
  a = studies.resolve(_tiny_config())
  b = studies.resolve(_tiny_config(overrides=("gpu.memory_bandwidth_gbps=800",)))
  c = a.all_cells()[0]
  assert studies.cell_fingerprint(a, c) != studies.cell_fingerprint(b, c)
  assert studies.cell_fingerprint(a, c) == studies.cell_fingerprint(
      studies.resolve(_tiny_config()), c)


# ---------------------------------------------------------------------------
# Sharding over 8 forced host devices gives the 1-device numbers.

_SHARD_SCRIPT = r"""
import json, sys, jax
from ndpsim import studies
cfg = studies.StudyConfig(models=(sys.argv[1],), policies=("tp_lb_prefetch",),
                          prompt_len=8, output_len=4, num_seqs=4, num_ndp_units=(2,),
                          studies=("headline",))
res = studies.resolve(cfg)
wl = studies.make_workload(res, "exp-tiny-moe", "mixtral_8x7b")
mesh = studies.device_mesh()
x = studies.shard_sequences(wl.prefill_ids, mesh, 1)
out = {"devices": jax.device_count(), "mesh": int(mesh.devices.size),
       "shard_devices": len(x.sharding.device_set), "padded": int(x.shape[0])}
r05, r1 = studies.simulate_sharded(res.systems[2], res.models["exp-tiny-moe"], wl,
                                   "tp_lb_prefetch", [0.5, 1.0], 1, mesh)
out["b0.5"] = [float(v) for v in r05.e2e_s]
out["b1"] = [float(v) for v in r1.e2e_s]
print("RESULT" + json.dumps(out))
"""


def test_eight_host_devices_match_one_device(direct):
  """Sequences sharded over 8 forced host devices (padded 4 -> 8), budgets under
  vmap: the same numbers as unsharded direct calls on 1 device."""
  r = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT, TINY], capture_output=True,
                     text=True, timeout=900,  # hang guard
                     env=child_env(xla_extra="--xla_force_host_platform_device_count=8"))
  assert r.returncode == 0, r.stderr[-3000:]
  line = [l for l in r.stdout.splitlines() if l.startswith("RESULT")][-1]
  out = json.loads(line[len("RESULT"):])
  assert out["devices"] == 8 and out["mesh"] == 8 and out["shard_devices"] == 8
  assert out["padded"] == 8  # 4 sequences padded to one per device
  np.testing.assert_allclose(out["b1"], direct["tp_lb_prefetch"], rtol=1e-6)
  np.testing.assert_allclose(out["b0.5"], direct["tp_lb_prefetch@0.5"], rtol=1e-6)


# ---------------------------------------------------------------------------
# The tuned policy: knobs fitted per model on a training set, then evaluated.

def test_tuned_policy_fits_on_training_set_and_evaluates_at_its_knobs(tmp_path):
  from ndpsim import experiment  # pylint: disable=import-outside-toplevel
  # A headline resident_fraction the fit leaves (the tiny model runs fastest
  # with every expert resident), so that the tuned row's value tells them apart.
  res = studies.resolve(_tiny_config(policies=("tp_lb_prefetch", "tuned"),
                                     resident_fraction=0.25))
  fits, events = {}, []
  rows = studies.run_cells(res, tmp_path, tuned_fits=fits, progress=events.append)
  key = ("exp-tiny-moe", "mixtral_8x7b", N)
  assert list(fits) == [key]
  fit = fits[key]
  assert fit["evaluations"] == 26 and fit["training"]["num_seqs"] == 2
  assert fit["training"]["routing"] == "fold_in(PRNGKey(0), 2)"
  assert fit["train_e2e_s"] <= fit["heuristic_train_e2e_s"] + 1e-12
  k = fit["knobs"]
  assert 0.0 <= k["resident_fraction"] <= 1.0 and k["gpu_bias"] > 0 and k["ndp_bias"] > 0
  assert [e["event"] for e in events][:2] == ["start", "tuned"]

  # The training set never overlaps the evaluation set.
  wl = studies.make_workload(res, "exp-tiny-moe", "mixtral_8x7b")
  train = studies.make_training(res, "exp-tiny-moe", "mixtral_8x7b")
  assert train.prefill_ids.shape == (2,) + wl.prefill_ids.shape[1:]
  assert not np.array_equal(train.prefill_ids, wl.prefill_ids[:2])

  # The tuned row is the engine at the fitted knobs on the evaluation set.
  row = {r["policy"]: r for r in rows}["tuned"]
  sysp = res.systems[N]
  r = engine.simulate((sysp.spec, sysp.params), res.models["exp-tiny-moe"],
                      R.Routing(wl.prefill_ids, None, wl.decode_ids, None), "tuned",
                      policies.PolicyParams(**k), profile_counts=wl.profile_counts)
  np.testing.assert_allclose(row["e2e_latency_s_per_group"], np.asarray(r.e2e_s),
                             rtol=1e-6)
  # The row says which knobs it ran at: the fitted resident_fraction, not the
  # headline one (issue 11 item 4), under the one name (no param_ copy).
  assert res.config.resident_fraction == 0.25 and k["resident_fraction"] != 0.25
  assert row["resident_fraction"] == pytest.approx(k["resident_fraction"])
  assert "param_resident_fraction" not in row
  assert row["param_gpu_bias"] == pytest.approx(k["gpu_bias"])
  assert row["param_ndp_bias"] == pytest.approx(k["ndp_bias"])
  assert {r["policy"]: r for r in rows}["tp_lb_prefetch"]["resident_fraction"] == 0.25
  # The row is still found as its cell's (the summaries select it).
  assert studies.select(rows, res.cells["headline"]) == rows

  # results.json lists the fit per model; the report prints it.
  doc = experiment.build_document(res, rows, None, fits)
  assert doc["tuned"]["exp-tiny-moe"][0]["knobs"] == k
  assert "## tuned: knobs fitted" in experiment.format_tables(doc)
  json.dumps(doc)

  # --resume reuses the fit file (no refit) and the finished cells.
  path = studies.tuned_fit_path(tmp_path, *key)
  mtime = path.stat().st_mtime_ns
  fits2 = {}
  rows2 = studies.run_cells(res, tmp_path, resume=True, tuned_fits=fits2)
  assert path.stat().st_mtime_ns == mtime and fits2[key] == fit
  assert [r["e2e_latency_s_mean"] for r in rows2] == [r["e2e_latency_s_mean"] for r in rows]


def test_tuned_is_not_a_budget_sweep_policy():
  with pytest.raises(ConfigError, match="--prefetch_policies"):
    studies.resolve(_tiny_config(studies=("prefetch",), prefetch_policies=("tuned",)))
  with pytest.raises(ConfigError, match="--tune_num_seqs"):
    studies.resolve(_tiny_config(tune_num_seqs=3, batch_size=2))


def _write_layer_folder(folder, num_layers=4, num_experts=8, seqs=4, tokens=P + T, seed=0):
  """A FLAME/DynaNDE-style trace for the tiny model: one CSV per layer (layer
  number in the file name), dense router probabilities (top-k taken on load)."""
  rng = np.random.default_rng(seed)
  folder.mkdir()
  for layer in range(num_layers):
    rows = ["layer_id,token_id," + ",".join(f"expert_{e}" for e in range(num_experts))]
    for t in range(seqs * tokens):
      p = rng.random(num_experts)
      p[np.argsort(p)[:num_experts - 3]] = 0.0  # three non-zero scores per token
      rows.append(f"0,{t}," + ",".join(f"{x:.6f}" for x in p / p.sum()))
    (folder / f"tiny_layer{layer}_encoder.csv").write_text("\n".join(rows) + "\n\n")


def test_routing_takes_a_folder_or_glob_of_per_layer_files(tmp_path):
  """--routing accepts the per-layer folders public simulators ship (issue 12):
  resolved as a trace, its dense rows cut to the model's top-k, labelled by
  the folder (or the glob), with the trace's sequences split profile/evaluate."""
  folder = tmp_path / "layers"
  _write_layer_folder(folder)
  for src, label in ((str(folder), "layers"), (str(folder / "*.csv"), str(folder / "*.csv"))):
    res = studies.resolve(_tiny_config(routing=src, num_seqs=None))
    assert res.routing_sources == {label: src}, res.routing_sources
    assert res.num_seqs == 2 and (res.prompt_len, res.output_len) == (P, T)
    wl = studies.make_workload(res, "exp-tiny-moe", label)
    assert wl.prefill_ids.shape == (2, P, 4, 2)
    ids = np.concatenate([wl.prefill_ids.reshape(-1, 2), wl.decode_ids.reshape(-1, 2)])
    assert np.all(ids[:, 0] != ids[:, 1])  # top-2 of each row, distinct
  with pytest.raises(ConfigError, match="--routing: "):
    studies.resolve(_tiny_config(routing=str(tmp_path / "no_such_folder")))


def test_resume_recomputes_tampered_or_unreadable_cells_and_reports_them(tmp_path):
  """Issue 13: a cell whose numbers were edited, or that is junk, is never
  trusted on --resume (nor a reason to crash): recomputed, and reported."""
  import json as _json  # pylint: disable=import-outside-toplevel
  res = studies.resolve(_tiny_config())
  first = studies.run_cells(res, tmp_path)
  files = sorted((tmp_path / "cells").glob("*.json"))
  assert len(files) == 2
  obj = _json.loads(files[0].read_text())
  obj["row"]["e2e_latency_s_mean"] *= 10  # an edited number, digest left as it was
  files[0].write_text(_json.dumps(obj))
  files[1].write_text("[]")                # junk
  (tmp_path / "run_settings.json").write_text('{"seed": ')  # truncated
  events = []
  again = studies.run_cells(res, tmp_path, resume=True, progress=events.append)
  start = events[0]
  assert start["skipped"] == 0, start
  why = dict(start["distrusted"])
  assert "digest" in why[files[0].name] and "no row" in why[files[1].name], why
  assert [e["cell"].policy for e in events[1:]] == [c.policy for c in res.all_cells()]
  for a, b in zip(first, again):
    assert a["e2e_latency_s_mean"] == b["e2e_latency_s_mean"]
  # Rewritten cells are trusted again.
  events.clear()
  studies.run_cells(res, tmp_path, resume=True, progress=events.append)
  assert events[0]["skipped"] == 2 and events[0]["distrusted"] == []
  # A plain file where the cells folder belongs: one line naming --out_dir.
  other = tmp_path / "other"
  other.mkdir()
  (other / "cells").write_text("not a folder")
  with pytest.raises(ConfigError, match=r"^--out_dir: its cells folder .* is a file"):
    studies.run_cells(res, other, resume=True)


def test_a_setting_float32_cannot_carry_is_refused_before_running(tmp_path):
  """Issue 13: a setting the float64 validator accepted but the float32 engine
  cannot carry (a link of 1e-40 GB/s gave inf/NaN latencies) is refused by
  its hard range in one line naming the field, the value and the range,
  before any cell runs (study_io.check_finite stays the last guard:
  tests/test_fuzz.py)."""
  with pytest.raises(ConfigError, match=r"^--set: .*params\.bandwidth_gbps is 1e-40, "
                     r"outside what the float32 engine can carry \(1e-6 to 1e9 GB/s\)"
                     ) as e:
    studies.resolve(_tiny_config(overrides=("link.bandwidth_gbps=1e-40",)))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "cells").exists()


def test_every_model_that_does_not_fit_is_reported_at_once_with_a_fix_that_works():
  """Issue 12: all pairs that do not fit in one line, each with the unit count
  it needs and, past the platform's limit, the override that raises it -- and
  following the advice makes the configuration resolve."""
  kw = dict(models=("mixtral-8x7b", "phi-3.5-moe"), num_ndp_units=(1,))
  with pytest.raises(ConfigError) as e:
    studies.resolve(_tiny_config(**kw))
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("--num_ndp_units: ")
  assert "'mixtral-8x7b' at 1 NDP units" in msg and "'phi-3.5-moe' at 1 NDP units" in msg
  need = int(re.search(r"'mixtral-8x7b'.*?write --num_ndp_units >= (\d+)", msg).group(1))
  studies.resolve(_tiny_config(**{**kw, "num_ndp_units": (need,)}))
  capped = dict(models=("mixtral-8x7b",), num_ndp_units=(1,),
                overrides=("system.max_ndp_units=1",))
  with pytest.raises(ConfigError) as e:
    studies.resolve(_tiny_config(**capped))
  fix = re.search(r"--set (system\.max_ndp_units=\d+)", str(e.value))
  assert fix, str(e.value)
  studies.resolve(_tiny_config(**{**capped, "num_ndp_units": (need,),
                                  "overrides": (fix.group(1),)}))


DECODER_BATCH = DATA / "traces" / "dynande_decoder_batch"


def _decoder_batch_model(tmp_path) -> str:
  """The tiny model reshaped to the shipped decoder-batch example: 2 MoE
  layers, 16 experts, top-3."""
  spec = json.loads(pathlib.Path(TINY).read_text())
  spec.update(name="exp-tiny-moe-16x3", num_layers=2, num_experts=16, top_k=3)
  path = tmp_path / "tiny16x3.json"
  path.write_text(json.dumps(spec))
  return str(path)


def test_routing_layout_decides_how_a_decoder_batch_folder_loads(tmp_path):
  """Issue 12: --routing_layout=decoder_batch reads the DynaNDE decoder folder
  (one folder per token position, token_id = request) as requests x positions;
  under the default layout the same folder is refused naming the flag."""
  from ndpsim.workload import traces  # pylint: disable=import-outside-toplevel
  model = _decoder_batch_model(tmp_path)
  kw = dict(models=(model,), routing=str(DECODER_BATCH), prompt_len=2, output_len=1,
            num_seqs=None)
  with pytest.raises(ConfigError) as e:
    studies.resolve(_tiny_config(**kw))
  assert str(e.value).startswith("--routing: ") and "--routing_layout=decoder_batch" in str(
      e.value), str(e.value)
  res = studies.resolve(_tiny_config(**kw, routing_layout="decoder_batch"))
  assert res.num_seqs == 2 and (res.prompt_len, res.output_len) == (2, 1)  # 4 requests
  assert studies.fingerprint_fields(res)["routing_layout"] == "decoder_batch"
  label = studies.routing_label(str(DECODER_BATCH))
  wl = studies.make_workload(res, "exp-tiny-moe-16x3", label)
  tr = traces.load_csv(str(DECODER_BATCH), top_k=3, prompt_len=2, layout="decoder_batch")
  # Requests 2, 3 evaluate (0, 1 profile MoNDE); position t of request s is token t.
  np.testing.assert_array_equal(wl.prefill_ids, np.asarray(tr.prefill_ids)[2:])
  np.testing.assert_array_equal(wl.decode_ids, np.asarray(tr.decode_ids)[2:])
  assert wl.prefill_ids.shape == (2, 2, 2, 3) and wl.decode_ids.shape == (2, 1, 2, 3)
  assert studies.resolved_config(res)["routing"][label]["layout"] == "decoder_batch"
  # The default layout keeps earlier runs' fingerprints.
  assert "routing_layout" not in studies.fingerprint_fields(studies.resolve(_tiny_config()))


def test_binary_routing_layout_flag_reaches_the_trace_reader(tmp_path):
  """The flag, end to end up to the point a run would start: the default
  layout refuses the decoder folder naming the flag; with it the trace loads
  (4 requests: 2 evaluation sequences, so --num_seqs=3 is refused by count)."""
  model = _decoder_batch_model(tmp_path)
  base = _binary() + [f"--models={model}", f"--routing={DECODER_BATCH}", "--prompt_len=2",
                      "--output_len=1", "--policies=monde", "--num_ndp_units=2",
                      "--studies=headline", "--num_seqs=3", f"--out_dir={tmp_path / 'o'}"]
  for extra, says in (([], "--routing_layout=decoder_batch"),
                      (["--routing_layout=decoder_batch"], "holds 2 evaluation sequences")):
    r = subprocess.run(base + extra, env=child_env(), capture_output=True, text=True,
                       timeout=900)  # hang guard
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0], r.stderr
