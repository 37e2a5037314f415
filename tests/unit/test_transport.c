/* Unit tests of consensus/transport: real libuv loop, real raft_uv instances
 * talking over loopback through peer_net (node N lives on 127.0.0.N).
 *
 * Every wait is bounded by a uv timer watchdog; teardown fails unless
 * uv_loop_close() returns 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ftw.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "raft015.h"
#include "raftmq_errors.h"
#include "transport.h"

#define WAIT_MS 20000
#define N_NODES 3
#define MAX_SHARDS 2
#define CLUSTER_ID 0x5eed5eed5eedull

#define container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---- bounded waits -------------------------------------------------------- */

typedef bool (*pred_fn)(void *arg);

struct waiter {
	pred_fn pred;
	void *arg;
	bool done;
	bool expired;
	unsigned closed;
};

static void waiter_poll_cb(uv_timer_t *t)
{
	struct waiter *w = t->data;

	if (w->pred(w->arg)) {
		w->done = true;
	}
}

static void waiter_watchdog_cb(uv_timer_t *t)
{
	struct waiter *w = t->data;

	w->expired = true;
}

static void flag_close_cb(uv_handle_t *h)
{
	*(bool *)h->data = true;
}

static void waiter_close_cb(uv_handle_t *h)
{
	struct waiter *w = h->data;

	w->closed++;
}

static void run_for_cb(uv_timer_t *t)
{
	(void)t; /* a one-shot timer: inactive now */
}

/* Run @loop for @ms milliseconds. */
static void run_for(uv_loop_t *loop, uint64_t ms)
{
	uv_timer_t t;
	bool closed = false;

	uv_timer_init(loop, &t);
	uv_timer_start(&t, run_for_cb, ms, 0);
	while (uv_is_active((uv_handle_t *)&t)) {
		uv_run(loop, UV_RUN_ONCE);
	}
	t.data = &closed;
	uv_close((uv_handle_t *)&t, flag_close_cb);
	while (!closed) {
		uv_run(loop, UV_RUN_NOWAIT);
	}
}

/* Run @loop until @pred holds; false if WAIT_MS passes first. */
static bool run_until(uv_loop_t *loop, pred_fn pred, void *arg)
{
	struct waiter w = {pred, arg, false, false, 0};
	uv_timer_t poll;
	uv_timer_t watchdog;

	uv_timer_init(loop, &poll);
	uv_timer_init(loop, &watchdog);
	poll.data = &w;
	watchdog.data = &w;
	uv_timer_start(&poll, waiter_poll_cb, 5, 5);
	uv_timer_start(&watchdog, waiter_watchdog_cb, WAIT_MS, 0);
	w.done = pred(arg);
	while (!w.done && !w.expired) {
		uv_run(loop, UV_RUN_ONCE);
	}
	uv_close((uv_handle_t *)&poll, waiter_close_cb);
	uv_close((uv_handle_t *)&watchdog, waiter_close_cb);
	while (w.closed < 2) {
		uv_run(loop, UV_RUN_NOWAIT);
	}
	return w.done;
}

static bool flag_set(void *arg)
{
	return *(bool *)arg;
}

/* ---- a node: one peer_net and its shards ----------------------------------- */

struct test_shard {
	struct test_node *node;
	uint32_t id;
	struct raft raft;
	struct raft_io io;
	struct raft_uv_transport transport;
	struct raft_fsm fsm;
	raft015_send_fn send; /* raft_uv's, wrapped as shard.c does */
	unsigned applied;     /* entries the counting FSM applied */
	bool started;
	bool closed;
	char dir[256];
};

struct hello {
	uint64_t node_id;
	char peer_address[64];
	char client_address[64];
};

struct test_node {
	uint64_t id;
	uint64_t cluster_id;
	char host[16];
	char peer_address[32];
	char client_address[32];
	struct peer_net *net;
	bool net_closed;
	unsigned n_shards;
	struct test_shard shards[MAX_SHARDS];
	struct hello hellos[8];
	unsigned n_hellos;
};

struct fixture {
	uv_loop_t loop;
	char dir[64];
	unsigned next_port;
	struct test_node nodes[N_NODES + 1]; /* + one foreign node */
	unsigned n_nodes;
	void *reused; /* freed after teardown */
};

static void hello_cb(void *data, uint64_t node_id, const char *peer_address,
		     const char *client_address)
{
	struct test_node *n = data;
	struct hello *h = NULL;
	unsigned i;

	for (i = 0; i < n->n_hellos; i++) {
		if (n->hellos[i].node_id == node_id) {
			h = &n->hellos[i];
		}
	}
	if (h == NULL) {
		assert_true(n->n_hellos < 8);
		h = &n->hellos[n->n_hellos++];
	}
	h->node_id = node_id;
	snprintf(h->peer_address, sizeof h->peer_address, "%s", peer_address);
	snprintf(h->client_address, sizeof h->client_address, "%s",
		 client_address);
}

