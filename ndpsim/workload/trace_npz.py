"""Format 1 of :mod:`ndpsim.workload.traces`: ndpsim's ``.npz`` routing trace
(:func:`save_npz`, :func:`load_npz`, :func:`read_npz_meta`)."""
from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from ndpsim.base import ConfigError
from ndpsim.workload.trace_routing import (_PHASES, FORMAT_NAME, FORMAT_VERSION, TraceRouting,
                                           _arrays, check_routing, make_routing)


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
