"""Cold start to an interactive window, and idle memory, of the desktop app.

Launches the real app N times through tauri-driver (under Xvfb; run via bench/app/run.sh) and
measures, for each launch, the time from the new-session request (which starts the process)
until the UI has loaded its settings and marked itself ready (`body[data-ready]`), i.e. the
first moment a click does something. After the last launch it waits for the app to settle and
reads the memory of the app and its WebKit processes from /proc (RSS and PSS, smaps_rollup)."""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../tests/e2e"))
from webdriver import Driver  # noqa: E402

APP = os.path.realpath(os.environ["QLORA_APP"])
RUNS = int(os.environ.get("RUNS", "5"))
IDLE_SECS = float(os.environ.get("IDLE_SECS", "10"))
PORT = os.environ.get("TAURI_DRIVER_PORT", "4444")


def procs():
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            comm = stat[stat.index("(") + 1: stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            out[int(pid)] = (comm, ppid, os.path.realpath(f"/proc/{pid}/exe"))
        except (OSError, ValueError):
            pass
    return out


def app_tree():
    ps = procs()
    roots = [p for p, (_, _, exe) in ps.items() if exe == APP]
    tree = set(roots)
    changed = True
    while changed:
        changed = False
        for p, (_, ppid, _) in ps.items():
            if ppid in tree and p not in tree:
                tree.add(p)
                changed = True
    return {p: ps[p][0] for p in tree}


def memory(pid):
    vals = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in ("Rss", "Pss"):
                vals[k.lower()] = int(rest.split()[0]) * 1024
    return vals


def launch(d):
    t0 = time.monotonic()
    d.start(APP)
    d.wait(lambda: d.js("return document.body.dataset.ready") == "true", 60, "ready")
    return time.monotonic() - t0


def main():
    d = Driver(f"http://127.0.0.1:{PORT}")
    times = []
    for i in range(RUNS):
        times.append(launch(d))
        if i < RUNS - 1:
            d.quit()
            time.sleep(0.5)
    time.sleep(IDLE_SECS)
    tree = app_tree()
    mem = {f"{name}[{pid}]": memory(pid) for pid, name in sorted(tree.items())}
    d.quit()
    result = {
        "runs": RUNS,
        "first_launch_s": round(times[0], 3),
        "median_launch_s": round(statistics.median(times), 3),
        "all_s": [round(t, 3) for t in times],
        "idle_after_s": IDLE_SECS,
        "processes": mem,
        "total_rss_mib": round(sum(m["rss"] for m in mem.values()) / 2**20, 1),
        "total_pss_mib": round(sum(m["pss"] for m in mem.values()) / 2**20, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