static const struct hello *find_hello(const struct test_node *n, uint64_t id)
{
	unsigned i;

	for (i = 0; i < n->n_hellos; i++) {
		if (n->hellos[i].node_id == id) {
			return &n->hellos[i];
		}
	}
	return NULL;
}

/* peer_net_close_cb has no user data: map the net back to its node. */
static struct fixture *closing_fixture;

static void node_net_close_cb(struct peer_net *net)
{
	unsigned i;

	for (i = 0; i < closing_fixture->n_nodes; i++) {
		if (closing_fixture->nodes[i].net == net) {
			closing_fixture->nodes[i].net_closed = true;
			closing_fixture->nodes[i].net = NULL;
		}
	}
}

static bool nets_closed(void *arg)
{
	struct fixture *f = arg;
	unsigned i;

	for (i = 0; i < f->n_nodes; i++) {
		if (!f->nodes[i].net_closed) {
			return false;
		}
	}
	return true;
}

static bool single_net_closed;

static void single_net_close_cb(struct peer_net *net)
{
	(void)net;
	single_net_closed = true;
}

/* Create node @id's peer_net on 127.0.0.@id, trying ports until one binds. */
static void node_open(struct fixture *f, uint64_t id, uint64_t cluster_id)
{
	struct test_node *n = &f->nodes[f->n_nodes];
	struct peer_net_config c;
	unsigned attempt;
	int rv;

	memset(n, 0, sizeof *n);
	n->id = id;
	n->cluster_id = cluster_id;
	snprintf(n->host, sizeof n->host, "127.0.0.%u", (unsigned)id);
	for (attempt = 0; attempt < 50; attempt++) {
		unsigned port = f->next_port++;

		snprintf(n->peer_address, sizeof n->peer_address,
			 "127.0.0.%u:%u", (unsigned)id, port);
		snprintf(n->client_address, sizeof n->client_address,
			 "127.0.0.%u:%u", (unsigned)id, port + 10000);
		c.node_id = id;
		c.cluster_id = cluster_id;
		c.peer_address = n->peer_address;
		c.client_address = n->client_address;
		c.bind_host = n->host;
		c.hello_cb = hello_cb;
		c.data = n;
		rv = peer_net_init(&f->loop, &c, &n->net);
		assert_int_equal(rv, 0);
		rv = peer_net_listen(n->net);
		if (rv == 0) {
			f->n_nodes++;
			return;
		}
		assert_int_equal(rv, RMQ_EIO);
		single_net_closed = false;
		peer_net_close(n->net, single_net_close_cb);
		assert_true(run_until(&f->loop, flag_set, &single_net_closed));
	}
	fail_msg("no free port found");
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf,
		     void **result)
{
	struct test_shard *s = fsm->data;

	(void)buf;
	s->applied++;
	*result = NULL;
	return 0;
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[],
			unsigned *n_bufs)
{
	(void)fsm;
	*bufs = raft_malloc(sizeof **bufs);
	if (*bufs == NULL) {
		return RAFT_NOMEM;
	}
	(*bufs)[0].base = raft_malloc(8);
	(*bufs)[0].len = 8;
	if ((*bufs)[0].base == NULL) {
		raft_free(*bufs);
		return RAFT_NOMEM;
	}
	memset((*bufs)[0].base, 0, 8);
	*n_bufs = 1;
	return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
	(void)fsm;
	raft_free(buf->base);
	return 0;
}

/* raft_uv's send behind raft015_send(), as consensus/shard.c sends. */
static int guarded_send(struct raft_io *io, struct raft_io_send *req,
			const struct raft_message *m, raft_io_send_cb cb)
{
	struct test_shard *s = container_of(io, struct test_shard, io);

	return raft015_send(s->send, io, req, m, cb);
}

/* Register shard @sid on every node and start its 3 raft instances. */
static void shards_start(struct fixture *f, uint32_t sid, unsigned n_voters)
{
	struct raft_configuration conf;
	unsigned i;
	int rv;

	raft_configuration_init(&conf);
	for (i = 0; i < n_voters; i++) {
		rv = raft_configuration_add(&conf, f->nodes[i].id,
					    f->nodes[i].peer_address,
					    RAFT_VOTER);
		assert_int_equal(rv, 0);
	}
	for (i = 0; i < n_voters; i++) {
		struct test_node *n = &f->nodes[i];
		struct test_shard *s = &n->shards[n->n_shards++];

		memset(s, 0, sizeof *s);
		s->node = n;
		s->id = sid;
		snprintf(s->dir, sizeof s->dir, "%s/n%u-s%u", f->dir,
			 (unsigned)n->id, (unsigned)sid);
		assert_int_equal(mkdir(s->dir, 0700), 0);
		rv = peer_net_transport_init(n->net, sid, &s->transport);
		assert_int_equal(rv, 0);
		rv = raft_uv_init(&s->io, &f->loop, s->dir, &s->transport);
		assert_int_equal(rv, 0);
		raft_uv_set_segment_size(&s->io, 1024 * 1024);
		raft_uv_set_connect_retry_delay(&s->io, 50);
		s->send = s->io.send;
		s->io.send = guarded_send;
		s->fsm.version = 1;
		s->fsm.data = s;
		s->fsm.apply = fsm_apply;
		s->fsm.snapshot = fsm_snapshot;
		s->fsm.restore = fsm_restore;
		rv = raft_init(&s->raft, &s->io, &s->fsm, n->id,
			       n->peer_address);
		assert_int_equal(rv, 0);
		raft_set_election_timeout(&s->raft, 200);
		raft_set_heartbeat_timeout(&s->raft, 50);
		rv = raft_bootstrap(&s->raft, &conf);
		assert_int_equal(rv, 0);
		rv = raft_start(&s->raft);
		assert_int_equal(rv, 0);
		s->started = true;
	}
	raft_configuration_close(&conf);
}

