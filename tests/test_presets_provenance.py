"""Provenance of every shipped preset (issue 10, "Defaults you can trace").

Every field labelled ``measured`` names, in the preset's ``sources`` map, where a
reader can check it (a URL, host/path, arXiv id or DOI) and the figure taken
from it; every preset with ``spec`` fields names its spec sheet or standard in
``source``; ``derived`` and ``assumed`` fields are explained in ``notes``; and
the loader enforces the ``measured`` rule with a ConfigError.
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from ndpsim import base, config

pytestmark = pytest.mark.inputs

KINDS = ("dram", "gpu", "ndp", "link", "system")
PRESETS = [(k, n) for k in KINDS for n in config.available(k)]


def _raw(kind: str, name: str) -> dict:
  return json.loads((config.config_root() / config.folder_of(kind) / f"{name}.json").read_text())


def _fields(pre: config.Preset) -> set[str]:
  names = {f.name for f in dataclasses.fields(pre.spec)} | {
      f.name for f in dataclasses.fields(pre.params)}
  return names - {"tensor_dtypes"}  # filled from params.tensor_flops_per_cycle_per_sm


def _err(kind, obj) -> str:
  with pytest.raises(base.ConfigError) as e:
    config.load(kind, obj)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_every_kind_has_presets():
  assert {k for k, _ in PRESETS} == set(KINDS)


@pytest.mark.parametrize("kind,name", PRESETS)
def test_measured_fields_cite_a_checkable_source_and_figure(kind, name):
  pre = config.load(kind, name)
  for f in sorted(_fields(pre)):
    if config.provenance_of(pre.provenance, f) != "measured":
      continue
    src = pre.sources.get(f, "")
    assert config.names_place_and_figure(src), (name, f, src)
    for path in config.REPO_RESULT.findall(src):  # a result file of this repo exists
      assert (config.config_root().parent / path).is_file(), (name, f, path)


@pytest.mark.parametrize("kind,name", PRESETS)
def test_labels_are_explained(kind, name):
  pre = config.load(kind, name)
  raw = _raw(kind, name)
  labels = {f: config.provenance_of(pre.provenance, f) for f in _fields(pre)}
  assert set(labels.values()) <= set(base.PROVENANCES)
  if "spec" in labels.values():
    assert pre.source.strip(), f"{name}: spec fields but no spec sheet/standard in 'source'"
  if {"derived", "assumed"} & set(labels.values()):
    assert raw.get("notes", "").strip() or kind == "dram", (
        f"{name}: derived/assumed fields need their arithmetic or reasoning in 'notes'")
  for f in pre.sources:
    assert f in _fields(pre)


@pytest.mark.parametrize("kind,name", PRESETS)
def test_withdrawn_figures_are_not_used(kind, name):
  """reference/hardware.md withdraws '330 us fixed cost per expert copy,
  MoE-Infinity PR 98' (no checkable source)."""
  text = (config.config_root() / config.folder_of(kind) / f"{name}.json").read_text()
  assert "MoE-Infinity" not in text and "PR 98" not in text


def test_loader_requires_a_source_for_measured_fields():
  obj = _raw("link", "pcie5_x16")
  del obj["sources"]["protocol_efficiency"]
  msg = _err("link", obj)
  assert "'protocol_efficiency' is labelled 'measured'" in msg
  assert "add \"sources\"" in msg and "'assumed'" in msg
  # A default of measured covers every field.
  obj = _raw("gpu", "rtx4090")
  obj["provenance"] = {"default": "measured"}
  assert "is labelled 'measured' but has no entry in 'sources'" in _err("gpu", obj)


@pytest.mark.parametrize("source", ["", "   ", "measured by a colleague: 56.3 GB/s",
                                    "https://github.com/tinygrad/open-gpu-kernel-modules"
                                    "/issues/29 (no figure)"])
def test_loader_rejects_a_source_that_names_no_place_or_no_figure(source):
  obj = _raw("link", "pcie5_x16")
  obj["sources"]["protocol_efficiency"] = source
  assert "sources.protocol_efficiency" in _err("link", obj)


@pytest.mark.parametrize("sources,what", [
    ({"latency_us": "https://example.org/x: 1 us"}, "unknown field 'latency_us'"),
    ({"latency_ns": 300}, "non-empty string"),
    ("https://example.org", "must map field names"),
])
def test_loader_rejects_malformed_sources(sources, what):
  obj = _raw("link", "cxl2_x8")
  obj["sources"] = sources
  assert what in _err("link", obj)


def test_relabelling_as_assumed_needs_no_source():
  obj = _raw("link", "pcie5_x16")
  del obj["sources"]
  obj["provenance"]["protocol_efficiency"] = "assumed"
  obj["provenance"]["per_transfer_overhead_us"] = "assumed"
  pre = config.load("link", obj)
  assert pre.sources == {}


def test_sources_are_kept_on_the_preset():
  pre = config.load("link", "pcie5_x16")
  assert set(pre.sources) == {"protocol_efficiency", "per_transfer_overhead_us"}
  assert "56.3" in pre.sources["protocol_efficiency"]
