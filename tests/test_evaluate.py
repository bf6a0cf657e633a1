"""The comparison command on a tiny random model: a complete table, plot, grids and HTML; and its helpers."""
import csv

import jax
import numpy as np
import pytest

from configs import tiny
from idinvert_jax import evaluate, export
from idinvert_jax.data import synthetic_faces
from idinvert_jax.editing import boundaries
from idinvert_jax.metrics import attributes


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  config = tiny.get_config()
  models = export.create_models(config, jax.random.PRNGKey(0), names=("generator", "encoder"))
  return str(export.save_models(tmp_path_factory.mktemp("ckpt"), config, models.variables()))


def test_comparison_writes_a_complete_table(tiny_checkpoint, tmp_path):
  # A boundary file for the manipulation column (random direction: the numbers mean nothing on a random model).
  direction = np.random.default_rng(0).normal(size=(8, 32)).astype(np.float32)
  boundary = boundaries.save_boundary(tmp_path / "smile.npz",
                                      boundaries.Boundary(direction=direction, attribute="smile"))
  # An untrained predictor keeps the test fast; training it is tested in test_metrics_attributes.py.
  module = attributes.AttributeNet(attributes=tuple(synthetic_faces.ATTRIBUTES))
  predictor = (module, module.init(jax.random.PRNGKey(1), np.zeros((1, 32, 32, 3), np.float32)))
  out = tmp_path / "report"
  # One in-domain lambda: every lambda_enc value is a separate compilation of the inversion step.
  rows = evaluate.run_comparison(tiny_checkpoint, ["synthetic:4"], str(out), quick=True,
                                 optimize_steps=(2, 3), indomain_steps=2, lambdas=(2.0,),
                                 boundary=str(boundary), progress=False, predictor=predictor)
  names = ["encoder", "optimize_2", "optimize_3", "indomain_lam2"]
  assert [r["run"] for r in rows] == names
  with open(out / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["run"] for r in table] == names
  assert list(table[0]) == list(evaluate.COLUMNS)
  for row in table:
    for column in evaluate.COLUMNS:
      assert row[column] != "", (row["run"], column)
    for column in ("mse", "psnr", "ssim", "swd_rec", "swd_interp", "edit_success", "edit_other_change",
                   "seconds_per_image"):
      assert np.isfinite(float(row[column])), (row["run"], column)
    assert row["perceptual"] == evaluate.NO_VGG
    assert 0.0 <= float(row["edit_success"]) <= 1.0
  # The table reports the requested settings, not the defaults.
  assert [r["steps"] for r in table] == ["0", "2", "3", "2"]
  assert [r["lambda_enc"] for r in table] == ["n/a", "n/a", "n/a", "2"]
  markdown = (out / "results.md").read_text()
  assert all(f"| {n} |" in markdown for n in names) and "jax_backend=" in markdown
  html = (out / "index.html").read_text()
  assert 'src="reconstructions.png"' in html and 'src="ablation.png"' in html
  for name in ("ablation.png", "reconstructions.png", "interpolations.png", "results.json"):
    assert (out / name).stat().st_size > 0


def test_comparison_runs_and_midpoints():
  runs = evaluate.comparison_runs()
  assert [r.name for r in runs] == ["encoder", "optimize_100", "optimize_1000", "indomain_lam0",
                                    "indomain_lam0.5", "indomain_lam2", "indomain_lam5"]
  assert runs[4].overrides() == {"method": "indomain", "num_iterations": 100, "loss_weight_enc": 0.5}
  with pytest.raises(ValueError, match="unknown methods"):
    evaluate.comparison_runs(methods=("gradient",))
  codes = np.arange(3 * 2 * 1, dtype=np.float32).reshape(3, 2, 1)
  mids = evaluate.interpolation_midpoints(codes)
  np.testing.assert_allclose(mids[0], 0.5 * (codes[0] + codes[1]))
  np.testing.assert_allclose(mids[2], 0.5 * (codes[2] + codes[0]))  # Cyclic: one mid-point per image.


def test_ablation_plot_needs_indomain_rows(tmp_path):
  rows = [{"method": "indomain", "mse": m, "lambda_enc": l, "edit_success": "n/a", "swd_interp": s}
          for m, l, s in ((0.1, 0.0, 30.0), (0.2, 2.0, 20.0))]
  assert evaluate.plot_ablation(tmp_path / "a.png", rows).stat().st_size > 0
  assert evaluate.plot_ablation(tmp_path / "b.png", [{"method": "encoder", "mse": 0.1}]) is None


def test_bench_runner_reads_the_last_json_line_and_reports_failures(tmp_path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("run_all", "bench/run_all.py")
  run_all = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(run_all)
  assert run_all.parse_bench_json('table\nBENCH_JSON {"a": 1}\nBENCH_JSON {"a": 2, "b": 0.5}\n') == {"a": 2,
                                                                                                  "b": 0.5}
  assert run_all.parse_bench_json("no json here") is None
  good = tmp_path / "bench_good.py"
  good.write_text("import sys, json\nprint('rows')\nprint('BENCH_JSON ' + json.dumps({'quick': '--quick' in "
                  "sys.argv, 's_per_step': 0.25}))\n")
  bad = tmp_path / "bench_bad.py"
  bad.write_text("raise SystemExit(3)\n")
  slow = tmp_path / "bench_slow.py"
  slow.write_text("import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; "
                  "time.sleep(60)'])\nprint('started', flush=True)\ntime.sleep(60)\n")
  results = [run_all.run_script(good, quick=True, timeout=60), run_all.run_script(bad, quick=True, timeout=60)]
  timed_out = run_all.run_script(slow, quick=True, timeout=3)
  # The child that also holds the output pipe is stopped with it: the runner returns right after the timeout.
  assert timed_out["status"] == "timed out after 3 s" and timed_out["seconds"] < 30
  assert "started" in timed_out["stdout"]
  assert results[0]["status"] == "ok" and results[0]["json"] == {"quick": True, "s_per_step": 0.25}
  assert results[1]["status"] == "failed (exit 3)" and results[1]["json"] is None
  path = run_all.write_markdown(tmp_path / "latest.md", results, quick=True)
  text = path.read_text()
  assert "| bench_good | ok |" in text and "s_per_step=0.25" in text and "| bench_bad | failed (exit 3) |" in text
