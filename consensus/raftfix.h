/* raftfix: keeps canonical/raft 0.15 (Debian's libraft, built with
 * NDEBUG) away from two of its bugs that raftmq's snapshots reach. Each is
 * fixed in later raft releases; raftfix does from outside what they do
 * inside, through the tick and receive callbacks a shard wraps (shard.c,
 * io_start_cb).
 *
 * Threads: the loop thread that runs the raft instance. */
#ifndef RMQ_RAFTFIX_H
#define RMQ_RAFTFIX_H

#include <stdbool.h>

#include <raft.h>

/* Call before each of raft's ticks.
 *
 * raft 0.15 installs a snapshot in two steps: it first replaces its
 * in-memory log by the snapshot (logRestore), then waits for snapshot_put,
 * and only in the put's callback (installSnapshotCb) restores the FSM,
 * adopts the snapshot's configuration and answers the leader, whose
 * address it reads from its follower state. Nothing stops its election
 * timer meanwhile: a follower that stops hearing from its leader during
 * the put becomes a candidate (even a leader), and the callback then runs
 * on a struct raft in another state: the follower state it reads is the
 * candidate's or leader's (a union), so it sends the answer to a garbage
 * or NULL address (SIGSEGV in raft_uv's uvClientInit), or replaces the
 * configuration under a leader's progress array. With raft_uv alone the
 * put is quick; behind catchup.c it waits for a copy of the state from a
 * peer, seconds or longer (later raft releases keep such a follower a
 * follower: canonical/raft#343, 4fbd3c0).
 *
 * This does what they do: while a snapshot install is in progress it
 * restarts @r's election timer, so that the follower stays one until the
 * install is over. (Like any 0.15 follower that knows a leader, it grants
 * no vote meanwhile.) */
void raftfix_tick(struct raft *r);

/* Call for each message, before raft's receive callback; deliver it to
 * raft only if this returns true (otherwise it was released here).
 *
 * raft 0.15 takes the entries of an AppendEntries that starts below the
 * entries this follower still holds in memory (its log was compacted by a
 * snapshot) for entries it lacks, if prev_log_index is 0: the log-matching
 * check passes, the entries are appended after the last one, raft then
 * finds none at the index it expected ("No log entries found at index 1"),
 * stops (RAFT_SHUTDOWN), and its error path truncates below the log's
 * start: a corrupted reference table, then SIGSEGV in refsDecr or a double
 * free when the shard closes. A leader sends that whenever its log still
 * starts at index 1 (it never took a snapshot) and its next index for the
 * follower fell back to 1 (a send failed before it heard from it: the
 * follower was down when it was elected). raftmq's nodes size their
 * snapshot threshold from what they have applied, so one node's log is
 * compacted while another's is not. (With prev_log_index > 0, raft
 * refuses such a message, safely, but the leader then walks back one
 * index per round trip until it reaches 0.)
 *
 * Such a message, either way, is cut to start at the follower's snapshot: entries up to
 * it are dropped (the snapshot holds them), and raft checks the leader's
 * term at that index against the snapshot's, as it checks any previous
 * entry. A message that ends before the snapshot is dropped (the leader
 * sends again). */
bool raftfix_recv(struct raft *r, struct raft_message *m);

#endif /* RMQ_RAFTFIX_H */
