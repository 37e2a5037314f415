/* Unit tests of store/: each test opens a store in a fresh directory under
 * /tmp and removes it afterwards. */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "store.h"

/* ---- Fixture --------------------------------------------------------- */

struct env {
	char dir[64];
	struct store *s;
};

static int env_open(struct env *e, size_t map_size)
{
	struct store_options o = {.map_size = map_size, .nosync = true};

	snprintf(e->dir, sizeof e->dir, "/tmp/rmq-store-XXXXXX");
	if (mkdtemp(e->dir) == NULL) {
		return -1;
	}
	return store_open(e->dir, &o, &e->s);
}

static void env_remove_dir(const char *dir)
{
	struct dirent *d;
	DIR *dp;

	dp = opendir(dir);
	if (dp == NULL) {
		return;
	}
	while ((d = readdir(dp)) != NULL) {
		if (strcmp(d->d_name, ".") == 0 ||
		    strcmp(d->d_name, "..") == 0) {
			continue;
		}
		unlinkat(dirfd(dp), d->d_name, 0);
	}
	closedir(dp);
	rmdir(dir);
}

static void env_close(struct env *e)
{
	store_close(e->s);
	e->s = NULL;
	env_remove_dir(e->dir);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof *e);

	if (e == NULL || env_open(e, 0) != 0) {
		free(e);
		return -1;
	}
	*state = e;
	return 0;
}

/* A 256 KiB map: room for a few hundred small messages. */
static int setup_small_map(void **state)
{
	struct env *e = calloc(1, sizeof *e);

	if (e == NULL || env_open(e, 256 * 1024) != 0) {
		free(e);
		return -1;
	}
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	env_close(e);
	free(e);
	return 0;
}

/* ---- Helpers --------------------------------------------------------- */

static struct store_txn *wbegin(struct store *s)
{
	struct store_txn *t = NULL;

	assert_int_equal(store_begin(s, true, &t), 0);
	return t;
}

static struct store_txn *rbegin(struct store *s)
{
	struct store_txn *t = NULL;

	assert_int_equal(store_begin(s, false, &t), 0);
	return t;
}

static void create_queue(struct store *s, const char *name, uint64_t max_length,
			 uint32_t max_message_size)
{
	struct store_txn *t = wbegin(s);
	bool created = false;

	assert_int_equal(store_queue_create(t, name, max_length,
					    max_message_size, 1, &created),
			 0);
	assert_true(created);
	assert_int_equal(store_commit(t), 0);
}

static struct store_msg_in msg_in(const char *body, const char *pid,
				  uint64_t pseq)
{
	struct store_msg_in m = {
		.body = (const uint8_t *)body,
		.body_len = strlen(body),
		.producer_id = pid,
		.producer_seq = pseq,
	};
	return m;
}

/* Publishes one message in its own transaction; returns the result. */
static struct store_publish_result publish1(struct store *s, const char *q,
					    const char *body, const char *pid,
					    uint64_t pseq)
{
	struct store_msg_in m = msg_in(body, pid, pseq);
	struct store_publish_result r;
	struct store_txn *t = wbegin(s);

	assert_int_equal(store_publish(t, q, &m, 1, &r), 0);
	assert_int_equal(store_commit(t), 0);
	return r;
}

static struct store_queue queue_get(struct store *s, const char *name)
{
	struct store_queue q;
	struct store_txn *t = rbegin(s);

	assert_int_equal(store_queue_get(t, name, &q), 0);
	store_abort(t);
	return q;
}

/* Body of message (@qid, @seq) as a string in @buf, or "" if absent. */
static const char *body_of(struct store *s, uint32_t qid, uint64_t seq,
			   char *buf, size_t cap)
{
	struct store_txn *t = rbegin(s);
	struct store_msg m;

	buf[0] = '\0';
	if (store_msg_get(t, qid, seq, &m) == 0) {
		assert_true(m.body_len < cap);
		memcpy(buf, m.body, m.body_len);
		buf[m.body_len] = '\0';
	}
	store_abort(t);
	return buf;
}

/* Seqs of queue @qid in order, into @seqs; returns how many. */
static size_t list_seqs(struct store *s, uint32_t qid, uint64_t *seqs,
			size_t cap)
{
	struct store_txn *t = rbegin(s);
	struct store_msg m;
	uint64_t from = 0;
	size_t n = 0;
	int rv;

	while ((rv = store_msg_next(t, qid, from, &m)) == 0) {
		assert_true(n < cap);
		seqs[n++] = m.seq;
		from = m.seq + 1;
	}
	assert_int_equal(rv, RMQ_ENOTFOUND);
	store_abort(t);
	return n;
}

static void snapshot_of(struct store *s, uint8_t **buf, size_t *len)
{
	assert_int_equal(store_snapshot(s, buf, len, SIZE_MAX), 0);
}

/* ---- Transactions and applied index ---------------------------------- */

static void applied_index_fresh_store_is_zero(void **state)
{
	struct env *e = *state;
	struct store_txn *t = rbegin(e->s);
	uint64_t idx = 99;

	assert_int_equal(store_applied_get(t, &idx), 0);
	assert_int_equal(idx, 0);
	store_abort(t);
}

static void applied_index_commit_with_data_round_trips(void **state)
{
	struct env *e = *state;
	struct store_txn *t;
	struct store_queue q;
	bool created;
	uint64_t idx = 0;

	t = wbegin(e->s);
	assert_int_equal(store_queue_create(t, "q", 0, 0, 1, &created), 0);
	assert_int_equal(store_applied_set(t, 42), 0);
	assert_int_equal(store_applied_get(t, &idx), 0);
	assert_int_equal(idx, 42);
	assert_int_equal(store_commit(t), 0);

	t = rbegin(e->s);
	assert_int_equal(store_applied_get(t, &idx), 0);
	assert_int_equal(idx, 42);
	assert_int_equal(store_queue_get(t, "q", &q), 0);
	assert_int_equal(store_commit(t), 0); /* commit of a read txn */
}

static void applied_index_abort_discards_data_and_index(void **state)
{
	struct env *e = *state;
	struct store_txn *t;
	struct store_queue q;
	bool created;
	uint64_t idx = 0;

	t = wbegin(e->s);
	assert_int_equal(store_applied_set(t, 7), 0);
	assert_int_equal(store_commit(t), 0);

	t = wbegin(e->s);
	assert_int_equal(store_queue_create(t, "q", 0, 0, 1, &created), 0);
	assert_int_equal(store_applied_set(t, 8), 0);
	store_abort(t);

	t = rbegin(e->s);
	assert_int_equal(store_applied_get(t, &idx), 0);
	assert_int_equal(idx, 7);
	assert_int_equal(store_queue_get(t, "q", &q), RMQ_ENOTFOUND);
	store_abort(t);
}

