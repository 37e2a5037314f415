/* catchup: see catchup.h.
 *
 * The happy path of a snapshot put: catchup_snapshot_put() reads the
 * descriptor and the store's applied index; the store is at or past it, so
 * a worker syncs the store and raft_uv's snapshot_put runs from the after
 * callback. For an install the store is behind: a worker connects to the
 * peers in turn (the node that took the snapshot first), writes a fetch
 * preamble and reads the stream into a fresh environment
 * (store_stream_read); the after callback swaps it in, calls restored_cb,
 * then raft_uv's snapshot_put, then submits the appends held meanwhile.
 *
 * Failure modes: no peer gives a copy at or past the index (down, behind,
 * a broken stream): retry every second, and log (the replica stays a
 * follower until then; if the only peers whose store could reach the
 * index need this replica to commit it, the shard waits for another peer
 * to return); the store cannot be synced or reopened: fatal_cb; closing:
 * workers stop at their next read or write, the waiting put fails with
 * RAFT_CANCELED and the held appends with RAFT_CANCELED.
 *
 * Serving: peer_net hands over a fetch connection; its fd is duplicated
 * and made blocking, the libuv handle closed, and a worker streams the
 * store into it (store_stream_write). */
#include "catchup.h"

#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsm.h"
#include "raftmq_errors.h"

#undef NDEBUG
#include <assert.h>

#define CATCHUP_RETRY_MS 1000
#define CATCHUP_IO_TIMEOUT_S 10

/* ---- sockets (workers) ----------------------------------------------- */

static void set_timeouts(int fd)
{
	struct timeval tv = {.tv_sec = CATCHUP_IO_TIMEOUT_S};
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

struct sock_io {
	int fd;
	atomic_bool *stop;
	uint64_t bytes;
};

static int sock_write(void *arg, const void *buf, size_t len)
{
	struct sock_io *s = arg;
	const uint8_t *p = buf;
	while (len > 0) {
		if (atomic_load(s->stop)) {
			return RMQ_ESHUTDOWN;
		}
		ssize_t n = send(s->fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			return RMQ_EIO;
		}
		p += n;
		len -= (size_t)n;
		s->bytes += (uint64_t)n;
	}
	return 0;
}

static int sock_read(void *arg, void *buf, size_t len, size_t *got)
{
	struct sock_io *s = arg;
	for (;;) {
		if (atomic_load(s->stop)) {
			return RMQ_ESHUTDOWN;
		}
		ssize_t n = recv(s->fd, buf, len, 0);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			return RMQ_EIO;
		}
		*got = (size_t)n;
		s->bytes += (uint64_t)n;
		return 0;
	}
}

/* Blocking connect with a timeout; returns the fd or -1. */
static int dial(const char *address)
{
	struct sockaddr_storage sa;
	if (peer_net_parse_address(address, &sa) != 0) {
		return -1;
	}
	int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -1;
	}
	int fl = fcntl(fd, F_GETFL);
	(void)fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	socklen_t len = sa.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						 : sizeof(struct sockaddr_in);
	int rv = connect(fd, (struct sockaddr *)&sa, len);
	if (rv != 0 && errno == EINPROGRESS) {
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		int err = 0;
		socklen_t elen = sizeof err;
		rv = -1;
		if (poll(&p, 1, CATCHUP_IO_TIMEOUT_S * 1000) == 1 &&
		    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 &&
		    err == 0) {
			rv = 0;
		}
	}
	if (rv != 0) {
		close(fd);
		return -1;
	}
	(void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	set_timeouts(fd);
	return fd;
}

/* Empty @dir (an LMDB environment: two files) and create it again. */
static int reset_dir(const char *dir)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/data.mdb", dir);
	(void)unlink(path);
	snprintf(path, sizeof path, "%s/lock.mdb", dir);
	(void)unlink(path);
	if (mkdir(dir, 0750) != 0 && errno != EEXIST) {
		return RMQ_EIO;
	}
	return 0;
}

static void remove_dir(const char *dir)
{
	(void)reset_dir(dir);
	(void)rmdir(dir);
}

/* ---- fetching -------------------------------------------------------- */

