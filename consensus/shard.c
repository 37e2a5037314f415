/* shard: a raft group with its FSM and store. See shard.h.
 *
 * The happy path of a proposal: shard_propose() encodes the command and
 * calls raft_apply(); raft replicates it, a majority fsyncs it, raft calls
 * our FSM apply on every replica (one LMDB transaction recording the raft
 * index), then on the leader the apply callback hands the FSM result to the
 * proposer.
 *
 * Failure modes: raft_apply() refuses (not leader, shutting down) → the
 * error is returned and the callback never fires; leadership is lost
 * before the entry commits → RMQ_ELEADERLOST (outcome unknown); a storage
 * fault while applying → raft stops applying on this node (logged). */
#include "shard.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <raft.h>
#include <raft/uv.h>

#include "raft015.h"

#define container_of(ptr, type, member) \
	((type *)((char *)(ptr)-offsetof(type, member)))

struct shard {
	uv_loop_t *loop;
	struct raft raft;
	struct raft_io io;
	struct raft_uv_transport transport;
	struct fsm_raft rfsm;
	struct catchup catchup;
	struct fsm *fsm;     /* owned */
	struct store *store; /* owned */
	struct shard_config config;
	char *dir;          /* owned */
	char *peer_address; /* owned */
	struct shard_hooks hooks;
	/* Wrapped: raft_uv's start (to see incoming messages and ticks), its
	 * send (those three for raft015.h), its close (which waits for
	 * catchup, io_close_cb) and the FSM's apply (to time it). */
	int (*io_start)(struct raft_io *io, unsigned msecs,
			raft_io_tick_cb tick, raft_io_recv_cb recv);
	raft_io_recv_cb raft_recv;
	raft_io_tick_cb raft_tick;
	int (*io_send)(struct raft_io *io, struct raft_io_send *req,
		       const struct raft_message *m, raft_io_send_cb cb);
	bool tick_held; /* the election held: a snapshot install runs */
	void (*io_close)(struct raft_io *io, raft_io_close_cb cb);
	raft_io_close_cb io_closed;
	uv_check_t close_check; /* starts raft_uv's close (close_check_cb) */
	bool uv_closed;
	bool check_closed;
	int (*fsm_apply)(struct raft_fsm *fsm, const struct raft_buffer *buf,
			 void **result);
	uint64_t leader_commit; /* highest leader_commit a leader sent us */

	enum shard_role role;
	uint64_t term;
	bool barrier_pending;
	uint64_t barrier_issued; /* term of the barrier in flight */
	uint64_t barrier_term;   /* term whose barrier has been applied */
	struct raft_barrier barrier;

	unsigned changing; /* configuration changes in flight (0 or 1) */
	bool closing;

	/* Sizing of raft's in-memory log (adapt_log). */
	uint64_t sized_entries; /* fsm counters at the last sizing */
	uint64_t sized_bytes;
	uint64_t entry_bytes; /* average entry size, smoothed */

	shard_close_cb close_cb;
	void *close_data;
};

struct shard_change {
	struct raft_change req;
	struct shard *shard;
	shard_change_cb cb;
	void *data;
};

struct shard_apply {
	struct raft_apply req;
	shard_apply_cb cb;
	void *data;
};

static int err_from_raft(int rv)
{
	switch (rv) {
	case 0:
		return 0;
	case RAFT_NOMEM:
		return RMQ_ENOMEM;
	case RAFT_NOTLEADER:
		return RMQ_ENOTLEADER;
	case RAFT_LEADERSHIPLOST:
	case RAFT_SHUTDOWN:
		return RMQ_ELEADERLOST;
	case RAFT_CANTBOOTSTRAP:
		return RMQ_EEXISTS;
	case RAFT_TOOBIG:
		return RMQ_ETOOLARGE;
	case RAFT_NOSPACE:
		return RMQ_EFULL;
	case RAFT_CORRUPT:
		return RMQ_ECORRUPT;
	case RAFT_BUSY:
	case RAFT_CANTCHANGE:
		return RMQ_EUNAVAIL;
	case RAFT_BADID:
	case RAFT_BADROLE:
	case RAFT_DUPLICATEID:
	case RAFT_DUPLICATEADDRESS:
	case RAFT_NOTFOUND:
		return RMQ_EINVAL;
	default:
		return RMQ_EIO;
	}
}

