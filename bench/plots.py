"""The report's pictures, drawn from bench/run's raw measurements with matplotlib (installed
by bench/run into bench/.venv from bench/requirements.txt): SVG files next to the report.

- write throughput by connection count, Bunker against etcd;
- write latency distributions (CDF) at each connection count, Bunker against etcd;
- replication lag over time and its distribution, Bunker against PostgreSQL.

Each function returns the file it wrote, or None when the run measured nothing to draw.
"""

import statistics

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

BUNKER, PEER = "#1f6feb", "#8c8c8c"
# Bunker's replay lag as the primary measures it (the way PostgreSQL's replay_lag is measured).
BUNKER_REPLAY = "#0a8f5a"
# Bunker's probed writes (figure 4: polled back to back from their acknowledgement).
BUNKER_PROBE = "#b35900"
# Identical bytes for identical data: no timestamp or random ids in the SVG.
matplotlib.rcParams["svg.hashsalt"] = "bunker-bench"
SVG_META = {"Date": None, "Creator": None}


def _rows(raw, figure, system, **match):
    return [r for r in raw if r.get("figure") == figure and r.get("system") == system
            and all(r.get(k) == v for k, v in match.items())]


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata=SVG_META)
    plt.close(fig)
    return path


def write_throughput(raw, path):
    conns = sorted({r["conns"] for r in raw if r.get("figure") == "write"})
    if not conns:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for system, color, label in (("bunker", BUNKER, "Bunker"), ("etcd", PEER, "etcd")):
        medians = [statistics.median([r["ops_per_sec"] for r in _rows(raw, "write", system, conns=c)] or [0])
                   for c in conns]
        ax.plot(conns, medians, marker="o", color=color, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(conns, [str(c) for c in conns])
    ax.set_xlabel("connections")
    ax.set_ylabel("durable writes / s (median)")
    ax.set_title("KV v2 writes, 256-byte values")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _log_x(ax, label):
    """A log-scale x axis labelled at the decades only (minor labels crowd small panels)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def _cdf(ax, points, color, label, **style):
    if not points:
        return
    ms = [max(p[1], 0.001) for p in points]
    ax.plot(ms, [p[0] * 100 for p in points], color=color, label=label, **style)


def write_latency(raw, path):
    conns = sorted({r["conns"] for r in raw if r.get("figure") == "write" and r.get("cdf_ms")})
    if not conns:
        return None
    fig, axes = plt.subplots(1, len(conns), figsize=(3.2 * len(conns), 3.4), sharey=True, squeeze=False)
    for ax, c in zip(axes[0], conns):
        for system, color, label in (("bunker", BUNKER, "Bunker"), ("etcd", PEER, "etcd")):
            for i, r in enumerate(_rows(raw, "write", system, conns=c)):
                _cdf(ax, r.get("cdf_ms"), color, label if i == 0 else None, alpha=0.9 if i == 0 else 0.4)
        _log_x(ax, "latency, ms (log)")
        ax.set_title(f"{c} connection{'s' if c > 1 else ''}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("requests at or below, %")
    axes[0][0].legend(loc="lower right")
    return _save(fig, path)


def _lag_rows(raw, system, load):
    return [r for r in _rows(raw, "lag", system) if r.get("load", "half") == load]


def lag(raw, path_time, path_cdf):
    bunker, pg = _lag_rows(raw, "bunker", "half"), _lag_rows(raw, "postgres", "half")
    if not (bunker or pg):
        return None, None
    if not any(r.get("series") or r.get("cdf_ms") for r in bunker + pg):
        return None, None  # a run from before the distributions were recorded
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for rows, color, label in ((bunker, BUNKER, "Bunker (per write)"), (pg, PEER, "PostgreSQL (replay_lag samples)")):
        series = rows[0].get("series") if rows else None
        if series:
            ax.plot([p[0] for p in series], [p[1] for p in series], color=color, label=label,
                    linewidth=0.8, marker=".", markersize=2)
    ax.set_xlabel("seconds into the run (first repetition)")
    ax.set_ylabel("replication lag, ms")
    ax.set_title("Replication lag over time, half the primary's capacity")
    ax.grid(alpha=0.3)
    ax.legend()
    drawn_time = _save(fig, path_time)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for load, style, suffix in (("half", "-", "half capacity"), ("high", "--", "90 % of capacity")):
        for system, color, name in (("bunker", BUNKER, "Bunker"), ("postgres", PEER, "PostgreSQL")):
            for i, r in enumerate(_lag_rows(raw, system, load)):
                _cdf(ax, r.get("cdf_ms"), color, f"{name}, {suffix}" if i == 0 else None,
                     linestyle=style, alpha=0.9 if i == 0 else 0.4)
        for i, r in enumerate(_lag_rows(raw, "bunker", load)):
            _cdf(ax, r.get("replay_lag_cdf_ms"), BUNKER_REPLAY,
                 f"Bunker replay_lag samples, {suffix}" if i == 0 else None,
                 linestyle=style, alpha=0.9 if i == 0 else 0.4)
        for i, r in enumerate(_lag_rows(raw, "bunker", load)):
            _cdf(ax, r.get("probe_cdf_ms"), BUNKER_PROBE,
                 f"Bunker probed writes, {suffix}" if i == 0 else None,
                 linestyle=style, alpha=0.9 if i == 0 else 0.4)
    _log_x(ax, "replication lag, ms (log)")
    ax.set_ylabel("writes (or samples) at or below, %")
    ax.set_title("Replication lag distribution")
    ax.grid(alpha=0.3)
    # Upper left: the curves rise between 0.1 and 10 ms, and eight entries would cover them.
    ax.legend(loc="upper left", fontsize="x-small")
    return drawn_time, _save(fig, path_cdf)


def draw(raw, stem):
    """Every picture for `raw`, as files `<stem>-<name>.svg`; returns [(title, path)]."""
    drawn = [("Write throughput by connections", write_throughput(raw, f"{stem}-writes.svg")),
             ("Write latency distributions", write_latency(raw, f"{stem}-write-latency.svg"))]
    over_time, cdf = lag(raw, f"{stem}-lag-time.svg", f"{stem}-lag-cdf.svg")
    drawn += [("Replication lag over time", over_time), ("Replication lag distribution", cdf)]
    return [(title, path) for title, path in drawn if path]
