"""Gather the JSON files one gpu_check.sh run wrote into <device>-<date>.json and a PNG.

    python bench/report.py OUTDIR BASE [step=rc ...]
"""

import glob
import json
import os
import sys


def main(outdir, base, steps):
    stamp = os.path.basename(base)
    summary = {"steps": dict(s.split("=", 1) for s in steps), "results": {}}
    for path in sorted(glob.glob(os.path.join(outdir, "*.json"))):
        if os.path.abspath(path) == os.path.abspath(base + ".json"):
            continue
        name = os.path.basename(path)
        if stamp.split("-")[-3:] and stamp[-10:] in name:
            with open(path) as f:
                summary["results"][name] = json.load(f)
    for log in sorted(glob.glob(base + "-*.log")):
        with open(log, errors="replace") as f:
            summary.setdefault("log_tails", {})[os.path.basename(log)] = f.read()[-4000:]
    with open(base + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    try:
        _plot(summary, base + ".png")
    except Exception as exc:  # matplotlib missing: the JSON is the record
        print(f"no plot: {type(exc).__name__}: {exc}")
    print(f"wrote {base}.json")


def _plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, res in summary["results"].items():
        rows = res.get("gpu", {}).get("rows", [])
        for dt in ("float16", "float32", "float64"):
            pts = [(r["shape"], r.get("cusoft_fraction_of_copy_bw")) for r in rows
                   if r["dtype"] == dt and r.get("cusoft_fraction_of_copy_bw")]
            if pts:
                ax.plot([f"{s[0]}x{s[1]}" for s, _ in pts], [v for _, v in pts], "o-",
                        label=f"cusoft {dt}")
            pts = [(r["shape"], r.get("torch_fraction_of_copy_bw")) for r in rows
                   if r["dtype"] == dt and r.get("torch_fraction_of_copy_bw")]
            if pts:
                ax.plot([f"{s[0]}x{s[1]}" for s, _ in pts], [v for _, v in pts], "x--",
                        label=f"torch {dt}")
    ax.set_ylabel("fraction of device copy bandwidth")
    ax.set_title("softmax, axis=1")
    ax.axhline(0.9, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    plt.xticks(rotation=30, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
