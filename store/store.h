/* store: the LMDB state of one shard.
 *
 * One struct store owns one LMDB environment (a directory). It holds, in
 * named databases:
 *   - the applied raft index (written in the same transaction as the data it
 *     covers, which makes apply idempotent by raft index);
 *   - for data shards: queue records (counters, limits), messages keyed by
 *     (queue id, seq), and the producer dedup window;
 *   - for the meta shard: node records and queue placement.
 *
 * store/ knows nothing of raft or sockets. Values returned by readers point
 * into LMDB memory and are valid only until their transaction ends: copy
 * what must outlive it.
 *
 * Threads: a store may be used from one thread at a time (the node's loop
 * thread). One write transaction at a time; read transactions may coexist
 * with it.
 *
 * Errors: 0 or a negative RMQ_E* code. MDB_MAP_FULL and ENOSPC map to
 * RMQ_EFULL; other I/O errors to RMQ_EIO; a failed write transaction must be
 * aborted by the caller. */
#ifndef RMQ_STORE_H
#define RMQ_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raftmq_errors.h"

#define STORE_MAX_NAME 255 /* queue names: 1..255 bytes */
#define STORE_DEDUP_WINDOW \
	(1u << 20)                /* producer seqs remembered per producer */
#define STORE_MAX_PRODUCER_ID 255 /* producer ids: 0..255 bytes */

struct store;
struct store_txn;

struct store_options {
	size_t map_size; /* LMDB map size in bytes; 0: 1 GiB */
	bool nosync;     /* MDB_NOSYNC: durability comes from the raft log */
};

/* Open (creating if needed) the environment in directory @dir, which must
 * exist. On 0, *out is owned by the caller (release with store_close). */
int store_open(const char *dir, const struct store_options *o,
	       struct store **out);
void store_close(struct store *s);

/* Flush to disk now (mdb_env_sync with force). */
int store_sync(struct store *s);

/* Bytes in use by the map (last page number * page size) and its size. */
int store_usage(struct store *s, size_t *used, size_t *map_size);

/* Transactions. store_commit() and store_abort() release @t, also on error.
 * Any number of read transactions may be open at once (the environment
 * uses MDB_NOTLS), next to at most one write transaction. Writers called
 * with a read transaction return RMQ_EINVAL. */
int store_begin(struct store *s, bool write, struct store_txn **out);
int store_commit(struct store_txn *t);
void store_abort(struct store_txn *t);

/* Applied raft index: 0 in a fresh store. */
int store_applied_get(struct store_txn *t, uint64_t *index);
int store_applied_set(struct store_txn *t, uint64_t index);

/* ---- Data shard: queues ---------------------------------------------- */

struct store_queue {
	uint32_t qid;              /* internal id, assigned at creation */
	uint64_t next_seq;         /* seq the next message gets (first is 1) */
	uint64_t count;            /* messages stored (ready + unacked) */
	uint64_t bytes;            /* body bytes stored */
	uint64_t delivered_upto;   /* highest seq recorded as handed out */
	uint64_t max_length;       /* 0: unlimited */
	uint32_t max_message_size; /* 0: no queue limit */
	uint64_t gen; /* incarnation: the meta index of its declare */
};

/* Create queue @name of incarnation @gen. 0 and *created=true if new; 0
 * and *created=false if that incarnation exists with the same limits;
 * RMQ_EEXISTS if it exists with other limits or is another incarnation
 * (which must be deleted first). */
int store_queue_create(struct store_txn *t, const char *name,
		       uint64_t max_length, uint32_t max_message_size,
		       uint64_t gen, bool *created);
/* Delete queue @name with its messages and dedup entries. RMQ_ENOTFOUND
 * if absent. */
int store_queue_delete(struct store_txn *t, const char *name);
int store_queue_get(struct store_txn *t, const char *name,
		    struct store_queue *q);

/* Calls @cb for every queue in name order; a non-zero return stops the
 * walk and is returned. */
