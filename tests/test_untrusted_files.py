"""Fuzzing the readers of untrusted pickled files: official-layout boundary .npy files and .pth state_dicts.

Each base file is built here from random arrays in the real layout (np.save of a 0-d object array holding the
official dict; torch.save of a state_dict, zip and legacy formats), then mutated: byte flips, truncation,
inserted pickle opcodes, crafted globals, plus a list of known attacks (object arrays from raw bytes, deep
nesting, huge declared shapes, stride-0 tensors, huge memo indices). Every case is read in one subprocess with an
address-space limit (RLIMIT_AS: its size after imports + 512 MiB) and a per-case alarm; each must end in a clean
ValueError / FileNotFoundError or a correct load (right types, finite floats), never a crash, a hang or an
allocation beyond the limit (which shows as MemoryError and fails the case).
"""
import io
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CASES_PER_KIND = 1000
SEED = 16

WORKER = textwrap.dedent('''
    import json, os, resource, signal, sys
    import numpy as np
    from idinvert_jax.convert import pth
    from idinvert_jax.editing import boundaries

    def vm_size():
      with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))

    limit = vm_size() + (512 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def on_alarm(signum, frame):
      raise TimeoutError("case took more than 5 s")

    signal.signal(signal.SIGALRM, on_alarm)
    cases, progress = sys.argv[1], sys.argv[2]
    results = {}
    for name in sorted(os.listdir(cases)):
      with open(progress, "w") as f:
        f.write(name)
      path = os.path.join(cases, name)
      signal.alarm(5)
      try:
        if name.startswith("boundary"):
          b = boundaries.load_boundary(path)
          ok = (isinstance(b.direction, np.ndarray) and b.direction.dtype == np.float32
                and np.isfinite(b.direction).all() and b.direction.ndim in (1, 2))
        else:
          sd = pth.load_state_dict(path)
          ok = all(isinstance(v, np.ndarray) and not v.dtype.hasobject for v in sd.values())
        results[name] = "loaded" if ok else "WRONG load"
      except (ValueError, FileNotFoundError) as e:
        text = str(e)
        results[name] = "error" if text and "\\n" not in text else f"UNCLEAN error {type(e).__name__}: {text!r}"
      except BaseException as e:  # MemoryError, TimeoutError, RecursionError, anything raw: a failure.
        results[name] = f"FAILED {type(e).__name__}: {str(e)[:200]}"
      finally:
        signal.alarm(0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"results": results, "peak_rss": peak, "limit": limit}))
''')

# Globals a crafted file may name instead of the ones it had.
CRAFTED_GLOBALS = [b"os\nsystem", b"builtins\neval", b"posix\nsystem", b"numpy\nfrombuffer", b"numpy\nndarray",
                   b"numpy\ndtype", b"numpy.core.multiarray\n_reconstruct", b"numpy.core.multiarray\nscalar",
                   b"numpy._core.multiarray\n_reconstruct", b"_codecs\nencode", b"collections\nOrderedDict",
                   b"torch._utils\n_rebuild_tensor_v2", b"torch\nFloatStorage", b"torch\nLongStorage",
                   b"numpy.core.numeric\n_frombuffer", b"copyreg\n_reconstructor", b"builtins\ngetattr"]
