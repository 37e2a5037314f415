#!/usr/bin/env python3
"""Strict parser for the Prometheus text exposition format (0.0.4), and a
scraper, for the cluster tests of raftmqd's /metrics.

    prom.py selftest                 check the parser on good and bad input
    prom.py scrape URL               parse URL, print one "name{labels} value"
                                     per line (sorted); exit 1 if malformed

As a module: scrape(url) -> {(name, labels): value}, where labels is a
sorted tuple of (key, value) pairs; parse(text) does the same on text.
Raises ParseError on anything a Prometheus server would reject or that
breaks the format's rules: a sample without a TYPE, a family split in two,
a duplicate series, a bad name, label or value, a histogram whose buckets
are not cumulative or whose +Inf bucket differs from its _count.
"""
import math
import re
import sys
import urllib.request

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class ParseError(Exception):
    pass


def _value(s, where):
    if s in ("+Inf", "Inf"):
        return math.inf
    if s == "-Inf":
        return -math.inf
    if s == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s):
        raise ParseError("%s: bad value %r" % (where, s))
    return float(s)


def _labels(s, where):
    """Parse 'a="x",b="y"' (the text between braces)."""
    out = []
    i = 0
    while i < len(s):
        eq = s.find("=", i)
        if eq < 0:
            raise ParseError("%s: label without '='" % where)
        key = s[i:eq]
        if not LABEL.match(key) or key.startswith("__"):
            raise ParseError("%s: bad label name %r" % (where, key))
        if eq + 1 >= len(s) or s[eq + 1] != '"':
            raise ParseError("%s: label value of %s not quoted" % (where, key))
        j = eq + 2
        val = []
        while True:
            if j >= len(s):
                raise ParseError("%s: unterminated label value" % where)
            c = s[j]
            if c == "\\":
                if j + 1 >= len(s) or s[j + 1] not in '\\"n':
                    raise ParseError("%s: bad escape in label value" % where)
                val.append({"\\": "\\", '"': '"', "n": "\n"}[s[j + 1]])
                j += 2
            elif c == '"':
                j += 1
                break
            elif c == "\n":
                raise ParseError("%s: newline in label value" % where)
            else:
                val.append(c)
                j += 1
        out.append((key, "".join(val)))
        if j < len(s):
            if s[j] != ",":
                raise ParseError("%s: expected ',' after label %s" % (where, key))
            j += 1
        i = j
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        raise ParseError("%s: repeated label name" % where)
    return tuple(sorted(out))


def _family(name, types):
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
            return base
    return None


def parse(text):
    if text and not text.endswith("\n"):
        raise ParseError("text does not end with a newline")
    types = {}
    helps = set()
    samples = {}
    done = set()  # families whose samples are over
    current = None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d" % n
        if line.strip() == "":
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 2 and parts[1] in ("HELP", "TYPE"):
                if len(parts) < 3 or not NAME.match(parts[2]):
                    raise ParseError("%s: bad metric name in %s" % (where, parts[1]))
                name = parts[2]
                if parts[1] == "TYPE":
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise ParseError("%s: bad TYPE line" % where)
                    if name in types:
                        raise ParseError("%s: second TYPE for %s" % (where, name))
                    if name in done or any(_family(k[0], {name: parts[3]}) == name for k in samples):
                        raise ParseError("%s: TYPE of %s after its samples" % (where, name))
                    types[name] = parts[3]
                else:
                    if name in helps:
                        raise ParseError("%s: second HELP for %s" % (where, name))
                    helps.add(name)
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ([^ ]+)( -?\d+)?\Z", line)
        if not m:
            raise ParseError("%s: malformed sample line %r" % (where, line))
        name = m.group(1)
        labels = _labels(m.group(3), where) if m.group(3) else ()
        value = _value(m.group(4), where)
        fam = _family(name, types)
        if fam is None:
            raise ParseError("%s: sample %s has no TYPE" % (where, name))
        if fam != current:
            if fam in done:
                raise ParseError("%s: samples of %s are not together" % (where, fam))
            if current is not None:
                done.add(current)
            current = fam
        key = (name, labels)
        if key in samples:
            raise ParseError("%s: duplicate series %s%s" % (where, name, dict(labels)))
        if types[fam] == "counter" and value < 0:
            raise ParseError("%s: negative counter %s" % (where, name))
        samples[key] = value
    _check_histograms(samples, types)
    return samples


