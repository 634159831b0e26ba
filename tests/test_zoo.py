"""The model zoo: every built-in model's MoeModelSpec against a golden file.

``tests/data/golden_models.json`` was written from the zoo as Python code
(``ndpsim/workload/models.py`` before the zoo became data files), so these
tests show that the data files load to bit-identical specs: same field values,
same Python types (int/bool/str/tuple), same registry sources.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from ndpsim.workload import models

pytestmark = pytest.mark.golden

GOLDEN = json.loads((pathlib.Path(__file__).parent / "data" / "golden_models.json")
                    .read_text())


def test_zoo_holds_exactly_the_golden_models():
  assert sorted(models.MODELS) == sorted(GOLDEN["specs"])


@pytest.mark.parametrize("name", sorted(GOLDEN["specs"]))
def test_spec_fields_and_types_match_golden(name):
  spec = models.MODELS[name]
  got = dataclasses.asdict(spec)
  want = GOLDEN["specs"][name]
  assert set(got) == set(want), f"{name}: fields differ"
  for field, value in got.items():
    assert type(value).__name__ == GOLDEN["types"][name][field], (name, field)
    plain = list(value) if isinstance(value, tuple) else value
    assert plain == want[field], (name, field, value, want[field])
  # Rebuilt from the golden values, the spec is equal and hashes the same
  # (it is a static jit argument, so its hash is its cache key).
  again = models.MoeModelSpec(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in want.items()})
  assert again == spec and hash(again) == hash(spec)


def test_sources_match_golden():
  assert dict(models.MODEL_SOURCES) == GOLDEN["sources"]
