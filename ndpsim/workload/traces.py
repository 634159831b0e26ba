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

Format 2, the CSV of NeuPIMs-MoE / DynaNDE / FLAME-MoE (:func:`load_csv`,
:func:`save_csv`): header ``layer_id,token_id,expert_0,...,expert_{E-1}``, one
row per (layer, token) holding each expert's gate score, 0 when the expert is
not selected.  Blank lines (a trailing one included) and lines starting with
``#`` are skipped; a UTF-8 BOM and CRLF line ends are accepted.  Every row
selects k experts (nonzero scores); with ``top_k`` given, a row with more
nonzero scores -- NeuPIMs' dense router probabilities, one per expert -- keeps
its top-k by score, ties by lower expert id (NeuPIMs' own reader sorts the row
and takes the first k); gates are the scores as written, not renormalised.

Layout "sequences" (default): ``token_id`` counts the tokens of one layer from
0; sequences are laid end to end: token ``i`` is position
``i % tokens_per_sequence`` of sequence ``i // tokens_per_sequence``, and its
first ``prompt_len`` positions are prefill, the rest decode (the FLAME-MoE
sample set: 64 tokens per sequence, first 32 = "prefill").  Layer ids must be
contiguous; routing layer ``l`` is ``layer_id - min(layer_id)``.