static struct test_shard *shard_of(struct test_node *n, uint32_t sid)
{
	unsigned i;

	for (i = 0; i < n->n_shards; i++) {
		if (n->shards[i].id == sid) {
			return &n->shards[i];
		}
	}
	return NULL;
}

struct shard_query {
	struct fixture *f;
	uint32_t sid;
	unsigned want_applied;
};

static struct test_shard *leader_of(struct fixture *f, uint32_t sid)
{
	unsigned i;

	for (i = 0; i < f->n_nodes; i++) {
		struct test_shard *s = shard_of(&f->nodes[i], sid);

		if (s != NULL && raft_state(&s->raft) == RAFT_LEADER) {
			return s;
		}
	}
	return NULL;
}

static bool has_leader(void *arg)
{
	struct shard_query *q = arg;

	return leader_of(q->f, q->sid) != NULL;
}

static bool all_applied(void *arg)
{
	struct shard_query *q = arg;
	unsigned i;

	for (i = 0; i < q->f->n_nodes; i++) {
		struct test_shard *s = shard_of(&q->f->nodes[i], q->sid);

		if (s != NULL && s->applied < q->want_applied) {
			return false;
		}
	}
	return true;
}

static void apply_cb(struct raft_apply *req, int status, void *result)
{
	(void)result;
	assert_int_equal(status, 0);
	free(req);
}

/* Wait for a leader of @sid, apply one entry there and wait until every
 * replica applied @want entries. */
static void shard_apply_one(struct fixture *f, uint32_t sid, unsigned want)
{
	struct shard_query q = {f, sid, want};
	struct test_shard *leader;
	struct raft_apply *req;
	struct raft_buffer buf;
	int rv;

	assert_true(run_until(&f->loop, has_leader, &q));
	leader = leader_of(f, sid);
	req = malloc(sizeof *req);
	assert_non_null(req);
	buf.len = 8;
	buf.base = raft_malloc(buf.len);
	assert_non_null(buf.base);
	memset(buf.base, 0x2a, buf.len);
	rv = raft_apply(&leader->raft, req, &buf, 1, apply_cb);
	assert_int_equal(rv, 0);
	assert_true(run_until(&f->loop, all_applied, &q));
}

static void test_raft_close_cb(struct raft *r)
{
	struct test_shard *s = container_of(r, struct test_shard, raft);

	raft_uv_close(&s->io);
	s->closed = true;
}

static bool rafts_closed(void *arg)
{
	struct fixture *f = arg;
	unsigned i;
	unsigned j;

	for (i = 0; i < f->n_nodes; i++) {
		for (j = 0; j < f->nodes[i].n_shards; j++) {
			if (!f->nodes[i].shards[j].closed) {
				return false;
			}
		}
	}
	return true;
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
		    struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int fixture_setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);

	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	snprintf(f->dir, sizeof f->dir, "/tmp/rmq-transport-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->next_port = 20000 + (unsigned)((unsigned)time(NULL) * 7919u +
					  (unsigned)getpid() * 131u) %
				       20000u;
	*state = f;
	return 0;
}

/* Close every raft, then every peer_net; uv_loop_close() must succeed. */
static int fixture_teardown(void **state)
{
	struct fixture *f = *state;
	unsigned i;
	unsigned j;

	for (i = 0; i < f->n_nodes; i++) {
		for (j = 0; j < f->nodes[i].n_shards; j++) {
			struct test_shard *s = &f->nodes[i].shards[j];

			if (s->started) {
				raft_close(&s->raft, test_raft_close_cb);
			}
		}
	}
	assert_true(run_until(&f->loop, rafts_closed, f));
	closing_fixture = f;
	for (i = 0; i < f->n_nodes; i++) {
		if (f->nodes[i].net != NULL) {
			peer_net_close(f->nodes[i].net, node_net_close_cb);
		}
	}
	assert_true(run_until(&f->loop, nets_closed, f));
	uv_run(&f->loop, UV_RUN_NOWAIT);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f->reused);
	free(f);
	return 0;
}

