"""Ahead-of-time compile checks for accelerators this host does not have: memory per chip, FLOPs, a time estimate.

With libtpu installed (`pip install -e '.[tpu]'`), `topology_devices('v5e:16x16')` returns the 256 devices of a v5e
pod slice without any TPU attached. A step jitted with shardings over a Mesh of them and lowered for
ShapeDtypeStructs is compiled by the real TPU compiler (MaxText's train_compile.py does the same), and the
executable's memory_analysis() / cost_analysis() say whether the step fits the chip's HBM and how much work it is.
Nothing runs. libtpu prints warnings about TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES while it starts: harmless
here (there is no TPU to find).

  topology_devices(name)        the JAX devices of a TPU topology ('v5e:4x4', 'v4:4x4x4', 'v5p:2x2x1', 'v6e:4x4')
  compile_and_report(lower, ...) -> CompileReport: per-device memory vs HBM, FLOPs, roofline estimate, collectives
  collective_bytes(hlo_text)    bytes moved by all-reduce / all-gather / reduce-scatter / ... per device and step

All figures are per device (one TPU chip) and per step unless named otherwise; `flops_per_step` is the sum over
all devices.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import time
from typing import Any, Callable, Sequence

import jax

from idinvert_jax import accelerators

TOPOLOGY_EXAMPLES = ("v5e:16x16", "v5e:4x4", "v4:4x4x4", "v4:2x2x1", "v5p:2x2x1", "v6e:4x4")
_MEMORY_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes")


class CompileCheckError(ValueError):
  """A user-fixable problem with a compile check (no libtpu, unknown topology)."""


def topology_devices(name: str) -> list[jax.Device]:
  """The devices of TPU topology `name` (e.g. 'v5e:16x16'), compiled for without a TPU (needs libtpu)."""
  if ":" not in name:
    raise CompileCheckError(f"--topology {name!r} is not a TPU topology; use <version>:<shape> such as "
                            f"{', '.join(TOPOLOGY_EXAMPLES)}")
  if importlib.util.find_spec("libtpu") is None:
    raise CompileCheckError(f"--topology {name} needs libtpu, the TPU compiler: pip install -e '.[tpu]' "
                            f"(jax[tpu]=={jax.__version__}; Linux x86_64)")
  # The lock file libtpu takes guards a real TPU against two processes; compiling for a topology touches none, and
  # several checks (and pytest workers) may run side by side.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    # v4 and v5p chips have two TensorCores that JAX drives as one device ("megacore"), as on the real pods.
    chip_config = "megacore" if name.split(":")[0] in ("v4", "v5p") else "default"
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name,
                                             chip_config_name=chip_config).devices)
  except Exception as e:  # noqa: BLE001 -- libtpu raises several types; re-raised with the fix named.
    raise CompileCheckError(f"--topology {name}: libtpu does not know this topology ({str(e).splitlines()[0][:200]});"
                            f" use e.g. {', '.join(TOPOLOGY_EXAMPLES)}") from e


def devices_per_chip(devices: Sequence[jax.Device]) -> int:
  """JAX devices per physical chip (1 in megacore mode; 2 for a v4 topology made without it)."""
  coords = [tuple(getattr(d, "coords", ()) or ()) for d in devices]
  if not all(coords):
    return 1
  return max(1, len(coords) // len(set(coords)))


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# One HLO instruction per line: `%name = <result shape> <op>(operands), attributes`. A result may be a tuple of
# hundreds of arrays (XLA combines gradient all-reduces) with TPU layouts such as {1,0:T(8,128)}.
_COLLECTIVE_RE = re.compile(r"^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s(" + "|".join(_COLLECTIVES) + r")(-start)?\(",
                            re.MULTILINE)
_SHAPE_RE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\]")


def collectives(hlo_text: str) -> list[tuple[str, list[tuple[str, tuple[int, ...]]]]]:
  """[(op, [(dtype, result shape), ...])] for every collective of a compiled (per-device) HLO module.

  Async '-start' forms of all-gather / collective-permute return (operands, results) tuples; only the results are
  kept.
  """
  found = []
  for shape_text, op, is_async in _COLLECTIVE_RE.findall(hlo_text):
    shapes = [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _SHAPE_RE.findall(shape_text)]
    if is_async and op != "all-reduce" and len(shapes) >= 2:  # (operands, results[, contexts]): keep the results
      shapes = shapes[len(shapes) // 2:] if op == "all-gather" else shapes[1:2]
    found.append((op, shapes))
  return found


def collective_bytes(hlo_text: str) -> dict[str, dict[str, int]]:
  """{op: {'count', 'bytes'}}: the result bytes of the collectives of a compiled (per-device) HLO module, per step
  (ops inside loops would count once; the steps here have none)."""
  totals: dict[str, dict[str, int]] = {}
  for op, shapes in collectives(hlo_text):
    entry = totals.setdefault(op, {"count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += sum(_DTYPE_BYTES[dtype] * math.prod(dims) for dtype, dims in shapes)
  return totals


@dataclasses.dataclass
class CompileReport:
  """What one compile check found; every size per device and per step."""
  topology: str                  # 'v5e:4x4', or 'host:cpu' for the local devices
  devices: int
  device_kind: str
  stage: str                     # 'gan' | 'encoder' | 'invert'
  global_batch: int
  precision: str
  memory: dict                   # memory_analysis() fields, bytes per device
  per_device_bytes: int          # arguments + outputs - aliased + temporaries + code
  hbm_bytes: int | None          # usable HBM of one device (None: unknown, e.g. a CPU host)
  fits: bool
  flops_per_device: float | None     # None when the compiler refused the program
  bytes_accessed_per_device: float | None
  estimated_step_s: float | None  # roofline lower bound from published peaks: an ESTIMATE
  collectives: dict
  compile_s: float
  per_chip: int = 1              # devices per chip (v4: 2)
  error: str = ""                # the compiler's message when it refused the program (out of memory)

  @property
  def flops_per_step(self) -> float | None:
    return None if self.flops_per_device is None else self.flops_per_device * self.devices

  @property
  def collective_bytes_per_device(self) -> int:
    return int(sum(v["bytes"] for v in self.collectives.values()))

  def summary(self) -> dict[str, Any]:
    """The one-line JSON record (the CLIs print it last)."""
    return {"topology": self.topology, "devices": self.devices, "stage": self.stage,
            "per_device_bytes": self.per_device_bytes, "hbm_bytes": self.hbm_bytes, "fits": self.fits,
            "flops_per_step": self.flops_per_step, "estimated_step_s": self.estimated_step_s,
            "device_kind": self.device_kind, "global_batch": self.global_batch, "precision": self.precision,
            "flops_per_device": self.flops_per_device, "collective_bytes_per_device": self.collective_bytes_per_device,
            "compile_s": round(self.compile_s, 1)}

  def json_line(self) -> str:
    return json.dumps(self.summary())

  def lines(self) -> list[str]:
    """Human-readable report (before the JSON line)."""
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    m = self.memory
    out = [f"{self.stage} step compiled for {self.topology} ({self.devices} x {self.device_kind}"
           f"{', 2 devices per chip (TensorCores)' if self.per_chip > 1 else ''}), global batch {self.global_batch} "
           f"({self.global_batch / self.devices:g} per device), {self.precision}, compile {self.compile_s:.0f} s"]
    if self.error:
      out.append(f"  the compiler refused it: {self.error}")
    else:
      out.append(f"  memory per device: arguments {gib(m.get('argument_size_in_bytes', 0))}, outputs "
                 f"{gib(m.get('output_size_in_bytes', 0))} (aliased with arguments "
                 f"{gib(m.get('alias_size_in_bytes', 0))}), temporaries {gib(m.get('temp_size_in_bytes', 0))}, code "
                 f"{gib(m.get('generated_code_size_in_bytes', 0))}")
    hbm = f" of {gib(self.hbm_bytes)} HBM" if self.hbm_bytes else " (device memory unknown)"
    out.append(f"  total {gib(self.per_device_bytes)} per device{hbm}: {'fits' if self.fits else 'DOES NOT FIT'}")
    if not self.error:
      out.append(f"  FLOPs per step: {self.flops_per_device / 1e12:.3f} TFLOP per device, "
                 f"{self.flops_per_step / 1e12:.2f} TFLOP in all; HBM traffic {gib(self.bytes_accessed_per_device)} "
                 "per device (XLA cost analysis)")
      coll = ", ".join(f"{op} x{v['count']} {v['bytes'] / 2**20:.1f} MiB" for op, v in sorted(self.collectives.items()))
      out.append(f"  collectives per device and step: {coll or 'none'}")
    if self.estimated_step_s is not None:
      out.append(f"  ESTIMATED step time >= {self.estimated_step_s * 1e3:.1f} ms (roofline lower bound from the chip's "
                 f"published peak FLOP/s and HBM bandwidth, idinvert_jax/accelerators.py; not a measurement)")
    return out


def _memory(compiled) -> dict[str, int]:
  memory = compiled.memory_analysis()
  return {name: int(getattr(memory, name)) for name in _MEMORY_FIELDS if getattr(memory, name, None) is not None}


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return dict(cost or {})


_OOM_RE = re.compile(r"(?:Used|required for HLO temporaries \()\s*([\d.]+)([KMGT]?)(?:i?B)?\)?\s*(?:of|exceeds "
                     r"available HBM \()\s*([\d.]+)([KMGT]?)")


def _parse_oom(message: str) -> tuple[int, int] | None:
  """(needed, available) bytes from the TPU compiler's out-of-memory message, if it states them."""
  match = _OOM_RE.search(message)
  if not match:
    return None
  scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
  return (int(float(match.group(1)) * scale[match.group(2)]), int(float(match.group(3)) * scale[match.group(4)]))


