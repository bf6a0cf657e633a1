"""The encoder study (issue: a domain-guided encoder that works on real faces within a CPU budget).

Trains one encoder per variant on the SAME frozen generator (a finished stage-1 workdir), evaluates each on the
same held-out images, and writes a table, a JSON file and a plot. Each row changes one factor against the
reference recipe; the `const_*` rows are one constant-rate run evaluated at 2.5k, 5k, 10k and 20k steps
(the training-length curve), the `best_*` rows combine factors, each length its own run.

  python train.py --config configs/celeba64.py --workdir runs/celeba64 --stage gan
  python -m idinvert_jax.data export --path ../shared/data/celeba_crops64_train.npz --subset 4923: \
      --output runs/celeba64_heldout
  python bench/encoder_study.py --gan runs/celeba64 --images runs/celeba64_heldout --workdir runs/encoder_study

Every step resumes: a killed study continues where it stopped (training from its last checkpoint, evaluation
skipped where results.json exists). CPU minutes are the user + system time of the training processes (both
cores count), accumulated over resumes; the machine line names the CPU.

Rows accumulate over sessions: OUTPUT.json keeps every row with the date it was measured and a fingerprint of
the generator (sha256 of its parameters); a later run on the same generator (the GAN retrained with the same
command and seed on the same machine reproduces it) adds or replaces its variants and keeps the others, a run on
another generator starts a new table. `--render_only` rewrites OUTPUT.md / .png from OUTPUT.json.

Per row: encoder-only PSNR / SSIM, in-domain inversion (100 steps) PSNR at lambda_enc 0 and 2, interpolation
mid-point SWD of the lambda_enc 2 codes, and the training CPU minutes. The baseline row is plain optimisation
(100 steps from the average w, the paper's comparison) on the same generator.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from idinvert_jax.machine import cpu_model  # noqa: E402  pylint: disable=wrong-import-position

# Every variant sets every factor of the study explicitly, so a row does not change when the config's recipe does.
REFERENCE = {"train.encoder.learning_rate": 1e-4, "train.encoder.lr_schedule": "staircase",
             "train.encoder.warmup_steps": 0, "train.encoder.lambda_adv": 0.08, "train.encoder.lambda_dfeat": 0.0,
             "train.encoder.lambda_code": 0.0, "train.encoder.code_batch_size": 0,
             "train.encoder.train_bn_scale": False,
             "model.encoder.normalization": "batch", "model.encoder.channels_base": 16,
             "model.encoder.channels_max": 128, "train.encoder.num_steps": 2500}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row. Rows with the same `run` share one training run that continues from the previous row's steps
  (a constant learning rate makes that the same as separate runs of each length); each is evaluated on a copy
  of the export at its length."""
  name: str
  what: str
  changes: tuple = ()  # (key, value) pairs changed against REFERENCE
  run: str = ""        # shared training folder ('' = its own, named after the variant)

  @property
  def folder(self) -> str:
    return self.run or self.name

  def settings(self) -> dict:
    return dict(REFERENCE, **dict(self.changes))


CURRENT = (("train.encoder.learning_rate", 1e-3),)
CONSTANT = CURRENT + (("train.encoder.lr_schedule", "constant"),)
BEST = CURRENT + (("train.encoder.lr_schedule", "cosine"), ("train.encoder.warmup_steps", 250),
                  ("train.encoder.lambda_adv", 0.02), ("train.encoder.lambda_dfeat", 1.0))

