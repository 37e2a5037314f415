/* libraftmq: public API, the I/O thread, routing, retries and failover.
 *
 * Application threads never touch sockets: they append publishes and
 * blocking requests ("ops") to queues under rmq_client.mu, wake the I/O
 * thread with uv_async_send() and, for blocking calls, wait on
 * rmq_client.cond. Everything else runs on the I/O thread, which owns the
 * libuv loop, the connections (cconn.c) and all routing state.
 *
 * The happy path of a publish is: the I/O thread gives it the next
 * producer seq, looks up the queue's shard in the topology and the shard's
 * leader, writes a PublishReq on the connection to that leader and, when
 * the PublishResp arrives, completes it (callback or waiting thread).
 *
 * Failure modes are, per publish: NOT_LEADER (follow the named leader, or
 * back off and refresh the topology), UNAVAILABLE / UNKNOWN_OUTCOME / a
 * dropped connection (every unconfirmed publish of that shard goes back to
 * the pending list, sorted by producer seq, and is resent with the same
 * producer id and seq once the leader is known), NOT_FOUND (refresh the
 * topology; fail if the queue is not listed, else retry for up to 3 s),
 * definite refusals (TOO_LARGE, FULL, ...: fail with the server's text), and
 * publish_timeout_ms elapsing (RMQ_ETIMEDOUT).
 *
 * A publish is a struct pub: pending -> sent -> completed, or back to
 * pending on a retryable failure. A consumer is a struct rmq_consumer in
 * state K_PENDING -> K_SUBSCRIBING -> K_ACTIVE, back to K_PENDING when its
 * connection drops or the server ends it, K_FAILED on a definite error,
 * K_CANCELLING while rmq_unsubscribe() runs. A blocking call is a struct op
 * (OP_NEW -> OP_SENT -> done), completed exactly once, by its answer, its
 * deadline or the shutdown. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_int.h"

static _Thread_local char tl_last_error[RMQ_MSG_MAX];
static _Thread_local uint64_t tl_confirm_node;

static void set_last_error(const char *msg)
{
	snprintf(tl_last_error, sizeof tl_last_error, "%s",
		 msg != NULL ? msg : "");
}

uint64_t client_now(void)
{
	return uv_hrtime() / 1000000u;
}

/* ---- Structures ------------------------------------------------------------ */

/* A synchronous rmq_publish() waits on this (on its stack). */
struct waiter {
	bool done;
	int status;
	uint64_t seq;
	char msg[RMQ_MSG_MAX];
};

enum pub_state { PUB_PENDING, PUB_SENT };

/* One publish until its confirm. One allocation holds the struct, the
 * protobuf header array, the queue name, the body and the headers. */
struct pub {
	struct link link; /* in in_pubs, pending or sent */
	enum pub_state state;
	uint64_t pseq;
	uint64_t deadline;
	uint64_t retry_at;
	uint64_t nf_gen;   /* wait for this topology generation (NOT_FOUND) */
	uint64_t nf_since; /* first NOT_FOUND answer */
	uint64_t unknown_since; /* first lookup that did not know the queue */
	uint32_t shard;
	struct req *req; /* while sent */
	rmq_confirm_cb cb;
	void *arg;
	uint64_t answered_by; /* node id of the answer that completed it */
	struct waiter *sync;
	char *queue;
	uint8_t *body;
	size_t len;
	Rmq__Header **hdrp;
	size_t n_hdrs;
};

enum op_kind {
	OP_CONNECT,
	OP_DECLARE,
	OP_DELETE,
	OP_LIST,
	OP_STATUS,
	OP_SUBSCRIBE,
	OP_CANCEL,
	OP_ADMIN, /* a membership/shard request to a shard's leader */
};

enum op_state { OP_NEW, OP_SENT };

enum target_state { T_WAIT, T_SENT, T_DONE, T_FAILED };

struct op_target {
	struct cconn *conn;
	struct req *req;
	enum target_state state;
	ProtobufCMessage *resp; /* owned: TopologyResp or ListResp */
};

/* A blocking call, on the calling thread's stack. */
struct op {
	struct link link; /* in in_ops, then ops */
	enum op_kind kind;
	enum op_state state;
	unsigned timeout_ms;
	uint64_t started;
	uint64_t deadline;
	uint64_t retry_at;
	bool maybe_done; /* an attempt may have committed (delete) */
	/* arguments */
	const char *name;
	const struct rmq_queue_options *qo;
	struct rmq_consumer *k;
	/* io */
	struct req *req;
	struct op_target *targets; /* owned */
	size_t n_targets;
	/* results (written before done is set under mu) */
	bool done;
	int status;
	char msg[RMQ_MSG_MAX];
	bool created;
	uint32_t shard;
	struct rmq_queue_info *qinfo;
	size_t nq;
	struct rmq_cluster_info *cinfo;
	/* OP_ADMIN: request (borrowed), the shard whose leader answers it,
	 * and the answer (owned by the caller once done) */
	const Rmq__Request *areq;
	uint32_t ashard;
	Rmq__Response *aresp;
};

enum k_state { K_PENDING, K_SUBSCRIBING, K_ACTIVE, K_FAILED, K_CANCELLING };

#define N_OUTCOMES 3

/* One SettleReq in flight; its seqs are resent if the answer is lost. */
struct settle_batch {
	struct link link; /* in rmq_consumer.batches */
	struct rmq_consumer *k;
	int outcome;
	struct u64vec seqs;
	struct req *req;
};

/* A delivery handed to rmq_receive(): one allocation. */
struct delivery_box {
	struct rmq_delivery d;
	struct link link;
};

struct rmq_consumer {
	struct rmq_client *c;
	struct link link; /* io: in rmq_client.consumers */
	uint64_t id;
	char queue[256];
	unsigned prefetch;
	rmq_delivery_cb cb;
	void *arg;
	/* io */
	enum k_state state;
	struct cconn *conn;
	struct req *req;
	uint32_t shard;
	uint64_t retry_at;
	uint64_t nf_gen;
	uint64_t nf_since;
	uint64_t unknown_since; /* first lookup that did not know the queue */
	struct u64vec unsent[N_OUTCOMES];
	struct link batches;
	struct op *sub_op; /* the rmq_subscribe() waiting for the first answer */
	/* mu */
	struct u64vec in[N_OUTCOMES];
	struct link recvq;
	uint64_t unsettled;
	int error; /* terminal error for rmq_receive() */
};

/* ---- Small helpers --------------------------------------------------------- */

static void lock(struct rmq_client *c)
{
	pthread_mutex_lock(&c->mu);
}

static void unlock(struct rmq_client *c)
{
	pthread_mutex_unlock(&c->mu);
}

static void deadline_in(struct timespec *ts, unsigned ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

/* Wait on c->cond until @abs; false once it passed. Holds mu. */
static bool wait_until(struct rmq_client *c, const struct timespec *abs)
{
	return pthread_cond_timedwait(&c->cond, &c->mu, abs) != ETIMEDOUT;
}

static bool on_io_thread(struct rmq_client *c)
{
	uv_thread_t self = uv_thread_self();
	return uv_thread_equal(&self, &c->io_tid) != 0;
}

static uint64_t jitter(struct rmq_client *c, uint64_t lo, uint64_t hi)
{
	c->rng ^= c->rng << 13;
	c->rng ^= c->rng >> 7;
	c->rng ^= c->rng << 17;
	return lo + c->rng % (hi - lo + 1);
}

static struct req *req_new(struct rmq_client *c, enum req_kind kind,
			   void *owner, int tag)
{
	struct req *r;

	if (!list_empty(&c->req_pool)) {
		r = container_of(c->req_pool.next, struct req, link);
		list_remove(&r->link);
	} else {
		r = malloc(sizeof *r);
		if (r == NULL) {
			return NULL;
		}
	}
	link_init(&r->link);
	r->id = 0;
	r->kind = kind;
	r->owner = owner;
	r->conn = NULL;
	r->tag = tag;
	return r;
}

void client_req_free(struct rmq_client *c, struct req *r)
{
	list_push_back(&c->req_pool, &r->link);
}

static void req_detach(struct req **rp)
{
	if (*rp != NULL) {
		(*rp)->owner = NULL;
		*rp = NULL;
	}
}

/* Status of a Response: 0 or RMQ_E*, with the server's text in @msg. */
static int resp_status(const Rmq__Response *r, char *msg, size_t n)
{
	if (msg != NULL) {
		msg[0] = '\0';
	}
	if (r->error == NULL || r->error->code == RMQ__CODE__OK) {
		return 0;
	}
	if (msg != NULL && r->error->message != NULL) {
		snprintf(msg, n, "%s", r->error->message);
	}
	return codec_err_from_code(r->error->code);
}

static bool is_transient(int status)
{
	return status == RMQ_EUNAVAIL || status == RMQ_ELEADERLOST ||
	       status == RMQ_ETIMEDOUT || status == RMQ_ECONNECT;
}

/* ---- Topology --------------------------------------------------------------- */

static void topo_want(struct rmq_client *c)
{
	c->topo_want = true;
}

/* The topology generation that is surely newer than what we know now. */
static uint64_t topo_need_gen(struct rmq_client *c)
{
	return c->topo_gen + (c->topo_inflight ? 2 : 1);
}

static struct shard_state *shard_get(struct rmq_client *c, uint32_t id)
{
	struct shard_state *v;

	for (size_t i = 0; i < c->n_shards; i++) {
		if (c->shards[i].id == id) {
			return &c->shards[i];
		}
	}
	v = realloc(c->shards, (c->n_shards + 1) * sizeof *v);
	if (v == NULL) {
		return NULL;
	}
	c->shards = v;
	memset(&v[c->n_shards], 0, sizeof *v);
	v[c->n_shards].id = id;
	v[c->n_shards].epoch = 1;
	return &v[c->n_shards++];
}

static void shard_backoff(struct rmq_client *c, struct shard_state *s)
{
	if (s != NULL) {
		s->retry_at = client_now() + jitter(c, 50, 100);
	}
	topo_want(c);
}

static const char *node_addr(struct rmq_client *c, uint64_t id)
{
	for (size_t i = 0; i < c->n_nodes; i++) {
		if (c->nodes[i].id == id) {
			return c->nodes[i].addr;
		}
	}
	return NULL;
}

static void node_set_addr(struct rmq_client *c, uint64_t id, const char *addr)
{
	struct node_addr *v;

	if (id == 0 || addr == NULL || addr[0] == '\0' ||
	    strlen(addr) >= RMQ_ADDR_MAX) {
		return;
	}
	for (size_t i = 0; i < c->n_nodes; i++) {
		if (c->nodes[i].id == id) {
			strcpy(c->nodes[i].addr, addr);
			return;
		}
	}
	v = realloc(c->nodes, (c->n_nodes + 1) * sizeof *v);
	if (v == NULL) {
		return;
	}
	c->nodes = v;
	v[c->n_nodes].id = id;
	strcpy(v[c->n_nodes].addr, addr);
	c->n_nodes++;
}

static struct cconn *conn_for_node(struct rmq_client *c, uint64_t id)
{
	struct link *l;
	const char *addr;
	struct cconn *x;

	for (l = c->conns.next; l != &c->conns; l = l->next) {
		x = container_of(l, struct cconn, link);
		if (x->node_id == id && x->state == CONN_CONNECTED) {
			return x;
		}
	}
	addr = node_addr(c, id);
	if (addr == NULL) {
		return NULL;
	}
	x = cconn_get(c, addr);
	if (x != NULL && x->node_id == 0) {
		x->node_id = id;
	}
	return x;
}

/* The connected conn to the leader of @s, or NULL (connecting, unknown). */
static struct cconn *route_shard(struct rmq_client *c, struct shard_state *s,
				 uint64_t now)
{
	struct cconn *x;

	if (s == NULL || now < s->retry_at) {
		return NULL;
	}
	if (s->leader == 0) {
		topo_want(c);
		return NULL;
	}
	x = conn_for_node(c, s->leader);
	if (x == NULL) {
		topo_want(c);
		return NULL;
	}
	if (!cconn_ready(x)) {
		cconn_ensure(x);
		if (x->failed_attempts > 0) {
			topo_want(c); /* it failed before: maybe a new leader */
		}
		return NULL;
	}
	return x;
}

/* NOT_LEADER from @x about shard @shard. */
static void note_not_leader(struct rmq_client *c, uint32_t shard,
			    const Rmq__Error *e, struct cconn *x)
{
	struct shard_state *s = shard_get(c, shard);

	if (s == NULL) {
		return;
	}
	if (e != NULL && e->leader_id != 0 &&
	    (x == NULL || e->leader_id != x->node_id)) {
		s->leader = e->leader_id;
		node_set_addr(c, e->leader_id, e->leader_address);
		s->retry_at = 0;
		if (node_addr(c, e->leader_id) == NULL) {
			topo_want(c);
		}
		return;
	}
	s->leader = 0;
	shard_backoff(c, s);
}

static int qinfo_cmp(const void *a, const void *b)
{
	const Rmq__QueueInfo *const *x = a;
	const Rmq__QueueInfo *const *y = b;
	return strcmp((*x)->name, (*y)->name);
}

static bool qidx_lookup(struct rmq_client *c, const char *name, uint32_t *shard)
{
	size_t lo = 0;
	size_t hi = c->nq;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int r = strcmp(name, c->qidx[mid]->name);
		if (r == 0) {
			*shard = c->qidx[mid]->shard;
			return true;
		}
		if (r < 0) {
			hi = mid;
		} else {
			lo = mid + 1;
		}
	}
	return false;
}

