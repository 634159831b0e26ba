"""Routing traces: .npz and NeuPIMs-MoE CSV round trips, and every bad-trace error."""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from ndpsim.base import ConfigError
from ndpsim.workload import models, traces

pytestmark = pytest.mark.inputs

DATA = pathlib.Path(__file__).parent / "data"
NPZ, CSV = DATA / "small_trace.npz", DATA / "small_trace.csv"
S, P, T, L, E, K = 2, 6, 5, 3, 8, 2   # tests/data/make_small_trace.py
FIELDS = ("prefill_ids", "prefill_gates", "decode_ids", "decode_gates")


def _equal(a, b):
  for f in FIELDS:
    np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)),
                                  err_msg=f)


def _load_small_csv(path=CSV, **kw):
  return traces.load_csv(path, prompt_len=P, tokens_per_sequence=P + T, **kw)


def test_small_trace_is_valid_topk_without_replacement():
  r = traces.load_npz(NPZ, num_experts=E, top_k=K, num_layers=L)
  assert r.prefill_ids.shape == (S, P, L, K) and r.decode_ids.shape == (S, T, L, K)
  assert str(r.prefill_ids.dtype) == "int32" and str(r.decode_gates.dtype) == "float32"
  ids = np.concatenate([np.asarray(r.prefill_ids), np.asarray(r.decode_ids)], 1)
  gates = np.concatenate([np.asarray(r.prefill_gates), np.asarray(r.decode_gates)], 1)
  assert ((ids >= 0) & (ids < E)).all() and (ids[..., 0] != ids[..., 1]).all()
  np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-6)
  assert traces.read_npz_meta(NPZ)["layer_ids"] == [1, 2, 3]
  if importlib.util.find_spec("ndpsim.workload.routing") is not None:
    from ndpsim.workload import routing  # pylint: disable=import-outside-toplevel
    if hasattr(routing, "Routing"):
      assert isinstance(r, routing.Routing)


def test_npz_roundtrip_exact_with_meta(tmp_path):
  r = traces.load_npz(NPZ)
  p = tmp_path / "again.npz"
  traces.save_npz(p, r, {"num_experts": E, "layer_ids": [1, 2, 3], "model": "x"})
  _equal(traces.load_npz(p), r)
  meta = traces.read_npz_meta(p)
  assert meta["model"] == "x" and meta["num_experts"] == E
  with pytest.raises(ConfigError, match="records num_experts 8 but 16"):
    traces.load_npz(p, num_experts=16)


def test_csv_roundtrip_both_formats(tmp_path):
  r = traces.load_npz(NPZ)
  # The shipped CSV was written from the same routing: it loads to the same
  # ids and float32-exact gates (k-order canonical: decreasing gate).
  c = _load_small_csv()
  _equal(c, traces.sort_by_gate(r))
  _equal(traces.sort_by_gate(r), r)  # the generator already sorts by gate
  # npz -> csv -> npz is the identity, and save_csv is deterministic.
  p = tmp_path / "t.csv"
  traces.save_csv(p, r, num_experts=E)
  assert p.read_text() == CSV.read_text()
  q = tmp_path / "t.npz"
  traces.save_npz(q, _load_small_csv(p), {"num_experts": E})
  _equal(traces.load_npz(q), r)
  # Different splits of the same tokens: one sequence, all decode.
  one = traces.load_csv(p)
  assert one.prefill_ids.shape == (1, 0, L, K) and one.decode_ids.shape == (1, S * (P + T), L, K)
  np.testing.assert_array_equal(np.asarray(one.decode_ids)[0, P + T + P],
                                np.asarray(r.decode_ids)[1, 0])