def compile_and_report(lower: Callable[[], Any], devices: Sequence[jax.Device], *, topology: str, stage: str,
                       global_batch: int, precision: str) -> CompileReport:
  """Compiles `lower()` (a jax.stages.Lowered for a mesh over `devices`) and reports what it needs per device.

  A program the TPU compiler refuses for lack of HBM gives a report with fits=False and the compiler's message.
  """
  kind = devices[0].device_kind
  chip = accelerators.lookup(kind)
  per_chip = devices_per_chip(devices)
  hbm = chip.hbm_bytes // per_chip if chip else _device_memory_limit(devices[0])
  start = time.perf_counter()
  lowered = lower()
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001 -- jax raises JaxRuntimeError; only out-of-memory is a result, not a bug.
    message = str(e)
    if "RESOURCE_EXHAUSTED" not in message and "out of memory" not in message.lower():
      raise
    parsed = _parse_oom(message)
    needed, available = parsed if parsed else (0, hbm or 0)
    return CompileReport(topology=topology, devices=len(devices), device_kind=kind, stage=stage,
                         global_batch=global_batch, precision=precision, memory={}, per_device_bytes=needed,
                         hbm_bytes=available or hbm, fits=False, flops_per_device=None,
                         bytes_accessed_per_device=None, estimated_step_s=None, collectives={},
                         compile_s=time.perf_counter() - start, per_chip=per_chip,
                         error=message.strip().splitlines()[0][:300])
  compile_s = time.perf_counter() - start
  memory = _memory(compiled)
  per_device = (memory.get("argument_size_in_bytes", 0) + memory.get("output_size_in_bytes", 0)
                - memory.get("alias_size_in_bytes", 0) + memory.get("temp_size_in_bytes", 0)
                + memory.get("generated_code_size_in_bytes", 0))
  cost = _cost(compiled)
  flops, traffic = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  estimate = (accelerators.roofline_seconds(chip, flops, traffic, precision, per_chip) if chip and flops
              else None)
  return CompileReport(topology=topology, devices=len(devices), device_kind=kind, stage=stage,
                       global_batch=global_batch, precision=precision, memory=memory, per_device_bytes=per_device,
                       hbm_bytes=hbm, fits=hbm is None or per_device <= hbm, flops_per_device=flops,
                       bytes_accessed_per_device=traffic, estimated_step_s=estimate,
                       collectives=collective_bytes(compiled.as_text() or ""), compile_s=compile_s,
                       per_chip=per_chip)


