"""Hardware components, one module each: dram, ndp, gpu, link, system.

Importing this package registers every component kind with ``ndpsim.config``.
"""
from ndpsim.hw import dram, gpu, link, ndp, system  # noqa: F401