static void open_cluster(struct fixture *f, unsigned n_shards)
{
	uint32_t sid;
	uint64_t id;

	closing_fixture = f;
	for (id = 1; id <= N_NODES; id++) {
		node_open(f, id, CLUSTER_ID);
	}
	for (sid = 0; sid < n_shards; sid++) {
		shards_start(f, sid, N_NODES);
	}
}

/* ---- tests ------------------------------------------------------------------ */

/* Three nodes, two shards each, one peer port per node: both shards elect a
 * leader and replicate an entry to all three replicas. */
static void transport_three_nodes_two_shards_replicate(void **state)
{
	struct fixture *f = *state;
	unsigned i;

	open_cluster(f, 2);
	shard_apply_one(f, 0, 1);
	shard_apply_one(f, 1, 1);
	for (i = 0; i < f->n_nodes; i++) {
		assert_int_equal(peer_net_rejected(f->nodes[i].net), 0);
	}
}

static void free_stream_cb(uv_handle_t *h)
{
	raft_free(h);
}

/* The transfer is over: its owner may reuse the struct. Overwrite it (and
 * free it only after teardown): a raft_uv that still holds the request
 * then calls garbage. (Freeing it at once would not do: ASan does not see
 * libraft's reads, and the freed memory could still hold a NULL cb.) */
static void transfer_done_cb(struct raft_transfer *req)
{
	struct fixture *f = req->data;

	memset(req, 0xa5, sizeof *req);
	f->reused = req;
}

static bool transfer_over(void *arg)
{
	return ((struct fixture *)arg)->reused != NULL;
}

/* raft 0.15 sends a leadership transfer's TimeoutNow with the request
 * embedded in the caller's struct raft_transfer (raft015.h, bug 2). A
 * transfer to a follower that just died: raft_uv has no connection and
 * queues the message, the transfer times out, its owner frees the struct.
 * raft_uv must not touch it afterwards: it would when a connect failure
 * evicts the queue's oldest messages, or when closing cancels the queue. */
static void transport_transfer_to_dead_follower(void **state)
{
	struct fixture *f = *state;
	struct test_shard *leader;
	struct test_shard *target = NULL;
	struct raft_transfer *req;
	unsigned i;

	open_cluster(f, 1);
	shard_apply_one(f, 0, 1);
	leader = leader_of(f, 0);
	for (i = 0; i < f->n_nodes && target == NULL; i++) {
		if (f->nodes[i].id != leader->node->id) {
			target = shard_of(&f->nodes[i], 0);
		}
	}
	assert_non_null(target);

	/* The target dies: its raft and its listener go. */
	raft_close(&target->raft, test_raft_close_cb);
	target->started = false;
	assert_true(run_until(&f->loop, flag_set, &target->closed));
	peer_net_close(target->node->net, node_net_close_cb);
	assert_true(run_until(&f->loop, flag_set, &target->node->net_closed));
	/* Heartbeats to it fail and raft_uv keeps reconnecting in vain;
	 * then the next attempt waits 10 s, so that the transfer's message
	 * stays queued past the transfer's end (and until teardown). */
	run_for(&f->loop, 300);
	raft_uv_set_connect_retry_delay(&leader->io, 10000);
	run_for(&f->loop, 200);

	req = malloc(sizeof *req);
	assert_non_null(req);
	req->data = f;
	assert_int_equal(raft_transfer(&leader->raft, req, target->node->id,
				       transfer_done_cb),
			 0);
	assert_true(run_until(&f->loop, transfer_over, f));
	assert_int_equal(raft_state(&leader->raft), RAFT_LEADER);
	/* Teardown closes the leader: raft_uv cancels what it queued. */
}

/* A connect request of a transport: records the outcome. */
struct connect_probe {
	struct raft_uv_connect req;
	bool done;
	int status;
	uv_stream_t *stream;
};

static void probe_connect_cb(struct raft_uv_connect *req, uv_stream_t *stream,
			     int status)
{
	struct connect_probe *p = container_of(req, struct connect_probe, req);

	p->done = true;
	p->status = status;
	p->stream = stream;
}

static bool transport_closed;

static void probe_transport_close_cb(struct raft_uv_transport *t)
{
	(void)t;
	transport_closed = true;
}

struct rejected_query {
	struct peer_net *net;
	uint64_t want;
};

static bool rejected_reached(void *arg)
{
	struct rejected_query *q = arg;

	return peer_net_rejected(q->net) >= q->want;
}

/* A node of another cluster (on 127.0.0.9) reaches shard 0 of node 1: it is
 * refused and counted; the cluster keeps replicating. */
