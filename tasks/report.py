"""One self-contained HTML page per run: the evaluation against the baselines, the
slices, and the trend over earlier runs.

Charts are inline SVG drawn here (no JavaScript, no fonts or files from elsewhere), so
the page opens from a file share or a mail attachment. Every text that comes from the
warehouse is HTML-escaped. Written to ``reports/<run_id>/report.html`` and, when the run
is the newest evaluated date, ``reports/latest.html``.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

import polars as pl

from nightrec import eval_store
from nightrec.config import ContractError, Settings

log = logging.getLogger(__name__)

COLORS = {
    "nightrec": "#1f5fa8",
    "popular": "#9a9a9a",
    "item_knn": "#3a9a4a",
    "transition": "#e08a1e",
}
PALETTE = ("#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#d35400")
ORDER = ("nightrec", "popular", "item_knn", "transition")
FIGURES = ("hr", "ndcg", "mrr", "precision", "f1", "coverage", "diversity", "novelty")
W, H, PAD = 560, 240, 40
CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:1180px;color:#222}
h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{padding:2px 8px;text-align:right;
border-bottom:1px solid #eee}th:first-child,td:first-child{text-align:left}
.best{font-weight:bold}.charts{display:flex;flex-wrap:wrap;gap:12px}.muted{color:#777}
svg text{font:11px system-ui,sans-serif}"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def color(model: str, models: list[str]) -> str:
    return COLORS.get(model) or PALETTE[models.index(model) % len(PALETTE)]


def ordered(models: list[str]) -> list[str]:
    return sorted(set(models), key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))


def _axis(top: float) -> tuple[float, str]:
    """A rounded axis maximum and the SVG of its gridlines and labels."""
    top = top if top > 0 and math.isfinite(top) else 1.0
    step = 10 ** math.floor(math.log10(top / 4))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if top / (m * step) <= 5)
    ticks = math.ceil(top / step - 1e-9)
    lines = []
    for i in range(ticks + 1):
        y = H - PAD - i / ticks * (H - 2 * PAD)
        lines.append(
            f'<line x1="{PAD}" x2="{W - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{PAD - 4}" y="{y + 4:.1f}" text-anchor="end">{i * step:g}</text>'
        )
    return ticks * step, "".join(lines)


def _legend(models: list[str]) -> str:
    return "".join(
        f'<rect x="{PAD + i * 110}" y="6" width="10" height="10" fill="{color(m, models)}"/>'
        f'<text x="{PAD + i * 110 + 14}" y="15">{esc(m)}</text>'
        for i, m in enumerate(models)
    )


def bar_chart(title: str, groups: list[str], series: dict[str, list[float | None]]) -> str:
    """Grouped bars: one group per label (e.g. K), one bar per model."""
    models = ordered(list(series))
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    top, grid = _axis(max(values, default=1.0))
    gw = (W - PAD - 10) / max(len(groups), 1)
    bw = gw * 0.8 / max(len(models), 1)
    parts = [grid, _legend(models)]
    for g, label in enumerate(groups):
        x0 = PAD + g * gw + gw * 0.1
        parts.append(f'<text x="{x0 + gw * 0.4:.1f}" y="{H - PAD + 14}" text-anchor="middle">')
        parts.append(f"{esc(label)}</text>")
        for i, m in enumerate(models):
            v = series[m][g]
            if v is None or not math.isfinite(v):
                continue
            h = v / top * (H - 2 * PAD)
            parts.append(
                f'<rect x="{x0 + i * bw:.1f}" y="{H - PAD - h:.1f}" width="{bw * 0.92:.1f}" '
                f'height="{h:.1f}" fill="{color(m, models)}"><title>{esc(m)} {esc(label)}: '
                f"{v:.4f}</title></rect>"
            )
    return _svg(title, "".join(parts))


def line_chart(
    title: str, labels: list[str], series: dict[str, list[float | None]], tips: list[str]
) -> str:
    """One line per series over runs (labels oldest first, ``tips`` on hover); a run
    without a figure is skipped."""
    models = ordered(list(series))
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    top, grid = _axis(max(values, default=1.0))
    n = len(labels)
    dx = (W - PAD - 20) / max(n - 1, 1)
    parts = [grid, _legend(models)]
    every = max(1, math.ceil(n / 8))  # at most ~8 date labels
    for i, label in enumerate(labels):
        if i % every == 0 or i == n - 1:
            x = PAD + i * dx
            parts.append(f'<text x="{x:.1f}" y="{H - PAD + 14}" text-anchor="middle">')
            parts.append(f"{esc(label)}</text>")
    for m in models:
        pts = [
            (PAD + i * dx, H - PAD - v / top * (H - 2 * PAD), v, tips[i])
            for i, v in enumerate(series[m])
            if v is not None and math.isfinite(v)
        ]
        c = color(m, models)
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in pts)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        parts += [
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{c}"><title>{esc(m)} {esc(tip)}: '
            f"{v:.4f}</title></circle>"
            for x, y, v, tip in pts
        ]
    return _svg(title, "".join(parts))


def _svg(title: str, body: str) -> str:
    return (
        f'<figure><svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{esc(title)}">{body}</svg><figcaption>{esc(title)}</figcaption></figure>'
    )


def table(rows: pl.DataFrame, index: str, columns: str, fmt: str = ".4f") -> str:
    """A pivot of ``value`` as an HTML table; the best value of each row in bold."""
    if rows.height == 0:
        return '<p class="muted">no figures</p>'
    wide = rows.pivot(on=columns, index=index, values="value", aggregate_function="first")
    cols = [c for c in wide.columns if c != index]
    if columns == "model":
        cols = ordered(cols)
    head = "".join(f"<th>{esc(c)}</th>" for c in [index, *cols])
    body = []
    for r in wide.iter_rows(named=True):
        nums = [r[c] for c in cols if isinstance(r[c], int | float) and math.isfinite(r[c])]
        best = max(nums, default=None)
        cells = [f"<td>{esc(r[index])}</td>"]
        for c in cols:
            v = r[c]
            ok = isinstance(v, int | float) and math.isfinite(v)
            cls = ' class="best"' if ok and v == best and len(set(nums)) > 1 else ""
            cells.append(f"<td{cls}>{format(v, fmt) if ok else '–'}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _protocol_section(rows: pl.DataFrame, protocol: str) -> str:
    out = [f"<h2>Protocol {esc(protocol)}</h2>"]
    for part in ("test", "validation"):
        mine = rows.filter((pl.col("protocol") == protocol) & (pl.col("split") == part))
        if mine.height == 0:
            continue
        everyone = mine.filter(pl.col("slice") == "all")
        users = everyone.filter(pl.col("metric") == "users")["value"].to_list()
        out.append(f"<h3>{esc(part)} ({max(users, default=0):.0f} users)</h3>")
        out.append("<div class='charts'>")
        ks = sorted({k for k in everyone["k"].to_list() if k})
        for metric in ("ndcg", "hr"):
            series = {
                m: [_value(everyone, m, metric, k) for k in ks] for m in everyone["model"].unique()
            }
            title = f"{metric.upper()}@K, {protocol} {part}"
            out.append(bar_chart(title, [f"@{k}" for k in ks], series))
        out.append("</div>")
        figures = everyone.filter(pl.col("k") > 0).with_columns(
            (pl.col("metric") + "@" + pl.col("k").cast(pl.Utf8)).alias("figure")
        )
        rank = pl.col("metric").replace_strict(FIGURES, list(range(len(FIGURES))), default=99)
        out.append(table(figures.sort(rank, "k"), "figure", "model"))
        k = 10 if 10 in ks else min(ks, default=0)
        at_k = mine.filter((pl.col("k") == k) | (pl.col("metric") == "users"))
        for metric in ("ndcg", "hr", "users"):
            sliced = at_k.filter(pl.col("metric") == metric)
            label = "users" if metric == "users" else f"{metric}@{k}"
            out.append(f"<h3>Slices: {esc(label)}, {esc(part)}</h3>")
            out.append(table(sliced, "slice", "model", ".0f" if metric == "users" else ".4f"))
    return "".join(out)


def _value(rows: pl.DataFrame, model: str, metric: str, k: int) -> float | None:
    got = rows.filter(
        (pl.col("model") == model) & (pl.col("metric") == metric) & (pl.col("k") == k)
    )
    return None if got.height == 0 else got["value"][0]


def _trend_section(history: pl.DataFrame) -> str:
    if history.height == 0:
        return ""
    out = ["<h2>Trend over runs (NDCG@10, all users)</h2><div class='charts'>"]
    runs = history.select("run_id", "as_of").unique(maintain_order=True)
    labels = [f"{a}" for a in runs["as_of"].to_list()]
    for (protocol, part), group in history.group_by(["protocol", "split"], maintain_order=True):
        series = {
            m: [
                next(
                    iter(group.filter((pl.col("run_id") == r) & (pl.col("model") == m))["value"]),
                    None,
                )
                for r in runs["run_id"].to_list()
            ]
            for m in group["model"].unique().to_list()
        }
        tips = [f"run {r}" for r in runs["run_id"].to_list()]
        out.append(line_chart(f"NDCG@10, {protocol} {part}", labels, series, tips))
    out.append("</div>")
    return "".join(out)


def render(rows: pl.DataFrame, history: pl.DataFrame) -> str:
    """The page of one run's ``eval_metrics`` rows and the trend rows (``eval_store.trend``)."""
    first = rows.row(0, named=True)
    head = (
        f"<h1>nightrec evaluation: run {esc(first['run_id'])}</h1>"
        f"<p>data as of <b>{esc(first['as_of'])}</b>, candidate model "
        f"<b>{esc(first['model_version'])}</b>, evaluated {esc(first['evaluated_at'])}. "
        "Ranking over all active items, each user's earlier items excluded; users without "
        "training items get popular items from every model.</p>"
    )
    sections = [_protocol_section(rows, p) for p in sorted(rows["protocol"].unique().to_list())]
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>nightrec evaluation {esc(first['run_id'])}</title><style>{CSS}</style></head>"
        f"<body>{head}{''.join(sections)}{_trend_section(history)}</body></html>"
    )


def write_report(settings: Settings, run_id: str, runs: int = 30) -> Path:
    """Write ``reports/<run_id>/report.html`` (and ``reports/latest.html`` when this run's
    date is the newest evaluated); returns the run's page."""
    rows = eval_store.run_rows(settings, run_id)
    if rows.height == 0:
        raise ContractError(f"run {run_id} has no evaluation figures: run `nightrec evaluate`")
    history = eval_store.trend(settings, "ndcg", 10, "all", runs)
    page = render(rows, history)
    out = eval_store.reports_dir(settings, run_id)
    out.mkdir(parents=True, exist_ok=True)
    path = _write(out / "report.html", page)
    newest = history["as_of"].max() if history.height else None
    if newest is None or rows["as_of"].max() >= newest:
        _write(eval_store.reports_dir(settings) / "latest.html", page)
    runs_seen = history["run_id"].n_unique() if history.height else 0
    log.info(
        "report: run %s, %d figures, %d runs in the trend -> %s",
        run_id,
        rows.height,
        runs_seen,
        path,
    )
    return path


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
