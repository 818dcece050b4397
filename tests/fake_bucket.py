"""A fake Cloud Storage bucket for tests: `gs://BUCKET/...` lives under ROOT/BUCKET on the local disk.

Both ways a run touches a bucket are redirected, and nothing else:
- `etils.epath` (every file oneshot and orbax write: results, metrics, plots, exports, orbax's
  metadata), through `epath.testing.mock_epath`, which swaps the gs:// backend;
- TensorStore's own `gcs` driver (orbax writes array data through it, not through epath), by giving
  orbax a `file` kvstore for the same directory.
A bucket exists when ROOT/BUCKET does (buckets are made out of band, as on GCS); any access to another
bucket fails as an unreachable one would. Used in-process (`fake_bucket(root)`) and, for runs that must
be killed, as a launcher: `python tests/fake_bucket.py ROOT search --config ... --workdir gs://b/run`
(tests/faults.py adds crashes and a full disk at chosen points).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator
from unittest import mock

from etils.epath import testing as epath_testing

PREFIX = "gs://"


@contextlib.contextmanager
def fake_bucket(root: str) -> Iterator[None]:
  """Within the block, gs://B/x is ROOT/B/x for epath and for orbax's TensorStore driver."""
  root = os.path.abspath(root)

  def local(path) -> str:
    path = os.fspath(path)
    if not path.startswith(PREFIX):
      return path
    bucket, _, rest = path[len(PREFIX):].partition("/")
    if not os.path.isdir(os.path.join(root, bucket)):
      raise ConnectionError(f"fake bucket: gs://{bucket} is not reachable")
    return os.path.join(root, bucket, rest)

  def remote(path: str) -> str:  # glob/walk answer in the caller's namespace
    return PREFIX + os.path.relpath(path, root) if path.startswith(root + os.sep) else path

  def one(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def two(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  def glob(original, pattern):
    return [remote(p) for p in original(local(pattern))]

  def walk(original, top, **kwargs):
    for directory, dirs, files in original(local(top), **kwargs):
      yield remote(os.fspath(directory)), dirs, files

  def kvstore(path: str) -> dict:
    return {"driver": "file", "path": local(path)}

  from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=import-outside-toplevel
  with contextlib.ExitStack() as stack:
    stack.enter_context(epath_testing.mock_epath(
        open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
        rmtree=one, stat=one, rename=two, replace=two, copy=two, glob=glob, walk=walk))
    stack.enter_context(mock.patch.object(gcs_utils, "get_kvstore_for_gcs", kvstore))
    stack.enter_context(mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled",
                                          lambda path: False))
    stack.enter_context(mock.patch.object(
        gcs_utils, "rmtree", lambda path, missing_ok=False: epath_rmtree(path, missing_ok)))
    yield


def epath_rmtree(path, missing_ok: bool) -> None:
  from etils import epath  # pylint: disable=import-outside-toplevel
  path = epath.Path(path)
  if missing_ok and not path.exists():
    return
  path.rmtree()


if __name__ == "__main__":
  with fake_bucket(sys.argv[1]):
    from oneshot import cli  # pylint: disable=import-outside-toplevel
    sys.argv = ["oneshot"] + sys.argv[2:]
    cli.entry()
