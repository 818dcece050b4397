"""One import name: an installed oneshot adds only `oneshot` to site-packages."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

_TOP_LEVEL = re.compile(r"^\s*(from|import) (controllers|spaces|launch|configs)\b", re.M)


def test_no_module_imports_the_folders_as_top_level_packages():
  """`import spaces` would work from a checkout but not once installed (and would load a second copy
  of the module beside `oneshot.spaces`)."""
  offenders = []
  for folder in ("oneshot", "controllers", "spaces", "launch", "configs", "tests", "benchmarks"):
    for root, _, files in os.walk(os.path.join(REPO, folder)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(root, name)
          with open(path) as f:
            if _TOP_LEVEL.search(f.read()):
              offenders.append(os.path.relpath(path, REPO))
  assert not offenders


@pytest.mark.slow
def test_the_wheel_installs_only_the_oneshot_package(tmp_path):
  # Built from a copy of the tracked files: an in-tree build would leave build/ in the checkout.
  source = tmp_path / "src"
  tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
  for name in tracked:
    (source / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.join(REPO, name), source / name)
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                  "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True,
                 timeout=300)
  (wheel,) = [p for p in os.listdir(tmp_path / "dist") if p.endswith(".whl")]
  with zipfile.ZipFile(tmp_path / "dist" / wheel) as z:
    names = z.namelist()
    top_level = [n for n in names if n.endswith("top_level.txt")]
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert tops == {"oneshot"}, tops
    if top_level:
      assert z.read(top_level[0]).decode().split() == ["oneshot"]
  # Every module ships, a subpackage added without its line in pyproject.toml's `packages` too.
  from tests.test_layers import PACKAGES, ROOT  # pylint: disable=import-outside-toplevel
  for folder, package in PACKAGES.items():
    for directory, _, files in os.walk(os.path.join(ROOT, folder)):
      for name in files:
        if name.endswith(".py"):
          rel = os.path.relpath(os.path.join(directory, name), os.path.join(ROOT, folder))
          path = "/".join([*package.split("."), *rel.split(os.sep)])
          assert path in names, path


@pytest.mark.slow
def test_peer_benchmark_without_the_extra_is_one_line_exit_0():
  """benchmarks/peer_nni.py needs `.[peer]` (torch, nni, Lightning); without it, one line and exit 0."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("torch") is not None:
    pytest.skip("the peer extra is installed here")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "peer_nni.py")],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stderr == "", proc.stderr
  assert proc.stdout.count("\n") == 1 and "pip install -e '.[peer]'" in proc.stdout
