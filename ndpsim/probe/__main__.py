"""``python -m ndpsim.probe SUBCOMMAND --flag=value ...`` (see :mod:`ndpsim.probe`)."""
from ndpsim.probe import run

if __name__ == "__main__":
  run()
