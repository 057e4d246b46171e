"""Tables and curves of experiments/cmmn.sh: results/cmmn/report.md, k_curve.png, lambda_curve.png.

Usage: python experiments/cmmn_report.py RUNS_DIR OUT_DIR   (reads the JSONs that cmmn.sh wrote)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BITS = (16, 32, 64, 128)
KS = (0, 1, 5, 10, 20, 50, 100)
LAMBDAS = ("0", "1e-4", "1e-3", "1e-2", "1e-1", "1")


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def from_summary(path: Path, key: type) -> list[tuple]:
    """The curve's (x, {"mean_mAP": ...}) points from its committed summary, for a machine without
    the curve's runs (the report is regenerated after any stage, and must not lose them)."""
    summary = load(path) or {}
    return [(key(x), {"mean_mAP": m}) for x, m in summary.items()]


def pair_table(result: dict) -> list[str]:
    """Table 3's layout: one row per query modality, one column per target, real-valued (binary) mAP."""
    mods = list(dict.fromkeys(p.split("->")[0] for p in result["pairs"]))
    lines = ["| query \\ target | " + " | ".join(mods) + " |", "|---" * (len(mods) + 1) + "|"]
    for q in mods:
        cells = []
        for t in mods:
            r = result["pairs"].get(f"{q}->{t}")
            cells.append("—" if r is None else f"{100 * r['real']['mAP']:.1f} ({100 * r['binary']['mAP']:.1f})")
        lines.append(f"| {q} | " + " | ".join(cells) + " |")
    m = result["mean_mAP"]
    lines.append(f"\nMean over the {len(result['pairs'])} pairs: real-valued {100 * m['real']:.1f}, binary "
                 f"{100 * m['binary']:.1f}, random ranking {100 * m['chance']:.1f}.")
    return lines


def bits_table(results: dict[int, dict], title: str) -> list[str]:
    """mAP per code length: every pair for two modalities, the mean over pairs for more."""
    pairs = list(next(iter(results.values()))["pairs"])
    shown = pairs if len(pairs) <= 2 else []
    head = "| bits | " + "".join(f"{p} real / binary mAP | " for p in shown) + "mean real / binary |"
    lines = [f"**{title}**", "", head, "|---" * (len(shown) + 2) + "|"]
    for bits, r in results.items():
        cells = [f"{100 * r['pairs'][p]['real']['mAP']:.1f} / {100 * r['pairs'][p]['binary']['mAP']:.1f}" for p in shown]
        lines.append(f"| {bits} | " + "".join(c + " | " for c in cells) +
                     f"{100 * r['mean_mAP']['real']:.1f} / {100 * r['mean_mAP']['binary']:.1f} |")
    return lines


def memory_seeds_section(out: Path) -> list[str]:
    """Flickr8k memory (k = 10) vs none (k = 0), 64 bits, seeds 0-2: per-seed mean mAP, means, spreads, verdict.
    Verdict per kind (real, binary), on unrounded values: the claim holds only if mean(k = 10) - mean(k = 0)
    exceeds the larger of the two seed spreads (max - min)."""
    res = {k: [load(out / f"flickr8k-memory-k{k}-s{s}.json") for s in (0, 1, 2)] for k in (0, 10)}
    if not all(all(v) for v in res.values()):
        return []
    lines = ["## Flickr8k: memory (k = 10) vs none (k = 0), 64 bits, 3 seeds", "",
             "Test mean mAP over image->text and text->image, real-valued / binary, %.", "",
             "| k | seed 0 | seed 1 | seed 2 | mean | spread (max − min) |", "|---|---|---|---|---|---|"]
    stats = {}
    for k, rs in res.items():
        vals = {kind: [100 * r["mean_mAP"][kind] for r in rs] for kind in ("real", "binary")}
        stats[k] = {kind: (sum(v) / len(v), max(v) - min(v)) for kind, v in vals.items()}
        lines.append(f"| {k} | " + " | ".join(f"{vals['real'][i]:.1f} / {vals['binary'][i]:.1f}" for i in range(3)) +
                     " | " + " | ".join(f"{stats[k]['real'][j]:.1f} / {stats[k]['binary'][j]:.1f}" for j in (0, 1)) + " |")
    lines.append("")
    for kind in ("real", "binary"):
        diff = stats[10][kind][0] - stats[0][kind][0]
        spread = max(stats[10][kind][1], stats[0][kind][1])
        verdict = ("holds" if diff > spread else "does not hold (within seed spread)" if diff >= -spread
                   else "does not hold (no memory is better by more than the seed spread)")
        lines.append(f"- {kind}: mean(k = 10) − mean(k = 0) = {diff:+.1f}, larger seed spread {spread:.1f}: "
                     f"the memory claim {verdict}.")
    return lines + [""]