VARIANTS = [
    Variant("official", "official recipe: lr 1e-4, x0.8 every quarter, lambda_adv 0.08, BatchNorm, 16..128 ch"),
    Variant("lr1e-3", "lr 1e-3 (configs/celeba64.py until this study)", CURRENT),
    Variant("bn_scale", "lr 1e-3, BatchNorm scales trained (as the official TF code)", CURRENT + (
        ("train.encoder.train_bn_scale", True),)),
    Variant("cosine", "lr 1e-3, 250 warm-up steps + cosine decay", CURRENT + (
        ("train.encoder.lr_schedule", "cosine"), ("train.encoder.warmup_steps", 250))),
    Variant("adv0.02", "lr 1e-3, lambda_adv 0.02 (1/4 of official)", CURRENT + (("train.encoder.lambda_adv", 0.02),)),
    Variant("adv0", "lr 1e-3, lambda_adv 0 (pixel loss only)", CURRENT + (("train.encoder.lambda_adv", 0.0),)),
    Variant("no_bn", "lr 1e-3, no BatchNorm (biases instead)", CURRENT + (("model.encoder.normalization", "none"),)),
    Variant("wide", "lr 1e-3, encoder 32..256 channels (2x)", CURRENT + (
        ("model.encoder.channels_base", 32), ("model.encoder.channels_max", 256))),
    Variant("dfeat", "lr 1e-3, + D-feature perceptual term (lambda_dfeat 1)", CURRENT + (
        ("train.encoder.lambda_dfeat", 1.0),)),
    Variant("code", "lr 1e-3, + code term on G's samples: 0.1 mean((E(G(w)) - w)^2), 16 codes per step",
            CURRENT + (("train.encoder.lambda_code", 0.1),)),
    Variant("no_bn_const", "no BatchNorm + lr 1e-3 constant (the two best single changes)", CONSTANT + (
        ("model.encoder.normalization", "none"),)),
    # Training-length curve: one constant-lr run, evaluated at each length (so 20k costs 20k steps, not 37.5k).
    Variant("const_2.5k", "lr 1e-3 constant (no decay); 2,500 steps of one long run", CONSTANT, run="const"),
    Variant("const_5k", "same run at 5,000 steps", CONSTANT + (("train.encoder.num_steps", 5000),), run="const"),
    Variant("const_10k", "same run at 10,000 steps", CONSTANT + (("train.encoder.num_steps", 10000),), run="const"),
    Variant("const_20k", "same run at 20,000 steps", CONSTANT + (("train.encoder.num_steps", 20000),), run="const"),
    Variant("best_2.5k", "combined: cosine, lambda_adv 0.02, lambda_dfeat 1; 2,500 steps", BEST),
    Variant("best_10k", "combined, 10,000 steps", BEST + (("train.encoder.num_steps", 10000),)),
    Variant("best_20k", "combined, 20,000 steps", BEST + (("train.encoder.num_steps", 20000),)),
]


def config_flags(settings: dict) -> list[str]:
  return [f"--config.{key}={value}" for key, value in settings.items()]