static void txn_read_writers_return_einval(void **state)
{
	struct env *e = *state;
	struct store_txn *t = rbegin(e->s);
	bool created;

	assert_int_equal(store_applied_set(t, 1), RMQ_EINVAL);
	assert_int_equal(store_queue_create(t, "q", 0, 0, 1, &created),
			 RMQ_EINVAL);
	store_abort(t);
}

static void txn_reads_coexist_with_write(void **state)
{
	struct env *e = *state;
	struct store_txn *w;
	struct store_txn *r1;
	struct store_txn *r2;
	uint64_t idx;

	w = wbegin(e->s);
	assert_int_equal(store_applied_set(w, 5), 0);
	r1 = rbegin(e->s);
	r2 = rbegin(e->s);
	assert_int_equal(store_applied_get(r1, &idx), 0);
	assert_int_equal(idx, 0); /* readers do not see the open write */
	assert_int_equal(store_commit(w), 0);
	assert_int_equal(store_applied_get(r2, &idx), 0);
	assert_int_equal(idx, 0); /* snapshot isolation */
	store_abort(r1);
	store_abort(r2);
}

static void open_missing_dir_returns_eio(void **state)
{
	struct env *e = *state;
	struct store *s = NULL;
	char dir[128];

	snprintf(dir, sizeof dir, "%s/missing", e->dir);
	assert_int_equal(store_open(dir, NULL, &s), RMQ_EIO);
	assert_null(s);
}

static void usage_reports_used_within_map_size(void **state)
{
	struct env *e = *state;
	size_t used = 0;
	size_t map = 0;

	assert_int_equal(store_usage(e->s, &used, &map), 0);
	assert_int_equal(map, (size_t)1 << 30);
	assert_true(used > 0);
	assert_true(used < map);
	assert_int_equal(store_sync(e->s), 0);
}

/* ---- Queues ---------------------------------------------------------- */

static void queue_create_same_limits_is_idempotent(void **state)
{
	struct env *e = *state;
	struct store_txn *t;
	struct store_queue q1;
	struct store_queue q2;
	bool created = true;

	create_queue(e->s, "orders", 10, 100);
	q1 = queue_get(e->s, "orders");
	t = wbegin(e->s);
	assert_int_equal(store_queue_create(t, "orders", 10, 100, 1, &created),
			 0);
	assert_false(created);
	assert_int_equal(store_commit(t), 0);
	q2 = queue_get(e->s, "orders");
	assert_int_equal(q1.qid, q2.qid);
	assert_int_equal(q2.next_seq, 1);
	assert_int_equal(q2.max_length, 10);
	assert_int_equal(q2.max_message_size, 100);
}

static void queue_create_other_limits_returns_eexists(void **state)
{
	struct env *e = *state;
	struct store_txn *t;
	bool created;

	create_queue(e->s, "orders", 10, 100);
	t = wbegin(e->s);
	assert_int_equal(store_queue_create(t, "orders", 11, 100, 1, &created),
			 RMQ_EEXISTS);
	assert_int_equal(store_queue_create(t, "orders", 10, 0, 1, &created),
			 RMQ_EEXISTS);
	/* Another incarnation of the same name: the old one goes first. */
	assert_int_equal(store_queue_create(t, "orders", 10, 100, 2, &created),
			 RMQ_EEXISTS);
	store_abort(t);
}

static void queue_create_bad_name_returns_einval(void **state)
{
	struct env *e = *state;
	struct store_txn *t = wbegin(e->s);
	char name[STORE_MAX_NAME + 2];
	bool created;

	memset(name, 'a', sizeof name - 1);
	name[sizeof name - 1] = '\0';
	assert_int_equal(store_queue_create(t, "", 0, 0, 1, &created),
			 RMQ_EINVAL);
	assert_int_equal(store_queue_create(t, NULL, 0, 0, 1, &created),
			 RMQ_EINVAL);
	assert_int_equal(store_queue_create(t, name, 0, 0, 1, &created),
			 RMQ_EINVAL);
	name[STORE_MAX_NAME] = '\0'; /* 255 bytes: allowed */
	assert_int_equal(store_queue_create(t, name, 0, 0, 1, &created), 0);
	assert_true(created);
	assert_int_equal(store_commit(t), 0);
}

static int collect_names_cb(void *arg, const char *name,
			    const struct store_queue *q)
{
	char *out = arg;

	(void)q;
	strcat(out, name);
	strcat(out, ",");
	return 0;
}

static int stop_cb(void *arg, const char *name, const struct store_queue *q)
{
	(void)arg;
	(void)name;
	(void)q;
	return 17;
}

static void queue_foreach_walks_in_name_order(void **state)
{
	struct env *e = *state;
	struct store_txn *t;
	char names[64] = "";

	create_queue(e->s, "b", 0, 0);
	create_queue(e->s, "a", 0, 0);
	create_queue(e->s, "c", 0, 0);
	t = rbegin(e->s);
	assert_int_equal(store_queue_foreach(t, collect_names_cb, names), 0);
	assert_string_equal(names, "a,b,c,");
	assert_int_equal(store_queue_foreach(t, stop_cb, NULL), 17);
	store_abort(t);
}

static void queue_unknown_returns_enotfound(void **state)
{
	struct env *e = *state;
	struct store_txn *t = wbegin(e->s);
	struct store_msg_in m = msg_in("x", NULL, 0);
	struct store_publish_result r = {.status = 123};
	struct store_queue q;
	struct store_msg msg;
	uint64_t seq = 1;

	assert_int_equal(store_publish(t, "nope", &m, 1, &r), RMQ_ENOTFOUND);
	assert_int_equal(r.status, 123); /* no result written */
	assert_int_equal(store_remove(t, "nope", &seq, 1, 1), RMQ_ENOTFOUND);
	assert_int_equal(store_queue_get(t, "nope", &q), RMQ_ENOTFOUND);
	assert_int_equal(store_queue_delete(t, "nope"), RMQ_ENOTFOUND);
	assert_int_equal(store_msg_get(t, 1, 1, &msg), RMQ_ENOTFOUND);
	assert_int_equal(store_msg_next(t, 1, 0, &msg), RMQ_ENOTFOUND);
	store_abort(t);
}

