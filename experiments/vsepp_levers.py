"""The dev table of VSE++'s levers: one row per finished run under RUNS (best dev epoch, dev R@1
and rsum, training minutes), written as dev-levers.json/.md. A run named ``<setting>-s<N>`` is
seed N of ``<setting>``; a setting's rsum is the mean over its seeds, with their spread. The run
of the setting with the best mean dev rsum (its first seed) is written to chosen.txt; the smallest
run as good as dev can tell (within twice the largest seed spread of it) to bundle.txt.

    .venv/bin/python experiments/vsepp_levers.py runs/vsepp-f8k-levers results/vsepp-flickr8k
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(runs: Path) -> list[dict]:
    out = []
    for meta_file in sorted(runs.glob("*/best.json")):
        run = meta_file.parent
        best = json.loads(meta_file.read_text())
        config = json.loads((run / "config.json").read_text())
        epochs = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
        out.append({"setting": run.name, "preset": config["preset"], "extractor": config["extractor"],
                    "overrides": config["overrides"], "epochs": len(epochs), "best_epoch": best["epoch"] + 1,
                    "dev_rsum": round(best["dev"]["rsum"], 2), "dev_i2t_r1": best["dev"]["i2t"]["r1"],
                    "dev_t2i_r1": best["dev"]["t2i"]["r1"],
                    "train_minutes": round(sum(e["train_seconds"] for e in epochs) / 60, 1)})
    return sorted(out, key=lambda r: -r["dev_rsum"])


def by_setting(table: list[dict]) -> dict[str, list[dict]]:
    """Runs grouped by setting (``lite2-mean-s1`` is seed 1 of ``lite2-mean``), first seed first."""
    groups: dict[str, list[dict]] = {}
    for r in sorted(table, key=lambda r: r["setting"]):
        base, _, seed = r["setting"].rpartition("-s")
        groups.setdefault(base if base and seed.isdigit() else r["setting"], []).append(r)
    return groups


def main(runs: Path, out: Path) -> None:
    table = rows(runs)
    if not table:
        raise SystemExit(f"no finished run under {runs}")
    groups = by_setting(table)
    for setting, seeds in groups.items():
        rsums = [r["dev_rsum"] for r in seeds]
        for r in seeds:
            r["setting_mean_rsum"], r["setting_seeds"] = round(sum(rsums) / len(rsums), 2), len(rsums)
            r["setting_spread"] = round(max(rsums) - min(rsums), 2)
    (out / "dev-levers.json").write_text(json.dumps(table, indent=1))
    lines = ["| setting | extractor | overrides | epochs (best) | dev i2t R@1 | dev t2i R@1 | dev rsum "
             "| seeds: mean (spread) | train min |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        sets = " ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        seeds = f"{r['setting_mean_rsum']:.1f} ({r['setting_spread']:.1f}, {r['setting_seeds']} seeds)" \
            if r["setting_seeds"] > 1 else "1 seed"
        lines.append(f"| {r['setting']} | {r['extractor']} | {sets} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['dev_i2t_r1']:.1f} | {r['dev_t2i_r1']:.1f} | {r['dev_rsum']:.1f} | {seeds} "
                     f"| {r['train_minutes']} |")
    (out / "dev-levers.md").write_text("\n".join(lines) + "\n")
    best = max(groups, key=lambda g: groups[g][0]["setting_mean_rsum"])
    (out / "chosen.txt").write_text(groups[best][0]["setting"] + "\n")
    # The model to ship (experiments/bundle_pretrained.sh): the smallest run among the settings
    # whose mean is within twice the largest spread between seeds of the best (a difference of two
    # noisy means, each as uncertain as one spread), i.e. as good as dev can tell.
    spread = max(r["setting_spread"] for r in table)
    ties = [g for g in groups if groups[best][0]["setting_mean_rsum"] - groups[g][0]["setting_mean_rsum"] <= 2 * spread]
    small = min(ties, key=lambda g: (runs / groups[g][0]["setting"] / "best.safetensors").stat().st_size)
    (out / "bundle.txt").write_text(groups[small][0]["setting"] + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
