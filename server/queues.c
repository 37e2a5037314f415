/* queues: request dispatch, publish batching, consumers and delivery.
 * See server.h for the data flow.
 *
 * Every node keeps a table of the queues it knows: the placement from the
 * meta shard (name → data shard, limits) and the stored state of its local
 * replica of that shard (internal id, message count). On the leader of a
 * shard, each queue also has its delivery state: a cursor over the stored
 * messages, the in-flight deliveries (seq → consumer), the messages to
 * deliver again (requeued or returned by a consumer that left) and the
 * attached consumers. That state lives in memory only: when leadership
 * moves, every unacked delivery becomes ready again on the new leader and
 * is delivered with redelivered = true.
 *
 * Requests that change state (publish, settle) join the pending batch of
 * their shard; node.c flushes each batch once per loop iteration as one
 * raft entry, and proposal_cb answers every request of the batch when the
 * entry is applied (or failed). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "seqmap.h"
#include "server.h"

enum { PENDING_PUBLISH = 1, PENDING_SETTLE };

struct consumer {
	struct conn *conn;
	struct queue *q;
	uint64_t id;
	uint32_t prefetch;
	uint32_t unacked;
	struct consumer *next; /* in conn->consumers */
};

struct queue {
	char name[STORE_MAX_NAME + 1];
	uint32_t shard;
	bool placed; /* the meta shard has it (not deleted) */
	struct store_placement placement; /* or its tombstone */
	bool stored; /* our replica of @shard holds a state for this name */
	uint64_t stored_gen; /* the incarnation of that state */
	uint32_t qid;
	uint64_t count;
	uint64_t bytes;
	uint64_t stored_delivered_upto;

	/* Leader state (valid while active). */
	bool active;
	bool horizon_pending; /* a raise of delivered_upto is proposed */
	uint64_t horizon_target;
	uint64_t cursor;
	uint64_t delivered_upto;
	uint64_t recorded_delivered_upto; /* as of becoming leader */
	struct seqmap inflight;           /* seq → struct consumer */
	uint64_t *redeliver;              /* owned, sorted ascending */
	size_t n_redeliver, cap_redeliver;
	struct consumer **consumers; /* owned array */
	size_t n_consumers, cap_consumers;
	size_t rr;

	struct queue *hnext;
};

struct proposal {
	struct node *node;
	unsigned shard;
	uint64_t started_ns;   /* when it was proposed (uv_hrtime) */
	struct pending *items; /* owned */
	size_t n;
	struct queue **marks; /* owned */
	size_t n_marks;
};

/* Deliveries run ahead of the recorded horizon by at most this much; see
 * deliver(). */
#define HORIZON_AHEAD 1024

struct meta_request {
	struct conn *conn; /* ref held */
	uint64_t req_id;
	int type; /* RMQ__REQUEST__BODY_DECLARE / _DELETE */
	char name[STORE_MAX_NAME + 1];
};

/* The queue can be served: placed, and our replica of its shard holds the
 * state of this incarnation. */
static bool q_ready(const struct queue *q)
{
	return q->placed && q->stored && q->stored_gen == q->placement.gen;
}

/* ---- queue table ------------------------------------------------------ */

static size_t hash_name(const char *s, size_t n_buckets)
{
	uint64_t h = 14695981039346656037ULL;
	for (; *s != '\0'; s++) {
		h ^= (uint8_t)*s;
		h *= 1099511628211ULL;
	}
	return (size_t)(h % n_buckets);
}

static struct queue *table_get(struct node *n, const char *name)
{
	struct queue_table *t = &n->queues;
	if (t->n_buckets == 0) {
		return NULL;
	}
	for (struct queue *q = t->buckets[hash_name(name, t->n_buckets)];
	     q != NULL; q = q->hnext) {
		if (strcmp(q->name, name) == 0) {
			return q;
		}
	}
	return NULL;
}