static void applied_cb(void *data, const struct fsm_result *r)
{
	struct shard *s = data;
	if (s->hooks.applied != NULL) {
		s->hooks.applied(s->hooks.data, s, r);
	}
}

static void restored_cb(void *arg)
{
	struct shard *s = arg;
	if (s->hooks.restored != NULL) {
		s->hooks.restored(s->hooks.data, s);
	}
}

static void fatal_cb(void *arg)
{
	struct shard *s = arg;
	if (s->hooks.fatal != NULL) {
		s->hooks.fatal(s->hooks.data, s);
	}
}

/* Every message for this shard passes here before raft sees it: note the
 * commit index the leader announces, so that a replica knows how far
 * behind it is (raft 0.15 keeps only its own commit index, which while
 * catching up trails the leader's); and cut an AppendEntries that raft
 * 0.15 would take wrongly (raft015.h, bug 3). */
static void io_recv_cb(struct raft_io *io, struct raft_message *m)
{
	struct shard *s =
		(struct shard *)((char *)io - offsetof(struct shard, io));
	uint64_t commit = 0;
	if (m->type == RAFT_IO_APPEND_ENTRIES) {
		commit = m->append_entries.leader_commit;
	} else if (m->type == RAFT_IO_INSTALL_SNAPSHOT) {
		commit = m->install_snapshot.last_index;
	}
	if (commit > s->leader_commit) {
		s->leader_commit = commit;
	}
	if (raft015_recv(&s->raft, m)) {
		s->raft_recv(io, m);
	}
}

/* Every tick of raft passes here: while this follower installs a
 * snapshot, raft015_tick() keeps raft 0.15 from making it a candidate
 * (which would crash it when the install ends: raft015.h, bug 1). */
static void io_tick_cb(struct raft_io *io)
{
	struct shard *s = container_of(io, struct shard, io);
	if (raft015_tick(&s->raft)) {
		if (!s->tick_held) {
			fprintf(stderr,
				"raftmq: shard %u: installing a snapshot: no "
				"election until it is written\n",
				s->config.id);
			s->tick_held = true;
		}
	} else {
		s->tick_held = false;
	}
	s->raft_tick(io);
}

static int io_start_cb(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
		       raft_io_recv_cb recv)
{
	struct shard *s =
		(struct shard *)((char *)io - offsetof(struct shard, io));
	s->raft_recv = recv;
	s->raft_tick = tick;
	return s->io_start(io, msecs, io_tick_cb, io_recv_cb);
}

/* raft_uv's send, except for an answer raft 0.15 addresses from the wrong
 * union member (raft015.h, bug 1): dropped, raft frees the request; and a
 * leadership transfer's TimeoutNow goes out with a request of its own
 * (bug 2). */
static int io_send_cb(struct raft_io *io, struct raft_io_send *req,
		      const struct raft_message *m, raft_io_send_cb cb)
{
	struct shard *s =
		(struct shard *)((char *)io - offsetof(struct shard, io));
	if (!raft015_send_allowed(&s->raft, m)) {
		fprintf(stderr,
			"raftmq: shard %u: dropped an AppendEntries result "
			"that raft 0.15 addressed from a state it is not in "
			"(%d)\n",
			s->config.id, raft_state(&s->raft));
		return RAFT_NOCONNECTION;
	}
	return raft015_send(s->io_send, io, req, m, cb);
}

/* raft_uv's close is over; so is close_check's (the shard's memory may go
 * only once both are): raft's own close callback goes on. */