/* ---- Publish --------------------------------------------------------- */

static void
publish_assigns_increasing_seqs_and_persists_across_reopen(void **state)
{
	struct env *e = *state;
	struct store_options o = {.nosync = false};
	struct store_msg_in in[3];
	struct store_publish_result r[3];
	struct store_txn *t;
	struct store_queue q;
	struct store_msg m;
	uint8_t hdr[3] = {1, 2, 3};
	char buf[32];

	create_queue(e->s, "q", 0, 0);
	in[0] = msg_in("one", NULL, 0);
	in[1] = msg_in("two", "", 0);
	in[2] = msg_in("three", NULL, 0);
	in[2].headers = hdr;
	in[2].headers_len = sizeof hdr;
	t = wbegin(e->s);
	assert_int_equal(store_publish(t, "q", in, 3, r), 0);
	assert_int_equal(store_applied_set(t, 3), 0);
	assert_int_equal(store_commit(t), 0);
	assert_int_equal(r[0].seq, 1);
	assert_int_equal(r[1].seq, 2);
	assert_int_equal(r[2].seq, 3);
	assert_int_equal(r[0].status, 0);
	assert_false(r[2].duplicate);
	assert_int_equal(publish1(e->s, "q", "four", NULL, 0).seq, 4);

	store_close(e->s);
	e->s = NULL;
	assert_int_equal(store_open(e->dir, &o, &e->s), 0);

	q = queue_get(e->s, "q");
	assert_int_equal(q.next_seq, 5);
	assert_int_equal(q.count, 4);
	assert_int_equal(q.bytes, 3 + 3 + 5 + 4);
	assert_string_equal(body_of(e->s, q.qid, 1, buf, sizeof buf), "one");
	assert_string_equal(body_of(e->s, q.qid, 4, buf, sizeof buf), "four");
	t = rbegin(e->s);
	assert_int_equal(store_msg_get(t, q.qid, 3, &m), 0);
	assert_int_equal(m.seq, 3);
	assert_int_equal(m.headers_len, 3);
	assert_memory_equal(m.headers, hdr, 3);
	assert_int_equal(m.body_len, 5);
	assert_memory_equal(m.body, "three", 5);
	assert_int_equal(store_msg_get(t, q.qid, 1, &m), 0);
	assert_null(m.headers);
	assert_int_equal(m.headers_len, 0);
	store_abort(t);
	/* And it keeps counting after the reopen. */
	assert_int_equal(publish1(e->s, "q", "five", NULL, 0).seq, 5);
}

static void publish_interleaved_queues_keep_their_own_order(void **state)
{
	struct env *e = *state;
	struct store_queue a;
	struct store_queue b;
	uint64_t seqs[8];
	char buf[16];
	int i;

	create_queue(e->s, "a", 0, 0);
	create_queue(e->s, "b", 0, 0);
	for (i = 0; i < 3; i++) {
		assert_int_equal(publish1(e->s, "b", "B", NULL, 0).seq,
				 (uint64_t)i + 1);
		assert_int_equal(publish1(e->s, "a", "A", NULL, 0).seq,
				 (uint64_t)i + 1);
	}
	a = queue_get(e->s, "a");
	b = queue_get(e->s, "b");
	assert_int_not_equal(a.qid, b.qid);
	assert_int_equal(list_seqs(e->s, a.qid, seqs, 8), 3);
	assert_int_equal(list_seqs(e->s, b.qid, seqs, 8), 3);
	assert_int_equal(seqs[2], 3);
	assert_string_equal(body_of(e->s, a.qid, 2, buf, sizeof buf), "A");
	assert_string_equal(body_of(e->s, b.qid, 2, buf, sizeof buf), "B");
}

static void publish_duplicate_producer_seq_returns_original_seq(void **state)
{
	struct env *e = *state;
	struct store_msg_in in[3];
	struct store_publish_result r[3];
	struct store_publish_result r1;
	struct store_txn *t;
	struct store_queue q;
	char buf[16];

	create_queue(e->s, "q", 0, 0);
	r1 = publish1(e->s, "q", "first", "p1", 10);
	assert_int_equal(r1.seq, 1);
	assert_false(r1.duplicate);

	/* A retry in a later batch, and a duplicate inside one batch. */
	in[0] = msg_in("retry", "p1", 10);
	in[1] = msg_in("new", "p1", 11);
	in[2] = msg_in("again", "p1", 11);
	t = wbegin(e->s);
	assert_int_equal(store_publish(t, "q", in, 3, r), 0);
	assert_int_equal(store_commit(t), 0);
	assert_true(r[0].duplicate);
	assert_int_equal(r[0].status, 0);
	assert_int_equal(r[0].seq, 1);
	assert_false(r[1].duplicate);
	assert_int_equal(r[1].seq, 2);
	assert_true(r[2].duplicate);
	assert_int_equal(r[2].seq, 2);

	/* Same producer seq from another producer is not a duplicate. */
	assert_false(publish1(e->s, "q", "other", "p2", 10).duplicate);

	q = queue_get(e->s, "q");
	assert_int_equal(q.count, 3);
	assert_int_equal(q.next_seq, 4);
	assert_int_equal(q.bytes, 5 + 3 + 5);
	assert_string_equal(body_of(e->s, q.qid, 1, buf, sizeof buf), "first");

	/* Still a duplicate after the message was removed (acked). */
	t = wbegin(e->s);
	assert_int_equal(store_remove(t, "q", &r1.seq, 1, 1), 0);
	assert_int_equal(store_commit(t), 0);
	r1 = publish1(e->s, "q", "retry", "p1", 10);
	assert_true(r1.duplicate);
	assert_int_equal(r1.seq, 1);
	assert_int_equal(queue_get(e->s, "q").count, 2);
}

static void publish_dedup_window_forgets_oldest_entry(void **state)
{
	struct env *e = *state;
	struct store_publish_result r;

	create_queue(e->s, "q", 0, 0);
	assert_int_equal(publish1(e->s, "q", "a", "p", 1).seq, 1);
	assert_int_equal(publish1(e->s, "q", "b", "p", 2).seq, 2);
	/* Entering 1 + WINDOW pushes 1 out of the window, not 2. */
	assert_int_equal(publish1(e->s, "q", "c", "p",
				  1 + (uint64_t)STORE_DEDUP_WINDOW)
				 .seq,
			 3);
	r = publish1(e->s, "q", "b", "p", 2);
	assert_true(r.duplicate);
	assert_int_equal(r.seq, 2);
	r = publish1(e->s, "q", "a", "p", 1);
	assert_false(r.duplicate);
	assert_int_equal(r.seq, 4);
}

