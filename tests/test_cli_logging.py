"""Command lines are quiet by default: no Orbax INFO lines, no 'Unable to initialize backend' probe line, unless
--verbosity asks; the project's own INFO lines and warnings still show."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What invert.py / train.py / evaluate.py do: absl app, quiet_libraries in main, then JAX and Orbax at work.
SCRIPT = """
import sys
from absl import app, flags, logging
from idinvert_jax import cli_logging

def main(argv):
  cli_logging.quiet_libraries(flags.FLAGS.verbosity)
  import jax, numpy as np, orbax.checkpoint as ocp
  jax.devices()  # backend probing ('Unable to initialize backend tpu' on a machine without one)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(argv[1] + "/c", {"w": np.zeros(3)})
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.restore(argv[1] + "/c")
  logging.info("OUR INFO LINE")
  logging.warning("OUR WARNING")

app.run(main)
"""


def _run(directory, *flags):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}  # probe as a user's run
  proc = subprocess.run([sys.executable, "-c", SCRIPT, *flags, str(directory)], capture_output=True, text=True,
                        cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)), timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


def test_library_info_lines_are_hidden_unless_verbosity_asks(tmp_path):
  quiet = _run(tmp_path / "quiet")
  lines = [line for line in quiet.splitlines() if line.strip()]
  assert any("OUR INFO LINE" in line for line in lines) and any("OUR WARNING" in line for line in lines)
  assert "Unable to initialize backend" not in quiet
  assert not [line for line in lines if "OUR " not in line and line.startswith("I")], quiet[-3000:]
  verbose = _run(tmp_path / "verbose", "--verbosity=1")
  assert len([line for line in verbose.splitlines() if line.startswith("I")]) > 3  # they exist: hidden above