static void maybe_io_closed(struct shard *s)
{
	if (s->uv_closed && s->check_closed) {
		s->io_closed(&s->io);
	}
}

static void uv_closed_cb(struct raft_io *io)
{
	struct shard *s = container_of(io, struct shard, io);
	s->uv_closed = true;
	maybe_io_closed(s);
}

static void close_check_closed_cb(uv_handle_t *h)
{
	struct shard *s = h->data;
	s->check_closed = true;
	maybe_io_closed(s);
}

/* raft_uv's close starts here, in the loop's check phase, never inside a
 * close callback (catchup's ends in one). raft_uv 0.15 does not count its
 * segment writer among what its close waits for: it relies on the
 * writer's handles closing in the closing phase that follows its close,
 * before the segment's finalize (threadpool) can report back, which needs
 * a poll phase. Started from a close callback, those handles close only in
 * the next iteration, after a poll phase: a finalize that completed there
 * lets raft_uv report itself closed, the shard is freed, and the writer's
 * close callback then runs raft_uv's close check on freed memory (SIGSEGV
 * in raft's ioCloseCb at shutdown, 1 run in 20 of deploy_sd_notify under
 * ASan). */
static void close_check_cb(uv_check_t *h)
{
	struct shard *s = h->data;
	uv_check_stop(h);
	uv_close((uv_handle_t *)h, close_check_closed_cb);
	s->io_close(&s->io, uv_closed_cb);
}

static void catchup_closed_cb(struct catchup *c)
{
	struct shard *s = container_of(c, struct shard, catchup);
	uv_check_start(&s->close_check, close_check_cb);
}

/* raft_close() makes raft unavailable, then closes its io: catchup
 * closes first, raft_uv once catchup's workers (which use the store) are
 * done. In this order a snapshot install that catchup cancels reaches a
 * raft that acts on nothing any more: were raft still running, it would
 * take entries after the cancelled snapshot into a log that raft_uv never
 * moved there. */
static void io_close_cb(struct raft_io *io, raft_io_close_cb cb)
{
	struct shard *s = container_of(io, struct shard, io);
	s->io_closed = cb;
	catchup_close(&s->catchup, catchup_closed_cb);
}

static int timed_apply_cb(struct raft_fsm *rfsm, const struct raft_buffer *buf,
			  void **result)
{
	struct shard *s = (struct shard *)((char *)rfsm -
					   offsetof(struct shard, rfsm.rfsm));
	uint64_t start = uv_hrtime();
	int rv = s->fsm_apply(rfsm, buf, result);
	if (s->hooks.apply_time != NULL) {
		s->hooks.apply_time(s->hooks.data, s, uv_hrtime() - start);
	}
	return rv;
}

/* raft_uv's methods, through catchup (see catchup.h). */
static int snapshot_put_cb(struct raft_io *io, unsigned trailing,
			   struct raft_io_snapshot_put *req,
			   const struct raft_snapshot *snapshot,
			   raft_io_snapshot_put_cb cb)
{
	struct shard *s = container_of(io, struct shard, io);
	return catchup_snapshot_put(&s->catchup, trailing, req, snapshot, cb);
}

static int append_cb(struct raft_io *io, struct raft_io_append *req,
		     const struct raft_entry entries[], unsigned n,
		     raft_io_append_cb cb)
{
	struct shard *s = container_of(io, struct shard, io);
	return catchup_append(&s->catchup, req, entries, n, cb);
}

/* raft keeps in memory every entry since its last snapshot plus
 * snapshot_trailing entries before it: about (threshold + trailing) x the
 * average entry size. Both are counted in entries and an entry is a batch
 * of any size, so derive them from the bytes budget and the entries seen,
 * never above the configured counts. */
#define SHARD_ASSUMED_ENTRY_BYTES (64u * 1024) /* until entries are seen */
#define SHARD_MIN_LOG_ENTRIES 8

