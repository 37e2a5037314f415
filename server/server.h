/* server: the raftmqd node — its shards, client connections, request
 * dispatch, publish batching and delivery.
 *
 * Threads: everything here runs on the node's single loop thread.
 *
 * Data flow of a publish: conn.c reads and decodes a frame and calls
 * queues_request(); a publish for a queue whose shard we lead joins the
 * shard's pending batch; at the end of the loop iteration (uv_prepare)
 * node.c flushes each shard's batch as one raft entry; when raft applies
 * it, the proposal callback answers every publish of the batch. */
#ifndef RMQ_SERVER_H
#define RMQ_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "codec.h"
#include "config.h"
#include "http.h"
#include "metrics.h"
#include "shard.h"
#include "transport.h"

#define NODE_MAX_SHARDS 33 /* meta + 32 data shards */
#define NODE_MAX_PEERS 64

struct node;
struct conn;
struct queue;
struct consumer;

/* ---- conn.c ---------------------------------------------------------- */

struct fence {
	char *queue; /* owned */
	uint64_t epoch;
};

struct conn {
	struct node *node;
	uv_tcp_t tcp;
	struct frame_reader reader;
	uint8_t *out; /* owned: frames waiting to be written */
	size_t out_len, out_cap;
	uint8_t *wbuf; /* owned: frames being written */
	size_t wbuf_len;
	uv_write_t wreq;
	bool writing;
	bool closing; /* no more reads or requests */
	bool closed;  /* uv_close called */
	bool close_after_flush;
	unsigned refs;              /* the connection list + pending requests */
	struct consumer *consumers; /* owned list */
	/* Per queue: publishes of epoch <= fence are refused, because one
	 * of them was refused with a retryable error and must not be
	 * overtaken (see fence_publishes in queues.c). Few and rare. */
	struct fence *fences; /* owned */
	size_t n_fences;
	struct conn *prev, *next;
	char peer[64];
};

int conn_accept(struct node *n, uv_stream_t *server);
/* Queue @f for writing; dropped silently if the conn is closing. */
void conn_send(struct conn *c, const Rmq__ServerFrame *f);
void conn_send_response(struct conn *c, Rmq__Response *r);
void conn_send_error(struct conn *c, uint64_t id, int err, const char *msg);
/* Write what is queued (called each loop iteration). */
void conn_flush(struct conn *c);
/* Stop reading, flush, then close. */
void conn_shutdown(struct conn *c);
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
bool conn_alive(const struct conn *c);

/* ---- queues.c -------------------------------------------------------- */

/* A request waiting in a shard batch or a raft proposal. */
struct pending {
	int type;          /* PENDING_PUBLISH, PENDING_SETTLE */
	struct conn *conn; /* ref held */
	uint64_t req_id;
	struct queue *queue;
	Rmq__Request *req; /* owned until the batch is encoded */
	size_t op;         /* index of its op in the command */
	size_t msg;        /* PUBLISH: index within the op's messages */
	uint64_t epoch;    /* PUBLISH: the client's resend epoch */
};

struct batch {
	struct pending *items; /* owned */
	size_t n, cap;
	size_t bytes;
	struct queue **marks; /* owned: queues whose delivery horizon moves */
	size_t n_marks, cap_marks;
};

/* Route and answer one decoded request; takes ownership of @req. */
void queues_request(struct node *n, struct conn *c, Rmq__Request *req);
/* Propose the batch of shard @i if it has items. */
void queues_flush(struct node *n, unsigned i);
/* A connection is going away: return its deliveries, drop consumers. */
void queues_conn_closed(struct node *n, struct conn *c);
/* Raft hooks. */
void queues_applied(struct node *n, struct shard *s,
		    const struct fsm_result *r);
