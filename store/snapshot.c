/* snapshot.c: the whole content of a store as one byte buffer, and back.
 *
 * Format (version 1), integers big-endian:
 *   header   u32 magic "RMQS" ‖ u32 version ‖ u64 record count
 *   records  u8 db id ‖ u32 klen ‖ key ‖ u32 vlen ‖ value
 *            grouped by db id in increasing order, keys in cursor order
 *   trailer  u64 FNV-1a 64 of every byte before it
 *
 * The happy path of store_restore() is: validate the whole buffer (bounds
 * of every length, known db ids, key order, record shapes, checksum), then
 * empty every database and insert all records in one write transaction.
 * Failure modes: a malformed buffer returns RMQ_ECORRUPT before anything
 * is written; a storage error (map full, I/O) aborts the transaction, so
 * the store keeps its previous content in every case.
 *
 * Threads: the thread that owns the store. */
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

#define SNAP_MAGIC 0x524D5153u /* "RMQS" */
#define SNAP_VERSION 1u
#define SNAP_HEADER_LEN (4 + 4 + 8)
#define SNAP_TRAILER_LEN 8
#define SNAP_INITIAL_CAP ((size_t)64 * 1024)

static uint64_t fnv1a64(const uint8_t *p, size_t n)
{
	return store_fnv1a64(STORE_FNV_OFFSET, p, n);
}

/* ---- Building -------------------------------------------------------- */

struct snap_buf {
	uint8_t *base; /* owned */
	size_t len;
	size_t cap;
	size_t max;
};

/* Makes room for @n more bytes; RMQ_ETOOLARGE past b->max. */
static int snap_reserve(struct snap_buf *b, size_t n)
{
	size_t need;
	size_t cap;
	uint8_t *p;

	if (n > b->max - b->len) {
		return RMQ_ETOOLARGE;
	}
	need = b->len + n;
	if (need <= b->cap) {
		return 0;
	}
	cap = b->cap != 0 ? b->cap : SNAP_INITIAL_CAP;
	while (cap < need) {
		cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
	}
	if (cap > b->max) {
		cap = b->max;
	}
	p = realloc(b->base, cap);
	if (p == NULL) {
		return RMQ_ENOMEM;
	}
	b->base = p;
	b->cap = cap;
	return 0;
}

static int snap_record(struct snap_buf *b, uint8_t db, const MDB_val *k,
		       const MDB_val *v)
{
	uint8_t *p;
	int rv;

	if (k->mv_size > UINT32_MAX || v->mv_size > UINT32_MAX) {
		return RMQ_ETOOLARGE;
	}
	if (k->mv_size > SIZE_MAX - 9 ||
	    v->mv_size > SIZE_MAX - 9 - k->mv_size) {
		return RMQ_ETOOLARGE;
	}
	rv = snap_reserve(b, 1 + 4 + k->mv_size + 4 + v->mv_size);
	if (rv != 0) {
		return rv;
	}
	p = b->base + b->len;
	*p = db;
	store_put_be32(p + 1, (uint32_t)k->mv_size);
	memcpy(p + 5, k->mv_data, k->mv_size);
	p += 5 + k->mv_size;
	store_put_be32(p, (uint32_t)v->mv_size);
	if (v->mv_size != 0) {
		memcpy(p + 4, v->mv_data, v->mv_size);
	}
	b->len += 1 + 4 + k->mv_size + 4 + v->mv_size;
	return 0;
}

struct snap_walk {
	struct snap_buf *b;
	uint8_t db;
	uint64_t *count;
};

static int snap_visit(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct snap_walk *w = arg;
	int rv = snap_record(w->b, w->db, k, v);
	if (rv == 0) {
		(*w->count)++;
	}
	return rv;
}

static int snap_db(struct snap_buf *b, MDB_txn *txn, MDB_dbi dbi, uint8_t db,
		   uint64_t *count)
{
	struct snap_walk w = {b, db, count};
	return store_walk(txn, dbi, snap_visit, &w);
}

int store_snapshot(struct store *s, uint8_t **out, size_t *out_len,
		   size_t max_bytes)
{
	struct snap_buf b = {.max = max_bytes};
	uint64_t count = 0;
	MDB_txn *txn;
	int i;
	int rv;

	rv = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
	if (rv != 0) {
		rv = store_err_from_mdb(rv);
		goto err;
	}
	rv = snap_reserve(&b, SNAP_HEADER_LEN);
	if (rv != 0) {
		goto err_after_txn_begin;
	}
	b.len = SNAP_HEADER_LEN; /* filled in once the count is known */
	for (i = 0; i < STORE_DB_COUNT; i++) {
		rv = snap_db(&b, txn, s->dbi[i], (uint8_t)i, &count);
		if (rv != 0) {
			goto err_after_txn_begin;
		}
	}
	mdb_txn_abort(txn);

	store_put_be32(b.base, SNAP_MAGIC);
	store_put_be32(b.base + 4, SNAP_VERSION);
	store_put_be64(b.base + 8, count);
	rv = snap_reserve(&b, SNAP_TRAILER_LEN);
	if (rv != 0) {
		goto err_after_buf;
	}
	store_put_be64(b.base + b.len, fnv1a64(b.base, b.len));
	b.len += SNAP_TRAILER_LEN;
	*out = b.base;
	*out_len = b.len;
	return 0;

err_after_txn_begin:
	mdb_txn_abort(txn);
err_after_buf:
	free(b.base);
err:
	return rv;
}

