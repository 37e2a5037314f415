/* raft015: guards against canonical/raft 0.15 bugs. See raft015.h. */
#include "raft015.h"

#include <stddef.h>
#include <stdlib.h>

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
