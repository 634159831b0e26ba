"""Timeline export (``ndpsim/trace.py``, ``engine.simulate(record=True)``).

A trace is checked as a viewer would read it -- Chrome Trace Event Format:
``ph: "X"`` slices with ``ts``/``dur`` in microseconds on named ``pid``/``tid``
tracks -- and against the engine: per-track busy sums, TTFT and end-to-end
latency equal a plain (``record=False``) ``SimResult`` of the same sequence.
Tiny model and short sequences except one default-platform, default-model
trace.
"""
from __future__ import annotations

import collections
import functools
import json
import math
import pathlib

import numpy as np
import pytest

from ndpsim import engine, trace
from ndpsim.base import ConfigError
from ndpsim.hw import system as system_mod
from ndpsim.workload import model_io
from ndpsim.workload import models as M
from ndpsim.workload import routing as R

TINY = pathlib.Path(__file__).parent / "data" / "exp_tiny_model.json"
SEQS, PROMPT, OUTPUT = 2, 8, 3
RTOL = 1e-6
F32 = 2.0 ** -24  # float32 rounding, relative
META = {"process_name", "thread_name", "process_sort_index", "thread_sort_index"}


@functools.lru_cache(maxsize=None)
def _system(units: int = 4):
  s = system_mod.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=units)
  return s.spec, s.params


def _routing(model, seqs: int, prompt: int, output: int, seed: int = 3) -> R.Routing:
  """k distinct experts per token and layer, skewed per layer so that some
  experts repeat (hits, prefetch use), NumPy only (no generator compile)."""
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  rng = np.random.default_rng(seed)
  logits = -1.5 * np.log(np.arange(1, E + 1))[rng.permutation(E)][None, None, None, :]
  logits = logits + rng.gumbel(size=(seqs, prompt + output, L, E))
  ids = np.argsort(-logits, axis=-1)[..., :k].astype(np.int32)
  return R.Routing(ids[:, :prompt], None, ids[:, prompt:], None)


@functools.lru_cache(maxsize=None)
def _tiny_case(policy: str, plain_run: bool):
  """(trace as loaded back from JSON, SimResult of the traced sequence as
  float64 numpy, traced sequence).  ``plain_run``: the SimResult comes from a
  separate ``record=False`` simulate of every sequence (one more compile);
  else from the trace's own run (``otherData.result``)."""
  model = model_io.model_from_any(TINY)
  r = _routing(model, SEQS, PROMPT, OUTPUT)
  seq = 1
  tr = json.loads(json.dumps(trace.timeline(_system(), model, r, policy, seq=seq)))
  if not plain_run:
    return tr, _own_result(tr), seq
  plain = engine.simulate(_system(), model, r, policy)
  plain = {f: np.asarray(getattr(plain, f), np.float64) for f in (
      "ttft_s", "e2e_s", "step_s", "gpu_busy_s", "ndp_unit_busy_s", "link_to_gpu_busy_s",
      "link_to_ndp_busy_s", "bytes_to_gpu", "bytes_to_ndp")}
  return tr, {k: v[seq] for k, v in plain.items()}, seq


def _own_result(tr) -> dict:
  """The SimResult of the trace's own (record=True) run, from otherData; the
  decode step latencies are not stored there, so the step spans stand in."""
  o = tr["otherData"]["result"]
  steps = [e["dur"] / 1e6 for e in _slices(tr)
           if e["cat"] == "step" and e["args"]["phase"] == "decode"]
  return dict(o, step_s=np.array(steps))


def _slices(tr):
  return [e for e in tr["traceEvents"] if e["ph"] == "X"]


