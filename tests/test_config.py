"""Generic preset loading and validation (config.py), exercised on the gpu and link kinds."""
from __future__ import annotations

import json
import pathlib

import jax
import pytest

from ndpsim import base, config

pytestmark = pytest.mark.inputs

SHIPPED = {"gpu": ("rtx5080", "rtx4090", "jetson_agx_orin_64gb", "jetson_agx_thor", "h200"),
           "link": ("pcie4_x16", "pcie5_x16", "cxl2_x8"),
           "ndp": ("ddr5_rank_ndp_dimm", "lpddr5_bank_pim"),
           "system": ("paper_rtx5080_ndp_dimm", "edge_orin_lpddr5_pim")}


def _raw(kind: str, name: str) -> dict:
  return json.loads((config.config_root() / config.folder_of(kind) / f"{name}.json").read_text())


def _write(tmp_path: pathlib.Path, obj, name="bad.json") -> str:
  p = tmp_path / name
  p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return str(p)


def _err(kind, ref, overrides=None) -> str:
  with pytest.raises(base.ConfigError) as e:
    config.load(kind, ref, overrides=overrides)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_every_shipped_preset_loads_with_valid_provenance(kind):
  assert set(SHIPPED[kind]) <= set(config.available(kind))
  for name in config.available(kind):
    pre = config.load(kind, name)
    assert pre.name == name and pre.kind == kind and pre.source
    assert set(pre.provenance.values()) <= set(base.PROVENANCES)
    hash(pre.spec)
    leaves = jax.tree_util.tree_leaves(pre.params)
    assert leaves and all(isinstance(x, (float, int)) or hasattr(x, "dtype") for x in leaves)


def test_unknown_top_level_key(tmp_path):
  obj = _raw("link", "pcie5_x16")
  obj["paramz"] = {}
  path = _write(tmp_path, obj)
  msg = _err("link", path)
  assert path in msg and "'paramz'" in msg and "allowed keys" in msg


@pytest.mark.parametrize("section,key,hint", [
    ("spec", "lane", "did you mean 'lanes'"),
    ("params", "latency_us", "did you mean 'latency_ns'"),
])
def test_unknown_field_names_the_field_and_suggests(tmp_path, section, key, hint):
  obj = _raw("link", "pcie5_x16")
  obj[section][key] = 1
  path = _write(tmp_path, obj)
  msg = _err("link", path)
  assert path in msg and f"{section}.{key}" in msg and hint in msg


def test_missing_field(tmp_path):
  obj = _raw("gpu", "rtx5080")
  del obj["params"]["memory_bandwidth_gbps"]
  path = _write(tmp_path, obj)
  msg = _err("gpu", path)
  assert path in msg and "missing field params.memory_bandwidth_gbps" in msg
  assert '"memory_bandwidth_gbps": <value>' in msg


@pytest.mark.parametrize("section,key,value,what", [
    ("spec", "num_sms", "84", "must be an integer"),
    ("spec", "num_sms", 84.5, "must be an integer"),
    ("spec", "num_sms", True, "must be an integer"),
    ("params", "clock_mhz", "fast", "must be a number"),
    ("params", "clock_mhz", None, "must be a number"),
    ("params", "l2_bytes", [1, 2], "must be a number"),
])
def test_wrong_types(section, key, value, what):
  obj = _raw("gpu", "rtx5080")
  obj[section][key] = value
  msg = _err("gpu", obj)
  assert f"{section}.{key}" in msg and what in msg


def test_wrong_bool_and_string_types():
  obj = _raw("link", "pcie5_x16")
  obj["spec"]["full_duplex"] = "yes"
  assert "true or false" in _err("link", obj)
  obj = _raw("link", "pcie5_x16")
  obj["spec"]["protocol"] = 5
  assert "must be a string" in _err("link", obj)


def test_integer_valued_floats_are_accepted_for_int_fields():
  obj = _raw("gpu", "rtx5080")
  obj["spec"]["num_sms"] = 84.0
  assert config.load("gpu", obj).spec.num_sms == 84


