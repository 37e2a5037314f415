/* meta.c: the meta shard's tables: node records ("nodes") and the
 * queue → data shard placement ("placement").
 *
 * store_placement_declare() runs inside the meta shard's replicated state
 * machine, on every replica: its choice depends only on the transaction's
 * content (no clock, no randomness), so all replicas agree.
 *
 * Threads: the thread that owns the transaction. */
#include <stdlib.h>
#include <string.h>

#include "store_internal.h"

/* ---- Nodes ----------------------------------------------------------- */

#define NODE_ADDR_CAP 64 /* sizeof store_node.*_address */
#define NODE_REC_MAX (3 * (1 + NODE_ADDR_CAP))

/* Appends one address as u8 length ‖ bytes; RMQ_EINVAL if @s is not
 * NUL-terminated within its 64 bytes. */
static int node_field_encode(uint8_t **p, const char *s)
{
	size_t n = strnlen(s, NODE_ADDR_CAP);

	if (n == NODE_ADDR_CAP) {
		return RMQ_EINVAL;
	}
	**p = (uint8_t)n;
	memcpy(*p + 1, s, n);
	*p += 1 + n;
	return 0;
}

int store_node_put(struct store_txn *t, const struct store_node *n)
{
	uint8_t kb[STORE_NODE_KEY_LEN];
	uint8_t vb[NODE_REC_MAX];
	uint8_t *p = vb;
	MDB_val k = {sizeof kb, kb};
	MDB_val v;
	int rv;

	if (!t->write) {
		return RMQ_EINVAL;
	}
	rv = node_field_encode(&p, n->peer_address);
	if (rv != 0) {
		return rv;
	}
	rv = node_field_encode(&p, n->client_address);
	if (rv != 0) {
		return rv;
	}
	rv = node_field_encode(&p, n->http_address);
	if (rv != 0) {
		return rv;
	}
	store_put_be64(kb, n->id);
	v.mv_size = (size_t)(p - vb);
	v.mv_data = vb;
	return store_err_from_mdb(
		mdb_put(t->txn, t->s->dbi[STORE_DB_NODES], &k, &v, 0));
}

int store_node_get(struct store_txn *t, uint64_t id, struct store_node *n)
{
	uint8_t kb[STORE_NODE_KEY_LEN];
	MDB_val k = {sizeof kb, kb};
	MDB_val v;
	int rv;

	store_put_be64(kb, id);
	rv = mdb_get(t->txn, t->s->dbi[STORE_DB_NODES], &k, &v);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	return store_node_decode(&k, &v, n);
}

struct node_walk {
	store_node_cb cb;
	void *arg;
};

static int node_visit(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct node_walk *w = arg;
	struct store_node n;
	int rv = store_node_decode(k, v, &n);
	return rv != 0 ? rv : w->cb(w->arg, &n);
}

int store_node_foreach(struct store_txn *t, store_node_cb cb, void *arg)
{
	struct node_walk w = {cb, arg};
	return store_walk(t->txn, t->s->dbi[STORE_DB_NODES], node_visit, &w);
}

/* ---- Placement ------------------------------------------------------- */

static int placement_read(struct store_txn *t, const char *name, MDB_val *k,
			  struct store_placement *p)
{
	MDB_val v;
	int rv = store_get_named(t, STORE_DB_PLACEMENT, name, k, &v);
	return rv != 0 ? rv : store_placement_decode(&v, p);
}

/* The shard among 1..@n_shards with the fewest placed queues, lowest id on
 * ties. Queues placed on shards above @n_shards are not counted. */