static void size_log(struct shard *s)
{
	uint64_t per = s->config.log_cache_bytes / (2 * s->entry_bytes);
	if (per < SHARD_MIN_LOG_ENTRIES) {
		per = SHARD_MIN_LOG_ENTRIES;
	}
	unsigned threshold = per < s->config.snapshot_threshold
				     ? (unsigned)per
				     : s->config.snapshot_threshold;
	unsigned trailing = per < s->config.snapshot_trailing
				    ? (unsigned)per
				    : s->config.snapshot_trailing;
	if (s->config.log_cache_bytes == 0) {
		threshold = s->config.snapshot_threshold;
		trailing = s->config.snapshot_trailing;
	}
	raft_set_snapshot_threshold(&s->raft, threshold);
	raft_set_snapshot_trailing(&s->raft, trailing);
}

/* Re-size once enough was applied to say something about entry sizes. */
static void adapt_log(struct shard *s)
{
	uint64_t n = s->rfsm.applied_entries - s->sized_entries;
	uint64_t bytes = s->rfsm.applied_bytes - s->sized_bytes;
	if (n < 16 && bytes < s->config.log_cache_bytes / 8) {
		return;
	}
	uint64_t avg = n > 0 ? bytes / n : s->entry_bytes;
	/* Bigger entries count at once, smaller ones slowly: the log must
	 * not outgrow the budget while batches grow. */
	if (avg >= s->entry_bytes) {
		s->entry_bytes = avg;
	} else {
		s->entry_bytes = (3 * s->entry_bytes + avg) / 4;
	}
	if (s->entry_bytes < 64) {
		s->entry_bytes = 64;
	}
	s->sized_entries = s->rfsm.applied_entries;
	s->sized_bytes = s->rfsm.applied_bytes;
	size_log(s);
}

static int make_dir(const char *path)
{
	if (mkdir(path, 0750) != 0 && errno != EEXIST) {
		fprintf(stderr, "raftmq: mkdir %s: %s\n", path,
			strerror(errno));
		return RMQ_EIO;
	}
	return 0;
}

void shard_tune_raft(struct raft *r, const struct shard_config *c)
{
	raft_set_election_timeout(r, c->election_timeout_ms);
	raft_set_heartbeat_timeout(r, c->heartbeat_timeout_ms);
	/* Pre-vote: a node back from a pause or a partition finds its
	 * election timer long expired. Without pre-vote it campaigns at once
	 * with a higher term, and the healthy leader that sees that term
	 * steps down: a needless election stalls the shard. With it the node
	 * first asks whether it could win and, while a leader is alive, is
	 * told no. (Leadership transfers skip the pre-vote in raft 0.15.) */
	raft_set_pre_vote(r, true);
}

int shard_open(uv_loop_t *loop, struct peer_net *net,
	       const struct shard_config *c, const struct shard_hooks *h,
	       struct shard **out)
{
	char path[4096];
	struct store_options so;
	struct shard *s;
	int rv;

	s = calloc(1, sizeof *s);
	if (s == NULL) {
		return RMQ_ENOMEM;
	}
	s->loop = loop;
	s->config = *c;
	s->hooks = *h;
	s->dir = strdup(c->dir);
	s->peer_address = strdup(c->peer_address);
	if (s->dir == NULL || s->peer_address == NULL) {
		rv = RMQ_ENOMEM;
		goto err_after_alloc;
	}
	s->config.dir = s->dir;
	s->config.peer_address = s->peer_address;

