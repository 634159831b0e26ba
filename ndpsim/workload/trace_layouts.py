"""Reading routing CSVs into a routing: one file, a list, a directory or a
glob, in the "sequences" layout or the "decoder_batch" layout (see
:mod:`ndpsim.workload.traces` for the token mapping of each); :func:`load_csv`.
"""
from __future__ import annotations

import glob
import itertools
import os
import pathlib
import re

import numpy as np

from ndpsim.base import ConfigError
from ndpsim.workload.trace_csv import _check_width, _read_csv_file, _Rows
from ndpsim.workload.trace_routing import make_routing

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


def _decoder_positions(paths, root, tokens_per_sequence):
  """(position of each file, layer of each file or None, the sorted positions)
  of a decoder batch; refuses files without a position and gaps."""
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
  return pos, lay, positions


def _check_requests(p, layer_num, token, batch):
  """Every layer of file ``p`` holds token_id 0..B-1, the same B as ``batch``
  ((B, file) of the first file, or None); returns the (B, file) to carry on."""
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
  return batch


def _decoder_files(paths, pos, lay, num_experts):
  """Per file: [layer number, token_id, gates, lines, file index, layer_id,
  token_id, position], every file checked for its layer and its requests."""
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
    batch = _check_requests(p, layer_num, token, batch)
    parts.append([layer_num, token, gates, lines, np.full_like(lines, fi), layer, token,
                  pos[fi]])
  return parts


def _load_decoder_batch(paths, root, top_k, num_layers, prompt_len, tokens_per_sequence,
                        num_experts):
  """One file per (token position[, layer]); token_id = request in the batch."""
  pos, lay, positions = _decoder_positions(paths, root, tokens_per_sequence)
  num_t = len(positions)
  parts = _decoder_files(paths, pos, lay, num_experts)
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


def _row_error(rows: _Rows, paths):
  """``at(i, msg)``: a ConfigError naming the file, line, layer_id and token_id
  of row ``i``."""
  def at(i, msg):
    i = int(i)
    return ConfigError(f"{paths[rows.file[i]]}: line {rows.line[i]} (layer_id "
                       f"{rows.raw_layer[i]}, token_id {rows.token[i]}): {msg}")
  return at


def _experts_per_row(rows: _Rows, top_k, at) -> int:
  """k: ``top_k``, else the first row's count; rows selecting other counts
  (fewer than top_k when given) are refused."""
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
  return k


def _layer_token_order(rows: _Rows, num_layers, at):
  """(row order by layer then token, layers, tokens per layer); refuses gaps
  in layers or tokens, a wrong layer count and ragged layers."""
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
  return order, num_l, n


def _assemble(rows: _Rows, paths, top_k, num_layers, prompt_len, tokens_per_sequence):
  """The routing of checked rows: top-k per row by gate, sequences of
  ``tokens_per_sequence`` tokens, the first ``prompt_len`` of each prefill."""
  at = _row_error(rows, paths)
  k = _experts_per_row(rows, top_k, at)
  order, num_l, n = _layer_token_order(rows, num_layers, at)
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