static int least_loaded(struct store_txn *t, uint32_t n_shards, uint32_t *shard)
{
	struct store_placement p;
	uint64_t *counts;
	MDB_cursor *c;
	MDB_val k;
	MDB_val v;
	MDB_cursor_op op = MDB_FIRST;
	uint32_t i;
	int rv;

	counts = calloc(n_shards, sizeof *counts);
	if (counts == NULL) {
		rv = RMQ_ENOMEM;
		goto err;
	}
	rv = mdb_cursor_open(t->txn, t->s->dbi[STORE_DB_PLACEMENT], &c);
	if (rv != 0) {
		rv = store_err_from_mdb(rv);
		goto err_after_counts_alloc;
	}
	for (;;) {
		rv = mdb_cursor_get(c, &k, &v, op);
		op = MDB_NEXT;
		if (rv == MDB_NOTFOUND) {
			break;
		}
		if (rv != 0) {
			rv = store_err_from_mdb(rv);
			goto err_after_cursor_open;
		}
		rv = store_placement_decode(&v, &p);
		if (rv != 0) {
			goto err_after_cursor_open;
		}
		if (!p.deleted && p.shard >= 1 && p.shard <= n_shards) {
			counts[p.shard - 1]++;
		}
	}
	*shard = 1;
	for (i = 1; i < n_shards; i++) {
		if (counts[i] < counts[*shard - 1]) {
			*shard = i + 1;
		}
	}
	rv = 0;

err_after_cursor_open:
	mdb_cursor_close(c);
err_after_counts_alloc:
	free(counts);
err:
	return rv;
}

int store_placement_declare(struct store_txn *t, const char *name,
			    uint64_t max_length, uint32_t max_message_size,
			    uint32_t n_shards, uint64_t gen,
			    struct store_placement *p, bool *created)
{
	struct store_placement cur;
	uint8_t vb[STORE_PLACEMENT_REC_LEN];
	MDB_val k;
	MDB_val v = {sizeof vb, vb};
	int rv;

	if (!t->write || n_shards == 0) {
		return RMQ_EINVAL;
	}
	rv = placement_read(t, name, &k, &cur);
	if (rv == 0 && cur.deleted) {
		rv = RMQ_ENOTFOUND; /* a tombstone: declare anew */
	}
	if (rv == 0) {
		if (cur.max_length != max_length ||
		    cur.max_message_size != max_message_size) {
			return RMQ_EEXISTS;
		}
		*p = cur;
		*created = false;
		return 0;
	}
	if (rv != RMQ_ENOTFOUND) {
		return rv;
	}
	rv = least_loaded(t, n_shards, &cur.shard);
	if (rv != 0) {
		return rv;
	}
	cur.max_length = max_length;
	cur.max_message_size = max_message_size;
	cur.gen = gen;
	cur.deleted = false;
	store_placement_encode(&cur, vb);
	rv = mdb_put(t->txn, t->s->dbi[STORE_DB_PLACEMENT], &k, &v, 0);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	*p = cur;
	*created = true;
	return 0;
}

int store_placement_get(struct store_txn *t, const char *name,
			struct store_placement *p)
{
	MDB_val k;

	return placement_read(t, name, &k, p);
}

int store_placement_delete(struct store_txn *t, const char *name, uint64_t gen)
{
	struct store_placement cur;
	uint8_t vb[STORE_PLACEMENT_REC_LEN];
	MDB_val k;
	MDB_val v = {sizeof vb, vb};
	int rv;

	if (!t->write) {
		return RMQ_EINVAL;
	}
	rv = placement_read(t, name, &k, &cur);
	if (rv != 0) {
		return rv;
	}
	if (cur.deleted) {
		return RMQ_ENOTFOUND;
	}
	cur.deleted = true;
	cur.gen = gen;
	store_placement_encode(&cur, vb);
	return store_err_from_mdb(
		mdb_put(t->txn, t->s->dbi[STORE_DB_PLACEMENT], &k, &v, 0));
}

struct placement_walk {
	store_placement_cb cb;
	void *arg;
};

static int placement_visit(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct placement_walk *w = arg;
	char name[STORE_MAX_NAME + 1];
	struct store_placement p;
	int rv = store_key_name(k, name);
	if (rv == 0) {
		rv = store_placement_decode(v, &p);
	}
	return rv != 0 ? rv : w->cb(w->arg, name, &p);
}

int store_placement_foreach(struct store_txn *t, store_placement_cb cb,
			    void *arg)
{
	struct placement_walk w = {cb, arg};
	return store_walk(t->txn, t->s->dbi[STORE_DB_PLACEMENT],
			  placement_visit, &w);
}

/* ---- Data shards ------------------------------------------------------ */

