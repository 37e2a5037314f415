/* fsm: apply commands to the shard store. See fsm.h. */
#include "fsm.h"

#include <stdlib.h>
#include <string.h>

#include <stdio.h>

#include <raft.h>

struct fsm {
	struct store *store;
	fsm_applied_cb cb;
	void *data;
	Rmqc__Command *cmd;        /* owned: the last decoded command */
	struct fsm_op_result *ops; /* owned scratch, cap_ops entries */
	size_t cap_ops;
	struct store_publish_result *pub; /* owned scratch */
	size_t cap_pub;
	struct store_msg_in *in; /* owned scratch */
	size_t cap_in;
	struct fsm_result result;
};

int fsm_init(struct fsm **out, struct store *store, fsm_applied_cb cb,
	     void *data)
{
	struct fsm *f = calloc(1, sizeof *f);
	if (f == NULL) {
		return RMQ_ENOMEM;
	}
	f->store = store;
	f->cb = cb;
	f->data = data;
	*out = f;
	return 0;
}

static int entry_payload(const uint8_t *buf, size_t len,
			 const uint8_t **payload, size_t *payload_len);

static void release_cmd(struct fsm *f)
{
	if (f->cmd != NULL) {
		rmqc__command__free_unpacked(f->cmd, NULL);
		f->cmd = NULL;
	}
}

void fsm_close(struct fsm *f)
{
	if (f == NULL) {
		return;
	}
	release_cmd(f);
	free(f->ops);
	free(f->pub);
	free(f->in);
	free(f);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap) {
		return 0;
	}
	size_t n = *cap ? *cap : 16;
	while (n < need) {
		n *= 2;
	}
	void *q = realloc(*p, n * elem);
	if (q == NULL) {
		return RMQ_ENOMEM;
	}
	*p = q;
	*cap = n;
	return 0;
}

/* Headers travel inside the stored record as a packed Msg holding only the
 * headers, so the store can treat them as opaque bytes. */
static int apply_publish(struct fsm *f, struct store_txn *t,
			 const Rmqc__PublishOp *op, struct fsm_op_result *res,
			 size_t *pub_used, uint8_t **hdr_bufs)
{
	int rv = grow((void **)&f->in, &f->cap_in, op->n_msgs, sizeof *f->in);
	if (rv != 0) {
		return rv;
	}
	for (size_t i = 0; i < op->n_msgs; i++) {
		const Rmqc__Msg *m = op->msgs[i];
		struct store_msg_in *in = &f->in[i];
		memset(in, 0, sizeof *in);
		in->body = m->body.data;
		in->body_len = m->body.len;
		in->producer_id = m->producer_id;
		in->producer_seq = m->producer_seq;
		if (m->n_headers > 0) {
			Rmqc__Msg h = RMQC__MSG__INIT;
			h.n_headers = m->n_headers;
			h.headers = m->headers;
			size_t len = rmqc__msg__get_packed_size(&h);
			uint8_t *b = malloc(len ? len : 1);
			if (b == NULL) {
				return RMQ_ENOMEM;
			}
			rmqc__msg__pack(&h, b);
			hdr_bufs[i] = b;
			in->headers = b;
			in->headers_len = len;
		}
	}
	res->pub = f->pub + *pub_used;
	res->n_pub = op->n_msgs;
	*pub_used += op->n_msgs;
	rv = store_publish(t, op->queue, f->in, op->n_msgs, res->pub);
	if (rv == RMQ_ENOTFOUND) {
		for (size_t i = 0; i < op->n_msgs; i++) {
			res->pub[i].status = RMQ_ENOTFOUND;
			res->pub[i].seq = 0;
			res->pub[i].duplicate = false;
		}
		res->status = RMQ_ENOTFOUND;
		return 0;
	}
	return rv;
}

/* Copy a list of node ids; RMQ_EINVAL if it is too long. */
static int copy_ids(uint64_t *dst, unsigned *n, const uint64_t *src, size_t len)
{
	if (len > STORE_SHARD_MAX_IDS) {
		return RMQ_EINVAL;
	}
	for (size_t i = 0; i < len; i++) {
		dst[i] = src[i];
	}
	*n = (unsigned)len;
	return 0;
}