def test_flame_style_per_layer_files(tmp_path):
  """FLAME-MoE samples: one file per layer, layer_id 0 in each, 6 decimals."""
  text = CSV.read_text().splitlines()
  head, rows = text[0], text[1:]
  files = []
  for layer in range(L):
    p = tmp_path / f"flame_layer{layer + 2}.csv"
    out = [head]
    for row in rows:
      f = row.split(",")
      if int(f[0]) == layer:
        out.append(",".join(["0", f[1]] + [f"{float(x):.6f}" for x in f[2:]]))
    p.write_text("\n".join(out) + "\n")
    files.append(p)
  r = traces.load_csv(files, top_k=K, num_layers=L, prompt_len=P, tokens_per_sequence=P + T)
  ref = traces.load_npz(NPZ)
  for f in FIELDS:
    np.testing.assert_allclose(np.asarray(getattr(r, f)), np.asarray(getattr(ref, f)),
                               atol=5e-7)
  assert traces.FLAME_TOKENS_PER_SEQUENCE == 64 and traces.FLAME_PROMPT_LEN == 32


def _rows():
  text = CSV.read_text().splitlines()
  return text[0], [r.split(",") for r in text[1:]]


def _write(tmp_path, head, rows, name="bad.csv"):
  p = tmp_path / name
  p.write_text("\n".join([head] + [",".join(r) for r in rows]) + "\n")
  return p


def _error(fn, *args, **kw) -> str:
  with pytest.raises(ConfigError) as e:
    fn(*args, **kw)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_csv_out_of_range_id_names_file_and_row(tmp_path):
  head, rows = _rows()
  # Expert 6 exists in the file; a model with 6 experts (0..5) cannot select it.
  line = next(i for i, r in enumerate(rows) if float(r[2 + 6]) + float(r[2 + 7]) > 0) + 2
  msg = _error(_load_small_csv, _write(tmp_path, head, rows), num_experts=6)
  assert "bad.csv" in msg and f"line {line} " in msg and "out of range" in msg
  # Columns beyond the model's experts that select nothing are dropped.
  r = traces.load_npz(NPZ)
  small = r._replace(prefill_ids=np.zeros_like(r.prefill_ids) + np.array([0, 1]),
                     decode_ids=np.zeros_like(r.decode_ids) + np.array([5, 4]))
  p = tmp_path / "ok.csv"
  traces.save_csv(p, small, num_experts=E)
  assert p.read_text().splitlines()[0].endswith("expert_7")
  _equal(_load_small_csv(p, num_experts=6), traces.sort_by_gate(small))


def test_csv_wrong_topk_names_file_and_row(tmp_path):
  head, rows = _rows()
  r = rows[9]
  j = next(i for i in range(2, 2 + E) if float(r[i]) == 0)
  r[j] = "0.25"   # a third selection in line 11
  msg = _error(_load_small_csv, _write(tmp_path, head, rows))
  assert "bad.csv" in msg and "line 11 " in msg and "selects 3 experts" in msg
  msg = _error(_load_small_csv, CSV, top_k=3)
  assert str(CSV) in msg and "line 2 " in msg and "k is 3" in msg


def test_csv_missing_layer_names_file_and_row(tmp_path):
  head, rows = _rows()
  n = S * (P + T)
  kept = [r for r in rows if r[0] != "1"]
  msg = _error(_load_small_csv, _write(tmp_path, head, kept))
  assert "bad.csv" in msg and f"line {n + 2} " in msg and "layer 1 is missing" in msg
  msg = _error(_load_small_csv, CSV, num_layers=4)
  assert str(CSV) in msg and f"line {3 * n + 1} " in msg and "num_layers is 4" in msg


def test_csv_ragged_sequences_names_file_and_row(tmp_path):
  head, rows = _rows()
  n = S * (P + T)
  # Drop the last token of every layer: 21 tokens is not 2 sequences of 11.
  kept = [r for r in rows if int(r[1]) != n - 1]
  msg = _error(_load_small_csv, _write(tmp_path, head, kept))
  assert "bad.csv" in msg and "line 13 " in msg and "ragged sequences" in msg
  # Drop it from layer 2 only: layers disagree.
  kept = [r for r in rows if not (r[0] == "2" and int(r[1]) == n - 1)]
  msg = _error(_load_small_csv, _write(tmp_path, head, kept))
  assert "bad.csv" in msg and f"line {3 * n} " in msg and "layer 2 has 21 tokens" in msg


