"""Routing traces: read and write real expert-routing decisions.

A routing is four arrays (the layout of ``routing.Routing``):
``prefill_ids`` / ``prefill_gates`` ``[S, P, L, k]`` and ``decode_ids`` /
``decode_gates`` ``[S, T, L, k]`` -- S sequences, P prompt tokens, T generated
tokens, L MoE layers, k selected experts per token (int32 ids without
repetition, float32 gate weights >= 0).

Format 1, ndpsim ``.npz`` (:func:`save_npz`, :func:`load_npz`): a NumPy zip
holding

* ``format`` = "ndpsim-routing", ``version`` = 1;
* ``prefill_ids`` int32 ``[S, P, L, k]``, ``prefill_gates`` float32 (same shape):
  phase prefill, axis 0 sequence, axis 1 token, axis 2 layer, axis 3 rank;
* ``decode_ids`` int32 ``[S, T, L, k]``, ``decode_gates`` float32: phase decode;
* ``layer_ids`` int32 ``[L]``: the model's layer index of each routing layer;
* ``num_experts`` int32 scalar (0 = not recorded);
* ``meta_json``: a JSON object string (model, source, anything JSON-able).

Format 2, the CSV of NeuPIMs-MoE / DynaNDE (:func:`load_csv`, :func:`save_csv`):
header ``layer_id,token_id,expert_0,...,expert_{E-1}``, one row per (layer,
token) holding each expert's gate score, 0 when the expert is not selected.
``token_id`` counts the tokens of one layer from 0; sequences are laid end to
end: token ``i`` is position ``i % tokens_per_sequence`` of sequence
``i // tokens_per_sequence``, and its first ``prompt_len`` positions are
prefill, the rest decode (the FLAME-MoE sample set: 64 tokens per sequence,
first 32 = "prefill").  Layer ids must be contiguous; routing layer ``l`` is
``layer_id - min(layer_id)``.  Given several files (the FLAME set ships one
file per layer, each with ``layer_id`` 0), file ``i`` is routing layer ``i``.
The CSV does not keep the order of a token's k experts: loading sorts them by
decreasing gate (ties by id), see :func:`sort_by_gate`.

Not modelled: token text, padding, per-token timestamps, capacity drops.
Errors name the file and the row (CSV line number, header = line 1; or the
npz index ``phase[sequence, token, layer]``).
"""
from __future__ import annotations

import csv
import json
import pathlib
from typing import Any, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np

from ndpsim.base import ConfigError

FORMAT_NAME = "ndpsim-routing"
FORMAT_VERSION = 1
FLAME_TOKENS_PER_SEQUENCE = 64
FLAME_PROMPT_LEN = 32
_PHASES = ("prefill", "decode")


class TraceRouting(NamedTuple):
  """Stand-in with routing.Routing's fields, used when routing.py is absent."""
  prefill_ids: Any
  prefill_gates: Any
  decode_ids: Any
  decode_gates: Any


def make_routing(prefill_ids, prefill_gates, decode_ids, decode_gates):
  """A ``routing.Routing`` (jnp int32 ids, float32 gates) from four arrays."""
  try:
    from ndpsim.workload.routing import Routing as cls  # pylint: disable=import-outside-toplevel
  except ImportError:
    cls = TraceRouting
  return cls(prefill_ids=jnp.asarray(prefill_ids, jnp.int32),
             prefill_gates=jnp.asarray(prefill_gates, jnp.float32),
             decode_ids=jnp.asarray(decode_ids, jnp.int32),
             decode_gates=jnp.asarray(decode_gates, jnp.float32))


def _arrays(routing) -> dict[str, np.ndarray]:
  """The four arrays as NumPy; gates widened to float32 (bf16/fp16 allowed)."""
  out = {}
  for ph in _PHASES:
    out[f"{ph}_ids"] = np.asarray(getattr(routing, f"{ph}_ids"))
    gates = np.asarray(getattr(routing, f"{ph}_gates"))
    out[f"{ph}_gates"] = gates.astype(np.float32) if gates.dtype != np.float64 else gates
  return out


