/* catchup: keeps a shard's snapshots (descriptors, see fsm.h) honest, and
 * brings a replica's store up to a snapshot it is behind.
 *
 * The rule: raft persists a snapshot descriptor at index X only once the
 * shard's store is durable at index X or later. catchup enforces it by
 * standing between raft and raft_uv's snapshot_put:
 *   - the store is at X or later (raft's own snapshots, and installs on a
 *     replica whose store is ahead): it is synced (mdb_env_sync, in the
 *     threadpool), then the descriptor goes to raft_uv;
 *   - the store is behind X (an install on a replica that lagged more than
 *     the leader's log keeps): a consistent copy of a peer's store is
 *     fetched over the peer port (transport kind "state fetch"), in the
 *     threadpool, into <dir>/lmdb.fetch; a copy below X is refused and the
 *     next peer tried, every second until one succeeds; then the copy
 *     replaces the store (store_replace), the owner rebuilds what it derives
 *     from the store (restored_cb), and only then does the descriptor go to
 *     raft_uv, whose install then restores nothing.
 * raft 0.15 cannot take a failed restore back: it has already replaced its
 * log by the snapshot when it calls restore. So instead of failing, the
 * install waits in snapshot_put, which raft treats as slow I/O: the
 * follower ignores entries meanwhile and the leader keeps sending
 * heartbeats; raft015_tick() keeps it a follower. Appends raft
 * would submit during an install are held and submitted after its put, as
 * raft_uv orders them (a safety net: a follower that installs appends
 * nothing); appends behind the put of a snapshot raft took itself go on.
 *
 * It also serves fetches of this shard's store to peers (one worker per
 * fetch, reading one LMDB read transaction).
 *
 * Threads: the loop thread; the copies run in libuv's threadpool. */
#ifndef RMQ_CATCHUP_H
#define RMQ_CATCHUP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <raft.h>
#include <uv.h>

#include "store.h"
#include "transport.h"

#define CATCHUP_MAX_PEERS 16

enum catchup_state {
	CATCHUP_IDLE,     /* no snapshot put waiting */
	CATCHUP_SYNCING,  /* store sync in the threadpool */
	CATCHUP_FETCHING, /* copy from a peer in the threadpool */
	CATCHUP_RETRY,    /* every peer failed: retry timer running */
	CATCHUP_SWAPPING, /* copy complete: waiting for our serves to end */
};

struct catchup_peer {
	uint64_t id;
	char address[256];
};

struct catchup_held_append {
	struct raft_io_append *req;
	const struct raft_entry *entries;
	unsigned n;
	raft_io_append_cb cb;
	struct catchup_held_append *next;
};

struct catchup {
	uv_loop_t *loop;
	struct raft *raft;
	struct raft_io *io;
	struct store *store;
	struct peer_net *net;
	struct raft_uv_transport *transport;
	uint32_t shard_id;
	uint64_t node_id;
	char tmp_dir[4200]; /* where fetched copies are built */
	struct store_options store_options;
	void (*restored_cb)(void *arg); /* the store was replaced */
	void (*fatal_cb)(void *arg);    /* the store is unusable */
	void *cb_arg;

	/* raft_uv's methods that catchup wraps. */
	int (*orig_put)(struct raft_io *io, unsigned trailing,
			struct raft_io_snapshot_put *req,
			const struct raft_snapshot *snapshot,
			raft_io_snapshot_put_cb cb);
	int (*orig_append)(struct raft_io *io, struct raft_io_append *req,
			   const struct raft_entry entries[], unsigned n,
			   raft_io_append_cb cb);

	enum catchup_state state;
	struct { /* the snapshot put waiting, when state != IDLE */
		unsigned trailing;
		struct raft_io_snapshot_put *req;
		const struct raft_snapshot *snapshot;
		raft_io_snapshot_put_cb cb;
		uint64_t index;
		uint64_t source;
	} put;
	struct catchup_held_append *held; /* owned list, oldest first */
	struct catchup_held_append **held_tail;
	uv_work_t work;
	uv_timer_t retry;
	int work_status;
	uint64_t started; /* uv_now() when the fetch began */
	struct catchup_peer peers[CATCHUP_MAX_PEERS];
	unsigned n_peers;
	uint8_t preamble[PEER_NET_PREAMBLE_MAX];
	size_t preamble_len;
	uint64_t fetched_index; /* of the copy, set by the worker */
	uint64_t fetched_from;
	uint64_t fetched_bytes;
	unsigned failed_rounds;
	atomic_bool stop; /* read by workers: give up, we are closing */
	unsigned serving; /* fetches of our store in flight */

	bool closing;
	void (*close_cb)(struct catchup *c);

	/* Counters, for tests and logs. */
	uint64_t fetches; /* copies swapped in */
	uint64_t served;  /* copies served to peers */
};

/* Wrap @io (raft_uv's) and serve fetches through @transport. @dir is the
 * shard's directory. The owner routes @io's snapshot_put and append
 * through catchup_snapshot_put() and catchup_append(). */
void catchup_init(struct catchup *c, uv_loop_t *loop, struct raft *raft,
		  struct raft_io *io, struct store *store, struct peer_net *net,
		  struct raft_uv_transport *transport, uint32_t shard_id,
		  uint64_t node_id, const char *dir,
		  const struct store_options *so);

int catchup_snapshot_put(struct catchup *c, unsigned trailing,
			 struct raft_io_snapshot_put *req,
			 const struct raft_snapshot *snapshot,
			 raft_io_snapshot_put_cb cb);
int catchup_append(struct catchup *c, struct raft_io_append *req,
		   const struct raft_entry entries[], unsigned n,
		   raft_io_append_cb cb);

/* Stop: workers give up, a waiting snapshot put fails with RAFT_CANCELED
 * (raft discards it; nothing of it reached the disk), so do held appends.
 * @cb fires once no worker runs any more. Call from raft_io's close, that
 * is after raft_close() made raft unavailable (raft 0.15 would otherwise
 * go on after a cancelled install with a log raft_uv never moved), and
 * close raft_uv from @cb. */
void catchup_close(struct catchup *c, void (*cb)(struct catchup *c));

#endif /* RMQ_CATCHUP_H */
