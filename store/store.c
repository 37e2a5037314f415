/* store.c: the LMDB environment of one shard, its transactions, the
 * applied raft index and the helpers shared by the other store/ files
 * (error mapping, name checks, record codecs).
 *
 * Threads: one thread at a time per struct store (see store.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "store_internal.h"

#define STORE_DEFAULT_MAP_SIZE ((size_t)1 << 30)

static const char *const db_names[STORE_DB_COUNT] = {
	[STORE_DB_INFO] = "info",     [STORE_DB_QUEUES] = "queues",
	[STORE_DB_MSGS] = "msgs",     [STORE_DB_DEDUP] = "dedup",
	[STORE_DB_NODES] = "nodes",   [STORE_DB_PLACEMENT] = "placement",
	[STORE_DB_SHARDS] = "shards",
};

int store_err_from_mdb(int rv)
{
	switch (rv) {
	case MDB_SUCCESS:
		return 0;
	case MDB_NOTFOUND:
		return RMQ_ENOTFOUND;
	case MDB_MAP_FULL:
	case MDB_TXN_FULL: /* too many dirty pages: the batch is too big */
	case ENOSPC:
		return RMQ_EFULL;
	case MDB_CORRUPTED:
	case MDB_PAGE_NOTFOUND:
	case MDB_INVALID:
		return RMQ_ECORRUPT;
	case ENOMEM:
		return RMQ_ENOMEM;
	default:
		return RMQ_EIO;
	}
}

int store_name_check(const char *name, size_t *len)
{
	size_t n;

	if (name == NULL) {
		return RMQ_EINVAL;
	}
	n = strnlen(name, STORE_MAX_NAME + 1);
	if (n == 0 || n > STORE_MAX_NAME) {
		return RMQ_EINVAL;
	}
	*len = n;
	return 0;
}

/* ---- Record codecs --------------------------------------------------- */

void store_queue_encode(const struct store_queue *q, uint8_t *buf)
{
	store_put_be32(buf, q->qid);
	store_put_be64(buf + 4, q->next_seq);
	store_put_be64(buf + 12, q->count);
	store_put_be64(buf + 20, q->bytes);
	store_put_be64(buf + 28, q->delivered_upto);
	store_put_be64(buf + 36, q->max_length);
	store_put_be32(buf + 44, q->max_message_size);
	store_put_be64(buf + 48, q->gen);
}

int store_queue_decode(const MDB_val *v, struct store_queue *q)
{
	const uint8_t *p = v->mv_data;

	if (v->mv_size != STORE_QUEUE_REC_LEN) {
		return RMQ_ECORRUPT;
	}
	q->qid = store_get_be32(p);
	q->next_seq = store_get_be64(p + 4);
	q->count = store_get_be64(p + 12);
	q->bytes = store_get_be64(p + 20);
	q->delivered_upto = store_get_be64(p + 28);
	q->max_length = store_get_be64(p + 36);
	q->max_message_size = store_get_be32(p + 44);
	q->gen = store_get_be64(p + 48);
	if (q->qid == 0 || q->next_seq == 0) {
		return RMQ_ECORRUPT;
	}
	return 0;
}

void store_placement_encode(const struct store_placement *p, uint8_t *buf)
{
	store_put_be32(buf, p->shard);
	store_put_be64(buf + 4, p->max_length);
	store_put_be32(buf + 12, p->max_message_size);
	store_put_be64(buf + 16, p->gen);
	buf[24] = p->deleted ? 1 : 0;
}

int store_placement_decode(const MDB_val *v, struct store_placement *p)
{
	const uint8_t *b = v->mv_data;

	if (v->mv_size != STORE_PLACEMENT_REC_LEN) {
		return RMQ_ECORRUPT;
	}
	p->shard = store_get_be32(b);
	p->max_length = store_get_be64(b + 4);
	p->max_message_size = store_get_be32(b + 12);
	p->gen = store_get_be64(b + 16);
	if (b[24] > 1) {
		return RMQ_ECORRUPT;
	}
	p->deleted = b[24] == 1;
	return 0;
}

/* Node record: three strings, each u8 length ‖ bytes (length < 64). */
static int node_field_decode(const uint8_t **p, const uint8_t *end, char *dst,
			     size_t cap)
{
	size_t n;

	if (end - *p < 1) {
		return RMQ_ECORRUPT;
	}
	n = **p;
	*p += 1;
	if (n >= cap || (size_t)(end - *p) < n) {
		return RMQ_ECORRUPT;
	}
	memcpy(dst, *p, n);
	dst[n] = '\0';
	*p += n;
	return 0;
}

