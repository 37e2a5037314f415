/* queue.c: queue records, messages and the producer dedup window of a
 * data shard.
 *
 * A queue is a record in "queues" (name → counters and limits) plus its
 * messages in "msgs" keyed by (qid, seq) and its dedup entries in "dedup"
 * keyed by (qid, producer id, producer seq). The qid prefix makes every
 * per-queue range contiguous in cursor order; qids are never reused, so a
 * queue created again under an old name starts empty.
 *
 * Everything here runs inside a caller's transaction and is deterministic:
 * the shard FSM applies it on every replica.
 *
 * Threads: the thread that owns the transaction. */
#include <string.h>

#include "store_internal.h"

static void msg_key(uint8_t *k, uint32_t qid, uint64_t seq)
{
	store_put_be32(k, qid);
	store_put_be64(k + 4, seq);
}

/* Builds the dedup key of (@qid, @pid/@plen, @pseq) into @k; returns its
 * length. @plen <= STORE_MAX_PRODUCER_ID. */
static size_t dedup_key(uint8_t *k, uint32_t qid, const char *pid, size_t plen,
			uint64_t pseq)
{
	store_put_be32(k, qid);
	store_put_be16(k + 4, (uint16_t)plen);
	memcpy(k + 6, pid, plen);
	store_put_be64(k + 6 + plen, pseq);
	return 4 + 2 + plen + 8;
}

/* Splits a stored message value into headers and body. */
static int msg_decode(const MDB_val *k, const MDB_val *v, struct store_msg *m)
{
	const uint8_t *p = v->mv_data;
	size_t hl;

	if (k->mv_size != STORE_MSG_KEY_LEN || v->mv_size < 4) {
		return RMQ_ECORRUPT;
	}
	hl = store_get_be32(p);
	if (hl > v->mv_size - 4) {
		return RMQ_ECORRUPT;
	}
	m->seq = store_get_be64((const uint8_t *)k->mv_data + 4);
	m->headers = hl != 0 ? p + 4 : NULL;
	m->headers_len = hl;
	m->body = p + 4 + hl;
	m->body_len = v->mv_size - 4 - hl;
	return 0;
}

/* Reads the record of queue @name into *q. */
static int queue_read(struct store_txn *t, const char *name, MDB_val *k,
		      struct store_queue *q)
{
	MDB_val v;
	int rv = store_get_named(t, STORE_DB_QUEUES, name, k, &v);
	return rv != 0 ? rv : store_queue_decode(&v, q);
}

static int queue_write(struct store_txn *t, MDB_val *k,
		       const struct store_queue *q)
{
	uint8_t buf[STORE_QUEUE_REC_LEN];
	MDB_val v = {sizeof buf, buf};

	store_queue_encode(q, buf);
	return store_err_from_mdb(
		mdb_put(t->txn, t->s->dbi[STORE_DB_QUEUES], k, &v, 0));
}

/* Deletes every key of @db that starts with @qid. */
static int range_delete(struct store_txn *t, enum store_db db, uint32_t qid)
{
	MDB_cursor *c;
	uint8_t prefix[4];
	MDB_val k;
	MDB_val v;
	int rv;

	store_put_be32(prefix, qid);
	rv = mdb_cursor_open(t->txn, t->s->dbi[db], &c);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	for (;;) {
		/* Seek again after each delete rather than rely on where a
		 * deletion leaves the cursor. */
		k.mv_size = sizeof prefix;
		k.mv_data = prefix;
		rv = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
		if (rv == MDB_NOTFOUND) {
			rv = 0;
			break;
		}
		if (rv != 0) {
			rv = store_err_from_mdb(rv);
			break;
		}
		if (k.mv_size < sizeof prefix ||
		    memcmp(k.mv_data, prefix, sizeof prefix) != 0) {
			break;
		}
		rv = mdb_cursor_del(c, 0);
		if (rv != 0) {
			rv = store_err_from_mdb(rv);
			break;
		}
	}
	mdb_cursor_close(c);
	return rv;
}

