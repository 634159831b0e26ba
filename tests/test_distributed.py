"""Two processes on localhost through the binary's ``--distributed`` flags
(issue 14 item 1): the same results as one process, each process simulating
only its shard of the sequences, and ``--resume`` of the two-process run.

One study on the tiny model: the headline (monde + tp_lb_prefetch) and the
prefetch sweep over budgets 0 and 0.5 -- 4 cells, the 3 tp_lb_prefetch cells
in one vmapped call -- at 4 sequences, 8 + 4 tokens, no plots.  Each process
has one CPU device, so the 4 sequences are split 2 + 2 over the two processes
(`ndpsim.sharding.shard_sequences`); every process prints the rows it
simulated (`ndpsim.sharding.LOCAL_WORK`).  Three binary runs (one process, two
processes, two processes resuming after two cell files were deleted); the
resumed run reuses the compilation cache of the first two-process run.
"""
from __future__ import annotations

import json
import pathlib
import re
import socket
import subprocess
import sys

import pytest

from ndpsim import sharding
from tests.child_env import child_env

pytestmark = pytest.mark.e2e

DATA = pathlib.Path(__file__).parent / "data"
TINY = str(DATA / "exp_tiny_model.json")
S = 4
FLAGS = [f"--models={TINY}", "--policies=tp_lb_prefetch", "--prompt_len=8",
         "--output_len=4", f"--num_seqs={S}", "--num_ndp_units=2",
         "--studies=headline,prefetch", "--resident_fractions=0,0.5",
         "--prefetch_policies=tp_lb_prefetch", "--plots=false"]
CELLS = ("exp-tiny-moe__monde__n2__b1__mixtral_8x7b.json",
         "exp-tiny-moe__tp_lb_prefetch__n2__b1__mixtral_8x7b.json",
         "exp-tiny-moe__tp_lb_prefetch__n2__b0__mixtral_8x7b.json",
         "exp-tiny-moe__tp_lb_prefetch__n2__b0.5__mixtral_8x7b.json")
DELETED = (CELLS[0], CELLS[3])  # the baseline (every speedup uses it) and one budget
SAME_BYTES = ("results.csv", "requests.csv", "report.md", "run_settings.json")
# results.json's only process-dependent entries: the devices JAX saw and the
# process count (resolved configuration, not results).
PROCESS_KEYS = ("devices", "process_count")
TIMEOUT = 900  # hang guard


def _binary() -> list[str]:
  return [sys.executable, "-m", "ndpsim.experiment"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_pair(args: list[str], logs: pathlib.Path) -> list[tuple[int, str]]:
  """The binary as processes 0 and 1 of a two-process run on localhost:
  [(returncode, stderr)] per process.  Their output goes to files, not pipes:
  a peer blocked on a full pipe never reaches JAX's shutdown barrier."""
  port = _free_port()
  logs.mkdir(parents=True, exist_ok=True)
  files = [open(logs / f"process{i}.err", "w+", encoding="utf-8") for i in (0, 1)]
  procs = [subprocess.Popen(
      _binary() + args + ["--distributed", f"--coordinator_address=127.0.0.1:{port}",
                          "--num_processes=2", f"--process_id={i}"],
      env=child_env(), stdout=subprocess.DEVNULL, stderr=files[i]) for i in (0, 1)]
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT)  # hang guard
  finally:
    for p in procs:  # a failed peer leaves the other waiting on its collectives
      if p.poll() is None:
        p.kill()
        p.wait(timeout=TIMEOUT)  # hang guard
    out = []
    for p, f in zip(procs, files):
      f.seek(0)
      out.append((p.returncode, f.read()))
      f.close()
  return out


def _ends(err: str) -> str:
  """Both ends of a process's stderr: its own error line comes first, JAX's
  shutdown-barrier abort and stack dump (when a peer failed) last."""
  return err if len(err) <= 4000 else f"{err[:2000]}\n[...]\n{err[-2000:]}"


def _shard_line(err: str) -> re.Match | None:
  return re.search(r"process (\d) of 2 simulated (\d+) of (\d+) sequence rows "
                   r"\(rows ([\d,-]+) of each cell\)", err)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("dist")
  single, multi = root / "single", root / "multi"
  cache = root / "jaxcache"
  r1 = subprocess.run(_binary() + FLAGS + [f"--out_dir={single}"], env=child_env(),
                      capture_output=True, text=True, timeout=TIMEOUT)  # hang guard
  assert r1.returncode == 0, _ends(r1.stderr)
  margs = FLAGS + [f"--out_dir={multi}", f"--cache_dir={cache}"]
  pair = _run_pair(margs, root / "logs1")
  for i, (rc, err) in enumerate(pair):
    assert rc == 0, f"process {i}: {_ends(err)}\nother: {_ends(pair[1 - i][1])}"
  first = {n: (multi / "cells" / n).read_text() for n in CELLS}
  first_json = (multi / "results.json").read_text()
  kept = {n: (multi / "cells" / n).stat().st_mtime_ns for n in CELLS if n not in DELETED}
  for n in DELETED:
    (multi / "cells" / n).unlink()
  resumed = _run_pair(margs + ["--resume"], root / "logs2")
  return dict(single=single, multi=multi, pair=pair, resumed=resumed, first=first,
              first_json=first_json, kept=kept)


