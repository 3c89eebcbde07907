"""Interleaved: new ours vs old-ours emulation (block 2048, numpy overlaps) vs dense form; settle before each."""
import os, sys, time, json
sys.path.insert(0, os.path.abspath("benchmarks"))
import numpy as np, torch
from analysis_similarity import structured_states
from analysis_kernels import dense_mutual_knn, gemm_floor
import speechprune.analysis.knn as K
import speechprune.analysis.similarity as S
n = int(sys.argv[1]); rounds = int(sys.argv[2]); settle = 0.3
states = structured_states(n, 768, 13, seed=0)
new_block, new_overlap = K.block_rows, S._overlap
def old_overlap(a, b, chunk_elems=1 << 22):
    n_, k = a.shape; step = max(1, chunk_elems // (k * k)); hits = 0
    for st in range(0, n_, step):
        hits += int((a[st:st + step, :, None] == b[st:st + step, None, :]).sum())
    return hits / (n_ * k)
def ours():
    K.block_rows, S._overlap = new_block, new_overlap
    return S.mutual_knn_matrix(states, k=10)
def old():
    K.block_rows, S._overlap = (lambda m: K.DEFAULT_BLOCK), old_overlap
    try: return S.mutual_knn_matrix(states, k=10)
    finally: K.block_rows, S._overlap = new_block, new_overlap
def dense(): return dense_mutual_knn(states, 10)
def floor(): return gemm_floor(states)
a, b = ours(), old(); assert np.array_equal(a, b); d = dense()
print("max |ours - dense| %.1e" % np.abs(a - d).max())
names = {"ours": ours, "old": old, "dense": dense, "floor": floor}
res = {k: [] for k in names}; loads = []
for r in range(rounds):
    order = list(names) if r % 2 == 0 else list(names)[::-1]
    loads.append(os.getloadavg()[0])
    for nm in order:
        time.sleep(settle); t = time.perf_counter(); names[nm](); res[nm].append(time.perf_counter() - t)
    print(json.dumps({"round": r, "load": loads[-1], **{k: round(v[-1], 4) for k, v in res.items()}}), flush=True)
med = {k: float(np.median(v)) for k, v in res.items()}
rat = lambda x, y: float(np.median([p / q for p, q in zip(res[x], res[y])]))
print(json.dumps({"n": n, "rounds": rounds, "median_s": med, "ours/dense": rat("ours", "dense"),
                  "old/dense": rat("old", "dense"), "ours/old": rat("ours", "old"), "ours/floor": rat("ours", "floor"),
                  "loads": loads, "load_end": os.getloadavg()}))
