"""
experiments/plot_logs.py -- training curves of log.jsonl files, side by side: one CSV per metric, and a PNG
when matplotlib (optional, never required) is installed.

Every training script here writes one JSON line per step (grpo.py, nested.py's runs, glow_sft.py). To compare
runs, e.g. your `python grpo.py` against the committed log of the default run:

Run:  python experiments/plot_logs.py data/logs/grpo_default.jsonl runs/grpo/log.jsonl --out out/curves
      python experiments/plot_logs.py runs/nested/I2/*/seed0/log.jsonl --metrics "*/entropy,*/grad_norm"
"""
import argparse
import csv
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import grpo  # noqa: E402

METRICS = ("reward_mean", "*/reward", "rate_success", "*/success", "entropy", "*/entropy", "grad_norm",
           "*/grad_norm", "response_tokens")    # the keys drawn by default; "*/x" = every per-task key ending in /x


# A run is named after its log's folder (its path when two folders share a name). Each metric gets one CSV,
# step by run, with an empty cell where a run has no value at that step.
def plot_logs(paths, out_dir, patterns=METRICS):
    """Writes OUT/<metric>.csv (and .png with matplotlib); returns the files written."""
    logs = [grpo.read_log(p) for p in paths]
    names = [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in paths]
    names = names if len(set(names)) == len(names) else list(paths)
    keys = list(dict.fromkeys(k for log in logs for rec in log for k in rec if k != "step"))
    metrics = list(dict.fromkeys(k for p in patterns for k in keys
                                 if p == "all" or k == p or (p.startswith("*/") and k.endswith(p[1:]))))
    if not metrics:
        raise ValueError(f"none of the metrics {', '.join(patterns)} is in {', '.join(paths)}")
    os.makedirs(out_dir, exist_ok=True)
    try:
        import matplotlib
        matplotlib.use("Agg")                      # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
        print("matplotlib is not installed: writing CSV only (pip install matplotlib for the figures)")
    written = []
    for metric in metrics:
        base = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9_.-]+", "_", metric))     # "matrix/success" -> matrix_success
        series = {n: {rec["step"]: rec[metric] for rec in log if metric in rec} for n, log in zip(names, logs)}
        steps = sorted({s for points in series.values() for s in points})
        with open(base + ".csv", "w", newline="") as f:
            csv.writer(f).writerows([["step"] + names] + [[s] + [series[n].get(s, "") for n in names] for s in steps])
        written.append(base + ".csv")
        if plt is not None:
            fig, ax = plt.subplots(figsize=(6, 4))
            for name, points in series.items():
                ax.plot(sorted(points), [points[x] for x in sorted(points)], label=name)
            ax.set(xlabel="step", ylabel=metric)
            ax.legend()
            fig.savefig(base + ".png", dpi=120)
            plt.close(fig)
            written.append(base + ".png")
    return written


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    p.add_argument("logs", nargs="+", help="log.jsonl files, one JSON object per line with an integer 'step'")
    p.add_argument("--out", default="out/curves", help="folder for <metric>.csv and .png (default: out/curves)")
    p.add_argument("--metrics", default=",".join(METRICS), help="comma-separated keys; all = every key")
    args = p.parse_args(argv)
    try:
        written = plot_logs(args.logs, args.out, [m.strip() for m in args.metrics.split(",") if m.strip()])
    except (OSError, ValueError) as e:
        raise SystemExit(f"plot_logs: {e}") from None
    print(f"wrote {len(written)} files to {args.out}")
    return written


if __name__ == "__main__":
    main()