static int table_grow(struct queue_table *t)
{
	size_t nb = t->n_buckets ? t->n_buckets * 2 : 256;
	struct queue **b = calloc(nb, sizeof *b);
	if (b == NULL) {
		return RMQ_ENOMEM;
	}
	for (size_t i = 0; i < t->n_buckets; i++) {
		struct queue *q = t->buckets[i], *next;
		for (; q != NULL; q = next) {
			next = q->hnext;
			size_t h = hash_name(q->name, nb);
			q->hnext = b[h];
			b[h] = q;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->n_buckets = nb;
	return 0;
}

static struct queue *table_add(struct node *n, const char *name)
{
	struct queue_table *t = &n->queues;
	struct queue *q = table_get(n, name);
	if (q != NULL) {
		return q;
	}
	if (t->n >= t->n_buckets && table_grow(t) != 0) {
		return NULL;
	}
	q = calloc(1, sizeof *q);
	if (q == NULL) {
		return NULL;
	}
	snprintf(q->name, sizeof q->name, "%s", name);
	seqmap_init(&q->inflight);
	size_t h = hash_name(name, t->n_buckets);
	q->hnext = t->buckets[h];
	t->buckets[h] = q;
	t->n++;
	return q;
}

static void queue_free(struct queue *q)
{
	seqmap_close(&q->inflight);
	free(q->redeliver);
	free(q->consumers);
	free(q);
}

#define TABLE_FOREACH(n, q)                                      \
	for (size_t b_ = 0; b_ < (n)->queues.n_buckets; b_++)    \
		for (struct queue *q = (n)->queues.buckets[b_],  \
				  *qnext_ = q ? q->hnext : NULL; \
		     q != NULL; q = qnext_, qnext_ = q ? q->hnext : NULL)

/* ---- replies ---------------------------------------------------------- */

static void reply_not_leader(struct node *n, struct conn *c, uint64_t id,
			     unsigned shard)
{
	Rmq__Response r = RMQ__RESPONSE__INIT;
	Rmq__Error e = RMQ__ERROR__INIT;
	char msg[96];
	struct shard_view v;
	members_shard_view(n, shard, &v);
	uint64_t leader = v.leader != n->cfg.id ? v.leader : 0;
	snprintf(msg, sizeof msg, "node %" PRIu64 " does not lead shard %u",
		 n->cfg.id, shard);
	e.code = RMQ__CODE__NOT_LEADER;
	e.message = msg;
	e.leader_id = leader;
	e.leader_address =
		(char *)(leader ? node_client_address(n, leader) : "");
	r.id = id;
	r.error = &e;
	conn_send_response(c, &r);
}

/* Whether shard @i can serve requests here; replies if not. */
static bool check_leader(struct node *n, struct conn *c, uint64_t id,
			 unsigned i)
{
	switch (shard_role(n->shards[i])) {
	case SHARD_LEADER:
		return true;
	case SHARD_LEADER_PENDING:
		conn_send_error(c, id, RMQ_EUNAVAIL,
				"leader is catching up, retry");
		return false;
	default:
		reply_not_leader(n, c, id, i);
		return false;
	}
}

static uint32_t message_limit(struct node *n, const struct queue *q)
{
	uint32_t limit = n->cfg.max_message_size;
	if (q->placement.max_message_size != 0 &&
	    q->placement.max_message_size < limit) {
		limit = q->placement.max_message_size;
	}
	return limit;
}

static void reply_publish_error(struct node *n, struct conn *c, uint64_t id,
				const struct queue *q, int err, size_t len)
{
	char msg[STORE_MAX_NAME + 160];
	switch (err) {
	case RMQ_ETOOLARGE:
		snprintf(msg, sizeof msg, "message too large: %zu > %u", len,
			 message_limit(n, q));
		break;
	case RMQ_EFULL:
		snprintf(msg, sizeof msg,
			 "queue %s is full (max_length %" PRIu64 ")", q->name,
			 q->placement.max_length);
		break;
	case RMQ_ENOTFOUND:
		snprintf(msg, sizeof msg, "no such queue: %s", q->name);
		break;
	default:
		snprintf(msg, sizeof msg, "%s", codec_strerror(err));
		break;
	}
	conn_send_error(c, id, err, msg);
}

/* ---- delivery --------------------------------------------------------- */

static int redeliver_add(struct queue *q, uint64_t seq)
{
	if (q->n_redeliver == q->cap_redeliver) {
		size_t cap = q->cap_redeliver ? q->cap_redeliver * 2 : 64;
		uint64_t *p = realloc(q->redeliver, cap * sizeof *p);
		if (p == NULL) {
			return RMQ_ENOMEM;
		}
		q->redeliver = p;
		q->cap_redeliver = cap;
	}
	size_t i = q->n_redeliver;
	while (i > 0 && q->redeliver[i - 1] > seq) {
		i--;
	}
	if (i > 0 && q->redeliver[i - 1] == seq) {
		return 0;
	}
	memmove(&q->redeliver[i + 1], &q->redeliver[i],
		(q->n_redeliver - i) * sizeof *q->redeliver);
	q->redeliver[i] = seq;
	q->n_redeliver++;
	return 0;
}

static void redeliver_remove(struct queue *q, uint64_t seq)
{
	for (size_t i = 0; i < q->n_redeliver; i++) {
		if (q->redeliver[i] == seq) {
			memmove(&q->redeliver[i], &q->redeliver[i + 1],
				(q->n_redeliver - i - 1) *
					sizeof *q->redeliver);
			q->n_redeliver--;
			return;
		}
	}
}

static struct consumer *next_consumer(struct queue *q)
{
	for (size_t k = 0; k < q->n_consumers; k++) {
		struct consumer *c = q->consumers[(q->rr + k) % q->n_consumers];
		if (c->unacked < c->prefetch && conn_alive(c->conn)) {
			q->rr = (q->rr + k + 1) % q->n_consumers;
			return c;
		}
	}
	return NULL;
}

static void send_delivery(struct consumer *k, const struct store_msg *m,
			  bool redelivered)
{
	Rmq__ServerFrame f = RMQ__SERVER_FRAME__INIT;
	Rmq__Delivery d = RMQ__DELIVERY__INIT;
	Rmqc__Msg *hdrs = NULL;
	Rmq__Header *h = NULL;
	Rmq__Header **hp = NULL;

	d.consumer_id = k->id;
	d.queue = k->q->name;
	d.seq = m->seq;
	d.body.data = (uint8_t *)m->body;
	d.body.len = m->body_len;
	d.redelivered = redelivered;
	d.delivery_count = redelivered ? 2 : 1;
	if (m->headers_len > 0) {
		hdrs = rmqc__msg__unpack(NULL, m->headers_len, m->headers);
		if (hdrs != NULL && hdrs->n_headers > 0) {
			h = calloc(hdrs->n_headers, sizeof *h);
			hp = calloc(hdrs->n_headers, sizeof *hp);
			if (h != NULL && hp != NULL) {
				for (size_t i = 0; i < hdrs->n_headers; i++) {
					rmq__header__init(&h[i]);
					h[i].key = hdrs->headers[i]->key;
					h[i].value = hdrs->headers[i]->value;
					hp[i] = &h[i];
				}
				d.headers = hp;
				d.n_headers = hdrs->n_headers;
			}
		}
	}
	f.kind_case = RMQ__SERVER_FRAME__KIND_DELIVERY;
	f.delivery = &d;
	conn_send(k->conn, &f);
	k->conn->node->metrics.deliveries++;
	if (redelivered) {
		k->conn->node->metrics.redeliveries++;
	}
	free(h);
	free(hp);
	if (hdrs != NULL) {
		rmqc__msg__free_unpacked(hdrs, NULL);
	}
}

/* Ask the next batch of @q's shard to raise the queue's recorded delivery
 * horizon (delivered_upto) to @target. */
static void request_horizon(struct node *n, struct queue *q, uint64_t target)
{
	struct batch *b = &n->batches[q->shard];
	if (q->horizon_pending) {
		return;
	}
	if (b->n_marks == b->cap_marks) {
		size_t cap = b->cap_marks ? b->cap_marks * 2 : 8;
		struct queue **m = realloc(b->marks, cap * sizeof *m);
		if (m == NULL) {
			return; /* retried from the next delivery attempt */
		}
		b->marks = m;
		b->cap_marks = cap;
	}
	b->marks[b->n_marks++] = q;
	q->horizon_target = target;
	q->horizon_pending = true;
}

/* Hand ready messages to consumers with credit.
 *
 * A message is handed out for the first time only if its seq is within the
 * queue's horizon (delivered_upto) as recorded in the shard, so that a new
 * leader marks every message its predecessors may have delivered as
 * redelivered. The horizon is raised ahead of need, HORIZON_AHEAD at a
 * time, in the shard's next batch; a consumer waits for it only when the
 * deliveries outrun it. */
static void deliver(struct node *n, struct queue *q)
{
	struct store_txn *t;
	struct store_msg m;
	struct consumer *k;

	if (n->stopping || !q->active || q->n_consumers == 0 || !q_ready(q)) {
		return;
	}
	if (store_begin(shard_store(n->shards[q->shard]), false, &t) != 0) {
		return;
	}
	while ((k = next_consumer(q)) != NULL) {
		bool again = false;
		if (q->n_redeliver > 0) {
			uint64_t seq = q->redeliver[0];
			redeliver_remove(q, seq);
			if (store_msg_get(t, q->qid, seq, &m) != 0) {
				continue; /* settled meanwhile */
			}
			again = true;
		} else {
			if (store_msg_next(t, q->qid, q->cursor, &m) != 0) {
				break;
			}
			if (m.seq + HORIZON_AHEAD / 2 >
			    q->stored_delivered_upto) {
				request_horizon(n, q, m.seq + HORIZON_AHEAD);
			}
			if (m.seq > q->stored_delivered_upto) {
				break; /* resumes when the horizon is applied */
			}
			q->cursor = m.seq + 1;
			if (seqmap_get(&q->inflight, m.seq) != NULL) {
				continue;
			}
		}
		if (seqmap_put(&q->inflight, m.seq, k) != 0) {
			redeliver_add(q, m.seq);
			break;
		}
		k->unacked++;
		if (m.seq > q->delivered_upto) {
			q->delivered_upto = m.seq;
		}
		send_delivery(k, &m,
			      again || m.seq <= q->recorded_delivered_upto);
	}
	store_abort(t);
}

/* Return every delivery held by @k to the ready set. */
static void consumer_return_all(struct queue *q, struct consumer *k)
{
	/* Collect first: deleting shifts entries of the open-addressing map. */
	uint64_t *seqs = k->unacked > 0 ? malloc(k->unacked * sizeof *seqs)
					: NULL;
	size_t n = 0;
	for (size_t i = 0; i < q->inflight.cap && seqs != NULL; i++) {
		struct seqmap_slot *s = &q->inflight.slots[i];
		if (s->key != 0 && s->value == k && n < k->unacked) {
			seqs[n++] = s->key;
		}
	}
	for (size_t i = 0; i < n; i++) {
		seqmap_del(&q->inflight, seqs[i]);
		redeliver_add(q, seqs[i]);
	}
	free(seqs);
	k->unacked = 0;
}

static void consumer_detach(struct queue *q, struct consumer *k)
{
	for (size_t i = 0; i < q->n_consumers; i++) {
		if (q->consumers[i] == k) {
			q->consumers[i] = q->consumers[--q->n_consumers];
			break;
		}
	}
	if (q->rr >= q->n_consumers) {
		q->rr = 0;
	}
}

static void conn_unlink_consumer(struct conn *c, struct consumer *k)
{
	for (struct consumer **pp = &c->consumers; *pp != NULL;
	     pp = &(*pp)->next) {
		if (*pp == k) {
			*pp = k->next;
			return;
		}
	}
}

static void end_consumer(struct consumer *k, int err, const char *why)
{
	LOGD("client %s: consumer %" PRIu64 " ended: %s", k->conn->peer, k->id,
	     why);
	Rmq__ServerFrame f = RMQ__SERVER_FRAME__INIT;
	Rmq__ConsumerEnded e = RMQ__CONSUMER_ENDED__INIT;
	Rmq__Error r = RMQ__ERROR__INIT;
	r.code = codec_code_from_err(err);
	r.message = (char *)why;
	e.consumer_id = k->id;
	e.reason = &r;
	f.kind_case = RMQ__SERVER_FRAME__KIND_ENDED;
	f.ended = &e;
	conn_unlink_consumer(k->conn, k);
	conn_send(k->conn, &f);
	free(k);
}

/* Leave leader state: consumers end, in-flight state is forgotten. */
static void queue_deactivate(struct queue *q, int err, const char *why)
{
	size_t n = q->n_consumers;
	q->n_consumers = 0;
	for (size_t i = 0; i < n; i++) {
		end_consumer(q->consumers[i], err, why);
	}
	q->rr = 0;
	seqmap_close(&q->inflight);
	q->n_redeliver = 0;
	q->active = false;
}

static void queue_activate(struct queue *q)
{
	q->active = true;
	q->cursor = 1;
	q->recorded_delivered_upto = q->stored_delivered_upto;
	q->delivered_upto = q->stored_delivered_upto;
	q->n_redeliver = 0;
	seqmap_close(&q->inflight);
}

/* ---- batches and proposals --------------------------------------------- */

static void pending_release(struct pending *p)
{
	if (p->req != NULL) {
		rmq__request__free_unpacked(p->req, NULL);
		p->req = NULL;
	}
	conn_unref(p->conn);
}

#define MAX_FENCES 256

static struct fence *fence_find(struct conn *c, const char *queue)
{
	for (size_t i = 0; i < c->n_fences; i++) {
		if (strcmp(c->fences[i].queue, queue) == 0) {
			return &c->fences[i];
		}
	}
	return NULL;
}

/* A publish to @queue of @epoch on @c was refused with @err. Unless the
 * refusal is definite (the client gives that message up), publishes sent
 * after it could be stored ahead of it, and a producer's messages would
 * not be in publish order any more. So publishes to @queue of epochs up to
 * @epoch are refused from now on; the client resends from the refused one
 * with a higher epoch. */
static void fence_publishes(struct conn *c, const char *queue, uint64_t epoch,
			    int err)
{
	struct fence *f, *v;

	if (epoch == 0 || err == RMQ_ETOOLARGE || err == RMQ_EFULL) {
		return;
	}
	f = fence_find(c, queue);
	if (f != NULL) {
		if (epoch > f->epoch) {
			f->epoch = epoch;
		}
		return;
	}
	if (c->n_fences == MAX_FENCES) {
		/* Far more queues than a client uses at once: forget the
		 * oldest fence rather than grow without bound. */
		free(c->fences[0].queue);
		memmove(c->fences, c->fences + 1,
			(c->n_fences - 1) * sizeof *c->fences);
		c->n_fences--;
	}
	v = realloc(c->fences, (c->n_fences + 1) * sizeof *v);
	if (v == NULL) {
		return;
	}
	c->fences = v;
	v[c->n_fences].queue = strdup(queue);
	if (v[c->n_fences].queue == NULL) {
		return;
	}
	v[c->n_fences++].epoch = epoch;
}

static bool fenced(struct conn *c, const char *queue, uint64_t epoch)
{
	const struct fence *f;

	if (epoch == 0 || c->n_fences == 0) {
		return false;
	}
	f = fence_find(c, queue);
	return f != NULL && epoch <= f->epoch;
}

static void fail_items(struct node *n, struct pending *items, size_t count,
		       int err, const char *msg)
{
	for (size_t i = 0; i < count; i++) {
		if (items[i].type == PENDING_PUBLISH) {
			fence_publishes(items[i].conn, items[i].queue->name,
					items[i].epoch, err);
		}
		if (conn_alive(items[i].conn)) {
			conn_send_error(items[i].conn, items[i].req_id, err,
					msg);
			if (items[i].type == PENDING_PUBLISH) {
				n->metrics.publish_errors++;
			}
		}
		pending_release(&items[i]);
	}
}

static int batch_add(struct batch *b, const struct pending *p, size_t bytes)
{
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 256;
		struct pending *items = realloc(b->items, cap * sizeof *items);
		if (items == NULL) {
			return RMQ_ENOMEM;
		}
		b->items = items;
		b->cap = cap;
	}
	b->items[b->n++] = *p;
	b->bytes += bytes;
	return 0;
}

static void proposal_cb(void *data, int status, const struct fsm_result *r)
{
	struct proposal *pr = data;
	struct node *n = pr->node;

	if (status == 0) {
		lat_record(&n->append_lat[pr->shard],
			   uv_hrtime() - pr->started_ns);
	}
	for (size_t i = 0; i < pr->n; i++) {
		struct pending *p = &pr->items[i];
		struct conn *c = p->conn;
		if (status != 0 && p->type == PENDING_SETTLE &&
		    p->queue->active) {
			/* Not applied (or not known to be): the messages are
			 * neither in flight nor removed; make them ready. */
			const Rmq__SettleReq *sr = p->req->settle;
			for (size_t k = 0; k < sr->n_seqs; k++) {
				if (seqmap_get(&p->queue->inflight,
					       sr->seqs[k]) == NULL) {
					redeliver_add(p->queue, sr->seqs[k]);
				}
			}
			deliver(n, p->queue);
		}
		if (status != 0 && p->type == PENDING_PUBLISH) {
			fence_publishes(c, p->queue->name, p->epoch, status);
		}
		if (!conn_alive(c)) {
			pending_release(p);
			continue;
		}
		if (status != 0 && p->type == PENDING_PUBLISH) {
			n->metrics.publish_errors++;
		}
		if (status == RMQ_ELEADERLOST) {
			conn_send_error(c, p->req_id, RMQ_ELEADERLOST,
					"leadership lost before the entry "
					"committed; outcome unknown, retry "
					"with the same producer id and seq");
		} else if (status != 0) {
			conn_send_error(c, p->req_id, status,
					codec_strerror(status));
		} else if (p->type == PENDING_PUBLISH) {
			const struct fsm_op_result *o = &r->ops[p->op];
			int err = o->status;
			const struct store_publish_result *res = NULL;
			if (o->pub != NULL && p->msg < o->n_pub) {
				res = &o->pub[p->msg];
				err = res->status;
			}
			if (r->skipped) {
				err = RMQ_ELEADERLOST;
			}
			if (err != 0 || res == NULL) {
				fence_publishes(c, p->queue->name, p->epoch,
						err ? err : RMQ_EINTERNAL);
				reply_publish_error(n, c, p->req_id, p->queue,
						    err ? err : RMQ_EINTERNAL,
						    0);
				n->metrics.publish_errors++;
			} else {
				n->metrics.confirms++;
				if (res->duplicate) {
					n->metrics.duplicates++;
				}
				Rmq__Response resp = RMQ__RESPONSE__INIT;
				Rmq__PublishResp pub = RMQ__PUBLISH_RESP__INIT;
				pub.seq = res->seq;
				pub.duplicate = res->duplicate;
				resp.id = p->req_id;
				resp.body_case = RMQ__RESPONSE__BODY_PUBLISH;
				resp.publish = &pub;
				conn_send_response(c, &resp);
			}
		} else {
			int err = r->ops[p->op].status;
			if (err != 0 && err != RMQ_ENOTFOUND) {
				conn_send_error(c, p->req_id, err, NULL);
			} else {
				Rmq__Response resp = RMQ__RESPONSE__INIT;
				Rmq__SettleResp s = RMQ__SETTLE_RESP__INIT;
				resp.id = p->req_id;
				resp.body_case = RMQ__RESPONSE__BODY_SETTLE;
				resp.settle = &s;
				conn_send_response(c, &resp);
			}
		}
		pending_release(p);
	}
	for (size_t i = 0; i < pr->n_marks; i++) {
		struct queue *q = pr->marks[i];
		q->horizon_pending = false;
		if (status != 0) {
			deliver(n, q); /* asks again if still needed */
		}
	}
	free(pr->marks);
	free(pr->items);
	free(pr);
}

/* Ops of one batch under construction. */
struct builder {
	Rmqc__Op *ops;  /* owned */
	Rmqc__Op **opp; /* owned */
	size_t n_ops, cap_ops;
	struct queue **op_queue; /* owned: queue of each op */
	int *op_type;            /* owned: PENDING_* or 0 for create */
};

/* The op of @kind (RMQC__OP__KIND_*) for @q in this batch, created with
 * its sub-message on first use. On 0, *index is its position. */
static int builder_op(struct builder *b, struct queue *q, int kind,
		      size_t *index)
{
	for (size_t i = b->n_ops; i > 0; i--) {
		if (b->op_queue[i - 1] == q && b->op_type[i - 1] == kind) {
			*index = i - 1;
			return 0;
		}
	}
	if (b->n_ops == b->cap_ops) {
		size_t cap = b->cap_ops ? b->cap_ops * 2 : 8;
		Rmqc__Op *ops = realloc(b->ops, cap * sizeof *ops);
		if (ops == NULL) {
			return RMQ_ENOMEM;
		}
		b->ops = ops;
		struct queue **oq = realloc(b->op_queue, cap * sizeof *oq);
		if (oq == NULL) {
			return RMQ_ENOMEM;
		}
		b->op_queue = oq;
		int *ot = realloc(b->op_type, cap * sizeof *ot);
		if (ot == NULL) {
			return RMQ_ENOMEM;
		}
		b->op_type = ot;
		b->cap_ops = cap;
	}
	Rmqc__Op *op = &b->ops[b->n_ops];
	rmqc__op__init(op);
	switch (kind) {
	case RMQC__OP__KIND_CREATE:
		op->create = malloc(sizeof *op->create);
		if (op->create == NULL) {
			return RMQ_ENOMEM;
		}
		rmqc__create_queue_op__init(op->create);
		op->create->queue = q->name;
		op->create->max_length = q->placement.max_length;
		op->create->max_message_size = q->placement.max_message_size;
		op->create->gen = q->placement.gen;
		break;
	case RMQC__OP__KIND_PUBLISH:
		op->publish = malloc(sizeof *op->publish);
		if (op->publish == NULL) {
			return RMQ_ENOMEM;
		}
		rmqc__publish_op__init(op->publish);
		op->publish->queue = q->name;
		break;
	default:
		op->settle = malloc(sizeof *op->settle);
		if (op->settle == NULL) {
			return RMQ_ENOMEM;
		}
		rmqc__settle_op__init(op->settle);
		op->settle->queue = q->name;
		kind = RMQC__OP__KIND_SETTLE;
		break;
	}
	op->kind_case = (Rmqc__Op__KindCase)kind;
	b->op_queue[b->n_ops] = q;
	b->op_type[b->n_ops] = kind;
	*index = b->n_ops++;
	return 0;
}

static void builder_free(struct builder *b)
{
	for (size_t i = 0; i < b->n_ops; i++) {
		Rmqc__Op *op = &b->ops[i];
		switch (op->kind_case) {
		case RMQC__OP__KIND_PUBLISH:
			for (size_t m = 0; m < op->publish->n_msgs; m++) {
				Rmqc__Msg *msg = op->publish->msgs[m];
				if (msg->n_headers > 0) {
					free(msg->headers[0]);
					free(msg->headers);
				}
				free(msg);
			}
			free(op->publish->msgs);
			free(op->publish);
			break;
		case RMQC__OP__KIND_SETTLE:
			free(op->settle->remove);
			free(op->settle);
			break;
		case RMQC__OP__KIND_CREATE:
			free(op->create);
			break;
		default:
			break;
		}
	}
	free(b->ops);
	free(b->opp);
	free(b->op_queue);
	free(b->op_type);
}

static Rmqc__Msg *msg_from_request(const Rmq__PublishReq *p)
{
	Rmqc__Msg *m = malloc(sizeof *m);
	if (m == NULL) {
		return NULL;
	}
	rmqc__msg__init(m);
	m->body = p->body;
	m->producer_id = p->producer_id;
	m->producer_seq = p->producer_seq;
	if (p->n_headers > 0) {
		Rmqc__KV *kv = calloc(p->n_headers, sizeof *kv);
		Rmqc__KV **kvp = calloc(p->n_headers, sizeof *kvp);
		if (kv == NULL || kvp == NULL) {
			free(kv);
			free(kvp);
			free(m);
			return NULL;
		}
		for (size_t i = 0; i < p->n_headers; i++) {
			rmqc__kv__init(&kv[i]);
			kv[i].key = p->headers[i]->key;
			kv[i].value = p->headers[i]->value;
			kvp[i] = &kv[i];
		}
		m->headers = kvp;
		m->n_headers = p->n_headers;
	}
	return m;
}

/* Build the command of a batch: per queue, a create op first if the shard
 * does not have the queue yet, then one publish op and one settle op. */
static int build_command(struct batch *b, struct builder *bl)
{
	size_t idx;
	int rv;

	for (size_t i = 0; i < b->n; i++) {
		struct pending *p = &b->items[i];
		struct queue *q = p->queue;
		if (!q->stored && q->placed && p->type == PENDING_PUBLISH) {
			rv = builder_op(bl, q, RMQC__OP__KIND_CREATE, &idx);
			if (rv != 0) {
				return rv;
			}
		}
		rv = builder_op(bl, q,
				p->type == PENDING_PUBLISH
					? RMQC__OP__KIND_PUBLISH
					: RMQC__OP__KIND_SETTLE,
				&idx);
		if (rv != 0) {
			return rv;
		}
		p->op = idx;
		Rmqc__Op *op = &bl->ops[idx];
		if (p->type == PENDING_PUBLISH) {
			Rmqc__PublishOp *po = op->publish;
			Rmqc__Msg **msgs = realloc(
				po->msgs, (po->n_msgs + 1) * sizeof *msgs);
			if (msgs == NULL) {
				return RMQ_ENOMEM;
			}
			po->msgs = msgs;
			Rmqc__Msg *m = msg_from_request(p->req->publish);
			if (m == NULL) {
				return RMQ_ENOMEM;
			}
			p->msg = po->n_msgs;
			po->msgs[po->n_msgs++] = m;
		} else {
			Rmqc__SettleOp *so = op->settle;
			const Rmq__SettleReq *sr = p->req->settle;
			uint64_t *rm = realloc(so->remove,
					       (so->n_remove + sr->n_seqs + 1) *
						       sizeof *rm);
			if (rm == NULL) {
				return RMQ_ENOMEM;
			}
			memcpy(rm + so->n_remove, sr->seqs,
			       sr->n_seqs * sizeof *rm);
			so->remove = rm;
			so->n_remove += sr->n_seqs;
			if (so->delivered_upto < q->delivered_upto) {
				so->delivered_upto = q->delivered_upto;
			}
		}
	}
	for (size_t i = 0; i < b->n_marks; i++) {
		struct queue *q = b->marks[i];
		rv = builder_op(bl, q, RMQC__OP__KIND_SETTLE, &idx);
		if (rv != 0) {
			return rv;
		}
		Rmqc__SettleOp *so = bl->ops[idx].settle;
		if (so->delivered_upto < q->horizon_target) {
			so->delivered_upto = q->horizon_target;
		}
	}
	bl->opp = malloc((bl->n_ops ? bl->n_ops : 1) * sizeof *bl->opp);
	if (bl->opp == NULL) {
		return RMQ_ENOMEM;
	}
	for (size_t i = 0; i < bl->n_ops; i++) {
		bl->opp[i] = &bl->ops[i];
	}
	return 0;
}

static void batch_reset(struct batch *b)
{
	b->items = NULL;
	b->n = 0;
	b->cap = 0;
	b->bytes = 0;
	b->marks = NULL;
	b->n_marks = 0;
	b->cap_marks = 0;
}

static void drop_marks(struct queue **marks, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		marks[k]->horizon_pending = false;
	}
	free(marks);
}