/* The shard of queue @name: from the topology, else from our own declare. */
static bool queue_lookup(struct rmq_client *c, const char *name,
			 uint32_t *shard)
{
	if (qidx_lookup(c, name, shard)) {
		return true;
	}
	for (size_t i = 0; i < c->n_decl; i++) {
		if (strcmp(c->decl[i].name, name) == 0) {
			*shard = c->decl[i].shard;
			return true;
		}
	}
	return false;
}

static void decl_remove(struct rmq_client *c, const char *name)
{
	for (size_t i = 0; i < c->n_decl; i++) {
		if (strcmp(c->decl[i].name, name) == 0) {
			free(c->decl[i].name);
			c->decl[i] = c->decl[--c->n_decl];
			return;
		}
	}
}

static void decl_add(struct rmq_client *c, const char *name, uint32_t shard)
{
	struct declared *v;
	char *s;

	decl_remove(c, name);
	s = strdup(name);
	v = realloc(c->decl, (c->n_decl + 1) * sizeof *v);
	if (s == NULL || v == NULL) {
		free(s);
		if (v != NULL) {
			c->decl = v;
		}
		return;
	}
	c->decl = v;
	v[c->n_decl].name = s;
	v[c->n_decl].shard = shard;
	c->n_decl++;
}

/* Learn node addresses from a topology answer. */
static void topo_learn_nodes(struct rmq_client *c, const Rmq__TopologyResp *t)
{
	for (size_t i = 0; i < t->n_nodes; i++) {
		node_set_addr(c, t->nodes[i]->id, t->nodes[i]->client_address);
	}
	if (t->cluster_name != NULL && t->cluster_name[0] != '\0') {
		snprintf(c->cluster_name, sizeof c->cluster_name, "%s",
			 t->cluster_name);
	}
}

/* Apply a topology answer; takes ownership of @t. */
static void topo_apply(struct rmq_client *c, Rmq__TopologyResp *t)
{
	Rmq__QueueInfo **idx = NULL;

	if (t->n_queues > 0) {
		idx = malloc(t->n_queues * sizeof *idx);
		if (idx == NULL) {
			rmq__topology_resp__free_unpacked(t, NULL);
			topo_want(c);
			return;
		}
		memcpy(idx, t->queues, t->n_queues * sizeof *idx);
		qsort(idx, t->n_queues, sizeof *idx, qinfo_cmp);
	}
	if (c->topo != NULL) {
		rmq__topology_resp__free_unpacked(c->topo, NULL);
	}
	free(c->qidx);
	c->topo = t;
	c->qidx = idx;
	c->nq = t->n_queues;
	topo_learn_nodes(c, t);
	for (size_t i = 0; i < t->n_shards; i++) {
		struct shard_state *s = shard_get(c, t->shards[i]->id);
		if (s != NULL && t->shards[i]->leader != 0) {
			s->leader = t->shards[i]->leader;
		}
	}
	for (size_t i = 0; i < c->n_decl;) {
		uint32_t shard;
		if (qidx_lookup(c, c->decl[i].name, &shard)) {
			decl_remove(c,
				    c->decl[i].name); /* moves the last to i */
		} else {
			i++;
		}
	}
	c->topo_gen++;
}

static bool any_shard_leaderless(const struct rmq_client *c)
{
	for (size_t i = 0; i < c->n_shards; i++) {
		if (c->shards[i].leader == 0) {
			return true;
		}
	}
	return false;
}

static void topo_maybe_send(struct rmq_client *c)
{
	Rmq__TopologyReq tr = RMQ__TOPOLOGY_REQ__INIT;
	Rmq__Request r = RMQ__REQUEST__INIT;
	struct cconn *x = NULL;
	struct shard_state *meta;
	struct link *l;
	struct req *req;

	if (!c->topo_want || c->topo_inflight ||
	    client_now() < c->topo_next_at) {
		return;
	}
	/* Ask the meta leader: it has the freshest queue list. While a
	 * shard has no known leader, ask each other node in turn every other
	 * time: a node cut off from its peers (partitioned, just restarted)
	 * knows no leader, and asking it over and over would not find the
	 * one the others elected. */
	meta = shard_get(c, 0);
	if (!any_shard_leaderless(c)) {
		c->topo_turn = 0;
	}
	if (meta != NULL && meta->leader != 0 && c->topo_turn % 2 == 0) {
		x = conn_for_node(c, meta->leader);
		if (x != NULL && !cconn_ready(x)) {
			x = NULL;
		}
	}
	if (x == NULL) {
		unsigned n_ready = 0, k;
		for (l = c->conns.next; l != &c->conns; l = l->next) {
			n_ready += cconn_ready(
				container_of(l, struct cconn, link));
		}
		k = n_ready > 0 ? (c->topo_turn / 2) % n_ready : 0;
		for (l = c->conns.next; n_ready > 0 && l != &c->conns;
		     l = l->next) {
			struct cconn *y = container_of(l, struct cconn, link);
			if (cconn_ready(y) && k-- == 0) {
				x = y;
				break;
			}
		}
	}
	c->topo_turn++;
	if (x == NULL) {
		/* Nobody connected: try every seed and known node. */
		for (int i = 0; i < c->n_seeds; i++) {
			struct cconn *y = cconn_get(c, c->seeds[i]);
			if (y != NULL) {
				cconn_ensure(y);
			}
		}
		for (size_t i = 0; i < c->n_nodes; i++) {
			struct cconn *y = cconn_get(c, c->nodes[i].addr);
			if (y != NULL) {
				cconn_ensure(y);
			}
		}
		return;
	}
	req = req_new(c, REQ_TOPOLOGY, c, 0);
	if (req == NULL) {
		return;
	}
	r.body_case = RMQ__REQUEST__BODY_TOPOLOGY;
	r.topology = &tr;
	if (cconn_send(x, req, &r) != 0) {
		client_req_free(c, req);
		return;
	}
	c->topo_want = false;
	c->topo_inflight = true;
}

static void topo_on_response(struct rmq_client *c, Rmq__Response *resp, int err)
{
	c->topo_inflight = false;
	c->topo_next_at = client_now() + RMQ_TOPO_MIN_GAP_MS;
	if (err == 0 && resp != NULL && resp_status(resp, NULL, 0) == 0 &&
	    resp->body_case == RMQ__RESPONSE__BODY_TOPOLOGY &&
	    resp->topology != NULL) {
		Rmq__TopologyResp *t = resp->topology;
		resp->topology = NULL;
		resp->body_case = RMQ__RESPONSE__BODY__NOT_SET;
		topo_apply(c, t);
		return;
	}
	topo_want(c);
}

/* ---- Publishing (I/O thread) ----------------------------------------------- */

static void pub_finish(struct rmq_client *c, struct pub *p, int status,
		       uint64_t seq, const char *msg)
{
	req_detach(&p->req);
	if (p->state == PUB_PENDING) {
		c->n_pending--;
	}
	list_remove(&p->link);
	if (p->sync != NULL) {
		lock(c);
		p->sync->status = status;
		p->sync->seq = seq;
		snprintf(p->sync->msg, sizeof p->sync->msg, "%s",
			 msg != NULL ? msg : "");
		p->sync->done = true;
		c->inflight--;
		pthread_cond_broadcast(&c->cond);
		unlock(c);
	} else {
		set_last_error(msg);
		tl_confirm_node = p->answered_by;
		if (p->cb != NULL) {
			p->cb(p->arg, status, seq);
		}
		tl_confirm_node = 0;
		lock(c);
		c->inflight--;
		pthread_cond_broadcast(&c->cond);
		unlock(c);
	}
	free(p);
}

/* Insert @p into the pending list in producer seq order. */
static void pending_insert(struct rmq_client *c, struct pub *p)
{
	struct link *l = c->pending.prev;

	while (l != &c->pending &&
	       container_of(l, struct pub, link)->pseq > p->pseq) {
		l = l->prev;
	}
	list_insert_before(l->next, &p->link);
	p->state = PUB_PENDING;
	c->n_pending++;
}

static void pub_requeue(struct rmq_client *c, struct pub *p)
{
	/* What is resent goes with a higher epoch than anything the server
	 * may have fenced off after refusing one of them. */
	struct shard_state *s = shard_get(c, p->shard);
	if (s != NULL) {
		s->epoch++;
	}
	req_detach(&p->req);
	list_remove(&p->link);
	pending_insert(c, p);
}

/* Every unconfirmed publish of @shard goes back to pending. */
static void requeue_shard(struct rmq_client *c, uint32_t shard)
{
	struct link *l = c->sent.next;

	while (l != &c->sent) {
		struct pub *p = container_of(l, struct pub, link);
		l = l->next;
		if (p->shard == shard) {
			pub_requeue(c, p);
		}
	}
}

static void pub_on_response(struct rmq_client *c, struct pub *p,
			    struct cconn *x, Rmq__Response *resp, int err)
{
	char msg[RMQ_MSG_MAX] = "";
	int status = resp != NULL ? resp_status(resp, msg, sizeof msg) : err;
	uint64_t now = client_now();

	p->req = NULL;
	p->answered_by = resp != NULL && x != NULL ? x->node_id : 0;
	if (status == 0) {
		uint64_t seq = resp->body_case == RMQ__RESPONSE__BODY_PUBLISH &&
					       resp->publish != NULL
				       ? resp->publish->seq
				       : 0;
		pub_finish(c, p, 0, seq, NULL);
	} else if (status == RMQ_ENOTLEADER) {
		note_not_leader(c, p->shard, resp->error, x);
		requeue_shard(c, p->shard);
	} else if (is_transient(status)) {
		shard_backoff(c, shard_get(c, p->shard));
		requeue_shard(c, p->shard);
	} else if (status == RMQ_ENOTFOUND) {
		if (p->nf_since == 0) {
			p->nf_since = now;
		}
		p->nf_gen = topo_need_gen(c);
		p->retry_at = now + 100;
		topo_want(c);
		pub_requeue(c, p);
	} else {
		pub_finish(c, p, status, 0, msg);
	}
}

