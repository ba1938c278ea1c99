"""Start-up time and memory of training on large corpora; prints one JSON line.

    python scripts/bench_data.py [--sizes 1000000 5000000] [--work /tmp/textvae-bench-data]
                                 [--source DIR] [--ddp] [--keep]

For each size N it writes a synthetic corpus of N training sentences drawn (seed 0, with
replacement) from PTB train, with PTB valid and test as they are, and runs `textvae train` on it
(configs/debug.yaml's small model, so that data handling is what is measured) in fresh processes:

- `first_batch_cold_s`: from launching the process to the first training batch, with an empty
  HF datasets cache (so reading, tokenizer training and tokenisation all happen);
- `first_batch_warm_s`: the same again, with the cache the cold run left;
- `peak_rss_mb`: peak resident memory of a whole `textvae train ... --trainer.max_steps 20` run
  (warm cache; end-of-run evaluation included), and `peak_rss_cold_mb` of the cold start up to
  the first batch;
- with --ddp: `ddp2_peak_rss_per_rank_mb`, the largest rank's peak of the same run on 2 CPU
  processes (DDP with gloo), to set against `peak_rss_mb`.

--end-of-run runs instead exactly this, for each N of --sizes (PTB train repeated into one file of N
lines), cold (an empty HF datasets cache) and then warm, in fresh processes:

    textvae train --config configs/debug.yaml --data.limit null --data.dataset text \
      --data.train_file bigN.txt --data.valid_file data/ptb/ptb.valid.txt \
      --data.test_file data/ptb/ptb.valid.txt --trainer.max_steps 20 --trainer.max_epochs 1 \
      --trainer.limit_val_batches 2 --eval.iw_samples 1 --output_dir runs/sN --overwrite

and reports each run's wall time and peak RSS, with the largest size's peak RSS and warm time over
the smallest's: end-of-run work that does not grow with the corpus keeps both near 1.

--source DIR measures the textvae package in another checkout (put first on PYTHONPATH), so
the same script gives the before and after figures of a change on one machine, in one sitting.
The corpora stay under WORK/corpora for the next sitting; caches and runs are removed (--keep
keeps them).
Sizes are ratios of runs made here, never goals for other machines.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from textvae.benchmarking import machine

REPO = Path(__file__).resolve().parents[1]

# Runs the CLI with the training step replaced by one that reports the time and exits.
FIRST_BATCH = """
import json, os, sys, time
start, report = float(sys.argv[1]), sys.argv[2]
import textvae.system as system
def first(self, batch, batch_idx):
    with open(report, "w") as out:
        json.dump({"seconds": time.time() - start}, out)
    os._exit(0)
system.VAESystem.training_step = first
from textvae.cli import main
sys.argv = ["textvae", *sys.argv[3:]]
main()
"""


def write_corpus(folder: Path, size: int) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ptb = REPO / "data" / "ptb"
    files = {"train": folder / "train.txt", "valid": ptb / "ptb.valid.txt", "test": ptb / "ptb.test.txt"}
    if not files["train"].is_file() or sum(1 for _ in open(files["train"], "rb")) != size:
        lines = (ptb / "ptb.train.txt").read_text().splitlines()
        rng = random.Random(0)
        partial = files["train"].with_suffix(".partial")
        with open(partial, "w") as out:
            for start in range(0, size, 100_000):
                out.write("".join(rng.choice(lines) + "\n" for _ in range(min(100_000, size - start))))
        os.replace(partial, files["train"])
    return files


def train_args(files: dict[str, Path], run_dir: Path, extra: list[str]) -> list[str]:
    return ["train", "--config", str(REPO / "configs" / "debug.yaml"), "--data.dataset", "text",
            "--data.limit", "null", "--data.train_file", str(files["train"]),
            "--data.valid_file", str(files["valid"]), "--data.test_file", str(files["test"]),
            "--trainer.max_epochs", "-1", "--trainer.max_steps", "20", "--trainer.log_every_n_steps", "10",
            "--trainer.checkpoint_every_n_steps", "1000", "--eval.iw_samples", "1", "--eval.prior_samples", "20",
            "--eval.bleu_sentences", "20", "--eval.interp_pairs", "2", "--eval.num_samples_txt", "0",
            "--output_dir", str(run_dir), "--overwrite", *extra]


def measure_in_fresh_interpreter(command: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """Run `command` in a child Python that reports its own peak RSS (RUSAGE_CHILDREN of the
    bench accumulates the maximum over every child so far, so each reading gets its own parent)."""
    probe = ("import json, resource, subprocess, sys, time\n"
             "start = time.time()\n"
             "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
             "if done.returncode: sys.exit(done.stderr.decode()[-3000:])\n"
             "print(json.dumps([time.time() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n")
    done = subprocess.run([sys.executable, "-c", probe, *command], env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench_data: {' '.join(command[:6])}... failed:\n{done.stderr[-3000:]}")
    seconds, rss = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, rss


def first_batch(files, folder: Path, env: dict) -> tuple[float, float]:
    """(seconds from launch to the first training batch, peak RSS in MB up to then)."""
    report = folder / "first_batch.json"
    report.unlink(missing_ok=True)
    launched = time.time()
    _, rss = measure_in_fresh_interpreter(
        [sys.executable, "-c", FIRST_BATCH, str(launched), str(report),
         *train_args(files, folder / "run", [])], env, folder)
    return json.loads(report.read_text())["seconds"], rss


def repeated_corpus(folder: Path, size: int) -> Path:
    """PTB train repeated (in order) into one file of `size` lines."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"big{size}.txt"
    if not path.is_file() or sum(1 for _ in open(path, "rb")) != size:
        lines = (REPO / "data" / "ptb" / "ptb.train.txt").read_text().splitlines(keepends=True)
        partial = path.with_suffix(".partial")
        with open(partial, "w") as out:
            for start in range(0, size, len(lines)):
                out.writelines(lines[: min(len(lines), size - start)])
        os.replace(partial, path)
    return path


