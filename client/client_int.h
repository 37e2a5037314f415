/* Internal structures of libraftmq, shared by client.c (public API, the I/O
 * thread, routing and retries), cconn.c (one TCP connection per server
 * address) and cutil.c (pure helpers).
 *
 * Threads: fields marked "io" belong to the I/O thread; fields marked "mu"
 * are protected by rmq_client.mu and shared with application threads;
 * everything else is immutable once the client is running. */
#ifndef RMQ_CLIENT_INT_H
#define RMQ_CLIENT_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "codec.h"
#include "raftmq.h"

#define container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define RMQ_ADDR_MAX 64
#define RMQ_MSG_MAX 256
#define RMQ_TICK_MS 5          /* settle batching, deadlines, backoffs */
#define RMQ_TOPO_MIN_GAP_MS 50 /* between two topology refreshes */
/* After a NOT_FOUND, how long a queue missing from the topology is looked
 * up again before the publish fails. */
#define RMQ_NOTFOUND_GRACE_MS 1000
#define RMQ_NOTFOUND_RETRY_MS \
	10000 /* a lagging node may not know a new queue yet */

/* ---- Intrusive doubly-linked list ---------------------------------------- */

struct link {
	struct link *prev;
	struct link *next;
};

static inline void link_init(struct link *l)
{
	l->prev = l;
	l->next = l;
}

static inline bool list_empty(const struct link *h)
{
	return h->next == h;
}

/* Insert @l just before @pos (at the tail when @pos is the head). */
static inline void list_insert_before(struct link *pos, struct link *l)
{
	l->next = pos;
	l->prev = pos->prev;
	pos->prev->next = l;
	pos->prev = l;
}

static inline void list_push_back(struct link *h, struct link *l)
{
	list_insert_before(h, l);
}

static inline void list_remove(struct link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	link_init(l);
}

/* Move every element of @from to the tail of @to. */
static inline void list_splice_back(struct link *to, struct link *from)
{
	if (list_empty(from)) {
		return;
	}
	struct link *first = from->next;
	struct link *last = from->prev;
	first->prev = to->prev;
	to->prev->next = first;
	last->next = to;
	to->prev = last;
	link_init(from);
}

/* ---- Growable byte buffer and u64 vector ---------------------------------- */

struct buf {
	uint8_t *data; /* owned */
	size_t len;
	size_t cap;
};

struct u64vec {
	uint64_t *v; /* owned */
	size_t n;
	size_t cap;
};

int cutil_buf_reserve(struct buf *b, size_t extra);
int cutil_u64vec_push(struct u64vec *v, uint64_t x);
int cutil_u64vec_append(struct u64vec *v, const uint64_t *xs, size_t n);

/* ---- Wire requests -------------------------------------------------------- */

enum req_kind {
	REQ_HELLO,
	REQ_TOPOLOGY,
	REQ_PUBLISH,
	REQ_OP, /* owner is a struct op; tag is the target index or -1 */
	REQ_SUBSCRIBE,
	REQ_SETTLE,
	REQ_CANCEL,
	REQ_PING, /* owner is the struct cconn */
};

/* One request written on a connection and waiting for its Response. The
 * owner is detached (set to NULL) when it gives up early; the late answer
 * is then dropped. Recycled through rmq_client.req_pool. */
struct req {
	struct link link; /* in conn.reqs or rmq_client.req_pool */
	uint64_t id;
	enum req_kind kind;
	void *owner;
	struct cconn *conn;
	int tag;
};

/* ---- Connections (cconn.c) ------------------------------------------------ */

enum cconn_state {
	CONN_IDLE,       /* not connected; next attempt at next_attempt */
	CONN_RESOLVING,  /* uv_getaddrinfo in flight */
	CONN_CONNECTING, /* uv_tcp_connect in flight, timer = connect timeout */
	CONN_CONNECTED,
	CONN_CLOSING, /* uv_close in flight on the tcp handle */
};

struct cconn {
	struct rmq_client *c;
	struct link link; /* in rmq_client.conns */
	char addr[RMQ_ADDR_MAX];
	uint64_t node_id; /* 0 until Hello or topology tells */
	enum cconn_state state;
	uv_tcp_t tcp;
	uv_connect_t connect_req;
	uv_getaddrinfo_t gai;
	uv_timer_t timer;
	uint64_t next_attempt; /* monotonic ms */
	unsigned backoff_ms;
	unsigned failed_attempts; /* consecutive */
	bool attempted;           /* at least one attempt finished */
	bool ready;               /* the node answered Hello on this socket */
	bool ping_inflight;
	uint64_t last_rx;      /* monotonic ms of the last byte received */
	uint64_t last_fail_at; /* when the last attempt failed */
	struct frame_reader fr;
	struct buf out;  /* frames waiting for the next write */
	struct buf wbuf; /* frames being written */
	bool writing;
	uv_write_t wreq;
	struct link reqs; /* in flight, in send order */
	char rbuf[65536];
};

