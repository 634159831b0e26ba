"""Where the built-in model zoo lives: one JSON file per model under
``ndpsim/workload/zoo/`` (installed as package data).

Each file is a model JSON (:func:`ndpsim.workload.model_json.load_model_json`
reads it: the fields of :class:`~ndpsim.workload.model_spec.MoeModelSpec`)
plus its provenance: ``source`` (the config it was taken from, as results.json
records it), ``config_url`` (the HuggingFace ``config.json`` a reader can
open) and ``notes`` (which config keys gave which fields, and the dtypes).
The registry that loads them is :mod:`ndpsim.workload.models`; this module
only lists the files, so that the loaders can name the zoo in their errors
without importing the registry.
"""
from __future__ import annotations

import pathlib

ZOO_DIR = pathlib.Path(__file__).resolve().parent / "zoo"


def names() -> list[str]:
  """Registry names of the shipped models (the file stems), sorted."""
  return sorted(p.stem for p in ZOO_DIR.glob("*.json"))


def path(name: str) -> pathlib.Path:
  """The data file of zoo model ``name`` (which need not exist)."""
  return ZOO_DIR / f"{name}.json"
