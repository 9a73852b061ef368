"""Plot realtime benchmark results: latency p50/p99 against the offered rate, per source.

    .venv/bin/python gateway/bench/plot.py gateway/bench/results/realtime-*.json \
        --out gateway/bench/results/realtime.png

Results of the same source, client count and rate: the newest one wins.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

TITLES = {
    "api": "end to end: write through the API → audit → gateway → client",
    "broker": "gateway fan-out alone: realtime exchange → gateway → client",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    newest: dict[tuple[str, int, int], dict[str, Any]] = {}
    for path in sorted(args.results):  # names sort by date
        result = json.loads(path.read_text())
        if "source" not in result:
            continue  # results from before sources were recorded
        newest[(result["source"], result["clients"], result["target_rate"])] = result
    sources = sorted({s for s, _, _ in newest})
    fig, axes = plt.subplots(1, len(sources), figsize=(6 * len(sources), 4), squeeze=False)
    for ax, source in zip(axes[0], sources, strict=True):
        runs = sorted((k, r) for k, r in newest.items() if k[0] == source)
        for clients in sorted({k[1] for k, _ in runs}):
            rows = [r for k, r in runs if k[1] == clients]
            rates = [r["target_rate"] for r in rows]
            for q, style in (("p50", "-o"), ("p99", "--s")):
                ax.plot(
                    rates,
                    [r["latency_ms"][q] for r in rows],
                    style,
                    label=f"{q}, {clients} clients",
                )
            for r in rows:
                notes = []
                if r["achieved_write_rate"] < 0.95 * r["target_rate"]:
                    notes.append(f"only {r['achieved_write_rate']:.0f}/s written")
                if r["disconnected_during_run"]:
                    notes.append(f"{r['disconnected_during_run']} cut off as slow")
                if notes:
                    ax.annotate(
                        ", ".join(notes),
                        (r["target_rate"], r["latency_ms"]["p99"]),
                        fontsize=8,
                        textcoords="offset points",
                        xytext=(-90, 6),
                    )
        ax.set_yscale("log")
        ax.set_xlabel("events/s offered")
        ax.set_ylabel("latency, ms (log)")
        ax.set_title(TITLES.get(source, source), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Capstan realtime: commit → delivered to every WebSocket client (2 shared cores)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