def check_routing(routing, where: str = "routing", num_experts: int | None = None,
                  top_k: int | None = None, num_layers: int | None = None) -> None:
  """Validates any object with the four routing fields; ConfigError names
  ``where`` and the first bad entry as ``phase[sequence, token, layer]``."""
  a = _arrays(routing)
  shapes = {}
  for ph in _PHASES:
    ids, gates = a[f"{ph}_ids"], a[f"{ph}_gates"]
    if ids.ndim != 4 or ids.shape != gates.shape:
      raise ConfigError(f"{where}: {ph}_ids {ids.shape} and {ph}_gates {gates.shape} "
                        "must both be [sequences, tokens, layers, k]")
    if not np.issubdtype(ids.dtype, np.integer):
      raise ConfigError(f"{where}: {ph}_ids has dtype {ids.dtype}; write integer ids")
    shapes[ph] = ids.shape
  (s0, _, l0, k0), (s1, _, l1, k1) = shapes["prefill"], shapes["decode"]
  if (s0, l0, k0) != (s1, l1, k1):
    raise ConfigError(f"{where}: prefill [S, P, L, k] = {shapes['prefill']} and decode "
                      f"[S, T, L, k] = {shapes['decode']} disagree on S, L or k")
  if top_k is not None and k0 != top_k:
    raise ConfigError(f"{where}: routing selects k = {k0} experts per token but "
                      f"top_k is {top_k}")
  if num_layers is not None and l0 != num_layers:
    raise ConfigError(f"{where}: routing has {l0} layers but the model has "
                      f"{num_layers} MoE layers")
  for ph in _PHASES:
    ids, gates = a[f"{ph}_ids"].astype(np.int64), a[f"{ph}_gates"]
    hi = num_experts if num_experts else np.iinfo(np.int64).max
    _first_bad(where, ph, (ids < 0) | (ids >= hi), ids,
               f"is out of range 0..{hi - 1}" if num_experts else "is negative")
    srt = np.sort(ids, axis=-1)
    dup = np.concatenate([np.zeros(srt.shape[:-1] + (1,), bool),
                          srt[..., 1:] == srt[..., :-1]], axis=-1)
    _first_bad(where, ph, dup, srt, "is selected twice (top-k is without replacement)")
    _first_bad(where, ph, ~np.isfinite(gates) | (gates < 0), gates,
               "is a gate weight that is not a finite number >= 0")


def _first_bad(where, phase, mask, values, what) -> None:
  if mask.any():
    s, t, l, j = (int(x) for x in np.argwhere(mask)[0])
    raise ConfigError(f"{where}: row {phase}[sequence {s}, token {t}, layer {l}]: "
                      f"entry {j} = {values[s, t, l, j]} {what}")


def check_against_model(routing, spec, where: str = "routing") -> None:
  """Checks a routing against a ``models.MoeModelSpec`` (L, k, expert ids)."""
  from ndpsim.workload import models  # pylint: disable=import-outside-toplevel
  check_routing(routing, where, num_experts=spec.num_experts, top_k=spec.top_k,
                num_layers=models.num_moe_layers(spec))


def sort_by_gate(routing):
  """The routing with each token's k experts ordered by decreasing gate weight
  (ties by increasing id): the canonical order of a CSV-loaded trace."""
  a = _arrays(routing)
  out = {}
  for ph in _PHASES:
    ids, gates = a[f"{ph}_ids"], a[f"{ph}_gates"].astype(np.float32)
    order = np.lexsort((ids, -gates), axis=-1)
    out[f"{ph}_ids"] = np.take_along_axis(ids, order, -1)
    out[f"{ph}_gates"] = np.take_along_axis(gates, order, -1)
  return make_routing(**out)


# ---------------------------------------------------------------------------
# .npz

def save_npz(path, routing, meta: dict | None = None) -> None:
  """Writes ``routing`` in the ndpsim .npz format.  ``meta`` is JSON-able;
  its keys ``num_experts`` and ``layer_ids`` are stored as arrays and checked."""
  meta = dict(meta or {})
  num_experts = int(meta.pop("num_experts", 0) or 0)
  check_routing(routing, f"save_npz {path}", num_experts=num_experts or None)
  a = _arrays(routing)
  num_layers = a["prefill_ids"].shape[2]
  layer_ids = np.asarray(meta.pop("layer_ids", np.arange(num_layers)), np.int32)
  if layer_ids.shape != (num_layers,):
    raise ConfigError(f"save_npz {path}: meta layer_ids has shape {layer_ids.shape}; "
                      f"give {num_layers} layer indices")
  try:
    meta_json = json.dumps(meta)
  except TypeError as e:
    raise ConfigError(f"save_npz {path}: meta is not JSON-able ({e})") from None
  np.savez_compressed(
      path, format=np.array(FORMAT_NAME), version=np.int32(FORMAT_VERSION),
      num_experts=np.int32(num_experts), layer_ids=layer_ids,
      meta_json=np.array(meta_json),
      **{k: v.astype(np.int32 if k.endswith("ids") else np.float32)
         for k, v in a.items()})