static void transport_foreign_cluster_rejected(void **state)
{
	struct fixture *f = *state;
	struct raft_uv_transport t;
	struct connect_probe probe;
	struct rejected_query q;
	struct test_node *foreign;
	int rv;

	open_cluster(f, 1);
	shard_apply_one(f, 0, 1);

	node_open(f, 9, CLUSTER_ID + 1);
	foreign = &f->nodes[f->n_nodes - 1];
	memset(&t, 0, sizeof t);
	rv = peer_net_transport_init(foreign->net, 0, &t);
	assert_int_equal(rv, 0);
	assert_int_equal(t.init(&t, 9, foreign->peer_address), 0);
	assert_int_equal(t.listen(&t, NULL), 0);

	memset(&probe, 0, sizeof probe);
	rv = t.connect(&t, &probe.req, 1, f->nodes[0].peer_address,
		       probe_connect_cb);
	assert_int_equal(rv, 0);
	assert_true(run_until(&f->loop, flag_set, &probe.done));
	/* The preamble went out; the far end refuses it. */
	assert_int_equal(probe.status, 0);
	assert_non_null(probe.stream);
	q.net = f->nodes[0].net;
	q.want = 1;
	assert_true(run_until(&f->loop, rejected_reached, &q));
	assert_int_equal(peer_net_rejected(f->nodes[0].net), 1);
	assert_null(find_hello(&f->nodes[0], 9));
	uv_close((uv_handle_t *)probe.stream, free_stream_cb);

	transport_closed = false;
	t.close(&t, probe_transport_close_cb);
	assert_true(run_until(&f->loop, flag_set, &transport_closed));

	shard_apply_one(f, 0, 2);
	assert_int_equal(peer_net_rejected(f->nodes[1].net), 0);
	assert_int_equal(peer_net_rejected(f->nodes[2].net), 0);
}

struct raw_client {
	uv_tcp_t tcp;
	uv_connect_t connect;
	uv_write_t write;
	uv_buf_t buf;
	char rbuf[64];
	bool connected;
	bool eof;
	bool closed;
};

static void raw_close_cb(uv_handle_t *h)
{
	struct raw_client *c = h->data;

	c->closed = true;
}

static void raw_alloc_cb(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
	struct raw_client *c = h->data;

	(void)size;
	*buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void raw_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct raw_client *c = s->data;

	(void)buf;
	if (nread < 0) {
		c->eof = true;
		uv_read_stop(s);
	}
}

static void raw_write_cb(uv_write_t *w, int status)
{
	(void)w;
	(void)status;
}

static void raw_connect_cb(uv_connect_t *req, int status)
{
	struct raw_client *c = req->data;

	assert_int_equal(status, 0);
	c->connected = true;
	if (c->buf.len > 0) {
		assert_int_equal(uv_write(&c->write, (uv_stream_t *)&c->tcp,
					  &c->buf, 1, raw_write_cb),
				 0);
	}
	assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, raw_alloc_cb,
				       raw_read_cb),
			 0);
}

/* Connect a plain TCP client to @address, send @len bytes of @data and wait
 * until the server hangs up. */
static void raw_send_expect_hangup(struct fixture *f, const char *address,
				   const void *data, size_t len)
{
	struct sockaddr_storage addr;
	struct raw_client c;

	memset(&c, 0, sizeof c);
	assert_int_equal(peer_net_parse_address(address, &addr), 0);
	c.buf = uv_buf_init((char *)data, (unsigned)len);
	assert_int_equal(uv_tcp_init(&f->loop, &c.tcp), 0);
	c.tcp.data = &c;
	c.connect.data = &c;
	assert_int_equal(uv_tcp_connect(&c.connect, &c.tcp,
					(struct sockaddr *)&addr,
					raw_connect_cb),
			 0);
	assert_true(run_until(&f->loop, flag_set, &c.eof));
	uv_close((uv_handle_t *)&c.tcp, raw_close_cb);
	assert_true(run_until(&f->loop, flag_set, &c.closed));
}

/* Bytes that are not a preamble (an HTTP request, a header with a huge
 * length, a preamble cut short, silence) are refused and counted; the node
 * keeps working. */
static void transport_garbage_rejected(void **state)
{
	struct fixture *f = *state;
	static const char http[] = "GET / HTTP/1.0\r\n\r\n";
	static const uint8_t huge[] = {'R', 'M', 'Q', 'P', 0, 1, 0xff, 0xff};
	static const uint8_t short_body[] = {'R', 'M', 'Q', 'P', 0, 1,
					     0,   24,  0,   0,   0, 0};
	static const uint8_t zeros[8] = {0};
	struct peer_net *net;

	open_cluster(f, 1);
	net = f->nodes[0].net;
	peer_net_set_preamble_timeout(net, 200);

	raw_send_expect_hangup(f, f->nodes[0].peer_address, http,
			       sizeof http - 1);
	assert_int_equal(peer_net_rejected(net), 1);
	raw_send_expect_hangup(f, f->nodes[0].peer_address, huge, sizeof huge);
	assert_int_equal(peer_net_rejected(net), 2);
	raw_send_expect_hangup(f, f->nodes[0].peer_address, zeros,
			       sizeof zeros);
	assert_int_equal(peer_net_rejected(net), 3);
	/* Stalls in the body: the preamble timeout ends it. */
	raw_send_expect_hangup(f, f->nodes[0].peer_address, short_body,
			       sizeof short_body);
	assert_int_equal(peer_net_rejected(net), 4);
	/* Says nothing at all. */
	raw_send_expect_hangup(f, f->nodes[0].peer_address, NULL, 0);
	assert_int_equal(peer_net_rejected(net), 5);

	shard_apply_one(f, 0, 1);
}

