"""Format 2 of :mod:`ndpsim.workload.traces`, one file: the routing CSV of
NeuPIMs-MoE / DynaNDE / FLAME-MoE (header ``layer_id,token_id,expert_0,...``),
written by :func:`save_csv` and read, file by file, by :func:`read_csv_file`
(which :mod:`ndpsim.workload.trace_layouts` assembles into a routing).

Errors name the file, the line and the column as written (header, blank and
comment lines counted).
"""
from __future__ import annotations

import csv
import pathlib
from typing import NamedTuple, Sequence

import numpy as np

from ndpsim.base import ConfigError
from ndpsim.workload.trace_routing import _PHASES, _arrays, _first_bad, check_routing


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
  return _parse_rows(path, head, body, lines)


def _parse_rows(path: str, head: list[str], body: list[list[str]], lines: np.ndarray):
  """(layer_id, token_id, gates [R, E], line numbers) of the data rows under
  a checked header ``head`` (E = len(head) - 2); ``lines`` numbers ``body``."""
  e = len(head) - 2
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
