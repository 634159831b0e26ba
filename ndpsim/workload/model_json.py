"""ndpsim's own model file: one JSON object with the fields of
:class:`~ndpsim.workload.model_spec.MoeModelSpec` (defaults as there) plus
optional provenance strings (``source``, ``config_url``, ``notes``).

The zoo's data files (``ndpsim/workload/zoo/*.json``) are such files, so a
copy of one is a starting point for a new model.  A missing field, a key that
is not a field, a wrong type or an inconsistent value is a one-line
ConfigError naming the file and the field.  Re-exported by
:mod:`ndpsim.workload.model_io` and :mod:`ndpsim.workload.models`.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from ndpsim import config
from ndpsim.base import ConfigError
from ndpsim.workload import zoo
from ndpsim.workload.model_spec import (_DTYPE_FIELDS, MoeModelSpec, canonical_dtype,
                                        validate_fields)

# Keys of a model file that are provenance, not spec fields.
JSON_EXTRA_KEYS = ("source", "config_url", "notes")


def read_json(path: str | pathlib.Path) -> tuple[dict, str]:
  """(the JSON object in ``path``, ``path`` as a string for messages)."""
  p = pathlib.Path(path)
  where = str(p)
  if not p.is_file():
    raise ConfigError(f"model file {where!r} does not exist; give an existing .json "
                      f"path or one of {zoo.names()}")
  return config.read_json_object(p, "a JSON object of model fields"), where


def spec_from_object(obj: dict, where: str) -> MoeModelSpec:
  """The spec of a model file's JSON object (provenance keys skipped)."""
  fields = {k: v for k, v in obj.items() if k not in JSON_EXTRA_KEYS}
  kw = config.take_fields(fields, MoeModelSpec, where, "model", positive=False)
  for name in _DTYPE_FIELDS:
    kw[name] = canonical_dtype(kw[name], f"{where}: field model.{name}")
  validate_fields(kw, where)
  return MoeModelSpec(**kw)


def load_model_json(path: str | pathlib.Path) -> MoeModelSpec:
  """Loads a model file: one JSON object with the fields of :class:`MoeModelSpec`
  (defaults as there) plus optional ``source``, ``config_url`` and ``notes``
  strings.  Unknown or missing fields and inconsistent values raise ConfigError."""
  obj, where = read_json(path)
  return spec_from_object(obj, where)


def model_to_json(spec: MoeModelSpec, source: str = "") -> dict[str, Any]:
  """JSON-able dict that :func:`load_model_json` reads back to ``spec``."""
  d = dataclasses.asdict(spec)
  d["sliding_window_layers"] = list(spec.sliding_window_layers)
  d["interleaved_dense_layers"] = list(spec.interleaved_dense_layers)
  if source:
    d["source"] = source
  return d


def save_model_json(path: str | pathlib.Path, spec: MoeModelSpec, source: str = "") -> None:
  """Writes ``spec`` as a model JSON file (a starting point for a new model)."""
  pathlib.Path(path).write_text(json.dumps(model_to_json(spec, source), indent=2) + "\n")
