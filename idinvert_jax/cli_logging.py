"""Quiet command lines: the INFO logs of the libraries (Orbax's ~11 lines per checkpoint read or write, JAX's
'Unable to initialize backend ...' probing) are hidden unless --verbosity asks for them; the project's own
INFO lines and every library WARNING still show."""
from __future__ import annotations

import logging

_LIBRARY_DIRS = ("/orbax/", "/jax/", "/jaxlib/", "/flax/", "/etils/", "/grain/")


class HideLibraryInfo(logging.Filter):
  """Drops records below WARNING that come from a library's source file."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(d in record.pathname for d in _LIBRARY_DIRS)


def quiet_libraries(verbosity: int = 0) -> None:
  """Adds HideLibraryInfo to the root logger's handlers (absl's among them; call it inside main(), after
  app.run installed its handler) unless `verbosity` >= 1 (absl's --verbosity=1 / -v 1)."""
  if verbosity >= 1:
    return
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, HideLibraryInfo) for f in handler.filters):
      handler.addFilter(HideLibraryInfo())