typedef int (*store_queue_cb)(void *arg, const char *name,
			      const struct store_queue *q);
int store_queue_foreach(struct store_txn *t, store_queue_cb cb, void *arg);

/* ---- Data shard: messages -------------------------------------------- */

struct store_msg_in {
	const uint8_t *body;
	size_t body_len;
	const uint8_t *headers; /* opaque encoded headers, may be NULL */
	size_t headers_len;
	const char *producer_id; /* NULL or "" with producer_seq 0: no dedup */
	uint64_t producer_seq;
};

/* Dedup window: publishing producer_seq P forgets the entry P -
 * STORE_DEDUP_WINDOW of the same producer, so the window is bounded for a
 * producer whose seqs have no gaps. */
struct store_publish_result {
	int status;     /* 0, RMQ_EFULL (max_length), RMQ_ETOOLARGE (body over
			 * max_message_size), RMQ_EINVAL (producer_id longer
			 * than STORE_MAX_PRODUCER_ID); not 0: nothing stored */
	uint64_t seq;   /* assigned seq, or the original one if duplicate */
	bool duplicate; /* (producer_id, producer_seq) was already stored */
};

/* Append @n messages to queue @name, in order, deduplicating on
 * (producer_id, producer_seq). Per-message business outcomes go into
 * @results[i]; the return value is RMQ_ENOTFOUND (no such queue; no result
 * is written) or a storage error (the transaction must be aborted). */
int store_publish(struct store_txn *t, const char *name,
		  const struct store_msg_in *msgs, size_t n,
		  struct store_publish_result *results);

/* Remove the messages @seqs (acked or dropped) from queue @name; seqs that
 * are not stored are ignored (idempotent). Raise delivered_upto to
 * @delivered_upto if larger. RMQ_ENOTFOUND if the queue is absent. */
int store_remove(struct store_txn *t, const char *name, const uint64_t *seqs,
		 size_t n, uint64_t delivered_upto);

struct store_msg {
	uint64_t seq;
	const uint8_t *body; /* valid until the transaction ends */
	size_t body_len;
	const uint8_t *headers;
	size_t headers_len;
};

/* The stored message of queue @qid with the smallest seq >= @from.
 * RMQ_ENOTFOUND if there is none. */
int store_msg_next(struct store_txn *t, uint32_t qid, uint64_t from,
		   struct store_msg *m);
/* The message (@qid, @seq). RMQ_ENOTFOUND if absent. */
int store_msg_get(struct store_txn *t, uint32_t qid, uint64_t seq,
		  struct store_msg *m);

/* ---- Meta shard ------------------------------------------------------- */

struct store_node {
	uint64_t id;
	char peer_address[64];
	char client_address[64];
	char http_address[64];
};

int store_node_put(struct store_txn *t, const struct store_node *n);
int store_node_get(struct store_txn *t, uint64_t id, struct store_node *n);
typedef int (*store_node_cb)(void *arg, const struct store_node *n);
int store_node_foreach(struct store_txn *t, store_node_cb cb, void *arg);

/* A queue's placement, kept after a delete as a tombstone (deleted set)
 * so that a shard can tell a deleted incarnation from one its node has not
 * heard of yet. */
struct store_placement {
	uint32_t shard;
	uint64_t max_length;
	uint32_t max_message_size;
	uint64_t gen; /* meta index of the last declare that created it, or
			* of its delete */
	bool deleted;
};

/* Place queue @name on the data shard among 1..@n_shards holding the
 * fewest queues (lowest id on ties), as incarnation @gen. For a name that
 * is placed (not deleted): 0 with *created=false if the limits match (*p
 * filled, gen unchanged), RMQ_EEXISTS otherwise. */
int store_placement_declare(struct store_txn *t, const char *name,
			    uint64_t max_length, uint32_t max_message_size,
			    uint32_t n_shards, uint64_t gen,
			    struct store_placement *p, bool *created);