@pytest.mark.parametrize("key,value,what", [
    ("memory_bandwidth_gbps", 0, "it must be > 0"),
    ("memory_bandwidth_gbps", -960.0, "it must be > 0"),
    ("clock_mhz", 0.0, "it must be > 0"),
    ("memory_capacity_bytes", -1, "it must be > 0"),
    ("kernel_launch_us", -1.0, "it must be >= 0"),
    ("queued_launch_us", -0.5, "it must be >= 0"),
    ("clock_mhz", float("nan"), "finite number"),
    ("memory_bandwidth_gbps", float("inf"), "finite number"),
    ("achievable_bandwidth_fraction", 1.2, "fraction in (0, 1]"),
])
def test_non_positive_or_impossible_values(key, value, what):
  obj = _raw("gpu", "rtx5080")
  obj["params"][key] = value
  msg = _err("gpu", obj)
  assert key in msg and what in msg


def test_zero_allowed_where_it_means_none():
  obj = _raw("gpu", "rtx5080")
  obj["params"]["kernel_launch_us"] = 0
  obj["params"]["queued_launch_us"] = 0
  assert float(config.load("gpu", obj).params.kernel_launch_us) == 0.0


def test_launch_hidden_is_a_boolean_switch():
  obj = _raw("gpu", "rtx5080")
  obj["spec"]["launch_hidden"] = "yes"
  assert "spec.launch_hidden must be true or false" in _err("gpu", obj)
  pre = config.load("gpu", "rtx5080", overrides={"launch_hidden": False})
  assert pre.spec.launch_hidden is False
  del obj["spec"]["launch_hidden"]  # defaults to queued kernels
  assert config.load("gpu", obj).spec.launch_hidden is True


def test_infinity_in_a_json_file_is_rejected(tmp_path):
  text = json.dumps(_raw("link", "pcie5_x16")).replace('"latency_ns": 1000.0',
                                                       '"latency_ns": Infinity')
  assert "Infinity" in text
  path = _write(tmp_path, text)
  msg = _err("link", path)
  assert path in msg and "params.latency_ns" in msg and "finite" in msg


def test_gpu_rate_table_validation():
  obj = _raw("gpu", "rtx5080")
  obj["params"]["tensor_flops_per_cycle_per_sm"] = {"bf17": 512}
  assert "unknown dtype 'bf17'" in _err("gpu", obj)
  obj["params"]["tensor_flops_per_cycle_per_sm"] = {"bf16": 0}
  assert "tensor_flops_per_cycle_per_sm.bf16" in _err("gpu", obj)
  obj["params"]["tensor_flops_per_cycle_per_sm"] = 512
  assert "must be a JSON object" in _err("gpu", obj)
  del obj["params"]["tensor_flops_per_cycle_per_sm"]
  assert "missing field params.tensor_flops_per_cycle_per_sm" in _err("gpu", obj)
  obj = _raw("gpu", "rtx5080")
  obj["spec"]["tile_m"] = 120
  assert "multiple of spec.mma_m" in _err("gpu", obj)


@pytest.mark.parametrize("prov,what", [
    ({"default": "guessed"}, "write one of"),
    ({"clock_mhz": "vendor"}, "write one of"),
    ({"clock_hz": "spec"}, "unknown field 'clock_hz'"),
    ("spec", "must map field names"),
])
def test_bad_provenance(tmp_path, prov, what):
  obj = _raw("gpu", "rtx5080")
  obj["provenance"] = prov
  path = _write(tmp_path, obj)
  msg = _err("gpu", path)
  assert path in msg and what in msg


def test_unknown_preset_names_and_paths(tmp_path):
  msg = _err("gpu", "rtx5090")
  assert "unknown gpu preset 'rtx5090'" in msg and "did you mean 'rtx5080'" in msg
  assert "rtx4090" in msg  # lists the presets
  msg = _err("link", str(tmp_path / "nope.json"))
  assert "does not exist" in msg
  assert "unknown hardware kind 'tpu'" in _err("tpu", "v5e")
  assert "unknown system preset" in _err("system", "paper_rtx5080")


