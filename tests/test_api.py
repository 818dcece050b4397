"""The Python API (`oneshot.api`): the README's script runs as printed, results match the files."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from oneshot import UserError, api, cli
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_importing_oneshot_stays_light():
  """The CLI reports bad input before jax loads; the API must not change that."""
  out = subprocess.run([sys.executable, "-c", "import sys, oneshot; print('jax' in sys.modules)"],
                       capture_output=True, text=True, cwd=REPO, timeout=60).stdout
  assert out.strip() == "False"


def _digit_arrays(offset: int = 0) -> api.Arrays:
  from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
  images, labels = load_digits(return_X_y=True)
  images = (images.reshape(-1, 8, 8) * 255 / 16).astype(np.uint8)
  images = np.roll(images, offset, axis=0)
  labels = np.roll(labels, offset)
  return api.Arrays(train=(images[:1200], labels[:1200]),
                    validation=(images[1200:1500], labels[1200:1500]),
                    test=(images[1500:], labels[1500:]))


@pytest.mark.slow
def test_search_on_numpy_arrays_resumes_exactly_and_exports(tmp_path, capsys):
  """Your own data: a stopped-and-resumed search on arrays equals the straight one; other arrays, or a
  CLI command that cannot have the arrays, are one line."""
  from oneshot import search_loop  # pylint: disable=import-outside-toplevel
  from oneshot.data import arrays
  config, data = tiny_config(num_steps=4, checkpoint_every=2, log_every=2), _digit_arrays()
  straight = api.search(config, str(tmp_path / "straight"), data=data)
  with arrays.serving(data) as section:
    stopped = config.copy_and_resolve_references()
    stopped.dataset = section
    assert search_loop.run(stopped, str(tmp_path / "resumed"), stop_after=2) is None
  resumed = api.search(config, str(tmp_path / "resumed"), data=_digit_arrays())  # equal arrays
  assert resumed.dna == straight.dna and resumed.reward == straight.reward
  assert straight.record["num_devices"] >= 1 and straight.steps == 4
  with pytest.raises(UserError, match="pass the arrays it started with"):
    api.search(config, str(tmp_path / "resumed"), data=_digit_arrays(offset=1))
  assert cli.main(["export", "--workdir", str(tmp_path / "straight"), "--out",
                   str(tmp_path / "cli-child")]) == 2
  assert "pass the same arrays" in capsys.readouterr().err
  assert not (tmp_path / "cli-child").exists()
  child = api.export(straight.workdir, str(tmp_path / "child"), data=data, recalibrate_batches=2)
  assert child.architecture == straight.architecture and 0 <= child.validation_accuracy <= 1
  prep = child.record["preprocessing"]  # uint8 arrays: 0..255, and the class indices as names
  assert prep["scale"] == 255.0 and prep["class_names"] == [str(i) for i in range(10)]
  images = data.validation[0][:5, ..., None]
  assert api.load(child.directory).predict(images).shape == (5, 10) and child.artifact


@pytest.mark.parametrize("bad, needle", [
    (dict(train=(np.zeros((4, 8, 8)), np.zeros(3, int))), "same n"),
    (dict(train=(np.zeros((4, 8, 8)), np.zeros(4))), "labels must be integers"),
    (dict(train=(np.zeros((4, 8, 8)), np.zeros(4, int)),
          validation=(np.zeros((4, 9, 9)), np.zeros(4, int))), "same image shape"),
    (dict(train=(np.zeros((4, 8, 8)), np.arange(4)), num_classes=2), "num_classes=2"),
])
def test_bad_arrays_are_one_line(bad, needle, tmp_path):
  bad.setdefault("validation", (np.zeros((2, 8, 8)), np.zeros(2, int)))
  with pytest.raises(UserError, match=needle) as info:
    api.search(tiny_config(), str(tmp_path / "w"), data=api.Arrays(**bad))
  assert "\n" not in str(info.value)
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_docs_controller_example_runs_as_printed():
  """docs/python.md's ask/tell example (controllers on any reward) finds the toy optimum."""
  with open(os.path.join(REPO, "docs", "python.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  (block,) = [b for b in blocks if "controllers.search(" in b]
  proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split()[0] == "2,2,1"  # depth 8, width 64, gelu
