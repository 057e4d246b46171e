"""Rows of an ablation table (``experiments/ablation_table.py`` JSON) that repeat one setting over
seeds, summarised per setting: mean and spread (max - min) over seeds of the test R@1 both ways,
test rsum, the best dev rsum and the k-shot R@1; and for every setting against ``--baseline``,
whether the difference of the means exceeds the larger of the two seed spreads ("holds").
Writes OUT.md and OUT.json.
    python experiments/seed_summary.py TABLE_JSON OUT --baseline SETTING
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def stats(values: list[float]) -> dict:
    return {"values": values, "mean": sum(values) / len(values), "spread": max(values) - min(values)}


def measures(row: dict) -> dict[str, float]:
    """What is compared, per run: test R@1 both ways, test rsum, best dev rsum, k-shot R@1 both ways."""
    out = {"test i2t R@1": row["i2t"]["r1"], "test t2i R@1": row["t2i"]["r1"], "test rsum": row["rsum"],
           "best dev rsum": max(v for v in row["dev_rsum"] if v is not None)}
    for k, cell in sorted(row.get("kshot", {}).items(), key=lambda kv: int(kv[0])):
        for side in ("i2t", "t2i"):
            if cell[f"{side}_r1"] is not None:
                out[f"{k}-shot {side} R@1"] = cell[f"{side}_r1"]
    return out


def verdict(diff: float, spread: float) -> str:
    if diff > spread:
        return "holds"
    return "within seed spread" if diff >= -spread else "baseline better beyond seed spread"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("table", type=Path)
    ap.add_argument("out")
    ap.add_argument("--baseline", required=True, help="the setting every other one is compared with")
    args = ap.parse_args()
    rows = json.loads(args.table.read_text())
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["setting"], []).append(measures(r))
    if args.baseline not in groups:
        raise SystemExit(f"no rows named {args.baseline!r}; settings: {sorted(groups)}")
    summary = {name: {m: stats([run[m] for run in runs]) for m in runs[0]} for name, runs in groups.items()}
    base = summary[args.baseline]
    claims = {name: {m: {"diff": s[m]["mean"] - base[m]["mean"],
                         "spread": max(s[m]["spread"], base[m]["spread"]),
                         "verdict": verdict(s[m]["mean"] - base[m]["mean"], max(s[m]["spread"], base[m]["spread"]))}
                     for m in s if m in base}
              for name, s in summary.items() if name != args.baseline}
    Path(args.out + ".json").write_text(json.dumps({"settings": summary, "against": args.baseline,
                                                    "claims": claims}, indent=1))
    lines = [f"### Seeds per setting ({args.table.name}; mean ± half the spread, max - min, over seeds)", "",
             "| setting | seeds | " + " | ".join(base) + " |", "|---|---|" + "---|" * len(base)]
    for name, s in summary.items():
        cells = [f"{s[m]['mean']:.1f} ± {s[m]['spread'] / 2:.1f}" if m in s else "-" for m in base]
        lines.append(f"| {name} | {len(groups[name])} | " + " | ".join(cells) + " |")
    lines += ["", f"Against `{args.baseline}` (difference of means; holds when it exceeds the larger seed spread):", ""]
    for name, c in claims.items():
        for m, v in c.items():
            lines.append(f"- {name}, {m}: {v['diff']:+.1f} (spread {v['spread']:.1f}): {v['verdict']}")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