static void fetch_work_cb(uv_work_t *w)
{
	struct catchup *c = w->data;
	int rv = RMQ_EUNAVAIL;

	for (unsigned i = 0; i < c->n_peers; i++) {
		if (atomic_load(&c->stop)) {
			rv = RMQ_ESHUTDOWN;
			break;
		}
		rv = reset_dir(c->tmp_dir);
		if (rv != 0) {
			break;
		}
		struct sock_io s = {.stop = &c->stop};
		s.fd = dial(c->peers[i].address);
		if (s.fd < 0) {
			rv = RMQ_ECONNECT;
			continue;
		}
		uint64_t applied = 0;
		rv = sock_write(&s, c->preamble, c->preamble_len);
		if (rv == 0) {
			rv = store_stream_read(c->tmp_dir, &c->store_options,
					       sock_read, &s, c->put.index,
					       &applied);
		}
		close(s.fd);
		if (rv == 0) {
			c->fetched_index = applied;
			c->fetched_from = c->peers[i].id;
			c->fetched_bytes = s.bytes;
			break;
		}
		fprintf(stderr,
			"raftmq: shard %u: state fetch from node %llu (%s): "
			"%s\n",
			c->shard_id, (unsigned long long)c->peers[i].id,
			c->peers[i].address, codec_strerror(rv));
	}
	c->work_status = rv;
}

static void finish_put(struct catchup *c, int status);
static void fetch_start(struct catchup *c);

static void retry_cb(uv_timer_t *t)
{
	struct catchup *c = t->data;
	if (c->state == CATCHUP_RETRY && !c->closing) {
		fetch_start(c);
	}
}

static void maybe_finish_close(struct catchup *c);

static void swap_in(struct catchup *c)
{
	int rv = store_replace(c->store, c->tmp_dir);
	if (rv == RMQ_EIO) {
		fprintf(stderr,
			"raftmq: shard %u: FATAL: the store could not be "
			"reopened after replacing it\n",
			c->shard_id);
		if (c->fatal_cb != NULL) {
			c->fatal_cb(c->cb_arg);
		}
		finish_put(c, RAFT_IOERR);
		return;
	}
	if (rv != 0) {
		fprintf(stderr, "raftmq: shard %u: replacing the store: %s\n",
			c->shard_id, codec_strerror(rv));
		c->state = CATCHUP_RETRY;
		uv_timer_start(&c->retry, retry_cb, CATCHUP_RETRY_MS, 0);
		return;
	}
	remove_dir(c->tmp_dir);
	c->fetches++;
#ifdef __GLIBC__
	/* The worker's malloc arena held the copy's dirty pages. */
	malloc_trim(0);
#endif
	fprintf(stderr,
		"raftmq: shard %u: state at index %llu fetched from node %llu "
		"(%.1f MiB in %.1f s) for the snapshot at %llu\n",
		c->shard_id, (unsigned long long)c->fetched_index,
		(unsigned long long)c->fetched_from,
		(double)c->fetched_bytes / (1024.0 * 1024.0),
		(double)(uv_now(c->loop) - c->started) / 1000.0,
		(unsigned long long)c->put.index);
	if (c->restored_cb != NULL) {
		c->restored_cb(c->cb_arg);
	}
	finish_put(c, 0);
}

static void fetch_after_cb(uv_work_t *w, int status)
{
	struct catchup *c = w->data;
	int rv = status != 0 ? RMQ_ESHUTDOWN : c->work_status;

	if (c->closing) {
		remove_dir(c->tmp_dir);
		finish_put(c, RAFT_CANCELED);
		maybe_finish_close(c);
		return;
	}
	if (rv != 0) {
		c->failed_rounds++;
		if (c->failed_rounds == 1 || c->failed_rounds % 30 == 0) {
			/* Until a peer's store reaches the index, this
			 * replica acks nothing of the shard. */
			fprintf(stderr,
				"raftmq: shard %u: no peer could give the "
				"state at index %llu yet (%s); retrying\n",
				c->shard_id, (unsigned long long)c->put.index,
				codec_strerror(rv));
		}
		c->state = CATCHUP_RETRY;
		uv_timer_start(&c->retry, retry_cb, CATCHUP_RETRY_MS, 0);
		return;
	}
	if (c->serving > 0) {
		c->state = CATCHUP_SWAPPING; /* serve_after_cb swaps */
		return;
	}
	swap_in(c);
}