static void publish_over_max_length_returns_efull_per_message(void **state)
{
	struct env *e = *state;
	struct store_msg_in in[4];
	struct store_publish_result r[4];
	struct store_txn *t;
	struct store_queue q;
	uint64_t seq = 1;

	create_queue(e->s, "q", 2, 0);
	in[0] = msg_in("a", NULL, 0);
	in[1] = msg_in("b", "p", 1);
	in[2] = msg_in("c", "p", 2);
	in[3] = msg_in("d", "p", 1); /* duplicate wins over full */
	t = wbegin(e->s);
	assert_int_equal(store_publish(t, "q", in, 4, r), 0);
	assert_int_equal(store_commit(t), 0);
	assert_int_equal(r[0].status, 0);
	assert_int_equal(r[1].status, 0);
	assert_int_equal(r[2].status, RMQ_EFULL);
	assert_int_equal(r[3].status, 0);
	assert_true(r[3].duplicate);
	assert_int_equal(r[3].seq, 2);
	q = queue_get(e->s, "q");
	assert_int_equal(q.count, 2);
	assert_int_equal(q.next_seq, 3);

	/* A full message was not recorded for dedup: after room is made, the
	 * retry is stored. */
	t = wbegin(e->s);
	assert_int_equal(store_remove(t, "q", &seq, 1, 1), 0);
	assert_int_equal(store_commit(t), 0);
	r[0] = publish1(e->s, "q", "c", "p", 2);
	assert_int_equal(r[0].status, 0);
	assert_false(r[0].duplicate);
	assert_int_equal(r[0].seq, 3);
}

static void publish_over_max_message_size_returns_etoolarge(void **state)
{
	struct env *e = *state;
	struct store_msg_in in[3];
	struct store_publish_result r[3];
	struct store_txn *t;
	struct store_queue q;

	create_queue(e->s, "q", 0, 4);
	in[0] = msg_in("1234", NULL, 0);
	in[1] = msg_in("12345", "p", 1);
	in[2] = msg_in("", NULL, 0);
	t = wbegin(e->s);
	assert_int_equal(store_publish(t, "q", in, 3, r), 0);
	assert_int_equal(store_commit(t), 0);
	assert_int_equal(r[0].status, 0);
	assert_int_equal(r[0].seq, 1);
	assert_int_equal(r[1].status, RMQ_ETOOLARGE);
	assert_int_equal(r[2].status, 0);
	assert_int_equal(r[2].seq, 2);
	q = queue_get(e->s, "q");
	assert_int_equal(q.count, 2);
	assert_int_equal(q.bytes, 4);
}

static void publish_long_producer_id_returns_einval(void **state)
{
	struct env *e = *state;
	char pid[STORE_MAX_PRODUCER_ID + 2];
	struct store_publish_result r;

	create_queue(e->s, "q", 0, 0);
	memset(pid, 'p', sizeof pid - 1);
	pid[sizeof pid - 1] = '\0';
	r = publish1(e->s, "q", "x", pid, 1);
	assert_int_equal(r.status, RMQ_EINVAL);
	assert_int_equal(queue_get(e->s, "q").count, 0);
	pid[STORE_MAX_PRODUCER_ID] = '\0';
	r = publish1(e->s, "q", "x", pid, 1);
	assert_int_equal(r.status, 0);
	assert_true(publish1(e->s, "q", "x", pid, 1).duplicate);
}

/* ---- Remove and iteration -------------------------------------------- */

static void remove_twice_is_idempotent_and_updates_counters(void **state)
{
	struct env *e = *state;
	struct store_txn *t;
	struct store_queue q;
	uint64_t seqs[3] = {2, 99, 2};
	char buf[16];

	create_queue(e->s, "q", 0, 0);
	publish1(e->s, "q", "aa", NULL, 0);
	publish1(e->s, "q", "bbb", NULL, 0);
	publish1(e->s, "q", "c", NULL, 0);

	t = wbegin(e->s);
	assert_int_equal(store_remove(t, "q", seqs, 3, 2), 0);
	assert_int_equal(store_commit(t), 0);
	q = queue_get(e->s, "q");
	assert_int_equal(q.count, 2);
	assert_int_equal(q.bytes, 3);
	assert_int_equal(q.delivered_upto, 2);

	/* Again, with a lower delivered_upto: nothing changes. */
	t = wbegin(e->s);
	assert_int_equal(store_remove(t, "q", seqs, 1, 1), 0);
	assert_int_equal(store_commit(t), 0);
	q = queue_get(e->s, "q");
	assert_int_equal(q.count, 2);
	assert_int_equal(q.bytes, 3);
	assert_int_equal(q.delivered_upto, 2);
	assert_string_equal(body_of(e->s, q.qid, 2, buf, sizeof buf), "");
	assert_string_equal(body_of(e->s, q.qid, 3, buf, sizeof buf), "c");
}

static void msg_next_skips_removed_messages(void **state)
{
	struct env *e = *state;
	struct store_txn *t;
	struct store_queue q;
	struct store_msg m;
	uint64_t rm[3] = {1, 3, 4};
	uint64_t seqs[8];
	int i;

	create_queue(e->s, "q", 0, 0);
	for (i = 0; i < 6; i++) {
		publish1(e->s, "q", "m", NULL, 0);
	}
	t = wbegin(e->s);
	assert_int_equal(store_remove(t, "q", rm, 3, 4), 0);
	assert_int_equal(store_commit(t), 0);
	q = queue_get(e->s, "q");
	assert_int_equal(list_seqs(e->s, q.qid, seqs, 8), 3);
	assert_int_equal(seqs[0], 2);
	assert_int_equal(seqs[1], 5);
	assert_int_equal(seqs[2], 6);
	t = rbegin(e->s);
	assert_int_equal(store_msg_next(t, q.qid, 3, &m), 0);
	assert_int_equal(m.seq, 5);
	assert_int_equal(store_msg_next(t, q.qid, 7, &m), RMQ_ENOTFOUND);
	store_abort(t);
}