/* ---- Restoring ------------------------------------------------------- */

struct snap_reader {
	const uint8_t *p;
	const uint8_t *end;
};

/* Reads the next record; RMQ_ECORRUPT if it does not fit. */
static int snap_next(struct snap_reader *r, uint8_t *db, MDB_val *k, MDB_val *v)
{
	size_t n;

	if (r->end - r->p < 1 + 4) {
		return RMQ_ECORRUPT;
	}
	*db = r->p[0];
	n = store_get_be32(r->p + 1);
	r->p += 5;
	if ((size_t)(r->end - r->p) < n) {
		return RMQ_ECORRUPT;
	}
	k->mv_size = n;
	k->mv_data = (void *)r->p;
	r->p += n;
	if (r->end - r->p < 4) {
		return RMQ_ECORRUPT;
	}
	n = store_get_be32(r->p);
	r->p += 4;
	if ((size_t)(r->end - r->p) < n) {
		return RMQ_ECORRUPT;
	}
	v->mv_size = n;
	v->mv_data = (void *)r->p;
	r->p += n;
	return 0;
}

/* Checks everything that can be checked without writing; sets *count. */
static int snap_validate(struct store *s, const uint8_t *buf, size_t len,
			 uint64_t *count)
{
	struct snap_reader r;
	MDB_val prev = {0, NULL};
	MDB_val k;
	MDB_val v;
	uint8_t prev_db = 0;
	uint8_t db;
	size_t max_key = (size_t)mdb_env_get_maxkeysize(s->env);
	uint64_t n;
	uint64_t i;
	int rv;

	if (buf == NULL || len < SNAP_HEADER_LEN + SNAP_TRAILER_LEN) {
		return RMQ_ECORRUPT;
	}
	if (store_get_be32(buf) != SNAP_MAGIC ||
	    store_get_be32(buf + 4) != SNAP_VERSION) {
		return RMQ_ECORRUPT;
	}
	if (fnv1a64(buf, len - SNAP_TRAILER_LEN) !=
	    store_get_be64(buf + len - SNAP_TRAILER_LEN)) {
		return RMQ_ECORRUPT;
	}
	n = store_get_be64(buf + 8);
	r.p = buf + SNAP_HEADER_LEN;
	r.end = buf + len - SNAP_TRAILER_LEN;
	for (i = 0; i < n; i++) {
		rv = snap_next(&r, &db, &k, &v);
		if (rv != 0) {
			return rv;
		}
		if (db >= STORE_DB_COUNT || db < prev_db) {
			return RMQ_ECORRUPT;
		}
		if (k.mv_size == 0 || k.mv_size > max_key) {
			return RMQ_ECORRUPT;
		}
		/* Strictly increasing keys within a db: no duplicates, and
		 * MDB_APPEND is valid when inserting. */
		if (i != 0 && db == prev_db && store_key_cmp(&prev, &k) >= 0) {
			return RMQ_ECORRUPT;
		}
		rv = store_record_check((enum store_db)db, &k, &v);
		if (rv != 0) {
			return RMQ_ECORRUPT;
		}
		prev_db = db;
		prev = k;
	}
	if (r.p != r.end) {
		return RMQ_ECORRUPT;
	}
	*count = n;
	return 0;
}

int store_restore(struct store *s, const uint8_t *buf, size_t len)
{
	struct snap_reader r;
	MDB_txn *txn;
	MDB_val k;
	MDB_val v;
	uint64_t count;
	uint64_t i;
	uint8_t db;
	int j;
	int rv;

	rv = snap_validate(s, buf, len, &count);
	if (rv != 0) {
		return rv;
	}
	rv = mdb_txn_begin(s->env, NULL, 0, &txn);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	for (j = 0; j < STORE_DB_COUNT; j++) {
		rv = mdb_drop(txn, s->dbi[j], 0);
		if (rv != 0) {
			goto err_after_txn_begin;
		}
	}
	r.p = buf + SNAP_HEADER_LEN;
	r.end = buf + len - SNAP_TRAILER_LEN;
	for (i = 0; i < count; i++) {
		if (snap_next(&r, &db, &k, &v) != 0) {
			rv = MDB_CORRUPTED; /* validated above: unreachable */
			goto err_after_txn_begin;
		}
		rv = mdb_put(txn, s->dbi[db], &k, &v, MDB_APPEND);
		if (rv != 0) {
			goto err_after_txn_begin;
		}
	}
	return store_err_from_mdb(mdb_txn_commit(txn));

err_after_txn_begin:
	mdb_txn_abort(txn);
	return store_err_from_mdb(rv);
}