def _device_memory_limit(device: jax.Device) -> int | None:
  """A local accelerator's memory limit from memory_stats() (GPUs report it; CPUs and topologies do not)."""
  try:
    stats = device.memory_stats() or {}
  except Exception:  # noqa: BLE001 -- not every backend implements it.
    return None
  limit = stats.get("bytes_limit")
  return int(limit) if limit else None


@dataclasses.dataclass
class BatchSearch:
  """The largest batch per device that fits, found by compiling (`largest_batch_per_device`)."""
  largest: int | None            # None: unknown (no memory limit) or not even the smallest batch fits
  exact: bool                    # True when `largest` fits and `largest + 1` was compiled and does not
  reports: dict                  # batch per device -> CompileReport of every compile made

  def line(self) -> str:
    tried = ", ".join(f"{b}: {r.per_device_bytes / 2**30:.2f} GiB {'fits' if r.fits else 'does not fit'}"
                      for b, r in sorted(self.reports.items()))
    if self.largest is None:
      why = ("the devices report no memory limit" if all(r.hbm_bytes is None for r in self.reports.values())
             else "not even the smallest batch compiled fits")
      return f"largest batch per device that fits: unknown, {why} ({tried})"
    bound = "" if self.exact else "at least "
    return f"largest batch per device that fits: {bound}{self.largest} (compiled {len(self.reports)}x: {tried})"