static int next_qid(struct store_txn *t, uint32_t *qid)
{
	MDB_val k = {strlen(STORE_INFO_NEXT_QID), (void *)STORE_INFO_NEXT_QID};
	MDB_val v;
	uint8_t buf[4];
	uint32_t id = 1;
	int rv;

	rv = mdb_get(t->txn, t->s->dbi[STORE_DB_INFO], &k, &v);
	if (rv == 0) {
		if (v.mv_size != 4) {
			return RMQ_ECORRUPT;
		}
		id = store_get_be32(v.mv_data);
		if (id == 0) {
			return RMQ_ECORRUPT;
		}
	} else if (rv != MDB_NOTFOUND) {
		return store_err_from_mdb(rv);
	}
	if (id == UINT32_MAX) {
		return RMQ_EFULL; /* qids are never reused */
	}
	store_put_be32(buf, id + 1);
	v.mv_size = sizeof buf;
	v.mv_data = buf;
	rv = mdb_put(t->txn, t->s->dbi[STORE_DB_INFO], &k, &v, 0);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	*qid = id;
	return 0;
}

int store_queue_create(struct store_txn *t, const char *name,
		       uint64_t max_length, uint32_t max_message_size,
		       uint64_t gen, bool *created)
{
	struct store_queue q;
	MDB_val k;
	int rv;

	if (!t->write) {
		return RMQ_EINVAL;
	}
	rv = queue_read(t, name, &k, &q);
	if (rv == 0) {
		if (q.max_length != max_length ||
		    q.max_message_size != max_message_size || q.gen != gen) {
			return RMQ_EEXISTS;
		}
		*created = false;
		return 0;
	}
	if (rv != RMQ_ENOTFOUND) {
		return rv;
	}
	memset(&q, 0, sizeof q);
	q.gen = gen;
	rv = next_qid(t, &q.qid);
	if (rv != 0) {
		return rv;
	}
	q.next_seq = 1;
	q.max_length = max_length;
	q.max_message_size = max_message_size;
	rv = queue_write(t, &k, &q);
	if (rv != 0) {
		return rv;
	}
	*created = true;
	return 0;
}

int store_queue_delete(struct store_txn *t, const char *name)
{
	struct store_queue q;
	MDB_val k;
	int rv;

	if (!t->write) {
		return RMQ_EINVAL;
	}
	rv = queue_read(t, name, &k, &q);
	if (rv != 0) {
		return rv;
	}
	rv = range_delete(t, STORE_DB_MSGS, q.qid);
	if (rv != 0) {
		return rv;
	}
	rv = range_delete(t, STORE_DB_DEDUP, q.qid);
	if (rv != 0) {
		return rv;
	}
	return store_err_from_mdb(
		mdb_del(t->txn, t->s->dbi[STORE_DB_QUEUES], &k, NULL));
}

int store_queue_get(struct store_txn *t, const char *name,
		    struct store_queue *q)
{
	MDB_val k;

	return queue_read(t, name, &k, q);
}

struct queue_walk {
	store_queue_cb cb;
	void *arg;
};

static int queue_visit(void *arg, const MDB_val *k, const MDB_val *v)
{
	struct queue_walk *w = arg;
	char name[STORE_MAX_NAME + 1];
	struct store_queue q;
	int rv = store_key_name(k, name);
	if (rv == 0) {
		rv = store_queue_decode(v, &q);
	}
	return rv != 0 ? rv : w->cb(w->arg, name, &q);
}

int store_queue_foreach(struct store_txn *t, store_queue_cb cb, void *arg)
{
	struct queue_walk w = {cb, arg};
	return store_walk(t->txn, t->s->dbi[STORE_DB_QUEUES], queue_visit, &w);
}

/* ---- Publish --------------------------------------------------------- */

/* State of one store_publish() call. */
struct publish {
	struct store_txn *t;
	struct store_queue q;
	MDB_cursor *msgs;
	bool append; /* our keys sort after every key of "msgs" */
};

/* MDB_APPEND is valid only while each key is larger than every key in the
 * whole database. Our keys increase within the batch, so it is enough to
 * check once that the last key of "msgs" sorts before (qid, next_seq). */
static int append_check(struct publish *p)
{
	uint8_t first[STORE_MSG_KEY_LEN];
	MDB_val k;
	MDB_val v;
	int rv;

	rv = mdb_cursor_get(p->msgs, &k, &v, MDB_LAST);
	if (rv == MDB_NOTFOUND) {
		p->append = true;
		return 0;
	}
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	if (k.mv_size != STORE_MSG_KEY_LEN) {
		return RMQ_ECORRUPT;
	}
	msg_key(first, p->q.qid, p->q.next_seq);
	p->append = memcmp(k.mv_data, first, STORE_MSG_KEY_LEN) < 0;
	return 0;
}