def test_malformed_files(tmp_path):
  path = _write(tmp_path, "{\"name\": \"x\",, }")
  msg = _err("link", path)
  assert path in msg and "not valid JSON" in msg and "line 1" in msg
  path = _write(tmp_path, "[1, 2]", "list.json")
  assert "top level must be a JSON object" in _err("link", path)
  # Binary garbage and an empty file: one line naming the file, not a traceback.
  garbage = tmp_path / "garbage.json"
  garbage.write_bytes(b"{\n\x89PNG\r\n\x1a\n\xff\xfe")
  msg = _err("link", str(garbage))
  assert str(garbage) in msg and "not UTF-8" in msg and "line 2" in msg and "\n" not in msg
  empty = tmp_path / "empty.json"
  empty.write_text("")
  assert "not valid JSON" in _err("gpu", str(empty))
  from ndpsim.workload import model_io  # pylint: disable=import-outside-toplevel
  with pytest.raises(base.ConfigError, match="not UTF-8"):
    model_io.model_from_any(str(garbage))
  obj = _raw("link", "pcie5_x16")
  obj["spec"] = [1]
  assert "field 'spec' must be a JSON object" in _err("link", obj)


def test_kind_mismatch(tmp_path):
  path = _write(tmp_path, _raw("link", "pcie5_x16"))
  msg = _err("gpu", path)
  assert "'kind' is 'link'" in msg and "write \"kind\": \"gpu\"" in msg


def test_overrides_apply_before_validation():
  pre = config.load("gpu", "rtx5080", overrides={"memory_bandwidth_gbps": 800,
                                                  "num_sms": 80})
  assert float(pre.params.memory_bandwidth_gbps) == 800 and pre.spec.num_sms == 80
  msg = _err("gpu", "rtx5080", {"memory_bandwith_gbps": 800})
  assert "cannot override unknown field 'memory_bandwith_gbps'" in msg
  assert "memory_bandwidth_gbps" in msg  # lists the fields
  assert "it must be > 0" in _err("gpu", "rtx5080", {"clock_mhz": -1})
  assert "must be an integer" in _err("gpu", "rtx5080", {"num_sms": "many"})
  assert "fraction in" in _err("link", "pcie5_x16", {"protocol_efficiency": 1.01})


def test_object_overrides_merge_into_nested_fields():
  pre = config.load("gpu", "rtx5080",
                    overrides={"tensor_flops_per_cycle_per_sm": {"bf16": 1024}})
  rates = dict(zip(pre.spec.tensor_dtypes, pre.params.tensor_flops_per_cycle_per_sm))
  assert rates["bf16"] == 1024 and rates["fp8"] == 1024 and rates["int8"] == 2048
  pre = config.load("ndp", "ddr5_rank_ndp_dimm", overrides={"dram": {"t_rp_cycles": 40}})
  assert float(pre.params.dram.t_rp_cycles) == 40


def test_parse_set_overrides():
  got = config.parse_set_overrides(["gpu.memory_bandwidth_gbps=800", "link.lanes=8",
                                    "ndp.pe_level=bank", "system.num_ndp_units=6"])
  assert got == {"gpu": {"memory_bandwidth_gbps": 800}, "link": {"lanes": 8},
                 "ndp": {"pe_level": "bank"}, "system": {"num_ndp_units": 6}}
  for bad in ("gpu.memory_bandwidth_gbps", "memory_bandwidth_gbps=800"):
    with pytest.raises(base.ConfigError, match="component.field=value"):
      config.parse_set_overrides([bad])