static int apply_place(struct store_txn *t, const Rmqc__PlaceOp *op)
{
	struct store_shard s;
	int rv = store_shard_get(t, op->shard, &s);
	if (rv != 0 && rv != RMQ_ENOTFOUND) {
		return rv;
	}
	if (op->n_replicas == 0) {
		return RMQ_EINVAL;
	}
	rv = copy_ids(s.replicas, &s.n_replicas, op->replicas, op->n_replicas);
	if (rv != 0) {
		return rv;
	}
	s.placed = true;
	return store_shard_put(t, &s);
}

/* A report older than the one recorded (a lower term) is ignored: it
 * comes from a deposed leader. */
static int apply_shard_state(struct store_txn *t, const Rmqc__ShardStateOp *op)
{
	struct store_shard s;
	int rv = store_shard_get(t, op->shard, &s);
	if (rv != 0 && rv != RMQ_ENOTFOUND) {
		return rv;
	}
	if (op->term < s.term) {
		return 0;
	}
	s.term = op->term;
	s.leader = op->leader;
	rv = copy_ids(s.voters, &s.n_voters, op->voters, op->n_voters);
	if (rv == 0) {
		rv = copy_ids(s.others, &s.n_others, op->others, op->n_others);
	}
	return rv != 0 ? rv : store_shard_put(t, &s);
}

/* Apply one op. Returns 0 (outcome in @res) or a fatal storage error. */
static int apply_op(struct fsm *f, struct store_txn *t, const Rmqc__Op *op,
		    struct fsm_op_result *res, size_t *pub_used)
{
	int rv = 0;
	memset(res, 0, sizeof *res);
	switch (op->kind_case) {
	case RMQC__OP__KIND_PUBLISH: {
		const Rmqc__PublishOp *p = op->publish;
		uint8_t **hdr = calloc(p->n_msgs ? p->n_msgs : 1, sizeof *hdr);
		if (hdr == NULL) {
			return RMQ_ENOMEM;
		}
		rv = apply_publish(f, t, p, res, pub_used, hdr);
		for (size_t i = 0; i < p->n_msgs; i++) {
			free(hdr[i]);
		}
		free(hdr);
		return rv;
	}
	case RMQC__OP__KIND_SETTLE:
		rv = store_remove(t, op->settle->queue, op->settle->remove,
				  op->settle->n_remove,
				  op->settle->delivered_upto);
		break;
	case RMQC__OP__KIND_CREATE:
		rv = store_queue_create(t, op->create->queue,
					op->create->max_length,
					op->create->max_message_size,
					op->create->gen, &res->created);
		break;
	case RMQC__OP__KIND_DELETE:
		rv = store_queue_delete(t, op->delete_->queue);
		break;
	case RMQC__OP__KIND_NODE: {
		struct store_node n;
		memset(&n, 0, sizeof n);
		n.id = op->node->id;
		snprintf(n.peer_address, sizeof n.peer_address, "%s",
			 op->node->peer_address);
		snprintf(n.client_address, sizeof n.client_address, "%s",
			 op->node->client_address);
		snprintf(n.http_address, sizeof n.http_address, "%s",
			 op->node->http_address);
		rv = store_node_put(t, &n);
		break;
	}
	case RMQC__OP__KIND_DECLARE:
		rv = store_placement_declare(
			t, op->declare->queue, op->declare->max_length,
			op->declare->max_message_size, op->declare->n_shards,
			f->result.index, &res->placement, &res->created);
		break;
	case RMQC__OP__KIND_UNDECLARE:
		rv = store_placement_delete(t, op->undeclare->queue,
					    f->result.index);
		break;
	case RMQC__OP__KIND_PLACE:
		rv = apply_place(t, op->place);
		break;
	case RMQC__OP__KIND_SHARD_STATE:
		rv = apply_shard_state(t, op->shard_state);
		break;
	default:
		rv = RMQ_EINVAL; /* unknown op from a newer version */
		break;
	}
	/* Business outcomes stay in the result; storage faults are fatal. */
	switch (rv) {
	case 0:
		return 0;
	case RMQ_ENOTFOUND:
	case RMQ_EEXISTS:
	case RMQ_EINVAL:
	case RMQ_ETOOLARGE:
		res->status = rv;
		return 0;
	default:
		return rv;
	}
}