/* Looks up (or, with @seq, stores) the dedup entry of @m. */
static int dedup_lookup(struct publish *p, const struct store_msg_in *m,
			size_t plen, bool *found, uint64_t *seq)
{
	uint8_t kb[STORE_DEDUP_KEY_MAX];
	MDB_val k;
	MDB_val v;
	int rv;

	k.mv_size =
		dedup_key(kb, p->q.qid, m->producer_id, plen, m->producer_seq);
	k.mv_data = kb;
	rv = mdb_get(p->t->txn, p->t->s->dbi[STORE_DB_DEDUP], &k, &v);
	if (rv == MDB_NOTFOUND) {
		*found = false;
		return 0;
	}
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	if (v.mv_size != 8) {
		return RMQ_ECORRUPT;
	}
	*found = true;
	*seq = store_get_be64(v.mv_data);
	return 0;
}

/* Records (producer, producer_seq) → @seq and forgets the entry that just
 * left the window. */
static int dedup_record(struct publish *p, const struct store_msg_in *m,
			size_t plen, uint64_t seq)
{
	MDB_dbi dbi = p->t->s->dbi[STORE_DB_DEDUP];
	uint8_t kb[STORE_DEDUP_KEY_MAX];
	uint8_t vb[8];
	MDB_val k;
	MDB_val v = {sizeof vb, vb};
	int rv;

	k.mv_size =
		dedup_key(kb, p->q.qid, m->producer_id, plen, m->producer_seq);
	k.mv_data = kb;
	store_put_be64(vb, seq);
	rv = mdb_put(p->t->txn, dbi, &k, &v, 0);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	if (m->producer_seq <= STORE_DEDUP_WINDOW) {
		return 0;
	}
	k.mv_size = dedup_key(kb, p->q.qid, m->producer_id, plen,
			      m->producer_seq - STORE_DEDUP_WINDOW);
	rv = mdb_del(p->t->txn, dbi, &k, NULL);
	if (rv != 0 && rv != MDB_NOTFOUND) {
		return store_err_from_mdb(rv);
	}
	return 0;
}

static int msg_put(struct publish *p, const struct store_msg_in *m,
		   uint64_t seq)
{
	uint8_t kb[STORE_MSG_KEY_LEN];
	MDB_val k = {sizeof kb, kb};
	MDB_val v;
	uint8_t *dst;
	unsigned flags = MDB_RESERVE | MDB_NOOVERWRITE;
	int rv;

	msg_key(kb, p->q.qid, seq);
	v.mv_size = 4 + m->headers_len + m->body_len;
	if (p->append) {
		flags |= MDB_APPEND;
	}
	rv = mdb_cursor_put(p->msgs, &k, &v, flags);
	if (rv == MDB_KEYEXIST) {
		/* next_seq never goes back: the record and the messages
		 * disagree. */
		return RMQ_ECORRUPT;
	}
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	dst = v.mv_data;
	store_put_be32(dst, (uint32_t)m->headers_len);
	if (m->headers_len != 0) {
		memcpy(dst + 4, m->headers, m->headers_len);
	}
	if (m->body_len != 0) {
		memcpy(dst + 4 + m->headers_len, m->body, m->body_len);
	}
	return 0;
}

static int publish_one(struct publish *p, const struct store_msg_in *m,
		       struct store_publish_result *r)
{
	size_t plen = 0;
	bool dedup;
	bool found = false;
	uint64_t seq = 0;
	int rv;

	r->status = 0;
	r->seq = 0;
	r->duplicate = false;
	if (m->producer_id != NULL) {
		plen = strnlen(m->producer_id, STORE_MAX_PRODUCER_ID + 1);
	}
	dedup = plen != 0 && m->producer_seq != 0;
	if (dedup) {
		if (plen > STORE_MAX_PRODUCER_ID) {
			r->status = RMQ_EINVAL;
			return 0;
		}
		rv = dedup_lookup(p, m, plen, &found, &seq);
		if (rv != 0) {
			return rv;
		}
		if (found) {
			r->seq = seq;
			r->duplicate = true;
			return 0;
		}
	}
	if (p->q.max_length != 0 && p->q.count >= p->q.max_length) {
		r->status = RMQ_EFULL;
		return 0;
	}
	if ((p->q.max_message_size != 0 &&
	     m->body_len > p->q.max_message_size) ||
	    m->headers_len > UINT32_MAX - 4 ||
	    m->body_len > SIZE_MAX - 4 - m->headers_len) {
		r->status = RMQ_ETOOLARGE;
		return 0;
	}
	if (p->q.next_seq == UINT64_MAX) {
		r->status = RMQ_EFULL;
		return 0;
	}
	seq = p->q.next_seq;
	rv = msg_put(p, m, seq);
	if (rv != 0) {
		return rv;
	}
	if (dedup) {
		rv = dedup_record(p, m, plen, seq);
		if (rv != 0) {
			return rv;
		}
	}
	p->q.next_seq = seq + 1;
	p->q.count++;
	p->q.bytes += m->body_len;
	r->seq = seq;
	return 0;
}

