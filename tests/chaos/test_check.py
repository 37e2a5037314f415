#!/usr/bin/env python3
"""Unit tests of tests/chaos/check on synthetic histories: the checker
passes a clean history and catches each kind of violation (so it is proven
able to fail). Run: python3 tests/chaos/test_check.py"""

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.join(HERE, "check")

_loader = importlib.machinery.SourceFileLoader("chaos_check", CHECK)
_spec = importlib.util.spec_from_loader("chaos_check", _loader)
check = importlib.util.module_from_spec(_spec)
_loader.exec_module(check)

T0 = 1000.0


class History:
    """Builds a history: publish/deliver helpers keep ids and times."""

    def __init__(self):
        self.ops = [{"t": T0, "op": "phase", "phase": "start"}]
        self.t = T0

    def tick(self, dt=0.1):
        self.t += dt
        return self.t

    def publish(self, client, n, queue, seq, outcome="ok"):
        self.ops.append({"t": self.tick(), "t0": self.t, "client": client,
                         "op": "publish", "queue": queue,
                         "id": "%s-%d" % (client, n), "n": n,
                         "outcome": outcome,
                         "seq": seq if outcome == "ok" else 0})

    def deliver(self, mid, queue, seq, redelivered=False, consumer="c0"):
        self.ops.append({"t": self.tick(), "client": consumer,
                         "op": "deliver", "queue": queue, "id": mid,
                         "seq": seq, "redelivered": redelivered})
        self.ops.append({"t": self.t, "client": consumer, "op": "ack",
                         "queue": queue, "id": mid, "seq": seq,
                         "outcome": "ok"})

    def pubdeliver(self, client, n, queue, seq):
        self.publish(client, n, queue, seq)
        self.deliver("%s-%d" % (client, n), queue, seq)

    def finish(self):
        self.ops.append({"t": self.tick(), "op": "phase", "phase": "drain"})
        return self.ops


def clean_history():
    h = History()
    seq = {"q0": 0, "q1": 0}
    for n in range(1, 21):
        for p in ("p0", "p1"):
            q = "q%d" % (n % 2)
            seq[q] += 1
            h.pubdeliver(p, n, q, seq[q])
    return h


def paced_history(keep):
    """20 s of one producer at 10/s (publish i at T0 + i/10 when keep(i)),
    faults from T0 + 10 to T0 + 20; returns (history, nemesis log)."""
    h = History()
    seq = 0
    for i in range(200):
        if not keep(i):
            continue
        seq += 1
        t = T0 + i * 0.1
        h.ops.append({"t": t, "op": "publish", "client": "p0",
                      "queue": "q0", "id": "p0-%d" % seq, "n": seq,
                      "outcome": "ok", "seq": seq})
        h.ops.append({"t": t, "op": "deliver", "client": "c0",
                      "queue": "q0", "id": "p0-%d" % seq, "seq": seq,
                      "redelivered": False})
    h.ops.append({"t": T0 + 20, "op": "phase", "phase": "drain"})
    nem = [{"t": T0 + 10, "op": "nemesis", "action": "start"},
           {"t": T0 + 20, "op": "nemesis", "action": "heal"}]
    return h, nem