def _check_histograms(samples, types):
    for fam, t in types.items():
        if t != "histogram":
            continue
        groups = {}
        for (name, labels), v in samples.items():
            if name != fam + "_bucket":
                continue
            le = dict(labels).get("le")
            if le is None:
                raise ParseError("%s: bucket without le" % fam)
            rest = tuple(p for p in labels if p[0] != "le")
            groups.setdefault(rest, []).append((_value(le, fam), v))
        for rest, buckets in groups.items():
            buckets.sort()
            if buckets[-1][0] != math.inf:
                raise ParseError("%s%s: no +Inf bucket" % (fam, dict(rest)))
            for (_, a), (_, b) in zip(buckets, buckets[1:]):
                if b < a:
                    raise ParseError("%s%s: buckets not cumulative" % (fam, dict(rest)))
            count = samples.get((fam + "_count", rest))
            if count is None or (fam + "_sum", rest) not in samples:
                raise ParseError("%s%s: no _count or _sum" % (fam, dict(rest)))
            if count != buckets[-1][1]:
                raise ParseError("%s%s: +Inf bucket %s != count %s" % (fam, dict(rest), buckets[-1][1], count))


def scrape(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        if r.status != 200:
            raise ParseError("%s: HTTP %d" % (url, r.status))
        ctype = r.headers.get("Content-Type", "")
        if not ctype.startswith("text/plain") or "version=0.0.4" not in ctype:
            raise ParseError("%s: Content-Type %r" % (url, ctype))
        return parse(r.read().decode("utf-8"))


def value(samples, name, **labels):
    """The value of one series; None if absent."""
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples, name, **labels):
    """Sum of every series of @name whose labels include @labels."""
    s = 0.0
    for (n, lab), v in samples.items():
        d = dict(lab)
        if n == name and all(d.get(k) == w for k, w in labels.items()):
            s += v
    return s


GOOD = """# HELP a_total A counter.
# TYPE a_total counter
a_total 3
# TYPE g gauge
g{q="x \\"y\\" \\\\ \\n",shard="1"} 2.5e3
g{q="z"} -1
# TYPE h histogram
h_bucket{le="0.1"} 1
h_bucket{le="+Inf"} 2
h_sum 0.3
h_count 2
"""

BAD = {
    "no type": "x 1\n",
    "no newline at end": "# TYPE x gauge\nx 1",
    "bad value": "# TYPE x gauge\nx one\n",
    "bad name": "# TYPE x gauge\n1x 1\n",
    "unquoted label": "# TYPE x gauge\nx{a=1} 1\n",
    "bad escape": '# TYPE x gauge\nx{a="\\t"} 1\n',
    "unterminated label": '# TYPE x gauge\nx{a="b} 1\n',
    "duplicate series": '# TYPE x gauge\nx{a="b"} 1\nx{a="b"} 2\n',
    "split family": "# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx{a=\"c\"} 1\n",
    "negative counter": "# TYPE x_total counter\nx_total -1\n",
    "not cumulative": '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    "inf != count": '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n',
    "no inf bucket": '# TYPE h histogram\nh_bucket{le="1"} 2\nh_sum 1\nh_count 2\n',
    "two spaces": "# TYPE x gauge\nx  1\n",
    "second TYPE": "# TYPE x gauge\n# TYPE x gauge\nx 1\n",
}


def selftest():
    s = parse(GOOD)
    assert value(s, "a_total") == 3
    assert value(s, "g", q='x "y" \\ \n', shard="1") == 2500
    assert total(s, "g") == 2499
    assert value(s, "h_count") == 2
    for what, text in BAD.items():
        try:
            parse(text)
        except ParseError:
            continue
        print("prom.py selftest: accepted bad input (%s)" % what)
        return 1
    print("prom.py selftest: ok (%d bad inputs refused)" % len(BAD))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "selftest":
        sys.exit(selftest())
    if len(sys.argv) == 3 and sys.argv[1] == "scrape":
        try:
            s = scrape(sys.argv[2])
        except (ParseError, OSError) as e:
            print("prom.py: %s" % e, file=sys.stderr)
            sys.exit(1)
        for (n, lab), v in sorted(s.items()):
            labs = ",".join('%s="%s"' % kv for kv in lab)
            print("%s%s %s" % (n, "{%s}" % labs if labs else "", v))
        sys.exit(0)
    print(__doc__, file=sys.stderr)
    sys.exit(2)
