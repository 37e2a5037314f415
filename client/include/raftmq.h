/* libraftmq: the raftmq client library.
 *
 * A client connects from a seed list of servers, learns the cluster topology
 * (nodes, shards, their leaders, which shard holds which queue), routes each
 * request to the leader of the right shard, follows NOT_LEADER answers,
 * reconnects with backoff, and retries unconfirmed publishes after a
 * failover with the same producer id and sequence, so that the broker stores
 * each message exactly once.
 *
 * Threads: a client runs one internal I/O thread. Every function here may be
 * called from any application thread. Callbacks (confirms, deliveries) run
 * on the I/O thread: they must not block, and must not call the blocking
 * functions of this header (rmq_publish, rmq_flush, rmq_receive,
 * rmq_queue_*, rmq_cluster_status, rmq_close; those that would wait on
 * the I/O thread return RMQ_EINVAL there). rmq_publish_async, rmq_ack and
 * rmq_nack may be called from callbacks.
 *
 * Errors: functions return 0 or a negative RMQ_E* code from
 * raftmq_errors.h; rmq_strerror() names it and rmq_last_error() returns the
 * server's human message for the last failed call on this thread, if any.
 * RMQ_ETIMEDOUT: no answer within the timeout; the request may still take
 * effect. RMQ_ELEADERLOST is never returned for publishes: those are
 * retried internally until confirmed, failed with a definite error, or
 * timed out. */
#ifndef RAFTMQ_H
#define RAFTMQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raftmq_errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RMQ_API __attribute__((visibility("default")))

struct rmq_client;
struct rmq_consumer;

struct rmq_options {
	const char *servers;         /* "h:p,h:p,..." seed list (copied) */
	const char *producer_id;     /* NULL: a random id per client */
	unsigned connect_timeout_ms; /* per attempt; default 2000 */
	unsigned request_timeout_ms; /* admin calls; default 10000 */
	unsigned publish_timeout_ms; /* until a publish fails; default 30000 */
	unsigned publish_window;     /* max async publishes in flight; 1000 */
	unsigned max_backoff_ms;     /* reconnect backoff cap; default 1000 */
	/* A node that sends nothing for this long is taken for dead (paused,
	 * hung, host gone): its connection is dropped and its work fails
	 * over. A ping goes out after half of it. Default 2000. */
	unsigned liveness_timeout_ms;
};

RMQ_API void rmq_options_init(struct rmq_options *o);

/* Connect to the cluster. Returns once one seed answered (topology known),
 * or RMQ_ECONNECT after trying every seed until connect_timeout_ms. On 0
 * *out is owned by the caller: release with rmq_close(). */
RMQ_API int rmq_connect(const struct rmq_options *o, struct rmq_client **out);

/* Wait up to @timeout_ms for in-flight publishes and acks, then close every
 * connection and free the client. Consumers still attached are cancelled.
 * Pending confirm callbacks fire with RMQ_ESHUTDOWN. */
RMQ_API void rmq_close(struct rmq_client *c, unsigned timeout_ms);

RMQ_API const char *rmq_strerror(int err);
RMQ_API const char *rmq_last_error(void);

/* ---- Queues -------------------------------------------------------------- */

struct rmq_queue_options {
	uint64_t max_length;       /* 0: unlimited */
	uint32_t max_message_size; /* 0: the cluster's limit */
};

/* Declare queue @name (1..255 bytes). 0 if created or already present with
 * the same options (*created tells which; may be NULL); RMQ_EEXISTS if it
 * exists with other options. @o may be NULL for defaults. */
RMQ_API int rmq_queue_declare(struct rmq_client *c, const char *name,
			      const struct rmq_queue_options *o, bool *created);
/* As rmq_queue_declare(); also gives the queue's shard (@shard may be
 * NULL), as the meta leader placed it. */
RMQ_API int rmq_queue_declare_ex(struct rmq_client *c, const char *name,
				 const struct rmq_queue_options *o,
				 bool *created, uint32_t *shard);