static void queue_delete_removes_messages_and_dedup(void **state)
{
	struct env *e = *state;
	struct store_txn *t;
	struct store_queue gone;
	struct store_queue kept;
	struct store_queue again;
	struct store_msg m;
	struct store_publish_result r;
	uint64_t seqs[8];
	int i;

	create_queue(e->s, "gone", 0, 0);
	create_queue(e->s, "kept", 0, 0);
	for (i = 0; i < 4; i++) {
		publish1(e->s, "gone", "g", "p", (uint64_t)i + 1);
		publish1(e->s, "kept", "k", "p", (uint64_t)i + 1);
	}
	gone = queue_get(e->s, "gone");
	t = wbegin(e->s);
	assert_int_equal(store_queue_delete(t, "gone"), 0);
	assert_int_equal(store_queue_delete(t, "gone"), RMQ_ENOTFOUND);
	assert_int_equal(store_commit(t), 0);

	t = rbegin(e->s);
	assert_int_equal(store_queue_get(t, "gone", &again), RMQ_ENOTFOUND);
	assert_int_equal(store_msg_next(t, gone.qid, 0, &m), RMQ_ENOTFOUND);
	store_abort(t);
	kept = queue_get(e->s, "kept");
	assert_int_equal(kept.count, 4);
	assert_int_equal(list_seqs(e->s, kept.qid, seqs, 8), 4);
	assert_true(publish1(e->s, "kept", "k", "p", 2).duplicate);

	/* Created again: a new qid, empty, and the old dedup entries are
	 * gone. */
	create_queue(e->s, "gone", 0, 0);
	again = queue_get(e->s, "gone");
	assert_int_not_equal(again.qid, gone.qid);
	assert_int_equal(again.count, 0);
	r = publish1(e->s, "gone", "g", "p", 1);
	assert_false(r.duplicate);
	assert_int_equal(r.seq, 1);
}

/* ---- Meta: nodes and placement --------------------------------------- */

static void
placement_declare_spreads_across_shards_and_is_idempotent(void **state)
{
	struct env *e = *state;
	struct store_txn *t;
	struct store_placement p;
	unsigned per_shard[4] = {0};
	char name[16];
	bool created;
	int i;

	t = wbegin(e->s);
	for (i = 0; i < 9; i++) {
		snprintf(name, sizeof name, "q%d", i);
		assert_int_equal(store_placement_declare(t, name, 0, 0, 3, 1,
							 &p, &created),
				 0);
		assert_true(created);
		assert_true(p.shard >= 1 && p.shard <= 3);
		/* Least loaded, lowest id on ties: 1,2,3,1,2,3,... */
		assert_int_equal(p.shard, (uint32_t)(i % 3) + 1);
		per_shard[p.shard]++;
	}
	assert_int_equal(per_shard[1], 3);
	assert_int_equal(per_shard[2], 3);
	assert_int_equal(per_shard[3], 3);

	assert_int_equal(
		store_placement_declare(t, "q4", 0, 0, 3, 1, &p, &created), 0);
	assert_false(created);
	assert_int_equal(p.shard, 2);
	assert_int_equal(store_placement_declare(t, "q4", 5, 0, 3, 1, &p,
						 &created),
			 RMQ_EEXISTS);

	/* Deleting two queues of shard 2 makes it the least loaded. */
	assert_int_equal(store_placement_delete(t, "q1", 2), 0);
	assert_int_equal(store_placement_delete(t, "q4", 2), 0);
	assert_int_equal(store_placement_delete(t, "q4", 2), RMQ_ENOTFOUND);
	assert_int_equal(
		store_placement_declare(t, "new", 7, 8, 3, 1, &p, &created), 0);
	assert_int_equal(p.shard, 2);
	assert_int_equal(store_commit(t), 0);

	t = rbegin(e->s);
	assert_int_equal(store_placement_get(t, "new", &p), 0);
	assert_int_equal(p.shard, 2);
	assert_int_equal(p.max_length, 7);
	assert_int_equal(p.max_message_size, 8);
	/* A deleted placement stays as a tombstone with the delete's gen. */
	assert_int_equal(store_placement_get(t, "q1", &p), 0);
	assert_true(p.deleted);
	assert_int_equal(p.gen, 2);
	store_abort(t);

	/* Declaring a deleted name again is a new incarnation. */
	t = wbegin(e->s);
	assert_int_equal(
		store_placement_declare(t, "q1", 0, 0, 3, 5, &p, &created), 0);
	assert_true(created);
	assert_false(p.deleted);
	assert_int_equal(p.gen, 5);
	assert_int_equal(store_commit(t), 0);
}

static int count_placement_cb(void *arg, const char *name,
			      const struct store_placement *p)
{
	unsigned *n = arg;

	(void)name;
	(void)p;
	(*n)++;
	return 0;
}

static void placement_foreach_visits_every_queue(void **state)
{
	struct env *e = *state;
	struct store_txn *t = wbegin(e->s);
	struct store_placement p;
	unsigned n = 0;
	bool created;

	assert_int_equal(
		store_placement_declare(t, "a", 0, 0, 1, 1, &p, &created), 0);
	assert_int_equal(
		store_placement_declare(t, "b", 0, 0, 1, 1, &p, &created), 0);
	assert_int_equal(store_placement_declare(t, "c", 0, 0, 0, 1, &p,
						 &created),
			 RMQ_EINVAL);
	assert_int_equal(store_placement_foreach(t, count_placement_cb, &n), 0);
	assert_int_equal(n, 2);
	store_abort(t);
}

struct node_walk {
	uint64_t ids[8];
	unsigned n;
};

static int collect_node_cb(void *arg, const struct store_node *n)
{
	struct node_walk *w = arg;

	w->ids[w->n++] = n->id;
	return 0;
}

static void nodes_put_get_foreach(void **state)
{
	struct env *e = *state;
	struct store_node n = {0};
	struct store_node got;
	struct node_walk w = {0};
	struct store_txn *t;

	t = wbegin(e->s);
	n.id = 300;
	strcpy(n.peer_address, "10.0.0.3:7000");
	strcpy(n.client_address, "10.0.0.3:5672");
	assert_int_equal(store_node_put(t, &n), 0);
	n.id = 2;
	strcpy(n.peer_address, "10.0.0.2:7000");
	strcpy(n.http_address, "10.0.0.2:8080");
	assert_int_equal(store_node_put(t, &n), 0);
	n.id = 1;
	memset(n.peer_address, 'x', sizeof n.peer_address); /* no NUL */
	assert_int_equal(store_node_put(t, &n), RMQ_EINVAL);
	assert_int_equal(store_commit(t), 0);

	t = rbegin(e->s);
	assert_int_equal(store_node_get(t, 300, &got), 0);
	assert_int_equal(got.id, 300);
	assert_string_equal(got.peer_address, "10.0.0.3:7000");
	assert_string_equal(got.client_address, "10.0.0.3:5672");
	assert_string_equal(got.http_address, "");
	assert_int_equal(store_node_get(t, 2, &got), 0);
	assert_string_equal(got.http_address, "10.0.0.2:8080");
	assert_int_equal(store_node_get(t, 1, &got), RMQ_ENOTFOUND);
	assert_int_equal(store_node_foreach(t, collect_node_cb, &w), 0);
	assert_int_equal(w.n, 2);
	assert_int_equal(w.ids[0], 2); /* numeric order */
	assert_int_equal(w.ids[1], 300);
	store_abort(t);
}

