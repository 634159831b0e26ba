"""The experiment binary's absl flags and their conversion to a
:class:`ndpsim.study_config.StudyConfig`.

One set of defaults: every study flag takes its default from ``StudyConfig()``
(``tests/test_public_api.py`` checks that the flags parse back to it).  One name
per knob: a flag is named like the ``StudyConfig`` field it sets, which is the
name results.json, the rows and the engine (``PolicyParams``) use; flags renamed
for that (:data:`ndpsim.study_config.RENAMED_FLAGS`) stay defined only to
refuse their old name with the new one.  Imports no JAX (``--help`` stays fast).
"""
from __future__ import annotations

from typing import Any

from absl import flags

from ndpsim.base import ConfigError
from ndpsim.study_config import (DEFAULT_NUM_SEQS, DEFAULT_OUTPUT_LEN, DEFAULT_PROMPT_LEN,
                                 RENAMED_FLAGS, StudyConfig)

FLAGS = flags.FLAGS
_D = StudyConfig()  # the one set of defaults (flags and the Python API share it)
flags.DEFINE_string("system", _D.system,
                    "system preset name (hw_configs/systems/) or path to a .json")
flags.DEFINE_list("models", list(_D.models),
                  "models: registry names, model .json files or HF config.json paths")
flags.DEFINE_list("policies", list(_D.policies),
                  "policies of the headline (monde, the speedup baseline, always runs, "
                  "its alpha auto-tuned on profiling sequences first); "
                  "tuned fits its knobs per model first (ndpsim.tune.fit on "
                  "--tune_num_seqs training sequences at fold_in(seed, 2))")
flags.DEFINE_integer("tune_num_seqs", _D.tune_num_seqs, "training sequences of each tuned fit (a "
                     "multiple of --batch_size); never the evaluation sequences")
flags.DEFINE_list("num_ndp_units", [str(n) for n in _D.num_ndp_units],
                  "NDP units of the headline; a list sweeps the headline over each")
flags.DEFINE_float("resident_fraction", _D.resident_fraction,
                   "the headline's prefetch/resident budget (PolicyParams."
                   "resident_fraction): a fraction in [0, 1] of the GPU memory left for "
                   "experts; also where each tuned fit starts")
flags.DEFINE_list("resident_fractions", [f"{b:g}" for b in _D.resident_fractions],
                  "resident_fraction values the prefetch study sweeps (each in [0, 1])")
flags.DEFINE_multi_string("policy_module", [], "a Python file defining your own "
                          "ndpsim.policies.Policy (repeatable); its policies can then be "
                          "named in --policies and the sweep lists")
flags.DEFINE_list("prefetch_policies", list(_D.prefetch_policies),
                  "policies the prefetch study sweeps")
flags.DEFINE_list("sweep_ndp_units", [str(n) for n in _D.sweep_ndp_units],
                  "NDP-unit counts the ndp_units study sweeps")
flags.DEFINE_list("sweep_models", list(_D.sweep_models),
                  "models of the ndp_units and prefetch studies (empty: the first of "
                  "--models)")
flags.DEFINE_list("sweep_policies", list(_D.sweep_policies),
                  "policies of the ndp_units study")
flags.DEFINE_integer("prompt_len", _D.prompt_len, "prompt tokens per sequence (default "
                     f"{DEFAULT_PROMPT_LEN}, or the trace's)")
flags.DEFINE_integer("output_len", _D.output_len, "output tokens per sequence (default "
                     f"{DEFAULT_OUTPUT_LEN}, or the trace's)")
flags.DEFINE_integer("batch_size", _D.batch_size, "sequences decoded together")
flags.DEFINE_integer("num_seqs", _D.num_seqs, f"sequences per cell (default {DEFAULT_NUM_SEQS}, "
                     "or the trace's evaluation half); more narrows the 95% intervals")
flags.DEFINE_string("routing", _D.routing,
                    "routing preset name (ndpsim.workload.routing.PRESETS) or a "
                    ".npz/.csv trace file, or a folder or glob of per-layer CSV files")
flags.DEFINE_enum("routing_layout", _D.routing_layout, ["sequences", "decoder_batch"],
                  "how a CSV --routing trace maps to sequences: 'sequences' (token_id "
                  "counts one layer's tokens; sequences of prompt_len + output_len tokens "
                  "end to end) or 'decoder_batch' (NeuPIMs-MoE/DynaNDE decoder folders: "
                  "one folder or file per token position, token_id = request in the "
                  "batch; request s, position t -> sequence s, token t); see "
                  "docs/routing.md 'Trace formats'")
