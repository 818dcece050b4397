"""The Python API (`oneshot.api`): the README's script runs as printed, results match the files."""

import json
import os
import re
import subprocess
import sys

import pytest

from oneshot import UserError, api
from tests.conftest import REPO, tiny_config


def _readme_api_script() -> str:
  with open(os.path.join(REPO, "README.md")) as f:
    readme = f.read()
  section = readme[readme.index("\n## Python API\n"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_script_is_short():
  code = [l for l in _readme_api_script().splitlines() if l.strip() and not l.lstrip().startswith("#")]
  assert len(code) <= 15, code


@pytest.mark.slow
def test_readme_api_script_runs_as_printed(tmp_path):
  """Search digits, export the answer, load it back and apply it: the README's block, verbatim."""
  proc = subprocess.run([sys.executable, "-c", _readme_api_script()], cwd=tmp_path,
                        capture_output=True, text=True, timeout=600)  # as installed
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert re.match(r"^[0-9,]+ validation accuracy 0\.\d{3} .*metrics\.jsonl$", lines[0]), lines
  assert re.match(r"^\d+ parameters, stand-alone validation accuracy 0\.\d{3}$", lines[1]), lines
  assert lines[2] == "(2, 10)"
  assert (tmp_path / "workdirs" / "api-digits-child" / "architecture.json").exists()
  assert "WARNING" not in proc.stderr  # orbax's read-only notices are not shown


def test_search_and_export_results_match_their_files(tmp_path):
  result = api.search(tiny_config(num_steps=4, checkpoint_every=4, log_every=2), str(tmp_path / "w"))
  with open(result.files["search_result.json"]) as f:
    saved = json.load(f)
  assert result.architecture == saved["string"] and list(result.dna) == saved["dna"]
  assert result.reward == saved["reward"] and result.steps == 4 == saved["steps"]
  assert all(os.path.exists(p) for p in result.files.values()), result.files
  child = api.export(result.workdir, str(tmp_path / "child"), recalibrate_batches=1)
  assert child.architecture == result.architecture and child.num_params > 0
  assert 0 <= child.validation_accuracy <= 1
  model, variables = api.load(child.directory)
  assert "params" in variables and model is not None


def test_get_config_by_name_path_and_overrides():
  config = api.get_config("digits", seed=7)
  assert config.seed == 7 and config.space.name == "mobilenet"
  assert api.get_config(os.path.join(REPO, "configs", "digits_nb201.py")).space.name == "nasbench201"


@pytest.mark.parametrize("name, needle", [("no_such_config", "use one of"),
                                          ("/no/such/file.py", "no config")])
def test_get_config_bad_name_is_one_line(name, needle):
  with pytest.raises(UserError, match=needle) as info:
    api.get_config(name)
  assert "\n" not in str(info.value) and "digits" in str(info.value)


def test_importing_oneshot_stays_light():
  """The CLI reports bad input before jax loads; the API must not change that."""
  out = subprocess.run([sys.executable, "-c", "import sys, oneshot; print('jax' in sys.modules)"],
                       capture_output=True, text=True, cwd=REPO, timeout=60).stdout
  assert out.strip() == "False"
