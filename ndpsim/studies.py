"""The studies behind ``ndpsim-experiment``: configuration, cells, runs, summaries.

A study is a grid of *cells*; a cell is one simulated configuration
``(model, policy, num_ndp_units, resident_fraction, routing)`` run over
``num_seqs`` sequences.  Studies (names for ``--studies``):

* ``headline`` -- every model x every policy at each headline NDP-unit count
  and the headline ``resident_fraction`` (the prefetch budget), routing
  ``config.routing``;
* ``ndp_units`` -- ``sweep_models`` x ``sweep_policies`` x ``sweep_ndp_units``;
* ``prefetch`` -- ``sweep_models`` x ``prefetch_policies`` x ``resident_fractions``
  at the first headline unit count: one compiled call per (model, policy),
  ``jax.vmap`` over the fractions (policy params are traced);
* ``routing`` -- the headline grid (first unit count) under each calibrated
  real-trace routing preset (:data:`REAL_TRACE_PRESETS`);
* ``sensitivity`` -- d(mean end-to-end latency) / d(log p) for every traced
  hardware parameter p (``jax.jvp``), see :mod:`ndpsim.sensitivity_study`.

``monde`` (the baseline every speedup is measured against) is simulated in
every (model, unit count, routing) a study touches, at the headline
``resident_fraction``.

Routing: the evaluation set is ``routing.generate(PRNGKey(seed), spec,
preset)``; MoNDE's offline profile (its "dataset") is the per-(layer, expert)
activation count over every token of a separate profiling set,
``generate(fold_in(PRNGKey(seed), 1), spec, preset)``.  A trace file instead
gives its first half of sequences to the profile and the second to the
evaluation.

The ``tuned`` policy: per (model, NDP-unit count, routing) its knobs
(``resident_fraction``, ``gpu_bias``, ``ndp_bias``) are fitted with
:func:`ndpsim.tune.fit` on a training set that never overlaps the evaluation
set -- the first ``tune_num_seqs`` sequences of
``generate(fold_in(PRNGKey(seed), 2), spec, preset)`` (a trace file: of its
profile half) -- and the cell is then simulated at those knobs like any other
policy.  The fitted ``resident_fraction`` replaces the cell's (the headline
one) and is what the ``tuned`` row reports; the heuristic's point (headline
``resident_fraction``, biases 1) is always among the candidates, so on the training set
``tuned`` is never slower than ``tp_lb_prefetch``.  Each fit is written to
``<out_dir>/tuned/<key>.json`` (reused by ``--resume``); results.json lists
them per model under ``tuned``.

Scale-out: sequences are sharded over every device (``jax.devices()``: all
local devices, or all hosts' after ``jax.distributed.initialize``) with a
``Mesh`` + ``NamedSharding`` on the sequence axis; the sequence count is
padded to a multiple of the device count with copies that are dropped from
the results, so the numbers do not depend on the device count.

Modules, one concern each (every name is re-exported here as
``studies.X``): :mod:`ndpsim.study_config` (flags' defaults),
:mod:`ndpsim.study_resolve` (flags -> a validated study),
:mod:`ndpsim.study_workloads` (routing, profiles, MoNDE's alpha, training
sets), :mod:`ndpsim.study_tuned` (the ``tuned`` fits),
:mod:`ndpsim.study_runner` (cells, fingerprints, rows, results.json's
configuration, sensitivity) and :mod:`ndpsim.study_io` (cells and rows on
disk, speedups).

Files: every finished cell is written atomically to
``<out_dir>/cells/<key>.json`` with a fingerprint of everything it depends
on; a resumed run reuses the cells whose fingerprint matches.
"""
from __future__ import annotations

# The study is split by concern; this module keeps every name importable as
# ``studies.X`` (the binary, tests, notebooks and users' scripts use it).
from ndpsim.sharding import (SEQ_AXIS, device_mesh, shard_sequences,  # noqa: F401
                             simulate_sharded, to_host)
from ndpsim.study_io import (Cell, add_speedups, cell_key, cell_path, check_finite,  # noqa: F401
                             make_row, select, speedup_summary, write_atomic)
from ndpsim.study_config import (BASELINE, DEFAULT_MODELS, DEFAULT_POLICIES,  # noqa: F401
                                 DEFAULT_SYSTEM, REAL_TRACE_PRESETS, STUDIES, TUNED,
                                 StudyConfig)
from ndpsim.study_resolve import (Resolved, Workload, fingerprint_fields, fit_problem,  # noqa: F401
                                  resolve, routing_label)
from ndpsim.study_workloads import (MONDE_PROFILE_BATCHES, make_training,  # noqa: F401
                                    make_workload, monde_alpha)
from ndpsim.study_tuned import (tuned_fit, tuned_fit_path, tuned_params, tuned_summary)  # noqa: F401
from ndpsim.study_runner import (Progress, REQUESTS_KEY, REQUEST_CELL_KEYS,  # noqa: F401
                                 cell_fingerprint, check_resume, fingerprint_parts, load_cell,
                                 read_cell, resolved_config, row_digest, run_cells,
                                 sensitivity, simulated_params, split_requests)
