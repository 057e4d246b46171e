"""Collect the evaluation JSONs of a set of runs into one table (Markdown + JSON) and a figure
(R@1 per row, and every row's training curve: dev rsum per epoch).

    python experiments/ablation_table.py OUT_PREFIX TITLE NAME=EVAL_JSON [NAME=EVAL_JSON ...]
Each EVAL_JSON is written by ``xmr eval --json``; the row uses its two-step result with the largest
K when the run was evaluated by two-step only, else the exhaustive one. The run's best dev epoch,
training time and parameter count come from the run folder named in the JSON (or, for a committed
result whose run is not on this machine, from the ``metrics.jsonl`` and ``config.json`` beside it).
When an EVAL_JSON holds a k-shot table (``xmr eval --kshot``), columns "K-shot i2t R@1" and
"K-shot t2i R@1 (N)" follow for every k (N: the subset's pairs; "-" for a row without it).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def row(name: str, path: Path) -> dict:
    res = json.loads(path.read_text())
    scored = res if "i2t" in res else max(res["two_step"], key=lambda r: r["k"])
    run = Path(res["run"])
    metrics_file, config_file = _copies(path, run)
    metrics = [json.loads(x) for x in metrics_file.read_text().splitlines()]
    best = json.loads((run / "best.json").read_text()) if (run / "best.json").is_file() else \
        max(metrics, key=lambda m: m["dev_rsum"])
    return {"setting": name, "protocol": "exhaustive" if scored is res else f"two-step K={scored['k']}",
            "i2t": {k: v for k, v in scored["i2t"].items() if k.startswith("r")},
            "t2i": {k: v for k, v in scored["t2i"].items() if k.startswith("r")},
            "rsum": scored["rsum"], "mR": scored["mR"], "best_epoch": best["epoch"] + 1,
            "epochs_run": len(metrics), "train_minutes": sum(m["train_seconds"] for m in metrics) / 60,
            "dev_rsum": [m.get("dev_rsum") for m in metrics], "train_loss": [m.get("train_loss") for m in metrics],
            "overrides": json.loads(config_file.read_text())["overrides"] if config_file.is_file() else None,
            **({"kshot": {int(k): _kshot_cell(v) for k, v in res["kshot"].items()}} if "kshot" in res else {})}


def _copies(path: Path, run: Path) -> tuple[Path, Path]:
    """A result's metrics and config: the copies made beside ``SPLIT-NAME.json`` for it
    (``metrics-NAME.jsonl``, ``config-NAME.json``) where they exist, else its run folder's, else
    (a committed result whose run is not on this machine) the experiment's main copies beside it."""
    name = path.stem.split("-", 1)[1] if "-" in path.stem else ""
    if name and (path.parent / f"metrics-{name}.jsonl").is_file():
        return path.parent / f"metrics-{name}.jsonl", path.parent / f"config-{name}.json"
    where = run if run.is_dir() else path.parent
    return where / "metrics.jsonl", where / "config.json"


def _kshot_cell(row: dict) -> dict:
    """A k-shot row's size and R@1 both ways (image->text per pair; None for an empty subset)."""
    r1 = lambda d: None if row.get(d) is None else row[d]["r1"]  # noqa: E731
    return {"n": row["n"], "n_words": row.get("n_words"), "i2t_r1": r1("i2t"), "t2i_r1": r1("t2i"),
            "mR": row.get("mR")}


def _shot_cells(cell: dict | None) -> str:
    if cell is None:
        return " - | - |"
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    return f" {fmt(cell['i2t_r1'])} | {fmt(cell['t2i_r1'])} ({cell['n']}) |"


def main() -> None:
    out, title, specs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    rows = [row(name, Path(path)) for name, path in (spec.rsplit("=", 1) for spec in specs)]
    high = all("r100" in r["i2t"] for r in rows)  # two-step results also give R@20/50/100
    ks = ("r1", "r5", "r10", "r20", "r50", "r100") if high else ("r1", "r5", "r10")
    names = " | ".join(f"{d} R@{k[1:]}" if k == "r1" else f"R@{k[1:]}" for d in ("i2t", "t2i") for k in ks)
    shots = sorted({k for r in rows for k in r.get("kshot", {})})
    shot_names = "".join(f" {k}-shot i2t R@1 | {k}-shot t2i R@1 (N) |" for k in shots)
    lines = [f"### {title}", "", f"| setting | protocol | {names} | rsum | best epoch / run | train min |"
             f"{shot_names}", "|---|---|" + "---|" * (2 * len(ks) + 3 + 2 * len(shots))]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['protocol']} | " + " | ".join(
            f"{r[d][k]:.1f}" for d in ("i2t", "t2i") for k in ks)
            + f" | {r['rsum']:.1f} | {r['best_epoch']} / {r['epochs_run']} | {r['train_minutes']:.1f} |"
            + "".join(_shot_cells(r.get("kshot", {}).get(k)) for k in shots))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax, curves) = plt.subplots(1, 2, figsize=(5 + 0.9 * len(rows), 3.6),
                                     gridspec_kw={"width_ratios": [0.9 * len(rows), 4]})
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["i2t"]["r1"] for r in rows], 0.4, label="image→text R@1")
    ax.bar([i + 0.2 for i in x], [r["t2i"]["r1"] for r in rows], 0.4, label="text→image R@1")
    ax.set_xticks(list(x), [r["setting"] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="R@1 (%)")  # a table of test or of dev results (its title says which)
    ax.legend(fontsize=7)
    for r in rows:
        points = [(e + 1, v) for e, v in enumerate(r["dev_rsum"]) if v is not None]
        if points:
            curves.plot(*zip(*points), marker="o", ms=3, label=r["setting"])
    curves.set(xlabel="epoch", ylabel="dev rsum", title="training curves")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