struct cconn *cconn_get(struct rmq_client *c, const char *addr);
/* Start an attempt if idle and the backoff elapsed. */
void cconn_ensure(struct cconn *x);
/* Write @r (its id is set here). With @req non-NULL the request is tracked
 * until its answer; on error nothing is queued and @req is not tracked. */
int cconn_send(struct cconn *x, struct req *req, Rmq__Request *r);
/* Drop the connection: in-flight requests complete with RMQ_ECONNECT.
 * RMQ_ETIMEDOUT (silent node) counts as a failed attempt: backoff, and
 * routing asks the topology elsewhere instead of waiting for it. */
void cconn_fail(struct cconn *x, int err);
/* Connected and the node answered Hello: requests will be served. */
bool cconn_ready(const struct cconn *x);
/* Hello answered: the attempt counts as good. */
void cconn_hello_ok(struct cconn *x);
/* Shutdown: close every handle of @x. */
void cconn_shutdown(struct cconn *x);
void cconn_free(struct cconn *x);

/* ---- The client ------------------------------------------------------------ */

struct shard_state {
	uint32_t id;
	uint64_t leader;   /* node id, 0 unknown */
	uint64_t retry_at; /* no request to it before this time (backoff) */
	uint64_t blocked;  /* pump pass in which it was found unroutable */
	uint64_t epoch;    /* resend epoch of its publishes, from 1 */
};

struct node_addr {
	uint64_t id;
	char addr[RMQ_ADDR_MAX];
};

struct declared {
	char *name; /* owned */
	uint32_t shard;
};

struct rmq_client {
	struct rmq_options o; /* string fields point to the copies below */
	char *servers;        /* owned */
	char producer_id[72];
	char **seeds; /* owned */
	int n_seeds;
	uv_loop_t loop;
	uv_async_t async;
	uv_timer_t tick;
	uv_thread_t thread;
	uv_thread_t io_tid;

	pthread_mutex_t mu;
	pthread_cond_t cond; /* CLOCK_MONOTONIC; broadcast on every change */
	struct link in_pubs; /* mu: accepted, not yet seen by the I/O thread */
	struct link in_ops;  /* mu: blocking requests */
	unsigned inflight;   /* mu: accepted publishes not yet completed */
	uint64_t unsettled;  /* mu: acks/nacks not yet applied */
	bool closing;        /* mu */
	bool settle_now;     /* mu: send settlements without waiting */

	/* io */
	bool shutting_down;
	struct link conns;
	struct link pending; /* pubs to send, by producer seq */
	struct link sent;    /* pubs waiting for their confirm */
	size_t n_pending;
	struct link ops;
	struct link consumers;
	struct link req_pool;
	uint64_t next_req_id;
	uint64_t next_pseq;
	uint64_t next_consumer_id;
	uint32_t max_frame;
	uint64_t rng;
	uint64_t pass;
	Rmq__TopologyResp *topo; /* owned */
	Rmq__QueueInfo **qidx;   /* owned array: topo->queues sorted by name */
	size_t nq;
	struct shard_state *shards;
	size_t n_shards;
	struct node_addr *nodes;
	size_t n_nodes;
	struct declared *decl;
	size_t n_decl;
	uint64_t topo_gen; /* count of topology answers applied */
	bool topo_want;
	bool topo_inflight;
	unsigned topo_turn; /* rotates topology requests over the nodes */
	uint64_t topo_next_at;
	char cluster_name[64];
};

/* ---- Client (client.c): entry points used by cconn.c --------------------- */

/* Run every state machine once: send what can be sent. */
void client_pump(struct rmq_client *c);

uint64_t client_now(void);
void client_conn_up(struct rmq_client *c, struct cconn *x);
void client_conn_down(struct rmq_client *c, struct cconn *x, int err);
/* Takes ownership of @f. */
void client_frame(struct rmq_client *c, struct cconn *x, Rmq__ServerFrame *f);
void client_req_free(struct rmq_client *c, struct req *r);
/* Completes @r (already unlinked from its conn) with @resp or @err. */
void client_req_done(struct rmq_client *c, struct req *r, Rmq__ServerFrame *f,
		     int err);

/* ---- Pure helpers (cutil.c) ----------------------------------------------- */

/* Split "h:p,h:p" into a malloc'd array of malloc'd "h:p" strings (spaces
 * trimmed, empty items skipped). Returns the count (> 0) or RMQ_EINVAL /
 * RMQ_ENOMEM. Release with cutil_free_servers(). */
int cutil_parse_servers(const char *list, char ***out);
void cutil_free_servers(char **v, int n);
/* Split "host:port" (also "[v6]:port"). 0 or RMQ_EINVAL. */
int cutil_split_addr(const char *addr, char *host, size_t hostsz, int *port);
/* A random hex id of @n chars (n even) into @out (n + 1 bytes). */
void cutil_random_hex(char *out, size_t n);

#endif /* RMQ_CLIENT_INT_H */