def largest_batch_per_device(report_at: Callable[[int], CompileReport], first: CompileReport,
                             max_compiles: int = 4) -> BatchSearch:
  """Searches the largest batch per device whose step fits the device's memory, by compiling.

  `report_at(b)` compiles for a batch of b per device; `first` is a report made already. Memory grows about
  linearly with the batch (fixed: weights, optimiser state, code; per image: activations): the first probe
  extrapolates from `first`, later ones interpolate between the largest batch that fits and the smallest that
  does not (the midpoint when the last two probes fell on the same side), until the two are neighbours or
  `max_compiles` more compiles are made (a program that does not fit is refused within seconds).
  """
  per_device = lambda r: r.global_batch // r.devices
  reports = {per_device(first): first}
  if first.hbm_bytes is None:
    return BatchSearch(None, False, reports)
  hbm, sides = first.hbm_bytes, []
  for _ in range(max_compiles):
    fits = [b for b, r in reports.items() if r.fits]
    over = [b for b, r in reports.items() if not r.fits]
    low, high = max(fits, default=0), min(over, default=None)
    if high is not None and high <= low + 1:
      break
    if high is None:  # extrapolate: the arguments and code are fixed, the rest grows with the batch
      r = reports[low]
      fixed = r.memory.get("argument_size_in_bytes", 0) + r.memory.get("generated_code_size_in_bytes", 0)
      per_image = max(r.per_device_bytes - fixed, 1) / low
      probe = max(int((hbm - fixed) // per_image), low + 1)
    elif len(sides) >= 2 and sides[-1] == sides[-2] or low == 0:
      probe = (low + high) // 2 if low else max(high // 2, 1)
    else:
      m_low, m_high = reports[low].per_device_bytes, reports[high].per_device_bytes
      slope = (m_high - m_low) / (high - low)
      probe = low + int((hbm - m_low) // slope) if slope > 0 else (low + high) // 2
    probe = min(max(probe, low + 1), high - 1) if high is not None else probe
    reports[probe] = report_at(probe)
    sides.append(reports[probe].fits)
  fits = [b for b, r in reports.items() if r.fits]
  over = [b for b, r in reports.items() if not r.fits]
  if not fits:
    return BatchSearch(None, False, reports)
  largest = max(fits)
  return BatchSearch(largest, bool(over) and min(over) == largest + 1, reports)


def does_not_fit_message(report: CompileReport, what: str) -> str:
  """The one-line error for a step that does not fit, naming the fixes."""
  return (f"{what}: the {report.stage} step needs {report.per_device_bytes / 2**30:.2f} GiB per device but "
          f"{report.device_kind} has {(report.hbm_bytes or 0) / 2**30:.2f} GiB; use a smaller batch per chip "
          f"(now {report.global_batch / report.devices:g}), bfloat16 compute (precision=bfloat16), or shard "
          "parameters and optimiser state over the data axis (FSDP: config.mesh.param_rules, see "
          "configs/ffhq256_pod.py)")