class CheckerTest(unittest.TestCase):
    def run_check(self, ops, nemesis=()):
        return check.analyse(ops, nemesis)

    def assert_only(self, r, **want):
        for k in ("lost", "phantom", "dup", "reordered"):
            self.assertEqual(r[k], want.get(k, 0), "%s: %r" % (k, r))

    def test_clean_history_passes(self):
        r = self.run_check(clean_history().finish())
        self.assert_only(r)
        self.assertEqual(r["confirmed"], 40)
        self.assertEqual(check.violations(r), [])

    def test_redelivery_of_same_seq_is_not_a_duplicate(self):
        h = clean_history()
        h.deliver("p0-1", "q1", 1, redelivered=True, consumer="c1")
        r = self.run_check(h.finish())
        self.assert_only(r)
        self.assertEqual(r["unflagged_redeliveries"], 0)

    def test_unflagged_redelivery_is_reported_not_a_violation(self):
        h = clean_history()
        h.deliver("p0-1", "q1", 1, redelivered=False)
        r = self.run_check(h.finish())
        self.assert_only(r)
        self.assertEqual(r["unflagged_redeliveries"], 1)

    def test_confirmed_never_delivered_is_lost(self):
        h = clean_history()
        h.publish("p0", 21, "q1", 21)
        r = self.run_check(h.finish())
        self.assert_only(r, lost=1)
        self.assertEqual(check.violations(r), ["lost"])

    def test_unknown_never_delivered_is_not_lost(self):
        h = clean_history()
        h.publish("p0", 21, "q1", 0, outcome="unknown")
        h.publish("p0", 22, "q1", 0, outcome="fail")
        r = self.run_check(h.finish())
        self.assert_only(r)
        self.assertEqual(r["unknown"], 1)
        self.assertEqual(r["unknown_stored"], 0)

    def test_unknown_delivered_once_is_fine(self):
        h = clean_history()
        h.publish("p0", 21, "q1", 0, outcome="unknown")
        h.deliver("p0-21", "q1", 21)
        r = self.run_check(h.finish())
        self.assert_only(r)
        self.assertEqual(r["unknown_stored"], 1)

    def test_never_published_delivery_is_phantom(self):
        h = clean_history()
        h.deliver("p9-1", "q0", 99)
        r = self.run_check(h.finish())
        self.assert_only(r, phantom=1)

    def test_failed_publish_delivered_is_phantom(self):
        h = clean_history()
        h.publish("p0", 21, "q1", 0, outcome="fail")
        h.deliver("p0-21", "q1", 21)
        r = self.run_check(h.finish())
        self.assert_only(r, phantom=1)

    def test_delivery_from_other_queue_is_phantom(self):
        h = clean_history()
        h.publish("p0", 21, "q1", 0, outcome="unknown")
        h.deliver("p0-21", "q0", 50)
        r = self.run_check(h.finish())
        self.assert_only(r, phantom=1)

    def test_two_messages_at_one_seq_is_phantom(self):
        h = clean_history()
        h.publish("p0", 21, "q1", 0, outcome="unknown")
        h.deliver("p0-21", "q1", 5)  # seq 5 of q1 already held p0-...
        r = self.run_check(h.finish())
        self.assertEqual(r["phantom"], 1)

    def test_same_id_at_two_seqs_is_dup(self):
        h = clean_history()
        h.deliver("p0-2", "q0", 77)  # stored again at another seq
        r = self.run_check(h.finish())
        self.assert_only(r, dup=1)
        self.assertEqual(check.violations(r), ["dup"])

    def test_unknown_outcome_stored_twice_is_dup(self):
        h = clean_history()
        h.publish("p1", 21, "q1", 0, outcome="unknown")
        h.deliver("p1-21", "q1", 21)
        h.deliver("p1-21", "q1", 22)
        r = self.run_check(h.finish())
        self.assert_only(r, dup=1)

    def test_delivered_at_other_seq_than_confirmed_is_dup(self):
        h = clean_history()
        h.publish("p1", 21, "q1", 21)
        h.deliver("p1-21", "q1", 22)
        r = self.run_check(h.finish())
        self.assert_only(r, dup=1)

    def test_publish_order_inversion_is_reordered(self):
        h = History()
        h.publish("p0", 1, "q0", 2)
        h.publish("p0", 2, "q0", 1)
        h.publish("p0", 3, "q0", 3)
        for mid, seq in (("p0-2", 1), ("p0-1", 2), ("p0-3", 3)):
            h.deliver(mid, "q0", seq)
        r = self.run_check(h.finish())
        self.assert_only(r, reordered=1)
        self.assertEqual(check.violations(r), ["reordered"])

    def test_interleaved_producers_are_not_reordered(self):
        h = History()
        # p0 and p1 interleave on q0; each one's own order is kept.
        h.pubdeliver("p0", 1, "q0", 1)
        h.pubdeliver("p1", 1, "q0", 2)
        h.pubdeliver("p1", 2, "q0", 3)
        h.pubdeliver("p0", 2, "q0", 4)
        r = self.run_check(h.finish())
        self.assert_only(r)

    def test_availability_counts_empty_fault_seconds(self):
        # 10 s fault-free at 10/s, then 10 s of faults with confirms only
        # in the first 5 s.
        h, nem = paced_history(lambda i: i < 150)
        r = self.run_check(h.ops, nem)
        self.assert_only(r)
        self.assertAlmostEqual(r["availability"], 0.5, places=2)
        self.assertAlmostEqual(r["rate_ratio"], 0.5, places=1)
        self.assertEqual(check.violations(r, 0.9), ["availability"])

    def test_minority_confirm_is_caught(self):
        h = clean_history()
        ops = h.finish()
        pubs = [o for o in ops if o.get("op") == "publish"]
        t_cut = pubs[10]["t"] - check.MINORITY_GRACE - 0.001
        for o in pubs:
            o["node"] = 2
        nem = [{"t": t_cut, "op": "nemesis", "nemesis": "partition",
                "action": "start", "mode": "isolate", "node": 2},
               {"t": pubs[12]["t"] + 0.01, "op": "nemesis",
                "nemesis": "partition", "action": "heal"}]
        r = self.run_check(ops, nem)
        self.assertEqual(r["minority"], 3)
        self.assertEqual(check.violations(r), ["minority"])
        # The same confirms from a node of the majority are fine.
        for o in pubs:
            o["node"] = 1
        r = self.run_check(ops, nem)
        self.assertEqual(r["minority"], 0)
        self.assertEqual(check.violations(r), [])

    def test_availability_is_the_rate_not_just_busy_seconds(self):
        # 10 s at 10/s, then 10 s of faults at 5/s: every fault second
        # has confirms, yet only half the fault-free rate.
        h, nem = paced_history(lambda i: i < 100 or i % 2 == 0)
        r = self.run_check(h.ops, nem)
        self.assert_only(r)
        self.assertAlmostEqual(r["queue_seconds"], 1.0, places=2)
        self.assertAlmostEqual(r["availability"], 0.5, places=1)
        self.assertEqual(check.violations(r, 0.9), ["availability"])

    # ---- Membership events (nemesis "membership") ----------------------

    def minority_setup(self, node=2):
        """A clean history whose confirms all come from @node, spread
        over about 8 s, and its publish ops."""
        ops = clean_history().finish()
        pubs = [o for o in ops if o.get("op") == "publish"]
        for o in pubs:
            o["node"] = node
        return ops, pubs

    def test_membership_events_are_not_partitions(self):
        # Node 4 is added, then node 2 removed, while node 4 and node 2
        # confirm: nothing there is a minority.
        ops, pubs = self.minority_setup(node=4)
        t = pubs[5]["t"]
        nem = [mem_event(t, "start", step="add", node=4),
               mem_event(t + 0.5, "heal"),
               mem_event(t + 2, "done", step="add", node=4, ok=True),
               mem_event(t + 3, "start", step="remove", node=2),
               mem_event(t + 4, "done", step="remove", node=2, ok=True),
               mem_event(t + 5, "heal")]
        r = self.run_check(ops, nem)
        self.assertEqual(r["minority"], 0)
        self.assertEqual(check.violations(r), [])
        for o in pubs:
            o["node"] = 2
        r = self.run_check(ops, nem)
        self.assertEqual(r["minority"], 0)

    def test_partition_cut_ends_when_a_membership_step_starts(self):
        # Node 2 isolated from pubs[4]; a membership step starts at
        # pubs[8]: confirms by node 2 in between are minority ones (three:
        # pubs 5..7, after the grace), later ones are not checked.
        ops, pubs = self.minority_setup()
        t_cut = pubs[5]["t"] - check.MINORITY_GRACE - 0.001
        nem = [{"t": t_cut, "op": "nemesis", "nemesis": "partition",
                "action": "start", "mode": "isolate", "node": 2},
               mem_event(pubs[8]["t"] - 0.001, "start", step="add", node=4),
               mem_event(pubs[9]["t"], "heal"),
               mem_event(pubs[20]["t"], "done", step="add", node=4,
                         ok=True),
               {"t": pubs[30]["t"], "op": "nemesis", "nemesis": "partition",
                "action": "heal"}]
        r = self.run_check(ops, nem)
        self.assertEqual(r["minority"], 3)
        self.assertEqual(check.violations(r), ["minority"])

    def test_partition_made_during_a_membership_step_is_not_checked(self):
        ops, pubs = self.minority_setup()
        nem = [mem_event(pubs[0]["t"], "start", step="remove", node=1),
               {"t": pubs[1]["t"], "op": "nemesis", "nemesis": "partition",
                "action": "start", "mode": "isolate", "node": 2},
               mem_event(pubs[2]["t"], "heal"),
               mem_event(pubs[30]["t"], "done", step="remove", node=1,
                         ok=True),
               {"t": pubs[35]["t"], "op": "nemesis", "nemesis": "partition",
                "action": "heal"}]
        r = self.run_check(ops, nem)
        self.assertEqual(r["minority"], 0)
        # Without the step the same cut is checked.
        r = self.run_check(ops, [o for o in nem
                                 if o.get("nemesis") == "partition"])
        self.assertGreater(r["minority"], 0)

    def test_membership_done_after_heal_extends_the_fault_phase(self):
        # The step starts at +10, its window heals at +11, the step is
        # done at +15: the fault phase is 5 s, not 1 s.
        h, _ = paced_history(lambda i: True)
        nem = [mem_event(T0 + 10, "start", step="add", node=4),
               mem_event(T0 + 11, "heal"),
               mem_event(T0 + 15, "done", step="add", node=4, ok=True)]
        r = self.run_check(h.ops, nem)
        self.assertEqual(r["fault_seconds"], 5)
        self.assertEqual(len(r["faults"]), 1)
        self.assertAlmostEqual(r["faults"][0][3], 5.0)

    def test_membership_summary_counts_steps_and_overlapping_faults(self):
        h, _ = paced_history(lambda i: True)
        nem = [mem_event(T0 + 10, "start", step="add", node=4),
               mem_event(T0 + 11, "heal"),
               {"t": T0 + 12, "op": "nemesis", "nemesis": "kill",
                "action": "start", "node": 4},
               mem_event(T0 + 13, "done", step="add", node=4, ok=True),
               {"t": T0 + 14, "op": "nemesis", "nemesis": "kill",
                "action": "heal", "node": 4},
               mem_event(T0 + 15, "start", step="remove", node=1),
               mem_event(T0 + 16, "heal"),
               mem_event(T0 + 17, "done", step="remove", node=1, ok=False),
               mem_event(T0 + 18, "skip", why="no node id left"),
               mem_event(T0 + 19, "start", step="add", node=5)]
        r = self.run_check(h.ops, nem)
        m = r["membership"]
        self.assertEqual((m["add"], m["remove"], m["failed"], m["running"],
                          m["skipped"], m["overlaps"]), (1, 0, 1, 1, 1, 1))
        self.assert_only(r)
        # No membership events: no summary.
        self.assertIsNone(self.run_check(h.ops, nem[2:3] + nem[4:5])[
            "membership"])

    def test_missing_final_counters_are_told_apart_from_drained(self):
        # The workload writes a "final" line per queue when it can list
        # the queues at the end; none at all means "unknown", not 0.
        ops = clean_history().finish()
        r = self.run_check(ops)
        self.assertEqual((r["finals"], r["undrained"]), (0, 0))
        ops.append({"t": T0 + 99, "op": "final", "queue": "q0",
                    "ready": 2, "unacked": 1})
        r = self.run_check(ops)
        self.assertEqual((r["finals"], r["undrained"]), (1, 3))


def mem_event(t, action, **fields):
    o = {"t": t, "op": "nemesis", "nemesis": "membership", "action": action}
    o.update(fields)
    return o


class CommandLineTest(unittest.TestCase):
    def run_cli(self, ops):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "history.jsonl")
            with open(path, "w") as f:
                for op in ops:
                    f.write(json.dumps(op) + "\n")
                f.write('{"t": 1, "op": "deli')  # torn last line
            p = subprocess.run([sys.executable, CHECK, path],
                               capture_output=True, text=True, check=False)
        return p.returncode, p.stdout.strip().splitlines()[-1]

    def test_clean_exits_zero_with_summary_line(self):
        rc, last = self.run_cli(clean_history().finish())
        self.assertEqual(rc, 0)
        self.assertEqual(last, "lost=0 phantom=0 dup=0 reordered=0 "
                         "confirmed=40 availability=1.000")

    def test_violation_exits_non_zero(self):
        h = clean_history()
        h.publish("p0", 21, "q1", 21)
        rc, last = self.run_cli(h.finish())
        self.assertEqual(rc, 1)
        self.assertTrue(last.startswith("lost=1 phantom=0 dup=0 "
                                        "reordered=0 confirmed=41"), last)


if __name__ == "__main__":
    unittest.main()
