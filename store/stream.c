/* stream.c: a consistent copy of a whole store as a byte stream, and a new
 * store built from one. This is how a replica that fell behind a snapshot
 * gets the state the snapshot refers to (consensus/catchup.c).
 *
 * Format (version 1), integers big-endian:
 *   header   u32 magic "RMQF" ‖ u32 version
 *   records  u8 db id ‖ u32 klen ‖ key ‖ u32 vlen ‖ value
 *            grouped by db id in increasing order, keys in cursor order
 *   end      u8 0xff ‖ u64 record count ‖ u64 FNV-1a 64 of every byte
 *            before the checksum
 *
 * The writer walks every database inside one read transaction, so the copy
 * is the state at one applied index. The reader checks every record as
 * snapshot.c does (known db, increasing keys, record shapes), appends it to
 * a fresh environment, and refuses the copy as soon as the applied index it
 * carries (the first database) is below what the caller needs. A stream
 * that ends early, or whose count or checksum differ, is refused: the new
 * environment is then garbage and the caller deletes it.
 *
 * Memory: the writer holds one 64 KiB buffer and releases the pages it read
 * from the map every 64 MiB; the reader commits every 8 MiB, so neither
 * side holds the state in RAM.
 *
 * Threads: any thread. The writer only reads @s (LMDB read transactions
 * may run next to the loop thread's writer, the environment uses
 * MDB_NOTLS); the reader owns the environment it builds. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

#define STREAM_MAGIC 0x524D5146u /* "RMQF" */
#define STREAM_VERSION 1u
#define STREAM_END 0xffu
#define STREAM_BUF ((size_t)64 * 1024)
#define STREAM_RELEASE_EVERY ((uint64_t)64 * 1024 * 1024)
#define STREAM_MAX_VALUE ((size_t)1 << 31) /* far above any message */
#define STREAM_COMMIT_EVERY ((uint64_t)8 * 1024 * 1024)

/* ---- Writing --------------------------------------------------------- */

struct swriter {
	struct store *s;
	store_stream_write_fn write;
	void *arg;
	uint8_t *buf; /* owned */
	size_t len;
	uint64_t sum;
	uint64_t count;
	uint64_t since_release;
};

static int sw_flush(struct swriter *w)
{
	int rv = 0;
	if (w->len > 0) {
		w->sum = store_fnv1a64(w->sum, w->buf, w->len);
		rv = w->write(w->arg, w->buf, w->len);
		w->since_release += w->len;
		w->len = 0;
	}
	if (w->since_release >= STREAM_RELEASE_EVERY) {
		store_release_map(w->s);
		w->since_release = 0;
	}
	return rv;
}

static int sw_put(struct swriter *w, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n > 0) {
		size_t room = STREAM_BUF - w->len;
		size_t k = n < room ? n : room;
		memcpy(w->buf + w->len, b, k);
		w->len += k;
		b += k;
		n -= k;
		if (w->len == STREAM_BUF) {
			int rv = sw_flush(w);
			if (rv != 0) {
				return rv;
			}
		}
	}
	return 0;
}

struct swalk {
	struct swriter *w;
	uint8_t db;
};

static int sw_visit(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct swalk *sw = arg;
	uint8_t hdr[5];
	int rv;

	if (k->mv_size > UINT32_MAX || v->mv_size > UINT32_MAX) {
		return RMQ_ETOOLARGE;
	}
	hdr[0] = sw->db;
	store_put_be32(hdr + 1, (uint32_t)k->mv_size);
	rv = sw_put(sw->w, hdr, 5);
	if (rv == 0) {
		rv = sw_put(sw->w, k->mv_data, k->mv_size);
	}
	if (rv == 0) {
		store_put_be32(hdr, (uint32_t)v->mv_size);
		rv = sw_put(sw->w, hdr, 4);
	}
	if (rv == 0) {
		rv = sw_put(sw->w, v->mv_data, v->mv_size);
	}
	if (rv == 0) {
		sw->w->count++;
	}
	return rv;
}