static int count_msgs(const Rmqc__Command *cmd, size_t *n)
{
	*n = 0;
	for (size_t i = 0; i < cmd->n_ops; i++) {
		if (cmd->ops[i]->kind_case == RMQC__OP__KIND_PUBLISH) {
			*n += cmd->ops[i]->publish->n_msgs;
		}
	}
	return 0;
}

int fsm_apply(struct fsm *f, uint64_t index, const uint8_t *buf, size_t len,
	      const struct fsm_result **result)
{
	struct store_txn *t;
	uint64_t applied;
	size_t n_msgs;
	size_t pub_used = 0;
	int rv;

	release_cmd(f);
	memset(&f->result, 0, sizeof f->result);
	f->result.index = index;

	const uint8_t *payload;
	size_t payload_len;
	if (entry_payload(buf, len, &payload, &payload_len) != 0) {
		return RMQ_ECORRUPT;
	}
	f->cmd = rmqc__command__unpack(NULL, payload_len, payload);
	if (f->cmd == NULL) {
		/* Only our own leaders write entries: an undecodable entry is
		 * corruption, not a client error. */
		return RMQ_ECORRUPT;
	}
	f->result.cmd = f->cmd;
	count_msgs(f->cmd, &n_msgs);
	rv = grow((void **)&f->ops, &f->cap_ops, f->cmd->n_ops, sizeof *f->ops);
	if (rv == 0) {
		rv = grow((void **)&f->pub, &f->cap_pub, n_msgs,
			  sizeof *f->pub);
	}
	if (rv != 0) {
		return rv;
	}
	f->result.ops = f->ops;

	rv = store_begin(f->store, true, &t);
	if (rv != 0) {
		return rv;
	}
	rv = store_applied_get(t, &applied);
	if (rv != 0) {
		goto err_after_begin;
	}
	if (index <= applied) {
		store_abort(t);
		f->result.skipped = true;
		for (size_t i = 0; i < f->cmd->n_ops; i++) {
			memset(&f->ops[i], 0, sizeof f->ops[i]);
			f->ops[i].status = RMQ_EUNAVAIL;
		}
		*result = &f->result;
		return 0;
	}
	for (size_t i = 0; i < f->cmd->n_ops; i++) {
		rv = apply_op(f, t, f->cmd->ops[i], &f->ops[i], &pub_used);
		if (rv != 0) {
			goto err_after_begin;
		}
	}
	rv = store_applied_set(t, index);
	if (rv != 0) {
		goto err_after_begin;
	}
	rv = store_commit(t);
	if (rv != 0) {
		return rv;
	}
	if (f->cb != NULL) {
		f->cb(f->data, &f->result);
	}
	*result = &f->result;
	return 0;

err_after_begin:
	store_abort(t);
	return rv;
}

/* Entry layout: u32 magic | u32 length of the packed Command | Command |
 * zero padding to a multiple of 8 bytes. canonical/raft's segment writer
 * requires entry sizes to be multiples of 8 (it pads the space it reserves
 * but not the bytes it copies, and its loader then misreads every later
 * batch of the segment and truncates the log there). */
#define ENTRY_MAGIC 0x524d5131u /* "RMQ1" */
#define ENTRY_HEADER 8

int fsm_encode(const Rmqc__Command *cmd, void **out, size_t *out_len)
{
	size_t len = rmqc__command__get_packed_size(cmd);
	if (len > UINT32_MAX - 16) {
		return RMQ_ETOOLARGE;
	}
	size_t total = (ENTRY_HEADER + len + 7) & ~(size_t)7;
	uint8_t *buf = raft_malloc(total);
	if (buf == NULL) {
		return RMQ_ENOMEM;
	}
	codec_put_u32be(buf, ENTRY_MAGIC);
	codec_put_u32be(buf + 4, (uint32_t)len);
	rmqc__command__pack(cmd, buf + ENTRY_HEADER);
	memset(buf + ENTRY_HEADER + len, 0, total - ENTRY_HEADER - len);
	*out = buf;
	*out_len = total;
	return 0;
}

