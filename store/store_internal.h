/* store internals shared by store.c, queue.c, meta.c and snapshot.c.
 *
 * Owns the layout of struct store and struct store_txn, the list of named
 * databases, the fixed-width encodings of keys and records, and the one
 * place where LMDB error codes become RMQ_E* codes (store_err_from_mdb).
 * Not part of the public contract: only store/ includes this file.
 *
 * Threads: same as store.h. */
#ifndef RMQ_STORE_INTERNAL_H
#define RMQ_STORE_INTERNAL_H

#include <lmdb.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Named databases. The numeric ids appear in snapshots: append only. */
enum store_db {
	STORE_DB_INFO = 0, /* "applied" → u64, "next_qid" → u32 */
	STORE_DB_QUEUES,   /* name → queue record (STORE_QUEUE_REC_LEN) */
	STORE_DB_MSGS, /* qid u32 ‖ seq u64 → u32 headers_len ‖ headers ‖ body */
	STORE_DB_DEDUP, /* qid u32 ‖ u16 len ‖ producer_id ‖ pseq u64 → seq u64 */
	STORE_DB_NODES, /* id u64 → node record */
	STORE_DB_PLACEMENT, /* name → placement record (STORE_PLACEMENT_REC_LEN) */
	STORE_DB_SHARDS, /* shard u32 → shard record (replica set, state) */
	STORE_DB_COUNT,
};

/* All integers in keys and records are big-endian, so that cursor order
 * over keys is numeric order. */
#define STORE_QUEUE_REC_LEN (4 + 8 + 8 + 8 + 8 + 8 + 4 + 8)
#define STORE_PLACEMENT_REC_LEN (4 + 8 + 4 + 8 + 1)
#define STORE_MSG_KEY_LEN (4 + 8)
#define STORE_DEDUP_KEY_MIN (4 + 2 + 1 + 8)
#define STORE_DEDUP_KEY_MAX (4 + 2 + STORE_MAX_PRODUCER_ID + 8)
#define STORE_NODE_KEY_LEN 8

#define STORE_INFO_APPLIED "applied"
#define STORE_INFO_NEXT_QID "next_qid"

struct store {
	MDB_env *env; /* owned */
	MDB_dbi dbi[STORE_DB_COUNT];
	char *dir;      /* owned */
	unsigned flags; /* mdb_env_open flags */
	size_t map_size;
	void *map; /* where LMDB mapped data.mdb, NULL if unknown */
	size_t map_len;
};

struct store_txn {
	struct store *s;
	MDB_txn *txn; /* owned until commit/abort */
	bool write;
};

/* The single translation point from LMDB (and errno) codes. */
int store_err_from_mdb(int rv);

/* Visit every record of @dbi in key order; a non-zero return of @visit
 * stops the walk and is returned. LMDB errors come back as RMQ_E*. */
typedef int (*store_visit_cb)(void *arg, const MDB_val *k, const MDB_val *v);
int store_walk(MDB_txn *txn, MDB_dbi dbi, store_visit_cb visit, void *arg);

/* Look up the record named @name (a queue name) in @db: on 0, *k points
 * at @name and *v at the value (valid until the transaction ends). */
int store_get_named(struct store_txn *t, int db, const char *name, MDB_val *k,
		    MDB_val *v);

/* Copy a queue-name key into @name (STORE_MAX_NAME + 1 bytes);
 * RMQ_ECORRUPT if the key cannot be a name. */
int store_key_name(const MDB_val *k, char *name);

/* Checks a queue name (1..STORE_MAX_NAME bytes); sets *len. */
int store_name_check(const char *name, size_t *len);

/* Record codecs. Decoders return RMQ_ECORRUPT on a malformed value. */
void store_queue_encode(const struct store_queue *q, uint8_t *buf);
int store_queue_decode(const MDB_val *v, struct store_queue *q);
void store_placement_encode(const struct store_placement *p, uint8_t *buf);
int store_placement_decode(const MDB_val *v, struct store_placement *p);
int store_node_decode(const MDB_val *k, const MDB_val *v, struct store_node *n);
int store_shard_decode(const MDB_val *k, const MDB_val *v,
		       struct store_shard *s);

/* Checks that a (key, value) pair is well formed for database @db; used
 * to validate a snapshot before anything is written. */
int store_record_check(enum store_db db, const MDB_val *k, const MDB_val *v);

/* LMDB's default key order: bytewise, then shorter first. */
int store_key_cmp(const MDB_val *a, const MDB_val *b);

/* FNV-1a 64 of @n bytes at @p, continuing from @h (start with
 * STORE_FNV_OFFSET): the checksum of snapshots and state streams. */
#define STORE_FNV_OFFSET 0xcbf29ce484222325ull
uint64_t store_fnv1a64(uint64_t h, const uint8_t *p, size_t n);

static inline void store_put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void store_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void store_put_be64(uint8_t *p, uint64_t v)
{
	store_put_be32(p, (uint32_t)(v >> 32));
	store_put_be32(p + 4, (uint32_t)v);
}

static inline uint16_t store_get_be16(const uint8_t *p)
{
	return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t store_get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline uint64_t store_get_be64(const uint8_t *p)
{
	return (uint64_t)store_get_be32(p) << 32 | store_get_be32(p + 4);
}

#endif /* RMQ_STORE_INTERNAL_H */