# Pickle opcodes (with plausible arguments) to insert at random places.
OPCODES = [b"(", b")", b"]", b"}", b"0", b"1", b"2", b"a", b"e", b"s", b"u", b"t", b"R", b"b", b".", b"N",
           b"\x81", b"\x85", b"\x86", b"\x87", b"\x88", b"\x89", b"\x8f", b"\x90", b"\x91", b"\x94",
           b"h\x00", b"h\x01", b"q\x07", b"r\xff\xff\xff\xff", b"j\xff\xff\xff\x7f", b"K\xff", b"J\xff\xff\xff\xff",
           b"M\xff\xff", b"C\x04abcd", b"B\xff\xff\xff\x7f", b"X\x05\x00\x00\x00hello", b"\x8a\x01\x05",
           b"\x8c\x05numpy\x8c\x05dtype\x93", b"\x80\x05", b"\x95\x00\x00\x00\x00\x00\x00\x10\x00",
           b"P", b"Q", b"\x82\x01", b"\x8e\xff\xff\xff\xff\xff\xff\xff\x7f", b"I99999999999\n", b"L1L\n"]


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
  kind = rng.integers(4)
  data = bytearray(data)
  if kind == 0:  # byte flips
    for _ in range(rng.integers(1, 9)):
      data[rng.integers(len(data))] = rng.integers(256)
  elif kind == 1:  # truncation
    data = data[:rng.integers(len(data))]
  elif kind == 2:  # inserted opcodes
    for _ in range(rng.integers(1, 4)):
      at = rng.integers(len(data) + 1)
      data[at:at] = OPCODES[rng.integers(len(OPCODES))]
  else:  # crafted globals: a GLOBAL opcode ('c' module \n name \n) names something else
    found = list(re.finditer(rb"c([\w.]+\n\w+)\n", bytes(data)))
    crafted = CRAFTED_GLOBALS[rng.integers(len(CRAFTED_GLOBALS))]
    if found:
      match = found[rng.integers(len(found))]
      data[match.start(1):match.end(1)] = crafted
    else:
      at = rng.integers(len(data) + 1)
      data[at:at] = b"c" + crafted + b"\n"
  return bytes(data)


def _npy_header(descr="|O", shape=()) -> bytes:
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
  return buf.getvalue()


def _boundary_file(rng) -> bytes:
  value = {"boundary": rng.normal(size=(1, 8, 64)).astype(np.float32),
           "meta_data": {"manipulate_layers": [0, 1, 2, 3], "attribute": "age", "accuracy": np.float64(0.93)}}
  buf = io.BytesIO()
  np.save(buf, np.array(value, dtype=object), allow_pickle=True)
  return buf.getvalue()


def _state_dict(rng):
  return {"mapping.dense0.weight": torch.from_numpy(rng.normal(size=(16, 8)).astype(np.float32)),
          "mapping.dense0.bias": torch.from_numpy(rng.normal(size=(16,)).astype(np.float32)),
          "transposed": torch.from_numpy(rng.normal(size=(4, 6)).astype(np.float32)).t(),
          "offset_view": torch.arange(10.0)[3:7], "steps": torch.tensor(7, dtype=torch.int64),
          "half": torch.from_numpy(rng.normal(size=(5,)).astype(np.float16))}


def _pth_members(rng) -> dict:
  buf = io.BytesIO()
  torch.save(_state_dict(rng), buf)
  with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as archive:
    return {n: archive.read(n) for n in archive.namelist()}


def _zip(members: dict) -> bytes:
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
    for name, content in members.items():
      archive.writestr(name, content)
  return buf.getvalue()


def _legacy_pth(rng) -> bytes:
  buf = io.BytesIO()
  torch.save(_state_dict(rng), buf, _use_new_zipfile_serialization=False)
  return buf.getvalue()