void queues_flush(struct node *n, unsigned i)
{
	struct batch *b = &n->batches[i];
	struct builder bl;
	struct proposal *pr;
	int rv;

	if ((b->n == 0 && b->n_marks == 0) || n->stopping) {
		return;
	}
	if (shard_role(n->shards[i]) != SHARD_LEADER) {
		for (size_t k = 0; k < b->n; k++) {
			struct pending *p = &b->items[k];
			if (p->type == PENDING_PUBLISH) {
				fence_publishes(p->conn, p->queue->name,
						p->epoch, RMQ_ENOTLEADER);
			}
			if (conn_alive(p->conn)) {
				reply_not_leader(n, p->conn, p->req_id, i);
				if (p->type == PENDING_PUBLISH) {
					n->metrics.publish_errors++;
				}
			}
			pending_release(p);
		}
		free(b->items);
		drop_marks(b->marks, b->n_marks);
		batch_reset(b);
		return;
	}
	memset(&bl, 0, sizeof bl);
	pr = malloc(sizeof *pr);
	rv = pr != NULL ? build_command(b, &bl) : RMQ_ENOMEM;
	if (rv == 0) {
		Rmqc__Command cmd = RMQC__COMMAND__INIT;
		cmd.ops = bl.opp;
		cmd.n_ops = bl.n_ops;
		pr->node = n;
		pr->shard = i;
		pr->items = b->items;
		pr->n = b->n;
		pr->marks = b->marks;
		pr->n_marks = b->n_marks;
		pr->started_ns = uv_hrtime();
		rv = shard_propose(n->shards[i], &cmd, proposal_cb, pr);
	}
	builder_free(&bl);
	if (rv != 0) {
		free(pr);
		fail_items(n, b->items, b->n, rv,
			   rv == RMQ_ENOTLEADER ? "not the leader any more"
						: codec_strerror(rv));
		free(b->items);
		drop_marks(b->marks, b->n_marks);
	} else {
		/* The proposal owns the items; drop the decoded publishes
		 * now that their bytes are packed into the entry. Settles
		 * keep their seqs in case the entry fails. */
		for (size_t k = 0; k < b->n; k++) {
			if (b->items[k].type == PENDING_PUBLISH) {
				rmq__request__free_unpacked(b->items[k].req,
							    NULL);
				b->items[k].req = NULL;
			}
		}
	}
	batch_reset(b);
}

