#!/usr/bin/env python3
"""How well an order of the attention forward's CTAs shares K/V blocks in L2, simulated on the
CPU (no GPU): 132 CTAs run at once, each walks its block row's key blocks one per step, a
finished CTA takes the next row of the order (two heads back to back), and every key block read
goes through an LRU cache of CAPACITY blocks (600 of 64 KB: about the H200's L2 less the other
traffic). Prints the miss rate per order; lower is better. On the radial masks of the bench it
ranked the orders as the H200 did (session 24, NOTES-sparse-attention-sm90.md).

    tessera mask --frames 60 --tokens-per-frame 3840 --decay 0.95 --json > h60.json
    python3 row_order_sim.py longest,natural,bins16,bins24,width20 h60.json [more.json ...]

`--transposed` simulates the backward's fused pass instead: CTAs are key blocks walking the
transposed mask's rows (query blocks), each read standing for a query block's Q, dO and dQ
accumulator (128 KB, so pass `--capacity 300`); its CTAs run in natural order today.

Orders: `natural` (by position), `longest` (by length, ties by position), `binsN` (N bins of
the longest row's length, longest bin first, by position within a bin: the library's order is
bins24), `widthW` (bins of W blocks).
"""
import json
import sys
from collections import OrderedDict

SLOTS = 132
CAPACITY = 600


def load(path):
    m = json.load(open(path))
    return m["blocks"], m["indptr"], m["indices"]


def order(nb, indptr, how):
    length = [indptr[r + 1] - indptr[r] for r in range(nb)]
    rows = list(range(nb))
    if how == "natural":
        return rows
    if how == "longest":
        return sorted(rows, key=lambda r: -length[r])
    if how.startswith("width"):
        width = int(how[5:])
        return sorted(rows, key=lambda r: -(length[r] // width))
    if how.startswith("bins"):
        bins, longest = int(how[4:]), max(length)
        return sorted(rows, key=lambda r: -(length[r] * bins // (longest + 1)))
    raise SystemExit(f"unknown order {how}")


def miss_rate(nb, indptr, indices, rows):
    cache, misses, reads = OrderedDict(), 0, 0
    queue = [(r, head) for head in range(2) for r in rows]
    nxt, cur, pos = 0, [None] * SLOTS, [0] * SLOTS

    def take(s):
        nonlocal nxt
        cur[s] = queue[nxt] if nxt < len(queue) else None
        if cur[s] is not None:
            pos[s] = indptr[cur[s][0]]
            nxt += 1

    for s in range(SLOTS):
        take(s)
    while any(c is not None for c in cur):
        for s in range(SLOTS):
            if cur[s] is None:
                continue
            r, head = cur[s]
            key = (head, indices[pos[s]])
            reads += 1
            if key in cache:
                cache.move_to_end(key)
            else:
                misses += 1
                cache[key] = True
                if len(cache) > CAPACITY:
                    cache.popitem(last=False)
            pos[s] += 1
            if pos[s] >= indptr[r + 1]:
                take(s)
    return misses / max(reads, 1)


def transpose(nb, indptr, indices):
    cols = [[] for _ in range(nb)]
    for r in range(nb):
        for c in indices[indptr[r] : indptr[r + 1]]:
            cols[c].append(r)
    t_indptr, t_indices = [0], []
    for c in range(nb):
        t_indices += cols[c]
        t_indptr.append(len(t_indices))
    return t_indptr, t_indices


def main():
    global CAPACITY
    args = sys.argv[1:]
    transposed = "--transposed" in args
    if transposed:
        args.remove("--transposed")
    if "--capacity" in args:
        i = args.index("--capacity")
        CAPACITY = int(args[i + 1])
        del args[i : i + 2]
    if len(args) < 2:
        raise SystemExit(__doc__)
    hows = args[0].split(",")
    for path in args[1:]:
        nb, indptr, indices = load(path)
        if transposed:
            indptr, indices = transpose(nb, indptr, indices)
        rates = [f"{how} {miss_rate(nb, indptr, indices, order(nb, indptr, how)):.3f}" for how in hows]
        print(path, "|", ", ".join(rates), flush=True)


if __name__ == "__main__":
    main()
