"""Runs every bench/bench_*.py (with --quick unless --full) and prints one summary table.

  python bench/run_all.py              # all benchmarks, quick settings
  python bench/run_all.py --only inversion --full --timeout 1800

Contract for benchmark scripts: each accepts --quick, prints its own human-readable table, and prints as its LAST
line `BENCH_JSON {json}` (one JSON object; scalar top-level values are shown in the summary). A script that
exits non-zero, times out or prints no BENCH_JSON line is reported as such, never silently dropped.
Writes bench/results/latest.md (atomically): machine, summary table, each script's output and JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from idinvert_jax import files  # noqa: E402
from idinvert_jax.machine import cpu_model  # noqa: E402

JSON_PREFIX = "BENCH_JSON "
MAX_SUMMARY_VALUES = 6
OUTPUT_TAIL_LINES = 40


def discover(only: list[str] | None = None) -> list[Path]:
  """bench/bench_*.py, sorted; `only` keeps scripts whose name contains one of the given strings."""
  scripts = sorted(BENCH_DIR.glob("bench_*.py"))
  if only:
    scripts = [s for s in scripts if any(o in s.stem for o in only)]
  return scripts


def parse_bench_json(stdout: str) -> dict | None:
  """The JSON object of the last `BENCH_JSON {...}` line, or None when absent or malformed."""
  for line in reversed(stdout.strip().splitlines()):
    if line.startswith(JSON_PREFIX):
      try:
        value = json.loads(line[len(JSON_PREFIX):])
      except json.JSONDecodeError:
        return None
      return value if isinstance(value, dict) else None
  return None


def run_script(script: Path, quick: bool, timeout: float) -> dict:
  """Runs one benchmark; returns its name, status, seconds, output and parsed JSON."""
  command = [sys.executable, str(script)] + (["--quick"] if quick else [])
  start = time.perf_counter()
  # Own session, so a timeout stops the benchmark's children too (they would otherwise hold the pipes open).
  proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=BENCH_DIR.parent, start_new_session=True)
  try:
    stdout, stderr = proc.communicate(timeout=timeout)
    status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate()
    status = f"timed out after {timeout:g} s"
  except BaseException:  # Ctrl-C / SIGTERM of the runner: do not leave the benchmark running.
    os.killpg(proc.pid, signal.SIGKILL)
    raise
  seconds = time.perf_counter() - start
  result = parse_bench_json(stdout)
  if status == "ok" and result is None:
    status = "ok, but no BENCH_JSON line"
  return {"name": script.stem, "command": " ".join(command[1:]), "status": status, "seconds": seconds,
          "stdout": stdout, "stderr": stderr, "json": result}


def _scalars(result: dict | None) -> str:
  """A few top-level scalar values of a BENCH_JSON object, for the summary line."""
  if not result:
    return ""
  items = [(k, v) for k, v in result.items() if isinstance(v, (int, float, str, bool)) and not isinstance(v, dict)]
  shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:MAX_SUMMARY_VALUES]]
  more = len(items) - len(shown)
  return ", ".join(shown) + (f", ... (+{more})" if more > 0 else "")


def machine() -> str:
  return f"{cpu_model()}, {os.cpu_count()} cores, {platform.platform()}, python {platform.python_version()}"


def summary_table(results: list[dict]) -> list[str]:
  header = ["benchmark", "status", "seconds", "key results (BENCH_JSON)"]
  rows = [[r["name"], r["status"], f"{r['seconds']:.1f}", _scalars(r["json"])] for r in results]
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
      "| " + " | ".join(cells) + " |" for cells in rows]


def write_markdown(path: Path, results: list[dict], quick: bool) -> Path:
  lines = ["# Benchmarks", "", f"Run: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
           f"{'--quick' if quick else 'full settings'}", f"Machine: {machine()}", ""]
  lines += summary_table(results) + [""]
  for r in results:
    tail = r["stdout"].strip().splitlines()[-OUTPUT_TAIL_LINES:]
    lines += [f"## {r['name']}", "", f"`python {r['command']}`: {r['status']} in {r['seconds']:.1f} s", "",
              "```", *tail, "```", ""]
    if r["status"] != "ok" and r["stderr"].strip():
      lines += ["stderr (last lines):", "", "```", *r["stderr"].strip().splitlines()[-15:], "```", ""]
    if r["json"] is not None:
      lines += ["```json", json.dumps(r["json"], indent=2, sort_keys=True), "```", ""]
  return files.atomic_write_text(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--full", action="store_true", help="run without --quick (real sizes; slow)")
  parser.add_argument("--only", nargs="*", help="run only benchmarks whose name contains one of these")
  parser.add_argument("--timeout", type=float, default=900.0, help="seconds per benchmark before it is stopped")
  parser.add_argument("--output", default=str(BENCH_DIR / "results" / "latest.md"), help="markdown summary path")
  args = parser.parse_args(argv)
  scripts = discover(args.only)
  if not scripts:
    print(f"no benchmarks found in {BENCH_DIR} (bench_*.py){' matching ' + str(args.only) if args.only else ''}; "
          "add one or fix --only", file=sys.stderr)
    return 2
  quick = not args.full
  results = []
  for script in scripts:
    print(f"running {script.name}{' --quick' if quick else ''} ...", flush=True)
    result = run_script(script, quick, args.timeout)
    print(f"  {result['status']} in {result['seconds']:.1f} s", flush=True)
    results.append(result)
  print()
  print("\n".join(summary_table(results)))
  path = write_markdown(Path(args.output), results, quick)
  print(f"\nwrote {path}")
  return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