/* ---- request handlers ------------------------------------------------- */

static bool valid_name(const char *s)
{
	size_t len = strlen(s);
	if (len == 0 || len > STORE_MAX_NAME) {
		return false;
	}
	for (; *s != '\0'; s++) {
		if ((unsigned char)*s < 0x20 || *s == 0x7f) {
			return false;
		}
	}
	return true;
}

static void meta_cb(void *data, int status, const struct fsm_result *r)
{
	struct meta_request *m = data;
	struct conn *c = m->conn;
	char msg[STORE_MAX_NAME + 96];

	if (!conn_alive(c)) {
		goto out;
	}
	int err = status;
	if (err == 0 && (r->skipped || r->cmd->n_ops != 1)) {
		err = RMQ_EINTERNAL;
	}
	if (err == 0) {
		err = r->ops[0].status;
	}
	if (err == RMQ_EEXISTS) {
		snprintf(msg, sizeof msg, "queue %s exists with other settings",
			 m->name);
		conn_send_error(c, m->req_id, err, msg);
	} else if (err == RMQ_ENOTFOUND) {
		snprintf(msg, sizeof msg, "no such queue: %s", m->name);
		conn_send_error(c, m->req_id, err, msg);
	} else if (err != 0) {
		conn_send_error(c, m->req_id, err, NULL);
	} else if (m->type == RMQ__REQUEST__BODY_DECLARE) {
		Rmq__Response resp = RMQ__RESPONSE__INIT;
		Rmq__DeclareResp d = RMQ__DECLARE_RESP__INIT;
		d.shard = r->ops[0].placement.shard;
		d.created = r->ops[0].created;
		resp.id = m->req_id;
		resp.body_case = RMQ__RESPONSE__BODY_DECLARE;
		resp.declare = &d;
		conn_send_response(c, &resp);
	} else {
		Rmq__Response resp = RMQ__RESPONSE__INIT;
		Rmq__DeleteResp d = RMQ__DELETE_RESP__INIT;
		resp.id = m->req_id;
		resp.body_case = RMQ__RESPONSE__BODY_DELETE;
		resp.delete_ = &d;
		conn_send_response(c, &resp);
	}
out:
	conn_unref(c);
	free(m);
}