/* Followers learn the client address of their leader from its preamble. */
static void transport_hello_reports_client_address(void **state)
{
	struct fixture *f = *state;
	struct test_shard *leader;
	unsigned i;

	open_cluster(f, 1);
	shard_apply_one(f, 0, 1);
	leader = leader_of(f, 0);
	assert_non_null(leader);
	for (i = 0; i < f->n_nodes; i++) {
		const struct hello *h;

		if (&f->nodes[i] == leader->node) {
			continue;
		}
		h = find_hello(&f->nodes[i], leader->node->id);
		assert_non_null(h);
		assert_string_equal(h->client_address,
				    leader->node->client_address);
		assert_string_equal(h->peer_address,
				    leader->node->peer_address);
	}
}

/* A connect to a port nobody listens on fails with RAFT_NOCONNECTION; a
 * connect still in flight when the transport closes gets RAFT_CANCELED
 * before the close callback. */
static void transport_connect_failure_and_cancel(void **state)
{
	struct fixture *f = *state;
	struct raft_uv_transport t;
	struct connect_probe refused;
	struct connect_probe canceled;
	char nowhere[32];
	int rv;

	closing_fixture = f;
	node_open(f, 1, CLUSTER_ID);
	/* Nothing listens on 127.0.0.4. */
	snprintf(nowhere, sizeof nowhere, "127.0.0.4:%u", f->next_port);

	memset(&t, 0, sizeof t);
	assert_int_equal(peer_net_transport_init(f->nodes[0].net, 3, &t), 0);
	assert_int_equal(peer_net_transport_init(f->nodes[0].net, 3, &t),
			 RMQ_EINVAL);
	assert_int_equal(t.init(&t, 2, f->nodes[0].peer_address), RAFT_INVALID);
	assert_int_equal(t.init(&t, 1, f->nodes[0].peer_address), 0);

	memset(&refused, 0, sizeof refused);
	rv = t.connect(&t, &refused.req, 2, nowhere, probe_connect_cb);
	assert_int_equal(rv, 0);
	assert_true(run_until(&f->loop, flag_set, &refused.done));
	assert_int_equal(refused.status, RAFT_NOCONNECTION);
	assert_null(refused.stream);

	memset(&canceled, 0, sizeof canceled);
	assert_int_equal(t.connect(&t, &canceled.req, 2, "bogus", NULL),
			 RAFT_NOCONNECTION);
	rv = t.connect(&t, &canceled.req, 2, nowhere, probe_connect_cb);
	assert_int_equal(rv, 0);
	transport_closed = false;
	t.close(&t, probe_transport_close_cb);
	assert_false(canceled.done);
	assert_true(run_until(&f->loop, flag_set, &transport_closed));
	assert_true(canceled.done);
	assert_int_equal(canceled.status, RAFT_CANCELED);
	assert_null(t.impl);
}

static void *failing_malloc(void *data, size_t size)
{
	(void)data;
	(void)size;
	return NULL;
}

static void plain_free(void *data, void *ptr)
{
	(void)data;
	free(ptr);
}

/* Out of memory for the stream: connect fails with RAFT_NOMEM and its
 * callback never fires. */
static void transport_connect_nomem_fails_without_cb(void **state)
{
	struct fixture *f = *state;
	struct raft_heap heap = {
		.malloc = failing_malloc,
		.free = plain_free,
	};
	struct raft_uv_transport t;
	struct connect_probe probe;
	int rv;

	closing_fixture = f;
	node_open(f, 1, CLUSTER_ID);
	memset(&t, 0, sizeof t);
	assert_int_equal(peer_net_transport_init(f->nodes[0].net, 0, &t), 0);
	assert_int_equal(t.init(&t, 1, f->nodes[0].peer_address), 0);
	memset(&probe, 0, sizeof probe);
	raft_heap_set(&heap);
	rv = t.connect(&t, &probe.req, 1, f->nodes[0].peer_address,
		       probe_connect_cb);
	raft_heap_set_default();
	assert_int_equal(rv, RAFT_NOMEM);
	transport_closed = false;
	t.close(&t, probe_transport_close_cb);
	assert_true(run_until(&f->loop, flag_set, &transport_closed));
	assert_false(probe.done);
}

