"""Draw the panels of heartbeat.json from a Prometheus server's query API, with matplotlib.

Grafana is not installable on the machines this project is built on, so the picture in
docs/metrics.md is this script's: the dashboard's own queries, each panel's targets as
lines, over a time range of real data.

    python docs/dashboards/render.py --prometheus http://127.0.0.1:9090 --minutes 10 \
        --out docs/dashboards/heartbeat.png

The end-to-end test of the metrics runs it against the Prometheus it starts.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parent / "heartbeat.json"
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def expressions(dashboard: dict, rate_interval: str = "1m",
                instance: str = ".*") -> list[tuple[dict, list[tuple[str, str]]]]:
    """Each panel with its (query, legend) pairs, the dashboard's variables filled in."""
    out = []
    for panel in dashboard["panels"]:
        targets = []
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", rate_interval)
                    .replace("$instance", instance))
            targets.append((expr, target.get("legendFormat", "")))
        out.append((panel, targets))
    return out


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list:
    """The result of one range query: a list of {metric, values}; raises on a query error."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"query {expr!r} failed: {body}")
    return body["data"]["result"]


def legend(template: str, labels: dict) -> str:
    if not template:
        return ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"
    return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), template)


def render(prometheus: str, start: float, end: float, out: Path, *, step: float | None = None,
           rate_interval: str = "1m", dashboard_path: Path = DASHBOARD) -> dict[str, int]:
    """Draw every panel into ``out`` (PNG); return how many series each panel had."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dashboard = json.loads(Path(dashboard_path).read_text())
    panels = expressions(dashboard, rate_interval)
    step = step or max(1.0, (end - start) / 300)
    columns = 2
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(14, 3.1 * rows), squeeze=False)
    figure.suptitle(dashboard["title"], fontsize=14)
    counts = {}
    for index, (panel, targets) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        ax.set_title(panel["title"], fontsize=10, loc="left")
        series = 0
        for expr, template in targets:
            for result in query_range(prometheus, expr, start, end, step):
                points = [(float(t), float(v)) for t, v in result["values"]
                          if v not in ("NaN", "+Inf", "-Inf")]
                if not points:
                    continue
                ax.plot([datetime.fromtimestamp(t) for t, _ in points], [v for _, v in points],
                        label=legend(template, result["metric"]), linewidth=1.2)
                series += 1
        counts[panel["title"]] = series
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit == "s":
            ax.set_ylabel("seconds", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="grey")
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=10.0, help="how far back to draw")
    parser.add_argument("--rate-interval", default="1m",
                        help="what $__rate_interval stands for (Grafana: 4 scrape intervals)")
    parser.add_argument("--out", type=Path, default=DASHBOARD.with_suffix(".png"))
    args = parser.parse_args()
    end = time.time()
    counts = render(args.prometheus, end - args.minutes * 60, end, args.out,
                    rate_interval=args.rate_interval)
    for title, n in counts.items():
        print(f"{n:3d} series  {title}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