static void shard_records_round_trip(void **state)
{
	struct env *e = *state;
	struct store_shard r = {.shard = 2,
				.placed = true,
				.n_replicas = 3,
				.replicas = {4, 2, 3},
				.term = 7,
				.leader = 4,
				.n_voters = 2,
				.voters = {2, 3},
				.n_others = 1,
				.others = {4}};
	struct store_shard got;
	struct store_txn *t;

	t = wbegin(e->s);
	assert_int_equal(store_shard_put(t, &r), 0);
	r.shard = 3;
	r.n_voters = STORE_SHARD_MAX_IDS + 1;
	assert_int_equal(store_shard_put(t, &r), RMQ_EINVAL);
	assert_int_equal(store_commit(t), 0);

	t = rbegin(e->s);
	assert_int_equal(store_shard_get(t, 2, &got), 0);
	assert_int_equal(got.shard, 2);
	assert_true(got.placed);
	assert_int_equal(got.n_replicas, 3);
	assert_int_equal(got.replicas[0], 4);
	assert_int_equal(got.replicas[2], 3);
	assert_int_equal(got.term, 7);
	assert_int_equal(got.leader, 4);
	assert_int_equal(got.n_voters, 2);
	assert_int_equal(got.voters[1], 3);
	assert_int_equal(got.n_others, 1);
	assert_int_equal(got.others[0], 4);
	/* Unknown: ENOTFOUND, zeroed but for the shard id. */
	assert_int_equal(store_shard_get(t, 3, &got), RMQ_ENOTFOUND);
	assert_int_equal(got.shard, 3);
	assert_false(got.placed);
	assert_int_equal(got.n_voters + got.n_replicas + got.term, 0);
	store_abort(t);
}

/* ---- Snapshots ------------------------------------------------------- */

/* Fills @s with a bit of everything. */
static void populate(struct store *s)
{
	struct store_node n = {.id = 1, .peer_address = "a:1"};
	struct store_shard sh = {.shard = 1,
				 .placed = true,
				 .n_replicas = 1,
				 .replicas = {9}};
	struct store_placement p;
	struct store_txn *t;
	uint64_t seq = 2;
	bool created;
	int i;

	create_queue(s, "alpha", 100, 0);
	create_queue(s, "beta", 0, 1000);
	for (i = 0; i < 5; i++) {
		publish1(s, "alpha", "hello", "prod", (uint64_t)i + 1);
		publish1(s, "beta", "world!", NULL, 0);
	}
	t = wbegin(s);
	assert_int_equal(store_remove(t, "alpha", &seq, 1, 3), 0);
	assert_int_equal(store_node_put(t, &n), 0);
	assert_int_equal(store_shard_put(t, &sh), 0);
	assert_int_equal(store_placement_declare(t, "alpha", 100, 0, 2, 1, &p,
						 &created),
			 0);
	assert_int_equal(store_applied_set(t, 1234), 0);
	assert_int_equal(store_commit(t), 0);
}

static void
snapshot_restore_into_second_store_gives_identical_content(void **state)
{
	struct env *e = *state;
	struct env other;
	struct store_txn *t;
	struct store_queue a;
	struct store_queue q;
	struct store_placement p;
	struct store_node n;
	uint8_t *snap1;
	uint8_t *snap2;
	size_t len1;
	size_t len2;
	uint64_t idx;
	uint64_t seqs[8];
	char buf[16];

	populate(e->s);
	snapshot_of(e->s, &snap1, &len1);

	assert_int_equal(env_open(&other, 0), 0);
	create_queue(other.s, "stale", 0, 0); /* replaced by the restore */
	publish1(other.s, "stale", "old", NULL, 0);
	assert_int_equal(store_restore(other.s, snap1, len1), 0);

	snapshot_of(other.s, &snap2, &len2);
	assert_int_equal(len1, len2);
	assert_memory_equal(snap1, snap2, len1);

	a = queue_get(e->s, "alpha");
	q = queue_get(other.s, "alpha");
	assert_memory_equal(&a, &q, sizeof a);
	assert_int_equal(list_seqs(other.s, q.qid, seqs, 8), 4);
	assert_string_equal(body_of(other.s, q.qid, 5, buf, sizeof buf),
			    "hello");
	t = rbegin(other.s);
	assert_int_equal(store_queue_get(t, "stale", &q), RMQ_ENOTFOUND);
	assert_int_equal(store_applied_get(t, &idx), 0);
	assert_int_equal(idx, 1234);
	assert_int_equal(store_node_get(t, 1, &n), 0);
	assert_string_equal(n.peer_address, "a:1");
	assert_int_equal(store_placement_get(t, "alpha", &p), 0);
	assert_int_equal(p.max_length, 100);
	struct store_shard sh;
	assert_int_equal(store_shard_get(t, 1, &sh), 0);
	assert_int_equal(sh.n_replicas, 1);
	assert_int_equal(sh.replicas[0], 9);
	store_abort(t);
	/* The restored dedup window still works, and so does the qid
	 * counter. */
	assert_true(publish1(other.s, "alpha", "hello", "prod", 3).duplicate);
	create_queue(other.s, "gamma", 0, 0);
	assert_true(queue_get(other.s, "gamma").qid >
		    queue_get(other.s, "beta").qid);

	free(snap1);
	free(snap2);
	env_close(&other);
}

static void snapshot_over_max_bytes_returns_etoolarge(void **state)
{
	struct env *e = *state;
	uint8_t *snap = NULL;
	size_t len = 0;
	uint8_t *small = (uint8_t *)"untouched";
	size_t small_len = 123;

	populate(e->s);
	snapshot_of(e->s, &snap, &len);
	assert_int_equal(store_snapshot(e->s, &small, &small_len, len - 1),
			 RMQ_ETOOLARGE);
	assert_string_equal((char *)small, "untouched");
	assert_int_equal(small_len, 123);
	assert_int_equal(store_snapshot(e->s, &small, &small_len, 4),
			 RMQ_ETOOLARGE);
	free(snap);
	assert_int_equal(store_snapshot(e->s, &snap, &len, len), 0);
	free(snap);
}