/* A transport raft_uv never initialized is released by peer_net_close. */
static void transport_unused_released_on_close(void **state)
{
	struct fixture *f = *state;
	struct raft_uv_transport t1;
	struct raft_uv_transport t2;

	closing_fixture = f;
	node_open(f, 1, CLUSTER_ID);
	memset(&t1, 0, sizeof t1);
	memset(&t2, 0, sizeof t2);
	assert_int_equal(peer_net_transport_init(f->nodes[0].net, 1, &t1), 0);
	assert_int_equal(peer_net_transport_init(f->nodes[0].net, 2, &t2), 0);
	peer_net_transport_release(&t1);
	assert_null(t1.impl);
	/* The shard id is free again. */
	assert_int_equal(peer_net_transport_init(f->nodes[0].net, 1, &t1), 0);

	single_net_closed = false;
	peer_net_close(f->nodes[0].net, single_net_close_cb);
	assert_true(run_until(&f->loop, flag_set, &single_net_closed));
	assert_null(t1.impl);
	assert_null(t2.impl);
	f->nodes[0].net = NULL;
	f->nodes[0].net_closed = true;
}

struct accept_probe {
	uint64_t id;
	char address[64];
	char data[16];
	size_t have;
	bool accepted;
	bool read_done;
};

static struct accept_probe accept_probe;

static void probe_alloc_cb(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
	(void)h;
	(void)size;
	*buf = uv_buf_init(
		accept_probe.data + accept_probe.have,
		(unsigned)(sizeof accept_probe.data - 1 - accept_probe.have));
}

static void probe_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	(void)buf;
	if (nread > 0) {
		accept_probe.have += (size_t)nread;
	}
	if (nread < 0 || accept_probe.have >= 8) {
		accept_probe.read_done = true;
		/* The stream is ours, as it would be raft_uv's. */
		uv_close((uv_handle_t *)s, free_stream_cb);
	}
}

static void probe_accept_cb(struct raft_uv_transport *t, raft_id id,
			    const char *address, uv_stream_t *stream)
{
	(void)t;
	accept_probe.accepted = true;
	accept_probe.id = id;
	snprintf(accept_probe.address, sizeof accept_probe.address, "%s",
		 address);
	assert_int_equal(uv_read_start(stream, probe_alloc_cb, probe_read_cb),
			 0);
	accept_probe.data[0] = '\0';
}

static size_t put_be(uint8_t *p, uint64_t v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
	}
	return n;
}

/* A preamble written together with raft data in one segment: the shard's
 * accept callback gets the sender and reads all of the raft data itself. */
static void transport_bytes_after_preamble_reach_raft(void **state)
{
	struct fixture *f = *state;
	static const char peer[] = "127.0.0.7:7000";
	static const char client[] = "127.0.0.7:8000";
	struct raft_uv_transport t;
	struct raw_client c;
	struct sockaddr_storage addr;
	uint8_t msg[128];
	size_t len = 0;
	size_t body_len =
		8 + 4 + 8 + 2 + (sizeof peer - 1) + 2 + (sizeof client - 1);

	closing_fixture = f;
	node_open(f, 1, CLUSTER_ID);
	memset(&t, 0, sizeof t);
	assert_int_equal(peer_net_transport_init(f->nodes[0].net, 5, &t), 0);
	assert_int_equal(t.init(&t, 1, f->nodes[0].peer_address), 0);
	assert_int_equal(t.listen(&t, probe_accept_cb), 0);
	memset(&accept_probe, 0, sizeof accept_probe);

	memcpy(msg, "RMQP", 4);
	len = 4;
	len += put_be(msg + len, 1, 2);
	len += put_be(msg + len, body_len, 2);
	len += put_be(msg + len, CLUSTER_ID, 8);
	len += put_be(msg + len, 5, 4);
	len += put_be(msg + len, 7, 8);
	len += put_be(msg + len, sizeof peer - 1, 2);
	memcpy(msg + len, peer, sizeof peer - 1);
	len += sizeof peer - 1;
	len += put_be(msg + len, sizeof client - 1, 2);
	memcpy(msg + len, client, sizeof client - 1);
	len += sizeof client - 1;
	assert_int_equal(len, 8 + body_len);
	memcpy(msg + len, "RAFTDATA", 8);
	len += 8;

	memset(&c, 0, sizeof c);
	assert_int_equal(
		peer_net_parse_address(f->nodes[0].peer_address, &addr), 0);
	c.buf = uv_buf_init((char *)msg, (unsigned)len);
	assert_int_equal(uv_tcp_init(&f->loop, &c.tcp), 0);
	c.tcp.data = &c;
	c.connect.data = &c;
	assert_int_equal(uv_tcp_connect(&c.connect, &c.tcp,
					(struct sockaddr *)&addr,
					raw_connect_cb),
			 0);
	assert_true(run_until(&f->loop, flag_set, &accept_probe.read_done));
	assert_true(accept_probe.accepted);
	assert_int_equal(accept_probe.id, 7);
	assert_string_equal(accept_probe.address, peer);
	assert_int_equal(accept_probe.have, 8);
	assert_memory_equal(accept_probe.data, "RAFTDATA", 8);
	assert_int_equal(peer_net_rejected(f->nodes[0].net), 0);
	assert_non_null(find_hello(&f->nodes[0], 7));
	assert_string_equal(find_hello(&f->nodes[0], 7)->client_address,
			    client);

	uv_close((uv_handle_t *)&c.tcp, raw_close_cb);
	assert_true(run_until(&f->loop, flag_set, &c.closed));
	transport_closed = false;
	t.close(&t, probe_transport_close_cb);
	assert_true(run_until(&f->loop, flag_set, &transport_closed));
}