	rv = make_dir(s->dir);
	if (rv != 0) {
		goto err_after_alloc;
	}
	snprintf(path, sizeof path, "%s/lmdb", s->dir);
	rv = make_dir(path);
	if (rv != 0) {
		goto err_after_alloc;
	}
	so.map_size = c->map_size;
	so.nosync = true;
	rv = store_open(path, &so, &s->store);
	if (rv != 0) {
		fprintf(stderr, "raftmq: shard %u: open store %s: %s\n", c->id,
			path, codec_strerror(rv));
		goto err_after_alloc;
	}
	rv = fsm_init(&s->fsm, s->store, applied_cb, s);
	if (rv != 0) {
		goto err_after_store;
	}
	fsm_raft_init(&s->rfsm, s->fsm, s->store, &s->raft, c->id);
	s->rfsm.node_id = c->node_id;
	s->rfsm.cluster_id = c->cluster_id;
	s->rfsm.restored_cb = restored_cb;
	s->rfsm.fatal_cb = fatal_cb;
	s->rfsm.cb_arg = s;
	s->fsm_apply = s->rfsm.rfsm.apply;
	s->rfsm.rfsm.apply = timed_apply_cb;

	snprintf(path, sizeof path, "%s/raft", s->dir);
	rv = make_dir(path);
	if (rv != 0) {
		goto err_after_fsm;
	}
	rv = peer_net_transport_init(net, c->id, &s->transport);
	if (rv != 0) {
		goto err_after_fsm;
	}
	rv = raft_uv_init(&s->io, loop, path, &s->transport);
	if (rv != 0) {
		fprintf(stderr, "raftmq: shard %u: raft_uv_init %s: %s\n",
			c->id, path, s->io.errmsg);
		peer_net_transport_release(&s->transport);
		rv = err_from_raft(rv);
		goto err_after_fsm;
	}
	if (c->segment_size > 0) {
		raft_uv_set_segment_size(&s->io, c->segment_size);
	}
	s->io_start = s->io.start;
	s->io.start = io_start_cb;
	s->io_send = s->io.send;
	s->io.send = io_send_cb;
	rv = raft_init(&s->raft, &s->io, &s->rfsm.rfsm, c->node_id,
		       s->peer_address);
	if (rv != 0) {
		fprintf(stderr, "raftmq: shard %u: raft_init: %s\n", c->id,
			raft_errmsg(&s->raft));
		/* raft_init already initialized the transport through the io:
		 * it is released with the io, not by us. */
		raft_uv_close(&s->io);
		rv = err_from_raft(rv);
		goto err_after_fsm;
	}
	s->raft.data = s;
	catchup_init(&s->catchup, loop, &s->raft, &s->io, s->store, net,
		     &s->transport, c->id, c->node_id, s->dir, &so);
	s->catchup.restored_cb = restored_cb;
	s->catchup.fatal_cb = fatal_cb;
	s->catchup.cb_arg = s;
	s->io.snapshot_put = snapshot_put_cb;
	s->io.append = append_cb;
	s->io_close = s->io.close;
	s->io.close = io_close_cb;
	uv_check_init(loop, &s->close_check);
	s->close_check.data = s;
	shard_tune_raft(&s->raft, c);
	/* A new replica is promoted to voter once one catch-up round takes
	 * less than an election timeout; under a steady load the first rounds
	 * (a snapshot, a long log) are slow, so allow many before giving up
	 * (the caller retries anyway). */
	raft_set_max_catch_up_rounds(&s->raft, 50);
	/* ... and abort a promotion whose round makes no progress for this
	 * long (a dead or wedged new replica), so that other configuration
	 * changes, such as removing it, can go ahead. */
	raft_set_max_catch_up_round_duration(&s->raft, 15000);
	s->entry_bytes = SHARD_ASSUMED_ENTRY_BYTES;
	size_log(s);
	/* raft 0.15 waits this long before sending a snapshot again when the
	 * last attempt went unanswered (its default is 30 s): a follower that
	 * was down while the leader first tried would lag that long. */
	raft_set_install_snapshot_timeout(&s->raft,
					  2 * c->election_timeout_ms > 2000
						  ? 2 * c->election_timeout_ms
						  : 2000);
	*out = s;
	return 0;

err_after_fsm:
	fsm_close(s->fsm);
err_after_store:
	store_close(s->store);
err_after_alloc:
	free(s->dir);
	free(s->peer_address);
	free(s);
	return rv;
}