/* Same checksum as snapshot.c, to forge buffers that pass it. */
static void reseal(uint8_t *buf, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;
	size_t i;

	for (i = 0; i < len - 8; i++) {
		h ^= buf[i];
		h *= 0x100000001b3ull;
	}
	for (i = 0; i < 8; i++) {
		buf[len - 8 + i] = (uint8_t)(h >> (56 - 8 * i));
	}
}

static void
restore_corrupted_buffer_returns_ecorrupt_and_changes_nothing(void **state)
{
	struct env *e = *state;
	struct env target;
	uint8_t *snap;
	uint8_t *before;
	uint8_t *after;
	uint8_t *bad;
	size_t len;
	size_t before_len;
	size_t after_len;
	size_t i;

	populate(e->s);
	snapshot_of(e->s, &snap, &len);

	assert_int_equal(env_open(&target, 0), 0);
	create_queue(target.s, "mine", 0, 0);
	publish1(target.s, "mine", "keep me", NULL, 0);
	snapshot_of(target.s, &before, &before_len);

	bad = malloc(len);
	assert_non_null(bad);
	/* Every single flipped byte. */
	for (i = 0; i < len; i++) {
		memcpy(bad, snap, len);
		bad[i] ^= 0x40;
		assert_int_equal(store_restore(target.s, bad, len),
				 RMQ_ECORRUPT);
	}
	/* Every truncation. */
	for (i = 0; i < len; i++) {
		assert_int_equal(store_restore(target.s, snap, i),
				 RMQ_ECORRUPT);
	}
	assert_int_equal(store_restore(target.s, NULL, 0), RMQ_ECORRUPT);
	/* Checksum right but a length (the first key's) out of bounds. */
	memcpy(bad, snap, len);
	bad[16 + 1] = 0xff;
	reseal(bad, len);
	assert_int_equal(store_restore(target.s, bad, len), RMQ_ECORRUPT);
	/* Checksum right but one record too many announced. */
	memcpy(bad, snap, len);
	bad[15]++;
	reseal(bad, len);
	assert_int_equal(store_restore(target.s, bad, len), RMQ_ECORRUPT);
	/* Checksum right but an unknown db id. */
	memcpy(bad, snap, len);
	bad[16] = 0x7f;
	reseal(bad, len);
	assert_int_equal(store_restore(target.s, bad, len), RMQ_ECORRUPT);
	/* Checksum right but a newer version. */
	memcpy(bad, snap, len);
	bad[7] = 2;
	reseal(bad, len);
	assert_int_equal(store_restore(target.s, bad, len), RMQ_ECORRUPT);

	snapshot_of(target.s, &after, &after_len);
	assert_int_equal(before_len, after_len);
	assert_memory_equal(before, after, before_len);

	/* The untouched original still restores. */
	memcpy(bad, snap, len);
	reseal(bad, len);
	assert_int_equal(store_restore(target.s, bad, len), 0);

	free(bad);
	free(before);
	free(after);
	free(snap);
	env_close(&target);
}

/* ---- Map full -------------------------------------------------------- */

static void map_full_publish_returns_efull_and_store_stays_usable(void **state)
{
	struct env *e = *state;
	struct store_msg_in in[8];
	struct store_publish_result r[8];
	struct store_txn *t;
	struct store_queue q;
	struct store_msg m;
	uint8_t body[1024];
	uint64_t committed = 0;
	uint64_t seqs[16];
	uint64_t idx;
	uint64_t i;
	size_t used;
	size_t map;
	int rv = 0;
	int j;

	create_queue(e->s, "q", 0, 0);
	memset(body, 'z', sizeof body);
	for (j = 0; j < 8; j++) {
		in[j] = msg_in("", NULL, 0);
		in[j].body = body;
		in[j].body_len = sizeof body;
	}
	for (i = 0; i < 10000; i++) {
		t = wbegin(e->s);
		rv = store_publish(t, "q", in, 8, r);
		if (rv != 0) {
			store_abort(t);
			break;
		}
		rv = store_commit(t); /* may be where the map fills up */
		if (rv != 0) {
			break;
		}
		committed += 8;
	}
	assert_int_equal(rv, RMQ_EFULL);
	assert_true(committed > 0);
	assert_int_equal(store_usage(e->s, &used, &map), 0);
	assert_int_equal(map, 256 * 1024);
	assert_true(used <= map);

	/* Reads see exactly what was committed. */
	q = queue_get(e->s, "q");
	assert_int_equal(q.count, committed);
	assert_int_equal(q.next_seq, committed + 1);
	t = rbegin(e->s);
	assert_int_equal(store_msg_get(t, q.qid, committed, &m), 0);
	assert_int_equal(m.body_len, sizeof body);
	assert_int_equal(store_msg_get(t, q.qid, committed + 1, &m),
			 RMQ_ENOTFOUND);
	store_abort(t);

	/* A small write goes through. (LMDB reuses the pages freed by a
	 * commit only two commits later, so right after the map filled up
	 * only a write this small is sure to fit.) */
	t = wbegin(e->s);
	assert_int_equal(store_applied_set(t, 1), 0);
	assert_int_equal(store_commit(t), 0);
	/* Then removing messages makes room for new ones. */
	for (j = 0; j < 16; j++) {
		seqs[j] = (uint64_t)j + 1;
	}
	t = wbegin(e->s);
	assert_int_equal(store_remove(t, "q", seqs, 16, 16), 0);
	assert_int_equal(store_applied_set(t, 2), 0);
	assert_int_equal(store_commit(t), 0);
	t = wbegin(e->s);
	assert_int_equal(store_applied_set(t, 3), 0);
	assert_int_equal(store_commit(t), 0);
	assert_int_equal(publish1(e->s, "q", "tiny", NULL, 0).seq,
			 committed + 1);
	q = queue_get(e->s, "q");
	assert_int_equal(q.count, committed - 16 + 1);
	t = rbegin(e->s);
	assert_int_equal(store_applied_get(t, &idx), 0);
	assert_int_equal(idx, 3);
	store_abort(t);
}

/* ---- State streams ----------------------------------------------------- */