void queues_role(struct node *n, struct shard *s, enum shard_role role);
/* A snapshot replaced the state of @s: rebuild the node's view of it. */
void queues_restored(struct node *n, struct shard *s);
/* Periodic work: create/delete queues in shards we lead, register nodes. */
void queues_tick(struct node *n);
/* What the admin API shows of a queue (valid during the callback). */
struct queue_stats {
	const char *name;
	uint32_t shard;
	uint64_t leader;  /* node leading its shard, 0 if unknown */
	bool leading;     /* this node serves it: unacked is exact */
	uint64_t ready;   /* stored and not in flight */
	uint64_t unacked; /* delivered, not settled (0 unless leading) */
	uint64_t total;   /* stored messages */
	uint64_t bytes;   /* stored body bytes */
	size_t consumers; /* attached here (0 unless leading) */
};
typedef void (*queues_stats_cb)(void *arg, const struct queue_stats *st);
/* Call @cb for every queue the meta shard knows. */
void queues_stats(struct node *n, queues_stats_cb cb, void *arg);
int queues_load(struct node *n);
void queues_close(struct node *n);

/* ---- node.c ---------------------------------------------------------- */

struct peer_info {
	uint64_t id;
	char client_address[64];
	char peer_address[64];
	bool registered; /* meta store has these addresses */
	bool removed;    /* the meta store's record is a removal tombstone */
};

struct queue_table {
	struct queue **buckets; /* owned */
	size_t n_buckets;
	size_t n;
};

struct node {
	uv_loop_t *loop;
	struct config cfg;
	uint64_t cluster_id;
	struct peer_net *net;
	struct shard *shards[NODE_MAX_SHARDS];
	unsigned n_shards; /* meta + data */
	unsigned n_open;   /* shards not yet closed */
	struct batch batches[NODE_MAX_SHARDS];
	uv_tcp_t listener;
	uv_signal_t sigterm, sigint;
	uv_prepare_t prepare;
	uv_timer_t tick;
	struct conn *conns;
	struct peer_info peers[NODE_MAX_PEERS];
	size_t n_peers;
	struct queue_table queues;
	uint64_t shard_bytes[NODE_MAX_SHARDS]; /* stored, for admission */
	bool reconciling[NODE_MAX_SHARDS];     /* a reconcile entry in flight */
	bool fatal;                            /* a shard stopped applying */
	uint64_t started_ms;
	bool serving; /* the client listener is up */
	bool joined;  /* joined a running cluster (--join), not bootstrapped */
	struct members *members; /* owned: see members.c */
	bool stopping;
	int exit_code;
	/* Observability (admin.c renders them). */
	struct metrics metrics;
	struct lat_hist append_lat[NODE_MAX_SHARDS]; /* propose → applied */
	struct lat_hist apply_lat[NODE_MAX_SHARDS];  /* FSM apply of 1 entry */
	struct http *http; /* owned; NULL when http_address is empty */
};

/* ---- members.c: membership, shard replicas and leader balance ------------
 *
 * Members are the servers of the meta shard's Raft configuration; every
 * member replicates every shard. Each shard's leader moves its own
 * configuration towards the meta shard's (add joining nodes, then promote
 * them, then remove leaving ones), and leaders are spread evenly. */
int members_init(struct node *n);
void members_close(struct node *n);
/* Periodic work (every tick). */
void members_tick(struct node *n);
/* Handle an admin request (join, node list/add/remove, shard transfer/
 * move); returns false if @req is not one of them. Does not take @req. */
bool members_request(struct node *n, struct conn *c, const Rmq__Request *req);
/* A NodeOp was applied on the meta shard. */
void members_node_applied(struct node *n, uint64_t id, bool removed);

/* ---- join.c ------------------------------------------------------------ */

/* Register node cfg->id with the cluster reached through cfg->join (see
 * join.c). Blocking; called before the loop runs. */
int join_cluster(const struct config *cfg, uint64_t *cluster_id,
		 unsigned *shards);

int node_run(const struct config *cfg);
struct peer_info *node_peer(struct node *n, uint64_t id, bool create);
/* The client address of node @id, "" if unknown. */
const char *node_client_address(struct node *n, uint64_t id);
void node_stop(struct node *n, int exit_code);

/* ---- admin.c --------------------------------------------------------- */

/* Whether the node serves (see /readyz in docs/operations.md); if not,
 * @why (may be NULL) gets the first reason. */
bool admin_ready(struct node *n, char *why, size_t why_len);
/* The http.c render callback; @data is the node. */
void admin_render(void *data, enum http_doc doc, struct http_reply *out);

#endif /* RMQ_SERVER_H */
