/* raft015: guards against canonical/raft 0.15 bugs. See raft015.h. */
#include "raft015.h"

#include <stddef.h>

bool raft015_installing_snapshot(const struct raft *r)
{
	/* replicationInstallSnapshot() points put.data at its request until
	 * installSnapshotCb(); putSnapshot() (a snapshot of our own) points it
	 * at the raft. */
	return r->snapshot.put.data != NULL &&
	       r->snapshot.put.data != (const void *)r;
}

bool raft015_tick_allowed(const struct raft *r)
{
	return !(r->state == RAFT_FOLLOWER && raft015_installing_snapshot(r));
}

bool raft015_send_allowed(struct raft *r, const struct raft_message *m)
{
	raft_id id;
	const char *address;

	if (m->type != RAFT_IO_APPEND_ENTRIES_RESULT) {
		return true;
	}
	if (raft_state(r) != RAFT_FOLLOWER) {
		return false;
	}
	raft_leader(r, &id, &address);
	return id != 0 && address != NULL && m->server_address != NULL;
}
