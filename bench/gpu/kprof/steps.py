#!/usr/bin/env python3
"""Where a decode step's time goes, from a kprof timeline (kprof.cpp): the batch-1 generations'
graph replays (kernel runs that end in an argmax: `fast_argmax` (candle) or `argmax_rows` (ours)), per kernel of the step (exclusive time:
from the later of its start and the previous kernel's end, to its end) and the gaps between
kernels, median over the steady replays; then the prompt (the kernels before a generation's
first step).  Usage: steps.py k.csv [--kernels N]"""
import statistics, sys
from collections import defaultdict

path = sys.argv[1]
recs, names = [], {}
for line in open(path):
    if line.startswith('#name,'):
        _, i, n = line.rstrip('\n').split(',', 2)
        names[int(i)] = n
    else:
        s, e, i = line.split(',')
        recs.append((int(s), int(e), int(i)))
recs.sort()
short = lambda n: (n[:40] + '..') if len(n) > 42 else n
# Steps: runs of kernels between consecutive argmax kernels, with the same kernel count as the
# most common one (the graph's replays), keeping only back-to-back steps (host gap < 1 ms).
ends = [j for j, r in enumerate(recs) if names[r[2]].startswith(('fast_argmax', 'argmax_rows'))]
steps = []
for a, b in zip(ends, ends[1:]):
    seg = recs[a + 1:b + 1]
    if seg and seg[0][0] - recs[a][1] < 1_000_000:
        steps.append((recs[a][1], seg))
n_common = statistics.mode(len(s) for _, s in steps)
steady = [(t, s) for t, s in steps if len(s) == n_common]
print(f'{len(steps)} steps, {len(steady)} with {n_common} kernels')
wall, busy, gap_host = [], [], []
per = defaultdict(list)
for prev_end, seg in steady:
    wall.append((seg[-1][1] - prev_end) / 1e3)
    gap_host.append((seg[0][0] - prev_end) / 1e3)
    t = seg[0][0]
    tot = defaultdict(float)
    for j, (s, e, i) in enumerate(seg):
        tot['(gap before kernels)'] += max(0, s - t) / 1e3 if j else 0
        tot[names[i]] += max(0, e - max(s, t)) / 1e3
        t = max(t, e)
    for k, v in tot.items():
        per[k].append(v)
print(f'step: median {statistics.median(wall):.1f} us from the previous argmax end to this one\'s '
      f'(host/launch gap before the first kernel: {statistics.median(gap_host):.1f} us)')
rows = sorted(((statistics.median(v), k) for k, v in per.items()), reverse=True)
cnt = defaultdict(int)
for _, _, i in steady[0][1]:
    cnt[names[i]] += 1
for m, k in rows:
    print(f'  {m:8.1f} us  {cnt.get(k, 0):4d}x  {short(k)}')
print(f'  sum of medians {sum(m for m, _ in rows):.1f} us')
