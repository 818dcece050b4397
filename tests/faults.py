"""Runs the CLI with a crash or a full disk at a chosen point, for recovery tests that do not race a
poll: `python tests/faults.py [--bucket ROOT] [FAULT STEP] -- search --config ... --workdir W`.

Faults (STEP is a checkpointed or logged step of the run):
  --kill-before-save N   SIGKILL as the search is about to save checkpoint N (metrics and controller
                         history already written past the previous checkpoint);
  --kill-in-save N       SIGKILL inside orbax's save of N: every array written, the commit (rename or
                         commit file) not done;
  --cut-metrics-at N     SIGKILL halfway through writing metrics.jsonl's row for step N;
  --full-disk-at-save N  the disk fills as checkpoint N is being written (no file may grow past 1 KiB
                         from then on, as with a full disk: EFBIG instead of ENOSPC).
--bucket ROOT runs against the fake bucket of tests/fake_bucket.py.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def run(cli_args: list[str], fault: str | None = None, at: int | None = None, *,
        bucket: str | None = None, cwd: str = REPO, timeout: float = 400
        ) -> subprocess.CompletedProcess:
  """`oneshot CLI_ARGS` in a fresh process through this launcher, with `fault` (e.g. 'kill-in-save')
  at step `at` and/or against the fake bucket at `bucket`; stdout and stderr captured."""
  options = ([] if bucket is None else ["--bucket", str(bucket)]) + (
      [] if fault is None else [f"--{fault}", str(at)])
  return subprocess.run([sys.executable, os.path.abspath(__file__), *options, "--", *cli_args],
                        cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def kill_before_save(step: int) -> None:
  from oneshot import checkpoint  # pylint: disable=import-outside-toplevel
  original = checkpoint.save

  def save(mngr, at, state):
    if at == step:
      _die()
    original(mngr, at, state)
  checkpoint.save = save


def kill_in_save(step: int) -> None:
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
  for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
    original = cls.finalize

    async def finalize(self, *args, _original=original, **kwargs):
      if self._final_path.name == str(step):  # pylint: disable=protected-access
        _die()
      return await _original(self, *args, **kwargs)
    cls.finalize = finalize


def cut_metrics_at(step: int) -> None:
  from oneshot import storage  # pylint: disable=import-outside-toplevel
  original = storage.MetricsLog.write

  def write(self, row, scalars=None):
    if row["step"] == step:
      line = (storage.json.dumps(row) + "\n").encode()
      self._file.append(line[:len(line) // 2])  # pylint: disable=protected-access
      self._file.flush()  # pylint: disable=protected-access
      _die()
    original(self, row, scalars)
  storage.MetricsLog.write = write


def full_disk_at_save(step: int) -> None:
  from oneshot import checkpoint  # pylint: disable=import-outside-toplevel
  original = checkpoint.save

  def save(mngr, at, state):
    if at == step:
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
      resource.setrlimit(resource.RLIMIT_FSIZE,
                         (1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    original(mngr, at, state)
  checkpoint.save = save


FAULTS = {"kill_before_save": kill_before_save, "kill_in_save": kill_in_save,
          "cut_metrics_at": cut_metrics_at, "full_disk_at_save": full_disk_at_save}


def main() -> None:
  argv = sys.argv[1:]
  split = argv.index("--")
  parser = argparse.ArgumentParser()
  parser.add_argument("--bucket")
  for name in FAULTS:
    parser.add_argument("--" + name.replace("_", "-"), type=int)
  args = parser.parse_args(argv[:split])
  for name, install in FAULTS.items():
    if getattr(args, name) is not None:
      install(getattr(args, name))
  from oneshot import cli  # pylint: disable=import-outside-toplevel
  sys.argv = ["oneshot"] + argv[split + 1:]
  if args.bucket is None:
    cli.entry()
  from tests.fake_bucket import fake_bucket  # pylint: disable=import-outside-toplevel
  with fake_bucket(args.bucket):
    cli.entry()


if __name__ == "__main__":
  main()