Several files (FLAME/DynaNDE ship one file per layer, each with ``layer_id``
0): a list (file ``i`` is routing layer ``i``), a directory (every ``*.csv``
below it) or a glob (``dir/*.csv``, ``**`` recursive).  From a directory or a
glob the layers are ordered by the layer number in the path (``layer12`` /
``Layer_12``; else the last number of the file name), so ``layer10`` follows
``layer9``; a gap in the numbers, two files of one layer, or files with
different token counts are one error.  DynaNDE's ``*_stats.csv`` summaries
beside the traces are skipped.

Layout "decoder_batch" (``layout="decoder_batch"``): the NeuPIMs-MoE / DynaNDE
decoder batch -- one file (or folder) per token position, ``token_id`` = the
request in the batch.  DynaNDE: ``Decoder_Batch_x/{1st,2nd,...}/Layer_N/*.csv``
(position = the number in the innermost folder that is not ``Layer_N``, layer = the number
in the ``Layer_N`` folder / ``layerN`` file name, ``layer_id`` 0 in each);
NeuPIMs: one file per iteration (``iter0.csv``, ``iter1.csv``, ... holding
every ``layer_id``).  Request ``s`` at position ``t`` becomes token ``t`` of
sequence ``s``: S = batch, tokens_per_sequence = positions (the first
``prompt_len`` of them prefill, default none).  Loading such a folder without
the option is refused (one layer twice), never read as one long sequence.

The CSV does not keep the order of a token's k experts: loading sorts them by
decreasing gate (ties by id), see :func:`sort_by_gate`.  :func:`load` reads
any of these (or an ``.npz``) and, given ``model=``, refuses a trace whose
layers, top-k or expert ids do not fit the model, before anything is simulated.

Not modelled: token text, padding, per-token timestamps, capacity drops.
Errors are one ConfigError line naming the file and the position (CSV line and
column, counted in the file as written, header and skipped lines included; or
the npz index ``phase[sequence, token, layer]``) and the fix; binary or
non-UTF-8 content included.
"""
from __future__ import annotations

import csv
import glob
import itertools
import json
import os
import pathlib
import re
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


def _arrays(routing, where: str = "routing") -> dict[str, np.ndarray]:
  """The four arrays as NumPy; gates widened to float32 (bf16/fp16 allowed;
  complex, bool or text gates refused, naming ``where``)."""
  out = {}
  for ph in _PHASES:
    out[f"{ph}_ids"] = np.asarray(getattr(routing, f"{ph}_ids"))
    gates = np.asarray(getattr(routing, f"{ph}_gates"))
    if gates.dtype.kind in "cbOUSM":  # complex, bool, objects, text, datetimes
      raise ConfigError(f"{where}: {ph}_gates has dtype {gates.dtype}; write real "
                        "(float) gate weights")
    out[f"{ph}_gates"] = gates.astype(np.float32) if gates.dtype != np.float64 else gates
  return out


def check_routing(routing, where: str = "routing", num_experts: int | None = None,
                  top_k: int | None = None, num_layers: int | None = None) -> None:
  """Validates any object with the four routing fields; ConfigError names
  ``where`` and the first bad entry as ``phase[sequence, token, layer]``."""
  a = _arrays(routing, where)
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


def check_model_shape(routing, model, where: str = "routing") -> None:
  """A trace against a ``models.MoeModelSpec``: an expert id beyond the model's
  experts first (a CSV trace's id is its column: ``expert_8`` is id 8), then
  layers x top-k; one ConfigError naming ``where`` and the model."""
  from ndpsim.workload import models  # pylint: disable=import-outside-toplevel
  a = _arrays(routing, where)
  e = model.num_experts
  for ph in _PHASES:
    ids = a[f"{ph}_ids"].astype(np.int64)
    if ids.ndim == 4 and (ids >= e).any():
      s, t, l, j = (int(x) for x in np.argwhere(ids >= e)[0])
      i = int(ids[s, t, l, j])
      raise ConfigError(
          f"{where}: {ph}[sequence {s}, token {t}, layer {l}] selects expert {i} (column "
          f"expert_{i} of a CSV trace), out of range for E={e} experts of model "
          f"{model.name!r} (ids 0..{e - 1}); give the model the trace was recorded on, "
          f"or a trace with columns expert_0..expert_{e - 1}")
  shape = tuple(a["prefill_ids"].shape[2:])
  want_l = models.num_moe_layers(model)
  if shape != (want_l, model.top_k):
    raise ConfigError(
        f"{where}: trace has {shape[0]} layers x top-{shape[1]} but model {model.name!r} "
        f"needs {want_l} MoE layers x top-{model.top_k}; give a model that matches the "
        "trace")


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
  except Exception as e:  # pylint: disable=broad-except  (BadZipFile, EOFError, ...)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(f"{where}: byte 0: not a readable NumPy .npz (zip) file "
                      f"({type(e).__name__}: {msg}); write it with traces.save_npz or "
                      "give a routing .csv") from None
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
  key: np.ndarray     # [R] token index of the assembled trace (ordering)
  gates: np.ndarray   # [R, E]
  line: np.ndarray    # [R] line number in its file
  file: np.ndarray    # [R] index into the file list
  raw_layer: np.ndarray  # [R] layer_id as written
  token: np.ndarray   # [R] token_id as written


_FIX_TEXT = ("give the routing CSV as text (header layer_id,token_id,expert_0,...) or "
             "an ndpsim .npz")


def _read_text(path: str) -> str:
  """The file as text: UTF-8 (a BOM allowed); binary content is one error
  naming the line and column of the first offending byte."""
  data = pathlib.Path(path).read_bytes()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise ConfigError(f"{path}: line {line}, column {col}: byte 0x{data[e.start]:02x} is "
                      f"not UTF-8 text (a binary file?); {_FIX_TEXT}") from None
  nul = text.find("\x00")
  if nul >= 0:
    line = text.count("\n", 0, nul) + 1
    col = nul - (text.rfind("\n", 0, nul) + 1) + 1
    raise ConfigError(f"{path}: line {line}, column {col}: NUL byte (a binary file?); "
                      f"{_FIX_TEXT}")
  return text


def _read_csv_file(path: str) -> tuple[np.ndarray, ...]:
  """(layer_id, token_id, gates [R, E], line numbers) of one CSV.  Blank lines
  and lines starting with '#' are skipped (line numbers count them)."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise ConfigError(f"trace file {path!r} does not exist; give an existing .csv")
  text = _read_text(path)
  numbered = []
  for no, raw in enumerate(text.split("\n"), 1):
    s = raw.strip()
    if s and not s.startswith("#"):
      numbered.append((no, raw.rstrip("\r")))
  if not numbered:
    raise ConfigError(f"{path}: line 1: no header (the file is empty, blank or only "
                      "comments); the header must be layer_id,token_id,expert_0,...")
  try:
    rows = list(csv.reader([r for _, r in numbered]))
  except csv.Error as e:
    raise ConfigError(f"{path}: not a readable CSV ({e}); {_FIX_TEXT}") from None
  lines = np.array([n for n, _ in numbered])
  head = [h.strip() for h in rows[0]]
  e = len(head) - 2
  want = ["layer_id", "token_id"] + [f"expert_{i}" for i in range(max(e, 1))]
  if e < 1 or head != want:
    bad = next((i for i, (h, w) in enumerate(zip(head, want)) if h != w), len(head))
    hint = ("; DynaNDE's *_stats.csv files are statistics, not routing traces"
            if head and head[0].lower() == "expert_id" else "")
    raise ConfigError(f"{path}: line {lines[0]}, column {bad + 1}: header "
                      f"{','.join(head[:4])}... is not "
                      f"layer_id,token_id,expert_0,...,expert_{{E-1}}{hint}")
  body, lines = rows[1:], lines[1:]
  if not body:
    raise ConfigError(f"{path}: line {numbered[0][0] + 1}: no data rows after the header")
  for i, r in enumerate(body):
    if len(r) != e + 2:
      raise ConfigError(f"{path}: line {lines[i]}: row has {len(r)} fields; the header "
                        f"has {e + 2} (layer_id, token_id and {e} experts)")
  try:
    vals = np.array(body, dtype=np.float64)
  except ValueError:
    for i, r in enumerate(body):
      for j, x in enumerate(r):
        try:
          float(x)
        except ValueError:
          name = head[j]
          raise ConfigError(f"{path}: line {lines[i]}, column {j + 1} ({name}): {x!r} "
                            "is not a number; write a decimal number (gate scores: 0 = "
                            "not selected)") from None
    raise
  for col, name in ((0, "layer_id"), (1, "token_id")):
    bad = (vals[:, col] < 0) | (vals[:, col] != np.round(vals[:, col]))
    if bad.any():
      i = int(np.argmax(bad))
      raise ConfigError(f"{path}: line {lines[i]}, column {col + 1}: {name} "
                        f"{vals[i, col]} must be an integer >= 0")
  gates = vals[:, 2:]
  bad = ~np.isfinite(gates) | (gates < 0)
  if bad.any():
    i, j = (int(x) for x in np.argwhere(bad)[0])
    raise ConfigError(f"{path}: line {lines[i]}, column {j + 3}: expert_{j} gate score "
                      f"{gates[i, j]} must be a finite number >= 0 (0 = not selected)")
  return vals[:, 0].astype(np.int64), vals[:, 1].astype(np.int64), gates, lines


# ---------------------------------------------------------------------------
# Several files: a directory, a glob, or a list.

LAYOUTS = ("sequences", "decoder_batch")
_LAYER_RE = re.compile(r"layer[_\-]?(\d+)", re.IGNORECASE)
_NUM_RE = re.compile(r"\d+")
_STATS_RE = re.compile(r"_stats\.csv$", re.IGNORECASE)


def is_trace_path(name) -> bool:
  """Whether ``name`` names a trace (an existing file or directory, a .npz/.csv
  path, or a glob pattern) rather than a routing preset."""
  s = str(name)
  return (s.endswith((".npz", ".csv")) or glob.has_magic(s)
          or os.path.isdir(s) or os.path.isfile(s))


def trace_files(path) -> tuple[list[str], str | None]:
  """The CSV files of ``path`` and the folder they are named relative to.

  A file is itself; a directory is every ``*.csv`` below it (recursively); a
  pattern with ``*``, ``?`` or ``[`` is a glob (``**`` recursive).  DynaNDE's
  ``*_stats.csv`` summaries beside its traces are skipped.  Sorted by path."""
  s = str(path)
  if glob.has_magic(s):
    found = sorted(f for f in glob.glob(s, recursive=True) if os.path.isfile(f))
    parts = pathlib.PurePath(s).parts
    fixed = list(itertools.takewhile(lambda x: not glob.has_magic(x), parts))
    root = str(pathlib.PurePath(*fixed)) if fixed else "."
    what = f"glob {s!r} matches"
  elif os.path.isdir(s):
    found = sorted(str(f) for f in pathlib.Path(s).rglob("*.csv") if f.is_file())
    root, what = s, f"directory {s!r} holds"
  elif os.path.isfile(s):
    return [s], None
  else:
    raise ConfigError(f"trace {s!r} does not exist; give an existing .npz/.csv file, a "
                      "directory of per-layer .csv files or a glob such as 'dir/*.csv'")
  files = [f for f in found if not _STATS_RE.search(f)]
  if not files:
    raise ConfigError(f"{what} no routing .csv file ({len(found)} *_stats.csv skipped); "
                      "give the folder or pattern of the layer_id,token_id,expert_... files")
  return files, root


def _rel_parts(f: str, root: str | None) -> tuple[str, ...]:
  try:
    return pathlib.Path(f).relative_to(root).parts if root else (pathlib.Path(f).name,)
  except ValueError:
    return (pathlib.Path(f).name,)


def _layer_number(f: str, root: str | None) -> int | None:
  """The layer number in a file's name (``layer12``, ``Layer_12``), else in its
  folders below the root (innermost first), else None."""
  parts = _rel_parts(f, root)
  for part in reversed(parts):
    m = _LAYER_RE.findall(part)
    if m:
      return int(m[-1])
  return None


def _position_number(f: str, root: str | None) -> int | None:
  """The token position of a decoder-batch file: the number in the innermost
  folder below the root that is not a ``Layer_N`` folder (DynaNDE: ``1st``,
  ``2nd``, ``10th``), else the last number in the file name outside ``layerN``."""
  parts = _rel_parts(f, root)
  for part in reversed(parts[:-1]):
    if not _LAYER_RE.search(part):
      m = _NUM_RE.findall(part)
      if m:
        return int(m[0])
  m = _NUM_RE.findall(_LAYER_RE.sub("", parts[-1]))
  return int(m[-1]) if m else None


def _order_layer_files(files: list[str], root: str | None) -> list[str]:
  """Per-layer files in layer order (the number in the file name); refuses
  missing numbers, gaps and the decoder-batch layout (one layer twice)."""
  nums = [_layer_number(f, root) for f in files]
  if any(n is None for n in nums):
    nums = [None] * len(files)
    for i, f in enumerate(files):
      m = _NUM_RE.findall(pathlib.Path(f).stem)
      nums[i] = int(m[-1]) if m else None
  for f, n in zip(files, nums):
    if n is None:
      raise ConfigError(f"{f}: no layer number in the file name; name per-layer files "
                        "like layer2.csv (or Layer_2/...) or pass a list in layer order")
  seen: dict[int, str] = {}
  for f, n in zip(files, nums):
    if n in seen:
      raise ConfigError(
          f"{f} and {seen[n]} both hold layer {n}: this looks like the NeuPIMs/DynaNDE "
          "decoder batch layout (one folder per token position, token_id = request in the "
          "batch); pass layout='decoder_batch' to load it as requests x positions, or give "
          "one position's files")
    seen[n] = f
  order = sorted(range(len(files)), key=lambda i: nums[i])
  have = sorted(seen)
  missing = sorted(set(range(have[0], have[-1] + 1)) - set(have))
  if missing:
    raise ConfigError(f"{root or files[0]}: layer file(s) {missing} missing: the files "
                      f"hold layers {have[0]}..{have[-1]} but not {missing}; add them or "
                      "pass the files as a list (taken in the given order)")
  return [files[i] for i in order]


def _check_width(p, gates, width, first, num_experts, layer, token, lines):
  if width is not None and gates.shape[1] != width:
    raise ConfigError(f"{p}: line 1: header has {gates.shape[1]} expert columns but "
                      f"{first} has {width}; all files need the same experts")
  if num_experts is not None and gates.shape[1] > num_experts:
    beyond = (gates[:, num_experts:] > 0).any(axis=1)
    if beyond.any():
      i = int(np.argmax(beyond))
      j = num_experts + int(np.argmax(gates[i, num_experts:] > 0))
      raise ConfigError(f"{p}: line {lines[i]} (layer_id {layer[i]}, token_id "
                        f"{token[i]}): expert id {j} (column expert_{j}) is out of "
                        f"range for num_experts {num_experts}")
    gates = gates[:, :num_experts]
  return gates


def load_csv(path, top_k: int | None = None, num_layers: int | None = None,
             prompt_len: int = 0, *, tokens_per_sequence: int | None = None,
             num_experts: int | None = None, layout: str = "sequences"):
  """Reads a NeuPIMs-MoE / DynaNDE / FLAME-MoE routing CSV -- one file, a list
  of per-layer files, a directory or a glob -- into a ``routing.Routing`` (see
  the module docstring for the token mapping and the layouts).

  ``top_k``: experts per token; a row with more nonzero scores (dense
  probabilities) keeps its top-k (ties by lower id), one with fewer is an error
  (default: every row must select as many as the first row); ``num_layers``:
  expected layers; ``tokens_per_sequence``: default all tokens of a layer form
  one sequence; ``prompt_len``: leading prefill tokens of each sequence
  (0 = all decode); ``num_experts``: the model's experts -- a row selecting a
  column at or beyond it is an error (all-zero extra columns are dropped);
  ``layout``: ``"sequences"`` or ``"decoder_batch"`` (one file per token
  position, ``token_id`` = request).
  FLAME-MoE samples: ``tokens_per_sequence=64, prompt_len=32``.
  """
  if layout not in LAYOUTS:
    raise ConfigError(f"load_csv: layout {layout!r} is not one of {list(LAYOUTS)}")
  if isinstance(path, (list, tuple)):
    paths, root = [str(p) for p in path], None
    if not paths:
      raise ConfigError("load_csv: give a CSV path or a non-empty list of paths")
    if layout == "decoder_batch":
      root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
      paths = [os.path.abspath(p) for p in paths]
  else:
    paths, root = trace_files(path)
    if root is not None and len(paths) > 1 and layout == "sequences":
      paths = _order_layer_files(paths, root)
  if layout == "decoder_batch":
    return _load_decoder_batch(paths, root, top_k, num_layers, prompt_len,
                               tokens_per_sequence, num_experts)
  parts = []
  width = None
  for fi, p in enumerate(paths):
    layer, token, gates, lines = _read_csv_file(p)
    gates = _check_width(p, gates, width, paths[0], num_experts, layer, token, lines)
    width = width or gates.shape[1]
    if len(paths) > 1:
      if (layer != layer[0]).any():
        i = int(np.argmax(layer != layer[0]))
        raise ConfigError(f"{p}: line {lines[i]}: layer_id {layer[i]} differs from "
                          f"{layer[0]} above; with several files each holds one layer "
                          "(files that each hold every layer of one token position are "
                          "the decoder batch layout: pass layout='decoder_batch')")
      if fi and token.size != parts[0][1].size:
        raise ConfigError(f"{p}: {token.size} tokens but {paths[0]} has "
                          f"{parts[0][1].size}; per-layer files must hold the same tokens")
      routing_layer = np.full_like(layer, fi)
    else:
      routing_layer = layer - layer.min()
    parts.append((routing_layer, token, gates, lines, np.full_like(lines, fi), layer, token))
  rows = _Rows(*(np.concatenate(x) for x in zip(*parts)))
  return _assemble(rows, paths, top_k, num_layers, prompt_len, tokens_per_sequence)


def _load_decoder_batch(paths, root, top_k, num_layers, prompt_len, tokens_per_sequence,
                        num_experts):
  """One file per (token position[, layer]); token_id = request in the batch."""
  pos = [_position_number(p, root) for p in paths]
  lay = [_layer_number(p, root) for p in paths]
  for p, n in zip(paths, pos):
    if n is None:
      raise ConfigError(f"{p}: no token position in its folder or file name; the decoder "
                        "batch layout needs one folder (1st, 2nd, ...) or file (pos0.csv, "
                        "...) per position")
  if any(n is None for n in lay) and not all(n is None for n in lay):
    i = lay.index(None)
    raise ConfigError(f"{paths[i]}: no layer number in its path while other files have "
                      "one; name every file or folder by layer (Layer_2, layer2.csv)")
  positions = sorted(set(pos))
  missing = sorted(set(range(positions[0], positions[-1] + 1)) - set(positions))
  if missing:
    raise ConfigError(f"{root}: token position(s) {missing} missing: the files hold "
                      f"positions {positions[0]}..{positions[-1]}; add them or give "
                      "fewer positions")
  num_t = len(positions)
  if tokens_per_sequence is not None and tokens_per_sequence != num_t:
    raise ConfigError(f"{root}: tokens_per_sequence is {tokens_per_sequence} but the "
                      f"decoder batch holds {num_t} positions (one per folder)")
  seen: dict[tuple[int, int | None], str] = {}
  parts, width, batch = [], None, None
  for fi, p in enumerate(paths):
    layer, token, gates, lines = _read_csv_file(p)
    gates = _check_width(p, gates, width, paths[0], num_experts, layer, token, lines)
    width = width or gates.shape[1]
    key = (pos[fi], lay[fi])
    if key in seen:
      raise ConfigError(f"{p} and {seen[key]} both hold position {pos[fi]}"
                        + (f", layer {lay[fi]}" if lay[fi] is not None else "")
                        + "; keep one file per position and layer, and give the batch "
                        "folder itself (its subfolders 1st, 2nd, ... are the positions)")
    seen[key] = p
    if lay[fi] is not None:
      if (layer != layer[0]).any():
        i = int(np.argmax(layer != layer[0]))
        raise ConfigError(f"{p}: line {lines[i]}: layer_id {layer[i]} differs from "
                          f"{layer[0]} above; a file in a Layer_{lay[fi]} path holds one "
                          "layer")
      layer_num = np.full_like(layer, lay[fi])
    else:
      layer_num = layer
    # Requests: every layer of the file holds token_id 0..B-1, the same B everywhere.
    for l in np.unique(layer_num):
      sel = layer_num == l
      tok = np.sort(token[sel])
      b = tok.size
      if (tok != np.arange(b)).any():
        j = int(np.argmax(tok != np.arange(b)))
        raise ConfigError(f"{p}: layer {l}: requests (token_id) must be 0..{b - 1} "
                          f"without gaps or repeats; token_id {j} is "
                          f"{'repeated' if j and tok[j] == tok[j - 1] else 'missing'}")
      if batch is None:
        batch = (b, p)
      elif b != batch[0]:
        raise ConfigError(f"{p}: {b} requests (token_id 0..{b - 1}) but {batch[1]} has "
                          f"{batch[0]}; every position and layer needs the whole batch")
    parts.append([layer_num, token, gates, lines, np.full_like(lines, fi), layer, token,
                  pos[fi]])
  layers = sorted(set(np.concatenate([x[0] for x in parts]).tolist()))
  by_pos: dict[int, set] = {}
  for x in parts:
    by_pos.setdefault(x[7], set()).update(x[0].tolist())
  for n in positions:
    if by_pos[n] != set(layers):
      gone = sorted(set(layers) - by_pos[n])
      raise ConfigError(f"{root}: position {n} has no file or rows for layer(s) {gone}; "
                        "every position needs every layer")
  gaps = sorted(set(range(layers[0], layers[-1] + 1)) - set(layers))
  if gaps:
    raise ConfigError(f"{root}: layer(s) {gaps} missing: the files hold layers "
                      f"{layers[0]}..{layers[-1]}")
  cols = []
  for x in parts:
    layer_num, token = x[0], x[1]
    x[0] = layer_num - layers[0]
    x[1] = token * num_t + positions.index(x[7])   # request-major: [S, T]
    cols.append(tuple(x[:7]))
  rows = _Rows(*(np.concatenate(c) for c in zip(*cols)))
  return _assemble(rows, paths, top_k, num_layers, prompt_len, num_t)


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
  if top_k is None:
    bad = counts != k
    msg = ("but k is {k} (the first row's count); fix the row, or pass top_k to take "
           "each row's top-k (dense probability rows)")
  else:   # dense probability rows: more than k nonzero keep their top-k
    bad = counts < k
    msg = "but top_k is {k}: too few to take the top-k; fix the row or lower top_k"
  if bad.any():
    i = int(np.argmax(bad))
    raise at(i, f"row selects {counts[i]} experts (nonzero gate scores) "
             + msg.format(k=k))
  # Layers: contiguous, and as many as asked for.
  order = np.lexsort((rows.key, rows.layer))
  layers = rows.layer[order]
  present = np.unique(layers)
  gaps = np.nonzero(np.diff(layers) > 1)[0]
  if gaps.size:
    j = order[gaps[0] + 1]
    raise at(j, f"layer {layers[gaps[0]] + 1} is missing: layers jump from "
             f"{layers[gaps[0]]} to {layers[gaps[0] + 1]}")
  num_l = present.size
  if num_layers is not None and num_l != num_layers:
    raise at(order[-1], f"trace has {num_l} layers but num_layers is {num_layers}"
             + (f"; layers {num_l}..{num_layers - 1} are missing" if num_l < num_layers
                else "; give a model with as many MoE layers"))
  # Tokens: per layer exactly 0..N-1, the same N for every layer.
  starts = np.searchsorted(layers, present)
  ends = np.append(starts[1:], layers.size)
  n = int(ends[0] - starts[0])
  for li, (a, b) in enumerate(zip(starts, ends)):
    tok = rows.key[order[a:b]]
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


# ---------------------------------------------------------------------------
# Any trace

def load(path, *, model=None, top_k: int | None = None, num_layers: int | None = None,
         num_experts: int | None = None, prompt_len: int = 0,
         tokens_per_sequence: int | None = None, layout: str = "sequences"):
  """Any trace: an ndpsim ``.npz`` (by suffix or zip content), or CSV(s) as
  :func:`load_csv` reads them (a file, a list, a directory or a glob).

  ``model`` (a ``models.MoeModelSpec``) supplies top_k, num_experts and
  num_layers when not given, and the trace is checked against it: a trace of
  another shape is one ConfigError naming the trace, the model and the
  mismatch, before anything is simulated."""
  if model is not None:
    top_k = top_k or model.top_k
    num_experts = num_experts or model.num_experts
  where = str(path) if not isinstance(path, (list, tuple)) else f"{path[0]} (+{len(path) - 1})"
  s = str(path)
  is_npz = False
  if not isinstance(path, (list, tuple)) and os.path.isfile(s):
    with open(s, "rb") as f:
      is_npz = s.endswith(".npz") or f.read(2) == b"PK"
  if is_npz:
    r = load_npz(s, num_experts=None)
  else:
    r = load_csv(path, top_k=top_k, prompt_len=prompt_len, num_experts=num_experts,
                 tokens_per_sequence=tokens_per_sequence, layout=layout)
  if model is not None:
    check_model_shape(r, model, where)
    check_against_model(r, model, where)
  else:
    check_routing(r, where, num_experts=num_experts, top_k=top_k, num_layers=num_layers)
  return r