int store_node_decode(const MDB_val *k, const MDB_val *v, struct store_node *n)
{
	const uint8_t *p = v->mv_data;
	const uint8_t *end = p + v->mv_size;
	int rv;

	if (k->mv_size != STORE_NODE_KEY_LEN) {
		return RMQ_ECORRUPT;
	}
	memset(n, 0, sizeof *n);
	n->id = store_get_be64(k->mv_data);
	rv = node_field_decode(&p, end, n->peer_address,
			       sizeof n->peer_address);
	if (rv != 0) {
		return rv;
	}
	rv = node_field_decode(&p, end, n->client_address,
			       sizeof n->client_address);
	if (rv != 0) {
		return rv;
	}
	rv = node_field_decode(&p, end, n->http_address,
			       sizeof n->http_address);
	if (rv != 0) {
		return rv;
	}
	return p == end ? 0 : RMQ_ECORRUPT;
}

static int info_check(const MDB_val *k, const MDB_val *v)
{
	if (k->mv_size == strlen(STORE_INFO_APPLIED) &&
	    memcmp(k->mv_data, STORE_INFO_APPLIED, k->mv_size) == 0) {
		return v->mv_size == 8 ? 0 : RMQ_ECORRUPT;
	}
	if (k->mv_size == strlen(STORE_INFO_NEXT_QID) &&
	    memcmp(k->mv_data, STORE_INFO_NEXT_QID, k->mv_size) == 0) {
		return v->mv_size == 4 ? 0 : RMQ_ECORRUPT;
	}
	return RMQ_ECORRUPT;
}

int store_record_check(enum store_db db, const MDB_val *k, const MDB_val *v)
{
	struct store_queue q;
	struct store_placement p;
	struct store_node n;
	struct store_shard sh;
	const uint8_t *kb = k->mv_data;
	size_t plen;

	switch (db) {
	case STORE_DB_INFO:
		return info_check(k, v);
	case STORE_DB_QUEUES:
		if (k->mv_size == 0 || k->mv_size > STORE_MAX_NAME) {
			return RMQ_ECORRUPT;
		}
		return store_queue_decode(v, &q);
	case STORE_DB_MSGS:
		if (k->mv_size != STORE_MSG_KEY_LEN || v->mv_size < 4 ||
		    store_get_be32(v->mv_data) > v->mv_size - 4) {
			return RMQ_ECORRUPT;
		}
		return 0;
	case STORE_DB_DEDUP:
		if (k->mv_size < STORE_DEDUP_KEY_MIN ||
		    k->mv_size > STORE_DEDUP_KEY_MAX || v->mv_size != 8) {
			return RMQ_ECORRUPT;
		}
		plen = store_get_be16(kb + 4);
		return k->mv_size == 4 + 2 + plen + 8 ? 0 : RMQ_ECORRUPT;
	case STORE_DB_NODES:
		return store_node_decode(k, v, &n);
	case STORE_DB_PLACEMENT:
		if (k->mv_size == 0 || k->mv_size > STORE_MAX_NAME) {
			return RMQ_ECORRUPT;
		}
		return store_placement_decode(v, &p);
	case STORE_DB_SHARDS:
		return store_shard_decode(k, v, &sh);
	default:
		return RMQ_ECORRUPT;
	}
}

int store_key_cmp(const MDB_val *a, const MDB_val *b)
{
	size_t n = a->mv_size < b->mv_size ? a->mv_size : b->mv_size;
	int c = n != 0 ? memcmp(a->mv_data, b->mv_data, n) : 0;

	if (c != 0) {
		return c;
	}
	return a->mv_size < b->mv_size ? -1 : a->mv_size > b->mv_size;
}

