"""Regenerate the results tables of README.md and docs/ from docs/results/*.json, so that every
measured number is written once, in the JSON.

    python scripts/results_tables.py           # rewrite every generated block in place
    python scripts/results_tables.py --check   # exit 1, naming them, if any block is stale

A generated block sits between two marker comments in a Markdown file under the repository
root (README.md, docs/*.md, docs/results/README.md):

    <!-- results:NAME -->
    ...table made by TABLES[NAME]...
    <!-- /results:NAME -->

Text outside the markers is never touched. An unknown NAME, or an entry a table names but the
JSON lacks, stops the script with a one-line error. Row labels and which entries each table
shows live here; the numbers come from the JSON. Standard library only, so CI or a test can run
`--check` without the package installed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def load_entries() -> dict[str, dict]:
    """Every entry of every results file by name; each carries `_file` (its file name)."""
    entries: dict[str, dict] = {}
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for entry in data if isinstance(data, list) else [data]:
            name = entry.get("name") or path.stem
            if name in entries:
                raise SystemExit(f"results_tables: entry {name!r} is in both {entries[name]['_file']} and {path.name}")
            entries[name] = {**entry, "_file": path.name}
    return entries


# ---------------------------------------------------------------------------------------------
# formatting


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def f(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def pct(share, digits: int = 1) -> str:
    return "—" if share is None else f"{100 * share:.{digits}f}%"


def minutes(entry: dict) -> str:
    seconds = entry.get("train_seconds")
    if seconds is None:
        return "—"
    seconds -= entry.get("paused_seconds", 0)
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"


def hardware(entry: dict) -> str:
    """The hardware string up to its first aside, without trademark marks."""
    text = re.split(r" \(|;", entry.get("hardware") or "—")[0]
    return text.replace("(R)", "").replace(" Processor", "")


def short(commit) -> str:
    return f"`{commit[:7]}`" if commit else "unknown"


def nll_k(metrics: dict) -> str:
    return f"{f(metrics['nll'])} (K={metrics.get('iw_samples')})"


# ---------------------------------------------------------------------------------------------
# the tables; each takes every entry by name and returns Markdown

PTB_MODELS = {  # name: label
    "ptb": "GRU decoder, latent in use (`configs/ptb.yaml`: skip path, KL held at 15; 15 epochs)",
    "ptb_minilm": "same, encoder = all-MiniLM-L6-v2 fine-tuned (`configs/ptb_minilm.yaml`, 4,511 steps)",
    "ptb_minilm_frozen": "same, encoder = all-MiniLM-L6-v2 frozen (`configs/ptb_minilm.yaml "
                         "--model.encoder.freeze true`, 8,192 steps)",
    "ptb_lowrate": "GRU decoder, low rate (`configs/ptb_lowrate.yaml`, 15 epochs)",
    "ptb_transformer_lowrate": "transformer decoder, low rate (`configs/ptb_transformer_lowrate.yaml`, 10 epochs)",
}


def ptb(entries: dict) -> str:
    rows = []
    for name, label in PTB_MODELS.items():
        entry = entries[name]
        t = entry["test"]
        rows.append([label, nll_k(t), f(t["ppl"], 1), f(t["elbo"]), f(t["rec"]), f(t["kl"]), f(t["mi"]), t["au"],
                     f(t["rec_bleu"], 1), minutes(entry), hardware(entry)])
    return table(["model", "test nll (K)", "ppl", "elbo", "rec", "kl", "mi", "au", "rec_bleu", "train time",
                  "hardware"], rows)


def headline(entries: dict) -> str:
    rows = []
    for name, label in (("ptb", "reference, latent in use: `configs/ptb.yaml`"),
                        ("ptb_minilm", "same with a fine-tuned all-MiniLM-L6-v2 encoder: `configs/ptb_minilm.yaml`"),
                        ("ptb_lowrate", "low-rate density model: `configs/ptb_lowrate.yaml`")):
        entry = entries[name]
        t = entry["test"]
        rows.append([label, nll_k(t), f(t["elbo"]), f(t["kl"]), t["au"], f(t["rec_bleu"], 1),
                     compressed(entries, "compress_ptb_2parts") if name == "ptb" else "—", hardware(entry)])
    smollm2 = {"ptb_smollm2_kl15": "", "ptb_smollm2_optimus": " with Optimus's schedule"}
    present = [name for name in smollm2 if name in entries]
    if present:  # the best pretrained-decoder row, at its own estimator
        name = min(present, key=lambda n: entries[n]["test"]["elbo"])
        entry = entries[name]
        t = entry["test"]
        rows.append([f"pretrained LM decoder: MiniLM + SmolLM2-135M, `configs/ptb_smollm2.yaml`{smollm2[name]}, "
                     f"{entry['steps']:,} steps", nll_k(t), f(t["elbo"]), f(t["kl"]), t["au"], f(t["rec_bleu"], 1),
                     "—", hardware(entry)])
    small = entries["compress_ptb_small_256lanes"]
    rows.append(["small low-rate compressor: `configs/ptb_small.yaml`, `--lanes 256`", "—",
                 f(small["ptb_test"]["elbo_nats_per_line"]) + " (one sample)", "—", "—", "—",
                 compressed(entries, "compress_ptb_small_256lanes"), hardware(small)])
    bzip2 = small["ptb_test"]["baselines_bits_per_char"]["bzip2_9"]
    rows.append(["bzip2 -9, for comparison", "—", "—", "—", "—", "—", f"{bzip2:.3f}", ""])
    return table(["PTB test", "nll (K)", "elbo", "kl", "au", "rec_bleu", "bits/char (compress / decompress)",
                  "hardware"], rows)


def compressed(entries: dict, name: str) -> str:
    test = entries[name]["ptb_test"]
    return f"{test['bits_per_char']:.3f} ({test['compress_kb_s']:.1f} / {test['decompress_kb_s']:.1f} KB/s)"


TIME_GOAL_MINUTES = 60  # training time we aim for with configs/ptb.yaml on 2 CPU cores
GOALS = [  # row label, test metric, format, goal for configs/ptb.yaml (op, value) or None
    ("test nll (K = 500)", "nll", lambda v: f(v), ("<=", 102.0)),
    ("MI (nats)", "mi", lambda v: f(v), (">=", 5)),
    ("active units (of 32)", "au", str, (">=", 24)),
    ("rec_bleu", "rec_bleu", lambda v: f(v, 1), (">=", 15)),
    ("rec_exact", "rec_exact", lambda v: pct(v), None),
    ("interp_distinct (of 10)", "interp_distinct", lambda v: f(v), (">=", 6)),
    ("interp_step", "interp_step", lambda v: f(v), None),
]


def ptb_goals(entries: dict) -> str:
    """The low-rate model, the reference and the MiniLM encoders side by side, with the reference's
    targets. Figures the full-budget low-rate run lacks come from its 2,000-step run, marked."""
    columns = ["ptb_lowrate", "ptb", "ptb_minilm", "ptb_minilm_frozen"]

    def cell(name: str, key: str, fmt) -> str:
        test = entries[name]["test"]
        if key in test:
            return fmt(test[key])
        fallback = entries[name + "_2k"]["test"] if name + "_2k" in entries else {}
        return f"{fmt(fallback[key])} (2,000 steps)" if key in fallback else "—"

    rows = []
    for label, key, fmt, goal in GOALS:
        verdict = ""
        if goal:
            op, target = goal
            value = entries["ptb"]["test"][key]
            met = value <= target if op == "<=" else value >= target
            sign = "≤" if op == "<=" else "≥"
            verdict = f"{sign} {target}: " + ("met" if met else f"**not met** ({fmt(value)})")
        rows.append([label] + [cell(name, key, fmt) for name in columns] + [verdict])
    for label, suffix in (("prior distinct-1 / -2 (sampled)", ""), ("prior distinct-1 / -2 (greedy)", "_greedy")):
        pair = lambda v: f"{v[0]:.3f} / {v[1]:.3f}"  # noqa: E731
        cells = []
        for name in columns:
            test = entries[name]["test"]
            if test.get("prior_strategy"):  # distinct-n from sampled decodes (older entries are greedy)
                cells.append(pair((test["distinct_1" + suffix], test["distinct_2" + suffix])))
            else:
                short_run = entries[name + "_2k"]["test"]
                cells.append(pair((short_run["distinct_1" + suffix], short_run["distinct_2" + suffix]))
                             + " (2,000 steps)")
        rows.append([label] + cells + [""])
    ptb = entries["ptb"]
    met = (ptb["train_seconds"] - ptb.get("paused_seconds", 0)) / 60 <= TIME_GOAL_MINUTES
    times = [f"{minutes(entries[name])}, {hardware(entries[name])}" if entries[name].get("train_seconds") is not None
             else f"{entries[name]['steps']:,} steps" for name in columns]
    rows.append(["training time", *times,
                 f"≤ {TIME_GOAL_MINUTES} min: " + ("met" if met else f"**not met** ({minutes(ptb)})")])
    return table(["test split", "`ptb_lowrate.yaml`", "`ptb.yaml`", "MiniLM fine-tuned", "MiniLM frozen",
                  "target for `ptb.yaml`"], rows)


SWEEP = {
    "ptb_lowrate_2k": "`ptb_lowrate.yaml` (free bits 0.15)",
    "ptb_rate_15": "`--kl.target_rate 15`",
    "ptb_rate_30": "`--kl.target_rate 30`",
    "ptb_rate_50": "`--kl.target_rate 50`",
    "ptb_skip_rate_15_2k": "`--kl.target_rate 15 --model.decoder.z_skip true`",
}


def rate_sweep(entries: dict) -> str:
    rows = []
    for name, label in SWEEP.items():
        entry = entries[name]
        t = entry["test"]
        rows.append([label, entry["final_beta"], nll_k(t), f(t["elbo"]), f(t["rec"]), f(t["kl"]), f(t["mi"]),
                     t["au"], f(t["rec_bleu"], 1), f(t["rec_exact"], 3), f(t["interp_distinct"]),
                     f(t["interp_step"])])
    return table(["run (2,000 steps)", "final β", "test nll (K)", "elbo", "rec", "kl", "mi", "au", "rec_bleu",
                  "rec_exact", "interp_distinct", "interp_step"], rows)


FOLLOW_UPS = {
    "ptb_lowrate_2k": "`ptb_lowrate.yaml`",
    "ptb_rate_15": "`--kl.target_rate 15`",
    "ptb_skip_rate_15_2k": "`--kl.target_rate 15 --model.decoder.z_skip true`",
    "ptb_rate_50": "`--kl.target_rate 50`",
    "ptb_skip_rate_50_wd05_2k": "`--kl.target_rate 50 --model.decoder.z_skip true --model.word_dropout 0.5`",
    "ptb_bow_rate_100_4k": "`--kl.target_rate 100 --model.decoder.z_skip true --model.bow_weight 1 "
                           "--trainer.best_by rec`, 4,000 steps",
}


def rate_valid(entries: dict) -> str:
    rows = []
    for name, label in FOLLOW_UPS.items():
        v = entries[name]["valid"]
        rows.append([label, f(v["nll"]), f(v["elbo"]), f(v["rec"]), f(v["kl"]), f(v["mi"]), v["au"],
                     f(v["rec_bleu"], 1), f(v["interp_distinct"])])
    return table(["run (2,000 steps unless said)", "valid nll (K=10)", "elbo", "rec", "kl", "mi", "au", "rec_bleu",
                  "interp_distinct"], rows)


DIAG = {
    "ae": "`ae`",
    "ae_wd05": "`ae` + `--model.word_dropout 0.5`",
    "ae_wd05_latent128": "`ae` + word dropout 0.5 + `--model.latent_dim 128`",
    "ae_wd05_dropout01": "`ae` + word dropout 0.5 + `--model.decoder.dropout 0.1`",
    "ae_logvar_init_-4": "`ae`, initial posterior log-variance −4 (a patch, not a switch)",
    "ae_bow1": "`ae` + `--model.bow_weight 1`",
    "rate15_skip": "`--kl.target_rate 15 --kl.free_bits 0 --model.decoder.z_skip true`",
    "rate15_skip_bow1": "the same + `--model.bow_weight 1`",
}


def diag(entries: dict) -> str:
    rows = [[label, f(entries[name]["valid"]["rec"]), f(entries[name]["valid"]["kl"], 1),
             f(entries[name]["valid"]["rec_bleu"], 1)] for name, label in DIAG.items()]
    return table(["run (657 steps, `ptb_small.yaml` +)", "valid rec", "kl", "rec_bleu"], rows)


def encoders(entries: dict) -> str:
    rows = []
    for name, label in (("ptb", "own (`configs/ptb.yaml`)"), ("ptb_minilm_frozen", "all-MiniLM-L6-v2, frozen"),
                        ("ptb_minilm", "all-MiniLM-L6-v2, fine-tuned")):
        entry = entries[name]
        t = entry["test"]
        rows.append([label, f(t["nll"]), f(t["elbo"]), f(t["rec"]), f(t["kl"]), f(t["mi"]), t["au"],
                     f(t["rec_bleu"], 1), f(t["interp_distinct"]), f(t["interp_step"]), f"{entry['steps']:,}",
                     hardware(entry)])
    return table(["encoder", "test nll (K=500)", "elbo", "rec", "kl", "mi", "au", "rec_bleu", "interp_distinct",
                  "interp_step", "steps", "hardware"], rows)


def decoder_path(entries: dict) -> str:
    rows = []
    for name, label in (("ptb_transformer_4l_2k", "native transformer"),
                        ("ptb_scratch_gpt2_4l_2k", "GPT-2 through `type: pretrained`")):
        entry = entries[name]
        t = entry["test"]
        by_step = sorted(entry["valid_elbo_by_step"].items(), key=lambda item: int(item[0]))
        curve = " / ".join(f(value) for _, value in by_step)
        rows.append([label, f(t["nll"]), f(t["ppl"], 1), f(t["elbo"]), f(t["kl"]), f(t["mi"]), t["au"], curve])
    steps = " / ".join(f"{int(step):,}" for step, _ in by_step)
    return table(["4-layer decoder, 2,000 steps", "test nll (K=10)", "ppl", "elbo", "kl", "mi", "au",
                  f"valid elbo at steps {steps}"], rows)


COMPRESSION = {
    "compress_ptb_small_256lanes": "`ptb_small.yaml` (6,000 steps), 256 lanes, 2 parts",
    "compress_ptb_small_128lanes": "the same, 128 lanes",
    "compress_ptb_small": "the same, 64 lanes (the default)",
    "compress_ptb_2parts": "`ptb.yaml`, full budget, 64 lanes, 2 parts (the defaults)",
    "compress_ptb": "the same, 1 part (`--parts 1`)",
    "compress_ptb_2parts_256lanes": "the same, 256 lanes, 2 parts",
    "compress_lowrate2k": "`ptb_lowrate.yaml`, 2,000 steps, 64 lanes, 1 part (format 2)",
    "compress_lowrate2k_256lanes": "the same, 256 lanes",
    "compress_skip15_2k": "rate 15 + `z_skip`, 2,000 steps, 64 lanes, 1 part (format 2)",
    "compress_skip15_2k_256lanes": "the same, 256 lanes",
}


def compression(entries: dict) -> str:
    rows = []
    for name, label in COMPRESSION.items():
        test = entries[name]["ptb_test"]
        rows.append([label, f(test["elbo_nats_per_line"]), f"{test['bits_per_char']:.3f}",
                     f(test["bits_per_word"]), f"{test['vs_bzip2']:.2f}x", f"{test['overhead_percent']:.2f}%",
                     f"{test['lines_at_zero']:,}", f"{test['compress_kb_s']:.1f} / {test['decompress_kb_s']:.1f}",
                     "yes" if test["exact"] else "**no**"])
    first = entries[next(iter(COMPRESSION))]["ptb_test"]
    base = first["baselines_bits_per_char"]
    rows.append(["gzip -9 / bzip2 -9 / xz -9e / zstd -19", "",
                 " / ".join(f"{base[key]:.3f}" for key in ("gzip_9", "bzip2_9", "xz_9e", "zstd_19")),
                 "", "", "", "", "", ""])
    return table([f"PTB test ({first['bytes']:,} bytes)", "ELBO (nats/line)", "bits/char", "bits/word",
                  "vs bzip2 -9", "over the ELBO", "lines at z = 0", "compress / decompress (KB/s)", "exact"], rows)


def bits(entries: dict) -> str:
    rows = []
    for row in entries["bits_skip15_2k"]["rows"]:
        rows.append(["float32" if row["bits"] is None else row["bits"], row["bytes_per_sentence"],
                     f(row["rec_bleu"]), pct(row["rec_exact"]),
                     "100%" if row["same_as_float"] == 1 else pct(row["same_as_float"]),
                     "0" if row["rmse"] == 0 else f"{row['rmse']:.2g}"])
    return table(["bits per dimension", "bytes per code", "rec_bleu", "rec_exact", "decodes identical to float32's",
                  "rmse of z"], rows)


def large_corpora(entries: dict) -> str:
    data = entries["bench_data"]
    idle, load = data["idle"], data["under_load"]
    before, after = idle["before"]["sizes"]["1000000"], idle["after"]["sizes"]["1000000"]
    load_after = load["after"]["sizes"]
    warm_5m = idle["after_5M_warm_first_batch_s"]
    mb = lambda v: f"{v:,} MB"  # noqa: E731
    rows = [
        ["1M: first batch, cold / warm", "idle",
         f"{before['first_batch_cold_s']:.1f} s / {before['first_batch_warm_s']:.1f} s",
         f"{after['first_batch_cold_s']:.1f} s / **{after['first_batch_warm_s']:.1f} s**"],
        ["1M: peak RSS, whole run", "idle", mb(before["peak_rss_mb"]), f"**{mb(after['peak_rss_mb'])}**"],
        ["1M: peak RSS, cold start to the first batch", "idle", mb(before["peak_rss_cold_mb"]),
         mb(after["peak_rss_cold_mb"])],
        ["1M: peak RSS per rank, DDP on 2 CPU processes", "under load",
         f"{mb(load['before']['sizes']['1000000']['ddp2_peak_rss_per_rank_mb'])} (×2 ranks)",
         f"{mb(load_after['1000000']['ddp2_peak_rss_per_rank_mb'])} (×2 ranks)"],
        ["5M: first batch, warm", "idle", "—", f"**{min(warm_5m):.1f}–{max(warm_5m):.1f} s**"],
        ["5M: peak RSS, whole run", "under load", "—",
         f"**{mb(load_after['5000000']['peak_rss_mb'])}, {load['after']['rss_ratio_largest_to_smallest']:.2f}× "
         f"the 1M figure**"],
        ["5M: first batch cold; peak RSS cold", "under load", "—",
         f"{load_after['5000000']['first_batch_cold_s']:.0f} s; {mb(load_after['5000000']['peak_rss_cold_mb'])}"],
    ]
    return table(["N = training sentences", "cores", f"before ({idle['before']['commit']}): Python lists",
                  "after: memory-mapped Arrow cache"], rows)


def end_of_run(entries: dict) -> str:
    data = entries["bench_data_end_of_run"]
    sizes = data["sizes"]
    mb = lambda v: f"{v:,} MB"  # noqa: E731
    rows = [[f"{int(n) // 1_000_000}M", f"{s['cold_s']:.1f} s", f"{s['warm_s']:.1f} s", mb(s["cold_peak_rss_mb"]),
             mb(s["warm_peak_rss_mb"])] for n, s in sizes.items()]
    rows.append([f"{int(max(sizes, key=int)) // 1_000_000}M / {int(min(sizes, key=int)) // 1_000_000}M", "—",
                 f"**{data['warm_time_ratio_largest_to_smallest']:.2f}×**", "peak of both runs:",
                 f"**{data['rss_ratio_largest_to_smallest']:.2f}×**"])
    return table(["N = training lines", "whole run, cold", "whole run, warm", "peak RSS, cold", "peak RSS, warm"], rows)


def iw_cpus(entries: dict) -> str:
    xeon, epyc = entries["bench_eval_xeon"], entries["bench_eval_epyc_avx2"]
    before, after = epyc["before_k100_bf16_emulated"], epyc["after_k100_float32"]
    full = epyc["after_bf16_requested"]
    rows = [
        [xeon["hardware"], f"`--precision bf16`, K = 500, {xeon['sentences']} sentences", "bf16",
         f"{xeon['seconds_measured']} s", f"{xeon['seconds'] / 60:.0f} min", f"**{xeon['mfu_peak']:.2f}** (of bf16)"],
        [epyc["hardware"], f"`--precision bf16`, K = 500, {full['sentences']} sentences", full["precision"],
         f"{full['seconds_measured']:.0f} s", f"{full['seconds'] / 3600:.1f} h",
         f"**{full['mfu_peak']:.2f}** (of float32, {full['matmul_gflops_fp32']:.0f} GFLOP/s)"],
        ["the same EPYC, before the fallback", f"`--precision bf16`, K = {before['iw_samples']}, "
         f"{before['sentences']} sentences", "bf16, emulated", f"{before['seconds_measured']:.1f} s", "—",
         f"{before['model_gflops'] / before['matmul_gflops_fp32']:.2f} (of float32; bf16 matmul "
         f"{before['matmul_gflops_bf16']:.1f} GFLOP/s)"],
        ["the same EPYC, after", f"the same, K = {after['iw_samples']}, {after['sentences']} sentences",
         "float32" if after["precision"] == "32" else after["precision"], f"{after['seconds_measured']:.1f} s", "—", f"{after['mfu_peak']:.2f} (of float32)"],
    ]
    return table(["CPU", "run", "ran in", "measured", "PTB test (extrapolated)", "MFU of the faster matmul rate"],
                 rows)


# Published CLINC150 rows (in-scope test vs oos_test, AUROC / FPR@95 in %), language-model
# perplexity scores, as tabulated in microsoft/KC's papers/MLKD_OOD README.
CLINC150_ANCHORS = [("GPT-2 trained from scratch on in-scope train, perplexity", 91.73, 28.31),
                    ("GPT-2 fine-tuned, perplexity", 89.76, 33.77),
                    ("MLKD (distilled LM)", 92.51, 27.16),
                    ("DATE", 83.38, 66.67)]


def ood_clinc150(entries: dict) -> str:
    """The published rows, then every score of each textvae model, the best of each column in bold
    (length, the confound, aside)."""
    rows = [[label, f(auroc), "—", f(fpr95)] for label, auroc, fpr95 in CLINC150_ANCHORS]
    models = {"clinc150_ood": "BPE 4,000", "clinc150_ood_word": "word vocabulary"}
    scored = [row for name in models for score, row in entries[name]["scores"].items() if score != "length"]
    best = {"auroc": max(row["auroc"] for row in scored), "aupr": max(row["aupr"] for row in scored),
            "fpr95": min(row["fpr95"] for row in scored)}
    for name, vocabulary in models.items():
        entry = entries[name]
        spread = entry.get("summary", {})  # over seeds, where there are several
        for score, row in entry["scores"].items():
            cells = []
            for key in ("auroc", "aupr", "fpr95"):
                cell = f(100 * row[key])
                if score in spread:
                    cell = f"{f(100 * spread[score][key]['mean'])} ± {f(100 * spread[score][key]['std'])}"
                cells.append(f"**{cell}**" if score != "length" and row[key] == best[key] else cell)
            seeds = f" ({len(entry['seeds'])} seeds)" if score in spread else ""
            rows.append([f"textvae, {vocabulary}{seeds}: {entry.get('labels', {}).get(score, f'`{score}`')}", *cells])
    return table(["score", "AUROC", "AUPR", "FPR@95"], rows)


PTB_OOD_SETS = {"wiki": "Wikipedia", "shuffled": "words shuffled", "random20": "20% random words",
                "valid": "PTB valid (control)"}


def ood_ptb(entries: dict) -> str:
    """Every score (rows) against every length-matched pair (columns): AUROC / AUPR / FPR@95."""
    sets = entries["ptb_ood"]["sets"]
    header = ["score", *(f"{label}: AUROC / AUPR / FPR@95" for label in PTB_OOD_SETS.values())]
    rows = [[f"`{score}`" + (" (`--background unigram`)" if score == "ratio" else ""),
             *(" / ".join(f(100 * sets[name]["scores"][score][key], 1) for key in ("auroc", "aupr", "fpr95"))
               for name in PTB_OOD_SETS)]
            for score in sets["wiki"]["scores"]]
    rows.append(["lines per side (mean words in / out)",
                 *(f"{sets[name]['lines'][0]:,} ({f(sets[name]['mean_words'][0], 1)} / "
                   f"{f(sets[name]['mean_words'][1], 1)})" for name in PTB_OOD_SETS)])
    return table(header, rows)


def ood_ptb_length(entries: dict) -> str:
    """Each score's 95th-percentile flag rate on PTB test's shortest and longest quarters."""
    bias = entries["ptb_ood"]["length_bias"]
    rows = [[f"`{score}`", f(row["threshold"], 3), pct(row["shortest"]), pct(row["longest"]),
             f(row["ratio"])] for score, row in bias.items()]
    return table(["score", "threshold (95th percentile of valid)", "flagged, shortest quarter",
                  "flagged, longest quarter", "larger / smaller"], rows)


def headline_of(entry: dict) -> str:
    """A few figures that identify an entry in the index."""
    if "test" in entry or "valid" in entry:
        split = "test" if "test" in entry else "valid"
        m = entry[split]
        return (f"{split} nll {f(m['nll'])}, elbo {f(m['elbo'])}, rec {f(m['rec'])}, kl {f(m['kl'])}, au {m['au']}, "
                f"rec_bleu {f(m['rec_bleu'], 1)}")
    if entry.get("benchmark") == "compress":
        t = entry["ptb_test"]
        return (f"{t['bits_per_char']:.3f} bits/char, {t['vs_bzip2']:.2f}x bzip2 -9, {t['overhead_percent']:.2f}% "
                f"over the ELBO, {t['compress_kb_s']:.1f} / {t['decompress_kb_s']:.1f} KB/s "
                f"({entry['lanes']} lanes, {entry.get('parts', 1)} part{'s' if entry.get('parts', 1) > 1 else ''})")
    if entry.get("benchmark") == "bits":
        by_bits = {row["bits"]: row for row in entry["rows"]}
        return (f"rec_bleu {f(by_bits[None]['rec_bleu'])} (float32), {f(by_bits[4]['rec_bleu'])} at 4 bits, "
                f"{f(by_bits[1]['rec_bleu'])} at 1 bit")
    if entry.get("name") == "bench_data":
        before, after = entry["idle"]["before"]["sizes"]["1000000"], entry["idle"]["after"]["sizes"]["1000000"]
        return (f"1M sentences: warm first batch {before['first_batch_warm_s']:.1f} → "
                f"{after['first_batch_warm_s']:.1f} s, peak RSS {before['peak_rss_mb']:,} → "
                f"{after['peak_rss_mb']:,} MB")
    if entry.get("name", "").startswith("bench_eval_"):
        run = entry.get("after_bf16_requested", entry)
        return f"IW-NLL K = {run['iw_samples']}: MFU {run['mfu_peak']:.2f} of the faster matmul rate"
    if entry.get("name", "").startswith("clinc150_ood"):
        best = max((n for n in entry["scores"] if n != "length"), key=lambda n: entry["scores"][n]["auroc"])
        row = entry["scores"][best]
        return f"best score {best}: AUROC {100 * row['auroc']:.2f}, FPR@95 {100 * row['fpr95']:.2f}"
    if entry.get("name") == "ptb_ood":
        wiki = entry["sets"]["wiki"]["scores"]
        best = max((n for n in wiki if n != "length"), key=lambda n: wiki[n]["auroc"])
        return (f"best against Wikipedia: {best}, AUROC {100 * wiki[best]['auroc']:.1f}; control "
                f"nll_per_token AUROC {100 * entry['sets']['valid']['scores']['nll_per_token']['auroc']:.1f}")
    if entry.get("name") == "ptb_showcase":
        return f"models: {', '.join(entry['models'])}"
    if entry.get("name") == "bench_data_end_of_run":
        return (f"3M/1M lines: warm time {entry['warm_time_ratio_largest_to_smallest']:.2f}×, peak RSS "
                f"{entry['rss_ratio_largest_to_smallest']:.2f}×")
    return ""


def estimator_of(entry: dict) -> str:
    if "test" in entry or "valid" in entry:
        split = "test" if "test" in entry else "valid"
        m = entry[split]
        if "iw_samples" not in m:  # the one-epoch diagnostics say how in `split`
            return entry.get("split", split)
        precision = "bf16" if m.get("precision") == "bf16" else "float32"
        return f"{split} IW-NLL, K = {m['iw_samples']}, {precision}"
    if entry.get("benchmark") == "compress":
        return "bits-back stream vs one-sample ELBO"
    if entry.get("benchmark") == "bits":
        return f"greedy decodes of B-bit codes, first {entry['sentences']:,} {entry['split']} sentences"
    if entry.get("name") == "bench_data":
        return "wall time to the first batch, peak RSS"
    if entry.get("name", "").startswith("clinc150_ood"):
        return f"in-scope test vs oos_test, IW-NLL K = {entry['iw_samples']}"
    if entry.get("name") == "ptb_ood":
        return f"PTB test vs length-matched sets, IW-NLL K = {entry['iw_samples']}"
    if entry.get("name") == "ptb_showcase":
        return f"{len(entry['sentences'])} test sentences, greedy; samples top-p {entry['top_p']}"
    if entry.get("name") == "bench_data_end_of_run":
        return "wall time of a whole 20-step run, peak RSS"
    if entry.get("name", "").startswith("bench_eval_"):
        return "IW-NLL throughput on PTB test sentences, K = 500"
    return ""


def index(entries: dict) -> str:
    rows = []
    for name, entry in entries.items():
        config = f"`{entry['config']}`" if entry.get("config") else "—"
        command = f"`{entry['command']}`" if entry.get("command") else "**missing**"
        rows.append([f"`{name}`", f"[{entry['_file']}]({entry['_file']})", config, command, short(entry.get("commit")),
                     entry.get("hardware") or "—", estimator_of(entry), headline_of(entry)])
    return table(["entry", "file", "config", "command", "commit", "hardware", "estimator and K", "headline figures"],
                 rows)


# Published PTB test rows (nats per sentence, latent 32), as their papers give them: the anchors of
# the rate-distortion table. Optimus: BERT encoder + GPT-2 117M decoder (full precision), pretrained
# on Wikipedia then fine-tuned one epoch on PTB; PPL from 100 importance samples; rec per GPT-2 token
# sum. Li et al. 2019: LSTM, autoencoder pretraining + free bits 5.
ANCHORS = [  # label, short label (the picture's), KL, rec, -ELBO, MI, AU
    ("Optimus λ = 0.05 (Li et al. 2020, Table 2)", "Optimus λ=0.05", 4.88, 86.43, 91.31, None, None),
    ("Optimus λ = 0.5 (Li et al. 2020, Table 2)", "Optimus λ=0.5", 15.72, 81.09, 96.82, 7.64, 32),
    ("Optimus λ = 1.0 (Li et al. 2020, Table 2)", "Optimus λ=1.0", 28.50, 77.65, 106.15, None, None),
    ("LSTM, AE pretraining + free bits (Li et al. 2019)", "Li et al. 2019 LSTM", 6.54, 95.87, 102.41, 5.31, 32),
]
RATE_DISTORTION = {  # name: (label, short label)
    "ptb_lowrate": ("textvae GRU, `configs/ptb_lowrate.yaml`", "GRU ptb_lowrate"),
    "ptb": ("textvae GRU, `configs/ptb.yaml`", "GRU ptb"),
    "ptb_minilm": ("textvae MiniLM + GRU, `configs/ptb_minilm.yaml`", "MiniLM + GRU"),
    "ptb_smollm2_lm": ("SmolLM2-135M (4-bit weights) fine-tuned alone, no latent: the exact NLL", "SmolLM2 alone"),
    "ptb_smollm2_kl15": ("textvae MiniLM + SmolLM2-135M (4-bit weights), `configs/ptb_smollm2.yaml` (β controller)",
                         "SmolLM2, β controller"),
    "ptb_smollm2_optimus": ("textvae MiniLM + SmolLM2-135M (4-bit weights), `configs/ptb_smollm2.yaml` with "
                            "Optimus's schedule (autoencoder half, ramp, free bits)", "SmolLM2, Optimus schedule"),
}


def rate_distortion_points(entries: dict) -> list[dict]:
    """The rate-distortion rows, anchors first: what both the table and scripts/plot_rate.py's
    picture show, so the two cannot disagree."""
    points = [{"label": label, "short": short, "kl": kl, "rec": rec, "elbo": elbo, "mi": mi, "au": au,
               "anchor": True, "estimator": "as published", "hardware": "—"}
              for label, short, kl, rec, elbo, mi, au in ANCHORS]
    for name, (label, short) in RATE_DISTORTION.items():
        if name not in entries:
            continue
        entry = entries[name]
        t = entry["test"]
        steps = f", {entry['steps']:,} steps" if entry.get("steps") else ""
        no_latent = "--model.latent none" in entry.get("extra_flags", "")  # no code: MI and AU do not apply
        estimator = ("exact NLL (no latent)" if no_latent else "one-sample ELBO") + (
            "; rec summed over SmolLM2 tokens" if t.get("ppl_word") else "; words + `<eos>`")
        points.append({"label": label + steps, "short": short, "kl": t["kl"], "rec": t["rec"], "elbo": t["elbo"],
                       "mi": None if no_latent else t["mi"], "au": None if no_latent else t["au"], "anchor": False,
                       "estimator": estimator, "hardware": hardware(entry)})
    return points


def rate_distortion(entries: dict) -> str:
    rows = [[p["label"], f(p["kl"]), f(p["rec"]), f(p["elbo"]), f(p["mi"]), "—" if p["au"] is None else p["au"],
             p["estimator"], p["hardware"]] for p in rate_distortion_points(entries)]
    return table(["PTB test (nats per sentence)", "KL", "rec", "−ELBO", "MI", "AU", "estimator", "hardware"], rows)


def text_cell(text: str) -> str:
    """A generated sentence as a table cell: pipes escaped, an empty output shown as such."""
    return text.replace("|", "\\|") if text.strip() else "*(empty)*"


def showcase(entries: dict) -> str:
    """scripts/showcase.py's samples, reconstructions and interpolation paths, one column per model."""
    entry = entries["ptb_showcase"]
    models = entry["models"]
    names = list(models)
    samples = [[str(i + 1), *(text_cell(models[n]["samples"][i]) for n in names)]
               for i in range(len(models[names[0]]["samples"]))]
    parts = [f"Prior samples (z ~ N(0, I), top-p {entry['top_p']}, seed {entry['seed']}):\n\n",
             table(["#", *names], samples),
             "\nTest reconstructions (greedy, from the posterior mean):\n\n",
             table(["test sentence", *names], [[text_cell(sentence), *(text_cell(models[n]["reconstructions"][i])
                                                                      for n in names)]
                                               for i, sentence in enumerate(entry["sentences"])])]
    for index, (a, b) in enumerate(entry["pairs"]):
        path = [models[n]["interpolations"][index] for n in names]
        steps = len(path[0])
        rows = [[f"{i / (steps - 1):.2f}", *(text_cell(p[i]) for p in path)] for i in range(steps)]
        parts += [f"\nPath {index + 1} (greedy, slerp), from *{text_cell(a)}* to *{text_cell(b)}*:\n\n",
                  table(["t", *names], rows)]
    return "".join(parts)