static void handle_meta(struct node *n, struct conn *c, Rmq__Request *req)
{
	Rmqc__Command cmd = RMQC__COMMAND__INIT;
	Rmqc__Op op = RMQC__OP__INIT;
	Rmqc__Op *opp = &op;
	Rmqc__DeclareOp d = RMQC__DECLARE_OP__INIT;
	Rmqc__UndeclareOp u = RMQC__UNDECLARE_OP__INIT;
	const char *name = req->body_case == RMQ__REQUEST__BODY_DECLARE
				   ? req->declare->name
				   : req->delete_->name;

	if (!valid_name(name)) {
		conn_send_error(c, req->id, RMQ_EINVAL,
				"queue names are 1 to 255 bytes, no control "
				"characters");
		return;
	}
	if (!check_leader(n, c, req->id, 0)) {
		return;
	}
	if (req->body_case == RMQ__REQUEST__BODY_DECLARE) {
		d.queue = (char *)name;
		if (req->declare->options != NULL) {
			d.max_length = req->declare->options->max_length;
			d.max_message_size =
				req->declare->options->max_message_size;
		}
		d.n_shards = n->cfg.shards;
		op.kind_case = RMQC__OP__KIND_DECLARE;
		op.declare = &d;
	} else {
		u.queue = (char *)name;
		op.kind_case = RMQC__OP__KIND_UNDECLARE;
		op.undeclare = &u;
	}
	cmd.ops = &opp;
	cmd.n_ops = 1;
	struct meta_request *m = calloc(1, sizeof *m);
	if (m == NULL) {
		conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
		return;
	}
	m->conn = c;
	m->req_id = req->id;
	m->type = (int)req->body_case;
	snprintf(m->name, sizeof m->name, "%s", name);
	conn_ref(c);
	int rv = shard_propose(n->shards[0], &cmd, meta_cb, m);
	if (rv != 0) {
		conn_unref(c);
		free(m);
		conn_send_error(c, req->id, rv, NULL);
	}
}

static bool shard_full(struct node *n, unsigned shard, size_t extra)
{
	uint64_t bytes =
		n->shard_bytes[shard] + extra + n->batches[shard].bytes;
	/* LMDB copy-on-write needs room for old and new pages. */
	return bytes * 2 > (uint64_t)n->cfg.map_size * 8 / 10;
}

static bool handle_publish(struct node *n, struct conn *c, Rmq__Request *req)
{
	const Rmq__PublishReq *p = req->publish;
	struct queue *q = table_get(n, p->queue);
	char msg[STORE_MAX_NAME + 64];

	if (fenced(c, p->queue, p->epoch)) {
		conn_send_error(c, req->id, RMQ_EUNAVAIL,
				"an earlier publish to this queue on this "
				"connection was refused: resend from it with "
				"a higher epoch");
		return false;
	}
	if (q == NULL || !q->placed) {
		snprintf(msg, sizeof msg, "no such queue: %s", p->queue);
		fence_publishes(c, p->queue, p->epoch, RMQ_ENOTFOUND);
		conn_send_error(c, req->id, RMQ_ENOTFOUND, msg);
		return false;
	}
	if (p->body.len > message_limit(n, q)) {
		reply_publish_error(n, c, req->id, q, RMQ_ETOOLARGE,
				    p->body.len);
		return false;
	}
	if (!check_leader(n, c, req->id, q->shard)) {
		fence_publishes(c, p->queue, p->epoch, RMQ_ENOTLEADER);
		return false;
	}
	if (q->stored && q->stored_gen != q->placement.gen) {
		snprintf(msg, sizeof msg, "queue %s is being recreated, retry",
			 q->name);
		fence_publishes(c, p->queue, p->epoch, RMQ_EUNAVAIL);
		conn_send_error(c, req->id, RMQ_EUNAVAIL, msg);
		return false;
	}
	if (shard_full(n, q->shard, p->body.len)) {
		snprintf(msg, sizeof msg,
			 "store of shard %u is full (map_size_mb)", q->shard);
		conn_send_error(c, req->id, RMQ_EFULL, msg);
		return false;
	}
	struct pending pe = {
		.type = PENDING_PUBLISH,
		.conn = c,
		.req_id = req->id,
		.queue = q,
		.req = req,
		.epoch = p->epoch,
	};
	struct batch *b = &n->batches[q->shard];
	if (batch_add(b, &pe, p->body.len) != 0) {
		fence_publishes(c, p->queue, p->epoch, RMQ_ENOMEM);
		conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
		return false;
	}
	conn_ref(c);
	if (b->n >= n->cfg.batch_max_messages ||
	    b->bytes >= n->cfg.batch_max_bytes) {
		queues_flush(n, q->shard);
	}
	return true;
}

static struct consumer *find_consumer(struct conn *c, uint64_t id)
{
	for (struct consumer *k = c->consumers; k != NULL; k = k->next) {
		if (k->id == id) {
			return k;
		}
	}
	return NULL;
}

static void reply_empty(struct conn *c, uint64_t id,
			Rmq__Response__BodyCase body)
{
	Rmq__Response resp = RMQ__RESPONSE__INIT;
	Rmq__SubscribeResp s = RMQ__SUBSCRIBE_RESP__INIT;
	Rmq__CancelResp k = RMQ__CANCEL_RESP__INIT;
	Rmq__SettleResp st = RMQ__SETTLE_RESP__INIT;
	resp.id = id;
	resp.body_case = body;
	switch (body) {
	case RMQ__RESPONSE__BODY_SUBSCRIBE:
		resp.subscribe = &s;
		break;
	case RMQ__RESPONSE__BODY_CANCEL:
		resp.cancel = &k;
		break;
	default:
		resp.settle = &st;
		break;
	}
	conn_send_response(c, &resp);
}

static void handle_subscribe(struct node *n, struct conn *c,
			     const Rmq__Request *req)
{
	const Rmq__SubscribeReq *s = req->subscribe;
	struct queue *q = table_get(n, s->queue);
	char msg[STORE_MAX_NAME + 64];

	if (q == NULL || !q->placed) {
		snprintf(msg, sizeof msg, "no such queue: %s", s->queue);
		conn_send_error(c, req->id, RMQ_ENOTFOUND, msg);
		return;
	}
	if (!check_leader(n, c, req->id, q->shard)) {
		return;
	}
	if (!q_ready(q) || !q->active) {
		snprintf(msg, sizeof msg, "queue %s is not ready yet, retry",
			 s->queue);
		conn_send_error(c, req->id, RMQ_EUNAVAIL, msg);
		return;
	}
	struct consumer *dup = find_consumer(c, s->consumer_id);
	if (dup != NULL && dup->q == q) {
		/* A retried subscribe: same consumer, maybe a new prefetch. */
		dup->prefetch = s->prefetch ? s->prefetch : 1;
		reply_empty(c, req->id, RMQ__RESPONSE__BODY_SUBSCRIBE);
		deliver(n, q);
		return;
	}
	if (dup != NULL) {
		conn_send_error(c, req->id, RMQ_EINVAL,
				"consumer id already in use on this "
				"connection");
		return;
	}
	struct consumer *k = calloc(1, sizeof *k);
	if (k == NULL) {
		conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
		return;
	}
	if (q->n_consumers == q->cap_consumers) {
		size_t cap = q->cap_consumers ? q->cap_consumers * 2 : 4;
		struct consumer **a = realloc(q->consumers, cap * sizeof *a);
		if (a == NULL) {
			free(k);
			conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
			return;
		}
		q->consumers = a;
		q->cap_consumers = cap;
	}
	k->conn = c;
	k->q = q;
	k->id = s->consumer_id;
	k->prefetch = s->prefetch ? s->prefetch : 1;
	k->next = c->consumers;
	c->consumers = k;
	q->consumers[q->n_consumers++] = k;
	LOGD("client %s: consumer %" PRIu64 " on %s (prefetch %u)", c->peer,
	     k->id, q->name, k->prefetch);
	reply_empty(c, req->id, RMQ__RESPONSE__BODY_SUBSCRIBE);
	deliver(n, q);
}