uint64_t store_fnv1a64(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* ---- Environment ----------------------------------------------------- */

static int dbs_open(struct store *s)
{
	MDB_txn *txn;
	int i;
	int rv;

	rv = mdb_txn_begin(s->env, NULL, 0, &txn);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	for (i = 0; i < STORE_DB_COUNT; i++) {
		rv = mdb_dbi_open(txn, db_names[i], MDB_CREATE, &s->dbi[i]);
		if (rv != 0) {
			mdb_txn_abort(txn);
			return store_err_from_mdb(rv);
		}
	}
	rv = mdb_txn_commit(txn);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	return 0;
}

static void find_map(struct store *s);

/* Create and open s->env from s->dir, s->flags, s->map_size. */
static int env_open(struct store *s)
{
	int rv;

	rv = mdb_env_create(&s->env);
	if (rv != 0) {
		s->env = NULL;
		return store_err_from_mdb(rv);
	}
	rv = mdb_env_set_maxdbs(s->env, STORE_DB_COUNT);
	if (rv == 0) {
		rv = mdb_env_set_mapsize(s->env, s->map_size);
	}
	if (rv == 0) {
		rv = mdb_env_open(s->env, s->dir, s->flags, 0644);
	}
	if (rv != 0) {
		rv = store_err_from_mdb(rv);
		goto err_after_env_create;
	}
	rv = dbs_open(s);
	if (rv != 0) {
		goto err_after_env_create;
	}
	find_map(s);
	return 0;

err_after_env_create:
	mdb_env_close(s->env);
	s->env = NULL;
	return rv;
}

int store_open(const char *dir, const struct store_options *o,
	       struct store **out)
{
	struct store *s;
	int rv;

	if (dir == NULL || out == NULL) {
		return RMQ_EINVAL;
	}
	s = calloc(1, sizeof *s);
	if (s == NULL) {
		return RMQ_ENOMEM;
	}
	s->map_size = STORE_DEFAULT_MAP_SIZE;
	s->flags = MDB_NORDAHEAD | MDB_NOTLS;
	if (o != NULL) {
		if (o->map_size != 0) {
			s->map_size = o->map_size;
		}
		if (o->nosync) {
			s->flags |= MDB_NOSYNC;
		}
	}
	s->dir = strdup(dir);
	if (s->dir == NULL) {
		rv = RMQ_ENOMEM;
		goto err_after_alloc;
	}
	rv = env_open(s);
	if (rv != 0) {
		goto err_after_alloc;
	}
	*out = s;
	return 0;

err_after_alloc:
	free(s->dir);
	free(s);
	return rv;
}

void store_close(struct store *s)
{
	if (s == NULL) {
		return;
	}
	if (s->env != NULL) {
		mdb_env_close(s->env);
	}
	free(s->dir);
	free(s);
}

static int sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd < 0) {
		return RMQ_EIO;
	}
	int rv = fsync(fd) == 0 ? 0 : RMQ_EIO;
	close(fd);
	return rv;
}

int store_replace(struct store *s, const char *dir)
{
	char from[4096];
	char to[4096];
	int rv;

	if ((size_t)snprintf(from, sizeof from, "%s/data.mdb", dir) >=
		    sizeof from ||
	    (size_t)snprintf(to, sizeof to, "%s/data.mdb", s->dir) >=
		    sizeof to) {
		return RMQ_EINVAL;
	}
	mdb_env_close(s->env);
	s->env = NULL;
	s->map = NULL;
	rv = rename(from, to) == 0 ? 0 : RMQ_EIO;
	if (rv == 0) {
		rv = sync_dir(s->dir);
	}
	int orv = env_open(s); /* the new content, or the old one */
	if (orv != 0) {
		return RMQ_EIO;
	}
	return rv;
}

void store_release_map(struct store *s)
{
	MDB_envinfo info;
	MDB_stat st;
	long page = sysconf(_SC_PAGESIZE);

	if (s->env == NULL || s->map == NULL || page <= 0 ||
	    mdb_env_info(s->env, &info) != 0 ||
	    mdb_env_stat(s->env, &st) != 0) {
		return;
	}
	size_t used = (info.me_last_pgno + 1) * (size_t)st.ms_psize;
	used = (used + (size_t)page - 1) / (size_t)page * (size_t)page;
	if (used > s->map_len) {
		used = s->map_len;
	}
	/* The map is a read-only shared file mapping (no MDB_WRITEMAP):
	 * dropping its pages loses nothing. */
	(void)madvise(s->map, used, MADV_DONTNEED);
}

/* Where LMDB mapped data.mdb: LMDB 0.9 reports no address without
 * MDB_FIXEDMAP, so find the mapping of the file's inode in
 * /proc/self/maps. Leaves s->map NULL if it cannot be found (then
 * store_release_map() does nothing). */
static void find_map(struct store *s)
{
	char path[4200];
	char line[4600];
	struct stat st;
	FILE *f;

	s->map = NULL;
	s->map_len = 0;
	snprintf(path, sizeof path, "%s/data.mdb", s->dir);
	if (stat(path, &st) != 0) {
		return;
	}
	f = fopen("/proc/self/maps", "re");
	if (f == NULL) {
		return;
	}
	while (fgets(line, sizeof line, f) != NULL) {
		unsigned long lo, hi, ino;
		unsigned maj, min;
		if (sscanf(line, "%lx-%lx %*s %*s %x:%x %lu", &lo, &hi, &maj,
			   &min, &ino) == 5 &&
		    ino == (unsigned long)st.st_ino &&
		    makedev(maj, min) == st.st_dev && hi - lo > s->map_len) {
			s->map = (void *)lo;
			s->map_len = hi - lo;
		}
	}
	fclose(f);
}

