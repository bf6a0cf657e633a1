"""Atomic writers (idinvert_jax/files.py): complete files only, with the mode the umask gives."""
import os
import stat

import numpy as np
import pytest

from idinvert_jax import files


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_honour_the_umask(tmp_path, umask, mode):
  previous = os.umask(umask)
  try:
    written = [files.atomic_write_bytes(tmp_path / "a.bin", b"x"), files.atomic_write_json(tmp_path / "c.json", {}),
               files.atomic_write_text(tmp_path / "index.html", "<p>"),
               files.atomic_save_npy(tmp_path / "codes.npy", np.zeros(3)),
               files.atomic_save_png(tmp_path / "x_inv.png", np.zeros((4, 4, 3), np.float32))]
  finally:
    os.umask(previous)
  assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: mode for p in written}
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporary left
