/* transport: one peer TCP listener per node, shared by every shard.
 *
 * Each shard's raft_uv instance gets its own struct raft_uv_transport from
 * peer_net_transport_init(). Outgoing connections write a preamble naming
 * the cluster, the shard, the sender's id and addresses; the listener reads
 * it, refuses peers of another cluster (logging why and counting them), and
 * hands the stream to the raft_uv instance of the named shard.
 *
 * Preamble (all integers big-endian):
 *   u32 magic "RMQP" | u16 version (1) | u16 body length L (<= 1024) |
 *   body: u64 cluster_id | u32 shard_id | u64 sender_id |
 *         u16 len + peer address | u16 len + client address
 *
 * A connection of another kind (version 2: the same body followed by a u8
 * kind) carries no raft traffic: kind 1 asks the named shard for a copy of
 * its state (consensus/catchup.c). Raft connections keep version 1, so
 * nodes of earlier releases still talk to this one; they refuse version 2.
 *
 * Learned addresses: every accepted preamble reports (sender id, peer
 * address, client address) through the hello callback, so a node learns the
 * client address of every peer that talks to it, e.g. the leaders of its
 * shards.
 *
 * Threads: everything runs on the loop thread.
 * Streams handed to raft are allocated with raft_malloc(), as raft_uv frees
 * them with raft_free(). */
#ifndef RMQ_TRANSPORT_H
#define RMQ_TRANSPORT_H

#include <stdint.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#define PEER_NET_MAX_SHARDS 64

struct peer_net;

typedef void (*peer_net_hello_cb)(void *data, uint64_t node_id,
				  const char *peer_address,
				  const char *client_address);
typedef void (*peer_net_close_cb)(struct peer_net *n);

struct peer_net_config {
	uint64_t node_id;
	uint64_t cluster_id;
	const char *peer_address;   /* host:port to listen on and advertise */
	const char *client_address; /* advertised to peers */
	const char *bind_host; /* source IP of outgoing connections, or NULL */
	peer_net_hello_cb hello_cb; /* may be NULL */
	void *data;                 /* passed to hello_cb */
};

/* Allocate and initialize. On 0 *out is owned by the caller; release it
 * with peer_net_close(). Nothing listens until peer_net_listen(). */
int peer_net_init(uv_loop_t *loop, const struct peer_net_config *c,
		  struct peer_net **out);

/* Bind and listen on the peer address. RMQ_EIO with a log line on failure. */
int peer_net_listen(struct peer_net *n);

/* Fill @t (zeroed by the caller) as the transport of shard @shard_id. The
 * transport stays registered until its close() method runs (raft_uv calls
 * it from raft_uv_close). Connections for a shard that has no transport
 * registered yet are closed. */
int peer_net_transport_init(struct peer_net *n, uint32_t shard_id,
			    struct raft_uv_transport *t);

/* A state fetch arrived for the shard of @t from node @sender_id.
 * Ownership of @stream (allocated with raft_malloc(), reading stopped,
 * nothing after the preamble consumed) passes to the callback: close it
 * and raft_free() it in the close callback. */
typedef void (*peer_net_fetch_cb)(void *data, uint64_t sender_id,
				  uv_tcp_t *stream);
/* Serve state fetches of the shard of @t with @cb (NULL: refuse them). */
void peer_net_set_fetch_cb(struct raft_uv_transport *t, peer_net_fetch_cb cb,
			   void *data);

/* The preamble a state fetch of shard @shard_id from this node writes
 * first; returns its length (at most PEER_NET_PREAMBLE_MAX). */
#define PEER_NET_PREAMBLE_MAX (8 + 1024)
size_t peer_net_fetch_preamble(struct peer_net *n, uint32_t shard_id,
			       uint8_t buf[PEER_NET_PREAMBLE_MAX]);

/* Release a transport filled by peer_net_transport_init() whose init()
 * method raft_uv never called successfully (raft_init() failed early, or
 * the shard was abandoned before raft_init()): unregisters the shard and
 * frees its memory. A transport raft_uv initialized is released by its
 * close() method instead. Safe on an already released transport. */
void peer_net_transport_release(struct raft_uv_transport *t);

/* How long an accepted peer may take to send its whole preamble before it
 * is refused (default 5000 ms). */
void peer_net_set_preamble_timeout(struct peer_net *n, unsigned msecs);

/* Count of peers refused because of a cluster id mismatch or a bad
 * preamble (for tests and metrics). */
uint64_t peer_net_rejected(struct peer_net *n);

/* Stop listening, cancel pending connects, close accepted streams that are
 * still reading their preamble. @cb fires once all handles are closed;
 * then the memory of @n is released. All shard transports must have been
 * closed first. */
void peer_net_close(struct peer_net *n, peer_net_close_cb cb);

/* Parse "host:port" into @addr (IPv4 or IPv6 "[::1]:port"). */
int peer_net_parse_address(const char *hostport, struct sockaddr_storage *addr);

#endif /* RMQ_TRANSPORT_H */