static int pub_send(struct rmq_client *c, struct pub *p, struct cconn *x)
{
	Rmq__PublishReq pr = RMQ__PUBLISH_REQ__INIT;
	Rmq__Request r = RMQ__REQUEST__INIT;
	struct req *req = req_new(c, REQ_PUBLISH, p, 0);
	struct shard_state *s;
	int rv;

	if (req == NULL) {
		return RMQ_ENOMEM;
	}
	pr.queue = p->queue;
	pr.body.data = p->body;
	pr.body.len = p->len;
	pr.n_headers = p->n_hdrs;
	pr.headers = p->hdrp;
	pr.producer_id = c->producer_id;
	pr.producer_seq = p->pseq;
	s = shard_get(c, p->shard);
	pr.epoch = s != NULL ? s->epoch : 0;
	r.body_case = RMQ__REQUEST__BODY_PUBLISH;
	r.publish = &pr;
	rv = cconn_send(x, req, &r);
	if (rv != 0) {
		client_req_free(c, req);
		return rv;
	}
	p->req = req;
	return 0;
}

static void pump_pubs(struct rmq_client *c)
{
	uint64_t now = client_now();
	struct link *l;

	if (c->n_pending == 0) {
		return;
	}
	c->pass++;
	l = c->pending.next;
	while (l != &c->pending) {
		struct pub *p = container_of(l, struct pub, link);
		struct shard_state *s = NULL;
		uint32_t shard = 0;
		uint64_t since;
		bool found;
		struct cconn *x;
		int rv;

		l = l->next;
		found = queue_lookup(c, p->queue, &shard);
		if (found) {
			s = shard_get(c, shard);
			if (s == NULL || s->blocked == c->pass) {
				continue;
			}
		}
		if (p->nf_gen > c->topo_gen) {
			topo_want(c);
			if (s != NULL) {
				s->blocked = c->pass;
			}
			continue;
		}
		if (!found) {
			if (p->nf_gen == 0) {
				/* Never seen: another client may have declared
				 * it a moment ago. Look for the grace time. */
				if (p->unknown_since == 0) {
					p->unknown_since = now;
				}
				p->nf_gen = topo_need_gen(c);
				topo_want(c);
				continue;
			}
			/* A server answered NOT_FOUND for a queue we had seen:
			 * it may be deleted, or re-declared a moment ago and
			 * not yet known to the node we asked. Look again for a
			 * short while before giving up. */
			since = p->nf_since != 0 ? p->nf_since
						 : p->unknown_since;
			if (since != 0 && now - since < RMQ_NOTFOUND_GRACE_MS) {
				p->nf_gen = topo_need_gen(c);
				topo_want(c);
				continue;
			}
			pub_finish(c, p, RMQ_ENOTFOUND, 0, NULL);
			continue;
		}
		p->unknown_since = 0;
		if (p->nf_gen != 0) {
			p->nf_gen = 0;
			if (p->nf_since != 0 &&
			    now - p->nf_since >= RMQ_NOTFOUND_RETRY_MS) {
				pub_finish(c, p, RMQ_ENOTFOUND, 0, NULL);
				continue;
			}
		}
		if (now < p->retry_at) {
			s->blocked = c->pass;
			continue;
		}
		x = route_shard(c, s, now);
		if (x == NULL) {
			s->blocked = c->pass;
			continue;
		}
		p->shard = shard;
		rv = pub_send(c, p, x);
		if (rv == RMQ_ETOOLARGE) {
			pub_finish(c, p, rv, 0,
				   "message too large for a frame");
			continue;
		}
		if (rv != 0) {
			s->blocked = c->pass;
			continue;
		}
		list_remove(&p->link);
		list_push_back(&c->sent, &p->link);
		p->state = PUB_SENT;
		c->n_pending--;
	}
}

static void check_pub_deadlines(struct rmq_client *c, struct link *list,
				uint64_t now)
{
	struct link *l = list->next;

	while (l != list) {
		struct pub *p = container_of(l, struct pub, link);
		l = l->next;
		if (now >= p->deadline) {
			pub_finish(c, p, RMQ_ETIMEDOUT, 0,
				   "publish not confirmed in time");
		}
	}
}

/* ---- Consumers (I/O thread) ------------------------------------------------ */

static void op_finish(struct rmq_client *c, struct op *op, int status,
		      const char *msg);

static struct rmq_consumer *consumer_find(struct rmq_client *c, uint64_t id,
					  struct cconn *x)
{
	struct link *l;

	for (l = c->consumers.next; l != &c->consumers; l = l->next) {
		struct rmq_consumer *k =
			container_of(l, struct rmq_consumer, link);
		if (k->id == id && k->conn == x) {
			return k;
		}
	}
	return NULL;
}

static void batch_free(struct settle_batch *b)
{
	req_detach(&b->req);
	list_remove(&b->link);
	free(b->seqs.v);
	free(b);
}

/* Free @k and everything it holds; its unsettled count is dropped. */
static void consumer_free(struct rmq_client *c, struct rmq_consumer *k)
{
	req_detach(&k->req);
	while (!list_empty(&k->batches)) {
		batch_free(container_of(k->batches.next, struct settle_batch,
					link));
	}
	list_remove(&k->link);
	lock(c);
	c->unsettled -= k->unsettled;
	while (!list_empty(&k->recvq)) {
		struct delivery_box *b =
			container_of(k->recvq.next, struct delivery_box, link);
		list_remove(&b->link);
		free(b);
	}
	pthread_cond_broadcast(&c->cond);
	unlock(c);
	for (int i = 0; i < N_OUTCOMES; i++) {
		free(k->unsent[i].v);
		free(k->in[i].v);
	}
	free(k);
}

static void consumer_fail(struct rmq_client *c, struct rmq_consumer *k,
			  int status, const char *msg)
{
	req_detach(&k->req);
	k->state = K_FAILED;
	k->conn = NULL;
	if (k->sub_op != NULL) {
		struct op *op = k->sub_op;
		k->sub_op = NULL;
		consumer_free(c, k);
		op_finish(c, op, status, msg);
		return;
	}
	lock(c);
	k->error = status;
	pthread_cond_broadcast(&c->cond);
	unlock(c);
}

/* Back to K_PENDING: re-subscribe (to the new leader) soon. */
static void consumer_reset(struct rmq_client *c, struct rmq_consumer *k,
			   uint64_t delay)
{
	req_detach(&k->req);
	k->state = K_PENDING;
	k->conn = NULL;
	k->retry_at = client_now() + delay;
	topo_want(c);
}

static void consumer_not_found(struct rmq_client *c, struct rmq_consumer *k)
{
	uint64_t now = client_now();

	if (k->nf_since == 0) {
		k->nf_since = now;
	}
	k->nf_gen = topo_need_gen(c);
	consumer_reset(c, k, 100);
}

static void consumer_subscribe(struct rmq_client *c, struct rmq_consumer *k,
			       uint64_t now)
{
	Rmq__SubscribeReq sr = RMQ__SUBSCRIBE_REQ__INIT;
	Rmq__Request r = RMQ__REQUEST__INIT;
	struct shard_state *s;
	uint32_t shard;
	bool found;
	struct cconn *x;
	struct req *req;

	if (now < k->retry_at) {
		return;
	}
	if (k->nf_gen > c->topo_gen) {
		topo_want(c);
		return;
	}
	found = queue_lookup(c, k->queue, &shard);
	if (!found) {
		if (k->unknown_since == 0) {
			k->unknown_since = now; /* maybe declared just now */
		}
		if (k->nf_gen == 0 ||
		    now - k->unknown_since < RMQ_NOTFOUND_GRACE_MS) {
			k->nf_gen = topo_need_gen(c);
			topo_want(c);
			return;
		}
		consumer_fail(c, k, RMQ_ENOTFOUND, NULL);
		return;
	}
	k->unknown_since = 0;
	if (k->nf_gen != 0) {
		k->nf_gen = 0;
		if (k->nf_since != 0 &&
		    now - k->nf_since >= RMQ_NOTFOUND_RETRY_MS) {
			consumer_fail(c, k, RMQ_ENOTFOUND, NULL);
			return;
		}
	}
	s = shard_get(c, shard);
	x = route_shard(c, s, now);
	if (x == NULL) {
		return;
	}
	req = req_new(c, REQ_SUBSCRIBE, k, 0);
	if (req == NULL) {
		return;
	}
	sr.queue = k->queue;
	sr.consumer_id = k->id;
	sr.prefetch = k->prefetch;
	r.body_case = RMQ__REQUEST__BODY_SUBSCRIBE;
	r.subscribe = &sr;
	if (cconn_send(x, req, &r) != 0) {
		client_req_free(c, req);
		return;
	}
	k->req = req;
	k->conn = x;
	k->shard = shard;
	k->state = K_SUBSCRIBING;
}

static void consumer_on_subscribe(struct rmq_client *c, struct rmq_consumer *k,
				  struct cconn *x, Rmq__Response *resp, int err)
{
	char msg[RMQ_MSG_MAX] = "";
	int status = resp != NULL ? resp_status(resp, msg, sizeof msg) : err;

	k->req = NULL;
	if (status == 0) {
		k->state = K_ACTIVE;
		k->nf_since = 0;
		if (k->sub_op != NULL) {
			struct op *op = k->sub_op;
			k->sub_op = NULL;
			op_finish(c, op, 0, NULL);
		}
	} else if (status == RMQ_ENOTLEADER) {
		note_not_leader(c, k->shard, resp->error, x);
		consumer_reset(c, k, 0);
	} else if (is_transient(status)) {
		shard_backoff(c, shard_get(c, k->shard));
		consumer_reset(c, k, 0);
	} else if (status == RMQ_ENOTFOUND) {
		consumer_not_found(c, k);
	} else {
		consumer_fail(c, k, status, msg);
	}
}

static void send_settles(struct rmq_client *c, struct rmq_consumer *k)
{
	if (k->state != K_ACTIVE || k->conn == NULL ||
	    k->conn->state != CONN_CONNECTED) {
		return;
	}
	for (int o = 0; o < N_OUTCOMES; o++) {
		Rmq__SettleReq sr = RMQ__SETTLE_REQ__INIT;
		Rmq__Request r = RMQ__REQUEST__INIT;
		struct settle_batch *b;

		if (k->unsent[o].n == 0) {
			continue;
		}
		b = calloc(1, sizeof *b);
		if (b == NULL) {
			return;
		}
		b->req = req_new(c, REQ_SETTLE, b, 0);
		if (b->req == NULL) {
			free(b);
			return;
		}
		b->k = k;
		b->outcome = o;
		b->seqs = k->unsent[o];
		sr.consumer_id = k->id;
		sr.outcome = (Rmq__Outcome)o;
		sr.n_seqs = b->seqs.n;
		sr.seqs = b->seqs.v;
		r.body_case = RMQ__REQUEST__BODY_SETTLE;
		r.settle = &sr;
		if (cconn_send(k->conn, b->req, &r) != 0) {
			client_req_free(c, b->req);
			free(b);
			return;
		}
		memset(&k->unsent[o], 0, sizeof k->unsent[o]);
		list_push_back(&k->batches, &b->link);
	}
}

static void batch_on_response(struct rmq_client *c, struct settle_batch *b,
			      struct cconn *x, Rmq__Response *resp, int err)
{
	struct rmq_consumer *k = b->k;
	int status = resp != NULL ? resp_status(resp, NULL, 0) : err;

	b->req = NULL;
	if (status == RMQ_ENOTLEADER || is_transient(status)) {
		/* Resend to the (new) leader after re-subscribing. */
		if (cutil_u64vec_append(&k->unsent[b->outcome], b->seqs.v,
					b->seqs.n) == 0) {
			batch_free(b);
			if (k->conn == x && (k->state == K_ACTIVE ||
					     k->state == K_SUBSCRIBING)) {
				if (status == RMQ_ENOTLEADER) {
					note_not_leader(c, k->shard,
							resp->error, x);
				}
				consumer_reset(c, k, 0);
			}
			return;
		}
	}
	/* Applied, or refused for good (the message is gone). */
	lock(c);
	k->unsettled -= b->seqs.n;
	c->unsettled -= b->seqs.n;
	pthread_cond_broadcast(&c->cond);
	unlock(c);
	batch_free(b);
}