def test_csv_token_gaps_duplicates_and_syntax(tmp_path):
  head, rows = _rows()
  msg = _error(_load_small_csv, _write(tmp_path, head, rows[:3] + rows[4:]))
  assert "bad.csv" in msg and "line 5 " in msg and "no gaps" in msg  # token 3 gone
  msg = _error(_load_small_csv, _write(tmp_path, head, rows[:3] + [rows[2]] + rows[3:]))
  assert "line 5 " in msg and "repeated" in msg
  bad = [list(r) for r in rows]
  bad[4][5] = "abc"
  msg = _error(_load_small_csv, _write(tmp_path, head, bad))
  assert "line 6, column 6 (expert_3)" in msg and "'abc' is not a number" in msg
  bad = [list(r) for r in rows]
  bad[4][5] = "-0.1"
  assert "line 6, column 6:" in _error(_load_small_csv, _write(tmp_path, head, bad))
  msg = _error(_load_small_csv, _write(tmp_path, "layer,token," + head.split(",", 2)[2], rows))
  assert "line 1, column 1:" in msg and "header" in msg
  assert "prompt_len" in _error(traces.load_csv, CSV, prompt_len=30, tokens_per_sequence=11)


def _npz_with(tmp_path, **arrays):
  with np.load(NPZ) as z:
    data = {k: z[k] for k in z.files}
  data.update(arrays)
  p = tmp_path / "bad.npz"
  np.savez(p, **data)
  return p


def test_npz_errors_name_file_and_row(tmp_path):
  r = traces.load_npz(NPZ)
  ids = np.array(r.decode_ids)
  ids[1, 2, 0, 1] = E
  msg = _error(traces.load_npz, _npz_with(tmp_path, decode_ids=ids))
  assert "bad.npz" in msg and "decode[sequence 1, token 2, layer 0]" in msg
  assert "out of range 0..7" in msg
  ids = np.array(r.prefill_ids)
  ids[0, 3, 2, 1] = ids[0, 3, 2, 0]
  msg = _error(traces.load_npz, _npz_with(tmp_path, prefill_ids=ids))
  assert "prefill[sequence 0, token 3, layer 2]" in msg and "selected twice" in msg
  msg = _error(traces.load_npz, NPZ, top_k=3)
  assert str(NPZ) in msg and "k = 2" in msg and "top_k is 3" in msg
  msg = _error(traces.load_npz, NPZ, num_layers=4)
  assert "3 layers" in msg
  short = np.array(r.decode_ids)[:, :, :2]
  msg = _error(traces.load_npz, _npz_with(tmp_path, decode_ids=short,
                                          decode_gates=np.array(r.decode_gates)[:, :, :2]))
  assert "bad.npz" in msg and "disagree" in msg
  msg = _error(traces.load_npz, _npz_with(tmp_path, format=np.array("other")))
  assert "format" in msg
  cgates = np.array(r.decode_gates).astype(np.complex64)  # issue 13: was accepted
  msg = _error(traces.load_npz, _npz_with(tmp_path, decode_gates=cgates))
  assert "bad.npz" in msg and "decode_gates has dtype complex64" in msg


def test_save_rejections_and_model_check(tmp_path):
  r = traces.load_npz(NPZ)
  gates = np.array(r.decode_gates)
  gates[0, 1, 1, 1] = 0.0
  zero = r._replace(decode_gates=gates)
  msg = _error(traces.save_csv, tmp_path / "z.csv", zero)
  assert "decode[sequence 0, token 1, layer 1]" in msg and "gate of 0" in msg
  spec = models.MoeModelSpec(name="t", num_layers=4, hidden_size=8, vocab_size=10,
                             num_experts=8, top_k=2, expert_ffn_size=4,
                             attention_kind="mha", num_q_heads=2, num_kv_heads=2,
                             head_dim=4, first_dense_layers=1, dense_ffn_size=8)
  traces.check_against_model(r, spec)
  msg = _error(traces.check_against_model, r, models.replace(spec, top_k=3), "trace x")
  assert msg.startswith("trace x:") and "top_k is 3" in msg
  msg = _error(traces.check_against_model, r, models.replace(spec, num_experts=4))
  assert "out of range 0..3" in msg
  msg = _error(traces.check_against_model, r, models.get_model("mixtral-8x7b"))
  assert "32 MoE layers" in msg