static void add_peer(struct catchup *c, const struct raft_server *sv)
{
	if (sv->id == c->node_id || c->n_peers == CATCHUP_MAX_PEERS) {
		return;
	}
	for (unsigned i = 0; i < c->n_peers; i++) {
		if (c->peers[i].id == sv->id) {
			return;
		}
	}
	struct catchup_peer *p = &c->peers[c->n_peers++];
	p->id = sv->id;
	snprintf(p->address, sizeof p->address, "%s", sv->address);
}

/* Peers to ask: the node that took the snapshot, then the leader that
 * sent it (its store is at the snapshot or past it), then the other
 * servers of the snapshot's configuration and of raft's. raft adopts the
 * snapshot's configuration only once the install is over: a replica that
 * joins a running cluster has none of its own until then. And the
 * snapshot's configuration is the one at its index: after nodes were
 * replaced faster than the shard snapshots (a shard with little traffic,
 * such as the meta shard), it may name none that is still there, while
 * the leader always is. */
static void collect_peers(struct catchup *c)
{
	const struct raft_configuration *confs[2] = {
		&c->put.snapshot->configuration,
		&c->raft->configuration,
	};
	struct raft_server leader = {0};
	const char *address = NULL;

	c->n_peers = 0;
	for (unsigned k = 0; k < 2; k++) {
		for (unsigned i = 0; i < confs[k]->n; i++) {
			if (confs[k]->servers[i].id == c->put.source) {
				add_peer(c, &confs[k]->servers[i]);
			}
		}
	}
	raft_leader(c->raft, &leader.id, &address);
	if (leader.id != 0 && address != NULL) {
		leader.address = (char *)address;
		add_peer(c, &leader);
	}
	for (unsigned k = 0; k < 2; k++) {
		for (unsigned i = 0; i < confs[k]->n; i++) {
			add_peer(c, &confs[k]->servers[i]);
		}
	}
}

static void fetch_start(struct catchup *c)
{
	c->state = CATCHUP_FETCHING;
	collect_peers(c);
	c->preamble_len =
		peer_net_fetch_preamble(c->net, c->shard_id, c->preamble);
	c->work.data = c;
	int rv =
		uv_queue_work(c->loop, &c->work, fetch_work_cb, fetch_after_cb);
	assert(rv == 0); /* only fails on a NULL callback */
}

/* ---- snapshot puts --------------------------------------------------- */

static void sync_work_cb(uv_work_t *w)
{
	struct catchup *c = w->data;
	c->work_status = store_sync(c->store);
}

static void sync_after_cb(uv_work_t *w, int status)
{
	struct catchup *c = w->data;
	int rv = status != 0 ? RMQ_ESHUTDOWN : c->work_status;
	if (rv != 0 && !c->closing) {
		fprintf(stderr,
			"raftmq: shard %u: FATAL: syncing the store: %s\n",
			c->shard_id, codec_strerror(rv));
		if (c->fatal_cb != NULL) {
			c->fatal_cb(c->cb_arg);
		}
	}
	finish_put(c, rv == 0 ? 0 : c->closing ? RAFT_CANCELED : RAFT_IOERR);
	maybe_finish_close(c);
}

/* Hand the waiting put to raft_uv (@status 0) or fail it, then release
 * the held appends. */
static void finish_put(struct catchup *c, int status)
{
	struct raft_io_snapshot_put *req = c->put.req;
	raft_io_snapshot_put_cb cb = c->put.cb;
	int rv = status;

	c->state = CATCHUP_IDLE;
	c->failed_rounds = 0;
	if (rv == 0) {
		rv = c->orig_put(c->io, c->put.trailing, req, c->put.snapshot,
				 cb);
	}
	if (rv != 0) {
		/* Nothing of this snapshot reached the disk. raft 0.15's
		 * installSnapshotCb frees the data, the configuration and the
		 * request of an install that failed, not the array of buffers
		 * (raft_free(snapshot->bufs) came in 2a38d3d upstream). */
		struct raft_buffer *bufs =
			c->put.trailing == 0 ? c->put.snapshot->bufs : NULL;
		cb(req, rv);
		raft_free(bufs);
	}
	while (c->held != NULL) {
		struct catchup_held_append *h = c->held;
		c->held = h->next;
		int arv = rv != 0 && c->closing
				  ? RAFT_CANCELED
				  : c->orig_append(c->io, h->req, h->entries,
						   h->n, h->cb);
		if (arv != 0) {
			h->cb(h->req, arv);
		}
		free(h);
	}
	c->held_tail = &c->held;
}