static void on_delivery(struct rmq_client *c, struct cconn *x,
			const Rmq__Delivery *dv)
{
	struct rmq_consumer *k = consumer_find(c, dv->consumer_id, x);
	struct rmq_header stack_hdrs[16];
	struct rmq_header *hdrs = stack_hdrs;
	struct delivery_box *box;
	size_t extra = 0;
	uint8_t *p;

	if (k == NULL || (k->state != K_ACTIVE && k->state != K_SUBSCRIBING)) {
		return;
	}
	if (k->cb != NULL) {
		struct rmq_delivery d;
		if (dv->n_headers > 16) {
			hdrs = malloc(dv->n_headers * sizeof *hdrs);
			if (hdrs == NULL) {
				return;
			}
		}
		for (size_t i = 0; i < dv->n_headers; i++) {
			hdrs[i].key = dv->headers[i]->key;
			hdrs[i].value = dv->headers[i]->value.data;
			hdrs[i].value_len = dv->headers[i]->value.len;
		}
		d.consumer = k;
		d.queue = k->queue;
		d.seq = dv->seq;
		d.body = dv->body.data;
		d.len = dv->body.len;
		d.headers = hdrs;
		d.n_headers = dv->n_headers;
		d.redelivered = dv->redelivered;
		d.delivery_count = dv->delivery_count;
		k->cb(k->arg, &d);
		if (hdrs != stack_hdrs) {
			free(hdrs);
		}
		return;
	}
	for (size_t i = 0; i < dv->n_headers; i++) {
		extra += strlen(dv->headers[i]->key) + 1 +
			 dv->headers[i]->value.len;
	}
	box = malloc(sizeof *box + dv->n_headers * sizeof *hdrs + dv->body.len +
		     extra + 1);
	if (box == NULL) {
		return; /* it comes again after a failover */
	}
	hdrs = (struct rmq_header *)(void *)(box + 1);
	p = (uint8_t *)(hdrs + dv->n_headers);
	for (size_t i = 0; i < dv->n_headers; i++) {
		size_t kl = strlen(dv->headers[i]->key) + 1;
		memcpy(p, dv->headers[i]->key, kl);
		hdrs[i].key = (const char *)p;
		p += kl;
		if (dv->headers[i]->value.len > 0) {
			memcpy(p, dv->headers[i]->value.data,
			       dv->headers[i]->value.len);
		}
		hdrs[i].value = p;
		hdrs[i].value_len = dv->headers[i]->value.len;
		p += dv->headers[i]->value.len;
	}
	if (dv->body.len > 0) {
		memcpy(p, dv->body.data, dv->body.len);
	}
	p[dv->body.len] = '\0';
	box->d.consumer = k;
	box->d.queue = k->queue;
	box->d.seq = dv->seq;
	box->d.body = p;
	box->d.len = dv->body.len;
	box->d.headers = dv->n_headers > 0 ? hdrs : NULL;
	box->d.n_headers = dv->n_headers;
	box->d.redelivered = dv->redelivered;
	box->d.delivery_count = dv->delivery_count;
	lock(c);
	list_push_back(&k->recvq, &box->link);
	pthread_cond_broadcast(&c->cond);
	unlock(c);
}

static void on_ended(struct rmq_client *c, struct cconn *x,
		     const Rmq__ConsumerEnded *e)
{
	struct rmq_consumer *k = consumer_find(c, e->consumer_id, x);

	if (k == NULL || (k->state != K_ACTIVE && k->state != K_SUBSCRIBING)) {
		return;
	}
	if (e->reason != NULL && e->reason->code == RMQ__CODE__NOT_FOUND) {
		consumer_not_found(c, k);
		return;
	}
	if (e->reason != NULL && e->reason->code == RMQ__CODE__NOT_LEADER) {
		note_not_leader(c, k->shard, e->reason, x);
		consumer_reset(c, k, 0);
		return;
	}
	shard_backoff(c, shard_get(c, k->shard));
	consumer_reset(c, k, 0);
}

static void pump_consumers(struct rmq_client *c, uint64_t now)
{
	struct link *l = c->consumers.next;

	while (l != &c->consumers) {
		struct rmq_consumer *k =
			container_of(l, struct rmq_consumer, link);
		l = l->next;
		if (k->state == K_PENDING) {
			consumer_subscribe(c, k, now);
		}
	}
}

/* Move settlements handed over by application threads; holds mu. */
static void take_settles_locked(struct rmq_client *c)
{
	struct link *l;

	for (l = c->consumers.next; l != &c->consumers; l = l->next) {
		struct rmq_consumer *k =
			container_of(l, struct rmq_consumer, link);
		for (int o = 0; o < N_OUTCOMES; o++) {
			if (k->in[o].n == 0) {
				continue;
			}
			if (k->unsent[o].n == 0) {
				struct u64vec t = k->unsent[o];
				k->unsent[o] = k->in[o];
				k->in[o] = t;
			} else if (cutil_u64vec_append(&k->unsent[o],
						       k->in[o].v,
						       k->in[o].n) != 0) {
				continue;
			}
			k->in[o].n = 0;
		}
	}
}

static void send_all_settles(struct rmq_client *c)
{
	struct link *l;

	for (l = c->consumers.next; l != &c->consumers; l = l->next) {
		send_settles(c, container_of(l, struct rmq_consumer, link));
	}
}

/* ---- Ops: blocking calls (I/O thread side) --------------------------------- */

static void op_free_targets(struct op *op)
{
	for (size_t i = 0; i < op->n_targets; i++) {
		req_detach(&op->targets[i].req);
		if (op->targets[i].resp != NULL) {
			protobuf_c_message_free_unpacked(op->targets[i].resp,
							 NULL);
		}
	}
	free(op->targets);
	op->targets = NULL;
	op->n_targets = 0;
}

/* Complete @op; the caller's thread may free it as soon as mu is released. */
static void op_finish(struct rmq_client *c, struct op *op, int status,
		      const char *msg)
{
	req_detach(&op->req);
	op_free_targets(op);
	list_remove(&op->link);
	lock(c);
	op->status = status;
	snprintf(op->msg, sizeof op->msg, "%s", msg != NULL ? msg : "");
	op->done = true;
	pthread_cond_broadcast(&c->cond);
	unlock(c);
}

static int op_add_target(struct op *op, struct cconn *x)
{
	struct op_target *v;

	if (x == NULL) {
		return 0;
	}
	for (size_t i = 0; i < op->n_targets; i++) {
		if (op->targets[i].conn == x) {
			return 0;
		}
	}
	v = realloc(op->targets, (op->n_targets + 1) * sizeof *v);
	if (v == NULL) {
		return RMQ_ENOMEM;
	}
	op->targets = v;
	memset(&v[op->n_targets], 0, sizeof *v);
	v[op->n_targets].conn = x;
	v[op->n_targets].state = T_WAIT;
	op->n_targets++;
	return 0;
}

static void op_start(struct rmq_client *c, struct op *op)
{
	op->started = client_now();
	op->deadline = op->started + op->timeout_ms;
	list_push_back(&c->ops, &op->link);
	switch (op->kind) {
	case OP_CONNECT:
		for (int i = 0; i < c->n_seeds; i++) {
			struct cconn *x = cconn_get(c, c->seeds[i]);
			if (x != NULL) {
				cconn_ensure(x);
			}
		}
		topo_want(c);
		break;
	case OP_SUBSCRIBE:
		op->k->id = ++c->next_consumer_id;
		op->k->state = K_PENDING;
		op->k->sub_op = op;
		list_push_back(&c->consumers, &op->k->link);
		break;
	case OP_LIST: {
		bool any = false;
		for (size_t i = 0; i < c->n_shards; i++) {
			if (c->shards[i].leader != 0) {
				struct cconn *x =
					conn_for_node(c, c->shards[i].leader);
				if (x != NULL) {
					op_add_target(op, x);
					any = true;
				}
			}
		}
		if (!any) {
			struct link *l;
			for (l = c->conns.next; l != &c->conns; l = l->next) {
				struct cconn *x =
					container_of(l, struct cconn, link);
				if (x->state == CONN_CONNECTED) {
					op_add_target(op, x);
				}
			}
		}
		break;
	}
	case OP_STATUS:
		for (size_t i = 0; i < c->n_nodes; i++) {
			op_add_target(op, conn_for_node(c, c->nodes[i].id));
		}
		for (int i = 0; i < c->n_seeds; i++) {
			op_add_target(op, cconn_get(c, c->seeds[i]));
		}
		break;
	case OP_CANCEL:
		op->k->state = K_CANCELLING;
		break;
	default:
		break;
	}
}

static void op_step_connect(struct rmq_client *c, struct op *op)
{
	bool all_failed = true;

	if (c->topo_gen > 0) {
		op_finish(c, op, 0, NULL);
		return;
	}
	for (int i = 0; i < c->n_seeds; i++) {
		struct cconn *x = cconn_get(c, c->seeds[i]);
		if (x == NULL) {
			continue;
		}
		if (x->state == CONN_CONNECTED || !x->attempted) {
			all_failed = false;
		}
		cconn_ensure(x);
	}
	topo_want(c);
	if (all_failed) {
		char msg[RMQ_MSG_MAX];
		snprintf(msg, sizeof msg, "could not connect to %s",
			 c->servers);
		op_finish(c, op, RMQ_ECONNECT, msg);
	}
}

static void op_step_meta(struct rmq_client *c, struct op *op, uint64_t now)
{
	Rmq__DeclareReq dr = RMQ__DECLARE_REQ__INIT;
	Rmq__QueueOptions qo = RMQ__QUEUE_OPTIONS__INIT;
	Rmq__DeleteReq del = RMQ__DELETE_REQ__INIT;
	Rmq__Request r = RMQ__REQUEST__INIT;
	struct cconn *x;
	struct req *req;

	if (op->state == OP_SENT || now < op->retry_at) {
		return;
	}
	x = route_shard(c, shard_get(c, op->kind == OP_ADMIN ? op->ashard : 0),
			now);
	if (x == NULL) {
		return;
	}
	if (op->kind == OP_ADMIN) {
		r = *op->areq;
	} else if (op->kind == OP_DECLARE) {
		dr.name = (char *)op->name;
		if (op->qo != NULL) {
			qo.max_length = op->qo->max_length;
			qo.max_message_size = op->qo->max_message_size;
		}
		dr.options = &qo;
		r.body_case = RMQ__REQUEST__BODY_DECLARE;
		r.declare = &dr;
	} else {
		del.name = (char *)op->name;
		r.body_case = RMQ__REQUEST__BODY_DELETE;
		r.delete_ = &del;
	}
	req = req_new(c, REQ_OP, op, -1);
	if (req == NULL) {
		return;
	}
	if (cconn_send(x, req, &r) != 0) {
		client_req_free(c, req);
		return;
	}
	op->req = req;
	op->state = OP_SENT;
}

static int cmp_qinfo_name(const void *a, const void *b)
{
	const struct rmq_queue_info *x = a;
	const struct rmq_queue_info *y = b;
	return strcmp(x->name, y->name);
}