# ---------------------------------------------------------------------------
# Public formats as shipped (tests/data/traces, README.md there names sources).

PUB = DATA / "traces"


def _parse(path):
  """Independent reader: {(layer_id, token_id): [scores]} of a CSV's data rows."""
  out = {}
  for line in pathlib.Path(path).read_text().splitlines():
    if line.strip() and not line.startswith(("#", "layer_id")):
      f = line.split(",")
      out[(int(f[0]), int(f[1]))] = [float(x) for x in f[2:]]
  return out


def _topk(scores, k):
  """Top-k ids by decreasing score, ties by lower id (the documented rule)."""
  return sorted(range(len(scores)), key=lambda e: (-scores[e], e))[:k]


def test_neupims_dense_probabilities_take_topk():
  path = PUB / "neupims_dense_probs.csv"
  assert path.read_text().endswith("\n\n")          # NeuPIMs' trailing blank line
  msg = _error(traces.load_csv, path)
  assert "neupims_dense_probs.csv" in msg and "pass top_k" in msg
  rows = _parse(path)
  for k in (1, 2, 4):
    r = traces.load_csv(path, top_k=k)
    ids, gates = np.asarray(r.decode_ids), np.asarray(r.decode_gates)
    assert ids.shape == (1, len(rows), 1, k)
    for t in range(len(rows)):
      want = _topk(rows[(0, t)], k)
      assert ids[0, t, 0].tolist() == want
      np.testing.assert_allclose(gates[0, t, 0], [rows[(0, t)][e] for e in want], rtol=1e-6)
  # A tie at the boundary goes to the lower id.
  tie = next(t for t, s in ((t, sorted(rows[(0, t)], reverse=True)) for t in range(len(rows)))
             if s[0] == s[1])
  top = np.asarray(traces.load_csv(path, top_k=1).decode_ids)[0, tie, 0, 0]
  assert top == min(e for e, x in enumerate(rows[(0, tie)]) if x == max(rows[(0, tie)]))
  # A row with fewer nonzero scores than top_k is refused, naming its line.
  k = len(rows[(0, 0)])
  msg = _error(traces.load_csv, path, top_k=k)
  line = 2 + min(t for t in range(len(rows)) if sum(x > 0 for x in rows[(0, t)]) < k)
  assert f"line {line} " in msg and "too few" in msg


def test_blank_and_comment_lines_are_skipped(tmp_path):
  text = CSV.read_text().splitlines()
  out = ["# exported by a tool", "", text[0]]
  for i, row in enumerate(text[1:]):
    out += [row] + (["", "  ", "# a comment"] if i % 7 == 3 else [])
  p = tmp_path / "commented.csv"
  p.write_text("\r\n".join(out) + "\r\n\r\n\n")
  _equal(_load_small_csv(p), _load_small_csv())
  # Line numbers count the skipped lines: break the 10th data row.
  lines = p.read_text().split("\n")
  rows_at = [i for i, l in enumerate(lines) if l.strip() and l[0].isdigit()]
  f = lines[rows_at[9]].split(",")
  f[3] = "x"
  lines[rows_at[9]] = ",".join(f)
  p.write_text("\n".join(lines))
  assert f"line {rows_at[9] + 1}, column 4" in _error(_load_small_csv, p)


def _flame_files():
  return sorted(f for f in (PUB / "flame_layers").iterdir() if not f.name.endswith("_stats.csv"))


