#!/usr/bin/python3
"""Learning curves and accuracy-vs-cost Pareto plots from softmoe workdirs.

Reads WORKDIR/metrics.jsonl (one JSON object per logged step, evals included)
and WORKDIR/config.ini (the resolved config). Needs Debian's python3-matplotlib
(`WITH_PYTHON=1 make deps`).

  scripts/plot.py curves runs/a runs/b -o curves.png [--logy] [--labels A,B]
  scripts/plot.py paper runs/paper/results.csv [--outdir DIR] [--bench FILE]
  scripts/plot.py pareto runs/* -o pareto.png [--metric val/prec@1]
                  [--cost gflops|core_hours] [--bin build/softmoe]
                  [--gflops-per-image X] [--cores N]

curves: training loss, learning rate and every eval metric (val/*, fewshot/*)
against step, one line per workdir.
pareto: the last value of --metric per run against training cost, dense runs
and MoE runs ([moe] experts > 0) marked apart, with the Pareto front.
  gflops     = 3 * gflops_per_image * train.batch_size * last step, where
               gflops_per_image comes from `softmoe params WORKDIR/config.ini`
               (or --gflops-per-image, for all runs);
  core_hours = sum over logged intervals of steps * batch_size / img_per_s,
               times cores (--cores, default os.cpu_count()) / 3600.
A metric whose name ends in "loss" counts as lower-is-better.
paper: from scripts/paper.sh's results.csv, pareto.png (test prec@1 and
10-shot against training GFLOP and core-seconds, a colour and a front line
per family), ablations.png, dropping.png and, from bench_experts.txt (make
bench-experts output) beside it, throughput.png.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)

DEFAULT_BIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "softmoe")
# C's printf writes nan/-nan/inf; JSON spells them NaN/Infinity. Accept both.
BARE_NONFINITE = re.compile(r"(?<=[:,\[])(\s*)(-?)(nan|inf(?:inity)?)\b", re.IGNORECASE)


def die(msg):
    sys.exit("plot.py: error: " + msg)


def warn(msg):
    print("plot.py: warning: " + msg, file=sys.stderr)


def parse_line(text):
    try:
        return json.loads(text)
    except ValueError:
        fixed = BARE_NONFINITE.sub(
            lambda m: m.group(1) + ("NaN" if m.group(3).lower() == "nan"
                                    else m.group(2) + "Infinity"), text)
        return json.loads(fixed)


def read_metrics(workdir):
    """Returns {metric: [(step, value), ...]} sorted by step. A step logged
    twice (a run resumed from an older checkpoint) keeps its latest value."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        die(f"{workdir}: no metrics.jsonl (is this a softmoe workdir?)")
    series = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                rec = parse_line(text)
            except ValueError as e:
                warn(f"{path}:{lineno}: skipping malformed line ({e})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                warn(f"{path}:{lineno}: skipping line without an integer \"step\"")
                continue
            for key, value in rec.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    series.setdefault(key, {})[rec["step"]] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def read_config(workdir):
    """Returns {"section.key": value} from WORKDIR/config.ini."""
    path = os.path.join(workdir, "config.ini")
    if not os.path.isfile(path):
        die(f"{workdir}: no config.ini")
    cfg, section = {}, ""
    with open(path, encoding="utf-8") as f:
        for text in f:
            text = text.strip()
            if not text or text[0] in ";#":
                continue
            if text.startswith("[") and text.endswith("]"):
                section = text[1:-1].strip()
            elif "=" in text:
                key, value = text.split("=", 1)
                cfg[f"{section}.{key.strip()}"] = value.strip()
    return cfg


def config_int(cfg, key, workdir):
    try:
        return int(float(cfg[key]))
    except (KeyError, ValueError):
        die(f"{workdir}/config.ini: missing or non-numeric {key}")


def run_labels(workdirs, labels):
    if labels is None:
        return [os.path.basename(os.path.normpath(w)) for w in workdirs]
    names = labels.split(",")
    if len(names) != len(workdirs):
        die(f"--labels has {len(names)} names for {len(workdirs)} workdirs")
    return names


def eval_order(key):
    fixed = ["val/prec@1", "val/loss"]
    return (fixed.index(key) if key in fixed else len(fixed), key)


def save(fig, out):
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(out)