def _without_process_keys(doc: dict) -> dict:
  cfg = dict(doc["config"])
  for k in PROCESS_KEYS:
    cfg.pop(k)
  return {**doc, "config": cfg}


def _assert_same_as_single(single: pathlib.Path, multi: pathlib.Path) -> None:
  """Rows identical; every output file byte-identical except results.json,
  whose only difference is the devices and process count of its config."""
  for name in SAME_BYTES:
    assert (multi / name).read_bytes() == (single / name).read_bytes(), name
  one = json.loads((single / "results.json").read_text())
  two = json.loads((multi / "results.json").read_text())
  assert two["rows"] == one["rows"]
  assert _without_process_keys(two) == _without_process_keys(one)
  assert one["config"]["process_count"] == 1 and two["config"]["process_count"] == 2
  assert len(one["config"]["devices"]) == 1 and len(two["config"]["devices"]) == 2
  assert len(one["rows"]) == len(CELLS)


def test_two_processes_match_one(runs):
  _assert_same_as_single(runs["single"], runs["multi"])
  # Only process 0 writes and prints: its progress shows every cell.
  err0, err1 = runs["pair"][0][1], runs["pair"][1][1]
  assert f"{len(CELLS)} cells, 0 already finished" in err0
  assert f"[  {len(CELLS)}/{len(CELLS)} " in err0
  assert "wrote " in err0 and "wrote " not in err1 and "[  1/" not in err1
  # Cell files: the same settings fingerprint and row as one process's, apart
  # from the wall time (and the row digest, which covers it).
  for n in CELLS:
    a = json.loads((runs["single"] / "cells" / n).read_text())
    b = json.loads(runs["first"][n])
    assert b["fingerprint"] == a["fingerprint"], n
    assert {**b["row"], "wall_s": None} == {**a["row"], "wall_s": None}, n


def test_each_process_simulates_only_its_shard(runs):
  """Process i simulates rows 2i..2i+1 of the 4 sequences of each cell: the
  monde cell (1 budget) and the tp_lb_prefetch cells (3 budgets, one vmapped
  call) give 2 x 4 of 4 x 4 rows per process."""
  for i, (_, err) in enumerate(runs["pair"]):
    m = _shard_line(err)
    assert m, err[-2000:]
    assert m.groups() == (str(i), "8", "16", f"{2 * i}-{2 * i + 1}"), m.group(0)


def test_resume_recomputes_only_deleted_cells(runs):
  multi = runs["multi"]
  (rc0, err0), (rc1, err1) = runs["resumed"]
  assert rc0 == 0, f"process 0: {_ends(err0)}\nprocess 1: {_ends(err1)}"
  assert rc1 == 0, f"process 1: {_ends(err1)}\nprocess 0: {_ends(err0)}"
  assert f"{len(CELLS)} cells, {len(CELLS) - len(DELETED)} already finished" in err0
  for i, (_, err) in enumerate(runs["resumed"]):  # 2 cells x 1 budget x 2 of 4 rows
    m = _shard_line(err)
    assert m, err[-2000:]
    assert m.groups() == (str(i), "4", "8", f"{2 * i}-{2 * i + 1}"), m.group(0)
  for n, mtime in runs["kept"].items():  # skipped, not rewritten
    assert (multi / "cells" / n).stat().st_mtime_ns == mtime, n
    assert (multi / "cells" / n).read_text() == runs["first"][n], n
  for n in DELETED:  # recomputed: the same row apart from the wall time
    a, b = json.loads(runs["first"][n]), json.loads((multi / "cells" / n).read_text())
    assert b["fingerprint"] == a["fingerprint"], n
    assert {**b["row"], "wall_s": None} == {**a["row"], "wall_s": None}, n
  assert (multi / "results.json").read_text() == runs["first_json"]
  _assert_same_as_single(runs["single"], multi)


def test_local_work_counts_every_row_on_one_device():
  """Without sharding (one device) a process simulates every row."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel
  before = {k: (set(v) if isinstance(v, set) else v) for k, v in sharding.LOCAL_WORK.items()}
  try:
    x = sharding.shard_sequences(np.zeros((3, 5, 2), np.int32),
                                 Mesh(np.asarray(jax.devices()[:1]), ("seq",)), 1)
    sharding._count_local(x, 2)  # pylint: disable=protected-access
    assert sharding.LOCAL_WORK["sequences"] - before["sequences"] == 6
    assert sharding.LOCAL_WORK["total"] - before["total"] == 6
    assert (0, 3) in sharding.LOCAL_WORK["rows"]
  finally:
    sharding.LOCAL_WORK.update(before)
