#!/usr/bin/env python3
"""Makespans of the skewed suite (bench/skewed.sh: 48 x 0.5 s, 12 x 2 s, 4 x 8 s, in that
glob order) on 8 slots, for list scheduling with no overhead: each file goes to the slot that
frees first, in queue order. Compares glob order, slowest first and random orders, to show
what a first run without history can reach. Usage: bench/orders.py [ORDERS] (default 2000).
Results: docs/benchmarks.md."""
import heapq
import random
import statistics
import sys

SLOTS = 8
SUITE = [0.5] * 48 + [2.0] * 12 + [8.0] * 4


def makespan(order):
    free_at = [0.0] * SLOTS
    for seconds in order:
        start = heapq.heappop(free_at)
        heapq.heappush(free_at, start + seconds)
    return max(free_at)


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    spans = sorted(makespan(random.Random(seed).sample(SUITE, len(SUITE))) for seed in range(count))
    print(f"glob order:    {makespan(SUITE):.1f} s")
    print(f"slowest first: {makespan(sorted(SUITE, reverse=True)):.1f} s")
    print(f"{count} random orders: median {statistics.median(spans):.1f} s, "
          f"90th percentile {spans[int(count * 0.9)]:.1f} s, best {spans[0]:.1f} s, worst {spans[-1]:.1f} s")


if __name__ == "__main__":
    main()