def process_cpu_seconds(pid: int) -> float:
  """user + system CPU seconds of a running process and its waited-for children (Linux /proc; 0 elsewhere)."""
  try:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  except OSError:
    return 0.0
  utime, stime, cutime, cstime = (int(v) for v in fields[11:15])  # stat fields 14-17
  return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def run_timed(cmd: list[str], log: Path, progress=None, poll_seconds: float = 30.0) -> float:
  """Runs cmd (output appended to log); returns the CPU seconds (user + system) it used. While it runs,
  progress(cpu_seconds_so_far) is called every poll_seconds, so a driver killed mid-run leaves its count behind."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(log, "a") as f:
    f.write(f"\n$ {' '.join(cmd)}\n")
    f.flush()
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    while True:
      try:
        returncode = child.wait(timeout=poll_seconds)
        break
      except subprocess.TimeoutExpired:
        if progress is not None:
          progress(process_cpu_seconds(child.pid))
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if returncode:
    raise SystemExit(f"encoder_study: {cmd[1]} failed (exit {returncode}); see {log}")
  return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def carry_unfinished(record: dict) -> dict:
  """Counts the CPU time of a training run whose driver was killed (last progress reading) into the record."""
  unfinished = record.pop("cpu_seconds_unfinished", 0.0)
  if unfinished:
    record["cpu_seconds"] += unfinished
    note = ("training CPU time partly from the last reading before a driver was stopped "
            "(up to 30 s of a killed run uncounted)")
    record["cpu_note"] = "; ".join(filter(None, (record.get("cpu_note"), note)))
  return record


def read_json(path: Path, default):
  return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, value) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
  os.replace(tmp, path)


def trained_steps(workdir: Path) -> int:
  info = read_json(workdir / "export" / "training.json", {})
  return int(((info.get("models") or {}).get("encoder") or {}).get("step", 0))


def train_variant(variant: Variant, gan: Path, workdir: Path, config: str, max_steps: int = 0) -> tuple[dict, Path]:
  """Trains (or resumes) the variant's run up to its steps; returns its record and the checkpoint to evaluate."""
  record_path = workdir / "study.json"
  record = carry_unfinished(read_json(record_path, {"cpu_seconds": 0.0, "wall_seconds": 0.0}))
  settings = variant.settings()
  if max_steps:
    scale = max_steps / REFERENCE["train.encoder.num_steps"]
    settings["train.encoder.num_steps"] = max(2, int(settings["train.encoder.num_steps"] * scale))
    settings["train.encoder.warmup_steps"] = int(settings["train.encoder.warmup_steps"] * scale)
  steps = int(settings["train.encoder.num_steps"])
  snapshot = workdir / f"export_{steps}"
  if variant.run and snapshot.is_dir():
    return read_json(snapshot / "study.json", record), snapshot
  if trained_steps(workdir) > steps:
    raise SystemExit(f"encoder_study: {workdir} is trained past {steps} steps but has no {snapshot.name}; "
                     f"remove {workdir} to rerun {variant.name}")
  if trained_steps(workdir) < steps:
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    cpu = run_timed([sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}", "--stage=encoder",
                     f"--config.train.encoder.generator_checkpoint={gan.resolve()}",
                     f"--config.train.encoder.sample_every={steps}", *config_flags(settings)],
                    workdir / "study.log",
                    progress=lambda seconds: write_json(record_path, dict(record, cpu_seconds_unfinished=seconds)))
    record["cpu_seconds"] += cpu
    record["wall_seconds"] += time.time() - start
    record.update(variant=variant.name, what=variant.what, settings=settings)
    write_json(record_path, record)
  if not variant.run:
    return record, workdir
  # A shared run goes on past this row: keep this length's export (and its CPU time so far) for evaluation.
  tmp = workdir / f"{snapshot.name}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(workdir / "export", tmp)
  write_json(tmp / "study.json", dict(record, variant=variant.name, what=variant.what, settings=settings))
  os.replace(tmp, snapshot)
  return read_json(snapshot / "study.json", record), snapshot


def evaluate(checkpoint: Path, images: str, output: Path, methods: str, extra: list[str], log: Path) -> list[dict]:
  if not (output / "results.json").exists():
    run_timed([sys.executable, "evaluate.py", f"--checkpoint={checkpoint}", f"--images={images}",
               f"--output={output}", f"--methods={methods}", "--noprogress", *extra], log)
  return json.loads((output / "results.json").read_text())["rows"]


def generator_fingerprint(gan: Path) -> str:
  """sha256 (16 hex digits) of the generator's variables: rows of two sessions belong to one study only if the
  encoders were trained on the same generator."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from idinvert_jax import export  # pylint: disable=import-outside-toplevel
  leaves = jax.tree_util.tree_flatten_with_path(export.load_models(gan, names=["generator"]).generator_vars)[0]
  digest = hashlib.sha256()
  for key, leaf in sorted((jax.tree_util.keystr(path), leaf) for path, leaf in leaves):
    digest.update(key.encode())
    digest.update(np.ascontiguousarray(leaf, dtype=np.float32).tobytes())
  return digest.hexdigest()[:16]


def merge_rows(previous: dict, table: list[dict], fingerprint: str, baseline: dict) -> list[dict]:
  """This run's rows plus the rows of earlier runs (OUTPUT.json) on the same generator; this run's win.

  Rows stored before fingerprints were recorded (fingerprint null) count as the same generator when the baseline
  (optimisation on the same images) reproduces to 0.01 dB."""
  stored = previous.get("generator_fingerprint")
  same = stored == fingerprint or (
      stored is None and "baseline" in previous and abs(previous["baseline"]["psnr"] - baseline["psnr"]) < 0.01)
  if previous.get("rows") and not same:
    print(f"encoder_study: the stored rows were measured on another generator ({stored}, this one {fingerprint}); "
          "starting a new table", flush=True)
  fresh = {r["variant"] for r in table}
  rows = [r for r in previous.get("rows", []) if same and r["variant"] not in fresh] + table
  order = {v.name: i for i, v in enumerate(VARIANTS)}
  return sorted(rows, key=lambda r: order.get(r["variant"], len(order)))


def reproducing_command(argv: list[str], variants: list[str]) -> str:
  """This run's command line with --variants replaced by every row of the merged table."""
  flags, skip = [], False
  for arg in argv:
    if skip or arg.startswith("--variants="):
      skip = False
      continue
    if arg == "--variants":
      skip = True
      continue
    flags.append(arg)
  return " ".join(["python bench/encoder_study.py", *flags, "--variants", ",".join(variants)])


