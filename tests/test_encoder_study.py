"""bench/encoder_study.py: rows accumulate over sessions only on the same generator; --render_only redraws."""
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import encoder_study  # noqa: E402  pylint: disable=wrong-import-position


def row(variant, psnr=17.0):
  return {"variant": variant, "what": variant, "steps": 2500, "encoder_psnr": psnr, "encoder_ssim": 0.4,
          "indomain0_psnr": 24.0, "indomain2_psnr": 20.5, "indomain2_swd_interp": 50.0, "cpu_minutes": 30.0,
          "measured": "2026-12-02"}


BASELINE = {"run": "optimize_100", "psnr": 20.91, "ssim": 0.548, "swd_interp": 62.7}


def test_same_generator_keeps_earlier_rows_and_new_rows_win():
  previous = {"generator_fingerprint": "abc", "baseline": BASELINE, "rows": [row("official"), row("lr1e-3", 17.0)]}
  merged = encoder_study.merge_rows(previous, [row("lr1e-3", 18.0), row("wide")], "abc", BASELINE)
  assert [r["variant"] for r in merged] == ["official", "lr1e-3", "wide"]  # in the driver's variant order
  assert merged[1]["encoder_psnr"] == 18.0


def test_another_generator_starts_a_new_table(capsys):
  previous = {"generator_fingerprint": "abc", "baseline": BASELINE, "rows": [row("official")]}
  merged = encoder_study.merge_rows(previous, [row("wide")], "def", BASELINE)
  assert [r["variant"] for r in merged] == ["wide"]
  assert "another generator" in capsys.readouterr().out


def test_rows_without_fingerprint_need_the_same_baseline():
  previous = {"generator_fingerprint": None, "baseline": BASELINE, "rows": [row("official")]}
  same = encoder_study.merge_rows(previous, [row("wide")], "def", dict(BASELINE, psnr=20.912))
  other = encoder_study.merge_rows(previous, [row("wide")], "def", dict(BASELINE, psnr=20.5))
  assert [r["variant"] for r in same] == ["official", "wide"]
  assert [r["variant"] for r in other] == ["wide"]


def test_render_only_writes_table_and_plot(tmp_path):
  output = tmp_path / "study"
  estimated = dict(row("lr1e-3", 17.5), cpu_note="resumed run, CPU time scaled")
  study = {"baseline": BASELINE, "rows": [row("official", 15.3), estimated], "machine": "Machine: test",
           "command": "python bench/encoder_study.py ...", "num_images": 100, "generator_fingerprint": "abc"}
  output.with_suffix(".json").write_text(json.dumps(study))
  subprocess.run([sys.executable, str(ROOT / "bench" / "encoder_study.py"), "--render_only", "--output", str(output)],
                 check=True, capture_output=True)
  table = output.with_suffix(".md").read_text()
  assert "| official |" in table and "15.30 / 0.400" in table and "2026-12-02" in table
  assert "| 30 (est.) |" in table and "- lr1e-3: resumed run, CPU time scaled" in table
  assert output.with_suffix(".png").stat().st_size > 10_000


def test_render_draws_the_length_curve(tmp_path, monkeypatch):
  """Rows of one long run (const_*) become a curve over training CPU minutes, in step order."""
  curve = [dict(row(f"const_{n}", psnr), steps=steps, cpu_minutes=minutes)
           for n, steps, psnr, minutes in (("5k", 5000, 18.1, 60.0), ("2.5k", 2500, 17.6, 30.0))]
  study = {"baseline": BASELINE, "rows": [row("lr1e-3", 17.5), *curve], "machine": "Machine: test",
           "command": "python bench/encoder_study.py ...", "num_images": 100, "generator_fingerprint": "abc"}
  lines = []
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib.axes import Axes  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(Axes, "plot", lambda self, xs, ys, *a, **k: lines.append((list(xs), list(ys), k.get("label"))))
  encoder_study.plot(study["rows"], BASELINE, tmp_path / "study.png")
  assert ([30.0, 60.0], [17.6, 18.1], "const: encoder alone") in lines
  assert (tmp_path / "study.png").stat().st_size > 10_000


def test_render_only_without_json_names_the_fix(tmp_path):
  result = subprocess.run([sys.executable, str(ROOT / "bench" / "encoder_study.py"), "--render_only", "--output",
                           str(tmp_path / "none")], capture_output=True, text=True)
  assert result.returncode == 2 and "run the study first" in result.stderr


def test_summarise_dates_a_row_by_its_evaluation(tmp_path):
  """A rerun that reuses an earlier day's evaluation keeps that day (results.json's mtime), not today's."""
  import os  # pylint: disable=import-outside-toplevel
  (tmp_path / "results.json").write_text("{}")
  os.utime(tmp_path / "results.json", (1764633600, 1764633600))  # 2025-12-02 00:00 UTC
  rows = [{"run": run, "psnr": 20.0, "ssim": 0.5, "swd_interp": 50.0}
          for run in ("encoder", "indomain_lam0", "indomain_lam2")]
  record = {"settings": {"train.encoder.num_steps": 2500}, "cpu_seconds": 600.0, "wall_seconds": 400.0}
  summary = encoder_study.summarise(encoder_study.VARIANTS[0], record, rows, tmp_path)
  assert summary["measured"].startswith("2025-12-0") and summary["cpu"]
  assert summary["cpu_minutes"] == 10.0 and summary["steps"] == 2500


def test_the_stored_command_reproduces_every_row():
  for argv in (["--gan", "g", "--variants", "cosine", "--workdir", "w"],
               ["--gan", "g", "--variants=cosine", "--workdir", "w"]):
    assert encoder_study.reproducing_command(argv, ["lr1e-3", "cosine"]) == (
        "python bench/encoder_study.py --gan g --workdir w --variants lr1e-3,cosine")


def test_length_fit_is_the_least_squares_trend_per_doubling():
  """Encoder PSNR against log2(CPU minutes): exact on points that lie on a line; none below three points."""
  curve = [dict(row(f"const_{m}", 17.0 + 0.5 * k), cpu_minutes=m) for k, m in enumerate((30.0, 60.0, 120.0))]
  slope, intercept = encoder_study.length_fit(curve)
  assert abs(slope - 0.5) < 1e-12 and abs(slope * math.log2(60.0) + intercept - 17.5) < 1e-9
  assert encoder_study.length_fit(curve[:2]) is None


def test_run_timed_reports_cpu_while_the_child_runs(tmp_path):
  """A driver killed mid-training keeps the child's CPU time so far (read from /proc every poll)."""
  readings = []
  burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"
  total = encoder_study.run_timed([sys.executable, "-c", burn], tmp_path / "log", readings.append, poll_seconds=0.2)
  assert 0.5 < total < 5
  assert readings and readings == sorted(readings) and 0 < readings[-1] <= total + 0.05


def test_an_unfinished_reading_is_counted_once_and_noted():
  record = encoder_study.carry_unfinished({"cpu_seconds": 600.0, "cpu_seconds_unfinished": 120.0})
  assert record["cpu_seconds"] == 720.0 and "cpu_seconds_unfinished" not in record and record["cpu_note"]
  assert encoder_study.carry_unfinished({"cpu_seconds": 600.0}) == {"cpu_seconds": 600.0}
