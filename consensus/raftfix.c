/* raftfix: see raftfix.h. */
#include "raftfix.h"

#include <string.h>

void raftfix_tick(struct raft *r)
{
	/* raft 0.15's replicationInstallSnapshotBusy(): an install sets
	 * last_stored to 0 until its put completes. */
	if (raft_state(r) == RAFT_FOLLOWER && r->snapshot.put.data != NULL &&
	    r->last_stored == 0) {
		r->election_timer_start = r->io->time(r->io);
	}
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

bool raftfix_recv(struct raft *r, struct raft_message *m)
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
