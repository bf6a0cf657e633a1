"""Training logs: a tqdm progress bar (images/s, ETA), metrics as JSON lines, optional TensorBoard, PNG grids.

Only process 0 writes files or draws the bar; every other process calls the same methods, which do nothing.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
import tqdm

from idinvert_jax import files


class TrainLogger:
  """Writes `workdir/metrics.jsonl` (appending across resumes) and shows progress."""

  def __init__(self, workdir: str | os.PathLike, *, total_steps: int, start_step: int, batch_size: int,
               stage: str, show_progress: bool = True):
    self.workdir = os.fspath(workdir)
    self.is_writer = jax.process_index() == 0
    self.batch_size = batch_size
    self.stage = stage
    self._last_time = time.perf_counter()
    self._last_step = start_step
    self._tensorboard = _maybe_tensorboard(os.path.join(self.workdir, "tensorboard")) if self.is_writer else None
    self._bar = None
    if self.is_writer and show_progress:
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            desc=f"train {stage}")
    if self.is_writer:
      os.makedirs(self.workdir, exist_ok=True)

  def step_done(self, step: int, metrics: Mapping[str, float] | None = None) -> None:
    """Advances the bar to `step` and shows the latest losses and the images/s since the last call."""
    if self._bar is None:
      return
    self._bar.update(step - self._bar.n)
    if metrics:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:4]}, refresh=False)

  def write_metrics(self, step: int, metrics: Mapping[str, Any]) -> dict:
    """Appends one JSON line {stage, step, kimg, images_per_sec, time, **metrics}; returns it."""
    now = time.perf_counter()
    steps = step - self._last_step
    images_per_sec = steps * self.batch_size / max(now - self._last_time, 1e-9) if steps > 0 else 0.0
    self._last_time, self._last_step = now, step
    record = {"stage": self.stage, "step": int(step), "kimg": step * self.batch_size / 1000.0,
              "images_per_sec": float(images_per_sec), "time": time.time()}
    record.update({k: float(v) for k, v in metrics.items()})
    if self.is_writer:
      # Appending one small line is atomic enough for a log; the checkpoint, not this file, is the truth.
      with open(os.path.join(self.workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
      if self._tensorboard is not None:
        for key, value in record.items():
          if isinstance(value, float):
            self._tensorboard.add_scalar(f"{self.stage}/{key}", value, step)
      if self._bar is not None:
        self._bar.set_postfix({"img/s": f"{images_per_sec:.1f}"}, refresh=False)
    return record

  def warn(self, message: str) -> None:
    """A warning about the run (process 0): above the progress bar and in workdir/warnings.log."""
    if not self.is_writer:
      return
    if self._bar is not None:
      self._bar.write(f"WARNING: {message}")  # above the bar, which a log line would break
    else:
      logging.warning("%s", message)
    with open(os.path.join(self.workdir, "warnings.log"), "a") as f:
      f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

  def save_grid(self, step: int, rows: list[list[np.ndarray]], row_labels=None) -> str | None:
    """Writes workdir/samples/<stage>_<step>.png from rows of [-1, 1] HWC images."""
    if not self.is_writer:
      return None
    from idinvert_jax import report  # pylint: disable=import-outside-toplevel
    grid = report.image_grid(rows, row_labels=row_labels)
    path = os.path.join(self.workdir, "samples", f"{self.stage}_{step:08d}.png")
    files.atomic_save_png(path, grid)
    return path

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tensorboard is not None:
      self._tensorboard.close()


def _maybe_tensorboard(logdir: str):
  """A TensorBoard SummaryWriter when one is installed, else None (JSON lines are always written)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
    return None  # checked first: importing torch just to fail would cost seconds
  for module_name in ("torch.utils.tensorboard", "tensorboardX"):
    try:
      module = __import__(module_name, fromlist=["SummaryWriter"])
      return module.SummaryWriter(logdir)
    except Exception:  # pylint: disable=broad-except
      continue
  logging.debug("TensorBoard is not installed; metrics go to metrics.jsonl only")
  return None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """All records of workdir/metrics.jsonl (tests, reports)."""
  path = os.path.join(os.fspath(workdir), "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