static void remove_consumer(struct node *n, struct consumer *k)
{
	struct queue *q = k->q;
	consumer_return_all(q, k);
	consumer_detach(q, k);
	conn_unlink_consumer(k->conn, k);
	free(k);
	deliver(n, q);
}

static void handle_cancel(struct node *n, struct conn *c,
			  const Rmq__Request *req)
{
	struct consumer *k = find_consumer(c, req->cancel->consumer_id);
	if (k != NULL) {
		remove_consumer(n, k);
	}
	reply_empty(c, req->id, RMQ__RESPONSE__BODY_CANCEL);
}

/* Forget an in-flight delivery of @seq, whoever holds it. */
static void settle_inflight(struct queue *q, uint64_t seq)
{
	struct consumer *holder = seqmap_del(&q->inflight, seq);
	if (holder != NULL && holder->unacked > 0) {
		holder->unacked--;
	}
}

static bool handle_settle(struct node *n, struct conn *c, Rmq__Request *req)
{
	const Rmq__SettleReq *s = req->settle;
	struct consumer *k = find_consumer(c, s->consumer_id);
	if (k == NULL) {
		conn_send_error(c, req->id, RMQ_ENOTFOUND,
				"unknown consumer on this connection");
		return false;
	}
	struct queue *q = k->q;
	if (!check_leader(n, c, req->id, q->shard)) {
		return false;
	}
	if (s->outcome == RMQ__OUTCOME__ACK) {
		n->metrics.acks += s->n_seqs;
	} else if (s->outcome == RMQ__OUTCOME__REQUEUE) {
		n->metrics.requeues += s->n_seqs;
	} else {
		n->metrics.drops += s->n_seqs;
	}
	if (s->outcome == RMQ__OUTCOME__REQUEUE) {
		for (size_t i = 0; i < s->n_seqs; i++) {
			if (seqmap_get(&q->inflight, s->seqs[i]) != NULL) {
				settle_inflight(q, s->seqs[i]);
				redeliver_add(q, s->seqs[i]);
			}
		}
		reply_empty(c, req->id, RMQ__RESPONSE__BODY_SETTLE);
		deliver(n, q);
		return false;
	}
	for (size_t i = 0; i < s->n_seqs; i++) {
		settle_inflight(q, s->seqs[i]);
		redeliver_remove(q, s->seqs[i]);
	}
	struct pending pe = {
		.type = PENDING_SETTLE,
		.conn = c,
		.req_id = req->id,
		.queue = q,
		.req = req,
	};
	if (batch_add(&n->batches[q->shard], &pe, 0) != 0) {
		conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
		return false;
	}
	conn_ref(c);
	deliver(n, q);
	return true;
}

static void fill_queue_info(struct node *n, const struct queue *q,
			    Rmq__QueueInfo *qi, Rmq__QueueOptions *o)
{
	rmq__queue_info__init(qi);
	rmq__queue_options__init(o);
	qi->name = (char *)q->name;
	qi->shard = q->shard;
	struct shard_view v;
	members_shard_view(n, q->shard, &v);
	qi->leader = v.leader;
	qi->total = q->count;
	uint64_t unacked = q->active ? q->inflight.n : 0;
	qi->unacked = unacked < q->count ? unacked : q->count;
	qi->ready = q->count - qi->unacked;
	o->max_length = q->placement.max_length;
	o->max_message_size = q->placement.max_message_size;
	qi->options = o;
}

static void handle_list(struct node *n, struct conn *c, uint64_t id,
			bool topology)
{
	Rmq__Response resp = RMQ__RESPONSE__INIT;
	Rmq__ListResp list = RMQ__LIST_RESP__INIT;
	Rmq__TopologyResp top = RMQ__TOPOLOGY_RESP__INIT;
	size_t nq = 0;
	Rmq__QueueInfo *qi = calloc(n->queues.n + 1, sizeof *qi);
	Rmq__QueueOptions *qo = calloc(n->queues.n + 1, sizeof *qo);
	Rmq__QueueInfo **qp = calloc(n->queues.n + 1, sizeof *qp);
	Rmq__NodeInfo ni[NODE_MAX_PEERS];
	Rmq__NodeInfo *nip[NODE_MAX_PEERS];
	Rmq__ShardInfo si[NODE_MAX_SHARDS];
	Rmq__ShardInfo *sip[NODE_MAX_SHARDS];
	uint64_t replicas[NODE_MAX_SHARDS][16];

	if (qi == NULL || qo == NULL || qp == NULL) {
		conn_send_error(c, id, RMQ_ENOMEM, NULL);
		goto out;
	}
	TABLE_FOREACH(n, q)
	{
		if (q->placed) {
			fill_queue_info(n, q, &qi[nq], &qo[nq]);
			qp[nq] = &qi[nq];
			nq++;
		}
	}
	resp.id = id;
	if (!topology) {
		list.queues = qp;
		list.n_queues = nq;
		resp.body_case = RMQ__RESPONSE__BODY_LIST;
		resp.list = &list;
		conn_send_response(c, &resp);
		goto out;
	}
	size_t n_nodes = 0;
	for (size_t i = 0; i < n->n_peers; i++) {
		if (n->peers[i].removed) {
			continue; /* removed from the cluster (members.c) */
		}
		rmq__node_info__init(&ni[n_nodes]);
		ni[n_nodes].id = n->peers[i].id;
		ni[n_nodes].client_address = n->peers[i].client_address;
		ni[n_nodes].peer_address = n->peers[i].peer_address;
		nip[n_nodes] = &ni[n_nodes];
		n_nodes++;
	}
	for (unsigned i = 0; i < n->n_shards; i++) {
		struct shard *s = n->shards[i];
		struct shard_view v;
		members_shard_view(n, i, &v);
		rmq__shard_info__init(&si[i]);
		si[i].id = i;
		si[i].leader = v.leader;
		si[i].term = v.term;
		si[i].commit_index = shard_commit_index(s);
		si[i].applied_index = shard_applied_index(s);
		memcpy(replicas[i], v.voters, v.n_voters * sizeof v.voters[0]);
		si[i].n_replicas = v.n_voters;
		si[i].replicas = replicas[i];
		sip[i] = &si[i];
	}
	top.node_id = n->cfg.id;
	top.cluster_name = n->cfg.cluster_name;
	top.nodes = nip;
	top.n_nodes = n_nodes;
	top.shards = sip;
	top.n_shards = n->n_shards;
	top.queues = qp;
	top.n_queues = nq;
	resp.body_case = RMQ__RESPONSE__BODY_TOPOLOGY;
	resp.topology = &top;
	conn_send_response(c, &resp);
out:
	free(qi);
	free(qo);
	free(qp);
}

static void handle_hello(struct node *n, struct conn *c, uint64_t id)
{
	Rmq__Response resp = RMQ__RESPONSE__INIT;
	Rmq__HelloResp h = RMQ__HELLO_RESP__INIT;
	h.node_id = n->cfg.id;
	h.cluster_name = n->cfg.cluster_name;
	h.max_frame = n->cfg.max_frame;
	h.max_message_size = n->cfg.max_message_size;
	resp.id = id;
	resp.body_case = RMQ__RESPONSE__BODY_HELLO;
	resp.hello = &h;
	conn_send_response(c, &resp);
}

static void handle_ping(struct conn *c, uint64_t id)
{
	Rmq__Response resp = RMQ__RESPONSE__INIT;
	Rmq__PingResp p = RMQ__PING_RESP__INIT;
	resp.id = id;
	resp.body_case = RMQ__RESPONSE__BODY_PING;
	resp.ping = &p;
	conn_send_response(c, &resp);
}