def _layer_of(f):
  return int(f.name.split("_layer")[1].split("_")[0])


def test_flame_directory_and_glob_are_one_trace():
  files = sorted(_flame_files(), key=_layer_of)
  assert [f.name for f in _flame_files()] != [f.name for f in files]  # text order differs
  kw = dict(top_k=3, tokens_per_sequence=4, prompt_len=2)
  ref = traces.load_csv(files, **kw)
  _equal(traces.load_csv(PUB / "flame_layers", **kw), ref)
  _equal(traces.load_csv(str(PUB / "flame_layers" / "*.csv"), **kw), ref)
  _equal(traces.load(PUB / "flame_layers", **kw), ref)
  # Layer l of the trace is file number min + l; token t of sequence s is row s*4 + t.
  ids = np.concatenate([np.asarray(ref.prefill_ids), np.asarray(ref.decode_ids)], 1)
  for li, f in enumerate(files):
    rows = _parse(f)
    for (lay, tok), sc in rows.items():
      assert lay == 0 and ids[tok // 4, tok % 4, li].tolist() == _topk(sc, 3)


def test_flame_missing_layer_and_token_count_errors(tmp_path):
  files = sorted(_flame_files(), key=_layer_of)
  d = tmp_path / "flame"
  d.mkdir()
  for f in (files[0], files[2]):
    (d / f.name).write_text(f.read_text())
  msg = _error(traces.load_csv, d, top_k=3)
  assert "layer file(s) [9] missing" in msg and str(d) in msg
  (d / files[1].name).write_text("\n".join(files[1].read_text().splitlines()[:-1]) + "\n")
  msg = _error(traces.load_csv, d, top_k=3)
  assert files[1].name in msg and "7 tokens" in msg and "8" in msg
  assert "no routing .csv" in _error(traces.load_csv, str(tmp_path / "none*.csv"))
  assert "does not exist" in _error(traces.load_csv, tmp_path / "nothing")


def test_decoder_batch_layout_is_explicit():
  root = PUB / "dynande_decoder_batch"
  msg = _error(traces.load_csv, root, top_k=3)
  assert "layout='decoder_batch'" in msg and "both hold layer" in msg
  r = traces.load_csv(root, layout="decoder_batch")
  ords = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: int(d.name[:-2]))
  layers = sorted(int(d.name.split("_")[1]) for d in ords[0].iterdir())
  ids, gates = np.asarray(r.decode_ids), np.asarray(r.decode_gates)
  batch = len(_parse(next(ords[0].glob("Layer_*/*.csv"))))
  assert r.prefill_ids.shape[1] == 0 and ids.shape == (batch, len(ords), len(layers), 3)
  for t, d in enumerate(ords):
    for li, lay in enumerate(layers):
      rows = _parse(next((d / f"Layer_{lay}").glob("*.csv")))
      for (_, req), sc in rows.items():
        assert ids[req, t, li].tolist() == _topk(sc, 3)
        np.testing.assert_allclose(gates[req, t, li], sorted(sc, reverse=True)[:3], rtol=1e-6)
  # One position as prefill; the same through a glob.
  r2 = traces.load(str(root / "*" / "Layer_*" / "*.csv"), layout="decoder_batch", prompt_len=1)
  np.testing.assert_array_equal(np.asarray(r2.prefill_ids)[:, 0], ids[:, 0])
  np.testing.assert_array_equal(np.asarray(r2.decode_ids), ids[:, 1:])