flags.DEFINE_integer("seed", _D.seed, "seed of the evaluation routing (MoNDE's profile uses "
                     "fold_in(seed, 1))")
flags.DEFINE_string("out_dir", "ndpsim_results", "folder for results, plots and cells")
flags.DEFINE_list("studies", list(_D.studies),
                  "studies to run: headline, ndp_units, prefetch, routing, sensitivity")
flags.DEFINE_multi_string("set", [], "hardware override component.field=value, e.g. "
                          "gpu.memory_bandwidth_gbps=800 (repeatable); the unit count "
                          "is --num_ndp_units, not system.num_ndp_units")
flags.DEFINE_string("dtype", _D.dtype, "storage dtype of every weight group (bf16, fp8, int4, "
                    "...); empty keeps each model's own")
flags.DEFINE_boolean("resume", False, "reuse the finished cells in --out_dir")
flags.DEFINE_boolean("overwrite", False, "replace the results of an earlier run in "
                     "--out_dir (without it, or --resume, such a folder is refused)")
flags.DEFINE_boolean("plots", True, "write the PNG plots")
flags.DEFINE_string("cache_dir", "", "persistent JAX compilation cache folder (speeds up "
                    "re-runs and --resume); empty = none")
flags.DEFINE_boolean("allow_implausible", _D.allow_implausible, "accept hardware values (presets, --set) "
                     "outside their plausible range for the unit, e.g. a 2.6 MHz GPU "
                     "clock; never outside what the float32 engine can carry (README "
                     "'Validation')")
flags.DEFINE_boolean("distributed", False, "call jax.distributed.initialize() first "
                     "(one process per host; see docs/results.md)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed)")
flags.DEFINE_integer("num_processes", None, "number of processes (--distributed)")
flags.DEFINE_integer("process_id", None, "this process's index (--distributed)")
flags.DEFINE_string("trace_out", "", "write a Chrome/Perfetto trace JSON of one sequence "
                    "of one cell to this file: every layer's slices on the GPU, each NDP "
                    "unit and both link directions (open it in https://ui.perfetto.dev or "
                    "chrome://tracing; README 'Timeline'); empty: no trace")
flags.DEFINE_string("trace_cell", "", "MODEL,POLICY of the cell --trace_out traces (the "
                    "study's first cell with both, e.g. qwen3-30b-a3b,tp_lb_prefetch); "
                    "empty: the study's first cell")
flags.DEFINE_integer("trace_seq", 0, "the sequence of that cell --trace_out traces")



class _RenamedParser(flags.ArgumentParser):
  """Parser of a renamed flag: any value is refused, naming the new flag."""

  def __init__(self, old: str, new: str):
    super().__init__()
    self.old, self.new = old, new

  def parse(self, argument):
    raise ValueError(f"--{self.old} was renamed --{self.new} (the name of the knob in "
                     f"results.json and PolicyParams); write --{self.new}={argument}")

  def flag_type(self) -> str:
    return "renamed"


for _old, _new in RENAMED_FLAGS.items():
  flags.DEFINE(_RenamedParser(_old, _new), _old, None,
               f"renamed --{_new}; the old name is refused")

_LIST_TYPES = {"num_ndp_units": int, "sweep_ndp_units": int, "resident_fractions": float}


def _typed_list(name: str, values: list[str]) -> tuple:
  tp = _LIST_TYPES.get(name, str)
  out = []
  for v in values:
    try:
      x = tp(v)
    except ValueError:
      kind = "integers" if tp is int else "numbers"
      raise ConfigError(f"--{name}: {v!r} is not a number; write a comma-separated list "
                        f"of {kind}") from None
    out.append(x)
  return tuple(out)


def config_from_flags(fl=FLAGS):
  """A ``StudyConfig`` from parsed flags (ConfigError on a malformed list)."""
  kw: dict[str, Any] = {}
  for name in ("models", "policies", "num_ndp_units", "resident_fractions",
               "prefetch_policies", "sweep_ndp_units", "sweep_models", "sweep_policies",
               "studies"):
    kw[name] = _typed_list(name, list(fl[name].value))
  for name in ("system", "resident_fraction", "prompt_len", "output_len", "batch_size",
               "num_seqs", "routing", "seed", "dtype", "tune_num_seqs", "routing_layout",
               "allow_implausible"):
    kw[name] = fl[name].value
  kw["overrides"] = tuple(fl["set"].value)
  return StudyConfig(**kw)