int store_sync(struct store *s)
{
	return store_err_from_mdb(mdb_env_sync(s->env, 1));
}

int store_usage(struct store *s, size_t *used, size_t *map_size)
{
	MDB_envinfo info;
	MDB_stat st;
	int rv;

	rv = mdb_env_info(s->env, &info);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	rv = mdb_env_stat(s->env, &st);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	if (used != NULL) {
		*used = (info.me_last_pgno + 1) * (size_t)st.ms_psize;
	}
	if (map_size != NULL) {
		*map_size = info.me_mapsize;
	}
	return 0;
}

/* ---- Transactions ---------------------------------------------------- */

int store_begin(struct store *s, bool write, struct store_txn **out)
{
	struct store_txn *t;
	int rv;

	t = malloc(sizeof *t);
	if (t == NULL) {
		return RMQ_ENOMEM;
	}
	t->s = s;
	t->write = write;
	rv = mdb_txn_begin(s->env, NULL, write ? 0 : MDB_RDONLY, &t->txn);
	if (rv != 0) {
		free(t);
		return store_err_from_mdb(rv);
	}
	*out = t;
	return 0;
}

int store_commit(struct store_txn *t)
{
	int rv;

	rv = mdb_txn_commit(t->txn); /* frees the MDB_txn, also on error */
	free(t);
	return store_err_from_mdb(rv);
}

void store_abort(struct store_txn *t)
{
	if (t == NULL) {
		return;
	}
	mdb_txn_abort(t->txn);
	free(t);
}

/* ---- Applied index --------------------------------------------------- */

int store_applied_get(struct store_txn *t, uint64_t *index)
{
	MDB_val k = {strlen(STORE_INFO_APPLIED), STORE_INFO_APPLIED};
	MDB_val v;
	int rv;

	rv = mdb_get(t->txn, t->s->dbi[STORE_DB_INFO], &k, &v);
	if (rv == MDB_NOTFOUND) {
		*index = 0;
		return 0;
	}
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	if (v.mv_size != 8) {
		return RMQ_ECORRUPT;
	}
	*index = store_get_be64(v.mv_data);
	return 0;
}

int store_applied_set(struct store_txn *t, uint64_t index)
{
	MDB_val k = {strlen(STORE_INFO_APPLIED), STORE_INFO_APPLIED};
	uint8_t buf[8];
	MDB_val v = {sizeof buf, buf};

	if (!t->write) {
		return RMQ_EINVAL;
	}
	store_put_be64(buf, index);
	return store_err_from_mdb(
		mdb_put(t->txn, t->s->dbi[STORE_DB_INFO], &k, &v, 0));
}

int store_walk(MDB_txn *txn, MDB_dbi dbi, store_visit_cb visit, void *arg)
{
	MDB_cursor *c;
	MDB_val k;
	MDB_val v;
	MDB_cursor_op op = MDB_FIRST;
	int rv;

	rv = mdb_cursor_open(txn, dbi, &c);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	for (;;) {
		rv = mdb_cursor_get(c, &k, &v, op);
		op = MDB_NEXT;
		if (rv == MDB_NOTFOUND) {
			rv = 0;
			break;
		}
		if (rv != 0) {
			rv = store_err_from_mdb(rv);
			break;
		}
		rv = visit(arg, &k, &v);
		if (rv != 0) {
			break;
		}
	}
	mdb_cursor_close(c);
	return rv;
}

int store_key_name(const MDB_val *k, char *name)
{
	if (k->mv_size == 0 || k->mv_size > STORE_MAX_NAME) {
		return RMQ_ECORRUPT;
	}
	memcpy(name, k->mv_data, k->mv_size);
	name[k->mv_size] = '\0';
	return 0;
}

int store_get_named(struct store_txn *t, int db, const char *name, MDB_val *k,
		    MDB_val *v)
{
	size_t len;
	int rv = store_name_check(name, &len);
	if (rv != 0) {
		return rv;
	}
	k->mv_size = len;
	k->mv_data = (void *)name;
	return store_err_from_mdb(mdb_get(t->txn, t->s->dbi[db], k, v));
}
