"""The environment of a process a test starts (the binary, the notebook twin,
a script run with ``python -c``).

* ``JAX_PLATFORMS=cpu``: no test needs a GPU.
* ``XLA_FLAGS``: the test session's compile flags (``NDPSIM_TEST_XLA_FLAGS``,
  set by ``tests/conftest.py``; empty there = XLA's defaults), plus
  ``xla_extra`` (e.g. ``--xla_force_host_platform_device_count=8``).
* ``PYTHONPATH``: this checkout first, so the child imports the ndpsim under
  test whether or not it is installed (an installed console script may belong
  to another checkout, or to none).
* The session's persistent compilation cache and everything else are
  inherited from ``os.environ``.
"""
from __future__ import annotations

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


def child_env(*, xla_extra: str = "", **extra: str) -> dict[str, str]:
  """os.environ with the three settings above; ``extra`` entries set last
  (an ``XLA_FLAGS`` among them replaces the session's flags)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("NDPSIM_TEST_XLA_FLAGS", ""),
                                          xla_extra) if f)
  env.update(extra)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get(
      "PYTHONPATH", "").split(os.pathsep) if p])
  return env