/* The packed Command inside an entry; RMQ_ECORRUPT if malformed. */
static int entry_payload(const uint8_t *buf, size_t len,
			 const uint8_t **payload, size_t *payload_len)
{
	if (len < ENTRY_HEADER || codec_get_u32be(buf) != ENTRY_MAGIC) {
		return RMQ_ECORRUPT;
	}
	size_t n = codec_get_u32be(buf + 4);
	if (n > len - ENTRY_HEADER) {
		return RMQ_ECORRUPT;
	}
	*payload = buf + ENTRY_HEADER;
	*payload_len = n;
	return 0;
}

/* ---- raft_fsm adapter ---------------------------------------------- */

static int fsm_apply_cb(struct raft_fsm *rfsm, const struct raft_buffer *buf,
			void **result)
{
	struct fsm_raft *s = rfsm->data;
	const struct fsm_result *r = NULL;
	/* raft applies entries in order and bumps last_applied after each. */
	uint64_t index = raft_last_applied(s->raft) + 1;
	int rv = fsm_apply(s->fsm, index, buf->base, buf->len, &r);
	if (rv != 0) {
		fprintf(stderr,
			"raftmq: shard %u: FATAL: applying entry %llu failed: "
			"%s; this replica stops applying\n",
			s->shard_id, (unsigned long long)index,
			codec_strerror(rv));
		if (s->fatal_cb != NULL) {
			s->fatal_cb(s->cb_arg);
		}
		return RAFT_IOERR;
	}
	s->applied_bytes += buf->len;
	s->applied_entries++;
	*result = (void *)r;
	return 0;
}

/* ---- snapshot descriptors --------------------------------------------
 *
 * A snapshot is not the state: it is a 48-byte descriptor naming the
 * state it stands for, which lives in the shard's LMDB environment.
 *   u32 magic "RMQD" | u32 version (1) | u32 shard id | u32 zero |
 *   u64 applied index of the store | u64 node that took it |
 *   u64 cluster id |
 *   u64 FNV-1a 64 of the 40 bytes before
 * catchup.c makes sure raft never persists a descriptor unless the local
 * store is durable at or past its index; restore then has nothing to do.
 * Snapshots of version 1 of the format (the whole store serialized, made
 * by earlier releases) are still restored. */
#define DESC_MAGIC 0x524d5144u /* "RMQD" */
#define DESC_VERSION 1u
#define DESC_LEN FSM_DESCRIPTOR_LEN
#define FULL_SNAPSHOT_MAGIC 0x524d5153u /* "RMQS", store/snapshot.c */

