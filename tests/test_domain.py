"""Out-of-domain calibration: python -m idinvert_jax.domain writes a domain.json that the readers trust."""
import json

import jax
import pytest

from configs import tiny
from idinvert_jax import domain, domain_check, export


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  config = tiny.get_config()
  models = export.create_models(config, jax.random.key(0), names=("generator", "encoder"))
  return export.save_models(tmp_path_factory.mktemp("ckpt"), config, models.variables())


def test_cli_calibrates_on_held_out_faces_and_load_reads_it_back(ckpt, capsys):
  assert domain_check.load(ckpt) is None  # Not calibrated yet: no verdicts, no error.
  assert domain.main(["--checkpoint", str(ckpt), "--images", "synthetic:8", "--num_iterations", "1",
                      "--percentile", "25", "--no_progress"]) == 0
  record = json.loads((ckpt / domain_check.CALIBRATION_FILE).read_text())
  assert record["num_images"] == 8 and record["percentile"] == 25 and record["settings"]["num_iterations"] == 1
  assert record["settings"]["perceptual_term"] is False and "never used in training" in record["images"]
  assert "--images synthetic:8 --percentile 25 --num_iterations 1" in record["command"]
  calibration = domain_check.load(ckpt)
  for method in ("indomain", "encoder"):
    r = calibration.psnr_range[method]
    assert r["min"] <= calibration.thresholds[method] <= r["median"] <= r["max"]
  threshold = calibration.threshold("indomain")
  assert domain_check.verdicts(calibration, [threshold - 1, threshold + 1, float("inf"), float("nan")], "indomain") == [
      True, False, False, None]
  assert calibration.threshold("optimize") == threshold  # Same objective family: shares the in-domain threshold.
  assert "indomain: threshold" in capsys.readouterr().out


def test_bad_settings_and_files_are_one_line(ckpt, tmp_path):
  with pytest.raises(SystemExit, match="use a low percentile between 0 and 50"):
    domain.main(["--checkpoint", str(ckpt), "--images", "synthetic:8", "--percentile", "60", "--output",
                 str(tmp_path / "d.json")])
  with pytest.raises(SystemExit, match="a percentile needs at least 8"):
    domain.main(["--checkpoint", str(ckpt), "--images", "synthetic:4", "--output", str(tmp_path / "d.json")])
  (ckpt / domain_check.CALIBRATION_FILE).write_text(json.dumps({"thresholds": {"indomain": "x"}}))
  with pytest.raises(domain_check.DomainError, match=r"domain.json: not a domain calibration .* recompute it with"):
    domain_check.load(ckpt)
  (ckpt / domain_check.CALIBRATION_FILE).unlink()
