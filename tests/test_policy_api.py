"""The policy contract (issue 11): a policy is one file with its own traced
knobs and state; it registers itself, the binary loads a user's file, and
every policy -- shipped or a user's -- passes the generic property suite
(``ndpsim.policy_checks``)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import engine, policies, policy_checks
from ndpsim.base import ConfigError
from ndpsim.policies import base as pb
from ndpsim.workload import models as M
from tests import engine_util as U

# A user's policy: tp_lb whose GPU-lane estimate is scaled by a knob of its
# own; relaxed mode uses the soft balancer so the knob has a gradient.
USER_POLICY = textwrap.dedent('''
    """tp_lb with its own knob ``gpu_weight`` (a user's file)."""
    from typing import Any

    from ndpsim import base
    from ndpsim.policies import balance
    from ndpsim.policies import base as pb


    @base.params_dataclass
    class Knobs:
      gpu_weight: Any = 1.0


    def init(ctx, params):
      return pb.Start(own=0.0)   # own state: layers placed so far


    def place(ctx, res, own, layer, slots, params, phase):
      w = params.own.gpu_weight
      if ctx.relaxed:
        gfrac = balance.soft_split(slots, w, 1.0, params.temperature_s)
        p = pb.Placement(gpu_frac=gfrac, fetch=(gfrac > 0) & ~slots.resident & slots.valid,
                         ep_unit=slots.ids * 0)
      else:
        p = pb.no_fetch_placement(slots, balance.greedy_split(slots, w, 1.0))
      return p, own + 1.0


    POLICY = pb.Policy(name="user_weighted", ndp_mode="tp", init=init, place=place,
                       default_params=Knobs(), param_ranges=(("gpu_weight", 0.0, None, False, None),))
''')


@pytest.fixture(scope="module")
def user_policy(tmp_path_factory):
  path = tmp_path_factory.mktemp("user") / "my_policy.py"
  path.write_text(USER_POLICY)
  names = policies.load_module(path)
  assert names == ["user_weighted"]
  return path, policies.get("user_weighted")


@pytest.fixture(scope="module")
def setup():
  return policy_checks.default_setup()


@pytest.mark.parametrize("name", [p for p in policies.names() if p != "oracle"])
@pytest.mark.policy
def test_every_shipped_policy_passes_the_generic_suite(name, setup):
  assert policy_checks.check_policy(name, setup=setup) == []


@pytest.mark.policy
def test_a_users_policy_passes_the_generic_suite(user_policy, setup):
  assert policy_checks.check_policy(user_policy[1], setup=setup) == []


@pytest.mark.policy
def test_the_suite_catches_memory_overrun_and_bound_violations(setup):
  def place(ctx, res, own, layer, slots, params, phase):
    # Keeps every expert it touches: ignores the capacity it was given.
    p = pb.no_fetch_placement(slots, slots.valid)
    keep = jnp.zeros((ctx.num_experts,), bool).at[slots.ids].max(slots.valid)
    return p._replace(requests=pb.Requests(keep=keep)), own

  hog = pb.Policy(name="hog", ndp_mode="tp", init=lambda c, p: pb.Start(), place=place)
  # The module's setup (Mixtral, whose touched experts far exceed the GPU):
  # the oracle's compile there is shared with the other policies' checks.
  bad = policy_checks.check_policy(hog, setup=setup)
  assert any("GPU memory over capacity" in b for b in bad), bad

  def lying_bound(ctx, slots, post_min_s):
    return jnp.zeros(())

  liar = pb.Policy(name="liar", ndp_mode="tp", init=lambda c, p: pb.Start(),
                   place=policies.get("ndp_tp").place, layer_bound=lying_bound)
  bad = policy_checks.check_policy(liar, setup=setup)
  assert any("below the oracle bound" in b for b in bad), bad


@pytest.mark.policy
@pytest.mark.gradient
def test_own_knob_is_range_checked_vmapped_in_one_compile_and_differentiable(user_policy):
  _, pol = user_policy
  with pytest.raises(ConfigError, match="user_weighted.gpu_weight"):
    policies.make_params(pol, gpu_weight=-1.0)
  with pytest.raises(ConfigError, match="unknown policy parameter 'weight'"):
    policies.make_params(pol, weight=1.0)
  model = M.get_model("mixtral-8x7b")
  system = U.load()
  r = U.routing("mixtral-8x7b")
  engine.validate(system[0], system[1], model, r.prefill_ids, r.decode_ids, 1)

  def mean_e2e(w, relaxed=False):
    p = pb.PolicyParams(own=pol.default_params.__class__(gpu_weight=w))
    res = engine.simulate(system, model, r, pol, p, check=False, relaxed=relaxed)
    return jnp.mean(res.e2e_s)

  ws = jnp.asarray([0.02, 50.0], jnp.float32)
  traced = chex.assert_max_traces(engine.simulate_core, n=1)
  old = engine._simulate_jit  # pylint: disable=protected-access
  engine._simulate_jit = jax.jit(traced, static_argnames=engine.STATIC_ARGNAMES)
  try:
    both = jax.vmap(mean_e2e)(ws)
  finally:
    engine._simulate_jit = old
  singles = [float(mean_e2e(float(w))) for w in ws]
  np.testing.assert_allclose(np.asarray(both), singles, rtol=1e-6)
  assert both[0] != both[1]  # the knob changes the placement

  # Gradient through the relaxed engine against central finite differences
  # (x64, as tests/test_relaxed.py: float32 differences of seconds are noise).
  with jax.enable_x64(True):
    from ndpsim import base  # pylint: disable=import-outside-toplevel
    ss, sp = system
    sp64 = base.as_arrays(sp, jnp.float64)
    olmoe = M.get_model("olmoe-1b-7b")
    # NumPy routing: no compile of the routing generator at OLMoE's shape.
    r2 = U.numpy_routing("olmoe-1b-7b", 2, 16, 8)

    def relaxed_e2e(w):
      p = pb.PolicyParams(temperature_s=jnp.float64(2e-5),
                          own=pol.default_params.__class__(gpu_weight=w))
      res = engine.simulate((ss, sp64), olmoe, r2, pol, p, check=False, relaxed=True)
      return jnp.mean(res.e2e_s)

    # One compile: the finite-difference values are the forward values of
    # the same compiled value_and_grad (no separate forward program).
    value_and_grad = jax.jit(jax.value_and_grad(relaxed_e2e))
    w0 = jnp.float64(1.0)
    g = float(value_and_grad(w0)[1])
    h = 1e-6
    fd = float((value_and_grad(w0 + h)[0] - value_and_grad(w0 - h)[0]) / (2 * h))
  assert np.isfinite(g) and g != 0.0, g
  assert abs(g - fd) <= 1e-3 * abs(fd), (g, fd)


@pytest.mark.e2e
def test_binary_runs_a_users_policy_file(user_policy, tmp_path):
  """A user's policy beside a shipped one.  The study is tests/test_experiment.py's
  headline (tiny model, 4 sequences of 8 + 4 tokens, 2 NDP units, monde and
  tp_lb_prefetch), so that in a full test run its monde and tp_lb_prefetch
  programs come from the session's compilation cache (tests/conftest.py):
  only the user's policy compiles here."""
  path, _ = user_policy
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "ndpsim.experiment", f"--policy_module={path}",
         "--policies=tp_lb_prefetch,user_weighted", "--models=tests/data/exp_tiny_model.json",
         "--studies=headline", "--num_seqs=4", "--prompt_len=8", "--output_len=4",
         "--num_ndp_units=2", "--plots=false", f"--out_dir={out}"]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # hang guard
  assert done.returncode == 0, done.stderr[-2000:]
  rows = json.loads((out / "results.json").read_text())["rows"]
  assert {"tp_lb_prefetch", "user_weighted"} <= {r["policy"] for r in rows}


@pytest.mark.e2e
@pytest.mark.inputs
def test_binary_refuses_a_broken_policy_file_in_one_line(tmp_path):
  bad = tmp_path / "broken.py"
  bad.write_text("import numpy\nx = 1\n")
  cmd = [sys.executable, "-m", "ndpsim.experiment", f"--policy_module={bad}",
         f"--out_dir={tmp_path / 'o'}"]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # hang guard
  assert done.returncode == 2
  err = done.stderr.strip()
  assert "defines no ndpsim.policies.Policy" in err and "\n" not in err, err


@pytest.mark.inputs
def test_registration_refuses_a_taken_name():
  clash = policies.get("tp_lb")._replace(init=lambda c, p: pb.Start())
  with pytest.raises(ConfigError, match="already registered"):
    policies.register(clash)


@pytest.mark.policy
def test_shipped_policies_write_no_engine_arrays():
  """Residency and the queue belong to the engine: no policy module assigns
  to them (they request changes through Placement.requests)."""
  import inspect  # pylint: disable=import-outside-toplevel
  for name in policies.names():
    src = inspect.getsource(sys.modules[policies.get(name).place.__module__])
    for field in ("resident=", "queue_end_s=", "queued_s=", "drained_s=", "prefetched=",
                  "used="):
      assert f"replace(state, {field}" not in src and f".{field[:-1]}.at[" not in src, (
          name, field)


@pytest.mark.policy
def test_slots_keep_the_contract_policies_read_rows_by():
  """``pb.Slots``: tokens are 0 on invalid slots; prefill slots are the
  experts in id order (``tp_lb_prefetch`` reads its counts as rows and its
  top-M shares the engine's count sort on that promise)."""
  from ndpsim import engine_layer  # pylint: disable=import-outside-toplevel
  counts = jnp.asarray([0, 3, 0, 1, 5, 0], jnp.int32)
  ids, tok, valid = engine_layer.slots_prefill(counts)
  np.testing.assert_array_equal(np.asarray(ids), np.arange(6))
  np.testing.assert_array_equal(np.asarray(tok), np.asarray(counts))
  np.testing.assert_array_equal(np.asarray(valid), np.asarray(counts) > 0)
  # Decode with a batch: fewer distinct experts than slots leaves padding.
  ids, tok, valid = engine_layer.slots_decode(jnp.asarray([[4, 1], [4, 2]]), 6, 2)
  assert int(jnp.sum(valid)) == 3
  assert np.all(np.asarray(tok)[~np.asarray(valid)] == 0)
  assert sorted(np.asarray(ids)[np.asarray(valid)].tolist()) == [1, 2, 4]