def curve(xs: list, results: list[dict], xlabel: str, path: Path, title: str, log: bool) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    pos = list(range(len(xs)))
    for kind, style in (("real", "o-"), ("binary", "s--")):
        ax.plot(pos, [100 * r["mean_mAP"][kind] for r in results], style, label=f"{kind} (h / b)")
    ax.axhline(100 * results[0]["mean_mAP"]["chance"], color="grey", lw=0.8, ls=":", label="random ranking")
    ax.set_xticks(pos, [str(x) for x in xs])
    ax.set(xlabel=xlabel, ylabel="mean mAP over modality pairs (%)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(runs: Path, out: Path) -> None:
    lines = ["# CMMN results", "", "Generated by `bash experiments/cmmn.sh` (see results/README.md for the reading).", ""]
    scenes = {b: r for b in BITS if (r := load(out / f"scenes-b{b}.json"))}
    if 64 in scenes:
        lines += ["## Synthetic CMPlaces-like set, every query -> target pair (Table 3 layout)", "",
                  "Test queries against the target modality's training split; real-valued (Euclidean on h) "
                  "and, in brackets, binary (Hamming on 64-bit b) mAP, %.", ""]
        lines += pair_table(scenes[64]) + [""]
        lines += bits_table(scenes, "Synthetic set: code length") + [""]
    f8k = {b: r for b in BITS if (r := load(out / f"flickr8k-b{b}.json"))}
    if f8k:
        lines += ["## Flickr8k, caption-keyword labels (image <-> text)", "",
                  "The classes are keywords voted from each image's own captions, so a caption's labels are "
                  "largely its own words: text -> image is easy under this protocol by construction "
                  "(results/label-protocol/oracle.json: the ceiling of a labels-only model on the pair protocol).", ""]
        lines += bits_table(f8k, "Flickr8k test queries, training split as database") + [""]
        r = f8k.get(64, next(iter(f8k.values())))
        lines += ["| 64-bit, pair | chance | real mAP | real mAP@500 | real P@10 | binary mAP | binary mAP@500 | binary P@10 |",
                  "|---|---|---|---|---|---|---|---|"]
        for pair, v in r["pairs"].items():
            lines.append(f"| {pair} | {100 * v['chance']:.1f} | " + " | ".join(
                f"{100 * v[k][m]:.1f}" for k in ("real", "binary") for m in ("mAP", "mAP@500", "P@10")) + " |")
        lines.append("")
    aligned = load(out / "flickr8k-aligned-b32.json")
    if aligned:
        lines += ["## Flickr8k aligned (one item per image, text = its captions' mean), 32 bits: the COCO protocol",
                  "", "Test queries against the training split; `fused` = one code per database item, "
                  "b = (h_image + h_text > 1).", "",
                  "| query -> database | mAP | mAP@500 | P@10 |", "|---|---|---|---|"]
        for pair, v in aligned["pairs"].items():
            for kind in ("real", "binary"):
                lines.append(f"| {pair} ({kind}) | " + " | ".join(
                    f"{100 * v[kind][m]:.1f}" for m in ("mAP", "mAP@500", "P@10")) + " |")
        for pair, v in aligned["fused"].items():
            lines.append(f"| {pair} (binary) | " + " | ".join(f"{100 * v[m]:.1f}" for m in ("mAP", "mAP@500", "P@10")) + " |")
        lines += [f"\nChance (mAP of a random ranking): {100 * next(iter(aligned['pairs'].values()))['chance']:.1f}.", ""]
    lines += memory_seeds_section(out)
    ks = [(k, r) for k in KS if (r := load(runs / f"scenes-k{k}.json"))] or from_summary(out / "ablation-k.json", int)
    (out / "ablation-k.json").write_text(json.dumps({str(k): r["mean_mAP"] for k, r in ks}, indent=1))
    if ks:
        curve([k for k, _ in ks], [r for _, r in ks], "memory size k (per class and modality)", out / "k_curve.png",
              "CMMN: effect of memory size (Fig. 4a)", False)
        lines += ["## Memory size k and Jacobian weight λ (synthetic set, 64 bits)", "", "![k](k_curve.png)",
                  "", "| k | " + " | ".join(str(k) for k, _ in ks) + " |", "|---" * (len(ks) + 1) + "|",
                  "| real mAP | " + " | ".join(f"{100 * r['mean_mAP']['real']:.1f}" for _, r in ks) + " |",
                  "| binary mAP | " + " | ".join(f"{100 * r['mean_mAP']['binary']:.1f}" for _, r in ks) + " |", ""]
    seeds = {f"k={k}": [100 * r["mean_mAP"]["real"] for s in (0, 1, 2)
                        if (r := load(runs / (f"scenes-k{k}.json" if s == 0 else f"scenes-k{k}-s{s}.json")))]
             for k in (0, 10)}
    if not any(seeds.values()) and load(out / "ablation-k-seeds.json"):  # runs not on this machine
        seeds = load(out / "ablation-k-seeds.json")
    (out / "ablation-k-seeds.json").write_text(json.dumps(seeds, indent=1))
    if all(len(v) == 3 for v in seeds.values()):
        lines += ["Three seeds (each its own synthetic draw and initialisation), real-valued mean mAP: " + "; ".join(
            f"{name}: {' / '.join(f'{v:.1f}' for v in vals)} (mean {sum(vals) / 3:.1f})" for name, vals in seeds.items())
            + ".", ""]
    lams = [(lam, r) for lam in LAMBDAS if (r := load(runs / f"scenes-lambda{lam}.json"))] or \
        from_summary(out / "ablation-lambda.json", str)
    (out / "ablation-lambda.json").write_text(json.dumps({lam: r["mean_mAP"] for lam, r in lams}, indent=1))
    if lams:
        curve([lam for lam, _ in lams], [r for _, r in lams], "Jacobian weight λ", out / "lambda_curve.png",
              "CMMN: effect of the Jacobian penalty (Fig. 4b)", True)
        lines += ["![lambda](lambda_curve.png)", "", "| λ | " + " | ".join(lam for lam, _ in lams) + " |",
                  "|---" * (len(lams) + 1) + "|",
                  "| real mAP | " + " | ".join(f"{100 * r['mean_mAP']['real']:.1f}" for _, r in lams) + " |",
                  "| binary mAP | " + " | ".join(f"{100 * r['mean_mAP']['binary']:.1f}" for _, r in lams) + " |",
                  "| real − binary | " + " | ".join(
                      f"{100 * (r['mean_mAP']['real'] - r['mean_mAP']['binary']):.1f}" for _, r in lams) + " |", ""]
    (out / "report.md").write_text("\n".join(lines))
    print(f"wrote {out / 'report.md'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