static void op_merge_list(struct rmq_client *c, struct op *op)
{
	struct rmq_queue_info *out = NULL;
	bool *auth = NULL;
	size_t n = 0;
	size_t cap = 0;
	size_t answered = 0;

	for (size_t t = 0; t < op->n_targets; t++) {
		Rmq__ListResp *lr = (Rmq__ListResp *)op->targets[t].resp;
		uint64_t self = op->targets[t].conn->node_id;
		if (op->targets[t].state != T_DONE || lr == NULL) {
			continue;
		}
		answered++;
		for (size_t i = 0; i < lr->n_queues; i++) {
			const Rmq__QueueInfo *q = lr->queues[i];
			bool is_auth = q->leader != 0 && q->leader == self;
			size_t j;
			for (j = 0; j < n; j++) {
				if (strcmp(out[j].name, q->name) == 0) {
					break;
				}
			}
			if (j == n) {
				if (n == cap) {
					size_t nc = cap ? cap * 2 : 16;
					void *v1 =
						realloc(out, nc * sizeof *out);
					if (v1 == NULL) {
						goto err_nomem;
					}
					out = v1;
					void *v2 = realloc(auth,
							   nc * sizeof *auth);
					if (v2 == NULL) {
						goto err_nomem;
					}
					auth = v2;
					cap = nc;
				}
				n++;
				auth[j] = false;
			} else if (auth[j] || !is_auth) {
				continue;
			}
			memset(&out[j], 0, sizeof out[j]);
			snprintf(out[j].name, sizeof out[j].name, "%s",
				 q->name);
			out[j].shard = q->shard;
			out[j].leader = q->leader;
			out[j].ready = q->ready;
			out[j].unacked = q->unacked;
			out[j].total = q->total;
			auth[j] = is_auth;
		}
	}
	free(auth);
	if (answered == 0) {
		free(out);
		op_finish(c, op, RMQ_EUNAVAIL, "no shard leader answered");
		return;
	}
	if (n > 0) {
		qsort(out, n, sizeof *out, cmp_qinfo_name);
	}
	op->qinfo = out;
	op->nq = n;
	op_finish(c, op, 0, NULL);
	return;

err_nomem:
	free(out);
	free(auth);
	op_finish(c, op, RMQ_ENOMEM, NULL);
}

