"""``report.json`` and PNG plots of the metric and epsilon per round."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedtrain.privacy import atomic_write_bytes

__all__ = [
    "BASELINES",
    "baseline_of",
    "build_report",
    "compare_rows",
    "format_table",
    "load_report",
    "plot_compare",
    "plot_rounds",
    "summary_line",
    "write_report",
]

MAX_REPORT_BYTES = 64 << 20
"""A ``report.json`` larger than this is refused by :func:`load_report`."""

BASELINES = {
    "accuracy": ("majority_accuracy", "majority-class rate"),
    "token_accuracy": ("all_o_token_accuracy", "all-'O' rate"),
}
"""metric -> (its trivial baseline's metric key, a label for it)."""


def baseline_of(
    metric: str, metrics: Mapping[str, Any]
) -> tuple[str, str, float] | None:
    """The trivial baseline of ``metric`` in ``metrics``: (key, label, value) or None.

    Accuracy is compared with the majority-class rate, token accuracy with the
    all-'O' rate; entity F1 and loss have no such baseline (None).
    """
    b = BASELINES.get(metric)
    if b is None or metrics.get(b[0]) is None:
        return None
    return b[0], b[1], float(metrics[b[0]])


def summary_line(report: Mapping[str, Any]) -> str:
    """One line: where the main metric ended, against its trivial baseline.

    For NER (main metric entity F1) the token accuracy is set against the all-'O'
    rate as well.
    """
    final = report.get("final_metrics", {})
    key = str(report["main_metric"])
    parts = []
    for m in dict.fromkeys([key, "token_accuracy"]):
        v = final.get(m)
        if v is None:
            continue
        b = baseline_of(m, final)
        if b is None:
            parts.append(f"{m} {v:.4f}")
        else:
            parts.append(
                f"{m} {v:.4f} vs {b[1]} {b[2]:.4f}: {v - b[2]:+.4f} "
                f"({'above' if v > b[2] else 'NOT above'} the baseline)"
            )
    pv = report.get("privacy") or {}
    eps = pv.get("final_epsilon")
    if pv.get("level", "none") == "none" or eps is None:
        tail = "no DP"
    else:
        tail = (
            f"epsilon {eps:.3g} at delta {pv.get('delta', 0):g} ({pv['level']} level)"
        )
    return "final: " + "; ".join(parts) + f"; {tail}"


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def build_report(
    *,
    main_metric: str,
    initial_metrics: Mapping[str, float],
    final_metrics: Mapping[str, float],
    rounds: Sequence[Mapping[str, Any]],
    base_model: str,
    num_labels: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the report dict (infinite/NaN values become null).

    ``rounds`` entries must have ``round``, ``metrics`` and ``epsilon`` (None or
    infinity when the run gives no DP guarantee); other keys are kept.

    Returns:
        The report.
    """
    rep: dict[str, Any] = {
        "main_metric": main_metric,
        "initial_metrics": dict(initial_metrics),
        "final_metrics": dict(final_metrics),
        "rounds": [dict(r) for r in rounds],
        "base_model": base_model,
        "num_labels": num_labels,
    }
    rep.update(extra or {})
    out: dict[str, Any] = _finite(rep)
    return out


def write_report(path: str | os.PathLike[str], report: Mapping[str, Any]) -> Path:
    """Write ``report.json`` atomically (strict JSON)."""
    p = Path(path)
    atomic_write_bytes(p, json.dumps(report, indent=2, allow_nan=False).encode())
    return p


def plot_rounds(
    report: Mapping[str, Any], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Plot the main metric and epsilon per round (matplotlib Agg).

    ``metric.png`` draws the metric's trivial baseline (majority-class rate for
    accuracy, all-'O' rate for token accuracy) as a dashed line beside it; for NER
    it also plots token accuracy against the all-'O' rate.

    Args:
        report: a report from :func:`build_report`.
        out_dir: where to write ``metric.png`` and ``epsilon.png``.

    Returns:
        The written files.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = report["main_metric"]
    xs = [0] + [r["round"] for r in report["rounds"]]
    ys = [report["initial_metrics"].get(key)] + [
        r["metrics"].get(key) for r in report["rounds"]
    ]
    files = []
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(xs, ys, marker="o", label=key)
    series = [key] if key != "entity_f1" else [key, "token_accuracy"]
    if len(series) > 1 and report["initial_metrics"].get(series[1]) is not None:
        ys2 = [report["initial_metrics"].get(series[1])] + [
            r["metrics"].get(series[1]) for r in report["rounds"]
        ]
        ax.plot(xs, ys2, marker="s", color="tab:green", label=series[1])
    for m, color in zip(series, ("tab:gray", "tab:olive"), strict=False):
        b = baseline_of(m, report.get("final_metrics") or report["initial_metrics"])
        if b is not None:
            ax.axhline(b[2], color=color, linestyle="--", label=f"{b[1]} ({b[2]:.3f})")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key if len(series) == 1 else "metric")
    ax.set_title(f"{key} per round")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    files.append(out / "metric.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    eps = [0.0] + [r.get("epsilon") for r in report["rounds"]]
    if all(e is not None for e in eps[1:]):
        ax.plot(xs, eps, marker="o", color="tab:red")
        ax.set_ylabel("epsilon spent")
    else:
        ax.text(
            0.5, 0.5, "no DP guarantee (privacy level 'none')", ha="center", va="center"
        )
        ax.set_ylabel("epsilon")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("privacy spent per round")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    files.append(out / "epsilon.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``report.json`` written by a run.

    Raises:
        ConfigError: missing, too large, not JSON, or without the fields a report has.
    """
    from fedtrain.errors import ConfigError

    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_REPORT_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {str(p)!r}: {exc.strerror}") from exc
    if len(raw) > MAX_REPORT_BYTES:
        raise ConfigError(f"{str(p)!r} is larger than {MAX_REPORT_BYTES} bytes")
    try:
        rep = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{str(p)!r} is not JSON: {exc}") from exc
    need = ("main_metric", "initial_metrics", "final_metrics", "rounds")
    if not isinstance(rep, dict) or not all(k in rep for k in need):
        raise ConfigError(f"{str(p)!r} is not a fedtrain report (needs {need})")
    if not isinstance(rep["rounds"], list) or not all(
        isinstance(r, dict) and "round" in r and isinstance(r.get("metrics"), dict)
        for r in rep["rounds"]
    ):
        raise ConfigError(f"{str(p)!r}: malformed 'rounds'")
    out: dict[str, Any] = rep
    return out


def compare_rows(
    reports: Sequence[Mapping[str, Any]], names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per run: configuration, final metric against its baseline, privacy.

    Args:
        reports: reports from :func:`load_report`.
        names: a name per run (e.g. its folder name).

    Returns:
        JSON-friendly rows.
    """
    rows = []
    for name, rep in zip(names, reports, strict=True):
        key = str(rep["main_metric"])
        final = rep.get("final_metrics") or {}
        b = baseline_of(key, final)
        pv = rep.get("privacy") or {}
        v = final.get(key)
        rows.append(
            {
                "run": name,
                "task": rep.get("task"),
                "backend": rep.get("backend"),
                "mode": rep.get("aggregation_mode"),
                "privacy": pv.get("level", "none"),
                "epsilon": pv.get("final_epsilon"),
                "delta": pv.get("delta") if pv.get("level", "none") != "none" else None,
                "metric": key,
                "initial": (rep.get("initial_metrics") or {}).get(key),
                "final": v,
                "baseline": None if b is None else b[2],
                "above_baseline": None if b is None or v is None else v - b[2],
                "rounds": len(rep["rounds"]),
                "wall_seconds": rep.get("wall_seconds"),
                "bytes_sent": sum(
                    int(r.get("bytes_sent_total") or 0) for r in rep["rounds"]
                ),
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows of :func:`compare_rows` as an aligned text table."""
    cols = [
        ("run", "run"),
        ("backend", "backend"),
        ("mode", "mode"),
        ("privacy", "privacy"),
        ("epsilon", "epsilon"),
        ("metric", "metric"),
        ("initial", "initial"),
        ("final", "final"),
        ("baseline", "baseline"),
        ("above_baseline", "+/- baseline"),
        ("rounds", "rounds"),
        ("wall_seconds", "wall s"),
        ("bytes_sent", "MB sent"),
    ]

    def cell(k: str, v: Any) -> str:
        if v is None:
            return "-"
        if k == "bytes_sent":
            return f"{v / 1e6:.1f}"
        if k == "above_baseline":
            return f"{v:+.4f}"
        if k == "wall_seconds":
            return f"{v:.0f}"
        if isinstance(v, float):
            return f"{v:.4g}" if k == "epsilon" else f"{v:.4f}"
        return str(v)

    table = [[h for _, h in cols]] + [
        [cell(k, r.get(k)) for k, _ in cols] for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def plot_compare(
    reports: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    out_dir: str | os.PathLike[str],
) -> Path:
    """``compare.png``: each run's main metric per round (baselines dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    keys = sorted({str(r["main_metric"]) for r in reports})
    seen: set[tuple[str, float]] = set()
    for name, rep in zip(names, reports, strict=True):
        key = str(rep["main_metric"])
        xs = [0] + [r["round"] for r in rep["rounds"]]
        ys = [rep["initial_metrics"].get(key)] + [
            r["metrics"].get(key) for r in rep["rounds"]
        ]
        label = name if len(keys) == 1 else f"{name} ({key})"
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        b = baseline_of(key, rep.get("final_metrics") or rep["initial_metrics"])
        if b is not None and (b[1], round(b[2], 4)) not in seen:
            seen.add((b[1], round(b[2], 4)))
            ax.axhline(
                b[2],
                color=line.get_color(),
                linestyle="--",
                alpha=0.6,
                label=f"{b[1]} ({b[2]:.3f})",
            )
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(keys[0] if len(keys) == 1 else "metric")
    ax.set_title("runs compared")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out_dir) / "compare.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
