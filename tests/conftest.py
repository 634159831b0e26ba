"""Session setup shared by every test process.

* Tests run on the CPU; several forced host devices only where a test asks.
* One persistent JAX compilation cache per test session, shared by the xdist
  workers and by every subprocess a test starts (the binary, the notebook
  twin, the CLIs): most of the suite's time is XLA compiling the same
  programs -- the same engine shapes in both workers, the same study in
  several binary runs.  The first process of a session (the xdist controller,
  or the only process) makes a fresh temporary folder, exports it through the
  environment (workers and subprocesses inherit it) and removes it at exit;
  so a clean clone needs nothing set up, and a cache never outlives its
  session.  A ``JAX_COMPILATION_CACHE_DIR`` already set is respected.  The
  cache changes no number: a cached executable is the compiled program.
"""
import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# XLA:CPU compiles faster at LLVM -O0 without its expensive passes, with the
# legacy fusion emitter and without splitting the module for parallel
# codegen: the suite compiles ~100 engine programs and runs each on a few
# sequences, so compilation was two thirds of its CPU time (measured: 2,434
# of ~3,700 CPU-s in one `pytest -n 2` run; tracing and lowering most of the
# rest).  Per stage, one OLMoE `tp_lb_prefetch` engine program on a quiet
# core: XLA compile 5.4 s at the defaults, 3.6 s at -O0, ~1.6 s with all four
# flags (a profile of the -O0 compile: 4.1 of its 4.1 s in the MLIR fusion
# emitter's per-fusion pipelines, 281 of them).  The HLO passes (fusion,
# simplification) still run; only how the fused kernels are turned into
# machine code changes, which keeps IEEE semantics: the golden, clock and
# NumPy-reference tests hold their tolerances under it.  Users' runs (the
# binary, benchmarks, notebooks) keep XLA's defaults.  Subprocesses that tests
# start take the same flags (``NDPSIM_TEST_XLA_FLAGS``); set it empty to test
# at full optimisation.  An XLA_FLAGS already set is respected.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                  "--xla_llvm_disable_expensive_passes=true "
                  "--xla_cpu_use_fusion_emitters=false "
                  "--xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("NDPSIM_TEST_XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("XLA_FLAGS", os.environ["NDPSIM_TEST_XLA_FLAGS"])

_SESSION_CACHE = "NDPSIM_TEST_JAX_CACHE"
if _SESSION_CACHE not in os.environ:
  os.environ[_SESSION_CACHE] = tempfile.mkdtemp(prefix="ndpsim-test-jaxcache-")
  atexit.register(shutil.rmtree, os.environ[_SESSION_CACHE], ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ[_SESSION_CACHE])
# Cache every program, however small or quick to compile (the defaults skip
# programs under 1 s of compile, which is most of them here).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


# ---------------------------------------------------------------------------
# xdist scheduling (`setup.cfg` runs with `--dist loadgroup`).  A module whose
# tests share expensive state -- a module-scoped fixture, an lru_cache of
# engine runs, one binary run several tests read -- runs as one unit on one
# worker, so that state is built once per session, not once per worker that
# happens to draw one of its tests.  Modules sharing compiled engine shapes
# run as one unit too.  Every other test is scheduled on its own.  xdist
# sends the units with the most tests first (--loadscope-reorder, its
# default), so the grouped modules start early and the single tests fill in
# at the end.
GROUPS = {
    # OLMoE, 2 sequences of 16 + 8 tokens, every policy: the same compiles.
    "test_engine.py": "engine_olmoe",
    "test_engine_golden.py": "engine_olmoe",
    "test_reference.py": "engine_olmoe",
    # One module each: shared fixtures, cached runs, or shared compiles
    # (test_monde: one routing shape and one ``monde`` compile for its engine
    # tests; test_routing: each generator shape compiles once, ~10 s).
    **{name: name[:-3] for name in (
        "test_codesign.py", "test_distributed.py", "test_energy.py",
        "test_engine_handcomputed.py", "test_experiment.py", "test_extreme_grid.py",
        "test_monde.py", "test_notebook.py", "test_policy_api.py", "test_properties.py",
        "test_relaxed.py", "test_routing.py", "test_routing_calibration.py",
        "test_sensitivity.py", "test_smoke.py", "test_trace.py", "test_tune.py",
        "test_tune_per_layer.py")},
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  for item in items:
    group = GROUPS.get(item.path.name)
    if group:
      item.add_marker(pytest.mark.xdist_group(group))