int store_stream_write(struct store *s, store_stream_write_fn write, void *arg,
		       uint64_t *applied)
{
	struct swriter w = {.s = s, .write = write, .arg = arg};
	struct store_txn t = {.s = s, .write = false};
	uint8_t b[8 + 8];
	int rv;

	w.sum = STORE_FNV_OFFSET;
	w.buf = malloc(STREAM_BUF);
	if (w.buf == NULL) {
		return RMQ_ENOMEM;
	}
	rv = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t.txn);
	if (rv != 0) {
		rv = store_err_from_mdb(rv);
		goto err_after_alloc;
	}
	rv = store_applied_get(&t, applied);
	if (rv != 0) {
		goto err_after_txn_begin;
	}
	store_put_be32(b, STREAM_MAGIC);
	store_put_be32(b + 4, STREAM_VERSION);
	rv = sw_put(&w, b, 8);
	for (int i = 0; i < STORE_DB_COUNT && rv == 0; i++) {
		struct swalk sw = {&w, (uint8_t)i};
		rv = store_walk(t.txn, s->dbi[i], sw_visit, &sw);
	}
	mdb_txn_abort(t.txn);
	if (rv != 0) {
		goto err_after_alloc;
	}
	b[0] = STREAM_END;
	store_put_be64(b + 1, w.count);
	rv = sw_put(&w, b, 9);
	if (rv == 0) {
		rv = sw_flush(&w); /* the checksum covers everything so far */
	}
	if (rv == 0) {
		store_put_be64(b, w.sum);
		rv = w.write(w.arg, b, 8);
	}
	store_release_map(s);
	free(w.buf);
	return rv;

err_after_txn_begin:
	mdb_txn_abort(t.txn);
err_after_alloc:
	store_release_map(s);
	free(w.buf);
	return rv;
}

/* ---- Reading --------------------------------------------------------- */

struct sreader {
	store_stream_read_fn read;
	void *arg;
	uint64_t sum;
	uint8_t *key; /* owned: the previous key, for the order check */
	size_t key_len;
	uint8_t *rec; /* owned: the current key and value */
	size_t rec_cap;
};

/* Exactly @n bytes, added to the checksum. */
static int sr_read(struct sreader *r, void *p, size_t n)
{
	uint8_t *b = p;
	size_t have = 0;
	while (have < n) {
		size_t got = 0;
		int rv = r->read(r->arg, b + have, n - have, &got);
		if (rv != 0) {
			return rv;
		}
		if (got == 0) {
			return RMQ_ECORRUPT; /* the stream ended early */
		}
		have += got;
	}
	r->sum = store_fnv1a64(r->sum, b, n);
	return 0;
}

static int sr_reserve(struct sreader *r, size_t n)
{
	if (n <= r->rec_cap) {
		return 0;
	}
	uint8_t *p = realloc(r->rec, n);
	if (p == NULL) {
		return RMQ_ENOMEM;
	}
	r->rec = p;
	r->rec_cap = n;
	return 0;
}

/* Read the records into the open write transaction *@txn of @s,
 * committing every STREAM_COMMIT_EVERY bytes. */