RMQ_API int rmq_queue_delete(struct rmq_client *c, const char *name);

struct rmq_queue_info {
	char name[256];
	uint32_t shard;
	uint64_t leader; /* node id, 0 if none */
	uint64_t ready;
	uint64_t unacked;
	uint64_t total;
};

/* On 0, *out is an array of *n entries owned by the caller (free()). */
RMQ_API int rmq_queue_list(struct rmq_client *c, struct rmq_queue_info **out,
			   size_t *n);

struct rmq_node_info {
	uint64_t id;
	char client_address[64];
	char peer_address[64];
	bool reachable; /* this client could connect to it just now */
};

struct rmq_shard_info {
	uint32_t id;     /* 0 is the meta shard */
	uint64_t leader; /* node id, 0 if none */
	uint64_t term;
	uint64_t commit_index;
	uint64_t applied_index;
	uint64_t replicas[16];
	size_t n_replicas;
};

struct rmq_cluster_info {
	char cluster_name[64];
	struct rmq_node_info *nodes;
	size_t n_nodes;
	struct rmq_shard_info *shards;
	size_t n_shards;
};

/* Ask every known node for its view: a shard's leader, term and commit
 * index come from the node that leads it. On 0, release *out with
 * rmq_cluster_info_free(). */
RMQ_API int rmq_cluster_status(struct rmq_client *c,
			       struct rmq_cluster_info **out);
RMQ_API void rmq_cluster_info_free(struct rmq_cluster_info *info);

/* ---- Membership and shards (docs/operations.md) ----------------------- */

struct rmq_member {
	uint64_t id;
	char client_address[64];
	char peer_address[64];
	char role[16]; /* "voter", "standby" (joining), "spare", "leaving" */
	uint32_t shards[64]; /* shards it is a voter of; 0 is the meta shard */
	size_t n_shards;
};

/* The cluster's nodes as the meta shard's leader sees them. On 0, *out is
 * an array of *n entries owned by the caller (free()). */
RMQ_API int rmq_node_list(struct rmq_client *c, struct rmq_member **out,
			  size_t *n);
/* Make registered spare @id a member: returns once the meta shard has
 * added it; it is a voter of the meta shard and of every data shard placed
 * on it once rmq_node_list() says "voter" (replicas keep moving onto it
 * for balance afterwards). RMQ_EEXISTS if it already is, RMQ_ENOTFOUND if it has not
 * registered (started with --join). */
RMQ_API int rmq_node_add(struct rmq_client *c, uint64_t id);
/* Start removing @id (alive or dead): returns once it is marked leaving;
 * it can be stopped once rmq_node_list() no longer lists it. */
RMQ_API int rmq_node_remove(struct rmq_client *c, uint64_t id);
/* Hand the leadership of @shard to node @to (a voter of it); returns once
 * the old leader stepped down (RMQ_EUNAVAIL if @to did not take over). */
RMQ_API int rmq_shard_transfer(struct rmq_client *c, uint32_t shard,
			       uint64_t to);
/* Move data shard @shard's replica from node @from to node @to (a
 * member): the meta shard records the new replica set, and the shard's
 * leader adds @to, catches it up, makes it a voter, then removes @from.
 * Returns once the new replica set is recorded; *done (may be NULL) says
 * whether the shard's voters are already that set. Asking again with the
 * same arguments is safe and refreshes *done. */
RMQ_API int rmq_shard_move(struct rmq_client *c, uint32_t shard, uint64_t from,
			   uint64_t to, bool *done);

/* ---- Publishing --------------------------------------------------------- */

struct rmq_header {
	const char *key;
	const void *value;
	size_t value_len;
};

/* Publish synchronously: returns 0 once a majority of the queue's replicas
 * hold the message durably (*seq, may be NULL, is its sequence number in
 * the queue), RMQ_ETOOLARGE / RMQ_ENOTFOUND / RMQ_EFULL for definite
 * refusals, RMQ_ETIMEDOUT after publish_timeout_ms. */
