#!/usr/bin/env python3
"""Print the broker x scenario table of a bench/compare.sh run.

Usage: compare_table.py RESULTS_DIR

Reads RESULTS_DIR/<broker>-<scenario>-<repeat>.json (raftmq-bench --json
output) and machine.txt; prints a text table on stdout and writes the same
as Markdown to RESULTS_DIR/table.md. With several repeats a cell shows the
median and the range (min-max) of msgs/s; latencies are medians.
"""
import glob
import json
import os
import re
import statistics
import sys

BROKERS = ["rabbitmq", "nats", "raftmq"]
SCENARIOS = [
    ("a", "(a) 1 prod, 1 queue, 1 KiB, window 1000"),
    ("b", "(b) latency: 1 KiB, window 1"),
    ("c", "(c) 4 prod + 4 cons, 4 queues, 1 KiB"),
    ("d", "(d) 64 KiB, window 100"),
    ("e", "(e) consume a backlog of 1 KiB msgs"),
]
DURABILITY = {
    "rabbitmq": "RabbitMQ quorum queues (Raft, 3 replicas): a publisher confirm "
    "is sent once a majority of replicas have fsynced the message to their "
    "write-ahead log.",
    "nats": "NATS 2.9 JetStream, file storage, replicas=3: the publish ack "
    "comes once a majority of replicas have the message in their stream store; "
    "file writes are fsynced asynchronously by a background timer (2.9 has no "
    "setting to fsync before the ack), so a confirmed message can be lost if "
    "a majority of machines lose power together.",
    "raftmq": "raftmq (Raft per shard, 3 replicas): a publish is confirmed "
    "once a majority of replicas have fsynced the Raft entry (LMDB itself runs "
    "MDB_NOSYNC; the Raft log is the durable record).",
}


def load(outdir):
    runs = {}
    for path in glob.glob(os.path.join(outdir, "*.json")):
        m = re.match(r"(\w+)-([a-e])-(\d+)\.json$", os.path.basename(path))
        if not m:
            continue
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError):
            continue
        runs.setdefault((m.group(1), m.group(2)), []).append(d)
    return runs


def lat(d, side, key, pct):
    x = d[side].get(key) or {}
    return x.get(pct)


def metrics(scn, d):
    """msgs/s, p50 us, p99 us, notes for one run."""
    rss = d.get("server_rss_max_kib")
    if scn == "e":
        note = "preload %s/s" % kilo(d["publish"]["msgs_per_s"])
        if rss is not None:
            starts = [x["start_kib"] for x in d.get("server_rss", [])
                      if x.get("start_kib") is not None]
            note += ", node RSS %.0f->%.0f MiB (anon max %.0f)" % (
                max(starts) / 1024.0 if starts else 0, rss / 1024.0,
                (d.get("server_rss_anon_max_kib") or 0) / 1024.0)
        if d["consume"]["consumed"] < d["params"]["preload"]:
            note += ", consumed only %d" % d["consume"]["consumed"]
        return d["consume"]["msgs_per_s"], None, None, note
    p = d["publish"]
    note = "consume %s/s" % kilo(d["consume"]["msgs_per_s"])
    if scn == "c":
        note += ", backlog at end %d" % d["consume"].get("backlog_at_end", 0)
    if scn == "b":
        note += ", e2e p50 %s" % ms(lat(d, "consume", "e2e_latency_us", "p50"))
    if d["errors"]:
        note += ", errors %d" % d["errors"]
    return (p["msgs_per_s"], lat(d, "publish", "confirm_latency_us", "p50"),
            lat(d, "publish", "confirm_latency_us", "p99"), note)


def kilo(x):
    if x is None:
        return "-"
    if x >= 1e6:
        return "%.2fM" % (x / 1e6)
    if x >= 1e4:
        return "%.1fk" % (x / 1e3)
    if x >= 1e3:
        return "%.2fk" % (x / 1e3)
    return "%.0f" % x


def ms(us):
    if us is None:
        return "-"
    return "%.2f ms" % (us / 1000.0) if us < 10000 else "%.1f ms" % (us / 1000.0)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def cell(scn, ds):
    """(median rate, text for rate, p50, p99, notes)."""
    ms_ = [metrics(scn, d) for d in ds]
    rates = [m[0] for m in ms_]
    rate = median(rates)
    text = kilo(rate)
    if len(rates) > 1:
        text += " (%s-%s)" % (kilo(min(rates)), kilo(max(rates)))
    # Notes of the median run.
    mid = sorted(range(len(rates)), key=lambda i: rates[i])[len(rates) // 2]
    return rate, text, median(m[1] for m in ms_), median(m[2] for m in ms_), ms_[mid][3]


def main():
    outdir = sys.argv[1]
    runs = load(outdir)
    machine = ""
    try:
        with open(os.path.join(outdir, "machine.txt")) as f:
            machine = f.read()
    except OSError:
        pass
    brokers = [b for b in BROKERS if any(k[0] == b for k in runs)]
    reps = max((len(v) for v in runs.values()), default=0)
    rows = []
    cells = {}
    for scn, title in SCENARIOS:
        for b in brokers:
            ds = runs.get((b, scn))
            if not ds:
                rows.append((title, b, "failed", "-", "-", "no result"))
                continue
            c = cell(scn, ds)
            cells[(b, scn)] = c
            rows.append((title, b, c[1], ms(c[2]), ms(c[3]), c[4]))

    head = ("scenario", "broker", "msgs/s", "p50", "p99", "notes")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(6)]
    lines = []
    if machine:
        lines.append(machine.strip())
        lines.append("")
    lines.append("msgs/s: confirmed publishes per second ((e): backlog consumed per "
                 "second); p50/p99: publish->confirm latency%s." %
                 ("; median of %d runs, range in brackets" % reps if reps > 1 else ""))
    lines.append("")
    fmt = "  ".join("%%-%ds" % w for w in widths)
    lines.append(fmt % head)
    last = None
    for r in rows:
        if last is not None and r[0] != last:
            lines.append("")
        lines.append(fmt % tuple(r if r[0] != last else ("",) + tuple(r[1:])))
        last = r[0]

    ratio_lines = []
    peers = [b for b in brokers if b != "raftmq"]
    if "raftmq" in brokers and peers:
        ratio_lines.append("")
        ratio_lines.append("raftmq / peer (msgs/s; for (b) also p50 and p99 latency, "
                           "where lower is better):")
        for scn, title in SCENARIOS:
            parts = []
            for p in peers:
                rq, pc = cells.get(("raftmq", scn)), cells.get((p, scn))
                if not rq or not pc or not pc[0]:
                    parts.append("vs %s: -" % p)
                    continue
                s = "vs %s: %.2fx" % (p, rq[0] / pc[0])
                if scn == "b" and rq[2] and pc[2] and rq[3] and pc[3]:
                    s += " (p50 %.2fx, p99 %.2fx)" % (rq[2] / pc[2], rq[3] / pc[3])
                parts.append(s)
            ratio_lines.append("  %-45s %s" % (title, "   ".join(parts)))
    lines += ratio_lines
    lines.append("")
    lines.append("Durability of a confirm, as configured here:")
    for b in brokers:
        lines.append("  - " + DURABILITY[b])
    text = "\n".join(lines)
    print(text)

    md = []
    md.append("| scenario | broker | msgs/s | p50 | p99 | notes |")
    md.append("|---|---|---|---|---|---|")
    for r in rows:
        md.append("| %s |" % " | ".join(str(x) for x in r))
    md += [l for l in ratio_lines]
    with open(os.path.join(outdir, "table.md"), "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
