import os, sys, time
sys.path.insert(0, os.path.abspath("benchmarks"))
import numpy as np, torch
from analysis_similarity import structured_states
from speechprune.analysis import knn as K
n = int(sys.argv[1]); parts = [int(p) for p in sys.argv[2].split(",")]; reps=int(sys.argv[3])
states = structured_states(n, 768, 3, seed=0)
blocks = [-(-n // p) for p in parts]
def run(b):
    return [K.knn(x, 10, metric="ip", normalize=True, distances=False, exact_order=False, block=b).indices for x in states]
ref = run(2048)
res = {b: [] for b in blocks}
for b in blocks:
    assert all((a == c).all() for a, c in zip(run(b), ref))
for r in range(reps):
    for b in (blocks if r % 2 == 0 else blocks[::-1]):
        a = time.perf_counter(); run(b); res[b].append(time.perf_counter() - a)
for p, b in zip(parts, blocks):
    print("N=%d parts=%d block=%d min %.1f med %.1f ms per state" % (n, p, b, 1e3*min(res[b])/3, 1e3*np.median(res[b])/3))
print(os.getloadavg())