def row_of(rows: list[dict], run: str) -> dict:
  return next(r for r in rows if r["run"] == run)


def summarise(variant: Variant, record: dict, rows: list[dict], evaluated: Path) -> dict:
  """The study's row of one variant; `measured` is the day its evaluation ran (results.json's mtime: a rerun of the
  driver reuses an earlier day's evaluation) and `cpu` the machine's CPU."""
  enc, lam0, lam2 = row_of(rows, "encoder"), row_of(rows, "indomain_lam0"), row_of(rows, "indomain_lam2")
  measured = time.strftime("%Y-%m-%d", time.localtime((evaluated / "results.json").stat().st_mtime))
  return {"variant": variant.name, "what": variant.what, "steps": int(record["settings"]["train.encoder.num_steps"]),
          "encoder_psnr": enc["psnr"], "encoder_ssim": enc["ssim"], "indomain0_psnr": lam0["psnr"],
          "indomain2_psnr": lam2["psnr"], "indomain2_ssim": lam2["ssim"], "encoder_swd_interp": enc["swd_interp"],
          "indomain2_swd_interp": lam2["swd_interp"], "cpu_minutes": record["cpu_seconds"] / 60,
          "wall_minutes": record["wall_seconds"] / 60, "measured": measured, "cpu": cpu_model(),
          **({"cpu_note": record["cpu_note"]} if record.get("cpu_note") else {})}


def markdown(table: list[dict], baseline: dict, machine_line: str, num_images: int, command: str) -> str:
  head = ("| variant | what changes | steps | encoder PSNR / SSIM | in-domain lam 0 PSNR | in-domain lam 2 PSNR "
          "| interp. SWD (lam 2) | training CPU min | measured |")
  lines = [f"# Encoder study: {num_images} held-out images", "", f"Command: `{command}`", "", machine_line, "",
           f"Baseline, same generator: optimize 100 steps PSNR {baseline['psnr']:.2f} dB, SSIM "
           f"{baseline['ssim']:.3f}, interpolation SWD {baseline['swd_interp']:.1f}.", "", head,
           "|" + "---|" * 9]
  for r in table:
    lines.append(f"| {r['variant']} | {r['what']} | {r['steps']} | {r['encoder_psnr']:.2f} / "
                 f"{r['encoder_ssim']:.3f} | {r['indomain0_psnr']:.2f} | {r['indomain2_psnr']:.2f} | "
                 f"{r['indomain2_swd_interp']:.1f} | {r['cpu_minutes']:.0f}{' (est.)' if r.get('cpu_note') else ''} | "
                 f"{', '.join(x for x in (r.get('measured'), r.get('cpu')) if x)} |")
  notes = [f"- {r['variant']}: {r['cpu_note']}" for r in table if r.get("cpu_note")]
  return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def length_fit(curve: list[dict]) -> tuple[float, float] | None:
  """Least-squares line of encoder PSNR against log2(CPU minutes) over a length curve (None below 3 points)."""
  points = [(math.log2(r["cpu_minutes"]), r["encoder_psnr"]) for r in curve if r.get("cpu_minutes")]
  if len(points) < 3:
    return None
  slope, intercept = np.polyfit(*zip(*points), deg=1)
  return float(slope), float(intercept)


