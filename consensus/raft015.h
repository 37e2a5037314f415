/* raft015: guards against canonical/raft 0.15 bugs, for the owner of a
 * raft_io to apply in wrappers of its methods (shard.c wraps the tick
 * callback and send).
 *
 * Bug 1, the install: a follower installing a snapshot from its leader
 * still counts down its election timer, and when it runs out (the leader
 * died, or the install takes longer than the timeout) the follower becomes
 * a (pre-vote) candidate in the middle of the install. When the snapshot
 * write ends, raft 0.15's installSnapshotCb answers the leader with an
 * AppendEntries result addressed from follower_state.current_leader, a
 * union member that now holds the candidate's fields: address 0x100
 * (in_pre_vote = 1) in a chaos run, and raft_uv's send crashed in strlen()
 * (SIGSEGV). A follower that granted a vote meanwhile and knows no leader
 * answers to address NULL, the same crash. Upstream fixed both in v0.17.1
 * (commit 2a38d3d: no candidacy while installing, no answer after a term
 * change).
 *
 * These functions read fields of struct raft that raft.h exposes but does
 * not document (snapshot.put); they hold for 0.15 only.
 *
 * Threads: the raft instance's loop thread. */
#ifndef RMQ_RAFT015_H
#define RMQ_RAFT015_H

#include <stdbool.h>

#include <raft.h>

/* True while @r installs a snapshot sent by its leader: raft 0.15 sets
 * snapshot.put.data to its install request then (to the raft itself while
 * it takes a snapshot of its own). */
bool raft015_installing_snapshot(const struct raft *r);

/* False while a follower installs a snapshot: the owner skips raft's tick
 * then, so that raft cannot turn the follower into a candidate; it checks
 * its election timer again at the first tick after the install. (Upstream
 * restarts the timer instead; a follower whose leader died during a long
 * install campaigns a moment sooner here.) */
bool raft015_tick_allowed(const struct raft *r);

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

#endif /* RMQ_RAFT015_H */
