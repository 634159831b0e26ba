"""Every resolved hardware value is recorded with unit and provenance, and a
``--set`` changes exactly its value and the fingerprints (issue 11 item 4)."""
from __future__ import annotations

import dataclasses

import jax
import pytest

from ndpsim import config, resolved, studies
from ndpsim.base import ConfigError
from ndpsim.hw import system as system_mod

pytestmark = pytest.mark.inputs

TINY = "tests/data/exp_tiny_model.json"
KINDS = {"spec", "measured", "assumed", "derived", "override (--set)"}


@pytest.mark.parametrize("name", config.available("system"))
def test_every_value_of_every_shipped_system_is_recorded(name):
  s = system_mod.load_system(name)
  vals = resolved.hardware_values(s)
  n_leaves = len(jax.tree_util.tree_leaves(s.params))
  n_params = sum(len(e["value"]) if isinstance(e["value"], list) else 1
                 for e in vals.values() if e["part"] == "params")
  assert n_params == n_leaves
  assert all(e["provenance"] in KINDS for e in vals.values()), vals
  assert vals["ndp.dram_name"]["value"]  # the DRAM part is named
  assert vals["link.bandwidth_gbps"]["unit"] == "GB/s"
  assert vals["gpu.clock_mhz"]["unit"] == "MHz"
  assert vals["ndp.dram.tck_ns"]["unit"] == "ns"
  assert not any(e.get("overridden") for e in vals.values())


def _resolve(*overrides):
  cfg = studies.StudyConfig(models=(TINY,), policies=("ndp_tp",), studies=("headline",),
                            num_seqs=1, prompt_len=8, output_len=2, overrides=overrides)
  return studies.resolve(cfg)


def test_one_set_changes_exactly_that_value_and_every_fingerprint():
  base, other = _resolve(), _resolve("link.bandwidth_gbps=50")
  n = base.config.num_ndp_units[0]
  a = studies.resolved_config(base)["systems"][str(n)]["values"]
  b = studies.resolved_config(other)["systems"][str(n)]["values"]
  changed = {k for k in a if a[k] != b[k]}
  assert changed == {"link.bandwidth_gbps"}
  assert b["link.bandwidth_gbps"] == {"value": 50.0, "unit": "GB/s", "part": "params",
                                      "provenance": "override (--set)", "overridden": True}
  for ca, cb in zip(base.cells["headline"], other.cells["headline"]):
    assert studies.cell_fingerprint(base, ca) != studies.cell_fingerprint(other, cb)


def test_allow_implausible_is_a_setting_of_the_run_and_recorded():
  over = ("gpu.clock_mhz=2.617",)  # GHz written as MHz
  with pytest.raises(ConfigError, match="--allow_implausible"):
    _resolve(*over)
  cfg = studies.StudyConfig(models=(TINY,), policies=("ndp_tp",), studies=("headline",),
                            num_seqs=1, prompt_len=8, output_len=2, overrides=over,
                            allow_implausible=True)
  res = studies.resolve(cfg)
  doc = studies.resolved_config(res)
  assert doc["flags"]["allow_implausible"] is True
  n = str(res.config.num_ndp_units[0])
  assert doc["systems"][n]["values"]["gpu.clock_mhz"]["value"] == pytest.approx(2.617)


def test_energy_figures_are_recorded_and_fingerprinted(monkeypatch):
  """results.json records the energy figures the rows' energy fields came from,
  and a cell's fingerprint changes with them (so ``--resume`` recomputes rows
  whose energy would differ)."""
  from ndpsim import energy
  res = _resolve()
  n = res.config.num_ndp_units[0]
  doc = studies.resolved_config(res)["systems"][str(n)]
  assert set(doc["energy"]) >= {"gpu", "link", "ndp", "dram"}
  for part in doc["energy"].values():
    assert part["preset"] and part["fields"]
    for e in part["fields"].values():
      assert e["provenance"] in KINDS and e["value"] >= 0, e
  cell = res.cells["headline"][0]
  before = studies.cell_fingerprint(res, cell)
  figures = energy.for_system(res.systems[n])
  changed = dataclasses.replace(
      figures, link=dataclasses.replace(figures.link, to_gpu_pj_per_bit=99.0))
  monkeypatch.setattr(energy, "for_system", lambda s: changed)
  assert studies.cell_fingerprint(res, cell) != before
