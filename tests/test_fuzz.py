"""Fuzz tier (issue 13 item 7): bad inputs of every kind -- random bytes,
truncations, wrong dtypes, out-of-range ids, absurd magnitudes, wrong units --
against every reader (hardware presets, model JSON, HF config.json, trace
CSV and .npz, cell files and run_settings.json of ``--resume``, ``--set``
values, routing ids given to the engine).  The Python API answers each with
one ``ConfigError`` line (a cell file: recomputed with a one-line reason,
never trusted, never a crash); the binary with one line on stderr and exit
status 2.  Deterministic (fixed numpy seeds); no simulation is compiled.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ndpsim import config, engine, studies, study_io
from ndpsim.base import ConfigError
from ndpsim.hw import system as system_mod
from ndpsim.workload import models as M
from ndpsim.workload import traces
from tests.child_env import child_env

pytestmark = pytest.mark.inputs

DATA = pathlib.Path(__file__).parent / "data"
TINY = str(DATA / "exp_tiny_model.json")
HF = str(DATA / "hf_mixtral_config.json")
CSV = str(DATA / "small_trace.csv")
NPZ = str(DATA / "small_trace.npz")
SEED = 20261129
KINDS = ("gpu", "link", "ndp", "dram", "system")


def _one_line(fn, *args, **kw) -> str:
  """Runs ``fn``; it must raise ConfigError with a one-line message."""
  with pytest.raises(ConfigError) as e:
    fn(*args, **kw)
  msg = str(e.value)
  assert msg and "\n" not in msg, msg
  assert "Traceback" not in msg
  return msg


def _accept_or_one_line(fn, *args, **kw):
  """Runs ``fn``: it may succeed, or raise ConfigError with a one-line message;
  nothing else (no other exception type, no multi-line message)."""
  try:
    return fn(*args, **kw)
  except ConfigError as e:
    assert "\n" not in str(e), str(e)
    return None


def _preset_text(kind: str) -> str:
  name = config.available(kind)[0]
  return (config.config_root() / config.folder_of(kind) / f"{name}.json").read_text()


def _bad_bytes(rng: np.random.Generator, good: bytes, n: int = 6) -> list[bytes]:
  """Random bytes, random truncations and random single-byte corruptions of
  ``good`` (truncations stop before the last closing brace or byte)."""
  out = [rng.bytes(int(rng.integers(1, 600))) for _ in range(n)]
  out += [good[:int(rng.integers(0, len(good) - 1))] for _ in range(n)]
  for _ in range(n):
    b = bytearray(good)
    b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
    out.append(bytes(b))
  return out


# ---------------------------------------------------------------------------
# Hardware presets.

@pytest.mark.parametrize("kind", KINDS)
def test_preset_files_of_random_bytes_and_truncations(tmp_path, kind):
  rng = np.random.default_rng(SEED)
  good = _preset_text(kind).encode()
  for i, blob in enumerate(_bad_bytes(rng, good)):
    p = tmp_path / f"bad{i}.json"
    p.write_bytes(blob)
    if i < 12:  # random bytes and truncations are never a valid preset
      _one_line(config.load, kind, str(p))
    else:       # a corrupted byte may still parse (a digit changed): then loads
      _accept_or_one_line(config.load, kind, str(p))


def _numeric_fields(obj: dict) -> list[tuple[str, str]]:
  return [(sec, k) for sec in ("spec", "params") for k, v in obj.get(sec, {}).items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)]


WRONG_TYPES = ("12", [1.0], {"a": 1}, None, True, "", "1e9 B")
ABSURD = (1e300, -1e300, 1e-300, 1e39, -1e-39, -1.0, 3.5e38, 2.0 ** 64)


@pytest.mark.parametrize("kind", KINDS)
def test_preset_fields_of_wrong_type_and_absurd_magnitude(kind):
  rng = np.random.default_rng(SEED + 1)
  base = json.loads(_preset_text(kind))
  fields = _numeric_fields(base)
  assert fields
  for sec, k in fields:
    for bad in WRONG_TYPES + ABSURD:
      obj = json.loads(json.dumps(base))
      obj[sec][k] = bad
      msg = _one_line(config.load, kind, obj)
      assert k in msg, msg
    # a random magnitude: accepted only inside the field's ranges
    v = float(10.0 ** rng.uniform(-45, 45))
    obj = json.loads(json.dumps(base))
    obj[sec][k] = v
    _accept_or_one_line(config.load, kind, obj)


def _ranged_params(kind: str):
  pre = config.load(kind, config.available(kind)[0])
  return pre, {f: r for f, r in config.leaf_ranges(pre.params).items()
               if "." not in f and "[" not in f}


@pytest.mark.parametrize("kind", ("gpu", "link", "ndp", "dram"))
def test_wrong_units_are_refused_with_the_unit_named(kind):
  """Each field's value written in another unit (every slip of its table):
  refused unless the slip happens to land in the plausible range, and then
  named in a 'did you mean' hint when the way back is a listed slip."""
  pre, ranged = _ranged_params(kind)
  base = json.loads(_preset_text(kind))
  refused = 0
  for field, rng_ in ranged.items():
    v = float(getattr(pre.params, field))
    if v == 0:
      continue
    for factor, label in rng_.slips:
      wrong = v / factor
      obj = json.loads(json.dumps(base))
      obj["params"][field] = wrong
      lo, hi = rng_.plausible
      if lo <= wrong <= hi:
        continue  # another unit that happens to be plausible too
      msg = _one_line(config.load, kind, obj)
      refused += 1
      assert field in msg and config.fmt_number(wrong) in msg, msg
      assert "did you mean" in msg, msg  # the way back is always a listed slip
  assert refused >= 3


@pytest.mark.parametrize("over,hint", [
    ({"system": {"gpu_reserved_bytes": 1.5}}, "did you mean 1.5e9 (GB given as bytes)?"),
    ({"gpu": {"memory_bandwidth_gbps": 960e9}}, "did you mean 960 (B/s given as GB/s)?"),
    ({"gpu": {"clock_mhz": 2.617}}, "did you mean 2617 (GHz given as MHz)?"),
    ({"dram": {"tck_ns": 416}}, "did you mean 0.416 (ps given as ns)?"),
    ({"link": {"latency_ns": 3e-7}}, "did you mean 300 (s given as ns)?"),
    ({"gpu": {"achievable_compute_fraction": 75}},
     "did you mean 0.75 (a percentage given as a fraction)?"),
])
def test_the_issue_unit_mistakes_name_the_likely_unit(over, hint):
  msg = _one_line(system_mod.load_system, "paper_rtx5080_ndp_dimm", overrides=over)
  assert hint in msg, msg


def test_allow_implausible_keeps_an_implausible_value_never_an_unrepresentable_one():
  over = {"gpu": {"clock_mhz": 2.617}}
  msg = _one_line(system_mod.load_system, "paper_rtx5080_ndp_dimm", overrides=over)
  assert "--allow_implausible" in msg and "plausible 100 to 1e4 MHz" in msg
  s = system_mod.load_system("paper_rtx5080_ndp_dimm", overrides=over,
                             allow_implausible=True)
  assert float(s.params.gpu.clock_mhz) == 2.617
  with config.allowing_implausible():
    system_mod.load_system("paper_rtx5080_ndp_dimm", overrides=over)
  for hard in ({"link": {"bandwidth_gbps": 1e-40}}, {"dram": {"tck_ns": 1e39}},
               {"gpu": {"l2_bytes": 1e30}}):
    msg = _one_line(system_mod.load_system, "paper_rtx5080_ndp_dimm", overrides=hard,
                    allow_implausible=True)
    assert "outside what the float32 engine can carry" in msg, msg


def test_every_numeric_hardware_field_has_a_range_and_every_preset_fits_it():
  """Ranges as data: every numeric field of every Spec/Params class has one
  (bar the enumerated ones), hard contains plausible, and every shipped preset
  lies inside the plausible ranges (so the defaults never need the flag)."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import typing  # pylint: disable=import-outside-toplevel
  from ndpsim.hw import dram_spec, gpu, link, ndp  # pylint: disable=import-outside-toplevel
  enumerated = {("LinkSpec", "generation"), ("SystemSpec", "num_ndp_units")}
  for cls in (gpu.GpuSpec, gpu.GpuParams, link.LinkSpec, link.LinkParams, ndp.NdpSpec,
              ndp.NdpParams, dram_spec.DramSpec, dram_spec.DramParams,
              system_mod.SystemSpec, system_mod.SystemParams):
    table = config.ranges_of(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
      tp = hints[f.name]
      numeric = tp in (int, float) or tp is typing.Any
      if dataclasses.is_dataclass(tp) or (cls.__name__, f.name) in enumerated:
        continue
      if numeric and f.name not in ("gpu_name", "ndp_name", "link_name"):
        assert f.name in table, (cls.__name__, f.name)
    for name, r in table.items():
      assert r.hard[0] <= r.plausible[0] <= r.plausible[1] <= r.hard[1], (name, r)
  with config.allowing_implausible(False):
    for kind in KINDS:
      for name in config.available(kind):
        config.load(kind, name)


# ---------------------------------------------------------------------------
# --set values (Python side; the binary below).

def test_set_values_of_every_bad_kind(tmp_path):
  rng = np.random.default_rng(SEED + 2)
  junk = ["gpu.clock_mhz=abc", "gpu.clock_mhz=", "gpu.=3", "=3", "gpu.clock_mhz",
          "link.bandwidth_gbps=[1]", "link.bandwidth_gbps=1e999", "link.bandwidth_gbps=NaN",
          "link.bandwidth_gbps=-0", "dram.tck_ns=null", "ndp.clock_mhz=true",
          "gpu.tensor_flops_per_cycle_per_sm=5", "system.gpu=rtx4090", "cpu.clock_mhz=3",
          "gpu.clock_mhz={\"a\": 1}", "system.max_ndp_units=1e9", "link.lanes=3.5"]
  junk += [f"gpu.memory_bandwidth_gbps={10.0 ** rng.uniform(-40, 40):.3g}"
           for _ in range(6)]
  for item in junk:
    def go(item=item):
      over = config.parse_set_overrides([item])
      return system_mod.load_system("paper_rtx5080_ndp_dimm", overrides=over)
    if item.startswith("gpu.memory_bandwidth_gbps="):
      _accept_or_one_line(go)
    else:
      _one_line(go)


# ---------------------------------------------------------------------------
# Models and HF configs.

def _model_cases(rng, good: dict) -> list:
  cases = []
  for k, v in good.items():
    if isinstance(v, int) and not isinstance(v, bool):
      for bad in ("8", 2.5, None, [v], -3, 0, 1e30, 2 ** 62, float("inf"),
                  float("nan")):
        cases.append({**good, k: bad})
  cases.append({**good, "top_k": good.get("num_experts", 8) + 1})
  cases += [dict(list(good.items())[:int(rng.integers(0, len(good)))])
            for _ in range(4)]
  return cases


@pytest.mark.parametrize("path", [TINY, HF])
def test_model_and_hf_config_readers(tmp_path, path):
  rng = np.random.default_rng(SEED + 3)
  good_text = pathlib.Path(path).read_bytes()
  for i, blob in enumerate(_bad_bytes(rng, good_text)):
    p = tmp_path / f"bad{i}.json"
    p.write_bytes(blob)
    if i < 12:
      _one_line(M.model_from_any, str(p))
    else:
      _accept_or_one_line(M.model_from_any, str(p))
  good = json.loads(good_text)
  for i, obj in enumerate(_model_cases(rng, good)):
    p = tmp_path / f"case{i}.json"
    p.write_text(json.dumps(obj))
    _accept_or_one_line(M.model_from_any, str(p))


def test_model_fields_of_absurd_magnitude_are_refused(tmp_path):
  good = json.loads(pathlib.Path(TINY).read_text())
  for k in ("num_layers", "hidden_size", "num_experts", "top_k", "expert_ffn_size"):
    for bad in (-3, 0, "8", 2.5, None):
      p = tmp_path / f"{k}.json"
      p.write_text(json.dumps({**good, k: bad}))
      assert k in _one_line(M.model_from_any, str(p))


# ---------------------------------------------------------------------------
# Traces: CSV and .npz.

def test_trace_csv_reader(tmp_path):
  rng = np.random.default_rng(SEED + 4)
  good = pathlib.Path(CSV).read_bytes()
  kw = dict(prompt_len=3, tokens_per_sequence=6)
  for i, blob in enumerate(_bad_bytes(rng, good)):
    p = tmp_path / f"bad{i}.csv"
    p.write_bytes(blob)
    _accept_or_one_line(traces.load_csv, str(p), **kw)
    if i < 6:  # random bytes are never a trace
      _one_line(traces.load_csv, str(p), **kw)
  lines = good.decode().splitlines()
  cells = ["abc", "-0.5", "nan", "inf", "1e39", "", "0x10", "1,2"]
  for j, c in enumerate(cells):
    row = lines[1].split(",")
    row[2] = c
    p = tmp_path / f"cell{j}.csv"
    p.write_text("\n".join([lines[0], ",".join(row)] + lines[2:]) + "\n")
    _one_line(traces.load_csv, str(p), **kw)
  # a column beyond the model's experts, and out-of-range layer/token ids
  p = tmp_path / "wide.csv"
  p.write_text("\n".join([lines[0] + ",expert_8"] + [l + (",0.5" if i == 0 else ",0")
                                                     for i, l in enumerate(lines[1:])])
               + "\n")
  msg = _one_line(traces.load_csv, str(p), num_experts=8, **kw)
  assert "expert_8" in msg and "num_experts 8" in msg


def test_trace_npz_reader(tmp_path):
  rng = np.random.default_rng(SEED + 5)
  good = pathlib.Path(NPZ).read_bytes()
  for i, blob in enumerate(_bad_bytes(rng, good, n=4)):
    p = tmp_path / f"bad{i}.npz"
    p.write_bytes(blob)
    if i < 8:
      _one_line(traces.load_npz, str(p))
    else:
      _accept_or_one_line(traces.load_npz, str(p))
  with np.load(NPZ, allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  ids = ["prefill_ids", "decode_ids"]  # (layer_ids is informative: not checked)
  gates = ["prefill_gates", "decode_gates"]
  variants = []
  for k in ids:
    variants += [{k: arrays[k].astype(np.float32) + 0.5}, {k: arrays[k] * 0 - 1},
                 {k: arrays[k] + 10 ** 6}, {k: arrays[k][..., :0]},
                 {k: arrays[k].astype(np.complex64)}, {k: np.array("abc")}]
  for k in gates:
    variants += [{k: arrays[k].astype(np.complex64)}, {k: arrays[k] * np.nan},
                 {k: -arrays[k]}, {k: arrays[k].astype(bool)}, {k: arrays[k][:1]}]
  for i, change in enumerate(variants):
    p = tmp_path / f"v{i}.npz"
    np.savez(p, **{**arrays, **change})
    _one_line(traces.load_npz, str(p), num_experts=8)


# ---------------------------------------------------------------------------
# --resume: cell files and run_settings.json.

def _tiny_res():
  return studies.resolve(studies.StudyConfig(
      models=(TINY,), policies=("monde",), prompt_len=8, output_len=4, num_seqs=4,
      num_ndp_units=(2,), studies=("headline",)))


def test_cell_files_and_run_settings_never_trusted_never_a_crash(tmp_path):
  rng = np.random.default_rng(SEED + 6)
  res = _tiny_res()
  cell = res.all_cells()[0]
  p = study_io.cell_path(tmp_path, cell)
  p.parent.mkdir(parents=True)
  good = json.dumps({"row": {"model": cell.model, "e2e_latency_s_mean": 1.0},
                     "fingerprint": studies.cell_fingerprint(res, cell),
                     "row_digest": "0" * 64}).encode()
  junk = _bad_bytes(rng, good) + [b"[]", b"null", b"{}", b'{"row": 3}', b'{"row": {}}',
                                  b"\xff\xfe", json.dumps({"row": {"x": float("nan")}}).encode()]
  for blob in junk:
    p.write_bytes(blob)
    row, why = studies.read_cell(tmp_path, res, cell)
    assert row is None and isinstance(why, str) and "\n" not in why
  settings = tmp_path / "run_settings.json"
  for blob in junk[:12] + [b"[]", b"3"]:
    settings.write_bytes(blob)
    studies.check_resume(tmp_path, res)  # unreadable: ignored (cells carry their own)


def test_check_finite_names_the_quantity():
  row = {"model": "m", "policy": "p", "num_ndp_units": 2, "e2e_latency_s_mean": 1.0,
         "ttft_s_mean": float("inf"), "e2e_latency_s_per_group": [1.0, float("nan")]}
  msg = _one_line(study_io.check_finite, row)
  assert "ttft_s_mean is not finite" in msg
  row["ttft_s_mean"] = 1.0
  assert "e2e_latency_s_per_group" in _one_line(study_io.check_finite, row)


# ---------------------------------------------------------------------------
# Routing ids given to the engine (Python API).

def test_engine_refuses_out_of_range_repeated_float_and_empty_ids():
  rng = np.random.default_rng(SEED + 7)
  s = system_mod.load_system("paper_rtx5080_ndp_dimm", 2)
  model = M.model_from_any(TINY)
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k

  def ids(S, T):
    return np.argsort(rng.random((S, T, L, E)), axis=-1)[..., :k].astype(np.int32)

  good_p, good_d = ids(2, 4), ids(2, 3)
  engine.validate(s.spec, s.params, model, good_p, good_d, 1)
  bad = []
  for which in (0, 1):
    for mutate in (lambda a: a.__setitem__((0, 0, 0, 0), E),
                   lambda a: a.__setitem__((1, 1, 1, 1), -1),
                   lambda a: a.__setitem__((0, 1, 0, 1), 99),
                   lambda a: a.__setitem__((0, 0, 1, slice(None)), a[0, 0, 1, 0])):
      p, d = good_p.copy(), good_d.copy()
      mutate((p, d)[which])
      bad.append((p, d))
    p, d = good_p.copy(), good_d.copy()
    bad.append((p.astype(np.float32), d) if which == 0 else (p, d.astype(np.float32)))
  bad += [(good_p[:0], good_d[:0]), (good_p[:, :0], good_d), (good_p, good_d[:, :0]),
          (good_p[..., :1], good_d[..., :1]), (good_p[:1], good_d)]
  for p, d in bad:
    _one_line(engine.validate, s.spec, s.params, model, p, d, 1)


# ---------------------------------------------------------------------------
# The binary: one line on stderr, exit status 2, for one bad input per reader.


def _binary() -> list[str]:
  return [sys.executable, "-m", "ndpsim.experiment"]


def test_binary_one_line_and_exit_2_for_each_reader(tmp_path):
  rng = np.random.default_rng(SEED + 8)
  junk = tmp_path / "junk.json"
  junk.write_bytes(rng.bytes(300))
  junk_csv = tmp_path / "junk.csv"
  junk_csv.write_bytes(rng.bytes(300))
  cut_npz = tmp_path / "cut.npz"
  cut_npz.write_bytes(pathlib.Path(NPZ).read_bytes()[:200])
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  tiny = [f"--models={TINY}", "--policies=monde", "--prompt_len=8", "--output_len=4",
          "--num_seqs=4", "--num_ndp_units=2", "--studies=headline", "--noplots"]
  cases = [
      ([f"--system={junk}"], "--system"),
      ([f"--models={junk}"] + tiny[1:], "--models"),
      ([f"--routing={junk_csv}"], "--routing"),
      ([f"--routing={cut_npz}"], "--routing"),
      (["--set=link.bandwidth_gbps=1e-40"], "outside what the float32 engine can carry"),
      (["--set=gpu.clock_mhz=2.617"], "did you mean 2617 (GHz given as MHz)?"),
      (["--set=dram.tck_ns=abc"], "tck_ns"),
      ([f"--cache_dir={a_file}"], "--cache_dir"),
  ]
  env = child_env()
  procs = []
  for i, (extra, _) in enumerate(cases):
    argv = _binary() + tiny + [f"--out_dir={tmp_path / f'o{i}'}"] + extra
    procs.append(subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  for (extra, want), proc in zip(cases, procs):
    out, err = proc.communicate(timeout=600)  # hang guard
    lines = [l for l in err.splitlines() if l.strip()]
    assert proc.returncode == 2, (extra, proc.returncode, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), (extra, err[-2000:])
    assert want in lines[0], (extra, lines[0])
    assert not out.strip(), (extra, out[-500:])


# ---------------------------------------------------------------------------
# The probe: never Infinity or NaN on stdout; one line on stderr, exit 2.

@pytest.mark.parametrize("argv,want", [
    (["link", "--bytes=1e300", "--count=1e18"], "--bytes x --count is inf bytes"),
    (["link", "--bytes=1e29", "--count=100"], "--bytes x --count is 1e31 bytes"),
    (["link", "--bytes=inf"], "--bytes x --count is inf"),
    (["link", "--bytes=nan"], "--bytes is nan"),
    (["gpu", "--m=1e15", "--n=1e15", "--k=1e15"], "is not finite"),
    (["ndp", "--rows=1e20", "--cols=1e20", "--tokens=1e20"], "is not finite"),
])
def test_probe_refuses_overflow_in_one_line(capsys, argv, want):
  from ndpsim import probe  # pylint: disable=import-outside-toplevel
  assert probe.main(argv) == 2
  out, err = capsys.readouterr()
  assert not out and err.count("\n") == 1 and want in err, err


def test_probe_allow_implausible(tmp_path, capsys):
  from ndpsim import probe  # pylint: disable=import-outside-toplevel
  obj = json.loads(_preset_text("gpu"))
  obj["params"]["clock_mhz"] = 2.617
  p = tmp_path / "ghz.json"
  p.write_text(json.dumps(obj))
  argv = ["gpu", f"--preset={p}", "--m=1", "--n=768", "--k=2048"]
  assert probe.main(argv) == 2
  assert "did you mean 2617 (GHz given as MHz)?" in capsys.readouterr().err
  assert probe.main(argv + ["--allow_implausible"]) == 0
  assert json.loads(capsys.readouterr().out)["time_s"] > 0