int shard_bootstrap(struct shard *s, const uint64_t *ids,
		    const char *const *addrs, size_t n)
{
	struct raft_configuration conf;
	int rv;

	raft_configuration_init(&conf);
	for (size_t i = 0; i < n; i++) {
		rv = raft_configuration_add(&conf, ids[i], addrs[i],
					    RAFT_VOTER);
		if (rv != 0) {
			raft_configuration_close(&conf);
			return err_from_raft(rv);
		}
	}
	rv = raft_bootstrap(&s->raft, &conf);
	raft_configuration_close(&conf);
	return err_from_raft(rv);
}

int shard_start(struct shard *s)
{
	int rv = raft_start(&s->raft);
	if (rv != 0) {
		fprintf(stderr, "raftmq: shard %u: raft_start: %s\n",
			s->config.id, raft_errmsg(&s->raft));
	}
	return err_from_raft(rv);
}

static void shard_raft_closed_cb(struct raft *r)
{
	struct shard *s = r->data;
	raft_uv_close(&s->io);
	fsm_close(s->fsm);
	store_close(s->store);
	shard_close_cb cb = s->close_cb;
	void *data = s->close_data;
	free(s->dir);
	free(s->peer_address);
	free(s);
	if (cb != NULL) {
		cb(NULL, data);
	}
}

void shard_close(struct shard *s, shard_close_cb cb, void *data)
{
	s->close_cb = cb;
	s->close_data = data;
	s->closing = true;
	raft_close(&s->raft, shard_raft_closed_cb); /* through io_close_cb */
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
	struct shard_apply *a = req->data;
	/* Once raft accepted the entry, any failure (leadership lost, a failed
	 * local append) leaves the outcome unknown: the entry may have reached
	 * followers and commit under a later leader. */
	a->cb(a->data, status == 0 ? 0 : RMQ_ELEADERLOST,
	      status == 0 ? (const struct fsm_result *)result : NULL);
	free(a);
}

int shard_propose(struct shard *s, const Rmqc__Command *cmd, shard_apply_cb cb,
		  void *data)
{
	struct shard_apply *a;
	struct raft_buffer buf;
	int rv;

	a = malloc(sizeof *a);
	if (a == NULL) {
		rv = RMQ_ENOMEM;
		goto err;
	}
	rv = fsm_encode(cmd, &buf.base, &buf.len);
	if (rv != 0) {
		goto err_after_req_alloc;
	}
	a->cb = cb;
	a->data = data;
	a->req.data = a;
	rv = raft_apply(&s->raft, &a->req, &buf, 1, apply_cb);
	if (rv != 0) {
		rv = err_from_raft(rv);
		goto err_after_buf_alloc;
	}
	return 0; /* raft owns buf.base now; @a is freed in apply_cb. */

err_after_buf_alloc:
	raft_free(buf.base);
err_after_req_alloc:
	free(a);
err:
	return rv;
}

struct shard_transfer_req {
	struct raft_transfer req;
	struct shard *shard;
	uint64_t target;
	shard_transfer_cb cb;
	void *data;
};

static void transfer_cb(struct raft_transfer *req)
{
	struct shard_transfer_req *t = req->data;
	if (t->cb != NULL) {
		int status = RMQ_ETIMEDOUT;
		if (t->shard->closing) {
			status = RMQ_ESHUTDOWN;
		} else if (shard_leader_id(t->shard) == t->target) {
			status = 0;
		}
		t->cb(t->data, status);
	}
	free(t);
}

