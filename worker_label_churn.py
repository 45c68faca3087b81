"""Repro: a long-running worker keeps Prometheus series for every binding it ever ran, dropped or not.
Usage: python3 worker_label_churn.py REDIS_PORT N_VERSIONS METRICS_PORT"""
import sys, time, urllib.request, redis
from distbatch import Batcher
port, n, mport = map(int, sys.argv[1:4])
r = redis.Redis(port=port)
b = Batcher.from_url(f"redis://127.0.0.1:{port}/0")
def series():
    body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics").read().decode()
    return sum(1 for l in body.splitlines() if l.startswith("distbatch_")), len(body)
print("before", series())
for i in range(n):
    key = b.register("wl", version=f"v{i}-{time.time_ns()}", source="wl.src", batch={"count": 2, "window": "1h"},
                     handler="growth_handlers.ok")
    b.emit_many("wl.src", [{"i": 1}, {"i": 2}])
    while r.zcard("{distbatch}:ready") or r.zcard("{distbatch}:running"): time.sleep(0.01)
    b.drop(key)
print(f"after {n} versions run and dropped", series())
b.close()