/* Shard record: u8 flags (bit 0: placed) ‖ u8 n_replicas ‖ u8 n_voters ‖
 * u8 n_others ‖ u64 term ‖ u64 leader ‖ the three id lists, u64 each. */
#define SHARD_REC_FIXED 20
#define SHARD_REC_MAX (SHARD_REC_FIXED + 3 * 8 * STORE_SHARD_MAX_IDS)

int store_shard_decode(const MDB_val *k, const MDB_val *v,
		       struct store_shard *s)
{
	const uint8_t *b = v->mv_data;
	size_t ids;

	if (k->mv_size != 4 || v->mv_size < SHARD_REC_FIXED) {
		return RMQ_ECORRUPT;
	}
	memset(s, 0, sizeof *s);
	s->shard = store_get_be32(k->mv_data);
	if (b[0] > 1 || b[1] > STORE_SHARD_MAX_IDS ||
	    b[2] > STORE_SHARD_MAX_IDS || b[3] > STORE_SHARD_MAX_IDS) {
		return RMQ_ECORRUPT;
	}
	s->placed = b[0] == 1;
	s->n_replicas = b[1];
	s->n_voters = b[2];
	s->n_others = b[3];
	ids = (size_t)s->n_replicas + s->n_voters + s->n_others;
	if (v->mv_size != SHARD_REC_FIXED + 8 * ids) {
		return RMQ_ECORRUPT;
	}
	s->term = store_get_be64(b + 4);
	s->leader = store_get_be64(b + 12);
	b += SHARD_REC_FIXED;
	for (unsigned i = 0; i < s->n_replicas; i++, b += 8) {
		s->replicas[i] = store_get_be64(b);
	}
	for (unsigned i = 0; i < s->n_voters; i++, b += 8) {
		s->voters[i] = store_get_be64(b);
	}
	for (unsigned i = 0; i < s->n_others; i++, b += 8) {
		s->others[i] = store_get_be64(b);
	}
	return 0;
}

int store_shard_get(struct store_txn *t, uint32_t shard, struct store_shard *s)
{
	uint8_t kb[4];
	MDB_val k = {sizeof kb, kb};
	MDB_val v;
	int rv;

	store_put_be32(kb, shard);
	rv = mdb_get(t->txn, t->s->dbi[STORE_DB_SHARDS], &k, &v);
	if (rv != 0) {
		memset(s, 0, sizeof *s);
		s->shard = shard;
		return store_err_from_mdb(rv);
	}
	return store_shard_decode(&k, &v, s);
}

int store_shard_put(struct store_txn *t, const struct store_shard *s)
{
	uint8_t kb[4];
	uint8_t vb[SHARD_REC_MAX];
	uint8_t *p = vb + SHARD_REC_FIXED;
	MDB_val k = {sizeof kb, kb};
	MDB_val v;

	if (!t->write) {
		return RMQ_EINVAL;
	}
	if (s->n_replicas > STORE_SHARD_MAX_IDS ||
	    s->n_voters > STORE_SHARD_MAX_IDS ||
	    s->n_others > STORE_SHARD_MAX_IDS) {
		return RMQ_EINVAL;
	}
	vb[0] = s->placed ? 1 : 0;
	vb[1] = (uint8_t)s->n_replicas;
	vb[2] = (uint8_t)s->n_voters;
	vb[3] = (uint8_t)s->n_others;
	store_put_be64(vb + 4, s->term);
	store_put_be64(vb + 12, s->leader);
	for (unsigned i = 0; i < s->n_replicas; i++, p += 8) {
		store_put_be64(p, s->replicas[i]);
	}
	for (unsigned i = 0; i < s->n_voters; i++, p += 8) {
		store_put_be64(p, s->voters[i]);
	}
	for (unsigned i = 0; i < s->n_others; i++, p += 8) {
		store_put_be64(p, s->others[i]);
	}
	store_put_be32(kb, s->shard);
	v.mv_size = (size_t)(p - vb);
	v.mv_data = vb;
	return store_err_from_mdb(
		mdb_put(t->txn, t->s->dbi[STORE_DB_SHARDS], &k, &v, 0));
}