def end_of_run(args, env: dict, results: dict) -> None:
    valid = str(args.valid)
    for size in sorted(args.sizes):
        folder = args.work / f"end_of_run_{size}"
        train = repeated_corpus(args.work / "corpora", size)
        cache = folder / "hf_cache"
        shutil.rmtree(cache, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "textvae.cli", "train", "--config", str(REPO / "configs" / "debug.yaml"),
                   "--data.limit", "null", "--data.dataset", "text", "--data.train_file", str(train),
                   "--data.valid_file", valid, "--data.test_file", valid, "--trainer.max_steps", str(args.steps),
                   "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "2", "--eval.iw_samples", "1",
                   "--output_dir", str(folder / "runs" / f"s{size}"), "--overwrite"]
        entry = {}
        for kind in ("cold", "warm"):
            seconds, rss = measure_in_fresh_interpreter(command, {**env, "HF_DATASETS_CACHE": str(cache)}, folder)
            entry.update({f"{kind}_s": round(seconds, 1), f"{kind}_peak_rss_mb": round(rss)})
        results["sizes"][str(size)] = entry
        print(json.dumps({"size": size, **entry}), file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    smallest, largest = (results["sizes"][str(size)] for size in (min(args.sizes), max(args.sizes)))
    peak = lambda entry: max(entry["cold_peak_rss_mb"], entry["warm_peak_rss_mb"])  # noqa: E731
    results["rss_ratio_largest_to_smallest"] = round(peak(largest) / peak(smallest), 2)
    results["warm_time_ratio_largest_to_smallest"] = round(largest["warm_s"] / smallest["warm_s"], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/textvae-bench-data"))
    parser.add_argument("--source", type=Path, default=None, help="a textvae checkout to measure instead")
    parser.add_argument("--ddp", action="store_true", help="also run 2 DDP processes on the smallest size")
    parser.add_argument("--keep", action="store_true", help="keep the corpora and caches")
    parser.add_argument("--end-of-run", action="store_true",
                        help="time whole runs on PTB train repeated to each size, cold and warm (see above)")
    parser.add_argument("--steps", type=int, default=20, help="--end-of-run: training steps (20 as measured)")
    parser.add_argument("--valid", type=Path, default=REPO / "data" / "ptb" / "ptb.valid.txt",
                        help="--end-of-run: the valid and test file (PTB valid as measured)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "true"}
    if args.source is not None:
        env["PYTHONPATH"] = f"{args.source.resolve()}{os.pathsep}{env.get('PYTHONPATH', '')}"
    source = args.source.resolve() if args.source else REPO
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    results = {"bench": "data", "source": str(source), "commit": commit, "machine": machine(), "sizes": {}}
    if args.end_of_run:
        results["bench"] = "data_end_of_run"
        end_of_run(args, env, results)
        print(json.dumps(results))
        return
    for size in args.sizes:
        folder = args.work / str(size)
        files = write_corpus(args.work / "corpora" / str(size), size)
        cache = folder / "hf_cache"
        shutil.rmtree(cache, ignore_errors=True)
        run_env = {**env, "HF_DATASETS_CACHE": str(cache)}
        folder.mkdir(parents=True, exist_ok=True)
        cold_s, cold_rss = first_batch(files, folder, run_env)
        warm_s, _ = first_batch(files, folder, run_env)
        seconds, rss = measure_in_fresh_interpreter(
            [sys.executable, "-m", "textvae.cli", *train_args(files, folder / "run", [])], run_env, folder)
        entry = {"first_batch_cold_s": round(cold_s, 2), "first_batch_warm_s": round(warm_s, 2),
                 "peak_rss_cold_mb": round(cold_rss), "peak_rss_mb": round(rss), "train_20_steps_s": round(seconds, 1)}
        if args.ddp and size == min(args.sizes):
            _, ddp_rss = measure_in_fresh_interpreter(
                [sys.executable, "-m", "textvae.cli", *train_args(files, folder / "run_ddp", [
                    "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"])],
                run_env, folder)
            entry["ddp2_peak_rss_per_rank_mb"] = round(ddp_rss)
        results["sizes"][str(size)] = entry
        print(json.dumps({"size": size, **entry}), file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    sizes = [str(s) for s in sorted(args.sizes)]
    if len(sizes) > 1:
        results["rss_ratio_largest_to_smallest"] = round(
            results["sizes"][sizes[-1]]["peak_rss_mb"] / results["sizes"][sizes[0]]["peak_rss_mb"], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
