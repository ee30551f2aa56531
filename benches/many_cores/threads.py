# Runs a command and samples its threads' CPU from /proc/PID/task every second; prints, per second,
# the busiest threads' share of it, then each thread name's CPU seconds in all (benches/many_cores/run.sh).
import os, subprocess, sys, time
tick = os.sysconf("SC_CLK_TCK")
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
t0 = time.perf_counter(); last = {}; rows = []; total = {}
def sample():
    out = {}
    try:
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            try:
                f = open(f"/proc/{p.pid}/task/{tid}/stat").read()
            except OSError:
                continue
            comm = f[f.index("(") + 1:f.rindex(")")]
            parts = f[f.rindex(")") + 2:].split()
            out[(comm, tid)] = (int(parts[11]) + int(parts[12])) / tick
    except OSError:
        pass
    return out
prev = sample(); pt = time.perf_counter()
while p.poll() is None:
    time.sleep(1.0)
    cur = sample(); now = time.perf_counter()
    by_comm = {}
    for k, v in cur.items():
        d = v - prev.get(k, 0.0)
        by_comm[k[0]] = by_comm.get(k[0], 0.0) + d
        total[k[0]] = total.get(k[0], 0.0) + d
    dt = now - pt
    top = sorted(by_comm.items(), key=lambda kv: -kv[1])[:6]
    rows.append(f"{now - t0:5.1f}s busy={sum(by_comm.values())/dt:4.1f} " + " ".join(f"{c}:{v/dt:.2f}" for c, v in top))
    prev, pt = cur, now
print("\n".join(rows))
print("wall %.2f" % (time.perf_counter() - t0))
print("per thread name, CPU s:", " ".join(f"{c}:{v:.1f}" for c, v in sorted(total.items(), key=lambda kv: -kv[1])))