static uint64_t desc_sum(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

void fsm_descriptor_encode(const struct fsm_descriptor *d, uint8_t *buf)
{
	codec_put_u32be(buf, DESC_MAGIC);
	codec_put_u32be(buf + 4, DESC_VERSION);
	codec_put_u32be(buf + 8, d->shard_id);
	codec_put_u32be(buf + 12, 0);
	codec_put_u64be(buf + 16, d->index);
	codec_put_u64be(buf + 24, d->node_id);
	codec_put_u64be(buf + 32, d->cluster_id);
	codec_put_u64be(buf + 40, desc_sum(buf, 40));
}

int fsm_descriptor_decode(const void *buf, size_t len, struct fsm_descriptor *d)
{
	const uint8_t *p = buf;
	if (len < 4 || codec_get_u32be(p) != DESC_MAGIC) {
		return RMQ_EINVAL; /* not a descriptor */
	}
	if (len != DESC_LEN || codec_get_u32be(p + 4) != DESC_VERSION ||
	    codec_get_u64be(p + 40) != desc_sum(p, 40)) {
		return RMQ_ECORRUPT;
	}
	d->shard_id = codec_get_u32be(p + 8);
	d->index = codec_get_u64be(p + 16);
	d->node_id = codec_get_u64be(p + 24);
	d->cluster_id = codec_get_u64be(p + 32);
	return 0;
}

static int applied_index(struct store *st, uint64_t *index)
{
	struct store_txn *t;
	int rv = store_begin(st, false, &t);
	if (rv != 0) {
		return rv;
	}
	rv = store_applied_get(t, index);
	store_abort(t);
	return rv;
}

static int fsm_snapshot_cb(struct raft_fsm *rfsm, struct raft_buffer *bufs[],
			   unsigned *n_bufs)
{
	struct fsm_raft *s = rfsm->data;
	struct fsm_descriptor d = {
		.shard_id = s->shard_id,
		.node_id = s->node_id,
		.cluster_id = s->cluster_id,
	};
	/* The store's applied index, not raft's: entries after the last
	 * command (barriers, configuration changes) leave no trace in the
	 * store, and a store at or past this index holds every command the
	 * snapshot covers. */
	if (applied_index(s->store, &d.index) != 0) {
		return RAFT_BUSY; /* raft retries at the next threshold */
	}
	*bufs = raft_malloc(sizeof **bufs);
	if (*bufs == NULL) {
		return RAFT_BUSY;
	}
	(*bufs)[0].base = raft_malloc(DESC_LEN);
	if ((*bufs)[0].base == NULL) {
		raft_free(*bufs);
		*bufs = NULL;
		return RAFT_BUSY;
	}
	fsm_descriptor_encode(&d, (*bufs)[0].base);
	(*bufs)[0].len = DESC_LEN;
	*n_bufs = 1;
	s->snapshots++;
	return 0;
}

static int fsm_snapshot_finalize_cb(struct raft_fsm *rfsm,
				    struct raft_buffer *bufs[],
				    unsigned *n_bufs)
{
	(void)rfsm;
	if (*bufs != NULL) {
		for (unsigned i = 0; i < *n_bufs; i++) {
			raft_free((*bufs)[i].base);
		}
		raft_free(*bufs);
	}
	*bufs = NULL;
	*n_bufs = 0;
	return 0;
}

static int restore_full(struct fsm_raft *s, struct raft_buffer *buf)
{
	int rv = store_restore(s->store, buf->base, buf->len);
	if (rv != 0) {
		fprintf(stderr, "raftmq: shard %u: restore failed: %s\n",
			s->shard_id, codec_strerror(rv));
		return RAFT_CORRUPT;
	}
	raft_free(buf->base);
	if (s->restored_cb != NULL) {
		s->restored_cb(s->cb_arg);
	}
	return 0;
}

static int fsm_restore_cb(struct raft_fsm *rfsm, struct raft_buffer *buf)
{
	struct fsm_raft *s = rfsm->data;
	struct fsm_descriptor d;
	uint64_t applied;

	int rv = fsm_descriptor_decode(buf->base, buf->len, &d);
	if (rv == RMQ_EINVAL && buf->len >= 4 &&
	    codec_get_u32be(buf->base) == FULL_SNAPSHOT_MAGIC) {
		return restore_full(s, buf);
	}
	if (rv != 0 || d.shard_id != s->shard_id ||
	    (s->cluster_id != 0 && d.cluster_id != s->cluster_id)) {
		fprintf(stderr,
			"raftmq: shard %u: restore: not a snapshot of this "
			"shard\n",
			s->shard_id);
		return RAFT_CORRUPT;
	}
	rv = applied_index(s->store, &applied);
	if (rv != 0 || applied < d.index) {
		/* catchup.c lets raft persist a descriptor only once the
		 * store is durable past it: the store lost data under us. */
		fprintf(stderr,
			"raftmq: shard %u: restore: the store is at index "
			"%llu, behind the snapshot at %llu: its data was lost "
			"(see docs/operations.md, rebuilding a node)\n",
			s->shard_id, (unsigned long long)applied,
			(unsigned long long)d.index);
		return RAFT_CORRUPT;
	}
	/* The store already holds the state: entries up to its applied index
	 * are skipped when raft replays them. */
	raft_free(buf->base);
	s->restores++;
	return 0;
}

void fsm_raft_init(struct fsm_raft *fr, struct fsm *f, struct store *s,
		   struct raft *raft, uint32_t shard_id)
{
	memset(fr, 0, sizeof *fr);
	fr->fsm = f;
	fr->store = s;
	fr->raft = raft;
	fr->shard_id = shard_id;
	fr->rfsm.version = 2;
	fr->rfsm.data = fr;
	fr->rfsm.apply = fsm_apply_cb;
	fr->rfsm.snapshot = fsm_snapshot_cb;
	fr->rfsm.restore = fsm_restore_cb;
	fr->rfsm.snapshot_finalize = fsm_snapshot_finalize_cb;
}