void queues_request(struct node *n, struct conn *c, Rmq__Request *req)
{
	bool kept = false;
	if (n->stopping) {
		conn_send_error(c, req->id, RMQ_ESHUTDOWN,
				"node is shutting down");
		rmq__request__free_unpacked(req, NULL);
		return;
	}
	if (members_request(n, c, req)) {
		rmq__request__free_unpacked(req, NULL);
		return;
	}
	switch (req->body_case) {
	case RMQ__REQUEST__BODY_HELLO:
		handle_hello(n, c, req->id);
		break;
	case RMQ__REQUEST__BODY_PING:
		handle_ping(c, req->id);
		break;
	case RMQ__REQUEST__BODY_TOPOLOGY:
		handle_list(n, c, req->id, true);
		break;
	case RMQ__REQUEST__BODY_LIST:
		handle_list(n, c, req->id, false);
		break;
	case RMQ__REQUEST__BODY_DECLARE:
	case RMQ__REQUEST__BODY_DELETE:
		handle_meta(n, c, req);
		break;
	case RMQ__REQUEST__BODY_PUBLISH:
		n->metrics.publishes++;
		kept = handle_publish(n, c, req);
		if (!kept) {
			n->metrics.publish_errors++; /* answered at once */
		}
		break;
	case RMQ__REQUEST__BODY_SUBSCRIBE:
		handle_subscribe(n, c, req);
		break;
	case RMQ__REQUEST__BODY_CANCEL:
		handle_cancel(n, c, req);
		break;
	case RMQ__REQUEST__BODY_SETTLE:
		kept = handle_settle(n, c, req);
		break;
	default:
		conn_send_error(c, req->id, RMQ_EINVAL, "unknown request");
		break;
	}
	if (!kept) {
		rmq__request__free_unpacked(req, NULL);
	}
}

void queues_conn_closed(struct node *n, struct conn *c)
{
	while (c->consumers != NULL) {
		remove_consumer(n, c->consumers);
	}
}

void queues_stats(struct node *n, queues_stats_cb cb, void *arg)
{
	TABLE_FOREACH(n, q)
	{
		if (!q->placed) {
			continue;
		}
		struct queue_stats st = {
			.name = q->name,
			.shard = q->shard,
			.leader = shard_leader_id(n->shards[q->shard]),
			.leading = q->active,
			.total = q->count,
			.bytes = q->bytes,
			.consumers = q->n_consumers,
		};
		uint64_t unacked = q->active ? q->inflight.n : 0;
		st.unacked = unacked < q->count ? unacked : q->count;
		st.ready = q->count - st.unacked;
		cb(arg, &st);
	}
}

/* ---- raft hooks ------------------------------------------------------- */

/* Stored bytes of @q as counted for the admission check of its shard. */
static uint64_t footprint(const struct queue *q)
{
	return q->stored ? q->bytes + q->count * 128 : 0;
}

/* Re-read our replica's state of @q on its shard (@t is a read txn on
 * that shard's store). */
static void refresh_stored(struct node *n, struct store_txn *t, struct queue *q)
{
	struct store_queue sq;
	n->shard_bytes[q->shard] -= footprint(q);
	if (store_queue_get(t, q->name, &sq) == 0) {
		q->stored = true;
		q->stored_gen = sq.gen;
		q->qid = sq.qid;
		q->count = sq.count;
		q->bytes = sq.bytes;
		q->stored_delivered_upto = sq.delivered_upto;
		n->shard_bytes[q->shard] += footprint(q);
	} else {
		q->stored = false;
		q->count = q->bytes = 0;
	}
	if (q->active && !q_ready(q)) {
		queue_deactivate(q, RMQ_ENOTFOUND, "queue deleted");
	}
}

static void refresh_stored_now(struct node *n, struct queue *q)
{
	struct store_txn *t;
	if (q->shard == 0 || q->shard >= n->n_shards ||
	    store_begin(shard_store(n->shards[q->shard]), false, &t) != 0) {
		return;
	}
	refresh_stored(n, t, q);
	store_abort(t);
}

/* Adopt the meta shard's placement (or tombstone) @p for @q. A state our
 * replica holds on another shard is left to that shard's reconciliation. */
static void queue_set_placement(struct node *n, struct queue *q,
				const struct store_placement *p)
{
	bool moved = p->shard != q->shard;
	if (moved) {
		n->shard_bytes[q->shard] -= footprint(q);
		q->stored = false;
		q->count = q->bytes = 0;
	}
	q->placement = *p;
	q->placed = !p->deleted;
	q->shard = p->shard;
	if (q->active && (moved || !q_ready(q))) {
		queue_deactivate(q, RMQ_ENOTFOUND,
				 q->placed ? "queue moved" : "queue deleted");
	}
	if (moved && !p->deleted) {
		refresh_stored_now(n, q);
	}
}

static const char *op_queue(const Rmqc__Op *op)
{
	switch (op->kind_case) {
	case RMQC__OP__KIND_PUBLISH:
		return op->publish->queue;
	case RMQC__OP__KIND_SETTLE:
		return op->settle->queue;
	case RMQC__OP__KIND_CREATE:
		return op->create->queue;
	case RMQC__OP__KIND_DELETE:
		return op->delete_->queue;
	default:
		return NULL;
	}
}

static void peer_from_record(struct node *n, const struct store_node *sn)
{
	struct peer_info *p = node_peer(n, sn->id, true);
	if (p == NULL) {
		return;
	}
	if (sn->client_address[0] == '\0') {
		/* A removal tombstone (members.c). The addresses we know stay
		 * for redirects; the node is not registered again from its
		 * peer connections, only by joining again. */
		p->removed = true;
		p->registered = true;
		return;
	}
	p->removed = false;
	if (p->client_address[0] == '\0' ||
	    strcmp(p->client_address, sn->client_address) == 0) {
		snprintf(p->client_address, sizeof p->client_address, "%s",
			 sn->client_address);
		snprintf(p->peer_address, sizeof p->peer_address, "%s",
			 sn->peer_address);
		p->registered = true;
	}
}

static void applied_meta(struct node *n, const struct fsm_result *r)
{
	for (size_t i = 0; i < r->cmd->n_ops; i++) {
		const Rmqc__Op *op = r->cmd->ops[i];
		const struct fsm_op_result *o = &r->ops[i];
		if (o->status != 0) {
			continue;
		}
		if (op->kind_case == RMQC__OP__KIND_DECLARE) {
			struct queue *q = table_add(n, op->declare->queue);
			if (q != NULL) {
				queue_set_placement(n, q, &o->placement);
			}
		} else if (op->kind_case == RMQC__OP__KIND_UNDECLARE) {
			struct queue *q = table_get(n, op->undeclare->queue);
			if (q != NULL) {
				struct store_placement p = q->placement;
				p.deleted = true;
				p.gen = r->index;
				queue_set_placement(n, q, &p);
			}
		} else if (op->kind_case == RMQC__OP__KIND_NODE) {
			struct store_node sn;
			memset(&sn, 0, sizeof sn);
			sn.id = op->node->id;
			snprintf(sn.client_address, sizeof sn.client_address,
				 "%s", op->node->client_address);
			snprintf(sn.peer_address, sizeof sn.peer_address, "%s",
				 op->node->peer_address);
			peer_from_record(n, &sn);
			members_node_applied(n, sn.id,
					     sn.client_address[0] == '\0');
		}
	}
}

void queues_applied(struct node *n, struct shard *s, const struct fsm_result *r)
{
	struct store_txn *t;
	unsigned id = shard_id(s);

	if (r->skipped) {
		return;
	}
	if (id == 0) {
		applied_meta(n, r);
		return;
	}
	if (store_begin(shard_store(s), false, &t) != 0) {
		return;
	}
	for (size_t i = 0; i < r->cmd->n_ops; i++) {
		const Rmqc__Op *op = r->cmd->ops[i];
		const char *name = op_queue(op);
		struct queue *q = name != NULL ? table_get(n, name) : NULL;
		if (q == NULL || q->shard != id) {
			continue; /* not placed here (yet): reconciliation */
		}
		bool was_ready = q_ready(q);
		refresh_stored(n, t, q);
		if (shard_role(s) == SHARD_LEADER) {
			if (q_ready(q) && !was_ready && !q->active) {
				queue_activate(q);
			}
			if (op->kind_case == RMQC__OP__KIND_SETTLE) {
				for (size_t k = 0; k < op->settle->n_remove;
				     k++) {
					uint64_t seq = op->settle->remove[k];
					settle_inflight(q, seq);
					redeliver_remove(q, seq);
				}
			}
		}
		if (q->active) {
			deliver(n, q);
		}
	}
	store_abort(t);
}

void queues_role(struct node *n, struct shard *s, enum shard_role role)
{
	unsigned id = shard_id(s);
	if (id == 0) {
		return;
	}
	TABLE_FOREACH(n, q)
	{
		if (q->shard != id) {
			continue;
		}
		if (role == SHARD_LEADER && q_ready(q) && !q->active) {
			queue_activate(q);
		} else if (role != SHARD_LEADER && q->active) {
			queue_deactivate(q, RMQ_ENOTLEADER,
					 "leadership moved, re-subscribe");
		}
	}
}

