"""The dev table of VSE++'s levers: one row per finished run under RUNS (best dev epoch, dev R@1
and rsum, training minutes, peak memory where logged), written as dev-levers.json/.md; the best
dev rsum is written to chosen.txt.

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


def main(runs: Path, out: Path) -> None:
    table = rows(runs)
    if not table:
        raise SystemExit(f"no finished run under {runs}")
    (out / "dev-levers.json").write_text(json.dumps(table, indent=1))
    lines = ["| setting | extractor | overrides | epochs (best) | dev i2t R@1 | dev t2i R@1 | dev rsum | train min |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        sets = " ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        lines.append(f"| {r['setting']} | {r['extractor']} | {sets} | {r['epochs']} ({r['best_epoch']}) | "
                     f"{r['dev_i2t_r1']:.1f} | {r['dev_t2i_r1']:.1f} | {r['dev_rsum']:.1f} | {r['train_minutes']} |")
    (out / "dev-levers.md").write_text("\n".join(lines) + "\n")
    (out / "chosen.txt").write_text(table[0]["setting"] + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
