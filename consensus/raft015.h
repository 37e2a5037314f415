/* raft015: guards against canonical/raft 0.15 bugs (Debian 12's libraft,
 * built with NDEBUG, so none of its asserts stop them), for the owner of a
 * raft_io to apply in wrappers of its methods. shard.c wraps raft_uv's
 * tick callback (raft015_tick), receive callback (raft015_recv) and send
 * (raft015_send_allowed, raft015_send); the tests put the same glue around
 * raft_fixture (test_consensus.c) and raft_uv (test_transport.c).
 *
 * Bug 1, the install: a follower installing a snapshot from its leader
 * still counts down its election timer. raft 0.15 installs in two steps:
 * it replaces its in-memory log by the snapshot (logRestore) and calls
 * snapshot_put; only the put's callback (installSnapshotCb) restores the
 * FSM, adopts the snapshot's configuration and answers the leader, at the
 * id and address it reads from follower_state.current_leader. Behind
 * catchup.c the put waits for a copy of the state from a peer, seconds or
 * longer. If the timer runs out meanwhile (the leader died, or the install
 * outlasts the timeout) the follower becomes a (pre-vote) candidate, or
 * even a leader, in the middle of the install, and when the put ends the
 * answer is addressed from a union member that now holds the candidate's
 * fields: address 0x100 (in_pre_vote = 1) in a chaos run, and raft_uv's
 * send crashed in strlen() (SIGSEGV). A follower that stepped down again
 * knows no leader and answers to address NULL, the same crash; a leader
 * also gets the snapshot's configuration swapped under its progress array.
 * Upstream fixed it in v0.17.1: 4fbd3c0 (canonical/raft#343, no candidacy
 * while installing) and 2a38d3d (no answer after a term change).
 *  - raft015_tick() is the fix: it keeps an installing follower a follower.
 *  - raft015_send_allowed() is the backstop for the one way left to become
 *    a candidate mid-install, a TimeoutNow from the leader (raft 0.15 takes
 *    it when the leader's last entry is the snapshot's): it drops the
 *    misaddressed answer, as upstream does.
 *
 * Bug 2, the transfer: TimeoutNow's send request lives in the caller's
 * struct raft_transfer, which raft_uv may use after the caller freed it;
 * raft015_send().
 *
 * Bug 3, the compacted log: a follower takes the entries of an
 * AppendEntries that starts below its compacted log for entries it lacks,
 * and corrupts its log; raft015_recv(). Still there in v0.18.1.
 *
 * These functions read fields of struct raft that raft.h exposes but does
 * not document (snapshot.put, last_stored, log, follower_state); they hold
 * for 0.15 only. The fixture tests of each say which behaviour of raft they
 * expect, so that an upgrade that changes it shows.
 *
 * Threads: the raft instance's loop thread. */
#ifndef RMQ_RAFT015_H
#define RMQ_RAFT015_H

#include <stdbool.h>

#include <raft.h>

/* True while @r installs a snapshot sent by its leader: snapshot_put in
 * flight with the log reset to the snapshot (last_stored 0), raft's own
 * replicationInstallSnapshotBusy(), which is not exported. A snapshot @r
 * takes itself does not count (put.data then points at @r). */
bool raft015_installing_snapshot(const struct raft *r);

/* Call before each of raft's ticks (bug 1). While a follower installs a
 * snapshot, restarts @r's election timer, so that this tick cannot make it
 * a candidate, and returns true (for the owner to log); otherwise changes
 * nothing and returns false. Raft's tick runs either way. Upstream does
 * the same inside tickFollower(); the follower's election timeout starts
 * again when the install ends. */
bool raft015_tick(struct raft *r);

/* False for the answers of bug 1: an AppendEntries result that
 * sendAppendEntriesResult() addresses from follower_state while the server
 * is no follower (the id and address are then exactly that union's
 * fields: garbage), or from a follower that knows no leader (address
 * NULL). The owner's send then returns an error without sending, and
 * raft frees the request; dropping the answer is what upstream does.
 * Every other message is allowed: in particular a candidate's rejection of
 * a stale leader's AppendEntries, which names its sender (and whose send
 * must not fail: raft 0.15 would free its entries twice). */
bool raft015_send_allowed(const struct raft *r, const struct raft_message *m);

/* Bug 2, the transfer: raft_transfer() sends TimeoutNow with the
 * raft_io_send embedded in the caller's struct raft_transfer and no
 * callback, so nothing tells the caller when raft_uv is done with it.
 * The transfer ends (the target won, or an election timeout passed) and
 * the caller frees the struct while raft_uv may still hold the request:
 * with no connection to the target (a node that just died or joined)
 * raft_uv queues it, and reads req->cb when it evicts, flushes or cancels
 * the queue. A membership chaos run crashed that way (SIGSEGV in
 * uvClientConnectCb calling a callback read from reused memory).
 *
 * raft015_send() passes every message to @send unchanged except
 * TimeoutNow, which goes out with a request of its own that its callback
 * frees; raft's embedded request is never handed to raft_uv. Returns
 * @send's result, or RAFT_NOMEM. */
typedef int (*raft015_send_fn)(struct raft_io *io, struct raft_io_send *req,
			       const struct raft_message *m,
			       raft_io_send_cb cb);
int raft015_send(raft015_send_fn send, struct raft_io *io,
		 struct raft_io_send *req, const struct raft_message *m,
		 raft_io_send_cb cb);

/* Bug 3, the compacted log: a follower whose log was compacted by a
 * snapshot takes the entries of an AppendEntries with prev_log_index 0 for
 * entries it lacks: the log-matching check passes, logTermOf() reads 0
 * below the log's start, so every entry is appended after its last one;
 * raft then finds no entry at index 1 ("No log entries found at index 1"),
 * shuts down, and its error path truncates below the log's start: a
 * corrupted reference table, then SIGSEGV in refsDecr or a double free in
 * logClose (cluster_http under ASan). A leader sends that when its own log
 * still starts at 1 (it never took a snapshot) and its next index for the
 * follower fell back to 1 (a send failed: the follower was down when it
 * was elected). Stock raft rarely gets there, since every node snapshots
 * at the same threshold; raftmq's nodes size theirs from what they applied
 * (shard.c, size_log). With prev_log_index > 0 raft refuses such a
 * message, safely, but the leader then walks back one index per round
 * trip.
 *
 * Call raft015_recv() for each message, before raft's receive callback,
 * and deliver @m only if it returns true (otherwise it was released here).
 * An AppendEntries with entries that starts below the entries @r holds in
 * memory is cut to start at @r's snapshot: entries up to it are dropped
 * (the snapshot holds them), and raft checks the leader's term at that
 * index against the snapshot's, as it checks any previous entry. One that
 * ends before the snapshot is dropped (the leader sends again). Every
 * other message goes through untouched. */
bool raft015_recv(struct raft *r, struct raft_message *m);

#endif /* RMQ_RAFT015_H */
