/* raft015: guards against canonical/raft 0.15 bugs. See raft015.h. */
#include "raft015.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

bool raft015_installing_snapshot(const struct raft *r)
{
	/* replicationInstallSnapshot() resets last_stored to 0 and points
	 * put.data at its request until installSnapshotCb(); putSnapshot() (a
	 * snapshot of our own) points put.data at the raft. */
	return r->snapshot.put.data != NULL && r->last_stored == 0 &&
	       r->snapshot.put.data != (const void *)r;
}

bool raft015_tick(struct raft *r)
{
	if (r->state != RAFT_FOLLOWER || !raft015_installing_snapshot(r)) {
		return false;
	}
	/* Upstream's tickFollower() also draws a new random timeout; the
	 * point is that the timer cannot expire at this tick. */
	r->election_timer_start = r->io->time(r->io);
	return true;
}

bool raft015_send_allowed(const struct raft *r, const struct raft_message *m)
{
	if (m->type != RAFT_IO_APPEND_ENTRIES_RESULT) {
		return true;
	}
	/* sendAppendEntriesResult() of a follower that knows no leader. */
	if (m->server_address == NULL) {
		return false;
	}
	/* sendAppendEntriesResult() of a server that is no follower any
	 * more: id and address are the union's follower fields, read while
	 * it holds the candidate's or the leader's. A candidate's or a
	 * leader's own answer to an AppendEntries (a rejection of a stale
	 * leader) names its sender and goes out: refusing it would make raft
	 * free that request's entries twice (recvAppendEntries frees them
	 * before sending, recvMessage again on the error). */
	return r->state == RAFT_FOLLOWER ||
	       m->server_id != r->follower_state.current_leader.id ||
	       m->server_address != r->follower_state.current_leader.address;
}

static void own_send_cb(struct raft_io_send *req, int status)
{
	(void)status;
	free(req);
}

int raft015_send(raft015_send_fn send, struct raft_io *io,
		 struct raft_io_send *req, const struct raft_message *m,
		 raft_io_send_cb cb)
{
	struct raft_io_send *own;
	int rv;

	if (m->type != RAFT_IO_TIMEOUT_NOW) {
		return send(io, req, m, cb);
	}
	/* membershipLeadershipTransferStart(): @req is the transfer's own,
	 * @cb is NULL and raft never looks at @req again. */
	own = malloc(sizeof *own);
	if (own == NULL) {
		return RAFT_NOMEM;
	}
	own->data = NULL;
	rv = send(io, own, m, own_send_cb);
	if (rv != 0) {
		free(own); /* raft_uv did not keep it */
	}
	return rv;
}

/* Free the batches of @n entries at @e, except @keep (still used). Entries
 * received from one message share their batch (raft_uv, raft_fixture). */
static void free_batches(struct raft_entry *e, size_t n, const void *keep)
{
	const void *prev = NULL;
	for (size_t i = 0; i < n; i++) {
		if (e[i].batch != prev) {
			prev = e[i].batch;
			if (prev != keep) {
				raft_free(e[i].batch);
			}
		}
	}
}

bool raft015_recv(struct raft *r, struct raft_message *m)
{
	struct raft_append_entries *a = &m->append_entries;
	raft_index snap = r->log.snapshot.last_index;

	if (m->type != RAFT_IO_APPEND_ENTRIES || a->n_entries == 0 ||
	    a->prev_log_index >= r->log.offset) {
		return true;
	}
	/* offset > 0: the log was compacted, so snap >= offset > prev. */
	if (a->prev_log_index + a->n_entries < snap) {
		free_batches(a->entries, a->n_entries, NULL);
		raft_free(a->entries);
		return false;
	}
	size_t skip = (size_t)(snap - a->prev_log_index);
	a->prev_log_term = a->entries[skip - 1].term;
	a->prev_log_index = snap;
	if (skip == a->n_entries) {
		free_batches(a->entries, skip, NULL);
		raft_free(a->entries);
		a->entries = NULL;
		a->n_entries = 0;
		return true;
	}
	free_batches(a->entries, skip, a->entries[skip].batch);
	memmove(a->entries, a->entries + skip,
		(a->n_entries - skip) * sizeof *a->entries);
	a->n_entries -= (unsigned)skip;
	return true;
}