def cmd_curves(args):
    names = run_labels(args.workdirs, args.labels)
    runs = [read_metrics(w) for w in args.workdirs]
    evals = sorted({k for r in runs for k in r if "/" in k}, key=eval_order)
    panels = ["loss", "lr"] + evals
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, panels):
        for i, (name, run) in enumerate(zip(names, runs)):
            points = run.get(key, [])
            if not points:
                continue
            steps = [s for s, _ in points]
            values = [v if math.isfinite(v) else math.nan for _, v in points]
            ax.plot(steps, values, color=f"C{i % 10}", label=name,
                    marker="o" if "/" in key else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "loss" and args.logy:
            ax.set_yscale("log")
    for name, run in zip(names, runs):
        if not run:
            warn(f"{name}: metrics.jsonl holds no metrics")
    axes.flat[0].legend(fontsize=8)
    save(fig, args.output)


def gflops_per_image(args, workdir):
    if args.gflops_per_image is not None:
        return args.gflops_per_image
    config = os.path.join(workdir, "config.ini")
    try:
        res = subprocess.run([args.bin, "params", config], capture_output=True, text=True)
    except OSError as e:
        die(f"cannot run {args.bin} ({e}); build it with `make` or pass --bin or --gflops-per-image")
    if res.returncode != 0:
        die(f"`{args.bin} params {config}` failed (exit {res.returncode}) {res.stderr.strip()}")
    m = re.search(r"^gflops_per_image:\s*(\S+)", res.stdout, re.MULTILINE)
    if not m:
        die(f"`{args.bin} params {config}` printed no gflops_per_image line")
    return float(m.group(1))


def core_hours(metrics, batch_size, cores, name):
    seconds, prev, skipped = 0.0, 0, 0
    for step, ips in metrics.get("img_per_s", []):
        if math.isfinite(ips) and ips > 0:
            seconds += (step - prev) * batch_size / ips
        else:
            skipped += 1
        prev = step
    if skipped:
        warn(f"{name}: {skipped} intervals without a usable img_per_s left out of core_hours")
    return seconds * cores / 3600


def pareto_front(points, lower_is_better):
    """Points (cost, metric) that no other point beats on both axes."""
    sign = -1 if lower_is_better else 1
    front, best = [], -math.inf
    for cost, metric in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * metric > best:
            front.append((cost, metric))
            best = sign * metric
    return front


def cmd_pareto(args):
    names = run_labels(args.workdirs, args.labels)
    cores = args.cores or os.cpu_count() or 1
    lower_is_better = args.metric.endswith("loss")
    styles = {}  # kind -> (xs, ys, names)
    points = []
    for workdir, name in zip(args.workdirs, names):
        metrics, cfg = read_metrics(workdir), read_config(workdir)
        values = [v for _, v in metrics.get(args.metric, []) if math.isfinite(v)]
        steps = [s for s, _ in metrics.get("loss", [])]
        if not values or not steps:
            warn(f"{name}: no finite {args.metric} or no training steps logged; left out")
            continue
        batch_size = config_int(cfg, "train.batch_size", workdir)
        if args.cost == "gflops":
            cost = 3 * gflops_per_image(args, workdir) * batch_size * steps[-1]
        else:
            cost = core_hours(metrics, batch_size, cores, name)
        experts = config_int(cfg, "moe.experts", workdir) if cfg.get("moe.experts") else 0
        router = cfg.get("moe.router", "soft") or "soft"
        kind = "dense" if experts == 0 else ("Soft MoE" if router == "soft" else f"MoE ({router})")
        xs, ys, ns = styles.setdefault(kind, ([], [], []))
        xs.append(cost)
        ys.append(values[-1])
        ns.append(name)
        points.append((cost, values[-1]))
    if not points:
        die(f"no run has both {args.metric} and training steps to plot")

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"dense": ("s", "C0"), "Soft MoE": ("o", "C3")}
    for i, (kind, (xs, ys, ns)) in enumerate(sorted(styles.items())):
        marker, color = markers.get(kind, ("^", f"C{(i + 4) % 10}"))
        ax.scatter(xs, ys, marker=marker, color=color, s=50, label=kind, zorder=3)
        for x, y, n in zip(xs, ys, ns):
            ax.annotate(n, (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
    # The front holds its last level out to the costliest run, so a single
    # dominating run still shows as a line.
    front = pareto_front(points, lower_is_better)
    front.append((max(c for c, _ in points), front[-1][1]))
    ax.step([c for c, _ in front], [m for _, m in front], where="post",
            color="gray", linestyle="--", linewidth=1, label="Pareto front", zorder=2)
    if all(c > 0 for c, _ in points):
        ax.set_xscale("log")
    ax.set_xlabel("training GFLOP" if args.cost == "gflops" else f"core-hours ({cores} cores)")
    ax.set_ylabel(args.metric)
    ax.margins(0.1)  # room for the run names at the edges
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save(fig, args.output)


# ---- paper: the grid of scripts/paper.sh ----

FAMILY_STYLE = [  # (family label, marker, colour), in legend order
    ("dense ViT", "s", "C0"), ("Soft MoE", "o", "C3"), ("Tokens Choice k=1", "^", "C2"),
    ("Tokens Choice k=2", "v", "C8"), ("Experts Choice", "D", "C1")]


def paper_family(row):
    f = row["family"]
    if f == "dense":
        return "dense ViT"
    if f == "softmoe":
        return "Soft MoE"
    if f == "tokens_choice":
        return f"Tokens Choice k={row['k']}"
    if f == "experts_choice":
        return "Experts Choice"
    return None  # ablations: their own chart


def num(row, key):
    try:
        v = float(row[key])
    except (KeyError, ValueError):
        return math.nan
    return v


def read_results(path):
    import csv
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        die(f"{path} has no runs")
    return rows


def paper_pareto(rows, outdir):
    panels = [("test_prec1", "test prec@1"), ("fewshot_10shot", "10-shot accuracy")]
    costs = [("train_gflop", "training cost (GFLOP, forward + backward)"),
             ("core_seconds", "training cost (measured core-seconds)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    for i, (metric, mlabel) in enumerate(panels):
        for j, (cost, clabel) in enumerate(costs):
            ax = axes[i][j]
            for fam, marker, color in FAMILY_STYLE:
                pts = [(num(r, cost), num(r, metric)) for r in rows if paper_family(r) == fam]
                pts = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
                if not pts:
                    continue
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                           s=45, label=fam, zorder=3)
                front = pareto_front(pts, False)
                ax.plot([p[0] for p in front], [p[1] for p in front], color=color, linewidth=1.5,
                        zorder=2)
            ax.set_xscale("log")
            ax.set_xlabel(clabel)
            ax.set_ylabel(mlabel)
            ax.grid(alpha=0.3, which="both")
            if i == 0 and j == 0:
                ax.legend(fontsize=9)
    fig.suptitle("Fashion-MNIST: accuracy against training cost (lines: each family's Pareto front)")
    save(fig, os.path.join(outdir, "pareto.png"))


def paper_ablations(rows, outdir):
    abl = [r for r in rows if r["family"] == "ablation"]
    if not abl:
        warn("no ablation runs in the results; ablations.png not written")
        return
    order = ["abl-soft", "abl-uniform", "abl-uniform_soft", "abl-soft_uniform", "abl-identity"]
    abl.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    names = [r["name"].replace("abl-", "").replace("_", "-").title() for r in abl]
    x = range(len(abl))
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    w = 0.38
    bars = [ax.bar([i - w / 2 for i in x], [num(r, "test_prec1") for r in abl], w,
                   label="test prec@1", color="C3"),
            ax.bar([i + w / 2 for i in x], [num(r, "fewshot_10shot") for r in abl], w,
                   label="10-shot accuracy", color="C0")]
    # the differences are a few tenths of a point: the values say them
    for b in bars:
        ax.bar_label(b, fmt="%.3f", fontsize=8, padding=2)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names)
    ax.set_xlabel("dispatch-combine (S = N slots, independently initialised experts)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.12)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=9, loc="upper center", ncol=2)
    ax.set_title("Routing ablations (the paper's Table 2 at small scale)")
    save(fig, os.path.join(outdir, "ablations.png"))


def paper_dropping(rows, outdir):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    any_point = False
    for fam, marker, color in FAMILY_STYLE[2:]:
        for width in sorted({r["width"] for r in rows}, key=int):
            pts = sorted((num(r, "experts"), num(r, "dropped")) for r in rows
                         if paper_family(r) == fam and r["width"] == width)
            pts = [p for p in pts if math.isfinite(p[1])]
            if not pts:
                continue
            any_point = True
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                    label=f"{fam}, width {width}", alpha=0.5 + 0.5 * int(width) / 192)
    if not any_point:
        warn("no sparse-router runs in the results; dropping.png not written")
        plt.close(fig)
        return
    ax.set_xscale("log", base=2)
    ax.set_xlabel("experts")
    ax.set_ylabel("fraction of tokens (last logged training step)")
    ax.set_title("Tokens dropped (Tokens Choice) / unprocessed (Experts Choice)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    save(fig, os.path.join(outdir, "dropping.png"))


def read_bench_experts(path):
    """scripts/bench_experts.sh output: router, experts, ..., img_per_s columns."""
    rows = []
    with open(path) as f:
        lines = [l.split() for l in f if l.strip()]
    if not lines or lines[0][0] != "router":
        return rows
    head = lines[0]
    for parts in lines[1:]:
        if len(parts) == len(head):
            rows.append(dict(zip(head, parts)))
    return rows


def paper_throughput(path, outdir):
    rows = read_bench_experts(path)
    if not rows:
        warn(f"{path}: no bench-experts table; throughput.png not written")
        return
    labels = {"soft": ("Soft MoE", "o", "C3"), "tokens_choice:1": ("Tokens Choice k=1", "^", "C2"),
              "tokens_choice:2": ("Tokens Choice k=2", "v", "C8"),
              "experts_choice": ("Experts Choice", "D", "C1")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for router, (label, marker, color) in labels.items():
        pts = sorted((num(r, "experts"), num(r, "img_per_s"), num(r, "block_ms")) for r in rows
                     if r["router"] == router)
        if not pts:
            continue
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                     label=label)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker=marker, color=color,
                     label=label)
    for ax, ylabel in zip(axes, ["training throughput (images/s)",
                                 "MoE block forward + backward (ms)"]):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("experts (one expert row per token in total)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Throughput against the number of experts (make bench-experts)")
    save(fig, os.path.join(outdir, "throughput.png"))


def paper_table(rows, outdir):
    """results.md: the csv as a Markdown table (the README's), families in
    the grid's order (Tokens Choice k=1 before k=2), widths ascending, then
    experts."""
    order = {"dense": 0, "softmoe": 1, "tokens_choice": 2, "experts_choice": 3, "ablation": 4}

    def key(r):
        return (order.get(r["family"], 9), r["k"] or "", num(r, "width"), num(r, "experts"),
                r["name"])

    def cell(r, k, fmt):
        v = num(r, k)
        return "" if math.isnan(v) else fmt % v

    head = ["run", "width", "experts", "rows per expert and group", "params", "GFLOP/img", "train GFLOP",
            "core-s", "img/s", "test prec@1", "10-shot", "test loss", "dropped"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in sorted(rows, key=key):
        rows_per = r["slots"] or r["capacity"]
        lines.append("| " + " | ".join([
            r["name"], r["width"], r["experts"] if r["experts"] != "0" else "",
            rows_per, cell(r, "params", "%.0f"), cell(r, "gflops_per_image", "%.4f"),
            cell(r, "train_gflop", "%.0f"), cell(r, "core_seconds", "%.0f"),
            cell(r, "img_per_s", "%.0f"), cell(r, "test_prec1", "%.4f"),
            cell(r, "fewshot_10shot", "%.4f"), cell(r, "test_loss", "%.4f"),
            cell(r, "dropped", "%.3f")]) + " |")
    out = os.path.join(outdir, "results.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(out)


def cmd_paper(args):
    rows = read_results(args.results)
    outdir = args.outdir or os.path.dirname(os.path.abspath(args.results))
    paper_table(rows, outdir)
    paper_pareto(rows, outdir)
    paper_ablations(rows, outdir)
    paper_dropping(rows, outdir)
    bench = args.bench or os.path.join(os.path.dirname(os.path.abspath(args.results)),
                                       "bench_experts.txt")
    if os.path.exists(bench):
        paper_throughput(bench, outdir)
    else:
        warn(f"{bench} not found; throughput.png not written (make bench-experts > it)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curves", help="loss, lr and eval metrics vs step")
    c.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    c.add_argument("-o", "--output", default="curves.png")
    c.add_argument("--labels", help="comma-separated run names (default: workdir basenames)")
    c.add_argument("--logy", action="store_true", help="log scale for the loss")
    c.set_defaults(func=cmd_curves)
    q = sub.add_parser("pareto", help="final metric vs training cost")
    q.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    q.add_argument("-o", "--output", default="pareto.png")
    q.add_argument("--labels", help="comma-separated run names (default: workdir basenames)")
    q.add_argument("--metric", default="val/prec@1")
    q.add_argument("--cost", choices=["gflops", "core_hours"], default="gflops")
    q.add_argument("--bin", default=DEFAULT_BIN, help="softmoe binary (default: build/softmoe)")
    q.add_argument("--gflops-per-image", type=float, help="use this instead of running --bin")
    q.add_argument("--cores", type=int, help="cores per run for core_hours (default: this machine's)")
    q.set_defaults(func=cmd_pareto)
    r = sub.add_parser("paper", help="the plots of the paper grid (scripts/paper.sh)")
    r.add_argument("results", metavar="RESULTS_CSV")
    r.add_argument("--outdir", help="where the PNGs go (default: beside results.csv)")
    r.add_argument("--bench", help="make bench-experts output (default: bench_experts.txt "
                   "beside results.csv)")
    r.set_defaults(func=cmd_paper)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