static uint64_t store_applied(struct store *s, int *rv)
{
	struct store_txn *t;
	uint64_t index = 0;
	*rv = store_begin(s, false, &t);
	if (*rv == 0) {
		*rv = store_applied_get(t, &index);
		store_abort(t);
	}
	return index;
}

int catchup_snapshot_put(struct catchup *c, unsigned trailing,
			 struct raft_io_snapshot_put *req,
			 const struct raft_snapshot *snapshot,
			 raft_io_snapshot_put_cb cb)
{
	struct fsm_descriptor d;
	int rv;

	if (c->closing || snapshot->n_bufs != 1 ||
	    fsm_descriptor_decode(snapshot->bufs[0].base, snapshot->bufs[0].len,
				  &d) != 0) {
		/* Not ours to check (a full snapshot of an earlier release,
		 * or a damaged one restore will refuse). */
		return c->orig_put(c->io, trailing, req, snapshot, cb);
	}
	assert(c->state == CATCHUP_IDLE); /* raft puts one at a time */
	uint64_t applied = store_applied(c->store, &rv);
	if (rv != 0) {
		return RAFT_IOERR;
	}
	c->put.trailing = trailing;
	c->put.req = req;
	c->put.snapshot = snapshot;
	c->put.cb = cb;
	c->put.index = d.index;
	c->put.source = d.node_id;
	c->work.data = c;
	if (applied >= d.index) {
		c->state = CATCHUP_SYNCING;
		rv = uv_queue_work(c->loop, &c->work, sync_work_cb,
				   sync_after_cb);
		assert(rv == 0);
		return 0;
	}
	fprintf(stderr,
		"raftmq: shard %u: store at index %llu is behind the "
		"snapshot at %llu: fetching the state from a peer\n",
		c->shard_id, (unsigned long long)applied,
		(unsigned long long)d.index);
	c->started = uv_now(c->loop);
	fetch_start(c);
	return 0;
}

int catchup_append(struct catchup *c, struct raft_io_append *req,
		   const struct raft_entry entries[], unsigned n,
		   raft_io_append_cb cb)
{
	/* Only an install's put must reach raft_uv before the appends raft
	 * makes after it: it sets raft_uv's next index to the snapshot's
	 * plus one. Behind a put of raft's own snapshot (trailing > 0)
	 * appends go on: raft_uv numbers them itself, and raft may truncate
	 * them meanwhile (a new leader overwriting uncommitted entries), which
	 * raft_uv can only do to entries it has seen (UvTruncate asserts
	 * index < append_next_index; a held append would be written after
	 * the truncation, at the wrong index). */
	if (c->state == CATCHUP_IDLE || c->put.trailing != 0) {
		return c->orig_append(c->io, req, entries, n, cb);
	}
	struct catchup_held_append *h = malloc(sizeof *h);
	if (h == NULL) {
		return RAFT_NOMEM;
	}
	h->req = req;
	h->entries = entries;
	h->n = n;
	h->cb = cb;
	h->next = NULL;
	*c->held_tail = h;
	c->held_tail = &h->next;
	return 0;
}

/* ---- serving --------------------------------------------------------- */

struct serve {
	struct catchup *c;
	uv_work_t work;
	int fd;
	uint64_t peer;
	uint64_t applied;
	uint64_t bytes;
	int status;
};

static void serve_work_cb(uv_work_t *w)
{
	struct serve *sv = w->data;
	struct sock_io s = {.fd = sv->fd, .stop = &sv->c->stop};
	int fl = fcntl(sv->fd, F_GETFL);
	(void)fcntl(sv->fd, F_SETFL, fl & ~O_NONBLOCK);
	set_timeouts(sv->fd);
	sv->status =
		store_stream_write(sv->c->store, sock_write, &s, &sv->applied);
	sv->bytes = s.bytes;
	close(sv->fd);
}

