"""The Markdown table of experiments/revisiting_tail_trials.py's JSON.

    .venv/bin/python experiments/revisiting_tail_table.py TRIALS.json OUT.md
"""
from __future__ import annotations

import json
import sys


def main(src: str, out: str) -> None:
    d = json.loads(open(src).read())
    lines = [f"Revisiting dev trials on the cached frozen prefix ({d['images']} training images, {d['epochs']} epochs, "
             f"Adam {d['lr']}, batch {d['batch_size']} captions; {d['machine']['date']}, {d['machine']['cores']} "
             f"{d['machine']['cpu']} cores). Every trial: the paper's loss, batches per caption and Gallo's layout at "
             f"96² with 11 ImageNet blocks frozen, plus the settings shown.",
             "",
             "| trial | settings | dev rsum per epoch | best dev rsum (i2t / t2i R@1) | last softmax image / text | min per epoch |",
             "|---|---|---|---|---|---|"]
    for t in d["trials"]:
        rows = t["rows"]
        best = max(rows, key=lambda r: r["dev_rsum"])
        last = rows[-1]
        curve = ", ".join(f"{r['dev_rsum']:.1f}" for r in rows)
        lines.append(f"| {t['trial']} | {', '.join(t['pairs'])} | {curve} | "
                     f"{best['dev_rsum']:.1f} ({best['i2t_r1']:.1f} / {best['t2i_r1']:.1f}) | "
                     f"{last['train_softmax_image']:.2f} / {last['train_softmax_text']:.2f} | "
                     f"{sum(r['minutes'] for r in rows) / len(rows):.1f} |")
    open(out, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