int store_placement_get(struct store_txn *t, const char *name,
			struct store_placement *p);
/* Mark @name deleted at meta index @gen (a tombstone). RMQ_ENOTFOUND if it
 * is not placed. */
int store_placement_delete(struct store_txn *t, const char *name, uint64_t gen);
typedef int (*store_placement_cb)(void *arg, const char *name,
				  const struct store_placement *p);
int store_placement_foreach(struct store_txn *t, store_placement_cb cb,
			    void *arg);

/* What the meta shard knows of data shard @shard: the replica set it
 * should have (@replicas, once placed) and the Raft configuration its
 * leader last reported (@term, @leader, @voters, @others: standbys and
 * spares). */
#define STORE_SHARD_MAX_IDS 16
struct store_shard {
	uint32_t shard;
	bool placed;
	unsigned n_replicas;
	uint64_t replicas[STORE_SHARD_MAX_IDS];
	uint64_t term;
	uint64_t leader;
	unsigned n_voters;
	uint64_t voters[STORE_SHARD_MAX_IDS];
	unsigned n_others;
	uint64_t others[STORE_SHARD_MAX_IDS];
};

/* RMQ_ENOTFOUND (and *s zeroed but for the shard id) if nothing is known. */
int store_shard_get(struct store_txn *t, uint32_t shard, struct store_shard *s);
/* RMQ_EINVAL if a list is longer than STORE_SHARD_MAX_IDS. */
int store_shard_put(struct store_txn *t, const struct store_shard *s);

/* ---- Snapshots -------------------------------------------------------- */

/* Serialize every database into one malloc'd buffer (owned by the caller).
 * RMQ_ETOOLARGE if it would exceed @max_bytes (nothing is returned). */
int store_snapshot(struct store *s, uint8_t **out, size_t *out_len,
		   size_t max_bytes);
/* Replace the whole content with a buffer made by store_snapshot(), in one
 * write transaction. RMQ_ECORRUPT on malformed input (nothing changed). */
int store_restore(struct store *s, const uint8_t *buf, size_t len);

/* ---- State streams (stream.c) ---------------------------------------- */

/* Sinks and sources of a state stream; 0 or a negative RMQ_E* code. A
 * reader sets *got to the bytes it read, 0 at the end of the stream. */
typedef int (*store_stream_write_fn)(void *arg, const void *buf, size_t len);
typedef int (*store_stream_read_fn)(void *arg, void *buf, size_t len,
				    size_t *got);

/* Write a consistent copy of every database of @s to @write; *applied is
 * the applied index of that copy. Any thread: only a read transaction is
 * used. An error from @write is returned as is. */
int store_stream_write(struct store *s, store_stream_write_fn write, void *arg,
		       uint64_t *applied);

/* Build a new environment in the empty directory @dir from a stream made
 * by store_stream_write(), and sync it. RMQ_EUNAVAIL as soon as the copy's
 * applied index turns out below @min_applied; RMQ_ECORRUPT on a malformed
 * or truncated stream. On any error @dir holds garbage: delete it. On 0,
 * *applied is the index of the copy. Any thread. */
int store_stream_read(const char *dir, const struct store_options *o,
		      store_stream_read_fn read, void *arg,
		      uint64_t min_applied, uint64_t *applied);

/* Replace the content of @s with the environment in @dir (built by
 * store_stream_read()): close, rename @dir/data.mdb over ours, sync the
 * directory, reopen. No transaction may be open on @s. On error the old
 * content is kept if the rename did not happen; RMQ_EIO if the store could
 * not be reopened at all (it is then unusable: the node must stop). */
int store_replace(struct store *s, const char *dir);

/* Drop the pages of the map from this process's page tables (they stay in
 * the page cache and fault back in on the next read): the RSS of a store
 * no longer grows with what was read from it. Any thread. */
void store_release_map(struct store *s);

#endif /* RMQ_STORE_H */