static int load_placement(void *arg, const char *name,
			  const struct store_placement *p)
{
	struct node *n = arg;
	struct queue *q = table_add(n, name);
	if (q == NULL) {
		return RMQ_ENOMEM;
	}
	queue_set_placement(n, q, p);
	return 0;
}

static int load_node(void *arg, const struct store_node *sn)
{
	peer_from_record(arg, sn);
	return 0;
}

static int load_meta(struct node *n)
{
	struct store_txn *t;
	int rv = store_begin(shard_store(n->shards[0]), false, &t);
	if (rv != 0) {
		return rv;
	}
	rv = store_placement_foreach(t, load_placement, n);
	if (rv == 0) {
		rv = store_node_foreach(t, load_node, n);
	}
	store_abort(t);
	return rv;
}

/* Recount what our replica of data shard @id holds for the queues placed
 * on it. */
static int load_shard(struct node *n, unsigned id)
{
	struct store_txn *t;
	int rv = store_begin(shard_store(n->shards[id]), false, &t);
	if (rv != 0) {
		return rv;
	}
	n->shard_bytes[id] = 0;
	TABLE_FOREACH(n, q)
	{
		if (q->shard == id) {
			q->stored = false; /* its bytes were reset above */
			refresh_stored(n, t, q);
		}
	}
	store_abort(t);
	return 0;
}

/* A snapshot replaced the state of shard @s: rebuild our view of it. */
void queues_restored(struct node *n, struct shard *s)
{
	unsigned id = shard_id(s);
	int rv;
	if (id == 0) {
		rv = load_meta(n);
		for (unsigned i = 1; i < n->n_shards && rv == 0; i++) {
			rv = load_shard(n, i);
		}
	} else {
		rv = load_shard(n, id);
	}
	if (rv != 0) {
		LOGE("shard %u: rebuilding state after a snapshot: %s", id,
		     codec_strerror(rv));
	}
}

/* ---- periodic work ------------------------------------------------------ */

struct reconcile {
	struct node *node;
	unsigned shard;
};

static void reconcile_cb(void *data, int status, const struct fsm_result *r)
{
	struct reconcile *rc = data;
	(void)status;
	(void)r;
	rc->node->reconciling[rc->shard] = false;
	free(rc);
}

struct reconcile_scan {
	struct node *n;
	unsigned shard;
	Rmqc__Op *ops;
	Rmqc__DeleteQueueOp *del;
	char (*names)[STORE_MAX_NAME + 1];
	size_t k, cap;
};

/* A state stored on this shard is deleted once the meta shard (as our
 * node knows it) has a newer incarnation or a delete of that name. A name
 * our node has not heard of is left alone: our meta replica may lag. */
static int reconcile_visit(void *arg, const char *name,
			   const struct store_queue *sq)
{
	struct reconcile_scan *rs = arg;
	struct queue *q = table_get(rs->n, name);
	if (rs->k == rs->cap || q == NULL) {
		return 0;
	}
	if (q->placement.gen <= sq->gen) {
		return 0; /* current (or newer than what we know) */
	}
	snprintf(rs->names[rs->k], sizeof rs->names[rs->k], "%s", name);
	rmqc__delete_queue_op__init(&rs->del[rs->k]);
	rs->del[rs->k].queue = rs->names[rs->k];
	rmqc__op__init(&rs->ops[rs->k]);
	rs->ops[rs->k].kind_case = RMQC__OP__KIND_DELETE;
	rs->ops[rs->k].delete_ = &rs->del[rs->k];
	rs->k++;
	return 0;
}

#define RECONCILE_MAX 64

/* On a shard we lead: delete states of deleted or superseded incarnations,
 * then create the queues the meta shard placed here. */
static void reconcile_shard(struct node *n, unsigned id)
{
	Rmqc__Op ops[RECONCILE_MAX];
	Rmqc__Op *opp[RECONCILE_MAX];
	Rmqc__DeleteQueueOp del[RECONCILE_MAX];
	Rmqc__CreateQueueOp cr[RECONCILE_MAX];
	static char names[RECONCILE_MAX][STORE_MAX_NAME + 1];
	struct reconcile_scan rs = {n, id, ops, del, names, 0, RECONCILE_MAX};
	struct store_txn *t;

	if (n->reconciling[id] ||
	    store_begin(shard_store(n->shards[id]), false, &t) != 0) {
		return;
	}
	store_queue_foreach(t, reconcile_visit, &rs);
	store_abort(t);
	size_t k = rs.k;
	if (k == 0) {
		TABLE_FOREACH(n, q)
		{
			if (k == RECONCILE_MAX) {
				break;
			}
			if (!q->placed || q->shard != id || q->stored) {
				continue;
			}
			rmqc__create_queue_op__init(&cr[k]);
			cr[k].queue = q->name;
			cr[k].max_length = q->placement.max_length;
			cr[k].max_message_size = q->placement.max_message_size;
			cr[k].gen = q->placement.gen;
			rmqc__op__init(&ops[k]);
			ops[k].kind_case = RMQC__OP__KIND_CREATE;
			ops[k].create = &cr[k];
			k++;
		}
	}
	if (k == 0) {
		return;
	}
	for (size_t i = 0; i < k; i++) {
		opp[i] = &ops[i];
	}
	Rmqc__Command cmd = RMQC__COMMAND__INIT;
	cmd.ops = opp;
	cmd.n_ops = k;
	struct reconcile *rc = malloc(sizeof *rc);
	if (rc == NULL) {
		return;
	}
	rc->node = n;
	rc->shard = id;
	if (shard_propose(n->shards[id], &cmd, reconcile_cb, rc) != 0) {
		free(rc);
		return;
	}
	n->reconciling[id] = true;
}

static bool meta_reg_inflight;

static void register_cb(void *data, int status, const struct fsm_result *r)
{
	(void)data;
	(void)status;
	(void)r;
	meta_reg_inflight = false;
}

/* On the meta leader: record node addresses learned from peers. */
static void register_nodes(struct node *n)
{
	Rmqc__Op ops[NODE_MAX_PEERS];
	Rmqc__Op *opp[NODE_MAX_PEERS];
	Rmqc__NodeOp no[NODE_MAX_PEERS];
	size_t k = 0;

	if (meta_reg_inflight) {
		return;
	}
	for (size_t i = 0; i < n->n_peers; i++) {
		struct peer_info *p = &n->peers[i];
		if (p->registered || p->removed ||
		    p->client_address[0] == '\0') {
			continue;
		}
		rmqc__op__init(&ops[k]);
		rmqc__node_op__init(&no[k]);
		no[k].id = p->id;
		no[k].client_address = p->client_address;
		no[k].peer_address = p->peer_address;
		ops[k].kind_case = RMQC__OP__KIND_NODE;
		ops[k].node = &no[k];
		opp[k] = &ops[k];
		k++;
	}
	if (k == 0) {
		return;
	}
	Rmqc__Command cmd = RMQC__COMMAND__INIT;
	cmd.ops = opp;
	cmd.n_ops = k;
	if (shard_propose(n->shards[0], &cmd, register_cb, n) == 0) {
		meta_reg_inflight = true;
	}
}

void queues_tick(struct node *n)
{
	for (unsigned i = 1; i < n->n_shards; i++) {
		if (shard_role(n->shards[i]) == SHARD_LEADER) {
			reconcile_shard(n, i);
		}
	}
	TABLE_FOREACH(n, q)
	{
		if (q->active && q->n_consumers > 0) {
			deliver(n, q); /* after a failed horizon raise, say */
		}
	}
	if (shard_role(n->shards[0]) == SHARD_LEADER) {
		register_nodes(n);
	}
	members_tick(n);
}

/* ---- load and close ----------------------------------------------------- */

int queues_load(struct node *n)
{
	int rv = load_meta(n);
	for (unsigned i = 1; i < n->n_shards && rv == 0; i++) {
		rv = load_shard(n, i);
	}
	return rv;
}

void queues_close(struct node *n)
{
	for (unsigned i = 0; i < NODE_MAX_SHARDS; i++) {
		struct batch *b = &n->batches[i];
		fail_items(n, b->items, b->n, RMQ_ESHUTDOWN, "shutting down");
		free(b->items);
		free(b->marks);
		memset(b, 0, sizeof *b);
	}
	TABLE_FOREACH(n, q)
	{
		queue_deactivate(q, RMQ_ESHUTDOWN, "shutting down");
		queue_free(q);
	}
	free(n->queues.buckets);
	memset(&n->queues, 0, sizeof n->queues);
}
