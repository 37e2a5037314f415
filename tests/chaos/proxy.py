#!/usr/bin/env python3
"""A userspace TCP proxy between raftmq nodes' peer ports, for slow and
jittery links (the kernel here has no netem).

For every node N it listens on 127.0.0.N:BASE+4 and forwards to the node's
real peer listener 127.0.0.N:BASE+2. The chaos cluster's initial_cluster
names the proxy ports, so every raft message between two nodes crosses
it. The outgoing leg binds to the source address of the incoming one, so
the proxy knows which link (A -> B) a connection is, and nftables rules
on node addresses still apply to both legs.

Delays come from --config FILE, re-read every 0.2 s, one rule a line:
    A B DELAY_MS JITTER_MS     # link from node A to node B ("*": any)
Bytes read on a link are written out DELAY + uniform(0, JITTER) ms later,
never before the bytes read earlier (a stream stays in order). An empty
file means no delay. Both directions of a connection are delayed by the
rule of the direction they travel (A->B for A's requests, B->A for the
answers B writes on A's connection).

Usage: proxy.py --port-base B --config FILE [--nodes 3] [--seed N]
Standard library only. Runs until killed.
"""

import argparse
import asyncio
import os
import random
import sys
import time

rules = {}  # (a, b) -> (delay_s, jitter_s); a/b are node numbers or "*"
rng = random.Random(1)


def link_delay(a, b):
    for key in ((a, b), (a, "*"), ("*", b), ("*", "*")):
        if key in rules:
            d, j = rules[key]
            return d + (rng.uniform(0, j) if j > 0 else 0.0)
    return 0.0


async def reload_loop(path):
    global rules
    mtime = None
    while True:
        try:
            st = os.stat(path).st_mtime_ns
            if st != mtime:
                mtime = st
                new = {}
                with open(path) as f:
                    for line in f:
                        parts = line.split("#")[0].split()
                        if len(parts) != 4:
                            continue
                        a, b = parts[0], parts[1]
                        a = a if a == "*" else int(a)
                        b = b if b == "*" else int(b)
                        new[(a, b)] = (float(parts[2]) / 1000,
                                       float(parts[3]) / 1000)
                rules = new
                print("%.3f rules %s" % (time.time(), rules), flush=True)
        except (OSError, ValueError) as e:
            print("config: %s" % e, file=sys.stderr, flush=True)
        await asyncio.sleep(0.2)


async def pump(reader, writer, a, b):
    """Copy reader -> writer, delaying each chunk by the a->b rule."""
    q = asyncio.Queue()

    async def sender():
        try:
            while True:
                due, data = await q.get()
                if data is None:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    task = asyncio.ensure_future(sender())
    last = 0.0
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            due = max(time.monotonic() + link_delay(a, b), last)
            last = due
            q.put_nowait((due, data))
    except (ConnectionError, OSError):
        pass
    q.put_nowait((0, None))
    await task


def node_of(ip):
    parts = ip.split(".")
    if len(parts) == 4 and parts[0] == "127":
        return int(parts[3])
    return 0


async def handle(node, base, reader, writer):
    peer = writer.get_extra_info("peername")
    src = peer[0] if peer else "127.0.0.1"
    a = node_of(src)
    try:
        ur, uw = await asyncio.open_connection(
            "127.0.0.%d" % node, base + 2, local_addr=(src, 0))
    except OSError as e:
        print("connect to node %d failed: %s" % (node, e), flush=True)
        writer.close()
        return
    await asyncio.gather(pump(reader, uw, a, node), pump(ur, writer, node, a))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-base", type=int, default=19100)
    ap.add_argument("--config", required=True)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng.seed(a.seed)
    servers = []
    for n in range(1, a.nodes + 1):
        srv = await asyncio.start_server(
            lambda r, w, n=n: handle(n, a.port_base, r, w),
            "127.0.0.%d" % n, a.port_base + 4, reuse_address=True)
        servers.append(srv)
        print("proxy 127.0.0.%d:%d -> :%d" % (n, a.port_base + 4,
                                               a.port_base + 2), flush=True)
    await reload_loop(a.config)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
