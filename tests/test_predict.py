"""An export you can ship: preprocessing recorded, the jax.export artifact, `oneshot predict`, the card.

One digits export (an untrained supernet's child: export and predict do not care whether the weights
were trained) is shared by the module; the Fashion-MNIST export, whose dataset has class names, is slow.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from oneshot import api, cli, serving
from oneshot import child as child_lib
from oneshot.errors import UserError
from tests.searched import Searched


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
  return Searched("mobilenet", tmp_path_factory.mktemp("digits"), searched=False)


def _raw(s: Searched, split: str = "validation", n: int = 7) -> np.ndarray:
  """Images as the dataset stores them (digits: uint8 0..16), before oneshot.data normalises them."""
  return s.sess.dataset.raw_images(split, np.arange(n))


def _write_pngs(folder, images: np.ndarray) -> list[str]:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  os.makedirs(folder, exist_ok=True)
  names = []
  for i, image in enumerate(images):
    names.append(f"img{i:03d}.png")
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(os.path.join(folder,
                                                                                         names[-1]))
  return names


def _format1(record: dict) -> None:
  """architecture.json as exports wrote it before preprocessing was recorded."""
  for key in ("preprocessing", "cost", "artifact"):
    record.pop(key)
  record["format_version"] = 1


def _copy(src, dst, change=None, drop=()) -> str:
  shutil.copytree(src, dst)
  path = os.path.join(dst, "architecture.json")
  record = json.load(open(path))
  if change:
    change(record)
    json.dump(record, open(path, "w"))
  for name in drop:
    target = os.path.join(dst, name)
    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
  return str(dst)


def test_preprocessing_is_exactly_what_data_py_applies(digits):
  record = digits.record
  prep = serving.Preprocessing.from_json(record["preprocessing"], record["num_classes"])
  assert (prep.input_dtype, prep.scale, prep.shape) == ("uint8", 16.0, (8, 8, 1))
  assert prep.class_names == tuple(str(i) for i in range(10))
  ds = digits.sess.dataset
  raw = _raw(digits, n=80)
  normalised = next(ds.iterate("validation", 80))["image"]
  np.testing.assert_array_equal(np.asarray(prep.apply(raw), np.float32), normalised)  # bit for bit


@pytest.mark.slow
def test_predictor_gives_the_childs_probabilities(digits):
  predictor = api.load(digits.out)
  model, variables = predictor  # what `load` returned before
  raw = _raw(digits)
  logits = model.apply(variables, predictor.preprocessing.apply(raw), train=False)
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(predictor.predict(raw), expected, atol=1e-6)
  top = predictor.top(raw)
  assert [t[0] for t in top] == list(np.asarray(expected).argmax(-1))
  assert predictor.class_names[top[0][0]] == top[0][1]


@pytest.mark.slow
def test_artifact_runs_in_a_fresh_process_with_jax_alone(digits, tmp_path):
  raw = _raw(digits)
  np.save(tmp_path / "images.npy", raw)
  code = ("import sys, jax, numpy as np\n"
          f"data = open({os.path.join(digits.out, 'model.jax_export')!r}, 'rb').read()\n"
          "exported = jax.export.deserialize(bytearray(data))\n"
          "p = np.asarray(exported.call(np.load('images.npy')))\n"
          "np.save('probabilities.npy', p)\n"
          "bad = [m for m in sys.modules if m.split('.')[0] in ('oneshot', 'flax')]\n"
          "assert not bad, bad\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH="")
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                        env=env, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  got = np.load(tmp_path / "probabilities.npy")
  np.testing.assert_allclose(got, api.load(digits.out).predict(raw), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_one_artifact_serves_any_batch_size(digits):
  from jax import export as jax_export  # pylint: disable=import-outside-toplevel
  with open(os.path.join(digits.out, "model.jax_export"), "rb") as f:
    exported = jax_export.deserialize(bytearray(f.read()))
  assert set(exported.platforms) == {"cpu", "cuda", "tpu"}
  raw, predictor = _raw(digits), api.load(digits.out)
  for n in (1, 7):
    got = np.asarray(exported.call(raw[:n]))
    assert got.shape == (n, 10)
    np.testing.assert_allclose(got, predictor.predict(raw[:n]), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_predict_a_folder_of_pngs(digits, tmp_path, capsys):
  raw = _raw(digits)
  names = _write_pngs(tmp_path / "pngs", raw)
  assert cli.main(["predict", "--arch", digits.out, "--images", str(tmp_path / "pngs")]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  top = api.load(digits.out).top(raw)
  assert [l.split("\t")[:2] for l in lines] == [[n, t[1]] for n, t in zip(names, top)]
  assert [float(l.split("\t")[2]) for l in lines] == pytest.approx([t[2] for t in top], abs=1e-4)
  out = tmp_path / "preds.json"
  assert cli.main(["predict", "--arch", digits.out, "--images", str(tmp_path / "pngs"), "--out",
                   str(out)]) == 0
  preds = json.loads(out.read_text())
  assert preds["runner"] == "artifact" and [p["class"] for p in preds["predictions"]] == [
      t[0] for t in top]


@pytest.mark.slow
def test_predict_without_the_artifact_loads_the_checkpoint(digits, tmp_path):
  from oneshot import predict  # pylint: disable=import-outside-toplevel
  bare = _copy(digits.out, tmp_path / "bare", lambda r: r.update(artifact=None),
               drop=["model.jax_export"])
  np.save(tmp_path / "x.npy", _raw(digits))
  result = predict.predict(bare, str(tmp_path / "x.npy"))
  assert result["runner"] == "checkpoint"
  assert [p["class"] for p in result["predictions"]] == [t[0] for t in api.load(digits.out).top(
      _raw(digits))]


def _bad_inputs(tmp_path, raw):
  rgb = np.repeat(raw[:2], 3, axis=-1)
  _write_pngs(tmp_path / "rgb", rgb)
  _write_pngs(tmp_path / "big", np.zeros((1, 9, 9, 1), np.uint8))
  (tmp_path / "broken").mkdir()
  (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
  (tmp_path / "empty").mkdir()
  np.save(tmp_path / "shape.npy", raw[:, :4])
  np.save(tmp_path / "float.npy", raw.astype(np.float32))
  np.save(tmp_path / "channels.npy", np.repeat(raw, 3, axis=-1))
  (tmp_path / "junk.npy").write_bytes(b"junk")
  return {"rgb": "3 channels", "big": "9x9 pixels", "broken": "cannot read image",
          "empty": "holds no", "shape.npy": "shape (7, 4, 8, 1)", "float.npy": "dtype float32",
          "channels.npy": "3 channels", "junk.npy": "cannot read", "nope.npy": "not found",
          "x.txt": "neither a folder"}


def test_bad_images_are_one_line_and_nothing_is_written(digits, tmp_path, capsys):
  for name, needle in _bad_inputs(tmp_path, _raw(digits)).items():
    out = tmp_path / "preds.json"
    code = cli.main(["predict", "--arch", digits.out, "--images", str(tmp_path / name), "--out",
                     str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err, (name, err)
    assert not out.exists()


def test_an_export_without_preprocessing_loads_with_one_warning(digits, tmp_path, capsys):
  old = _copy(digits.out, tmp_path / "old", _format1, drop=["model.jax_export", "README.md"])
  capsys.readouterr()
  model, variables = api.load(old)
  err = capsys.readouterr().err.strip()
  assert "warning" in err and "re-export" in err and "\n" not in err
  assert "params" in variables and model is not None
  with pytest.raises(UserError, match="re-run `oneshot export`"):
    api.load(old).predict(_raw(digits))
  np.save(tmp_path / "x.npy", _raw(digits))
  assert cli.main(["predict", "--arch", old, "--images", str(tmp_path / "x.npy")]) == 2
  assert "no input preprocessing" in capsys.readouterr().err


def test_a_newer_format_is_one_line_naming_both_versions(digits, tmp_path, capsys):
  newer = _copy(digits.out, tmp_path / "newer", lambda r: r.update(format_version=99))
  with pytest.raises(UserError, match="format version 99.*format version 2") as info:
    api.load(newer)
  assert "\n" not in str(info.value)
  np.save(tmp_path / "x.npy", _raw(digits))
  assert cli.main(["predict", "--arch", newer, "--images", str(tmp_path / "x.npy")]) == 2
  assert "99" in capsys.readouterr().err


def test_damaged_preprocessing_is_one_line(digits, tmp_path):
  bad = _copy(digits.out, tmp_path / "bad",
              lambda r: r["preprocessing"].update(std=[0.0]))
  with pytest.raises(UserError, match="'preprocessing': 'std'"):
    api.load(bad)


def test_the_model_card(digits, capsys):
  card = open(os.path.join(digits.out, "README.md")).read()
  record = digits.record
  for text in (record["string"], f"{record['num_params']:,}", "FLOPs", "modelled latency",
               "validation accuracy", "model.jax_export", "oneshot predict"):
    assert text in card, text
  assert record["cost"]["flops"] > 0 and record["cost"]["latency_ms"] > 0
  assert sorted(os.listdir(digits.out)) == ["README.md", "architecture.json", "checkpoint",
                                            "model.jax_export"]


@pytest.mark.slow
def test_replacing_an_export_stays_strict(digits, tmp_path, capsys):
  """A folder holding an export plus anything else, or a format-1 export beside a README.md of the
  user's, is refused; the new export's own four entries are replaced."""
  argv = ["export", "--workdir", digits.workdir, "--recalibrate-batches", "1", "--out"]
  extra = _copy(digits.out, tmp_path / "extra")
  (tmp_path / "extra" / "notes.txt").write_text("mine")
  old_with_readme = _copy(digits.out, tmp_path / "old", _format1, drop=["model.jax_export"])
  for folder in (extra, old_with_readme):
    assert cli.main(argv + [folder]) == 2
    assert "is not an export" in capsys.readouterr().err
  assert (tmp_path / "extra" / "notes.txt").exists() and (tmp_path / "old" / "README.md").exists()
  again = _copy(digits.out, tmp_path / "again")
  assert cli.main(argv + [again]) == 0
  out = capsys.readouterr().out
  assert "exported" in out and "modelled latency" in out


@pytest.mark.slow
def test_fashion_mnist_export_predicts_a_folder_of_pngs(tmp_path, capsys):
  """The dataset with class names: a shrunk configs/fashion_mnist.py space, exported untrained."""
  # pylint: disable=import-outside-toplevel
  from oneshot import checkpoint, configuration, session as session_lib, steps, storage
  config = api.get_config("fashion_mnist")
  config.cpu_devices = 0
  config.space.stages = ((8, 1, 1), (12, 1, 2))
  config.space.head_filters = 32
  config.train.eval_batch_size = 1000
  workdir = str(tmp_path / "search")
  sess = session_lib.build(config)
  checkpoint.save(checkpoint.manager(workdir), 0, sess.initial_state(steps.make_optimizer(config)))
  storage.write_text(os.path.join(workdir, "config.json"), configuration.to_json(config))
  dna = ",".join("0" for _ in range(sess.space.num_decisions))
  out = str(tmp_path / "export")
  assert cli.main(["export", "--workdir", workdir, "--out", out, "--dna", dna,
                   "--recalibrate-batches", "1"]) == 0
  prep = child_lib.read_architecture(out)["preprocessing"]
  assert prep["scale"] == 255.0 and prep["class_names"][0] == "T-shirt/top"
  assert "T-shirt/top" in capsys.readouterr().out  # the card's classes
  raw = sess.dataset.raw_images("test", np.arange(5))
  names = _write_pngs(tmp_path / "pngs", raw)
  assert cli.main(["predict", "--arch", out, "--images", str(tmp_path / "pngs")]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  top = api.load(out).top(raw)
  assert [l.split("\t")[:2] for l in lines] == [[n, t[1]] for n, t in zip(names, top)]