def _track_names(tr) -> dict:
  """{(pid, tid): "process / thread"} from the metadata events."""
  procs = {e["pid"]: e["args"]["name"] for e in tr["traceEvents"]
           if e["ph"] == "M" and e["name"] == "process_name"}
  return {(e["pid"], e["tid"]): f"{procs[e['pid']]} / {e['args']['name']}"
          for e in tr["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}


def check_schema(tr) -> None:
  """What a Chrome/Perfetto trace viewer needs, and slices that never overlap
  on one track."""
  assert set(tr) >= {"traceEvents", "displayTimeUnit", "otherData"}
  assert isinstance(tr["traceEvents"], list) and tr["traceEvents"]
  for e in tr["traceEvents"]:
    assert e["ph"] in ("X", "M"), e
    assert isinstance(e["name"], str) and e["name"], e
    assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
    assert isinstance(e["args"], dict), e
    if e["ph"] == "M":
      assert e["name"] in META, e
      key = "name" if e["name"].endswith("_name") else "sort_index"
      assert key in e["args"], e
      continue
    assert isinstance(e["cat"], str) and e["cat"], e
    for k in ("ts", "dur"):
      assert isinstance(e[k], (int, float)) and math.isfinite(e[k]), e
    assert e["ts"] >= 0.0 and e["dur"] > 0.0, e
  names = _track_names(tr)
  by_track = collections.defaultdict(list)
  for e in _slices(tr):
    by_track[(e["pid"], e["tid"])].append(e)
  assert set(by_track) <= set(names), f"slices on unnamed tracks: {set(by_track) - set(names)}"
  for key, evs in by_track.items():
    for a, b in zip(evs, evs[1:]):
      assert b["ts"] >= a["ts"] + a["dur"], (names[key], a, b)
  e2e_us = max(e["ts"] + e["dur"] for e in _slices(tr))
  # Starts moved to the previous slice's end only by float32 clock rounding.
  assert 0.0 <= tr["otherData"]["max_start_shift_us"] <= 1e-6 * e2e_us


def busy_us(tr) -> dict:
  """Summed ``dur`` (us) and ``bytes`` per (track name, category)."""
  names = _track_names(tr)
  out = collections.defaultdict(float)
  for e in _slices(tr):
    out[(names[(e["pid"], e["tid"])], e["cat"])] += e["dur"]
    out[(names[(e["pid"], e["tid"])], e["cat"], "bytes")] += e["args"].get("bytes", 0.0)
  return out


def check_sums(tr, plain: dict, units: int) -> None:
  """Slice sums against a SimResult of the same sequence (float64).

  Ends (TTFT, e2e, step spans) within 1e-6.  The engine sums busy times in
  float32, one addition per layer: they carry up to (layers run) x 2^-24
  relative rounding, which the tolerance of the sums allows (1e-6 on the
  tiny runs)."""
  b = busy_us(tr)
  n_layers = sum(1 for e in _slices(tr) if e["cat"] == "layer")
  sum_rtol = max(RTOL, n_layers * F32)
  close = lambda got_us, want_s, what, rtol=sum_rtol: np.testing.assert_allclose(
      got_us, want_s * 1e6, rtol=rtol, atol=1e-9, err_msg=what)
  gpu = sum(v for k, v in b.items() if len(k) == 2 and k[0] == "GPU / compute"
            and k[1] != "overhead")
  close(gpu, plain["gpu_busy_s"], "GPU busy")
  for u in range(units):
    close(b[(f"NDP units / NDP unit {u}", "expert_ndp")], plain["ndp_unit_busy_s"][u],
          f"NDP unit {u} busy")
  close(b[("Link / to GPU", "demand_load")] + b[("Link / to GPU", "return")],
        plain["link_to_gpu_busy_s"], "link to GPU busy")
  close(b[("Link / to NDP", "broadcast")], plain["link_to_ndp_busy_s"], "link to NDP busy")
  np.testing.assert_allclose(b[("Link / to GPU", "demand_load", "bytes")]
                             + b[("Link / to GPU", "return", "bytes")],
                             plain["bytes_to_gpu"], rtol=sum_rtol)
  np.testing.assert_allclose(b[("Link / to NDP", "broadcast", "bytes")],
                             plain["bytes_to_ndp"], rtol=sum_rtol)
  ends = [e["ts"] + e["dur"] for e in _slices(tr)]
  pre = [e["ts"] + e["dur"] for e in _slices(tr) if e["args"].get("phase") == "prefill"]
  close(max(pre), plain["ttft_s"], "TTFT = end of the last prefill slice", RTOL)
  close(max(ends), plain["e2e_s"], "e2e = end of the last slice", RTOL)
  steps = [e for e in _slices(tr) if e["cat"] == "step" and e["args"]["phase"] == "decode"]
  close(np.array([e["dur"] for e in steps]), plain["step_s"], "decode step spans", RTOL)


def check_layers(tr) -> None:
  """GPU and NDP slices lie inside their layer's span; the GPU slices of a
  layer end where the engine's closed-form GPU lane ends."""
  key = lambda e: (e["args"]["phase"], e["args"].get("step"), e["args"]["layer"])
  layers = {key(e): e for e in _slices(tr) if e["cat"] == "layer"}
  assert layers
  gpu_end = collections.defaultdict(lambda: -np.inf)
  for e in _slices(tr):
    if e["cat"] in ("layer", "step", "overhead") or e["pid"] == trace.LINK_PID:
      continue
    lay = layers[key(e)]
    tol = 1e-6 * (lay["ts"] + lay["dur"])
    assert lay["ts"] - tol <= e["ts"] and e["ts"] + e["dur"] <= lay["ts"] + lay["dur"] + tol, (
        e, lay)
    if e["pid"] == trace.GPU_PID and e["cat"] != "reduction":
      gpu_end[key(e)] = max(gpu_end[key(e)], e["ts"] + e["dur"])
  for k, end in gpu_end.items():
    np.testing.assert_allclose(end, layers[k]["args"]["gpu_lane_end_s"] * 1e6, rtol=RTOL,
                               err_msg=str(k))


@pytest.mark.policy
@pytest.mark.parametrize("policy", ["tp_lb_prefetch", "monde"])
def test_trace_schema_and_slice_sums_match_simresult(policy):
  """TP with prefetch (GPU/NDP split, background loads) and MoNDE (demand
  loads, EP on the units): schema, sums, TTFT, e2e, layer containment.  The
  first against a separate record=False run, the second against its own."""
  tr, plain, seq = _tiny_case(policy, policy == "tp_lb_prefetch")
  check_schema(tr)
  check_sums(tr, plain, units=4)
  check_layers(tr)
  cats = {e["cat"] for e in _slices(tr)}
  assert {"attention", "expert_ndp", "broadcast", "return", "reduction", "layer",
          "step"} <= cats
  assert "expert_gpu" in cats
  # The paper's framework loads in the background; MoNDE copies on demand.
  assert ("prefetch" in cats) == (policy == "tp_lb_prefetch")
  assert ("demand_load" in cats) == (policy == "monde")
  # MoNDE copies its hot experts for one use: none stays resident.
  assert not any(e["args"]["kept"] for e in _slices(tr) if e["cat"] == "demand_load")
  o = tr["otherData"]
  assert (o["policy"], o["seq"], o["output_len"]) == (policy, seq, OUTPUT)
  steps = [e for e in _slices(tr) if e["cat"] == "step"]
  assert [e["name"] for e in steps] == ["prefill"] + [f"decode step {t}"
                                                      for t in range(OUTPUT)]
  # Layer spans and the per-step overhead tile [0, e2e]; summary() reads them.
  s = trace.summary(tr)
  L = 4
  assert (s["prefill"]["layers"], s["decode"]["layers"]) == (L, L * OUTPUT)
  over = sum(e["dur"] for e in _slices(tr) if e["cat"] == "overhead")
  np.testing.assert_allclose(L * s["prefill"]["mean_us_per_layer"]["layer"] + L * OUTPUT
                             * s["decode"]["mean_us_per_layer"]["layer"] + over,
                             plain["e2e_s"] * 1e6, rtol=RTOL)


@pytest.mark.e2e
def test_plot_layer_writes_a_png_and_names_a_missing_layer(tmp_path):
  tr, _, _ = _tiny_case("tp_lb_prefetch", True)
  for step in (None, OUTPUT - 1):
    p = trace.plot_layer(tr, tmp_path / f"l{step}.png", 3, step=step)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ConfigError, match=f"no decode layer 3 in step {OUTPUT}; give"):
    trace.plot_layer(tr, tmp_path / "x.png", 3, step=OUTPUT)


@pytest.mark.policy
def test_record_does_not_change_the_result():
  """The same sequence with record on (the trace's otherData) and off (a
  plain simulate of every sequence) gives the same numbers."""
  tr, plain, _ = _tiny_case("tp_lb_prefetch", True)
  got = tr["otherData"]["result"]
  for f in ("ttft_s", "e2e_s", "gpu_busy_s", "link_to_gpu_busy_s", "link_to_ndp_busy_s",
            "bytes_to_gpu", "bytes_to_ndp"):
    np.testing.assert_allclose(got[f], plain[f], rtol=RTOL, err_msg=f)
  np.testing.assert_allclose(got["ndp_unit_busy_s"], plain["ndp_unit_busy_s"], rtol=RTOL)


@pytest.mark.e2e
def test_default_platform_model_trace_file_loads_with_the_expected_tracks(tmp_path):
  """A default-study sequence (default platform, Qwen3-30B-A3B, the paper's
  framework; short lengths) written to a file: valid JSON with the GPU, every
  NDP unit and both link directions, 48 layer spans per step, sums as above."""
  model = M.get_model("qwen3-30b-a3b")
  r = _routing(model, 1, 4, 2)
  path = trace.write(tmp_path / "qwen3.json",
                     trace.timeline(_system(), model, r, "tp_lb_prefetch"))
  tr = json.loads(path.read_text())
  check_schema(tr)
  names = set(_track_names(tr).values())
  assert {"GPU / compute", "GPU / layers", "GPU / steps", "Link / to GPU",
          "Link / to NDP"} | {f"NDP units / NDP unit {u}" for u in range(4)} <= names
  used = {_track_names(tr)[(e["pid"], e["tid"])] for e in _slices(tr)}
  assert {"GPU / compute", "Link / to NDP"} | {f"NDP units / NDP unit {u}"
                                               for u in range(4)} <= used
  layers = collections.Counter(e["args"].get("step", -1) for e in _slices(tr)
                               if e["cat"] == "layer")
  assert layers == {-1: 48, 0: 48, 1: 48}
  check_sums(tr, _own_result(tr), units=4)


@pytest.mark.inputs
def test_bad_trace_requests_name_the_field():
  model = model_io.model_from_any(TINY)
  r = _routing(model, SEQS, PROMPT, OUTPUT)
  with pytest.raises(ConfigError, match=r"seq is 2; write a sequence index in \[0, 2\)"):
    trace.timeline(_system(), model, r, "tp_lb", seq=2)
  with pytest.raises(ConfigError, match=r"'oracle' is a lower bound"):
    trace.timeline(_system(), model, r, "oracle")
  with pytest.raises(ConfigError, match=r"record=True needs the hard engine"):
    engine.simulate(_system(), model, r, "tp_lb", record=True, relaxed=True)


def _tiny_study(**kw):
  from ndpsim import studies  # pylint: disable=import-outside-toplevel
  base = dict(models=(str(TINY),), policies=("monde", "tp_lb_prefetch"), prompt_len=PROMPT,
              output_len=OUTPUT, num_seqs=SEQS, num_ndp_units=(4,), studies=("headline",))
  base.update(kw)
  return studies.resolve(studies.StudyConfig(**base))


@pytest.mark.inputs
def test_study_trace_request_is_checked_before_the_run(tmp_path):
  """The binary's --trace_out / --trace_cell / --trace_seq, checked on a
  resolved study (nothing simulated): one error naming the flag each."""
  res = _tiny_study()
  out = tmp_path / "t.json"
  trace.check_request(res, out, "", 0)
  assert tuple(trace.pick_cell(res, ""))[:2] == ("exp-tiny-moe", "monde")
  assert trace.pick_cell(res, "exp-tiny-moe, tp_lb_prefetch").policy == "tp_lb_prefetch"
  for spec, says in (("exp-tiny-moe", "write MODEL,POLICY"),
                     ("exp-tiny-moe,ndp_ep", "not a cell of this study; write one of "
                                             "exp-tiny-moe,monde, exp-tiny-moe,tp_lb_prefetch")):
    with pytest.raises(ConfigError, match=f"^--trace_cell: .*{says}"):
      trace.check_request(res, out, spec, 0)
  with pytest.raises(ConfigError, match=r"^--trace_seq: 2; write a sequence index in \[0, 2\)"):
    trace.check_request(res, out, "", 2)
  with pytest.raises(ConfigError, match="is a folder; give a file name"):
    trace.check_request(res, tmp_path, "", 0)
  with pytest.raises(ConfigError, match="does not exist; create it"):
    trace.check_request(res, tmp_path / "no" / "t.json", "", 0)


@pytest.mark.e2e
def test_binary_trace_flag_without_trace_out_exits_2(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  r = subprocess.run([sys.executable, "-m", "ndpsim.experiment", f"--models={TINY}",
                      "--studies=headline", "--trace_cell=exp-tiny-moe,monde",
                      f"--out_dir={tmp_path}"], capture_output=True, text=True,
                     timeout=600, check=False)  # hang guard
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines() == [
      "error: --trace_cell/--trace_seq: given without --trace_out; add "
      "--trace_out=FILE.json or leave them out"]


@pytest.mark.e2e
@pytest.mark.slow
def test_binary_trace_out_writes_the_cells_sequence(tmp_path):
  """``--trace_out`` on a tiny study (two binary runs, several compiles): the trace of
  the default cell (the first: monde, with its auto-tuned alphas) and of a
  named one match the rows' per-sequence e2e latency, and pass the checks."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  base = [sys.executable, "-m", "ndpsim.experiment", f"--models={TINY}",
          "--policies=tp_lb_prefetch", f"--prompt_len={PROMPT}", f"--output_len={OUTPUT}",
          f"--num_seqs={SEQS}", "--num_ndp_units=4", "--studies=headline", "--plots=false",
          f"--cache_dir={tmp_path / 'cache'}"]
  for i, (cell, seq, policy) in enumerate(((None, 0, "monde"),
                                           ("exp-tiny-moe,tp_lb_prefetch", 1,
                                            "tp_lb_prefetch"))):
    out = tmp_path / f"t{i}.json"
    extra = [f"--trace_out={out}", f"--trace_seq={seq}", f"--out_dir={tmp_path / str(i)}"]
    extra += [f"--trace_cell={cell}"] if cell else []
    r = subprocess.run(base + extra, capture_output=True, text=True, timeout=1800,
                       check=False)  # hang guard
    assert r.returncode == 0, r.stderr[-2000:]
    tr = json.loads(out.read_text())
    check_schema(tr)
    check_sums(tr, _own_result(tr), units=4)
    assert (tr["otherData"]["policy"], tr["otherData"]["seq"]) == (policy, seq)
    doc = json.loads((tmp_path / str(i) / "results.json").read_text())
    with open(tmp_path / str(i) / "requests.csv") as f:
      import csv  # pylint: disable=import-outside-toplevel
      req = [q for q in csv.DictReader(f) if q["policy"] == policy]
    assert doc["rows"]
    np.testing.assert_allclose(tr["otherData"]["result"]["e2e_s"],
                               float(req[seq]["e2e_s"]), rtol=RTOL)