/* A second listener on a taken peer address fails with RMQ_EIO and still
 * closes cleanly. */
static void transport_listen_address_in_use_fails(void **state)
{
	struct fixture *f = *state;
	struct peer_net_config c;
	struct peer_net *second;

	closing_fixture = f;
	node_open(f, 1, CLUSTER_ID);
	memset(&c, 0, sizeof c);
	c.node_id = 2;
	c.cluster_id = CLUSTER_ID;
	c.peer_address = f->nodes[0].peer_address;
	c.client_address = "127.0.0.1:1";
	assert_int_equal(peer_net_init(&f->loop, &c, &second), 0);
	assert_int_equal(peer_net_listen(second), RMQ_EIO);
	single_net_closed = false;
	peer_net_close(second, single_net_close_cb);
	assert_true(run_until(&f->loop, flag_set, &single_net_closed));

	c.bind_host = "not-an-ip";
	assert_int_equal(peer_net_init(&f->loop, &c, &second), RMQ_EINVAL);
	c.bind_host = NULL;
	c.node_id = 0;
	assert_int_equal(peer_net_init(&f->loop, &c, &second), RMQ_EINVAL);
}

static void transport_parse_address_cases(void **state)
{
	struct sockaddr_storage a;
	const struct sockaddr_in *in4 = (const struct sockaddr_in *)&a;
	const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a;
	static const char *const bad[] = {
		"",
		"127.0.0.1",
		"127.0.0.1:",
		":80",
		"127.0.0.1:0",
		"127.0.0.1:65536",
		"127.0.0.1:123456",
		"127.0.0.1:80x",
		"127.0.0.1:-1",
		"127.0.0.1: 80",
		"localhost:80",
		"256.0.0.1:80",
		"1.2.3:80",
		"::1:80",
		"[::1]",
		"[::1]80",
		"[::1:80",
		"[]:80",
		"[127.0.0.1]:80",
		"[::g]:80",
	};
	size_t i;

	(void)state;
	assert_int_equal(peer_net_parse_address("127.0.0.1:9001", &a), 0);
	assert_int_equal(a.ss_family, AF_INET);
	assert_int_equal(ntohs(in4->sin_port), 9001);
	assert_int_equal(ntohl(in4->sin_addr.s_addr), 0x7f000001);

	assert_int_equal(peer_net_parse_address("10.1.2.3:65535", &a), 0);
	assert_int_equal(ntohs(in4->sin_port), 65535);

	assert_int_equal(peer_net_parse_address("[::1]:7000", &a), 0);
	assert_int_equal(a.ss_family, AF_INET6);
	assert_int_equal(ntohs(in6->sin6_port), 7000);
	assert_true(IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr));

	assert_int_equal(peer_net_parse_address("[fe80::1]:1", &a), 0);
	assert_int_equal(a.ss_family, AF_INET6);

	for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (peer_net_parse_address(bad[i], &a) != RMQ_EINVAL) {
			fail_msg("accepted \"%s\"", bad[i]);
		}
	}
	assert_int_equal(peer_net_parse_address(NULL, &a), RMQ_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
			transport_three_nodes_two_shards_replicate,
			fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(
			transport_foreign_cluster_rejected, fixture_setup,
			fixture_teardown),
		cmocka_unit_test_setup_teardown(transport_garbage_rejected,
						fixture_setup,
						fixture_teardown),
		cmocka_unit_test_setup_teardown(
			transport_hello_reports_client_address, fixture_setup,
			fixture_teardown),
		cmocka_unit_test_setup_teardown(
			transport_connect_failure_and_cancel, fixture_setup,
			fixture_teardown),
		cmocka_unit_test_setup_teardown(
			transport_connect_nomem_fails_without_cb, fixture_setup,
			fixture_teardown),
		cmocka_unit_test_setup_teardown(
			transport_unused_released_on_close, fixture_setup,
			fixture_teardown),
		cmocka_unit_test_setup_teardown(
			transport_bytes_after_preamble_reach_raft,
			fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(
			transport_listen_address_in_use_fails, fixture_setup,
			fixture_teardown),
		cmocka_unit_test_setup_teardown(
			transport_transfer_to_dead_follower, fixture_setup,
			fixture_teardown),
		cmocka_unit_test(transport_parse_address_cases),
	};

	/* As raftmqd: a write to a peer that went away fails with EPIPE. */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
