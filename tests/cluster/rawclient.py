#!/usr/bin/env python3
"""Raw client for raftmq's client port, for the bad-input cluster tests.

Speaks the framing of docs/protocol.md (4-byte big-endian length + one
protobuf message) with a tiny protobuf wire-format encoder/decoder, so it
needs nothing beyond the Python standard library. Field numbers come from
proto/raftmq.proto.

Usage: rawclient.py HOST:PORT CASE      (exit 0 = the server behaved)
  hello      Hello request; expect a HelloResp; print node_id and limits
  truncated  send a header announcing 100 bytes, 10 of them, then close
  huge       send a header announcing 2^31 bytes; expect the server to
             close the connection within 2 s (an error frame first is fine)
  garbage    send one frame of bytes that are not a valid Request; expect
             an error reply (if any) and the connection closed within 2 s
  hold Q N   subscribe to queue Q, keep N deliveries unacked, print
             "held <seqs>", exit when the server closes the connection
  fence Q    (to a node that does not lead Q's shard) a publish refused
             with NOT_LEADER fences Q on the connection: the same epoch is
             refused with UNAVAILABLE, a higher one is not, epoch 0 never
  fence-leader Q  (to Q's leader) a publish to an unknown queue fences
             only that queue: Q still takes publishes of the same epoch
rawclient.py selftest                   check the encoder/decoder
"""
import os
import random
import socket
import struct
import sys
import time