int shard_transfer_notify(struct shard *s, uint64_t node_id,
			  shard_transfer_cb cb, void *data)
{
	struct shard_transfer_req *t = calloc(1, sizeof *t);
	if (t == NULL) {
		return RMQ_ENOMEM;
	}
	t->req.data = t;
	t->shard = s;
	t->target = node_id;
	t->cb = cb;
	t->data = data;
	int rv = raft_transfer(&s->raft, &t->req, node_id, transfer_cb);
	if (rv != 0) {
		free(t);
		return err_from_raft(rv);
	}
	return 0;
}

int shard_transfer(struct shard *s, uint64_t node_id)
{
	return shard_transfer_notify(s, node_id, NULL, NULL);
}

static void barrier_cb(struct raft_barrier *req, int status)
{
	struct shard *s = req->data;
	s->barrier_pending = false;
	if (status == 0) {
		s->barrier_term = s->barrier_issued;
		shard_poll(s);
	}
}

void shard_poll(struct shard *s)
{
	enum shard_role role = SHARD_FOLLOWER;
	uint64_t term = s->raft.current_term;

	adapt_log(s);
	if (raft_state(&s->raft) == RAFT_LEADER) {
		role = SHARD_LEADER_PENDING;
		if (s->barrier_term == term) {
			role = SHARD_LEADER;
		} else if (!s->barrier_pending) {
			s->barrier.data = s;
			if (raft_barrier(&s->raft, &s->barrier, barrier_cb) ==
			    0) {
				s->barrier_pending = true;
				s->barrier_issued = term;
			}
		}
	}
	if (role != s->role || term != s->term) {
		s->role = role;
		s->term = term;
		if (s->hooks.role != NULL) {
			s->hooks.role(s->hooks.data, s, role, term);
		}
	}
}

void shard_stats(struct shard *s, struct shard_stats *out)
{
	out->snapshots = s->rfsm.snapshots;
	out->restores = s->rfsm.restores;
	out->fetches = s->catchup.fetches;
	out->served = s->catchup.served;
	out->snapshot_threshold = s->raft.snapshot.threshold;
	out->snapshot_trailing = s->raft.snapshot.trailing;
}

uint32_t shard_id(const struct shard *s)
{
	return s->config.id;
}

struct store *shard_store(struct shard *s)
{
	return s->store;
}

enum shard_role shard_role(const struct shard *s)
{
	return s->role;
}

uint64_t shard_leader_id(struct shard *s)
{
	raft_id id = 0;
	const char *addr = NULL;
	raft_leader(&s->raft, &id, &addr);
	return id;
}

uint64_t shard_term(struct shard *s)
{
	return s->raft.current_term;
}

uint64_t shard_commit_index(struct shard *s)
{
	return s->raft.commit_index;
}

uint64_t shard_applied_index(struct shard *s)
{
	return raft_last_applied(&s->raft);
}

uint64_t shard_leader_commit_index(struct shard *s)
{
	if (raft_state(&s->raft) == RAFT_LEADER ||
	    s->raft.commit_index > s->leader_commit) {
		return s->raft.commit_index;
	}
	return s->leader_commit;
}

size_t shard_replicas(struct shard *s, uint64_t *ids, size_t max)
{
	size_t n = 0;
	for (unsigned i = 0; i < s->raft.configuration.n && n < max; i++) {
		if (s->raft.configuration.servers[i].role == RAFT_VOTER) {
			ids[n++] = s->raft.configuration.servers[i].id;
		}
	}
	return n;
}

static int progress_index(struct shard *s, uint64_t node_id)
{
	if (raft_state(&s->raft) != RAFT_LEADER) {
		return -1;
	}
	for (unsigned i = 0; i < s->raft.configuration.n; i++) {
		if (s->raft.configuration.servers[i].id == node_id) {
			return (int)i;
		}
	}
	return -1;
}

bool shard_peer_recent(struct shard *s, uint64_t node_id)
{
	int i = progress_index(s, node_id);
	return i >= 0 && s->raft.leader_state.progress[i].recent_recv;
}