static void serve_after_cb(uv_work_t *w, int status)
{
	struct serve *sv = w->data;
	struct catchup *c = sv->c;
	if (status != 0) {
		close(sv->fd); /* cancelled before it ran */
	} else if (sv->status == 0) {
		c->served++;
	} else if (sv->status != RMQ_ESHUTDOWN) {
		/* A fetcher that finds the copy too old hangs up early. */
		fprintf(stderr,
			"raftmq: shard %u: serving the state (index %llu) to "
			"node %llu stopped after %.1f MiB: %s\n",
			c->shard_id, (unsigned long long)sv->applied,
			(unsigned long long)sv->peer,
			(double)sv->bytes / (1024.0 * 1024.0),
			codec_strerror(sv->status));
	}
	free(sv);
	c->serving--;
	if (c->serving == 0 && c->state == CATCHUP_SWAPPING) {
		if (c->closing) {
			finish_put(c, RAFT_CANCELED);
		} else {
			swap_in(c);
		}
	}
	maybe_finish_close(c);
}

static void free_stream_cb(uv_handle_t *h)
{
	raft_free(h);
}

static void fetch_cb(void *data, uint64_t sender_id, uv_tcp_t *tcp)
{
	struct catchup *c = data;
	uv_os_fd_t ufd;
	struct serve *sv = NULL;
	int fd = -1;

	/* Never serve while our own store is about to be replaced. */
	if (!c->closing && c->state != CATCHUP_SWAPPING &&
	    uv_fileno((uv_handle_t *)tcp, &ufd) == 0) {
		fd = fcntl(ufd, F_DUPFD_CLOEXEC, 0);
	}
	if (fd >= 0) {
		sv = calloc(1, sizeof *sv);
	}
	uv_close((uv_handle_t *)tcp, free_stream_cb);
	if (sv == NULL) {
		if (fd >= 0) {
			close(fd);
		}
		return;
	}
	sv->c = c;
	sv->fd = fd;
	sv->peer = sender_id;
	sv->work.data = sv;
	c->serving++;
	int rv = uv_queue_work(c->loop, &sv->work, serve_work_cb,
			       serve_after_cb);
	assert(rv == 0);
}

/* ---- lifecycle ------------------------------------------------------- */

void catchup_init(struct catchup *c, uv_loop_t *loop, struct raft *raft,
		  struct raft_io *io, struct store *store, struct peer_net *net,
		  struct raft_uv_transport *transport, uint32_t shard_id,
		  uint64_t node_id, const char *dir,
		  const struct store_options *so)
{
	memset(c, 0, sizeof *c);
	snprintf(c->tmp_dir, sizeof c->tmp_dir, "%s/lmdb.fetch", dir);
	remove_dir(c->tmp_dir); /* left over by a crash during a fetch */
	c->loop = loop;
	c->raft = raft;
	c->io = io;
	c->store = store;
	c->net = net;
	c->transport = transport;
	c->shard_id = shard_id;
	c->node_id = node_id;
	c->store_options = *so;
	c->orig_put = io->snapshot_put;
	c->orig_append = io->append;
	c->held_tail = &c->held;
	atomic_init(&c->stop, false);
	uv_timer_init(loop, &c->retry);
	c->retry.data = c;
	peer_net_set_fetch_cb(transport, fetch_cb, c);
}

static void retry_close_cb(uv_handle_t *h)
{
	struct catchup *c = h->data;
	if (c->close_cb != NULL) {
		c->close_cb(c);
	}
}

static void maybe_finish_close(struct catchup *c)
{
	if (!c->closing || c->serving > 0 || c->state == CATCHUP_FETCHING ||
	    c->state == CATCHUP_SYNCING ||
	    uv_is_closing((uv_handle_t *)&c->retry)) {
		return;
	}
	uv_close((uv_handle_t *)&c->retry, retry_close_cb);
}

void catchup_close(struct catchup *c, void (*cb)(struct catchup *c))
{
	c->closing = true;
	c->close_cb = cb;
	atomic_store(&c->stop, true);
	peer_net_set_fetch_cb(c->transport, NULL, NULL);
	if (c->state == CATCHUP_RETRY) {
		uv_timer_stop(&c->retry);
		finish_put(c, RAFT_CANCELED);
	}
	/* SWAPPING waits for the serves, which stop now. */
	maybe_finish_close(c);
}
