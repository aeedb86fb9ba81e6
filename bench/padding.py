"""Padding left in the batches tether builds, with and without length grouping and packing.

Layouts: ``plain`` (prompt‖answer rows, padded), ``plain packed`` (``packing=true``: the same
sequences back to back in one row), ``shared`` (prefix sharing: prompt‖chosen‖rejected per
row, padded) and ``shared packed`` (``prefix_sharing=true packing=true``: every pair in one
row).

    python bench/padding.py

Counts token positions the model computes (rows × width) against real tokens, over one epoch
of a workload whose lengths vary (the benchmark's ±15 % and a wider ±60 %). Pure bookkeeping:
the cost of a position is about the same whichever lever removes it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from workload import Workload, make_pairs  # noqa: E402

from tether.data.batching import step_batches  # noqa: E402
from tether.data.tokenization import TokenizedPair  # noqa: E402
from tether.model.prefix_sharing import make_batch  # noqa: E402

LAYOUTS = {"plain": (False, False), "plain packed": (False, True), "shared": (True, False),
           "shared packed": (True, True)}  # (prefix_sharing, packing)


def rows_of(w: Workload) -> list[TokenizedPair]:
    def ids(text: str) -> list[int]:
        return [int(t[1:]) for t in text.split()]

    return [TokenizedPair([1, *ids(p["prompt"])], [*ids(p["chosen"]), 2],
                          [*ids(p["rejected"]), 2]) for p in make_pairs(w)]


def positions(rows: list[TokenizedPair], group: bool, layout: str, batch: int = 8) -> int:
    total = 0
    for step in step_batches([r.length for r in rows], batch, 0, 0, group):
        total += make_batch([rows[i] for i in step], step, 0, *LAYOUTS[layout]).input_ids.numel()
    return total


def main() -> None:
    print("| lengths | layout | length grouping | positions computed | real tokens (plain count) "
          "| positions ÷ plain real tokens |\n|---|---|---|---:|---:|---:|")
    for spread in (0.15, 0.6):
        rows = rows_of(replace(Workload(), pairs=400, spread=spread))
        real = sum(2 * len(r.prompt) + len(r.chosen) + len(r.rejected) for r in rows)
        for layout in LAYOUTS:
            for group in (False, True):
                n = positions(rows, group, layout)
                print(f"| ±{spread:.0%} | {layout} | {'on' if group else 'off'} | {n} | {real} "
                      f"| {n / real:.3f} |")


if __name__ == "__main__":
    main()