bool shard_peer_caught_up(struct shard *s, uint64_t node_id)
{
	int i = progress_index(s, node_id);
	return i >= 0 && s->raft.leader_state.progress[i].match_index >=
				 raft_last_index(&s->raft);
}

/* ---- Membership -------------------------------------------------------- */

static void change_cb(struct raft_change *req, int status)
{
	struct shard_change *ch = req->data;
	ch->shard->changing--;
	if (ch->cb != NULL) {
		ch->cb(ch->data, err_from_raft(status));
	}
	free(ch);
}

static struct shard_change *change_new(struct shard *s, shard_change_cb cb,
				       void *data)
{
	struct shard_change *ch;
	if (s->changing > 0) {
		return NULL;
	}
	ch = calloc(1, sizeof *ch);
	if (ch != NULL) {
		ch->req.data = ch;
		ch->shard = s;
		ch->cb = cb;
		ch->data = data;
	}
	return ch;
}

static int change_started(struct shard *s, struct shard_change *ch, int rv)
{
	if (rv != 0) {
		free(ch);
		return err_from_raft(rv);
	}
	s->changing++;
	return 0;
}

int shard_add(struct shard *s, uint64_t node_id, const char *peer_address,
	      shard_change_cb cb, void *data)
{
	struct shard_change *ch = change_new(s, cb, data);
	if (ch == NULL) {
		return s->changing > 0 ? RMQ_EUNAVAIL : RMQ_ENOMEM;
	}
	return change_started(s, ch,
			      raft_add(&s->raft, &ch->req, node_id,
				       peer_address, change_cb));
}

static int raft_role_of(enum shard_member_role role)
{
	switch (role) {
	case SHARD_MEMBER_VOTER:
		return RAFT_VOTER;
	case SHARD_MEMBER_SPARE:
		return RAFT_SPARE;
	default:
		return RAFT_STANDBY;
	}
}

int shard_assign(struct shard *s, uint64_t node_id, enum shard_member_role role,
		 shard_change_cb cb, void *data)
{
	struct shard_change *ch = change_new(s, cb, data);
	if (ch == NULL) {
		return s->changing > 0 ? RMQ_EUNAVAIL : RMQ_ENOMEM;
	}
	return change_started(s, ch,
			      raft_assign(&s->raft, &ch->req, node_id,
					  raft_role_of(role), change_cb));
}

int shard_remove(struct shard *s, uint64_t node_id, shard_change_cb cb,
		 void *data)
{
	struct shard_change *ch = change_new(s, cb, data);
	if (ch == NULL) {
		return s->changing > 0 ? RMQ_EUNAVAIL : RMQ_ENOMEM;
	}
	return change_started(
		s, ch, raft_remove(&s->raft, &ch->req, node_id, change_cb));
}

bool shard_changing(const struct shard *s)
{
	return s->changing > 0;
}

static enum shard_member_role member_role_of(int role)
{
	switch (role) {
	case RAFT_VOTER:
		return SHARD_MEMBER_VOTER;
	case RAFT_SPARE:
		return SHARD_MEMBER_SPARE;
	default:
		return SHARD_MEMBER_STANDBY;
	}
}

size_t shard_members(struct shard *s, struct shard_member *out, size_t max)
{
	const struct raft_configuration *c = &s->raft.configuration;
	for (unsigned i = 0; i < c->n && i < max; i++) {
		out[i].id = c->servers[i].id;
		out[i].role = member_role_of(c->servers[i].role);
		snprintf(out[i].address, sizeof out[i].address, "%s",
			 c->servers[i].address != NULL ? c->servers[i].address
						       : "");
	}
	return c->n;
}

bool shard_member_role(struct shard *s, uint64_t node_id,
		       enum shard_member_role *role)
{
	const struct raft_configuration *c = &s->raft.configuration;
	for (unsigned i = 0; i < c->n; i++) {
		if (c->servers[i].id == node_id) {
			*role = member_role_of(c->servers[i].role);
			return true;
		}
	}
	return false;
}
