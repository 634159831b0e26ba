"""What a study run depends on, and its defaults: one place for both.

Imported by the experiment binary for its flag defaults (this module imports
no JAX, so ``--help`` stays fast) and by :mod:`ndpsim.studies`, which resolves
a :class:`StudyConfig` into runnable cells.
"""
from __future__ import annotations

import dataclasses

DEFAULT_SYSTEM = "paper_rtx5080_ndp_dimm"
# Models whose routed experts exceed the GPU's expert budget (the paper's
# premise); OLMoE-1B-7B is left out: all its experts fit in 16 GB.
DEFAULT_MODELS = ("qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v2-lite", "qwen1.5-moe-a2.7b")
DEFAULT_POLICIES = ("monde", "monde_eq6", "dynande", "monde_resident", "ndp_ep", "ndp_tp",
                    "tp_lb", "tp_lb_prefetch", "tp_lb_adaptive", "oracle", "gpu_offload")
STUDIES = ("headline", "ndp_units", "prefetch", "routing", "sensitivity")
REAL_TRACE_PRESETS = ("flame_moe_290m", "mixtral_8x7b", "llama4_maverick")
BASELINE = "monde"
TUNED = "tuned"
# Workload sizes when a synthetic routing preset leaves them unset (a trace
# gives its own): tokens per sequence and sequences per cell.
DEFAULT_PROMPT_LEN, DEFAULT_OUTPUT_LEN, DEFAULT_NUM_SEQS = 512, 512, 8
# Flags renamed so that one knob has one name from flag to results.json; the
# binary refuses the old names with the new one.
RENAMED_FLAGS = {"headline_budget": "resident_fraction",
                 "prefetch_budgets": "resident_fractions"}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Everything a study run depends on (the experiment's flags, resolved).

  resident_fraction: the headline's prefetch/resident budget, a fraction in
    [0, 1] of the GPU memory left for experts (``PolicyParams.resident_fraction``;
    also the ``tuned`` fit's starting point).
  resident_fractions: the values the ``prefetch`` study sweeps.
  prompt_len / output_len / num_seqs: None = the default
    (:data:`DEFAULT_PROMPT_LEN`, :data:`DEFAULT_OUTPUT_LEN`,
    :data:`DEFAULT_NUM_SEQS`) for a synthetic routing preset, or the trace's own
    for a trace file.
  sweep_models: empty = the first of ``models``.
  overrides: ``--set`` strings, ``component.field=value``.
  dtype: storage dtype of every weight group ("" keeps each model's own).
  tune_num_seqs: training sequences of each ``tuned`` fit (a multiple of
    batch_size).
  routing_layout: how a CSV trace's files map to sequences
    (``traces.LAYOUTS``): "sequences" (token_id counts one layer's tokens,
    sequences end to end) or "decoder_batch" (NeuPIMs/DynaNDE decoder folders:
    one file per token position, token_id = request in the batch).
  allow_implausible: accept hardware values outside their plausible range for
    the unit (never outside the hard range the engine can carry); recorded in
    results.json.
  """
  system: str = DEFAULT_SYSTEM
  models: tuple[str, ...] = DEFAULT_MODELS
  policies: tuple[str, ...] = DEFAULT_POLICIES
  num_ndp_units: tuple[int, ...] = (4,)
  resident_fraction: float = 1.0
  resident_fractions: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
  prefetch_policies: tuple[str, ...] = ("tp_lb_prefetch", "tp_lb_adaptive")
  sweep_ndp_units: tuple[int, ...] = (2, 3, 4, 5, 6)
  sweep_models: tuple[str, ...] = ()
  sweep_policies: tuple[str, ...] = ("monde", "ndp_tp", "tp_lb_prefetch")
  prompt_len: int | None = None
  output_len: int | None = None
  batch_size: int = 1
  num_seqs: int | None = None
  routing: str = "mixtral_8x7b"
  seed: int = 0
  studies: tuple[str, ...] = ("headline", "ndp_units", "prefetch")
  overrides: tuple[str, ...] = ()
  dtype: str = ""
  tune_num_seqs: int = 2
  routing_layout: str = "sequences"
  allow_implausible: bool = False
