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

The code: :mod:`~ndpsim.workload.trace_routing` (the arrays and their
checks), :mod:`~ndpsim.workload.trace_npz` (format 1),
:mod:`~ndpsim.workload.trace_csv` (format 2, one file) and
:mod:`~ndpsim.workload.trace_layouts` (several files, the layouts); this
module re-exports them and holds :func:`load`.

Not modelled: token text, padding, per-token timestamps, capacity drops.
Errors are one ConfigError line naming the file and the position (CSV line and
column, counted in the file as written, header and skipped lines included; or
the npz index ``phase[sequence, token, layer]``) and the fix; binary or
non-UTF-8 content included.
"""
from __future__ import annotations

import os

from ndpsim.workload.trace_csv import save_csv  # noqa: F401  (re-exported)
from ndpsim.workload.trace_layouts import (LAYOUTS, is_trace_path,  # noqa: F401
                                           load_csv, trace_files)
from ndpsim.workload.trace_npz import load_npz, read_npz_meta, save_npz  # noqa: F401
from ndpsim.workload.trace_routing import (  # noqa: F401  (re-exported)
    FLAME_PROMPT_LEN, FLAME_TOKENS_PER_SEQUENCE, FORMAT_NAME, FORMAT_VERSION, TraceRouting,
    check_against_model, check_model_shape, check_routing, make_routing, sort_by_gate)


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
