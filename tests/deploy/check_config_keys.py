#!/usr/bin/env python3
"""Every key server/config.c accepts must be documented in
deploy/raftmqd.example.ini (as "key = value", or as a commented-out
"; key = value" for another spelling), and every key the example sets must
be one config.c accepts, so that the two cannot drift apart.

Usage: check_config_keys.py SOURCE_DIR
"""
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "."
code = open(src + "/server/config.c").read()
# set_key() compares the key with each name it knows.
parsed = set(re.findall(r'strcmp\(\s*key\s*,\s*"([a-z_0-9]+)"\s*\)', code))
if len(parsed) < 10:
    print("check_config_keys: found only %d keys in config.c; did set_key() change shape?" % len(parsed))
    sys.exit(1)

active, commented = set(), set()
for line in open(src + "/deploy/raftmqd.example.ini"):
    m = re.match(r"\s*([a-z_0-9]+)\s*=", line)
    if m:
        active.add(m.group(1))
        continue
    m = re.match(r"\s*;\s*([a-z_0-9]+)\s*=", line)
    if m:
        commented.add(m.group(1))

undocumented = sorted(parsed - active - commented)
unknown = sorted((active | commented) - parsed)
for k in undocumented:
    print("check_config_keys: config.c parses '%s' but deploy/raftmqd.example.ini does not document it" % k)
for k in unknown:
    print("check_config_keys: deploy/raftmqd.example.ini sets '%s' but config.c does not parse it" % k)
if undocumented or unknown:
    sys.exit(1)
print("check_config_keys: %d keys, all documented in the example" % len(parsed))