int store_publish(struct store_txn *t, const char *name,
		  const struct store_msg_in *msgs, size_t n,
		  struct store_publish_result *results)
{
	struct publish p = {.t = t};
	MDB_val qk;
	size_t i;
	int rv;

	if (!t->write) {
		return RMQ_EINVAL;
	}
	rv = queue_read(t, name, &qk, &p.q);
	if (rv != 0) {
		return rv;
	}
	if (n == 0) {
		return 0;
	}
	rv = mdb_cursor_open(t->txn, t->s->dbi[STORE_DB_MSGS], &p.msgs);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	rv = append_check(&p);
	if (rv != 0) {
		goto out;
	}
	for (i = 0; i < n; i++) {
		rv = publish_one(&p, &msgs[i], &results[i]);
		if (rv != 0) {
			goto out;
		}
	}
	rv = queue_write(t, &qk, &p.q);
out:
	mdb_cursor_close(p.msgs);
	return rv;
}

/* ---- Remove and read ------------------------------------------------- */

int store_remove(struct store_txn *t, const char *name, const uint64_t *seqs,
		 size_t n, uint64_t delivered_upto)
{
	struct store_queue q;
	struct store_msg m;
	uint8_t kb[STORE_MSG_KEY_LEN];
	MDB_cursor *c;
	MDB_val qk;
	MDB_val k;
	MDB_val v;
	size_t i;
	int rv;

	if (!t->write) {
		return RMQ_EINVAL;
	}
	rv = queue_read(t, name, &qk, &q);
	if (rv != 0) {
		return rv;
	}
	rv = mdb_cursor_open(t->txn, t->s->dbi[STORE_DB_MSGS], &c);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	for (i = 0; i < n; i++) {
		msg_key(kb, q.qid, seqs[i]);
		k.mv_size = sizeof kb;
		k.mv_data = kb;
		rv = mdb_cursor_get(c, &k, &v, MDB_SET_KEY);
		if (rv == MDB_NOTFOUND) {
			continue;
		}
		if (rv != 0) {
			rv = store_err_from_mdb(rv);
			goto out;
		}
		rv = msg_decode(&k, &v, &m);
		if (rv != 0) {
			goto out;
		}
		if (q.count == 0 || q.bytes < m.body_len) {
			rv = RMQ_ECORRUPT;
			goto out;
		}
		rv = mdb_cursor_del(c, 0);
		if (rv != 0) {
			rv = store_err_from_mdb(rv);
			goto out;
		}
		q.count--;
		q.bytes -= m.body_len;
	}
	if (delivered_upto > q.delivered_upto) {
		q.delivered_upto = delivered_upto;
	}
	rv = queue_write(t, &qk, &q);
out:
	mdb_cursor_close(c);
	return rv;
}

int store_msg_next(struct store_txn *t, uint32_t qid, uint64_t from,
		   struct store_msg *m)
{
	uint8_t kb[STORE_MSG_KEY_LEN];
	MDB_cursor *c;
	MDB_val k = {sizeof kb, kb};
	MDB_val v;
	int rv;

	msg_key(kb, qid, from);
	rv = mdb_cursor_open(t->txn, t->s->dbi[STORE_DB_MSGS], &c);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	rv = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	if (rv != 0) {
		rv = store_err_from_mdb(rv);
		goto out;
	}
	if (k.mv_size < 4 || store_get_be32(k.mv_data) != qid) {
		rv = RMQ_ENOTFOUND;
		goto out;
	}
	rv = msg_decode(&k, &v, m);
out:
	mdb_cursor_close(c);
	return rv;
}

int store_msg_get(struct store_txn *t, uint32_t qid, uint64_t seq,
		  struct store_msg *m)
{
	uint8_t kb[STORE_MSG_KEY_LEN];
	MDB_val k = {sizeof kb, kb};
	MDB_val v;
	int rv;

	msg_key(kb, qid, seq);
	rv = mdb_get(t->txn, t->s->dbi[STORE_DB_MSGS], &k, &v);
	if (rv != 0) {
		return store_err_from_mdb(rv);
	}
	return msg_decode(&k, &v, m);
}
