#!/usr/bin/env python3
"""Bar charts of loadgen results: throughput and bytes per live entry, one bar per run.

    scripts/plot.py target/perf/*.json                  # writes perf.png
    scripts/plot.py -o docs/perf.png a.json b.json

Each file holds the output of one `cargo run --release --example loadgen -- ... --json` run
(one JSON object; if the file has other lines, the last line that starts with '{' is used).
Two charts side by side:
  - throughput: claims per second achieved (M/s), with the offered rate as a dashed line when
    the runs were open loop;
  - bytes per live entry: resident memory growth per live entry; for the peers, the hand-rolled
    sweeper's FIFO (reported apart by loadgen) is stacked on top, hatched; for idemstore, the
    engine's own account is marked with a dot.
Runs keep the order of the command line. Needs matplotlib (pip install matplotlib).
"""

import argparse
import json
import sys


def load(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    lines = [line for line in text.splitlines() if line.lstrip().startswith("{")]
    try:
        return json.loads(lines[-1] if lines else text)
    except (json.JSONDecodeError, IndexError) as e:
        sys.exit(f"plot.py: {path} holds no loadgen JSON object ({e})")


def bar_name(run):
    name = run.get("engine", "?")
    if run.get("batch"):
        name += f"\nbatch {run['batch']}"
    if run.get("value_bytes"):
        name += f"\n{run['value_bytes']} B values"
    return name


def describe(runs):
    """The settings the runs share, for the title; differing ones are named per bar."""
    first = runs[0]
    parts = []
    for key, fmt in [
        ("live", lambda v: f"{v:,} live keys"),
        ("ttl_s", lambda v: f"ttl {v / 3600:g} h" if v >= 3600 else f"ttl {v:g} s"),
        ("threads", lambda v: f"{v} threads"),
        ("dup_ratio", lambda v: f"{v * 100:g}% retries"),
    ]:
        values = {r.get(key) for r in runs}
        if len(values) == 1 and first.get(key) is not None:
            parts.append(fmt(first[key]))
    rates = {r.get("rate_offered") for r in runs}
    if rates == {None}:
        parts.append("closed loop")
    elif len(rates) == 1:
        parts.append(f"offered {first['rate_offered'] / 1e6:g} M claims/s (open loop)")
    return ", ".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", help="loadgen --json outputs, one run each")
    ap.add_argument("-o", "--out", default="perf.png", help="the PNG to write (default perf.png)")
    ap.add_argument("--title", default=None, help="a title instead of the shared settings")
    args = ap.parse_args()

    try:
        import matplotlib
    except ImportError:
        sys.exit(
            "plot.py needs matplotlib, which is not installed for "
            f"{sys.executable}.\nInstall it with:  {sys.executable} -m pip install matplotlib"
        )
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load(p) for p in args.files]
    names = [bar_name(r) for r in runs]
    colors = ["#2a7ab0" if r.get("engine") == "idemstore" else "#a0a0a0" for r in runs]
    xs = range(len(runs))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(runs) + 3), 4.8))

    rates = [r["claims_per_s"] / 1e6 for r in runs]
    bars = ax1.bar(xs, rates, color=colors)
    for b, r, run in zip(bars, rates, runs):
        label = f"{r:.2f}"
        if run.get("rate_offered") and not run.get("sustained", True):
            label += "\n(not sustained)"
        ax1.annotate(label, (b.get_x() + b.get_width() / 2, b.get_height()),
                     ha="center", va="bottom", fontsize=9)
    offered = {r.get("rate_offered") for r in runs}
    if len(offered) == 1 and None not in offered:
        ax1.axhline(offered.pop() / 1e6, color="black", linestyle="--", linewidth=1,
                    label="offered")
        ax1.legend(loc="upper right", fontsize=8)
    ax1.set_title("throughput")
    ax1.set_ylabel("claims per second (millions)")
    ax1.set_xticks(list(xs), names)
    ax1.margins(y=0.15)

    rss = [max(r.get("rss_bytes_per_entry") or 0, 0) for r in runs]
    sweeper = [r.get("sweeper_bytes_per_entry") or 0 for r in runs]
    bars = ax2.bar(xs, rss, color=colors, label="resident")
    if any(sweeper):
        ax2.bar(xs, sweeper, bottom=rss, color="white", edgecolor="#707070", hatch="//",
                label="sweeper FIFO (hand-rolled ttl)")
    accounted = [(x, r["engine_bytes_per_entry"]) for x, r in zip(xs, runs)
                 if r.get("engine_bytes_per_entry") is not None]
    if accounted:
        ax2.plot([a[0] for a in accounted], [a[1] for a in accounted], "o", color="black",
                 markersize=5, label="engine-accounted")
    for x, r, s in zip(xs, rss, sweeper):
        ax2.annotate(f"{r:.1f}" + (f" + {s:.1f}" if s else ""), (x, r + s),
                     ha="center", va="bottom", fontsize=9)
    ax2.set_title("memory per live entry")
    ax2.set_ylabel("bytes")
    ax2.set_xticks(list(xs), names)
    ax2.legend(loc="upper left", fontsize=8)
    # Room above the tallest bar for the legend, clear of the bars' labels.
    ax2.set_ylim(0, max((r + s for r, s in zip(rss, sweeper)), default=1) * 1.5 or 1)

    fig.suptitle(args.title or describe(runs), fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