RMQ_API int rmq_publish(struct rmq_client *c, const char *queue,
			const void *body, size_t len, uint64_t *seq);

/* Confirm callback: @status is 0 (stored; @seq is its queue seq) or an error
 * as for rmq_publish. Fires exactly once per accepted rmq_publish_async.
 * During the call, rmq_last_error() holds the server's text for a failure,
 * the client's own text (RMQ_ETIMEDOUT), or "" (then use rmq_strerror),
 * and rmq_confirm_node() the node that answered. */
typedef void (*rmq_confirm_cb)(void *arg, int status, uint64_t seq);

/* Inside a confirm callback: the id of the node whose answer completed the
 * publish (the shard leader that confirmed it), or 0 when no node answered
 * (timeout, shutdown). For audits such as the chaos suite's check that no
 * node cut off from the majority ever confirms. */
RMQ_API uint64_t rmq_confirm_node(void);

/* Publish asynchronously with optional headers. Blocks while publish_window
 * messages are in flight (unless called from a callback, where it returns
 * RMQ_EFULL instead). The body and headers are copied. If it returns an
 * error, @cb never fires. */
RMQ_API int rmq_publish_async(struct rmq_client *c, const char *queue,
			      const void *body, size_t len,
			      const struct rmq_header *headers,
			      size_t n_headers, rmq_confirm_cb cb, void *arg);

/* Wait until every async publish has been confirmed or failed.
 * RMQ_ETIMEDOUT if some are still in flight after @timeout_ms. */
RMQ_API int rmq_flush(struct rmq_client *c, unsigned timeout_ms);

/* ---- Consuming --------------------------------------------------------- */

struct rmq_delivery {
	struct rmq_consumer *consumer;
	const char *queue;
	uint64_t seq; /* the message's identity within its queue */
	const void *body;
	size_t len;
	const struct rmq_header *headers;
	size_t n_headers;
	bool redelivered; /* may have been delivered before */
	uint32_t delivery_count;
};

/* Delivery callback: @d is valid only during the call (copy what you keep). */
typedef void (*rmq_delivery_cb)(void *arg, const struct rmq_delivery *d);

/* Attach a consumer to @queue with at most @prefetch unacked deliveries.
 * With @cb, deliveries are pushed to it; with @cb NULL, fetch them with
 * rmq_receive(). After a failover the consumer re-attaches by itself;
 * messages that were unacked come again with redelivered = true.
 * On 0, *out stays valid until rmq_unsubscribe() or rmq_close(). */
RMQ_API int rmq_subscribe(struct rmq_client *c, const char *queue,
			  unsigned prefetch, rmq_delivery_cb cb, void *arg,
			  struct rmq_consumer **out);

/* Blocking receive for a consumer without callback: waits up to
 * @timeout_ms (RMQ_ETIMEDOUT). On 0, *out is owned by the caller: release
 * with rmq_delivery_free() after settling it. */
RMQ_API int rmq_receive(struct rmq_consumer *k, unsigned timeout_ms,
			struct rmq_delivery **out);
RMQ_API void rmq_delivery_free(struct rmq_delivery *d);

/* Settle a delivery: ack removes it; nack with @requeue delivers it again,
 * without requeue drops it. Settlements are batched and sent
 * asynchronously; rmq_settle_flush() waits until the cluster has applied
 * them. */
RMQ_API int rmq_ack(struct rmq_consumer *k, uint64_t seq);
RMQ_API int rmq_nack(struct rmq_consumer *k, uint64_t seq, bool requeue);
RMQ_API int rmq_settle_flush(struct rmq_client *c, unsigned timeout_ms);

/* Cancel the consumer: unacked deliveries become ready again for other
 * consumers. Waits for pending settlements of this consumer first. */
RMQ_API int rmq_unsubscribe(struct rmq_consumer *k);

#ifdef __cplusplus
}
#endif

#endif /* RAFTMQ_H */