def _open_npz(path) -> tuple[dict[str, np.ndarray], str]:
  where = str(path)
  if not pathlib.Path(path).is_file():
    raise ConfigError(f"trace file {where!r} does not exist; give an existing .npz")
  try:
    with np.load(path, allow_pickle=False) as z:
      data = {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise ConfigError(f"{where}: not an ndpsim .npz routing trace ({e})") from None
  if str(data.get("format", "")) != FORMAT_NAME:
    raise ConfigError(f"{where}: field 'format' is {str(data.get('format'))!r}; an "
                      f"ndpsim routing trace has format {FORMAT_NAME!r} (save_npz)")
  if int(data.get("version", -1)) != FORMAT_VERSION:
    raise ConfigError(f"{where}: format version {data.get('version')} is not "
                      f"{FORMAT_VERSION}; re-save the trace with this ndpsim")
  for ph in _PHASES:
    for kind in ("ids", "gates"):
      if f"{ph}_{kind}" not in data:
        raise ConfigError(f"{where}: missing array '{ph}_{kind}'")
  return data, where


def read_npz_meta(path) -> dict[str, Any]:
  """The metadata of an .npz trace: its meta dict plus num_experts and layer_ids."""
  data, _ = _open_npz(path)
  meta = json.loads(str(data["meta_json"]))
  meta["num_experts"] = int(data["num_experts"])
  meta["layer_ids"] = [int(x) for x in data["layer_ids"]]
  return meta


def load_npz(path, num_experts: int | None = None, top_k: int | None = None,
             num_layers: int | None = None):
  """Reads an ndpsim .npz trace into a ``routing.Routing``.  Ids are checked
  against ``num_experts`` (else the recorded one), and k and L if given."""
  data, where = _open_npz(path)
  recorded = int(data["num_experts"])
  if num_experts and recorded and num_experts != recorded:
    raise ConfigError(f"{where}: trace records num_experts {recorded} but "
                      f"{num_experts} was asked for")
  r = TraceRouting(**{f"{ph}_{kind}": data[f"{ph}_{kind}"]
                      for ph in _PHASES for kind in ("ids", "gates")})
  check_routing(r, where, num_experts=num_experts or recorded or None, top_k=top_k,
                num_layers=num_layers)
  return make_routing(*r)


# ---------------------------------------------------------------------------
# CSV (NeuPIMs-MoE / DynaNDE)

def save_csv(path, routing, num_experts: int | None = None,
             layer_ids: Sequence[int] | None = None) -> None:
  """Writes ``routing`` as one NeuPIMs-MoE CSV, rows by layer then token.

  Token ids run over sequences end to end, each sequence its P prefill then
  T decode tokens; read back with ``load_csv(path, prompt_len=P,
  tokens_per_sequence=P + T)``.  Gates are written with 9 significant digits
  (float32 exact); a selected expert's gate must be > 0 to be representable.
  """
  where = f"save_csv {path}"
  a = _arrays(routing)
  ids_max = max(int(a["prefill_ids"].max(initial=-1)), int(a["decode_ids"].max(initial=-1)))
  num_experts = num_experts or ids_max + 1
  check_routing(routing, where, num_experts=num_experts)
  for ph in _PHASES:
    _first_bad(where, ph, a[f"{ph}_gates"] <= 0, a[f"{ph}_gates"],
               "is a gate of 0; the CSV format reads 0 as 'not selected'")
  ids = np.concatenate([a["prefill_ids"], a["decode_ids"]], axis=1)
  gates = np.concatenate([a["prefill_gates"], a["decode_gates"]], axis=1)
  s, n, num_layers, _ = ids.shape
  layer_ids = list(range(num_layers)) if layer_ids is None else [int(x) for x in layer_ids]
  if len(layer_ids) != num_layers:
    raise ConfigError(f"{where}: layer_ids has {len(layer_ids)} entries; give {num_layers}")
  ids = ids.reshape(s * n, num_layers, -1).transpose(1, 0, 2)    # [L, N, k]
  gates = gates.reshape(s * n, num_layers, -1).transpose(1, 0, 2)
  dense = np.zeros((num_layers, s * n, num_experts), np.float32)
  np.put_along_axis(dense, ids, gates.astype(np.float32), axis=-1)
  with open(path, "w", newline="") as f:
    f.write(",".join(["layer_id", "token_id"] +
                     [f"expert_{e}" for e in range(num_experts)]) + "\n")
    for l in range(num_layers):
      for t in range(s * n):
        vals = ["0" if g == 0 else f"{g:.9g}" for g in dense[l, t].tolist()]
        f.write(f"{layer_ids[l]},{t}," + ",".join(vals) + "\n")


class _Rows(NamedTuple):
  layer: np.ndarray   # [R] routing layer index
  token: np.ndarray   # [R]
  gates: np.ndarray   # [R, E]
  line: np.ndarray    # [R] line number in its file
  file: np.ndarray    # [R] index into the file list
  raw_layer: np.ndarray  # [R] layer_id as written


def _read_csv_file(path: str) -> tuple[np.ndarray, ...]:
  p = pathlib.Path(path)
  if not p.is_file():
    raise ConfigError(f"trace file {path!r} does not exist; give an existing .csv")
  with open(p, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise ConfigError(f"{path}: line 1: empty file; the header must be "
                      "layer_id,token_id,expert_0,...")
  head = [h.strip() for h in rows[0]]
  e = len(head) - 2
  want = ["layer_id", "token_id"] + [f"expert_{i}" for i in range(max(e, 1))]
  if e < 1 or head != want:
    raise ConfigError(f"{path}: line 1: header {','.join(head[:4])}... is not "
                      "layer_id,token_id,expert_0,...,expert_{E-1}")
  body = rows[1:]
  if not body:
    raise ConfigError(f"{path}: line 2: no data rows after the header")
  for i, r in enumerate(body):
    if len(r) != e + 2:
      raise ConfigError(f"{path}: line {i + 2}: row has {len(r)} fields; the header "
                        f"has {e + 2}")
  try:
    vals = np.array(body, dtype=np.float64)
  except ValueError:
    for i, r in enumerate(body):
      try:
        [float(x) for x in r]
      except ValueError:
        raise ConfigError(f"{path}: line {i + 2}: row holds a value that is not a "
                          "number") from None
    raise
  lines = np.arange(2, len(body) + 2)
  for col, name in ((0, "layer_id"), (1, "token_id")):
    bad = (vals[:, col] < 0) | (vals[:, col] != np.round(vals[:, col]))
    if bad.any():
      i = int(np.argmax(bad))
      raise ConfigError(f"{path}: line {lines[i]}: {name} {vals[i, col]} must be an "
                        "integer >= 0")
  gates = vals[:, 2:]
  bad = ~np.isfinite(gates) | (gates < 0)
  if bad.any():
    i, j = (int(x) for x in np.argwhere(bad)[0])
    raise ConfigError(f"{path}: line {lines[i]}: expert_{j} gate score {gates[i, j]} "
                      "must be a finite number >= 0 (0 = not selected)")
  return vals[:, 0].astype(np.int64), vals[:, 1].astype(np.int64), gates, lines


def load_csv(path, top_k: int | None = None, num_layers: int | None = None,
             prompt_len: int = 0, *, tokens_per_sequence: int | None = None,
             num_experts: int | None = None):
  """Reads a NeuPIMs-MoE / DynaNDE routing CSV (or a list of per-layer CSVs)
  into a ``routing.Routing`` (see the module docstring for the token mapping).

  ``top_k``: selections per row (default: the first row's); ``num_layers``:
  expected layers; ``tokens_per_sequence``: default all tokens of a layer form
  one sequence; ``prompt_len``: leading prefill tokens of each sequence
  (0 = all decode); ``num_experts``: the model's experts -- a row selecting a
  column at or beyond it is an error (all-zero extra columns are dropped).
  FLAME-MoE samples: ``tokens_per_sequence=64, prompt_len=32``.
  """
  paths = [str(p) for p in path] if isinstance(path, (list, tuple)) else [str(path)]
  if not paths:
    raise ConfigError("load_csv: give a CSV path or a non-empty list of paths")
  parts = []
  width = None
  for fi, p in enumerate(paths):
    layer, token, gates, lines = _read_csv_file(p)
    if width is not None and gates.shape[1] != width:
      raise ConfigError(f"{p}: line 1: header has {gates.shape[1]} expert columns but "
                        f"{paths[0]} has {width}; all files need the same experts")
    width = gates.shape[1]
    if num_experts is not None and width > num_experts:
      beyond = (gates[:, num_experts:] > 0).any(axis=1)
      if beyond.any():
        i = int(np.argmax(beyond))
        j = num_experts + int(np.argmax(gates[i, num_experts:] > 0))
        raise ConfigError(f"{p}: line {lines[i]} (layer_id {layer[i]}, token_id "
                          f"{token[i]}): expert id {j} (column expert_{j}) is out of "
                          f"range for num_experts {num_experts}")
      gates = gates[:, :num_experts]
    if len(paths) > 1:
      if (layer != layer[0]).any():
        i = int(np.argmax(layer != layer[0]))
        raise ConfigError(f"{p}: line {lines[i]}: layer_id {layer[i]} differs from "
                          f"{layer[0]} above; with several files each holds one layer")
      routing_layer = np.full_like(layer, fi)
    else:
      routing_layer = layer - layer.min()
    parts.append((routing_layer, token, gates, lines, np.full_like(lines, fi), layer))
  rows = _Rows(*(np.concatenate(x) for x in zip(*parts)))
  return _assemble(rows, paths, top_k, num_layers, prompt_len, tokens_per_sequence)


def _assemble(rows: _Rows, paths, top_k, num_layers, prompt_len, tokens_per_sequence):
  def at(i, msg):
    i = int(i)
    return ConfigError(f"{paths[rows.file[i]]}: line {rows.line[i]} (layer_id "
                       f"{rows.raw_layer[i]}, token_id {rows.token[i]}): {msg}")
  selected = rows.gates > 0
  counts = selected.sum(axis=1)
  k = int(counts[0]) if top_k is None else int(top_k)
  if k < 1:
    raise at(0, "row selects no expert (all gate scores are 0)")
  if (counts != k).any():
    i = int(np.argmax(counts != k))
    src = "top_k" if top_k is not None else "the first row's count"
    raise at(i, f"row selects {counts[i]} experts (nonzero gate scores) but k is {k} "
             f"({src}); fix the row or pass top_k")
  # Layers: contiguous, and as many as asked for.
  order = np.lexsort((rows.token, rows.layer))
  layers = rows.layer[order]
  present = np.unique(layers)
  gaps = np.nonzero(np.diff(layers) > 1)[0]
  if gaps.size:
    j = order[gaps[0] + 1]
    raise at(j, f"layer {layers[gaps[0]] + 1} is missing: layers jump from "
             f"{layers[gaps[0]]} to {layers[gaps[0] + 1]}")
  num_l = present.size
  if num_layers is not None and num_l != num_layers:
    raise at(order[-1], f"trace has {num_l} layers but num_layers is {num_layers}; "
             f"layers {num_l}..{num_layers - 1} are missing")
  # Tokens: per layer exactly 0..N-1, the same N for every layer.
  starts = np.searchsorted(layers, present)
  ends = np.append(starts[1:], layers.size)
  n = int(ends[0] - starts[0])
  for li, (a, b) in enumerate(zip(starts, ends)):
    tok = rows.token[order[a:b]]
    expect = np.arange(b - a)
    if (tok != expect).any():
      j = int(np.argmax(tok != expect))
      what = "is repeated" if j and tok[j] == tok[j - 1] else f"comes where token_id {j} should"
      raise at(order[a + j], f"token_id {tok[j]} {what}; token ids of a layer must "
               "be 0, 1, 2, ... with no gaps")
    if b - a != n:
      raise at(order[b - 1], f"ragged trace: layer {li} has {b - a} tokens but layer 0 "
               f"has {n}; every layer needs the same tokens")
  tps = n if tokens_per_sequence is None else int(tokens_per_sequence)
  if tps < 1:
    raise ConfigError(f"load_csv: tokens_per_sequence is {tps}; write a positive integer")
  if not 0 <= prompt_len <= tps:
    raise ConfigError(f"load_csv: prompt_len is {prompt_len}; write 0.."
                      f"{tps} (tokens_per_sequence)")
  if n % tps:
    first = n - n % tps
    raise at(order[first], f"ragged sequences: {n} tokens per layer is not a multiple "
             f"of tokens_per_sequence {tps}; the last sequence starts at token_id "
             f"{first} and has only {n % tps} tokens")
  g = rows.gates[order].reshape(num_l, n, -1)
  # Top-k by decreasing gate, ties by id: a stable sort of -gate keeps id order.
  ids = np.argsort(-g, axis=-1, kind="stable")[..., :k]
  gates = np.take_along_axis(g, ids, -1)
  s = n // tps
  ids = ids.reshape(num_l, s, tps, k).transpose(1, 2, 0, 3)     # [S, tps, L, k]
  gates = gates.reshape(num_l, s, tps, k).transpose(1, 2, 0, 3)
  p = int(prompt_len)
  return make_routing(ids[:, :p], gates[:, :p], ids[:, p:], gates[:, p:])