def test_config_root_env_var(tmp_path, monkeypatch):
  (tmp_path / "link").mkdir()
  obj = _raw("link", "pcie5_x16")
  obj["name"] = "my_link"
  obj["params"]["latency_ns"] = 123.0
  (tmp_path / "link" / "my_link.json").write_text(json.dumps(obj))
  monkeypatch.setenv("NDPSIM_HW_CONFIGS", str(tmp_path))
  assert config.available("link") == ["my_link"]
  assert float(config.load("link", "my_link").params.latency_ns) == 123.0
  assert "unknown link preset 'pcie5_x16'" in _err("link", "pcie5_x16")
  # A folder that does not exist is named, not listed as "write one of []".
  monkeypatch.setenv("NDPSIM_HW_CONFIGS", str(tmp_path / "missing"))
  msg = _err("link", "pcie5_x16")
  assert "$NDPSIM_HW_CONFIGS" in msg and "not a folder" in msg and "[]" not in msg


def test_specs_frozen_and_params_are_pytrees():
  pre = config.load("link", "pcie5_x16")
  with pytest.raises(Exception):
    pre.spec.lanes = 8
  with pytest.raises(Exception):
    pre.params.latency_ns = 1.0
  assert hash(pre.spec) == hash(config.load("link", "pcie5_x16").spec)
  doubled = jax.tree_util.tree_map(lambda x: 2 * x, pre.params)
  assert float(doubled.latency_ns) == 2 * float(pre.params.latency_ns)


# ---------------------------------------------------------------------------
# Ranges (issue 13): hard (float32) and plausible (unit) limits per field.

def test_fmt_number_and_range_messages():
  assert [config.fmt_number(x) for x in (1.5e9, 0.416, 2617.0, 1e-6, 3e38)] == \
      ["1.5e9", "0.416", "2617", "1e-6", "3e38"]
  r = config.bandwidth_range()
  config.check_range(63.0, r, "w", "params.bandwidth_gbps")
  with pytest.raises(base.ConfigError, match=r"^w: field params.bandwidth_gbps is 9.6e11, "
                     r"outside what the float32 engine can carry \(1e-6 to 1e9 GB/s\); "
                     r"did you mean 960 \(B/s given as GB/s\)\?"):
    config.check_range(960e9, r, "w", "params.bandwidth_gbps")
  with pytest.raises(base.ConfigError, match=r"implausible for GB/s \(plausible 0.01 to "
                     r"1e5 GB/s\); did you mean 1.2 \(TB/s given as GB/s\)\?"):
    config.check_range(1.2e-3, r, "w", "f")
  config.check_range(0.0, r, "w", "f", zero_ok=True)


def test_allowing_implausible_is_scoped():
  r = config.clock_range()
  assert not config.implausible_allowed()
  with config.allowing_implausible():
    config.check_range(2.617, r, "w", "clock_mhz")
    with config.allowing_implausible(False):
      with pytest.raises(base.ConfigError):
        config.check_range(2.617, r, "w", "clock_mhz")
    with pytest.raises(base.ConfigError, match="float32"):
      config.check_range(1e30, r, "w", "clock_mhz")
  assert not config.implausible_allowed()


def test_every_params_leaf_has_a_range_and_presets_are_plausible():
  for kind in SHIPPED:
    for name in config.available(kind):
      pre = config.load(kind, name, allow_implausible=False)
      leaves = {jax.tree_util.keystr(p).lstrip(".")
                for p, _ in jax.tree_util.tree_flatten_with_path(pre.params)[0]}
      assert set(config.leaf_ranges(pre.params)) == leaves, (kind, name)


def test_range_overrides_through_load():
  obj = _raw("gpu", "rtx5080")
  obj["params"]["clock_mhz"] = 2.617
  assert "did you mean 2617 (GHz given as MHz)?" in _err("gpu", obj)
  assert float(config.load("gpu", obj, allow_implausible=True).params.clock_mhz) == 2.617
  obj["params"]["tensor_flops_per_cycle_per_sm"]["bf16"] = 1e30
  assert "tensor_flops_per_cycle_per_sm.bf16 is 1e30, outside" in _err("gpu", obj)