def test_decoder_batch_incomplete_is_refused(tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  root = tmp_path / "batch"
  shutil.copytree(PUB / "dynande_decoder_batch", root)
  f = next((root / "2nd" / "Layer_9").glob("*.csv"))
  f.write_text("\n".join(f.read_text().splitlines()[:-1]) + "\n")   # drop the last request
  msg = _error(traces.load_csv, root, layout="decoder_batch")
  assert f.name in msg and "requests" in msg
  shutil.rmtree(root / "2nd")
  msg = _error(traces.load_csv, root, layout="decoder_batch")
  assert "position(s) [2] missing" in msg
  shutil.rmtree(root / "3rd" / "Layer_9")
  shutil.copytree(PUB / "dynande_decoder_batch" / "2nd", root / "2nd")
  msg = _error(traces.load_csv, root, layout="decoder_batch")
  assert "position 3" in msg and "[9]" in msg
  assert "layout" in _error(traces.load_csv, root, layout="batch")


def test_binary_and_garbage_files_are_one_line_errors(tmp_path):
  good = CSV.read_bytes()
  cut = good.index(b"\n", 200) + 1 + 5   # 5 characters into a line
  p = tmp_path / "bin.csv"
  p.write_bytes(good[:cut] + b"\xff\xfe\x00" + good[cut:])
  line = good[:cut].count(b"\n") + 1
  msg = _error(traces.load_csv, p)
  assert "bin.csv" in msg and f"line {line}, column 6" in msg and "not UTF-8" in msg
  p.write_bytes(good[:cut] + b"\x00" + good[cut:])
  assert f"line {line}, column 6: NUL" in _error(traces.load_csv, p)
  z = tmp_path / "junk.npz"
  z.write_bytes(b"PK\x03\x04" + bytes(range(256)))
  msg = _error(traces.load_npz, z)
  assert "junk.npz" in msg and "save_npz" in msg
  assert "junk.npz" in _error(traces.load, z)
  stats = next((PUB / "flame_layers").glob("*_stats.csv"))
  assert "statistics" in _error(traces.load_csv, stats)
  p.write_text("")
  assert "line 1" in _error(traces.load_csv, p)


def test_trace_shape_against_model_before_simulating():
  spec = models.MoeModelSpec(name="toy", num_layers=4, hidden_size=8, vocab_size=10,
                             num_experts=8, top_k=2, expert_ffn_size=4,
                             attention_kind="mha", num_q_heads=2, num_kv_heads=2,
                             head_dim=4, first_dense_layers=1, dense_ffn_size=8)
  _equal(traces.load(CSV, model=spec, prompt_len=P, tokens_per_sequence=P + T),
         _load_small_csv())
  _equal(traces.load(NPZ, model=spec), traces.load_npz(NPZ))
  msg = _error(traces.load, NPZ, model=models.replace(spec, num_layers=6))
  assert "small_trace.npz" in msg and "'toy'" in msg and "3 layers" in msg and "5 MoE" in msg
  msg = _error(traces.load, NPZ, model=models.replace(spec, num_experts=6))
  assert "selects expert 7" in msg and "out of range for E=6 experts" in msg
  # Dense probabilities take the model's top-k.
  r = traces.load(PUB / "neupims_dense_probs.csv",
                  model=models.replace(spec, num_layers=2, first_dense_layers=1))
  assert r.decode_ids.shape[-1] == 2


def test_neupims_batch_files_one_per_iteration(tmp_path):
  """NeuPIMs' reader: one file per decode iteration holding every layer_id,
  token_id = request; iter10 must come after iter9 (numeric order)."""
  r = traces.load_npz(NPZ)
  ids = np.concatenate([np.asarray(r.prefill_ids), np.asarray(r.decode_ids)], 1)
  gates = np.concatenate([np.asarray(r.prefill_gates), np.asarray(r.decode_gates)], 1)
  for t in range(P + T):
    one = traces.make_routing(ids[:, :0, :, :], gates[:, :0], ids[:, t:t + 1], gates[:, t:t + 1])
    traces.save_csv(tmp_path / f"iter{t}.csv", one, num_experts=E)
  pattern = str(tmp_path / "iter*.csv")
  msg = _error(traces.load_csv, pattern)
  assert "layout='decoder_batch'" in msg
  got = traces.load_csv(pattern, layout="decoder_batch", prompt_len=P)
  _equal(got, r)
  assert "tokens_per_sequence is 5" in _error(traces.load_csv, pattern, layout="decoder_batch",
                                              tokens_per_sequence=5)