def _known_attacks(base_boundary: bytes, members: dict) -> dict:
  """Hand-made files for the holes found by the adversarial pass (issue 16)."""
  pkl = next(n for n in members if n.endswith("data.pkl"))
  raw_object_array = pickle.dumps(np.zeros((4,), np.float64), protocol=2).replace(b"f8", b"O8")
  nested = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."  # 100,000 nested lists
  self_holding = b"\x80\x02]q\x00h\x00a."  # a list that holds itself
  shared = b"\x80\x02]q\x00" + b"".join(b"]q%ch%ch%c\x86" % (i + 1, i, i) for i in range(60)) + b"."
  huge_shape = pickle.dumps(np.zeros((2,), np.float32), protocol=2).replace(b"K\x02\x85", b"J\xff\xff\xff\x7f"
                                                                            b"J\xff\xff\xff\x7f\x86", 1)
  stride0 = members[pkl].replace(b"K\x10K\x08\x86", b"J\x00\x00\x10\x00J\x00\x00\x10\x00\x86", 1)
  stride0 = stride0.replace(b"K\x08K\x01\x86", b"K\x00K\x00\x86", 1)
  memo_bomb = b"\x80\x02]r\xff\xff\xff\xff."
  assert stride0.count(b"\x00\x00\x10\x00") == 2 and b"K\x00K\x00\x86" in stride0 and b"J\xff" in huge_shape
  return {
      "boundary_attack_object_array_from_bytes.npy": _npy_header() + raw_object_array,
      "boundary_attack_deep_nesting.npy": _npy_header() + nested,
      "boundary_attack_self_holding.npy": _npy_header() + self_holding,
      "boundary_attack_shared_references.npy": _npy_header() + shared,
      "boundary_attack_huge_pickled_shape.npy": _npy_header() + huge_shape,
      "boundary_attack_huge_declared_plain_shape.npy": _npy_header("<f4", (2 ** 40, 2 ** 20)) + b"\0" * 64,
      "boundary_attack_memo_index.npy": _npy_header() + memo_bomb,
      "pth_attack_stride0.pth": _zip(dict(members, **{pkl: stride0})),
      "pth_attack_memo_index.pth": _zip(dict(members, **{pkl: memo_bomb})),
      "pth_attack_deep_nesting.pth": _zip(dict(members, **{pkl: nested})),
  }


def test_mutated_boundary_and_pth_files_never_crash_hang_or_allocate(tmp_path):
  rng = np.random.default_rng(SEED)
  cases = tmp_path / "cases"
  cases.mkdir()
  base_boundary = _boundary_file(rng)
  members = _pth_members(rng)
  pkl = next(n for n in members if n.endswith("data.pkl"))
  legacy = _legacy_pth(rng)
  (cases / "boundary_base.npy").write_bytes(base_boundary)
  (cases / "pth_base_zip.pth").write_bytes(_zip(members))
  (cases / "pth_base_legacy.pth").write_bytes(legacy)
  attacks = _known_attacks(base_boundary, members)
  for name, data in attacks.items():
    (cases / name).write_bytes(data)
  header_end = base_boundary.index(b"\n") + 1
  for i in range(CASES_PER_KIND):
    (cases / f"boundary_{i:04d}.npy").write_bytes(
        base_boundary[:header_end] + _mutate(base_boundary[header_end:], rng))
    if i % 4 == 3:  # the whole file, zip structure included
      (cases / f"pth_{i:04d}.pth").write_bytes(_mutate(_zip(members), rng))
    elif i % 4 == 2:
      (cases / f"pth_{i:04d}.pth").write_bytes(_mutate(legacy, rng))
    else:  # the pickle inside an intact zip (CRCs right), where the reader's own checks matter
      (cases / f"pth_{i:04d}.pth").write_bytes(_zip(dict(members, **{pkl: _mutate(members[pkl], rng)})))

  start = time.perf_counter()
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", WORKER, str(cases), str(tmp_path / "progress")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  seconds = time.perf_counter() - start
  in_flight = (tmp_path / "progress").read_text() if (tmp_path / "progress").exists() else "?"
  assert proc.returncode == 0, f"reader process died ({proc.returncode}) on {in_flight}: {proc.stderr[-2000:]}"
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  results = report["results"]
  assert len(results) == 2 * CASES_PER_KIND + 3 + len(attacks)
  bad = {name: r for name, r in results.items() if r not in ("loaded", "error")}
  assert not bad, bad
  assert results["boundary_base.npy"] == "loaded" and results["pth_base_zip.pth"] == "loaded"
  assert results["pth_base_legacy.pth"] == "loaded"
  assert all(results[name] == "error" for name in attacks), {n: results[n] for n in attacks}
  loaded = sum(r == "loaded" for r in results.values())
  print(f"{len(results)} files in {seconds:.1f} s: {loaded} loaded, {len(results) - loaded} clean errors; peak "
        f"RSS {report['peak_rss'] / 2 ** 20:.0f} MiB (address-space limit {report['limit'] / 2 ** 20:.0f} MiB)")