static int cmp_node(const void *a, const void *b)
{
	const struct rmq_node_info *x = a;
	const struct rmq_node_info *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_shard(const void *a, const void *b)
{
	const struct rmq_shard_info *x = a;
	const struct rmq_shard_info *y = b;
	return x->id < y->id ? -1 : x->id > y->id;
}

static void op_merge_status(struct rmq_client *c, struct op *op)
{
	struct rmq_cluster_info *ci = calloc(1, sizeof *ci);
	size_t max_nodes = 0;
	size_t max_shards = 0;
	bool *auth = NULL;
	size_t answered = 0;

	if (ci == NULL) {
		goto err_nomem;
	}
	for (size_t t = 0; t < op->n_targets; t++) {
		Rmq__TopologyResp *tr =
			(Rmq__TopologyResp *)op->targets[t].resp;
		if (tr != NULL) {
			max_nodes += tr->n_nodes + 1;
			max_shards += tr->n_shards;
		}
	}
	ci->nodes = calloc(max_nodes + 1, sizeof *ci->nodes);
	ci->shards = calloc(max_shards + 1, sizeof *ci->shards);
	auth = calloc(max_shards + 1, sizeof *auth);
	if (ci->nodes == NULL || ci->shards == NULL || auth == NULL) {
		goto err_nomem;
	}
	snprintf(ci->cluster_name, sizeof ci->cluster_name, "%s",
		 c->cluster_name);
	for (size_t t = 0; t < op->n_targets; t++) {
		Rmq__TopologyResp *tr =
			(Rmq__TopologyResp *)op->targets[t].resp;
		if (op->targets[t].state != T_DONE || tr == NULL) {
			continue;
		}
		answered++;
		if (tr->cluster_name != NULL && tr->cluster_name[0] != '\0') {
			snprintf(ci->cluster_name, sizeof ci->cluster_name,
				 "%s", tr->cluster_name);
		}
		for (size_t i = 0; i < tr->n_nodes; i++) {
			const Rmq__NodeInfo *ni = tr->nodes[i];
			size_t j;
			for (j = 0; j < ci->n_nodes; j++) {
				if (ci->nodes[j].id == ni->id) {
					break;
				}
			}
			if (j == ci->n_nodes) {
				ci->nodes[j].id = ni->id;
				ci->n_nodes++;
			}
			if (ci->nodes[j].client_address[0] == '\0') {
				snprintf(ci->nodes[j].client_address,
					 sizeof ci->nodes[j].client_address,
					 "%s", ni->client_address);
			}
			if (ci->nodes[j].peer_address[0] == '\0') {
				snprintf(ci->nodes[j].peer_address,
					 sizeof ci->nodes[j].peer_address, "%s",
					 ni->peer_address);
			}
		}
		for (size_t i = 0; i < tr->n_shards; i++) {
			const Rmq__ShardInfo *si = tr->shards[i];
			bool is_auth = si->leader != 0 &&
				       si->leader == tr->node_id;
			size_t j;
			for (j = 0; j < ci->n_shards; j++) {
				if (ci->shards[j].id == si->id) {
					break;
				}
			}
			if (j == ci->n_shards) {
				ci->n_shards++;
			} else if (auth[j] ||
				   (!is_auth &&
				    si->term <= ci->shards[j].term)) {
				continue;
			}
			memset(&ci->shards[j], 0, sizeof ci->shards[j]);
			ci->shards[j].id = si->id;
			ci->shards[j].leader = is_auth ? si->leader : 0;
			ci->shards[j].term = si->term;
			ci->shards[j].commit_index = si->commit_index;
			ci->shards[j].applied_index = si->applied_index;
			for (size_t r = 0; r < si->n_replicas && r < 16; r++) {
				ci->shards[j].replicas[r] = si->replicas[r];
			}
			ci->shards[j].n_replicas =
				si->n_replicas < 16 ? si->n_replicas : 16;
			auth[j] = is_auth;
		}
	}
	/* reachable: that node itself answered now. */
	for (size_t j = 0; j < ci->n_nodes; j++) {
		for (size_t t = 0; t < op->n_targets; t++) {
			Rmq__TopologyResp *tr =
				(Rmq__TopologyResp *)op->targets[t].resp;
			if (op->targets[t].state == T_DONE && tr != NULL &&
			    tr->node_id == ci->nodes[j].id) {
				ci->nodes[j].reachable = true;
			}
		}
	}
	free(auth);
	if (answered == 0) {
		rmq_cluster_info_free(ci);
		op_finish(c, op, RMQ_ECONNECT, "no node answered");
		return;
	}
	qsort(ci->nodes, ci->n_nodes, sizeof *ci->nodes, cmp_node);
	qsort(ci->shards, ci->n_shards, sizeof *ci->shards, cmp_shard);
	op->cinfo = ci;
	op_finish(c, op, 0, NULL);
	return;

err_nomem:
	free(auth);
	rmq_cluster_info_free(ci);
	op_finish(c, op, RMQ_ENOMEM, NULL);
}

static void op_step_gather(struct rmq_client *c, struct op *op)
{
	bool all_done = true;

	for (size_t i = 0; i < op->n_targets; i++) {
		struct op_target *t = &op->targets[i];
		struct cconn *x = t->conn;
		if (t->state == T_WAIT) {
			if (x->state == CONN_CONNECTED) {
				Rmq__TopologyReq tr = RMQ__TOPOLOGY_REQ__INIT;
				Rmq__ListReq lr = RMQ__LIST_REQ__INIT;
				Rmq__Request r = RMQ__REQUEST__INIT;
				struct req *req =
					req_new(c, REQ_OP, op, (int)i);
				if (req == NULL) {
					all_done = false;
					continue;
				}
				if (op->kind == OP_LIST) {
					r.body_case = RMQ__REQUEST__BODY_LIST;
					r.list = &lr;
				} else {
					r.body_case =
						RMQ__REQUEST__BODY_TOPOLOGY;
					r.topology = &tr;
				}
				if (cconn_send(x, req, &r) != 0) {
					client_req_free(c, req);
					all_done = false;
					continue;
				}
				t->req = req;
				t->state = T_SENT;
			} else if (x->state == CONN_IDLE &&
				   x->failed_attempts > 0 &&
				   x->last_fail_at >= op->started) {
				t->state = T_FAILED;
			} else {
				cconn_ensure(x);
			}
		}
		if (t->state == T_WAIT || t->state == T_SENT) {
			all_done = false;
		}
	}
	if (!all_done) {
		return;
	}
	if (op->kind == OP_LIST) {
		op_merge_list(c, op);
	} else {
		op_merge_status(c, op);
	}
}

static void op_step_cancel(struct rmq_client *c, struct op *op)
{
	Rmq__CancelReq cr = RMQ__CANCEL_REQ__INIT;
	Rmq__Request r = RMQ__REQUEST__INIT;
	struct rmq_consumer *k = op->k;
	struct req *req;

	if (op->state == OP_SENT) {
		return;
	}
	if (k->conn == NULL || k->conn->state != CONN_CONNECTED) {
		consumer_free(c, k);
		op_finish(c, op, 0, NULL);
		return;
	}
	req = req_new(c, REQ_OP, op, -1);
	if (req == NULL) {
		return;
	}
	cr.consumer_id = k->id;
	r.body_case = RMQ__REQUEST__BODY_CANCEL;
	r.cancel = &cr;
	if (cconn_send(k->conn, req, &r) != 0) {
		client_req_free(c, req);
		consumer_free(c, k);
		op_finish(c, op, 0, NULL);
		return;
	}
	req_detach(&k->req);
	op->req = req;
	op->state = OP_SENT;
}

static void op_timeout(struct rmq_client *c, struct op *op)
{
	switch (op->kind) {
	case OP_CONNECT: {
		char msg[RMQ_MSG_MAX];
		snprintf(msg, sizeof msg, "could not connect to %s",
			 c->servers);
		op_finish(c, op, RMQ_ECONNECT, msg);
		break;
	}
	case OP_LIST:
	case OP_STATUS:
		for (size_t i = 0; i < op->n_targets; i++) {
			if (op->targets[i].state != T_DONE) {
				req_detach(&op->targets[i].req);
				op->targets[i].state = T_FAILED;
			}
		}
		if (op->kind == OP_LIST) {
			op_merge_list(c, op);
		} else {
			op_merge_status(c, op);
		}
		break;
	case OP_SUBSCRIBE: {
		struct rmq_consumer *k = op->k;
		k->sub_op = NULL;
		consumer_free(c, k);
		op_finish(c, op, RMQ_ETIMEDOUT, "subscribe timed out");
		break;
	}
	case OP_CANCEL:
		consumer_free(c, op->k);
		op_finish(c, op, RMQ_ETIMEDOUT, "cancel timed out");
		break;
	default:
		op_finish(c, op, RMQ_ETIMEDOUT, "request timed out");
		break;
	}
}

static void pump_ops(struct rmq_client *c, uint64_t now)
{
	struct link *l = c->ops.next;

	while (l != &c->ops) {
		struct op *op = container_of(l, struct op, link);
		l = l->next;
		switch (op->kind) {
		case OP_CONNECT:
			op_step_connect(c, op);
			break;
		case OP_DECLARE:
		case OP_DELETE:
		case OP_ADMIN:
			op_step_meta(c, op, now);
			break;
		case OP_LIST:
		case OP_STATUS:
			op_step_gather(c, op);
			break;
		case OP_CANCEL:
			op_step_cancel(c, op);
			break;
		case OP_SUBSCRIBE:
			break;
		}
	}
}

static void check_op_deadlines(struct rmq_client *c, uint64_t now)
{
	struct link *l = c->ops.next;

	while (l != &c->ops) {
		struct op *op = container_of(l, struct op, link);
		l = l->next;
		if (now >= op->deadline) {
			op_timeout(c, op);
		}
	}
}

static void op_on_response(struct rmq_client *c, struct op *op, int tag,
			   struct cconn *x, Rmq__Response *resp, int err)
{
	char msg[RMQ_MSG_MAX] = "";
	int status = resp != NULL ? resp_status(resp, msg, sizeof msg) : err;

	if (tag >= 0) {
		struct op_target *t = &op->targets[tag];
		t->req = NULL;
		t->state = T_FAILED;
		if (status == 0 && op->kind == OP_LIST &&
		    resp->body_case == RMQ__RESPONSE__BODY_LIST &&
		    resp->list != NULL) {
			t->resp = &resp->list->base;
			resp->list = NULL;
			t->state = T_DONE;
		} else if (status == 0 && op->kind == OP_STATUS &&
			   resp->body_case == RMQ__RESPONSE__BODY_TOPOLOGY &&
			   resp->topology != NULL) {
			t->resp = &resp->topology->base;
			resp->topology = NULL;
			t->state = T_DONE;
			topo_learn_nodes(c, (Rmq__TopologyResp *)t->resp);
			if (x->node_id == 0) {
				x->node_id =
					((Rmq__TopologyResp *)t->resp)->node_id;
			}
		}
		if (t->state == T_DONE) {
			resp->body_case = RMQ__RESPONSE__BODY__NOT_SET;
		}
		op_step_gather(c, op);
		return;
	}
	op->req = NULL;
	op->state = OP_NEW;
	switch (op->kind) {
	case OP_CANCEL:
		consumer_free(c, op->k);
		op_finish(c, op, 0, NULL);
		return;
	case OP_DECLARE:
		if (status == 0) {
			if (resp->body_case == RMQ__RESPONSE__BODY_DECLARE &&
			    resp->declare != NULL) {
				op->created = resp->declare->created;
				op->shard = resp->declare->shard;
				decl_add(c, op->name, op->shard);
			}
			topo_want(c);
			op_finish(c, op, 0, NULL);
			return;
		}
		break;
	case OP_DELETE:
		if (status == 0 ||
		    (status == RMQ_ENOTFOUND && op->maybe_done)) {
			decl_remove(c, op->name);
			topo_want(c);
			op_finish(c, op, 0, NULL);
			return;
		}
		break;
	case OP_ADMIN:
		if (status == 0) {
			/* A copy for the caller (the frame is freed after
			 * this call). */
			size_t len = rmq__response__get_packed_size(resp);
			uint8_t *buf = malloc(len ? len : 1);
			if (buf != NULL) {
				rmq__response__pack(resp, buf);
				op->aresp =
					rmq__response__unpack(NULL, len, buf);
				free(buf);
			}
			op_finish(c, op, op->aresp != NULL ? 0 : RMQ_ENOMEM,
				  NULL);
			return;
		}
		break;
	default:
		break;
	}
	if (status == RMQ_ENOTLEADER) {
		note_not_leader(c, op->kind == OP_ADMIN ? op->ashard : 0,
				resp->error, x);
	} else if (is_transient(status)) {
		op->maybe_done = true;
		shard_backoff(c, shard_get(c, op->kind == OP_ADMIN ? op->ashard
								   : 0));
	} else {
		op_finish(c, op, status, msg);
	}
}

/* ---- Dispatch of answers and events from cconn.c --------------------------- */

void client_req_done(struct rmq_client *c, struct req *r, Rmq__ServerFrame *f,
		     int err)
{
	Rmq__Response *resp = f != NULL ? f->response : NULL;
	struct cconn *x = r->conn;

	if (r->owner != NULL && !c->shutting_down) {
		switch (r->kind) {
		case REQ_HELLO:
			if (resp != NULL && resp_status(resp, NULL, 0) == 0 &&
			    resp->body_case == RMQ__RESPONSE__BODY_HELLO &&
			    resp->hello != NULL) {
				cconn_hello_ok(x);
				if (resp->hello->node_id != 0) {
					x->node_id = resp->hello->node_id;
				}
				if (resp->hello->max_frame != 0) {
					c->max_frame = resp->hello->max_frame;
				}
				if (resp->hello->cluster_name[0] != '\0') {
					snprintf(c->cluster_name,
						 sizeof c->cluster_name, "%s",
						 resp->hello->cluster_name);
				}
			}
			break;
		case REQ_TOPOLOGY:
			topo_on_response(c, resp, err);
			break;
		case REQ_PUBLISH:
			pub_on_response(c, r->owner, x, resp, err);
			break;
		case REQ_OP:
			op_on_response(c, r->owner, r->tag, x, resp, err);
			break;
		case REQ_SUBSCRIBE:
			consumer_on_subscribe(c, r->owner, x, resp, err);
			break;
		case REQ_SETTLE:
			batch_on_response(c, r->owner, x, resp, err);
			break;
		case REQ_CANCEL:
			break;
		case REQ_PING:
			x->ping_inflight = false;
			break;
		}
	}
	client_req_free(c, r);
}

void client_frame(struct rmq_client *c, struct cconn *x, Rmq__ServerFrame *f)
{
	switch (f->kind_case) {
	case RMQ__SERVER_FRAME__KIND_RESPONSE: {
		struct link *l;
		for (l = x->reqs.next; l != &x->reqs; l = l->next) {
			struct req *r = container_of(l, struct req, link);
			if (r->id == f->response->id) {
				list_remove(&r->link);
				client_req_done(c, r, f, 0);
				break;
			}
		}
		break;
	}
	case RMQ__SERVER_FRAME__KIND_DELIVERY:
		on_delivery(c, x, f->delivery);
		break;
	case RMQ__SERVER_FRAME__KIND_ENDED:
		on_ended(c, x, f->ended);
		break;
	default:
		break;
	}
	rmq__server_frame__free_unpacked(f, NULL);
}

void client_conn_up(struct rmq_client *c, struct cconn *x)
{
	Rmq__HelloReq hr = RMQ__HELLO_REQ__INIT;
	Rmq__Request r = RMQ__REQUEST__INIT;
	struct req *req = req_new(c, REQ_HELLO, x, 0);

	if (req == NULL) {
		return;
	}
	hr.client_name = "libraftmq";
	r.body_case = RMQ__REQUEST__BODY_HELLO;
	r.hello = &hr;
	if (cconn_send(x, req, &r) != 0) {
		client_req_free(c, req);
	}
}

void client_conn_down(struct rmq_client *c, struct cconn *x, int err)
{
	struct link *l;

	(void)err;
	if (c->shutting_down) {
		return;
	}
	if (x->node_id != 0) {
		for (size_t i = 0; i < c->n_shards; i++) {
			if (c->shards[i].leader == x->node_id) {
				c->shards[i].leader = 0;
			}
		}
	}
	for (l = c->consumers.next; l != &c->consumers; l = l->next) {
		struct rmq_consumer *k =
			container_of(l, struct rmq_consumer, link);
		if (k->conn == x &&
		    (k->state == K_ACTIVE || k->state == K_SUBSCRIBING)) {
			consumer_reset(c, k, 0);
		} else if (k->conn == x && k->state == K_CANCELLING) {
			k->conn = NULL;
		}
	}
	topo_want(c);
}

void client_pump(struct rmq_client *c)
{
	uint64_t now = client_now();

	if (c->shutting_down) {
		return;
	}
	pump_ops(c, now);
	pump_consumers(c, now);
	pump_pubs(c);
	topo_maybe_send(c);
}

/* ---- The I/O thread --------------------------------------------------------- */

static void client_shutdown(struct rmq_client *c, struct link *pubs,
			    struct link *ops)
{
	struct link *l;

	c->shutting_down = true;
	list_splice_back(&c->pending, pubs);
	while (!list_empty(&c->pending)) {
		struct pub *p = container_of(c->pending.next, struct pub, link);
		pub_finish(c, p, RMQ_ESHUTDOWN, 0, "client closed");
	}
	while (!list_empty(&c->sent)) {
		struct pub *p = container_of(c->sent.next, struct pub, link);
		pub_finish(c, p, RMQ_ESHUTDOWN, 0, "client closed");
	}
	while (!list_empty(&c->consumers)) {
		struct rmq_consumer *k = container_of(
			c->consumers.next, struct rmq_consumer, link);
		if (k->sub_op != NULL) {
			op_finish(c, k->sub_op, RMQ_ESHUTDOWN, NULL);
			k->sub_op = NULL;
		}
		consumer_free(c, k);
	}
	for (l = ops->next; l != ops; l = l->next) {
		struct op *op = container_of(l, struct op, link);
		if (op->kind == OP_SUBSCRIBE) {
			free(op->k); /* never attached */
		}
	}
	list_splice_back(&c->ops, ops);
	while (!list_empty(&c->ops)) {
		struct op *op = container_of(c->ops.next, struct op, link);
		op_finish(c, op, RMQ_ESHUTDOWN, "client closed");
	}
	for (l = c->conns.next; l != &c->conns; l = l->next) {
		cconn_shutdown(container_of(l, struct cconn, link));
	}
	uv_close((uv_handle_t *)&c->tick, NULL);
	uv_close((uv_handle_t *)&c->async, NULL);
}

static void async_cb(uv_async_t *a)
{
	struct rmq_client *c = a->data;
	struct link pubs;
	struct link ops;
	bool closing;
	bool settle_now;

	if (c->shutting_down) {
		return;
	}
	link_init(&pubs);
	link_init(&ops);
	lock(c);
	list_splice_back(&pubs, &c->in_pubs);
	list_splice_back(&ops, &c->in_ops);
	closing = c->closing;
	settle_now = c->settle_now;
	c->settle_now = false;
	if (settle_now) {
		take_settles_locked(c);
	}
	unlock(c);
	while (!list_empty(&pubs)) {
		struct pub *p = container_of(pubs.next, struct pub, link);
		list_remove(&p->link);
		p->pseq = ++c->next_pseq;
		p->state = PUB_PENDING;
		list_push_back(&c->pending, &p->link);
		c->n_pending++;
	}
	if (closing) {
		client_shutdown(c, &pubs, &ops);
		return;
	}
	while (!list_empty(&ops)) {
		struct op *op = container_of(ops.next, struct op, link);
		list_remove(&op->link);
		op_start(c, op);
	}
	if (settle_now) {
		send_all_settles(c);
	}
	client_pump(c);
}

/* Ping connections that went quiet; drop those silent for the liveness
 * timeout. A stopped or hung node keeps its sockets open, so without this
 * its requests would wait for their own deadlines. */
static void check_liveness(struct rmq_client *c, uint64_t now)
{
	unsigned limit = c->o.liveness_timeout_ms;
	struct link *l, *next;

	for (l = c->conns.next; l != &c->conns; l = next) {
		struct cconn *x = container_of(l, struct cconn, link);
		uint64_t quiet;
		next = l->next;
		if (x->state != CONN_CONNECTED) {
			continue;
		}
		quiet = now > x->last_rx ? now - x->last_rx : 0;
		if (quiet >= limit) {
			cconn_fail(x, RMQ_ETIMEDOUT);
		} else if (quiet >= limit / 2 && !x->ping_inflight) {
			Rmq__PingReq pr = RMQ__PING_REQ__INIT;
			Rmq__Request r = RMQ__REQUEST__INIT;
			struct req *req = req_new(c, REQ_PING, x, 0);
			if (req == NULL) {
				continue;
			}
			r.body_case = RMQ__REQUEST__BODY_PING;
			r.ping = &pr;
			if (cconn_send(x, req, &r) != 0) {
				client_req_free(c, req);
				continue;
			}
			x->ping_inflight = true;
		}
	}
}

static void tick_cb(uv_timer_t *t)
{
	struct rmq_client *c = t->data;
	uint64_t now = client_now();

	if (c->shutting_down) {
		return;
	}
	lock(c);
	take_settles_locked(c);
	unlock(c);
	check_pub_deadlines(c, &c->pending, now);
	check_pub_deadlines(c, &c->sent, now);
	check_op_deadlines(c, now);
	check_liveness(c, now);
	send_all_settles(c);
	client_pump(c);
}

static void io_main(void *arg)
{
	struct rmq_client *c = arg;
	sigset_t pipe_set;

	/* A write to a socket the server just closed raises SIGPIPE in the
	 * writing thread, and its default action kills the application.
	 * Blocked in this thread (the only one that writes), the write fails
	 * with EPIPE instead and the connection fails over; the process's
	 * own signal dispositions stay the application's business. */
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
	c->io_tid = uv_thread_self();
	uv_run(&c->loop, UV_RUN_DEFAULT);
}

/* ---- Public API ------------------------------------------------------------- */

RMQ_API void rmq_options_init(struct rmq_options *o)
{
	memset(o, 0, sizeof *o);
	o->connect_timeout_ms = 2000;
	o->request_timeout_ms = 10000;
	o->publish_timeout_ms = 30000;
	o->publish_window = 1000;
	o->max_backoff_ms = 1000;
	o->liveness_timeout_ms = 2000;
}

RMQ_API const char *rmq_strerror(int err)
{
	return codec_strerror(err);
}

RMQ_API uint64_t rmq_confirm_node(void)
{
	return tl_confirm_node;
}

RMQ_API const char *rmq_last_error(void)
{
	return tl_last_error;
}

/* Hand @op to the I/O thread and wait until it completes. */
static int op_run(struct rmq_client *c, struct op *op, unsigned timeout_ms)
{
	if (on_io_thread(c)) {
		set_last_error("blocking call from a callback");
		return RMQ_EINVAL;
	}
	op->timeout_ms = timeout_ms;
	lock(c);
	if (c->closing) {
		unlock(c);
		set_last_error("client closed");
		return RMQ_ESHUTDOWN;
	}
	list_push_back(&c->in_ops, &op->link);
	unlock(c);
	uv_async_send(&c->async);
	lock(c);
	while (!op->done) {
		pthread_cond_wait(&c->cond, &c->mu);
	}
	unlock(c);
	set_last_error(op->msg);
	return op->status;
}

static void client_free(struct rmq_client *c)
{
	while (!list_empty(&c->conns)) {
		struct cconn *x =
			container_of(c->conns.next, struct cconn, link);
		list_remove(&x->link);
		cconn_free(x);
	}
	while (!list_empty(&c->req_pool)) {
		struct req *r =
			container_of(c->req_pool.next, struct req, link);
		list_remove(&r->link);
		free(r);
	}
	if (c->topo != NULL) {
		rmq__topology_resp__free_unpacked(c->topo, NULL);
	}
	free(c->qidx);
	free(c->shards);
	free(c->nodes);
	for (size_t i = 0; i < c->n_decl; i++) {
		free(c->decl[i].name);
	}
	free(c->decl);
	cutil_free_servers(c->seeds, c->n_seeds);
	free(c->servers);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

/* Stop the I/O thread (which fails everything still pending) and free. */
static void client_stop(struct rmq_client *c)
{
	int rv;

	lock(c);
	c->closing = true;
	unlock(c);
	uv_async_send(&c->async);
	uv_thread_join(&c->thread);
	rv = uv_loop_close(&c->loop);
	if (rv != 0) {
		/* A handle is still open: a bug. Keep running the loop. */
		uv_run(&c->loop, UV_RUN_DEFAULT);
		rv = uv_loop_close(&c->loop);
	}
	if (rv != 0) {
		fprintf(stderr, "libraftmq: uv_loop_close: %s\n",
			uv_strerror(rv));
		abort();
	}
	client_free(c);
}

RMQ_API int rmq_connect(const struct rmq_options *o, struct rmq_client **out)
{
	struct rmq_client *c;
	pthread_condattr_t ca;
	struct op op;
	int rv;

	set_last_error(NULL);
	if (o == NULL || o->servers == NULL || out == NULL) {
		return RMQ_EINVAL;
	}
	c = calloc(1, sizeof *c);
	if (c == NULL) {
		return RMQ_ENOMEM;
	}
	c->o = *o;
	if (c->o.connect_timeout_ms == 0) {
		c->o.connect_timeout_ms = 2000;
	}
	if (c->o.request_timeout_ms == 0) {
		c->o.request_timeout_ms = 10000;
	}
	if (c->o.publish_timeout_ms == 0) {
		c->o.publish_timeout_ms = 30000;
	}
	if (c->o.publish_window == 0) {
		c->o.publish_window = 1000;
	}
	if (c->o.liveness_timeout_ms == 0) {
		c->o.liveness_timeout_ms = 2000;
	}
	if (c->o.max_backoff_ms == 0) {
		c->o.max_backoff_ms = 1000;
	}
	c->servers = strdup(o->servers);
	if (c->servers == NULL) {
		rv = RMQ_ENOMEM;
		goto err_after_alloc;
	}
	c->o.servers = c->servers;
	rv = cutil_parse_servers(o->servers, &c->seeds);
	if (rv < 0) {
		set_last_error("bad server list");
		goto err_after_servers;
	}
	c->n_seeds = rv;
	if (o->producer_id != NULL && o->producer_id[0] != '\0') {
		snprintf(c->producer_id, sizeof c->producer_id, "%s",
			 o->producer_id);
	} else {
		cutil_random_hex(c->producer_id, 32);
	}
	c->o.producer_id = c->producer_id;
	c->max_frame = RMQ_DEFAULT_MAX_FRAME;
	c->rng = uv_hrtime() | 1;
	link_init(&c->in_pubs);
	link_init(&c->in_ops);
	link_init(&c->conns);
	link_init(&c->pending);
	link_init(&c->sent);
	link_init(&c->ops);
	link_init(&c->consumers);
	link_init(&c->req_pool);

	pthread_mutex_init(&c->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&c->cond, &ca);
	pthread_condattr_destroy(&ca);

	if (uv_loop_init(&c->loop) != 0) {
		rv = RMQ_EINTERNAL;
		goto err_after_sync;
	}
	uv_async_init(&c->loop, &c->async, async_cb);
	c->async.data = c;
	uv_timer_init(&c->loop, &c->tick);
	c->tick.data = c;
	uv_timer_start(&c->tick, tick_cb, RMQ_TICK_MS, RMQ_TICK_MS);
	if (uv_thread_create(&c->thread, io_main, c) != 0) {
		uv_close((uv_handle_t *)&c->async, NULL);
		uv_close((uv_handle_t *)&c->tick, NULL);
		uv_run(&c->loop, UV_RUN_DEFAULT);
		uv_loop_close(&c->loop);
		rv = RMQ_EINTERNAL;
		goto err_after_sync;
	}

	memset(&op, 0, sizeof op);
	op.kind = OP_CONNECT;
	rv = op_run(c, &op, c->o.connect_timeout_ms);
	if (rv != 0) {
		client_stop(c);
		set_last_error(op.msg);
		return rv;
	}
	*out = c;
	return 0;

err_after_sync:
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->mu);
	cutil_free_servers(c->seeds, c->n_seeds);
err_after_servers:
	free(c->servers);
err_after_alloc:
	free(c);
	return rv;
}

RMQ_API void rmq_close(struct rmq_client *c, unsigned timeout_ms)
{
	struct timespec abs;

	if (c == NULL) {
		return;
	}
	deadline_in(&abs, timeout_ms);
	lock(c);
	c->settle_now = true;
	unlock(c);
	uv_async_send(&c->async);
	lock(c);
	while (c->inflight > 0 || c->unsettled > 0) {
		if (!wait_until(c, &abs)) {
			break;
		}
	}
	unlock(c);
	client_stop(c);
}

/* ---- Queues ------------------------------------------------------------------ */

static int check_name(const char *name)
{
	size_t n = name != NULL ? strlen(name) : 0;

	if (n == 0 || n > 255) {
		set_last_error("queue name must be 1..255 bytes");
		return RMQ_EINVAL;
	}
	return 0;
}

RMQ_API int rmq_queue_declare(struct rmq_client *c, const char *name,
			      const struct rmq_queue_options *o, bool *created)
{
	return rmq_queue_declare_ex(c, name, o, created, NULL);
}

RMQ_API int rmq_queue_declare_ex(struct rmq_client *c, const char *name,
				 const struct rmq_queue_options *o,
				 bool *created, uint32_t *shard)
{
	struct op op;
	int rv = check_name(name);

	if (rv != 0) {
		return rv;
	}
	memset(&op, 0, sizeof op);
	op.kind = OP_DECLARE;
	op.name = name;
	op.qo = o;
	rv = op_run(c, &op, c->o.request_timeout_ms);
	if (rv == 0 && created != NULL) {
		*created = op.created;
	}
	if (rv == 0 && shard != NULL) {
		*shard = op.shard;
	}
	return rv;
}

RMQ_API int rmq_queue_delete(struct rmq_client *c, const char *name)
{
	struct op op;
	int rv = check_name(name);

	if (rv != 0) {
		return rv;
	}
	memset(&op, 0, sizeof op);
	op.kind = OP_DELETE;
	op.name = name;
	return op_run(c, &op, c->o.request_timeout_ms);
}

RMQ_API int rmq_queue_list(struct rmq_client *c, struct rmq_queue_info **out,
			   size_t *n)
{
	struct op op;
	int rv;

	memset(&op, 0, sizeof op);
	op.kind = OP_LIST;
	rv = op_run(c, &op, c->o.request_timeout_ms);
	if (rv != 0) {
		return rv;
	}
	*out = op.qinfo;
	*n = op.nq;
	return 0;
}

RMQ_API int rmq_cluster_status(struct rmq_client *c,
			       struct rmq_cluster_info **out)
{
	struct op op;
	int rv;

	memset(&op, 0, sizeof op);
	op.kind = OP_STATUS;
	rv = op_run(c, &op, c->o.request_timeout_ms);
	if (rv != 0) {
		return rv;
	}
	*out = op.cinfo;
	return 0;
}

RMQ_API void rmq_cluster_info_free(struct rmq_cluster_info *info)
{
	if (info == NULL) {
		return;
	}
	free(info->nodes);
	free(info->shards);
	free(info);
}

/* ---- Publishing ---------------------------------------------------------------- */

static struct pub *pub_alloc(const char *queue, const void *body, size_t len,
			     const struct rmq_header *headers, size_t n)
{
	size_t qlen = strlen(queue) + 1;
	size_t size = sizeof(struct pub) +
		      n * (sizeof(Rmq__Header) + sizeof(Rmq__Header *));
	struct pub *p;
	Rmq__Header *hv;
	uint8_t *bytes;

	for (size_t i = 0; i < n; i++) {
		size += strlen(headers[i].key) + 1 + headers[i].value_len;
	}
	size += qlen + len;
	p = malloc(size);
	if (p == NULL) {
		return NULL;
	}
	memset(p, 0, sizeof *p);
	hv = (Rmq__Header *)(void *)(p + 1);
	p->hdrp = (Rmq__Header **)(void *)(hv + n);
	bytes = (uint8_t *)(p->hdrp + n);
	for (size_t i = 0; i < n; i++) {
		size_t kl = strlen(headers[i].key) + 1;
		rmq__header__init(&hv[i]);
		memcpy(bytes, headers[i].key, kl);
		hv[i].key = (char *)bytes;
		bytes += kl;
		if (headers[i].value_len > 0) {
			memcpy(bytes, headers[i].value, headers[i].value_len);
		}
		hv[i].value.data = bytes;
		hv[i].value.len = headers[i].value_len;
		bytes += headers[i].value_len;
		p->hdrp[i] = &hv[i];
	}
	p->n_hdrs = n;
	memcpy(bytes, queue, qlen);
	p->queue = (char *)bytes;
	bytes += qlen;
	if (len > 0) {
		memcpy(bytes, body, len);
	}
	p->body = bytes;
	p->len = len;
	link_init(&p->link);
	return p;
}

/* Accept @p (window permitting) and hand it to the I/O thread. */
static int pub_submit(struct rmq_client *c, struct pub *p)
{
	bool io = on_io_thread(c);

	lock(c);
	for (;;) {
		if (c->closing) {
			unlock(c);
			set_last_error("client closed");
			return RMQ_ESHUTDOWN;
		}
		if (c->inflight < c->o.publish_window) {
			break;
		}
		if (io) {
			unlock(c);
			set_last_error("publish window full");
			return RMQ_EFULL;
		}
		pthread_cond_wait(&c->cond, &c->mu);
	}
	c->inflight++;
	p->deadline = client_now() + c->o.publish_timeout_ms;
	list_push_back(&c->in_pubs, &p->link);
	unlock(c);
	uv_async_send(&c->async);
	return 0;
}

RMQ_API int rmq_publish_async(struct rmq_client *c, const char *queue,
			      const void *body, size_t len,
			      const struct rmq_header *headers,
			      size_t n_headers, rmq_confirm_cb cb, void *arg)
{
	struct pub *p;
	int rv = check_name(queue);

	if (rv != 0) {
		return rv;
	}
	if ((body == NULL && len > 0) || (headers == NULL && n_headers > 0)) {
		return RMQ_EINVAL;
	}
	p = pub_alloc(queue, body, len, headers, n_headers);
	if (p == NULL) {
		return RMQ_ENOMEM;
	}
	p->cb = cb;
	p->arg = arg;
	rv = pub_submit(c, p);
	if (rv != 0) {
		free(p);
	}
	return rv;
}

RMQ_API int rmq_publish(struct rmq_client *c, const char *queue,
			const void *body, size_t len, uint64_t *seq)
{
	struct waiter w;
	struct pub *p;
	int rv = check_name(queue);

	if (rv != 0) {
		return rv;
	}
	if ((body == NULL && len > 0) || on_io_thread(c)) {
		return RMQ_EINVAL;
	}
	p = pub_alloc(queue, body, len, NULL, 0);
	if (p == NULL) {
		return RMQ_ENOMEM;
	}
	memset(&w, 0, sizeof w);
	p->sync = &w;
	rv = pub_submit(c, p);
	if (rv != 0) {
		free(p);
		return rv;
	}
	lock(c);
	while (!w.done) {
		pthread_cond_wait(&c->cond, &c->mu);
	}
	unlock(c);
	set_last_error(w.msg);
	if (w.status == 0 && seq != NULL) {
		*seq = w.seq;
	}
	return w.status;
}

RMQ_API int rmq_flush(struct rmq_client *c, unsigned timeout_ms)
{
	struct timespec abs;
	int rv = 0;

	deadline_in(&abs, timeout_ms);
	lock(c);
	while (c->inflight > 0) {
		if (!wait_until(c, &abs)) {
			rv = c->inflight > 0 ? RMQ_ETIMEDOUT : 0;
			break;
		}
	}
	unlock(c);
	return rv;
}

/* ---- Consuming ------------------------------------------------------------------ */

RMQ_API int rmq_subscribe(struct rmq_client *c, const char *queue,
			  unsigned prefetch, rmq_delivery_cb cb, void *arg,
			  struct rmq_consumer **out)
{
	struct rmq_consumer *k;
	struct op op;
	int rv = check_name(queue);

	if (rv != 0) {
		return rv;
	}
	k = calloc(1, sizeof *k);
	if (k == NULL) {
		return RMQ_ENOMEM;
	}
	k->c = c;
	snprintf(k->queue, sizeof k->queue, "%s", queue);
	k->prefetch = prefetch > 0 ? prefetch : 1;
	k->cb = cb;
	k->arg = arg;
	link_init(&k->link);
	link_init(&k->batches);
	link_init(&k->recvq);
	memset(&op, 0, sizeof op);
	op.kind = OP_SUBSCRIBE;
	op.k = k;
	rv = op_run(c, &op, c->o.request_timeout_ms);
	if (!op.done) {
		free(k); /* never reached the I/O thread */
		return rv;
	}
	if (rv != 0) {
		return rv; /* the I/O thread freed k */
	}
	*out = k;
	return 0;
}

RMQ_API int rmq_receive(struct rmq_consumer *k, unsigned timeout_ms,
			struct rmq_delivery **out)
{
	struct rmq_client *c = k->c;
	struct timespec abs;
	struct delivery_box *b;
	int rv = 0;

	deadline_in(&abs, timeout_ms);
	lock(c);
	while (list_empty(&k->recvq)) {
		if (k->error != 0 || c->closing) {
			rv = k->error != 0 ? k->error : RMQ_ESHUTDOWN;
			break;
		}
		if (!wait_until(c, &abs)) {
			rv = list_empty(&k->recvq) ? RMQ_ETIMEDOUT : 0;
			break;
		}
	}
	if (rv == 0 && !list_empty(&k->recvq)) {
		b = container_of(k->recvq.next, struct delivery_box, link);
		list_remove(&b->link);
		*out = &b->d;
	}
	unlock(c);
	return rv;
}

RMQ_API void rmq_delivery_free(struct rmq_delivery *d)
{
	if (d != NULL) {
		free(container_of(d, struct delivery_box, d));
	}
}

static int settle(struct rmq_consumer *k, uint64_t seq, int outcome)
{
	struct rmq_client *c = k->c;
	int rv;

	lock(c);
	if (c->closing) {
		unlock(c);
		return RMQ_ESHUTDOWN;
	}
	rv = cutil_u64vec_push(&k->in[outcome], seq);
	if (rv == 0) {
		k->unsettled++;
		c->unsettled++;
	}
	unlock(c);
	return rv;
}

RMQ_API int rmq_ack(struct rmq_consumer *k, uint64_t seq)
{
	return settle(k, seq, RMQ__OUTCOME__ACK);
}

RMQ_API int rmq_nack(struct rmq_consumer *k, uint64_t seq, bool requeue)
{
	return settle(k, seq,
		      requeue ? RMQ__OUTCOME__REQUEUE : RMQ__OUTCOME__DROP);
}

RMQ_API int rmq_settle_flush(struct rmq_client *c, unsigned timeout_ms)
{
	struct timespec abs;
	int rv = 0;

	deadline_in(&abs, timeout_ms);
	lock(c);
	c->settle_now = true;
	unlock(c);
	uv_async_send(&c->async);
	lock(c);
	while (c->unsettled > 0) {
		if (!wait_until(c, &abs)) {
			rv = c->unsettled > 0 ? RMQ_ETIMEDOUT : 0;
			break;
		}
	}
	unlock(c);
	return rv;
}

RMQ_API int rmq_unsubscribe(struct rmq_consumer *k)
{
	struct rmq_client *c = k->c;
	struct timespec abs;
	struct op op;

	deadline_in(&abs, c->o.request_timeout_ms);
	lock(c);
	c->settle_now = true;
	unlock(c);
	uv_async_send(&c->async);
	lock(c);
	while (k->unsettled > 0 && k->error == 0 && !c->closing) {
		if (!wait_until(c, &abs)) {
			break;
		}
	}
	unlock(c);
	memset(&op, 0, sizeof op);
	op.kind = OP_CANCEL;
	op.k = k;
	return op_run(c, &op, c->o.request_timeout_ms);
}

/* ---- Membership and shards ----------------------------------------------- */

/* Send @req to the leader of @shard (following NOT_LEADER, retrying
 * transient errors until the request timeout). On 0, *resp (owned by the
 * caller, may be NULL if not wanted) is the answer. */
static int admin_call(struct rmq_client *c, uint32_t shard,
		      const Rmq__Request *req, Rmq__Response **resp)
{
	struct op op;
	int rv;

	memset(&op, 0, sizeof op);
	op.kind = OP_ADMIN;
	op.areq = req;
	op.ashard = shard;
	rv = op_run(c, &op, c->o.request_timeout_ms);
	if (rv == 0 && resp != NULL) {
		*resp = op.aresp;
	} else if (op.aresp != NULL) {
		rmq__response__free_unpacked(op.aresp, NULL);
	}
	return rv;
}

RMQ_API int rmq_node_list(struct rmq_client *c, struct rmq_member **out,
			  size_t *n)
{
	Rmq__Request r = RMQ__REQUEST__INIT;
	Rmq__NodeListReq l = RMQ__NODE_LIST_REQ__INIT;
	Rmq__Response *resp = NULL;
	struct rmq_member *m;
	int rv;

	r.body_case = RMQ__REQUEST__BODY_NODE_LIST;
	r.node_list = &l;
	rv = admin_call(c, 0, &r, &resp);
	if (rv != 0) {
		return rv;
	}
	if (resp->body_case != RMQ__RESPONSE__BODY_NODE_LIST ||
	    resp->node_list == NULL) {
		rmq__response__free_unpacked(resp, NULL);
		set_last_error("unexpected answer to node list");
		return RMQ_EPROTO;
	}
	size_t k = resp->node_list->n_nodes;
	m = calloc(k + 1, sizeof *m);
	if (m == NULL) {
		rmq__response__free_unpacked(resp, NULL);
		return RMQ_ENOMEM;
	}
	for (size_t i = 0; i < k; i++) {
		const Rmq__MemberInfo *x = resp->node_list->nodes[i];
		m[i].id = x->id;
		snprintf(m[i].client_address, sizeof m[i].client_address, "%s",
			 x->client_address);
		snprintf(m[i].peer_address, sizeof m[i].peer_address, "%s",
			 x->peer_address);
		snprintf(m[i].role, sizeof m[i].role, "%s", x->role);
		for (size_t j = 0; j < x->n_shards && j < 64; j++) {
			m[i].shards[m[i].n_shards++] = x->shards[j];
		}
	}
	rmq__response__free_unpacked(resp, NULL);
	*out = m;
	*n = k;
	return 0;
}

RMQ_API int rmq_node_add(struct rmq_client *c, uint64_t id)
{
	Rmq__Request r = RMQ__REQUEST__INIT;
	Rmq__NodeAddReq a = RMQ__NODE_ADD_REQ__INIT;
	a.node_id = id;
	r.body_case = RMQ__REQUEST__BODY_NODE_ADD;
	r.node_add = &a;
	return admin_call(c, 0, &r, NULL);
}

RMQ_API int rmq_node_remove(struct rmq_client *c, uint64_t id)
{
	Rmq__Request r = RMQ__REQUEST__INIT;
	Rmq__NodeRemoveReq a = RMQ__NODE_REMOVE_REQ__INIT;
	a.node_id = id;
	r.body_case = RMQ__REQUEST__BODY_NODE_REMOVE;
	r.node_remove = &a;
	return admin_call(c, 0, &r, NULL);
}

RMQ_API int rmq_shard_transfer(struct rmq_client *c, uint32_t shard,
			       uint64_t to)
{
	Rmq__Request r = RMQ__REQUEST__INIT;
	Rmq__ShardTransferReq t = RMQ__SHARD_TRANSFER_REQ__INIT;
	t.shard = shard;
	t.to = to;
	r.body_case = RMQ__REQUEST__BODY_SHARD_TRANSFER;
	r.shard_transfer = &t;
	return admin_call(c, shard, &r, NULL);
}

RMQ_API int rmq_shard_move(struct rmq_client *c, uint32_t shard, uint64_t from,
			   uint64_t to, bool *done)
{
	Rmq__Request r = RMQ__REQUEST__INIT;
	Rmq__ShardMoveReq m = RMQ__SHARD_MOVE_REQ__INIT;
	Rmq__Response *resp = NULL;
	int rv;

	m.shard = shard;
	m.from = from;
	m.to = to;
	r.body_case = RMQ__REQUEST__BODY_SHARD_MOVE;
	r.shard_move = &m;
	/* Placement is the meta shard's business. */
	rv = admin_call(c, 0, &r, &resp);
	if (rv != 0) {
		return rv;
	}
	if (done != NULL) {
		*done = resp->body_case == RMQ__RESPONSE__BODY_SHARD_MOVE &&
			resp->shard_move != NULL && resp->shard_move->done;
	}
	rmq__response__free_unpacked(resp, NULL);
	return 0;
}