def plot(table: list[dict], baseline: dict, path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
  names = [r["variant"] for r in table]
  xs = range(len(table))
  left.bar([x - 0.2 for x in xs], [r["encoder_psnr"] for r in table], 0.4, label="encoder alone")
  left.bar([x + 0.2 for x in xs], [r["indomain2_psnr"] for r in table], 0.4, label="in-domain, lambda_enc 2")
  left.axhline(baseline["psnr"], color="k", ls="--", lw=1, label="optimize 100 steps")
  left.axhline(21.0, color="r", ls=":", lw=1, label="encoder target 21 dB")
  left.axhline(baseline["psnr"] + 1, color="tab:orange", ls=":", lw=1, label="in-domain target (optimize + 1 dB)")
  for x, r in zip(xs, table):  # Interpolation realism beside PSNR: a row can buy pixels with blur.
    left.annotate(f"SWD\n{r['indomain2_swd_interp']:.0f}", (x + 0.2, r["indomain2_psnr"]), fontsize=6,
                  ha="center", textcoords="offset points", xytext=(0, 2))
  left.set_title(f"per row (SWD: interpolation mid-points at lambda_enc 2; optimize 100: {baseline['swd_interp']:.0f})",
                 fontsize=9)
  left.set_xticks(list(xs), names, rotation=40, ha="right")
  lo = min(min(r["encoder_psnr"] for r in table), baseline["psnr"]) - 1
  left.set_ylim(lo, max(max(r["indomain0_psnr"] for r in table), baseline["psnr"]) + 1)
  left.set_ylabel("PSNR (dB), held-out images")
  left.legend(fontsize=8)
  curves = {family: sorted((r for r in table if r["variant"].startswith(family + "_")), key=lambda r: r["steps"])
            for family in ("const", "best")}
  curves = {family: rows for family, rows in curves.items() if len(rows) > 1}
  if curves:
    for family, curve in curves.items():
      for key, label, marker in (("encoder_psnr", "encoder alone", "o-"),
                                 ("indomain2_psnr", "in-domain, lambda_enc 2", "s--")):
        right.plot([r["cpu_minutes"] for r in curve], [r[key] for r in curve], marker, label=f"{family}: {label}")
      for r in curve:
        right.annotate(f"{r['steps']} steps", (r["cpu_minutes"], r["encoder_psnr"]), fontsize=8,
                       textcoords="offset points", xytext=(4, -10))
      fit = length_fit(curve)
      if fit is not None:  # Where the measured trend would meet the encoder target: the "curve that says why not".
        slope, intercept = fit
        minutes_at_target = 2 ** ((21.0 - intercept) / slope) if slope > 0 else None
        last = max(r["cpu_minutes"] for r in curve)
        end = min(minutes_at_target, last * 2 ** 8) if minutes_at_target and minutes_at_target > last else last * 4
        grid = [last * (end / last) ** (i / 20) for i in range(21)]
        right.plot(grid, [slope * math.log2(m) + intercept for m in grid], ":", color="tab:blue",
                   label=f"{family}: encoder trend {slope:+.2f} dB/doubling (extrapolated)")
    right.axhline(baseline["psnr"], color="k", ls="--", lw=1, label="optimize 100 steps")
    right.axhline(21.0, color="r", ls=":", lw=1, label="encoder target 21 dB")
    right.axhline(baseline["psnr"] + 1, color="tab:orange", ls=":", lw=1, label="in-domain target (optimize + 1 dB)")
    right.set_xscale("log", base=2)
    right.set_xlabel("encoder training CPU minutes (2 cores, log scale)")
    right.set_ylabel("PSNR (dB)")
    right.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda m, _: f"{m:g}"))
    right.set_title("training length (one run per curve, evaluated at each length)")
    low, _ = right.get_ylim()
    right.set_ylim(low, baseline["psnr"] + 4.5)  # Room above the targets for the legend.
    right.legend(fontsize=7, loc="upper right")
  else:  # No length curve yet: interpolation realism per row (lower is better).
    right.bar(list(xs), [r["indomain2_swd_interp"] for r in table], 0.5, color="tab:orange",
              label="in-domain codes, lambda_enc 2")
    right.axhline(baseline["swd_interp"], color="k", ls="--", lw=1, label="optimize 100 steps")
    right.set_xticks(list(xs), names, rotation=40, ha="right")
    right.set_ylabel("interpolation mid-point SWD (lower: more realistic)")
    right.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gan", help="finished stage-1 workdir (or checkpoint) with the generator")
  parser.add_argument("--images", help="held-out image folder (evaluate.py --images)")
  parser.add_argument("--workdir", help="one sub-folder per variant: training + evaluation")
  parser.add_argument("--config", default="configs/celeba64.py", help="base experiment config")
  parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS),
                      help="comma-separated subset of: " + ", ".join(v.name for v in VARIANTS))
  parser.add_argument("--num_images", type=int, default=100, help="held-out images evaluated (first N)")
  parser.add_argument("--max_steps", type=int, default=0,
                      help="cap every variant's training steps (a smoke test of the study; numbers mean nothing)")
  parser.add_argument("--output", default="bench/results/encoder_study",
                      help="writes OUTPUT.md, OUTPUT.json and OUTPUT.png (rows of earlier runs on the same "
                      "generator are kept)")
  parser.add_argument("--render_only", action="store_true",
                      help="only rewrite OUTPUT.md and OUTPUT.png from OUTPUT.json (no training, no evaluation)")
  args = parser.parse_args()
  output = Path(args.output)
  if args.render_only:
    if not output.with_suffix(".json").exists():
      parser.error(f"{output}.json does not exist: run the study first (without --render_only)")
    render(output, read_json(output.with_suffix(".json"), {}))
    return
  if not (args.gan and args.images and args.workdir):
    parser.error("--gan, --images and --workdir are required (except with --render_only)")
  known = {v.name: v for v in VARIANTS}
  chosen = [known[n] for n in args.variants.split(",") if n]  # KeyError names an unknown variant
  gan, workdir = Path(args.gan), Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  n = ["--num_images", str(args.num_images)]
  baseline = row_of(evaluate(gan, args.images, workdir / "baseline_optimize100", "optimize",
                             ["--optimize_steps=100", *n], workdir / "baseline.log"), "optimize_100")
  table = []
  for variant in chosen:
    record, checkpoint = train_variant(variant, gan, workdir / variant.folder, args.config, args.max_steps)
    evaluated = workdir / variant.folder / f"eval_{variant.name}"
    rows = evaluate(checkpoint, args.images, evaluated, "encoder,indomain", ["--lambda_enc=0,2", *n],
                    workdir / variant.folder / "study.log")
    table.append(summarise(variant, record, rows, evaluated))
    print(f"{variant.name:10s} encoder {table[-1]['encoder_psnr']:.2f} dB, in-domain lam2 "
          f"{table[-1]['indomain2_psnr']:.2f} dB, {table[-1]['cpu_minutes']:.0f} CPU min", flush=True)
  machine_line = (f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}; "
                  f"{time.strftime('%Y-%m-%d')}.")
  output.parent.mkdir(parents=True, exist_ok=True)
  fingerprint = generator_fingerprint(gan)
  rows = merge_rows(read_json(output.with_suffix(".json"), {}), table, fingerprint, baseline)
  # The command that reproduces the whole merged table (rows measured earlier reuse their stored evaluations).
  command = reproducing_command(sys.argv[1:], [r["variant"] for r in rows])
  study = {"baseline": baseline, "rows": rows, "machine": machine_line, "command": command,
           "num_images": args.num_images, "generator_fingerprint": fingerprint}
  write_json(output.with_suffix(".json"), study)
  render(output, study)


def render(output: Path, study: dict) -> None:
  """OUTPUT.md and OUTPUT.png from the study's JSON."""
  output.with_suffix(".md").write_text(markdown(study["rows"], study["baseline"], study["machine"],
                                                study.get("num_images", 100), study["command"]))
  plot(study["rows"], study["baseline"], output.with_suffix(".png"))
  print(f"wrote {output}.md, .json, .png")


if __name__ == "__main__":
  main()
