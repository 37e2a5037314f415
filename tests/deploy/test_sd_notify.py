#!/usr/bin/env python3
"""raftmqd talks to systemd (Type=notify) and fails clearly on a bad
http_address.

A one-node raftmqd (ports 24701-24703) runs with NOTIFY_SOCKET pointing at
a datagram socket of this test, like under systemd: it must send READY=1
once it accepts clients (its /readyz then turns 200 and /healthz is 200),
and STOPPING=1 after SIGTERM, then exit 0. raftmqd with an http_address
that is not ip:port must exit 2 saying so; with the HTTP port taken it
must exit 1 saying it cannot listen there; with less free disk than
min_free_disk_mb it must exit 1 saying so.

Usage: test_sd_notify.py BUILD_BIN_DIR
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BIN = os.path.abspath(sys.argv[1])
BASE = 24700
CLIENT, PEER, HTTP = ("127.0.0.1:%d" % (BASE + i) for i in (1, 2, 3))


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def args(data):
    return [BIN + "/raftmqd", "--id", "1", "--data-dir", data, "--client-address", CLIENT,
            "--peer-address", PEER, "--initial-cluster", "1@" + PEER, "--shards", "1",
            "--cluster-name", "sdn"]


def get(path):
    try:
        with urllib.request.urlopen("http://%s%s" % (HTTP, path), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main():
    # Under the build dir: raft wants a real filesystem.
    tmp = tempfile.mkdtemp(prefix="sd-notify.", dir=os.path.join(BIN, ".."))
    sock_path = os.path.join(tmp, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path)
    log = open(os.path.join(tmp, "node.log"), "w")
    proc = subprocess.Popen(args(tmp + "/data") + ["--http-address", HTTP], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        sock.settimeout(60)
        msgs = []
        while not any("READY=1" in m for m in msgs):
            try:
                msgs.append(sock.recv(4096).decode())
            except socket.timeout:
                fail("no READY=1 within 60 s (got %r)" % msgs)
        print("ok: sd_notify %r" % msgs[-1])
        code, body = get("/healthz")
        if code != 200:
            fail("/healthz %d %r" % (code, body))
        for _ in range(100):
            code, body = get("/readyz")
            if code == 200:
                break
            time.sleep(0.1)
        else:
            fail("/readyz of a one-node cluster never 200: %r" % body)
        print("ok: /healthz and /readyz 200 after READY=1")
        proc.send_signal(signal.SIGTERM)
        msgs = []
        while not any("STOPPING=1" in m for m in msgs):
            try:
                msgs.append(sock.recv(4096).decode())
            except socket.timeout:
                fail("no STOPPING=1 after SIGTERM (got %r)" % msgs)
        rc = proc.wait(30)
        if rc != 0:
            fail("exit %d after SIGTERM" % rc)
        print("ok: STOPPING=1 after SIGTERM, exit 0")

        r = subprocess.run(args(tmp + "/data") + ["--http-address", "localhost:7301"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 2 or "bad http_address 'localhost:7301'" not in r.stderr:
            fail("bad http_address: exit %d, stderr %r" % (r.returncode, r.stderr))
        print("ok: bad http_address: exit 2, %r" % r.stderr.strip())

        taken = socket.socket()
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", BASE + 3))
        taken.listen()
        r = subprocess.run(args(tmp + "/data") + ["--http-address", HTTP],
                           capture_output=True, text=True, timeout=60)
        taken.close()
        if r.returncode != 1 or "cannot listen on http_address " + HTTP not in r.stderr:
            fail("HTTP port taken: exit %d, stderr %r" % (r.returncode, r.stderr[-2000:]))
        print("ok: HTTP port taken: exit 1, 'cannot listen on http_address %s'" % HTTP)

        # Less free disk than min_free_disk_mb: refuse to start, saying so.
        ini = os.path.join(tmp, "low-disk.ini")
        with open(ini, "w") as f:
            f.write("[limits]\nmin_free_disk_mb = 1000000000\n")
        r = subprocess.run(args(tmp + "/data2") + ["--config", ini],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 1 or "below min_free_disk_mb = 1000000000" not in r.stderr:
            fail("low disk: exit %d, stderr %r" % (r.returncode, r.stderr[-2000:]))
        print("ok: less free disk than min_free_disk_mb: exit 1")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