static int sr_records(struct sreader *r, struct store *s, MDB_txn **txn,
		      uint64_t min_applied, uint64_t *applied)
{
	size_t max_key = (size_t)mdb_env_get_maxkeysize(s->env);
	uint64_t count = 0;
	uint64_t pending = 0;
	int prev_db = -1;
	bool have_applied = false;
	uint8_t hdr[16];
	int rv;

	for (;;) {
		rv = sr_read(r, hdr, 1);
		if (rv != 0) {
			return rv;
		}
		if (hdr[0] == STREAM_END) {
			break;
		}
		uint8_t db = hdr[0];
		if (db >= STORE_DB_COUNT || (int)db < prev_db) {
			return RMQ_ECORRUPT;
		}
		if (db != STORE_DB_INFO && !have_applied) {
			/* The INFO database came first: its applied index
			 * is the index of the whole copy. */
			*applied = 0;
			have_applied = true;
			if (min_applied > 0) {
				return RMQ_EUNAVAIL;
			}
		}
		rv = sr_read(r, hdr, 4);
		if (rv != 0) {
			return rv;
		}
		MDB_val k = {store_get_be32(hdr), NULL};
		if (k.mv_size == 0 || k.mv_size > max_key) {
			return RMQ_ECORRUPT;
		}
		rv = sr_reserve(r, k.mv_size);
		if (rv == 0) {
			rv = sr_read(r, r->rec, k.mv_size);
		}
		if (rv == 0) {
			rv = sr_read(r, hdr, 4);
		}
		if (rv != 0) {
			return rv;
		}
		MDB_val v = {store_get_be32(hdr), NULL};
		if (v.mv_size > STREAM_MAX_VALUE) {
			return RMQ_ECORRUPT;
		}
		rv = sr_reserve(r, k.mv_size + v.mv_size + 1);
		if (rv == 0) {
			rv = sr_read(r, r->rec + k.mv_size, v.mv_size);
		}
		if (rv != 0) {
			return rv;
		}
		k.mv_data = r->rec;
		v.mv_data = r->rec + k.mv_size;
		MDB_val prev = {r->key_len, r->key};
		if ((int)db == prev_db && store_key_cmp(&prev, &k) >= 0) {
			return RMQ_ECORRUPT;
		}
		if (store_record_check((enum store_db)db, &k, &v) != 0) {
			return RMQ_ECORRUPT;
		}
		if (db == STORE_DB_INFO &&
		    k.mv_size == strlen(STORE_INFO_APPLIED) &&
		    memcmp(k.mv_data, STORE_INFO_APPLIED, k.mv_size) == 0) {
			*applied = store_get_be64(v.mv_data);
			have_applied = true;
			if (*applied < min_applied) {
				return RMQ_EUNAVAIL;
			}
		}
		rv = mdb_put(*txn, s->dbi[db], &k, &v, MDB_APPEND);
		if (rv != 0) {
			return store_err_from_mdb(rv);
		}
		/* Remember the key for the order check. */
		uint8_t *kp = realloc(r->key, k.mv_size);
		if (kp == NULL) {
			return RMQ_ENOMEM;
		}
		memcpy(kp, k.mv_data, k.mv_size);
		r->key = kp;
		r->key_len = k.mv_size;
		prev_db = db;
		count++;
		pending += k.mv_size + v.mv_size;
		if (pending >= STREAM_COMMIT_EVERY) {
			rv = mdb_txn_commit(*txn);
			*txn = NULL;
			if (rv == 0) {
				rv = mdb_txn_begin(s->env, NULL, 0, txn);
			}
			if (rv != 0) {
				return store_err_from_mdb(rv);
			}
			pending = 0;
		}
	}
	if (!have_applied && min_applied > 0) {
		return RMQ_EUNAVAIL;
	}
	rv = sr_read(r, hdr, 8);
	if (rv != 0) {
		return rv;
	}
	uint64_t sum = r->sum; /* the checksum covers the bytes before it */
	rv = sr_read(r, hdr + 8, 8);
	if (rv != 0) {
		return rv;
	}
	if (store_get_be64(hdr) != count || store_get_be64(hdr + 8) != sum) {
		return RMQ_ECORRUPT;
	}
	return 0;
}

int store_stream_read(const char *dir, const struct store_options *o,
		      store_stream_read_fn read, void *arg,
		      uint64_t min_applied, uint64_t *applied)
{
	struct sreader r = {.read = read, .arg = arg};
	struct store_options so = *o;
	struct store *s;
	MDB_txn *txn = NULL;
	uint8_t hdr[8];
	int rv;

	*applied = 0;
	r.sum = STORE_FNV_OFFSET;
	rv = sr_read(&r, hdr, 8);
	if (rv != 0) {
		return rv;
	}
	if (store_get_be32(hdr) != STREAM_MAGIC ||
	    store_get_be32(hdr + 4) != STREAM_VERSION) {
		return RMQ_ECORRUPT;
	}
	so.nosync = true; /* one sync at the end */
	rv = store_open(dir, &so, &s);
	if (rv != 0) {
		return rv;
	}
	rv = mdb_txn_begin(s->env, NULL, 0, &txn);
	if (rv != 0) {
		rv = store_err_from_mdb(rv);
		goto out;
	}
	rv = sr_records(&r, s, &txn, min_applied, applied);
	if (rv == 0) {
		rv = store_err_from_mdb(mdb_txn_commit(txn));
		txn = NULL;
	}
	if (rv == 0) {
		rv = store_sync(s);
	}
out:
	if (txn != NULL) {
		mdb_txn_abort(txn);
	}
	store_close(s);
	free(r.key);
	free(r.rec);
	return rv;
}