struct membuf {
	uint8_t *p;
	size_t len;
	size_t cap;
	size_t off;   /* read position */
	size_t limit; /* reads stop here (a truncated stream) */
};

static int mem_write(void *arg, const void *buf, size_t len)
{
	struct membuf *m = arg;
	if (m->len + len > m->cap) {
		m->cap = (m->len + len) * 2;
		m->p = realloc(m->p, m->cap);
		assert_non_null(m->p);
	}
	memcpy(m->p + m->len, buf, len);
	m->len += len;
	return 0;
}

static int mem_read(void *arg, void *buf, size_t len, size_t *got)
{
	struct membuf *m = arg;
	size_t end = m->limit < m->len ? m->limit : m->len;
	size_t n = end - m->off < len ? end - m->off : len;
	n = n > 7 ? 7 : n; /* short reads, as from a socket */
	memcpy(buf, m->p + m->off, n);
	m->off += n;
	*got = n;
	return 0;
}

static void stream_of(struct store *s, struct membuf *m, uint64_t *applied)
{
	memset(m, 0, sizeof *m);
	assert_int_equal(store_stream_write(s, mem_write, m, applied), 0);
	m->limit = SIZE_MAX;
}

static void stream_copy_replaces_store_with_identical_content(void **state)
{
	struct env *e = *state;
	struct env other;
	struct membuf m;
	uint8_t *snap1;
	uint8_t *snap2;
	size_t len1;
	size_t len2;
	uint64_t applied = 0;
	char dir[128];
	struct store_options o = {.nosync = true};

	populate(e->s);
	stream_of(e->s, &m, &applied);
	assert_int_equal(applied, 1234);

	/* Built in a directory of its own, then swapped into a store that
	 * has other content. */
	assert_int_equal(env_open(&other, 0), 0);
	create_queue(other.s, "stale", 0, 0);
	snprintf(dir, sizeof dir, "%s/fetch", other.dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	applied = 0;
	assert_int_equal(
		store_stream_read(dir, &o, mem_read, &m, 1234, &applied), 0);
	assert_int_equal(applied, 1234);
	assert_int_equal(store_replace(other.s, dir), 0);
	env_remove_dir(dir);

	snapshot_of(e->s, &snap1, &len1);
	snapshot_of(other.s, &snap2, &len2);
	assert_int_equal(len1, len2);
	assert_memory_equal(snap1, snap2, len1);
	/* The replaced store takes writes. */
	assert_true(publish1(other.s, "alpha", "hello", "prod", 3).duplicate);
	create_queue(other.s, "gamma", 0, 0);
	free(snap1);
	free(snap2);
	free(m.p);
	env_close(&other);
}

static void stream_copy_below_wanted_index_is_refused(void **state)
{
	struct env *e = *state;
	struct membuf m;
	uint64_t applied = 0;
	char dir[128];
	struct store_options o = {.nosync = true};

	populate(e->s); /* applied index 1234 */
	stream_of(e->s, &m, &applied);
	snprintf(dir, sizeof dir, "%s-fetch", e->dir);
	assert_int_equal(mkdir(dir, 0700), 0);
	assert_int_equal(store_stream_read(dir, &o, mem_read, &m, 1235,
					   &applied),
			 RMQ_EUNAVAIL);
	/* Refused on reading the index, long before the end. */
	assert_true(m.off < m.len);
	env_remove_dir(dir);
	free(m.p);
}

static void stream_truncated_or_damaged_is_refused(void **state)
{
	struct env *e = *state;
	struct membuf m;
	uint64_t applied = 0;
	char dir[128];
	struct store_options o = {.nosync = true};

	populate(e->s);
	stream_of(e->s, &m, &applied);
	snprintf(dir, sizeof dir, "%s-fetch", e->dir);
	/* Cut anywhere, even inside the trailer. */
	size_t cuts[] = {0, 5, m.len / 2, m.len - 9, m.len - 1};
	for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
		assert_int_equal(mkdir(dir, 0700), 0);
		m.off = 0;
		m.limit = cuts[i];
		assert_int_equal(store_stream_read(dir, &o, mem_read, &m, 0,
						   &applied),
				 RMQ_ECORRUPT);
		env_remove_dir(dir);
	}
	/* One flipped byte in a body. */
	m.limit = SIZE_MAX;
	m.off = 0;
	m.p[m.len / 2] ^= 0x5a;
	assert_int_equal(mkdir(dir, 0700), 0);
	assert_int_equal(store_stream_read(dir, &o, mem_read, &m, 0, &applied),
			 RMQ_ECORRUPT);
	env_remove_dir(dir);
	free(m.p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
		T(applied_index_fresh_store_is_zero),
		T(applied_index_commit_with_data_round_trips),
		T(applied_index_abort_discards_data_and_index),
		T(txn_read_writers_return_einval),
		T(txn_reads_coexist_with_write),
		T(open_missing_dir_returns_eio),
		T(usage_reports_used_within_map_size),
		T(queue_create_same_limits_is_idempotent),
		T(queue_create_other_limits_returns_eexists),
		T(queue_create_bad_name_returns_einval),
		T(queue_foreach_walks_in_name_order),
		T(queue_unknown_returns_enotfound),
		T(publish_assigns_increasing_seqs_and_persists_across_reopen),
		T(publish_interleaved_queues_keep_their_own_order),
		T(publish_duplicate_producer_seq_returns_original_seq),
		T(publish_dedup_window_forgets_oldest_entry),
		T(publish_over_max_length_returns_efull_per_message),
		T(publish_over_max_message_size_returns_etoolarge),
		T(publish_long_producer_id_returns_einval),
		T(remove_twice_is_idempotent_and_updates_counters),
		T(msg_next_skips_removed_messages),
		T(queue_delete_removes_messages_and_dedup),
		T(placement_declare_spreads_across_shards_and_is_idempotent),
		T(placement_foreach_visits_every_queue),
		T(nodes_put_get_foreach),
		T(shard_records_round_trip),
		T(snapshot_restore_into_second_store_gives_identical_content),
		T(snapshot_over_max_bytes_returns_etoolarge),
		T(restore_corrupted_buffer_returns_ecorrupt_and_changes_nothing),
		T(stream_copy_replaces_store_with_identical_content),
		T(stream_copy_below_wanted_index_is_refused),
		T(stream_truncated_or_damaged_is_refused),
		cmocka_unit_test_setup_teardown(
			map_full_publish_returns_efull_and_store_stays_usable,
			setup_small_map, teardown),
#undef T
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