TABLES = {"rate_distortion": rate_distortion, "index": index, "headline": headline, "ptb": ptb, "ptb_goals": ptb_goals, "rate_sweep": rate_sweep,
          "rate_valid": rate_valid, "diag": diag, "encoders": encoders, "decoder_path": decoder_path,
          "compression": compression, "bits": bits, "large_corpora": large_corpora, "end_of_run": end_of_run,
          "iw_cpus": iw_cpus, "ood_clinc150": ood_clinc150,
          "ood_ptb": ood_ptb, "ood_ptb_length": ood_ptb_length, "showcase": showcase}


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any block is stale")
    args = parser.parse_args(argv)
    entries = load_entries()
    stale = []
    for path in documents():
        text = path.read_text(encoding="utf-8")

        def fill(match: re.Match) -> str:
            name = match["name"]
            if name not in TABLES:
                raise SystemExit(f"results_tables: {path.relative_to(ROOT)}: unknown block {name!r} "
                                 f"(known: {', '.join(TABLES)})")
            try:
                body = TABLES[name](entries)
            except KeyError as error:
                raise SystemExit(f"results_tables: block {name!r} needs {error} from docs/results/*.json") from None
            if body != match["body"]:
                stale.append(f"{path.relative_to(ROOT)}: {name}")
            return match.group(1) + body + match.group(4)

        new = BLOCK.sub(fill, text)
        if new != text and not args.check:
            path.write_text(new, encoding="utf-8")
    for item in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {item}", file=sys.stderr)
    if args.check and stale:
        print("results_tables: run `python scripts/results_tables.py` to regenerate", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