# ---- protobuf wire format ------------------------------------------------

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def enc_varint(v):
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def dec_varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def enc_field(num, value):
    """Encode one field: int -> varint, bytes/str -> length-delimited."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return enc_varint(num << 3 | VARINT) + enc_varint(value)
    if isinstance(value, str):
        value = value.encode()
    return enc_varint(num << 3 | LEN) + enc_varint(len(value)) + value


def enc_msg(*fields):
    """enc_msg((1, 5), (2, b'..')) -> bytes. None values are skipped."""
    return b"".join(enc_field(n, v) for n, v in fields if v is not None)


def dec_msg(buf):
    """Decode one message into {field number: [raw values]}: ints for
    varint/fixed fields, bytes for length-delimited ones."""
    fields = {}
    pos = 0
    while pos < len(buf):
        key, pos = dec_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ValueError("field number 0")
        if wt == VARINT:
            v, pos = dec_varint(buf, pos)
        elif wt == I64:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            v = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wt == I32:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            v = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wt == LEN:
            n, pos = dec_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            v = bytes(buf[pos:pos + n])
            pos += n
        else:
            raise ValueError("bad wire type %d" % wt)
        fields.setdefault(num, []).append(v)
    return fields


def first(fields, num, default=None):
    v = fields.get(num)
    return v[-1] if v else default


# ---- raftmq messages (proto/raftmq.proto) --------------------------------

CODES = {0: "OK", 1: "NOT_LEADER", 2: "NOT_FOUND", 3: "EXISTS",
         4: "TOO_LARGE", 5: "BAD_REQUEST", 6: "UNAVAILABLE", 7: "FULL",
         8: "INTERNAL", 9: "TIMEOUT", 10: "UNKNOWN_OUTCOME"}


def hello_request(req_id, client_name="rawclient"):
    # Request { id = 1; hello = 2 { client_name = 1 } }
    return enc_msg((1, req_id), (2, enc_msg((1, client_name))))


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def parse_server_frame(payload):
    """ServerFrame -> dict describing it (kind, id, error code/message...)."""
    sf = dec_msg(payload)
    if 1 in sf:
        r = dec_msg(first(sf, 1))
        out = {"kind": "response", "id": first(r, 1, 0)}
        if 2 in r:
            e = dec_msg(first(r, 2))
            out["error"] = CODES.get(first(e, 1, 0), str(first(e, 1, 0)))
            out["message"] = first(e, 2, b"").decode("utf-8", "replace")
        if 3 in r:  # HelloResp
            h = dec_msg(first(r, 3))
            out["hello"] = {"node_id": first(h, 1, 0),
                            "cluster_name": first(h, 2, b"").decode(),
                            "max_frame": first(h, 3, 0),
                            "max_message_size": first(h, 4, 0)}
        return out
    if 2 in sf:
        return {"kind": "delivery"}
    if 3 in sf:
        return {"kind": "ended"}
    return {"kind": "empty"}


class FrameReader:
    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        frames = []
        while len(self.buf) >= 4:
            n = struct.unpack_from(">I", self.buf)[0]
            if len(self.buf) < 4 + n:
                break
            frames.append(bytes(self.buf[4:4 + n]))
            del self.buf[:4 + n]
        return frames


# ---- network cases ---------------------------------------------------------

def connect(addr, timeout=5.0):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_until_closed(sock, limit):
    """Read frames until the peer closes or @limit seconds pass.
    Returns (closed, frames, seconds)."""
    reader = FrameReader()
    frames = []
    start = time.monotonic()
    while True:
        left = limit - (time.monotonic() - start)
        if left <= 0:
            return False, frames, time.monotonic() - start
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return False, frames, time.monotonic() - start
        except ConnectionError:
            data = b""
        if not data:
            return True, frames, time.monotonic() - start
        frames += [parse_server_frame(f) for f in reader.feed(data)]


def case_hello(addr):
    with connect(addr) as s:
        s.sendall(frame(hello_request(7)))
        reader = FrameReader()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            data = s.recv(65536)
            if not data:
                print("hello: connection closed without a reply")
                return 1
            for f in reader.feed(data):
                r = parse_server_frame(f)
                if r.get("kind") == "response" and r.get("id") == 7:
                    if "error" in r:
                        print("hello: error %s: %s" % (r["error"], r["message"]))
                        return 1
                    print("hello: %s" % r.get("hello"))
                    return 0
        print("hello: no reply within 5 s")
        return 1


def case_truncated(addr):
    with connect(addr) as s:
        s.sendall(struct.pack(">I", 100) + b"\x08\x01" + b"\x00" * 8)
    print("truncated: sent 10 of 100 announced bytes, closed")
    return 0


def report_close(name, closed, frames, secs):
    errors = [f.get("error") for f in frames if f.get("error")]
    print("%s: closed=%s after %.2fs; error frames=%s" %
          (name, closed, secs, errors or "none"))
    return 0 if closed else 1


def case_huge(addr):
    with connect(addr) as s:
        s.sendall(struct.pack(">I", 1 << 31))
        # A few bytes of body: the server must not wait for (or allocate)
        # the other two gigabytes before deciding.
        try:
            s.sendall(b"\x08\x01")
        except OSError:
            pass
        return report_close("huge", *read_until_closed(s, 2.0))


def garbage_payload():
    # 0x0f = field 1 with wire type 7, which does not exist: no protobuf
    # decoder can accept this, whatever follows.
    rnd = random.Random(int(os.environ.get("RAWCLIENT_SEED", "42")))
    return b"\x0f" + bytes(rnd.getrandbits(8) for _ in range(63))


def case_garbage(addr):
    with connect(addr) as s:
        s.sendall(frame(garbage_payload()))
        return report_close("garbage", *read_until_closed(s, 2.0))


# ---- self test -------------------------------------------------------------

def selftest():
    # Known encodings from the protobuf documentation.
    assert enc_varint(1) == b"\x01"
    assert enc_varint(150) == b"\x96\x01"
    assert enc_varint(300) == b"\xac\x02"
    assert enc_field(1, 150) == b"\x08\x96\x01"
    assert enc_field(2, "testing") == b"\x12\x07testing"
    assert dec_varint(b"\xac\x02", 0) == (300, 2)
    for v in (0, 1, 127, 128, 16383, 16384, 2**31, 2**63, 2**64 - 1):
        assert dec_varint(enc_varint(v), 0) == (v, len(enc_varint(v))), v
    assert enc_varint(-1) == b"\xff" * 9 + b"\x01"

    # Request{id=7, hello{client_name="rawclient"}}, byte for byte.
    req = hello_request(7)
    assert req == b"\x08\x07\x12\x0b\x0a\x09rawclient", req
    d = dec_msg(req)
    assert first(d, 1) == 7
    assert dec_msg(first(d, 2)) == {1: [b"rawclient"]}

    # A server error reply: ServerFrame{response{id=3, error{code=TOO_LARGE,
    # message="message too large"}}}.
    err = enc_msg((1, 4), (2, "message too large"))
    resp = enc_msg((1, 3), (2, err))
    sf = enc_msg((1, resp))
    r = parse_server_frame(sf)
    assert r == {"kind": "response", "id": 3, "error": "TOO_LARGE",
                 "message": "message too large"}, r

    # HelloResp inside a response.
    hr = enc_msg((1, 2), (2, "local"), (3, 16777216), (4, 8388608))
    r = parse_server_frame(enc_msg((1, enc_msg((1, 9), (3, hr)))))
    assert r["hello"] == {"node_id": 2, "cluster_name": "local",
                          "max_frame": 16777216,
                          "max_message_size": 8388608}, r
    assert "error" not in r

    # Deliveries and unknown / fixed-width fields decode without error.
    assert parse_server_frame(enc_msg((2, enc_msg((1, 1))))) == {
        "kind": "delivery"}
    mixed = b"\x09" + struct.pack("<Q", 5) + b"\x15" + struct.pack("<I", 6)
    assert dec_msg(mixed) == {1: [5], 2: [6]}

    # Framing: split arbitrarily, frames come out whole and in order.
    stream = frame(sf) + frame(b"") + frame(req)
    for step in (1, 3, 7, len(stream)):
        fr, got = FrameReader(), []
        for i in range(0, len(stream), step):
            got += fr.feed(stream[i:i + step])
        assert got == [sf, b"", req], step
    assert frame(req)[:4] == struct.pack(">I", len(req))

    # Malformed input raises rather than returning nonsense.
    for bad in (b"\x08", b"\x12\x05ab", b"\x0f\x00", b"\x00\x01",
                garbage_payload()):
        try:
            dec_msg(bad)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted malformed %r" % bad)
    print("rawclient selftest: ok")
    return 0


def case_hold(addr, queue, count):
    """Subscribe to QUEUE, take COUNT deliveries without acking them, print
    'held <seq>...' and keep them until the server closes the connection
    (e.g. its node is killed)."""
    count = int(count)
    sock = connect(addr, timeout=30.0)
    # Request { id = 1; subscribe = 8 { queue = 1, consumer_id = 2,
    #                                   prefetch = 3 } }
    sub = enc_msg((1, queue), (2, 1), (3, count))
    sock.sendall(frame(enc_msg((1, 1), (8, sub))))
    reader = FrameReader()
    seqs = []
    while True:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            print("hold: timed out after %d deliveries" % len(seqs))
            return 1
        if not data:
            break
        for payload in reader.feed(data):
            sf = dec_msg(payload)
            if 1 in sf:
                r = dec_msg(first(sf, 1))
                if 2 in r:
                    e = dec_msg(first(r, 2))
                    print("hold: error %s" % first(e, 2, b"").decode())
                    return 1
            if 2 in sf:
                d = dec_msg(first(sf, 2))
                seqs.append(first(d, 3, 0))
                if len(seqs) == count:
                    print("held " + " ".join(str(x) for x in seqs),
                          flush=True)
                    sock.settimeout(None)
    return 0 if len(seqs) >= count else 1


def publish_request(req_id, queue, body, epoch):
    # Request { id = 1; publish = 7 { queue = 1, body = 2, producer_id = 4,
    #                                 producer_seq = 5, epoch = 6 } }
    pub = enc_msg((1, queue), (2, body), (4, "rawclient-fence"),
                  (5, req_id), (6, epoch or None))
    return enc_msg((1, req_id), (7, pub))


def ask(sock, reader, payload, req_id):
    """Send one request and return its response frame (dict)."""
    sock.sendall(frame(payload))
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the server")
        for f in reader.feed(data):
            r = parse_server_frame(f)
            if r.get("kind") == "response" and r.get("id") == req_id:
                return r


def expect_steps(addr, steps):
    """steps: (queue, epoch, expected error or "OK"); all in order on one
    connection. Prints each outcome; 0 if every one matched."""
    sock = connect(addr, timeout=10.0)
    reader = FrameReader()
    bad = 0
    for i, (queue, epoch, want) in enumerate(steps, 1):
        r = ask(sock, reader, publish_request(i, queue, b"fence-%d" % i,
                                              epoch), i)
        got = r.get("error", "OK")
        ok = got == want
        bad += not ok
        print("%s publish %s epoch %d: %s%s" % (
            "ok:" if ok else "WRONG:", queue, epoch, got,
            "" if ok else " (want %s; %s)" % (want, r.get("message"))))
    sock.close()
    return 1 if bad else 0


def case_fence(addr, queue):
    return expect_steps(addr, [(queue, 5, "NOT_LEADER"),
                               (queue, 5, "UNAVAILABLE"),
                               (queue, 4, "UNAVAILABLE"),
                               (queue, 6, "NOT_LEADER"),
                               (queue, 0, "NOT_LEADER"),
                               (queue, 0, "NOT_LEADER")])


def case_fence_leader(addr, queue):
    ghost = queue + "-no-such-queue"
    return expect_steps(addr, [(ghost, 3, "NOT_FOUND"),
                               (ghost, 3, "UNAVAILABLE"),
                               (queue, 3, "OK"),
                               (ghost, 4, "NOT_FOUND")])


CASES = {"fence": case_fence, "fence-leader": case_fence_leader,
         "hello": case_hello, "truncated": case_truncated,
         "huge": case_huge, "garbage": case_garbage, "hold": case_hold}


def main(argv):
    if len(argv) == 2 and argv[1] == "selftest":
        return selftest()
    if len(argv) < 3 or argv[2] not in CASES:
        sys.stderr.write(__doc__)
        return 2
    try:
        return CASES[argv[2]](argv[1], *argv[3:])
    except OSError as e:
        print("%s: %s" % (argv[2], e))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
