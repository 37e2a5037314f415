/* Deterministic tests of the shard FSM on canonical/raft's in-memory
 * raft_fixture: replication to every replica, leader change, idempotent
 * replay by raft index, snapshot install on a lagging follower (the state
 * copied as catchup.c copies it), raft 0.15's role-change quirks, and the
 * guards against raft 0.15's bugs (raft015.h) with shard.c's glue; then
 * catchup.c on a stub raft_io, and shards on raft_uv and real loops. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <raft.h>
#include <raft/fixture.h>

#include "catchup.h"
#include "fsm.h"
#include "raft015.h"
#include "shard.h"
#include "store.h"
#include "transport.h"

#define N 3

struct replica {
	char dir[64];
	struct store *store;
	struct fsm *fsm;
	struct fsm_raft fr;
};

struct fix {
	struct raft_fixture f;
	struct replica r[N];
};

static void replica_open(struct replica *r)
{
	struct store_options o = {.map_size = 64u << 20, .nosync = true};
	snprintf(r->dir, sizeof r->dir, "/tmp/rmq-cons-XXXXXX");
	assert_non_null(mkdtemp(r->dir));
	assert_int_equal(store_open(r->dir, &o, &r->store), 0);
	assert_int_equal(fsm_init(&r->fsm, r->store, NULL, NULL), 0);
}

static void replica_close(struct replica *r)
{
	char cmd[128];
	fsm_close(r->fsm);
	store_close(r->store);
	snprintf(cmd, sizeof cmd, "rm -rf %s", r->dir);
	assert_int_equal(system(cmd), 0);
}

/* ---- raft 0.15 guards (raft015.h), with shard.c's glue ---------------- */

/* What shard.c wraps around its raft_uv, here around fixture server i's io:
 * ticks through raft015_tick() (unless tick_guard is off, to show bug 1),
 * messages through raft015_recv(), sends through raft015_send_allowed()
 * and raft015_send(). */
struct guard {
	struct raft *raft;
	int (*start)(struct raft_io *io, unsigned msecs, raft_io_tick_cb tick,
		     raft_io_recv_cb recv);
	raft015_send_fn send;
	raft_io_tick_cb tick;
	raft_io_recv_cb recv;
	bool tick_guard;
	unsigned held;            /* ticks at which the election was held */
	unsigned dropped;         /* answers dropped */
	const char *drop_address; /* the address the last one was going to */
	bool campaigned_while_installing;
};

static struct guard guards[N];

static struct guard *guard_of(struct raft_io *io)
{
	for (unsigned i = 0; i < N; i++) {
		if (guards[i].raft != NULL && guards[i].raft->io == io) {
			return &guards[i];
		}
	}
	fail_msg("no guard for this io");
	return NULL;
}

static void guard_tick_cb(struct raft_io *io)
{
	struct guard *g = guard_of(io);
	if (g->tick_guard && raft015_tick(g->raft)) {
		g->held++;
	}
	g->tick(io);
	if (raft_state(g->raft) == RAFT_CANDIDATE &&
	    raft015_installing_snapshot(g->raft)) {
		g->campaigned_while_installing = true;
	}
}

static void guard_recv_cb(struct raft_io *io, struct raft_message *m)
{
	struct guard *g = guard_of(io);
	if (raft015_recv(g->raft, m)) {
		g->recv(io, m);
	}
}

static int guard_start_cb(struct raft_io *io, unsigned msecs,
			  raft_io_tick_cb tick, raft_io_recv_cb recv)
{
	struct guard *g = guard_of(io);
	g->tick = tick;
	g->recv = recv;
	return g->start(io, msecs, guard_tick_cb, guard_recv_cb);
}

static int guard_send_cb(struct raft_io *io, struct raft_io_send *req,
			 const struct raft_message *m, raft_io_send_cb cb)
{
	struct guard *g = guard_of(io);
	if (!raft015_send_allowed(g->raft, m)) {
		g->dropped++;
		g->drop_address = m->server_address;
		return RAFT_NOCONNECTION;
	}
	return raft015_send(g->send, io, req, m, cb);
}

enum glue {
	GLUE_NONE,    /* the bare fixture */
	GLUE_ALL,     /* shard.c's timeouts and every guard */
	GLUE_NO_TICK, /* ... except raft015_tick() */
};

static int setup_fixture(void **state, enum glue glue)
{
	struct fix *x = calloc(1, sizeof *x);
	struct raft_configuration conf;
	struct shard_config sc = {.election_timeout_ms = 1000,
				  .heartbeat_timeout_ms = 100};
	assert_int_equal(raft_fixture_initialize(&x->f), 0);
	memset(guards, 0, sizeof guards);
	for (unsigned i = 0; i < N; i++) {
		struct raft *r;
		replica_open(&x->r[i]);
		fsm_raft_init(&x->r[i].fr, x->r[i].fsm, x->r[i].store, NULL, 1);
		assert_int_equal(raft_fixture_grow(&x->f, &x->r[i].fr.rfsm), 0);
		r = raft_fixture_get(&x->f, i);
		x->r[i].fr.raft = r;
		if (glue == GLUE_NONE) {
			continue;
		}
		/* Before raft_start: the glue sees every tick and message. */
		shard_tune_raft(r, &sc);
		guards[i].raft = r;
		guards[i].tick_guard = glue == GLUE_ALL;
		guards[i].start = r->io->start;
		guards[i].send = r->io->send;
		r->io->start = guard_start_cb;
		r->io->send = guard_send_cb;
	}
	assert_int_equal(raft_fixture_configuration(&x->f, N, &conf), 0);
	assert_int_equal(raft_fixture_bootstrap(&x->f, &conf), 0);
	raft_configuration_close(&conf);
	assert_int_equal(raft_fixture_start(&x->f), 0);
	*state = x;
	return 0;
}

static int setup(void **state)
{
	return setup_fixture(state, GLUE_NONE);
}

static int setup_guard_all(void **state)
{
	return setup_fixture(state, GLUE_ALL);
}

static int setup_guard_no_tick(void **state)
{
	return setup_fixture(state, GLUE_NO_TICK);
}

static int teardown(void **state)
{
	struct fix *x = *state;
	raft_fixture_close(&x->f);
	for (unsigned i = 0; i < N; i++) {
		replica_close(&x->r[i]);
	}
	free(x);
	return 0;
}

/* Encode a command: an optional create of @queue, then @n messages with
 * bodies "@prefix-<k>" and producer ("p", @pseq0 + k). */
static struct raft_buffer make_cmd(const char *queue, bool create,
				   const char *prefix, unsigned n,
				   uint64_t pseq0)
{
	Rmqc__Command cmd = RMQC__COMMAND__INIT;
	Rmqc__Op ops[2];
	Rmqc__Op *opp[2];
	Rmqc__CreateQueueOp cr = RMQC__CREATE_QUEUE_OP__INIT;
	Rmqc__PublishOp pub = RMQC__PUBLISH_OP__INIT;
	Rmqc__Msg *msgs = calloc(n + 1, sizeof *msgs);
	Rmqc__Msg **mp = calloc(n + 1, sizeof *mp);
	char(*bodies)[32] = calloc(n + 1, sizeof *bodies);
	size_t k = 0;
	struct raft_buffer buf;

	if (create) {
		rmqc__op__init(&ops[k]);
		cr.queue = (char *)queue;
		ops[k].kind_case = RMQC__OP__KIND_CREATE;
		ops[k].create = &cr;
		opp[k] = &ops[k];
		k++;
	}
	if (n > 0) {
		for (unsigned i = 0; i < n; i++) {
			rmqc__msg__init(&msgs[i]);
			snprintf(bodies[i], sizeof bodies[i], "%s-%llu", prefix,
				 (unsigned long long)(pseq0 + i));
			msgs[i].body.data = (uint8_t *)bodies[i];
			msgs[i].body.len = strlen(bodies[i]);
			msgs[i].producer_id = "p";
			msgs[i].producer_seq = pseq0 + i;
			mp[i] = &msgs[i];
		}
		rmqc__op__init(&ops[k]);
		pub.queue = (char *)queue;
		pub.msgs = mp;
		pub.n_msgs = n;
		ops[k].kind_case = RMQC__OP__KIND_PUBLISH;
		ops[k].publish = &pub;
		opp[k] = &ops[k];
		k++;
	}
	cmd.ops = opp;
	cmd.n_ops = k;
	assert_int_equal(fsm_encode(&cmd, &buf.base, &buf.len), 0);
	free(msgs);
	free(mp);
	free(bodies);
	return buf;
}

static unsigned applied_count;

static void count_cb(struct raft_apply *req, int status, void *result)
{
	(void)result;
	if (status == 0) {
		applied_count++;
	}
	free(req);
}

static void propose(struct fix *x, struct raft_buffer buf)
{
	unsigned l = raft_fixture_leader_index(&x->f);
	struct raft_apply *req = calloc(1, sizeof *req);
	assert_int_equal(raft_apply(raft_fixture_get(&x->f, l), req, &buf, 1,
				    count_cb),
			 0);
}

static void wait_applied(struct fix *x, unsigned i, raft_index index)
{
	assert_true(raft_fixture_step_until_applied(&x->f, i, index, 10000));
}

/* Every stored body of @queue on replica @i, joined by ','. */
static void dump(struct fix *x, unsigned i, const char *queue, char *out,
		 size_t cap)
{
	struct store_txn *t;
	struct store_queue q;
	struct store_msg m;
	size_t len = 0;
	out[0] = '\0';
	assert_int_equal(store_begin(x->r[i].store, false, &t), 0);
	if (store_queue_get(t, queue, &q) == 0) {
		uint64_t from = 1;
		while (store_msg_next(t, q.qid, from, &m) == 0) {
			len += (size_t)snprintf(out + len, cap - len,
						"%llu=%.*s,",
						(unsigned long long)m.seq,
						(int)m.body_len, m.body);
			from = m.seq + 1;
		}
	}
	store_abort(t);
}

static void replicate_publish_all_replicas_hold_same_messages(void **state)
{
	struct fix *x = *state;
	char a[4096], b[4096];
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	propose(x, make_cmd("q", true, "m", 3, 1));
	raft_index idx = raft_last_index(
		raft_fixture_get(&x->f, raft_fixture_leader_index(&x->f)));
	for (unsigned i = 0; i < N; i++) {
		wait_applied(x, i, idx);
	}
	dump(x, 0, "q", a, sizeof a);
	assert_string_equal(a, "1=m-1,2=m-2,3=m-3,");
	for (unsigned i = 1; i < N; i++) {
		dump(x, i, "q", b, sizeof b);
		assert_string_equal(a, b);
	}
}

static void leader_change_retry_is_deduplicated(void **state)
{
	struct fix *x = *state;
	char a[4096], b[4096];
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	propose(x, make_cmd("q", true, "m", 2, 1));
	unsigned old = raft_fixture_leader_index(&x->f);
	raft_index idx = raft_last_index(raft_fixture_get(&x->f, old));
	for (unsigned i = 0; i < N; i++) {
		wait_applied(x, i, idx);
	}
	/* The leader dies; a new one is elected among the other two. */
	raft_fixture_kill(&x->f, old);
	assert_true(raft_fixture_step_until_has_no_leader(&x->f, 10000));
	assert_true(raft_fixture_step_until_has_leader(&x->f, 10000));
	unsigned now = raft_fixture_leader_index(&x->f);
	assert_int_not_equal(now, old);
	/* A client that saw no confirm retries message 2 (same producer
	 * seq) along with a new message 3. */
	propose(x, make_cmd("q", false, "m", 2, 2));
	idx = raft_last_index(raft_fixture_get(&x->f, now));
	wait_applied(x, now, idx);
	dump(x, now, "q", a, sizeof a);
	assert_string_equal(a, "1=m-1,2=m-2,3=m-3,");
	/* The old leader comes back and catches up to the same state. */
	raft_fixture_revive(&x->f, old);
	wait_applied(x, old, idx);
	dump(x, old, "q", b, sizeof b);
	assert_string_equal(a, b);
}

/* Every replica's raft tuned as shard.c tunes it (pre-vote on). */
static void tune_all(struct fix *x)
{
	struct shard_config sc = {.election_timeout_ms = 1000,
				  .heartbeat_timeout_ms = 100};
	for (unsigned i = 0; i < N; i++) {
		shard_tune_raft(raft_fixture_get(&x->f, i), &sc);
	}
}

/* A follower cut off for many election timeouts (a long GC pause, a
 * partition) comes back: the leader keeps leading, in the same term. */
static void returning_follower_does_not_depose_leader(void **state)
{
	struct fix *x = *state;
	tune_all(x);
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	unsigned l = raft_fixture_leader_index(&x->f);
	unsigned f = (l + 1) % N;
	raft_term term = raft_fixture_get(&x->f, l)->current_term;
	for (unsigned i = 0; i < N; i++) {
		if (i != f) {
			raft_fixture_disconnect(&x->f, f, i);
			raft_fixture_disconnect(&x->f, i, f);
		}
	}
	raft_fixture_step_until_elapsed(&x->f, 10000);
	assert_int_equal(raft_state(raft_fixture_get(&x->f, l)), RAFT_LEADER);
	for (unsigned i = 0; i < N; i++) {
		if (i != f) {
			raft_fixture_reconnect(&x->f, f, i);
			raft_fixture_reconnect(&x->f, i, f);
		}
	}
	raft_fixture_step_until_elapsed(&x->f, 3000);
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	assert_int_equal(raft_fixture_leader_index(&x->f), l);
	assert_int_equal(raft_fixture_get(&x->f, l)->current_term, term);
	propose(x, make_cmd("q", true, "m", 1, 1));
	wait_applied(x, f, raft_last_index(raft_fixture_get(&x->f, l)));
}

/* Snapshots are descriptors: on raft_fixture (no catchup.c), a follower
 * behind one gets the state the way catchup.c does it, through the store's
 * state stream, before the fixture's snapshot_put runs. */
static struct fix *copy_fix;
static unsigned copy_from;
static unsigned copies;
static int (*fixture_put)(struct raft_io *io, unsigned trailing,
			  struct raft_io_snapshot_put *req,
			  const struct raft_snapshot *snapshot,
			  raft_io_snapshot_put_cb cb);

struct membuf {
	uint8_t *p;
	size_t len;
	size_t off;
};

static int mem_write(void *arg, const void *buf, size_t len)
{
	struct membuf *m = arg;
	m->p = realloc(m->p, m->len + len);
	assert_non_null(m->p);
	memcpy(m->p + m->len, buf, len);
	m->len += len;
	return 0;
}

static int mem_read(void *arg, void *buf, size_t len, size_t *got)
{
	struct membuf *m = arg;
	size_t n = m->len - m->off < len ? m->len - m->off : len;
	memcpy(buf, m->p + m->off, n);
	m->off += n;
	*got = n;
	return 0;
}

static uint64_t store_index(struct store *s)
{
	struct store_txn *t;
	uint64_t index;
	assert_int_equal(store_begin(s, false, &t), 0);
	assert_int_equal(store_applied_get(t, &index), 0);
	store_abort(t);
	return index;
}

/* What catchup.c does before an install reaches raft_uv: bring the store
 * of the replica whose io is @io up to the descriptor, from copy_from's. */
static void copy_state(struct raft_io *io, const struct raft_snapshot *snapshot)
{
	struct fix *x = copy_fix;
	struct fsm_descriptor d;
	assert_int_equal(fsm_descriptor_decode(snapshot->bufs[0].base,
					       snapshot->bufs[0].len, &d),
			 0);
	for (unsigned i = 0; i < N; i++) {
		struct replica *r = &x->r[i];
		if (raft_fixture_get(&x->f, i)->io != io ||
		    store_index(r->store) >= d.index) {
			continue;
		}
		struct membuf m = {0};
		struct store_options o = {.map_size = 64u << 20};
		char dir[128], cmd[160];
		uint64_t got;
		assert_int_equal(store_stream_write(x->r[copy_from].store,
						    mem_write, &m, &got),
				 0);
		snprintf(dir, sizeof dir, "%s/fetch", r->dir);
		assert_int_equal(mkdir(dir, 0700), 0);
		assert_int_equal(store_stream_read(dir, &o, mem_read, &m,
						   d.index, &got),
				 0);
		assert_int_equal(store_replace(r->store, dir), 0);
		snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
		assert_int_equal(system(cmd), 0);
		free(m.p);
		copies++;
	}
}

static int copying_put(struct raft_io *io, unsigned trailing,
		       struct raft_io_snapshot_put *req,
		       const struct raft_snapshot *snapshot,
		       raft_io_snapshot_put_cb cb)
{
	copy_state(io, snapshot);
	return fixture_put(io, trailing, req, snapshot, cb);
}

static void transfer_done(struct raft_transfer *req)
{
	*(bool *)req->data = true;
}

/* Leader balancing and `shard transfer` use raft_transfer() on shards that
 * run with pre-vote (shard_tune_raft). raft 0.15 is known for transfer
 * trouble with pre-vote: the target must still win, in one new term. */
static void transfer_with_pre_vote_elects_target(void **state)
{
	struct fix *x = *state;
	struct raft_transfer req;
	bool done = false;
	tune_all(x);
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	unsigned l = raft_fixture_leader_index(&x->f);
	unsigned t = (l + 1) % N;
	struct raft *leader = raft_fixture_get(&x->f, l);
	raft_term term = leader->current_term;
	propose(x, make_cmd("q", true, "m", 1, 1));
	for (unsigned i = 0; i < N; i++) {
		wait_applied(x, i, raft_last_index(leader));
	}
	req.data = &done;
	assert_int_equal(raft_transfer(leader, &req, t + 1, transfer_done), 0);
	assert_true(
		raft_fixture_step_until_state_is(&x->f, t, RAFT_LEADER, 5000));
	raft_fixture_step_until_elapsed(&x->f, 1000);
	assert_true(done);
	assert_int_equal(raft_fixture_leader_index(&x->f), t);
	assert_int_equal(raft_fixture_get(&x->f, t)->current_term, term + 1);
	assert_int_equal(raft_state(leader), RAFT_FOLLOWER);
	propose(x, make_cmd("q", false, "m", 1, 2));
	for (unsigned i = 0; i < N; i++) {
		wait_applied(x, i, raft_last_index(raft_fixture_get(&x->f, t)));
	}
}

static void change_done(struct raft_change *req, int status)
{
	assert_int_equal(status, 0);
	*(bool *)req->data = true;
}

static bool flag_true(struct raft_fixture *f, void *arg)
{
	(void)f;
	return *(bool *)arg;
}

static void assign(struct fix *x, unsigned i, int role)
{
	struct raft_change req;
	bool done = false;
	unsigned l = raft_fixture_leader_index(&x->f);
	req.data = &done;
	assert_int_equal(raft_assign(raft_fixture_get(&x->f, l), &req, i + 1,
				     role, change_done),
			 0);
	assert_true(raft_fixture_step_until(&x->f, flag_true, &done, 10000));
}

/* The role @i's own configuration gives @id. */
static int role_seen_by(struct fix *x, unsigned i, raft_id id)
{
	const struct raft *r = raft_fixture_get(&x->f, i);
	for (unsigned k = 0; k < r->configuration.n; k++) {
		if (r->configuration.servers[k].id == id) {
			return r->configuration.servers[k].role;
		}
	}
	return -1;
}

/* raft 0.15's other known role-change bug: a voter demoted to spare stops
 * getting the log at once, so it never learns of its demotion (and never
 * catches up if promoted again). raftmq never demotes to spare: `node
 * remove` makes a meta voter a standby, which keeps getting the log and
 * learns its role, and placement removes a data replica outright. This
 * checks both halves; if a later raft fixes the first, the test says so. */
static void demoted_spare_never_learns_standby_does(void **state)
{
	struct fix *x = *state;
	tune_all(x);
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	unsigned l = raft_fixture_leader_index(&x->f);
	unsigned s = (l + 1) % N; /* to be a standby */
	unsigned p = (l + 2) % N; /* to be a spare */
	struct raft *leader = raft_fixture_get(&x->f, l);
	propose(x, make_cmd("q", true, "m", 1, 1));
	for (unsigned i = 0; i < N; i++) {
		wait_applied(x, i, raft_last_index(leader));
	}
	assign(x, s, RAFT_STANDBY);
	propose(x, make_cmd("q", false, "m", 1, 2));
	wait_applied(x, s, raft_last_index(leader));
	assert_int_equal(role_seen_by(x, s, s + 1), RAFT_STANDBY);

	/* Voters are l and p now; demoting p leaves l the only voter. */
	assign(x, p, RAFT_SPARE);
	raft_fixture_step_until_elapsed(&x->f, 3000);
	assert_int_equal(role_seen_by(x, l, p + 1), RAFT_SPARE);
	assert_int_equal(role_seen_by(x, p, p + 1), RAFT_VOTER);
	assert_true(raft_last_index(raft_fixture_get(&x->f, p)) <
		    raft_last_index(leader));
}

/* Replica @lag dies while leader @l takes 31 commands and compacts its
 * log behind them (snapshots every 8 entries): @lag will need a snapshot.
 * Returns the leader's last index. */
static raft_index fall_behind_snapshot(struct fix *x, unsigned l, unsigned lag)
{
	for (unsigned i = 0; i < N; i++) {
		raft_set_snapshot_threshold(raft_fixture_get(&x->f, i), 8);
		raft_set_snapshot_trailing(raft_fixture_get(&x->f, i), 2);
	}
	raft_fixture_kill(&x->f, lag);
	propose(x, make_cmd("q", true, "s", 1, 1));
	for (unsigned k = 0; k < 30; k++) {
		propose(x, make_cmd("q", false, "s", 1, 2 + k));
		raft_fixture_step_n(&x->f, 5);
	}
	raft_index idx = raft_last_index(raft_fixture_get(&x->f, l));
	wait_applied(x, l, idx);
	raft_fixture_step_until_elapsed(&x->f, 500);
	assert_true(raft_fixture_get(&x->f, l)->log.snapshot.last_index > 0);
	return idx;
}

static void snapshot_install_lagging_follower_catches_up(void **state)
{
	struct fix *x = *state;
	char a[65536], b[65536];
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	unsigned l = raft_fixture_leader_index(&x->f);
	unsigned lag = (l + 1) % N;
	struct raft_io *lag_io = raft_fixture_get(&x->f, lag)->io;
	copy_fix = x;
	copy_from = l;
	copies = 0;
	fixture_put = lag_io->snapshot_put;
	lag_io->snapshot_put = copying_put;
	raft_index idx = fall_behind_snapshot(x, l, lag);
	raft_fixture_revive(&x->f, lag);
	wait_applied(x, lag, idx);
	dump(x, l, "q", a, sizeof a);
	dump(x, lag, "q", b, sizeof b);
	assert_true(strlen(a) > 0);
	assert_string_equal(a, b);
	assert_non_null(strstr(b, "31=s-31,"));
	/* The install carried a descriptor; the state came by the stream. */
	assert_int_equal(copies, 1);
	assert_int_equal(x->r[lag].fr.restores, 1);
}

/* An install's put held, as catchup.c holds it while it fetches. */
static struct {
	struct raft_io *io;
	unsigned trailing;
	struct raft_io_snapshot_put *req;
	const struct raft_snapshot *snapshot;
	raft_io_snapshot_put_cb cb;
} held;

static int holding_put(struct raft_io *io, unsigned trailing,
		       struct raft_io_snapshot_put *req,
		       const struct raft_snapshot *snapshot,
		       raft_io_snapshot_put_cb cb)
{
	if (trailing != 0) {
		return fixture_put(io, trailing, req, snapshot, cb);
	}
	assert_null(held.io);
	held.io = io;
	held.trailing = trailing;
	held.req = req;
	held.snapshot = snapshot;
	held.cb = cb;
	return 0;
}

/* raft_uv would dereference the address of a message to a server it has
 * no connection to yet (strlen(NULL): SIGSEGV). */
static int (*fixture_send)(struct raft_io *io, struct raft_io_send *req,
			   const struct raft_message *message,
			   raft_io_send_cb cb);

static int checking_send(struct raft_io *io, struct raft_io_send *req,
			 const struct raft_message *message, raft_io_send_cb cb)
{
	assert_in_range(message->server_id, 1, N);
	assert_non_null(message->server_address);
	return fixture_send(io, req, message, cb);
}

/* The seed-109 crash: a lagging follower receives a snapshot and its
 * install waits for the state (seconds, in raftmq); meanwhile its leader
 * goes away. raft 0.15 would make it a candidate, and the install's
 * callback would then read the candidate's state as the follower's (the
 * leader's address: SIGSEGV in raftmqd). It must stay a follower until
 * the install is over, then catch up like the others. */
static void install_in_progress_follower_stays_follower(void **state)
{
	struct fix *x = *state;
	char a[65536], b[65536];
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	unsigned l = raft_fixture_leader_index(&x->f);
	unsigned lag = (l + 1) % N;
	struct raft *lag_raft = raft_fixture_get(&x->f, lag);
	copy_fix = x;
	copy_from = l;
	copies = 0;
	memset(&held, 0, sizeof held);
	fixture_put = lag_raft->io->snapshot_put;
	lag_raft->io->snapshot_put = holding_put;
	fixture_send = lag_raft->io->send;
	lag_raft->io->send = checking_send;
	fall_behind_snapshot(x, l, lag);
	raft_fixture_revive(&x->f, lag);
	for (unsigned k = 0; k < 1000 && held.io == NULL; k++) {
		raft_fixture_step(&x->f);
	}
	assert_ptr_equal(held.io, lag_raft->io);

	/* Ten election timeouts without a leader while the put waits. */
	raft_fixture_kill(&x->f, l);
	for (unsigned k = 0; k < 100; k++) {
		raft_fixture_step_until_elapsed(&x->f, 100);
		assert_int_equal(raft_state(lag_raft), RAFT_FOLLOWER);
	}

	/* The state arrives: the install completes. */
	copy_state(held.io, held.snapshot);
	assert_int_equal(fixture_put(held.io, held.trailing, held.req,
				     held.snapshot, held.cb),
			 0);
	raft_fixture_revive(&x->f, l);
	assert_true(raft_fixture_step_until_has_leader(&x->f, 20000));
	propose(x, make_cmd("q", false, "s", 1, 32));
	unsigned now = raft_fixture_leader_index(&x->f);
	raft_index idx = raft_last_index(raft_fixture_get(&x->f, now));
	wait_applied(x, now, idx);
	wait_applied(x, lag, idx);
	dump(x, now, "q", a, sizeof a);
	dump(x, lag, "q", b, sizeof b);
	assert_non_null(strstr(a, "32=s-32,"));
	assert_string_equal(a, b);
	assert_int_equal(copies, 1);
	assert_int_equal(x->r[lag].fr.restores, 1);
}

static void transfer_done_cb(struct raft_transfer *req)
{
	(void)req;
}

/* The ASan SIGSEGV (refsDecr, from replicationAppend's error path) and
 * double free of cluster_http: raftmq's nodes size their snapshot
 * threshold from what they applied, so a follower may have compacted its
 * log while the leader never took a snapshot. A leader elected while that
 * follower was unreachable falls back to index 1 for it after a failed
 * send, and sends its whole log with prev_log_index 0. raft 0.15 takes
 * the entries the follower compacted away for missing ones, finds none
 * where it appended them, and shuts down with its log's reference table
 * corrupted. The follower must take the message and catch up. */
static void compacted_follower_takes_entries_sent_from_index_1(void **state)
{
	struct fix *x = *state;
	char a[65536], b[65536];
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	unsigned l = raft_fixture_leader_index(&x->f);
	unsigned fo = (l + 1) % N;
	unsigned nl = (l + 2) % N;
	struct raft *rf = raft_fixture_get(&x->f, fo);

	propose(x, make_cmd("q", true, "s", 1, 1));
	for (unsigned k = 0; k < 20; k++) {
		propose(x, make_cmd("q", false, "s", 1, 2 + k));
	}
	raft_index idx = raft_last_index(raft_fixture_get(&x->f, l));
	for (unsigned i = 0; i < N; i++) {
		wait_applied(x, i, idx);
	}
	/* Only this follower keeps a short log. */
	raft_set_snapshot_threshold(rf, 8);
	raft_set_snapshot_trailing(rf, 2);
	for (unsigned k = 0; k < 10; k++) {
		propose(x, make_cmd("q", false, "s", 1, 22 + k));
	}
	wait_applied(x, fo, raft_last_index(raft_fixture_get(&x->f, l)));
	for (unsigned k = 0; k < 1000 && rf->log.offset == 0; k++) {
		raft_fixture_step(&x->f);
	}
	assert_true(rf->log.offset > 0);
	assert_int_equal(raft_fixture_get(&x->f, l)->log.snapshot.last_index,
			 0);
	assert_int_equal(raft_fixture_get(&x->f, nl)->log.snapshot.last_index,
			 0);

	/* It becomes unreachable; leadership moves to the other node. */
	raft_set_election_timeout(rf, 100000);
	raft_fixture_set_randomized_election_timeout(&x->f, fo, 100000);
	for (unsigned i = 0; i < N; i++) {
		if (i != fo) {
			raft_fixture_disconnect(&x->f, i, fo);
			raft_fixture_disconnect(&x->f, fo, i);
		}
	}
	struct raft_transfer req;
	assert_int_equal(raft_transfer(raft_fixture_get(&x->f, l), &req,
				       raft_fixture_get(&x->f, nl)->id,
				       transfer_done_cb),
			 0);
	for (unsigned k = 0;
	     k < 10000 &&
	     raft_state(raft_fixture_get(&x->f, nl)) != RAFT_LEADER;
	     k++) {
		raft_fixture_step(&x->f);
	}
	assert_int_equal(raft_state(raft_fixture_get(&x->f, nl)), RAFT_LEADER);
	struct raft_buffer buf = make_cmd("q", false, "s", 1, 32);
	struct raft_apply *ap = calloc(1, sizeof *ap);
	assert_int_equal(raft_apply(raft_fixture_get(&x->f, nl), ap, &buf, 1,
				    count_cb),
			 0);
	idx = raft_last_index(raft_fixture_get(&x->f, nl));
	wait_applied(x, nl, idx);

	/* Back: the new leader sends everything from index 1. */
	for (unsigned i = 0; i < N; i++) {
		if (i != fo) {
			raft_fixture_reconnect(&x->f, i, fo);
			raft_fixture_reconnect(&x->f, fo, i);
		}
	}
	wait_applied(x, fo, idx);
	assert_int_equal(raft_state(rf), RAFT_FOLLOWER);
	dump(x, nl, "q", a, sizeof a);
	dump(x, fo, "q", b, sizeof b);
	assert_non_null(strstr(a, "32=s-32,"));
	assert_string_equal(a, b);
}

static void barrier_cb(struct raft_barrier *req, int status)
{
	(void)status;
	free(req);
}

/* Barriers and configuration entries leave no trace in the store: a
 * descriptor taken after one must name the store's index, or no store
 * would ever be found to cover it. */
static void snapshot_after_barrier_names_store_index(void **state)
{
	struct fix *x = *state;
	struct raft_buffer *bufs;
	unsigned n_bufs;
	struct fsm_descriptor d;
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	unsigned l = raft_fixture_leader_index(&x->f);
	struct raft *r = raft_fixture_get(&x->f, l);
	propose(x, make_cmd("q", true, "b", 2, 1));
	struct raft_barrier *b = calloc(1, sizeof *b);
	assert_int_equal(raft_barrier(r, b, barrier_cb), 0);
	raft_index idx = raft_last_index(r);
	wait_applied(x, l, idx);
	uint64_t stored = store_index(x->r[l].store);
	assert_true(raft_last_applied(r) > stored);
	assert_int_equal(
		x->r[l].fr.rfsm.snapshot(&x->r[l].fr.rfsm, &bufs, &n_bufs), 0);
	assert_int_equal(fsm_descriptor_decode(bufs[0].base, bufs[0].len, &d),
			 0);
	assert_int_equal(d.index, stored);
	x->r[l].fr.rfsm.snapshot_finalize(&x->r[l].fr.rfsm, &bufs, &n_bufs);
}

static void restore_of_descriptor_ahead_of_store_fails(void **state)
{
	(void)state;
	struct replica r;
	struct fsm_raft fr;
	uint8_t desc[FSM_DESCRIPTOR_LEN];
	struct fsm_descriptor d = {.shard_id = 1, .index = 5, .node_id = 2};
	struct raft_buffer buf = {.base = desc, .len = sizeof desc};

	replica_open(&r);
	fsm_raft_init(&fr, r.fsm, r.store, NULL, 1);
	fsm_descriptor_encode(&d, desc);
	/* Store at 0, descriptor at 5: the state is not here. */
	assert_int_not_equal(fr.rfsm.restore(&fr.rfsm, &buf), 0);
	/* Another shard's descriptor, and a damaged one. */
	d.index = 0;
	d.shard_id = 2;
	fsm_descriptor_encode(&d, desc);
	assert_int_not_equal(fr.rfsm.restore(&fr.rfsm, &buf), 0);
	d.shard_id = 1;
	fsm_descriptor_encode(&d, desc);
	desc[20] ^= 1;
	assert_int_not_equal(fr.rfsm.restore(&fr.rfsm, &buf), 0);
	assert_int_equal(fr.restores, 0);
	replica_close(&r);
}

/* ---- bug 1 with the glue: an install while the leader dies --------- */

static bool installing_cb(struct raft_fixture *f, void *arg)
{
	return raft015_installing_snapshot(
		raft_fixture_get(f, (unsigned)(uintptr_t)arg));
}

static bool not_installing_cb(struct raft_fixture *f, void *arg)
{
	return !installing_cb(f, arg);
}

/* A follower lagging behind the leader's snapshot (@lag, returned) starts
 * installing it, slowly (4 s of disk latency), and the leader dies (with
 * @alone, the third server too: no new leader can turn up). */
static unsigned install_then_leader_dies(struct fix *x, unsigned *leader,
					 bool alone)
{
	assert_true(raft_fixture_step_until_has_leader(&x->f, 5000));
	unsigned l = raft_fixture_leader_index(&x->f);
	unsigned lag = (l + 1) % N;
	struct raft_io *lag_io = raft_fixture_get(&x->f, lag)->io;
	/* The install brings the state along, as catchup.c does. */
	copy_fix = x;
	copy_from = l;
	copies = 0;
	fixture_put = lag_io->snapshot_put;
	lag_io->snapshot_put = copying_put;
	fall_behind_snapshot(x, l, lag);
	raft_fixture_set_disk_latency(&x->f, lag, 4000);
	raft_fixture_revive(&x->f, lag);
	assert_true(raft_fixture_step_until(&x->f, installing_cb,
					    (void *)(uintptr_t)lag, 5000));
	raft_fixture_kill(&x->f, l);
	if (alone) {
		raft_fixture_kill(&x->f, (lag + 1) % N);
	}
	*leader = l;
	return lag;
}

/* The chaos crash, held off: the installing follower does not campaign
 * while its snapshot is written, answers its (old) leader properly, then
 * joins the election and the cluster goes on with it. */
static void
snapshot_install_follower_waits_for_write_before_election(void **state)
{
	struct fix *x = *state;
	unsigned l;
	unsigned lag = install_then_leader_dies(x, &l, false);
	struct raft *r = raft_fixture_get(&x->f, lag);

	/* Three election timeouts go by inside the install. */
	raft_fixture_step_until_elapsed(&x->f, 3000);
	assert_true(raft015_installing_snapshot(r));
	assert_false(guards[lag].campaigned_while_installing);
	assert_int_equal(raft_state(r), RAFT_FOLLOWER);
	assert_true(guards[lag].held > 0);

	/* Written: the follower holds the snapshot and, with the third
	 * server, elects a leader that serves. */
	assert_true(raft_fixture_step_until_has_leader(&x->f, 20000));
	assert_false(raft015_installing_snapshot(r));
	assert_int_equal(guards[lag].dropped, 0);
	raft_fixture_set_disk_latency(&x->f, lag, 10);
	propose(x, make_cmd("q", false, "s", 1, 40));
	unsigned now = raft_fixture_leader_index(&x->f);
	assert_int_not_equal(now, l);
	wait_applied(x, lag, raft_last_index(raft_fixture_get(&x->f, now)));
	char a[65536];
	dump(x, lag, "q", a, sizeof a);
	assert_non_null(strstr(a, "31=s-31,32=s-40,"));
}

/* Without the tick guard, raft 0.15 makes the installing follower a
 * candidate (if that stops happening, raft was upgraded: see raft015.h),
 * and when the write ends it answers to an address read from the
 * candidate's fields: dropped by the send guard (raft_uv would crash). */
static void snapshot_install_answer_as_candidate_is_dropped(void **state)
{
	struct fix *x = *state;
	unsigned l;
	unsigned lag = install_then_leader_dies(x, &l, true);
	struct raft *r = raft_fixture_get(&x->f, lag);

	raft_fixture_step_until_elapsed(&x->f, 3000);
	assert_true(raft015_installing_snapshot(r));
	assert_true(guards[lag].campaigned_while_installing);
	assert_int_equal(raft_state(r), RAFT_CANDIDATE);
	assert_true(raft_fixture_step_until(&x->f, not_installing_cb,
					    (void *)(uintptr_t)lag, 5000));
	/* The chaos run's core: address 0x100, the pre-vote candidate's
	 * in_pre_vote byte read as a pointer. */
	assert_int_equal(guards[lag].dropped, 1);
	assert_true((uintptr_t)guards[lag].drop_address < 4096);
	/* The snapshot itself was installed. */
	assert_true(r->last_applied >=
		    raft_fixture_get(&x->f, l)->log.snapshot.last_index);
	/* A candidate's own answer to an AppendEntries (a stale leader's,
	 * rejected) names its sender: it goes out. (Refusing it made raft
	 * 0.15 free the entries twice: aborts in a chaos run.) */
	struct raft_message m = {.type = RAFT_IO_APPEND_ENTRIES_RESULT,
				 .server_id = l + 1,
				 .server_address = "127.0.0.1:9"};
	assert_int_equal(raft_state(r), RAFT_CANDIDATE);
	assert_true(raft015_send_allowed(r, &m));
	m.server_address = NULL;
	assert_false(raft015_send_allowed(r, &m));
}

/* Re-applying entries after a restart must not change the state. */
static void replay_after_reopen_skips_applied_entries(void **state)
{
	(void)state;
	struct replica r;
	const struct fsm_result *res;
	struct raft_buffer e1 = make_cmd("q", true, "r", 2, 1);
	struct raft_buffer e2 = make_cmd("q", false, "r", 1, 3);
	struct store_options o = {.map_size = 64u << 20, .nosync = true};
	struct store_txn *t;
	struct store_queue q;

	replica_open(&r);
	assert_int_equal(fsm_apply(r.fsm, 1, e1.base, e1.len, &res), 0);
	assert_false(res->skipped);
	/* Restart: close and reopen the store, replay entry 1 then 2. */
	fsm_close(r.fsm);
	store_close(r.store);
	assert_int_equal(store_open(r.dir, &o, &r.store), 0);
	assert_int_equal(fsm_init(&r.fsm, r.store, NULL, NULL), 0);
	assert_int_equal(fsm_apply(r.fsm, 1, e1.base, e1.len, &res), 0);
	assert_true(res->skipped);
	assert_int_equal(fsm_apply(r.fsm, 2, e2.base, e2.len, &res), 0);
	assert_false(res->skipped);
	assert_int_equal(res->ops[0].pub[0].seq, 3);
	assert_int_equal(store_begin(r.store, false, &t), 0);
	assert_int_equal(store_queue_get(t, "q", &q), 0);
	assert_int_equal(q.count, 3);
	store_abort(t);
	raft_free(e1.base);
	raft_free(e2.base);
	replica_close(&r);
}

static void apply_publish_unknown_queue_is_business_error(void **state)
{
	(void)state;
	struct replica r;
	const struct fsm_result *res;
	struct raft_buffer e = make_cmd("nope", false, "x", 2, 1);
	replica_open(&r);
	assert_int_equal(fsm_apply(r.fsm, 1, e.base, e.len, &res), 0);
	assert_int_equal(res->ops[0].status, RMQ_ENOTFOUND);
	assert_int_equal(res->ops[0].pub[1].status, RMQ_ENOTFOUND);
	/* A garbage entry is a fatal fault, not a business outcome. */
	uint8_t junk[4] = {0xff, 0xff, 0xff, 0xff};
	assert_int_not_equal(fsm_apply(r.fsm, 2, junk, sizeof junk, &res), 0);
	raft_free(e.base);
	replica_close(&r);
}

static struct raft_buffer state_cmd(uint32_t shard, uint64_t term,
				    uint64_t leader, const uint64_t *voters,
				    size_t n)
{
	Rmqc__Command cmd = RMQC__COMMAND__INIT;
	Rmqc__Op op = RMQC__OP__INIT;
	Rmqc__Op *opp = &op;
	Rmqc__ShardStateOp so = RMQC__SHARD_STATE_OP__INIT;
	struct raft_buffer buf;
	so.shard = shard;
	so.term = term;
	so.leader = leader;
	so.voters = (uint64_t *)voters;
	so.n_voters = n;
	op.kind_case = RMQC__OP__KIND_SHARD_STATE;
	op.shard_state = &so;
	cmd.ops = &opp;
	cmd.n_ops = 1;
	assert_int_equal(fsm_encode(&cmd, &buf.base, &buf.len), 0);
	return buf;
}

static struct raft_buffer place_cmd(uint32_t shard, const uint64_t *ids,
				    size_t n)
{
	Rmqc__Command cmd = RMQC__COMMAND__INIT;
	Rmqc__Op op = RMQC__OP__INIT;
	Rmqc__Op *opp = &op;
	Rmqc__PlaceOp po = RMQC__PLACE_OP__INIT;
	struct raft_buffer buf;
	po.shard = shard;
	po.replicas = (uint64_t *)ids;
	po.n_replicas = n;
	op.kind_case = RMQC__OP__KIND_PLACE;
	op.place = &po;
	cmd.ops = &opp;
	cmd.n_ops = 1;
	assert_int_equal(fsm_encode(&cmd, &buf.base, &buf.len), 0);
	return buf;
}

/* The meta shard keeps a data shard's placement and the configuration its
 * leader reported; a report of an earlier term (a deposed leader's, applied
 * late) does not overwrite a later one, and neither touches the
 * placement. */
static void apply_shard_records(void **state)
{
	(void)state;
	struct replica r;
	const struct fsm_result *res;
	uint64_t place[] = {1, 2, 4}, v5[] = {1, 2, 3}, v4[] = {1, 2};
	struct raft_buffer p = place_cmd(2, place, 3);
	struct raft_buffer s5 = state_cmd(2, 5, 3, v5, 3);
	struct raft_buffer s4 = state_cmd(2, 4, 1, v4, 2);
	struct raft_buffer empty = place_cmd(2, NULL, 0);
	struct store_txn *t;
	struct store_shard sh;

	replica_open(&r);
	assert_int_equal(fsm_apply(r.fsm, 1, p.base, p.len, &res), 0);
	assert_int_equal(res->ops[0].status, 0);
	assert_int_equal(fsm_apply(r.fsm, 2, s5.base, s5.len, &res), 0);
	assert_int_equal(fsm_apply(r.fsm, 3, s4.base, s4.len, &res), 0);
	assert_int_equal(res->ops[0].status, 0);
	/* An empty replica set is refused, as a business outcome. */
	assert_int_equal(fsm_apply(r.fsm, 4, empty.base, empty.len, &res), 0);
	assert_int_equal(res->ops[0].status, RMQ_EINVAL);
	assert_int_equal(store_begin(r.store, false, &t), 0);
	assert_int_equal(store_shard_get(t, 2, &sh), 0);
	store_abort(t);
	assert_true(sh.placed);
	assert_int_equal(sh.n_replicas, 3);
	assert_int_equal(sh.replicas[2], 4);
	assert_int_equal(sh.term, 5);
	assert_int_equal(sh.leader, 3);
	assert_int_equal(sh.n_voters, 3);
	assert_int_equal(sh.voters[2], 3);
	raft_free(p.base);
	raft_free(s5.base);
	raft_free(s4.base);
	raft_free(empty.base);
	replica_close(&r);
}

/* ---- a real raft_uv log across a restart -------------------------------- */

struct uvrun {
	uv_loop_t loop;
	uv_timer_t timer;
	struct peer_net *net;
	struct shard *shard;
	unsigned applied;
	bool closed;
	bool (*until)(struct uvrun *u);
	uint64_t deadline;
};

static void uvrun_tick_cb(uv_timer_t *t)
{
	struct uvrun *u = t->data;
	if (u->shard != NULL) {
		shard_poll(u->shard);
	}
	if (u->until(u) || uv_now(&u->loop) > u->deadline) {
		uv_stop(&u->loop);
	}
}

static bool uvrun_wait(struct uvrun *u, bool (*until)(struct uvrun *u))
{
	u->until = until;
	u->deadline = uv_now(&u->loop) + 15000;
	uv_timer_start(&u->timer, uvrun_tick_cb, 5, 5);
	uv_run(&u->loop, UV_RUN_DEFAULT);
	uv_timer_stop(&u->timer);
	return until(u);
}

static bool is_leader(struct uvrun *u)
{
	return shard_role(u->shard) == SHARD_LEADER;
}

static bool all_applied(struct uvrun *u)
{
	return u->applied == 40;
}

static void uv_apply_cb(void *data, int status, const struct fsm_result *r)
{
	struct uvrun *u = data;
	(void)r;
	if (status == 0) {
		u->applied++;
	}
}

static void uv_shard_closed_cb(struct shard *s, void *data)
{
	struct uvrun *u = data;
	(void)s;
	u->closed = true;
}

static void uv_net_closed_cb(struct peer_net *n)
{
	(void)n;
}

/* ---- catchup in front of a stub raft_io -------------------------------- */

static unsigned stub_puts, stub_appends, put_cbs, append_cbs;
static int put_status, append_status;
static bool catchup_closed;

static int stub_put(struct raft_io *io, unsigned trailing,
		    struct raft_io_snapshot_put *req,
		    const struct raft_snapshot *snapshot,
		    raft_io_snapshot_put_cb cb)
{
	(void)io;
	(void)trailing;
	(void)req;
	(void)snapshot;
	(void)cb;
	stub_puts++;
	return 0;
}

static int stub_append(struct raft_io *io, struct raft_io_append *req,
		       const struct raft_entry entries[], unsigned n,
		       raft_io_append_cb cb)
{
	(void)io;
	(void)req;
	(void)entries;
	(void)n;
	(void)cb;
	stub_appends++;
	return 0;
}

/* As raft 0.15's installSnapshotCb discards a failed install: the data,
 * not the array of buffers. */
static void install_put_cb(struct raft_io_snapshot_put *req, int status)
{
	struct raft_snapshot *snap = req->data;
	put_cbs++;
	put_status = status;
	raft_free(snap->bufs[0].base);
}

static void append_done_cb(struct raft_io_append *req, int status)
{
	(void)req;
	append_cbs++;
	append_status = status;
}

static void catchup_closed_test_cb(struct catchup *c)
{
	(void)c;
	catchup_closed = true;
}

static void descriptor_snapshot(struct raft_snapshot *snap, uint64_t index)
{
	struct fsm_descriptor d = {.shard_id = 1, .index = index, .node_id = 2};
	memset(snap, 0, sizeof *snap);
	snap->index = index + 1;
	snap->term = 1;
	snap->bufs = raft_malloc(sizeof *snap->bufs);
	snap->bufs[0].base = raft_malloc(FSM_DESCRIPTOR_LEN);
	snap->bufs[0].len = FSM_DESCRIPTOR_LEN;
	snap->n_bufs = 1;
	fsm_descriptor_encode(&d, snap->bufs[0].base);
}

/* Appends pass catchup while it syncs the store behind a snapshot raft
 * took itself (raft may truncate them meanwhile, which raft_uv can only do
 * to entries it has seen); behind an install they wait for the put, and a
 * close cancels both. */
static void catchup_appends_wait_only_behind_an_install(void **state)
{
	(void)state;
	uv_loop_t loop;
	struct peer_net *net;
	struct raft_uv_transport t = {0};
	struct store *st;
	struct store_options so = {.map_size = 16u << 20, .nosync = true};
	struct raft r;
	struct raft_io io = {0};
	struct catchup *c = calloc(1, sizeof *c);
	struct raft_io_snapshot_put put = {0};
	struct raft_io_append app = {0};
	struct raft_entry entry = {.term = 1, .type = RAFT_COMMAND};
	struct raft_snapshot take, install;
	struct peer_net_config pc = {
		.node_id = 1,
		.cluster_id = 7,
		.peer_address = "127.0.0.1:1",
		.client_address = "127.0.0.1:1",
	};
	char dir[64], path[128], cmd[128];

	snprintf(dir, sizeof dir, "/tmp/rmq-catchup-XXXXXX");
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/lmdb", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(store_open(path, &so, &st), 0);
	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(peer_net_init(&loop, &pc, &net), 0);
	assert_int_equal(peer_net_transport_init(net, 1, &t), 0);
	memset(&r, 0, sizeof r); /* no configuration: no peer to fetch from */
	io.snapshot_put = stub_put;
	io.append = stub_append;
	catchup_init(c, &loop, &r, &io, st, net, &t, 1, 1, dir, &so);
	stub_puts = stub_appends = put_cbs = append_cbs = 0;

	/* A snapshot raft took (the store is at its index): the put waits for
	 * the store's sync, appends do not. */
	descriptor_snapshot(&take, 0);
	assert_int_equal(catchup_snapshot_put(c, 8, &put, &take, NULL), 0);
	assert_int_equal(catchup_append(c, &app, &entry, 1, append_done_cb), 0);
	assert_int_equal(stub_appends, 1);
	assert_int_equal(stub_puts, 0);
	for (unsigned k = 0; k < 1000 && stub_puts == 0; k++) {
		uv_run(&loop, UV_RUN_ONCE);
	}
	assert_int_equal(stub_puts, 1);
	raft_free(take.bufs[0].base);
	raft_free(take.bufs);

	/* An install the store is behind: the put waits for a copy of the
	 * state (none comes: no peers), the append waits for the put. */
	descriptor_snapshot(&install, 5);
	put.data = &install;
	assert_int_equal(
		catchup_snapshot_put(c, 0, &put, &install, install_put_cb), 0);
	assert_int_equal(catchup_append(c, &app, &entry, 1, append_done_cb), 0);
	for (unsigned k = 0; k < 20; k++) {
		uv_run(&loop, UV_RUN_NOWAIT);
	}
	assert_int_equal(stub_appends, 1);
	assert_int_equal(stub_puts, 1);
	assert_int_equal(put_cbs, 0);

	catchup_close(c, catchup_closed_test_cb);
	for (unsigned k = 0; k < 1000 && !catchup_closed; k++) {
		uv_run(&loop, UV_RUN_ONCE);
	}
	assert_true(catchup_closed);
	assert_int_equal(put_cbs, 1);
	assert_int_equal(put_status, RAFT_CANCELED);
	assert_int_equal(append_cbs, 1);
	assert_int_equal(append_status, RAFT_CANCELED);
	assert_int_equal(stub_appends, 1);
	assert_int_equal(stub_puts, 1);

	peer_net_transport_release(&t);
	peer_net_close(net, uv_net_closed_cb);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&loop), 0);
	store_close(st);
	free(c);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void uvrun_open(struct uvrun *u, const char *dir, const char *addr)
{
	struct peer_net_config pc = {
		.node_id = 1,
		.cluster_id = 7,
		.peer_address = addr,
		.client_address = "127.0.0.1:1",
	};
	struct shard_config sc = {
		.id = 1,
		.node_id = 1,
		.peer_address = addr,
		.dir = dir,
		.election_timeout_ms = 100,
		.heartbeat_timeout_ms = 20,
		.snapshot_threshold = 100000,
		.snapshot_trailing = 100,
		.map_size = 64u << 20,
	};
	struct shard_hooks hooks = {0};
	uint64_t id = 1;
	const char *const addrs[] = {addr};
	memset(u, 0, sizeof *u);
	assert_int_equal(uv_loop_init(&u->loop), 0);
	uv_timer_init(&u->loop, &u->timer);
	u->timer.data = u;
	assert_int_equal(peer_net_init(&u->loop, &pc, &u->net), 0);
	assert_int_equal(peer_net_listen(u->net), 0);
	assert_int_equal(shard_open(&u->loop, u->net, &sc, &hooks, &u->shard),
			 0);
	int rv = shard_bootstrap(u->shard, &id, addrs, 1);
	assert_true(rv == 0 || rv == RMQ_EEXISTS);
	assert_int_equal(shard_start(u->shard), 0);
}

static bool shard_gone(struct uvrun *u)
{
	return u->closed;
}

static void uvrun_finish(struct uvrun *u)
{
	shard_close(u->shard, uv_shard_closed_cb, u);
	u->shard = NULL;
	assert_true(uvrun_wait(u, shard_gone));
	peer_net_close(u->net, uv_net_closed_cb);
	uv_close((uv_handle_t *)&u->timer, NULL);
	uv_run(&u->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&u->loop), 0);
}

/* Entries of every size must survive a restart: canonical/raft requires
 * 8-byte multiples and silently truncates the log otherwise. The store is
 * removed before the restart, so the state must come back from the log. */
static void uv_restart_rebuilds_state_from_log(void **state)
{
	(void)state;
	char dir[64], cmd[160], addr[32];
	struct uvrun u;
	struct store_txn *t;
	struct store_queue q;

	snprintf(dir, sizeof dir, "/tmp/rmq-uv-XXXXXX");
	assert_non_null(mkdtemp(dir));
	snprintf(addr, sizeof addr, "127.0.0.1:%d", 23000 + getpid() % 5000);

	uvrun_open(&u, dir, addr);
	assert_true(uvrun_wait(&u, is_leader));
	for (unsigned i = 0; i < 40; i++) {
		char prefix[48];
		memset(prefix, 'x', sizeof prefix);
		prefix[1 + i % 40] = '\0'; /* bodies of many lengths */
		struct raft_buffer b = make_cmd("q", i == 0, prefix, 1, 1 + i);
		Rmqc__Command *c = NULL;
		/* make_cmd encodes; decode again for shard_propose. */
		c = rmqc__command__unpack(
			NULL, codec_get_u32be((uint8_t *)b.base + 4),
			(uint8_t *)b.base + 8);
		assert_non_null(c);
		assert_int_equal(b.len % 8, 0);
		assert_int_equal(shard_propose(u.shard, c, uv_apply_cb, &u), 0);
		rmqc__command__free_unpacked(c, NULL);
		raft_free(b.base);
	}
	assert_true(uvrun_wait(&u, all_applied));
	uvrun_finish(&u);

	snprintf(cmd, sizeof cmd, "rm -rf %s/lmdb/*", dir);
	assert_int_equal(system(cmd), 0);

	uvrun_open(&u, dir, addr);
	assert_true(uvrun_wait(&u, is_leader));
	assert_int_equal(store_begin(shard_store(u.shard), false, &t), 0);
	assert_int_equal(store_queue_get(t, "q", &q), 0);
	assert_int_equal(q.count, 40);
	assert_int_equal(q.next_seq, 41);
	store_abort(t);
	uvrun_finish(&u);
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* ---- three real raft_uv replicas on one loop ---------------------------- */

struct cnode {
	char dir[64];
	char addr[32];
	struct peer_net *net;
	struct shard *shard;
	bool closed;
};

struct cl {
	uv_loop_t loop;
	uv_timer_t timer;
	struct cnode n[N];
	unsigned proposed;
	unsigned applied;
	bool (*until)(struct cl *c);
	uint64_t deadline;
	unsigned snapshot_threshold; /* of nodes opened next; 0: 8 */
};

static void cl_tick_cb(uv_timer_t *t)
{
	struct cl *c = t->data;
	for (unsigned i = 0; i < N; i++) {
		if (c->n[i].shard != NULL) {
			shard_poll(c->n[i].shard);
		}
	}
	if (c->until(c) || uv_now(&c->loop) > c->deadline) {
		uv_stop(&c->loop);
	}
}

static bool cl_wait(struct cl *c, bool (*until)(struct cl *c))
{
	c->until = until;
	c->deadline = uv_now(&c->loop) + 20000;
	uv_timer_start(&c->timer, cl_tick_cb, 5, 5);
	uv_run(&c->loop, UV_RUN_DEFAULT);
	uv_timer_stop(&c->timer);
	return until(c);
}

/* Open slot @i as node @id; bootstrap it with nodes 1..@n_members if it
 * is one of them (a node that is not joins empty). */
static void cl_open_id(struct cl *c, unsigned i, uint64_t id,
		       unsigned n_members)
{
	struct cnode *n = &c->n[i];
	struct peer_net_config pc = {
		.node_id = id,
		.cluster_id = 7,
		.peer_address = n->addr,
		.client_address = "127.0.0.1:1",
	};
	struct shard_config sc = {
		.id = 1,
		.node_id = id,
		.peer_address = n->addr,
		.dir = n->dir,
		.election_timeout_ms = 200,
		.heartbeat_timeout_ms = 20,
		.cluster_id = 7,
		.snapshot_threshold =
			c->snapshot_threshold ? c->snapshot_threshold : 8,
		.snapshot_trailing = 4,
		.map_size = 64u << 20,
	};
	struct shard_hooks hooks = {0};
	uint64_t ids[N];
	const char *addrs[N];
	for (unsigned k = 0; k < N; k++) {
		ids[k] = k + 1;
		addrs[k] = c->n[k].addr;
	}
	assert_int_equal(peer_net_init(&c->loop, &pc, &n->net), 0);
	assert_int_equal(peer_net_listen(n->net), 0);
	assert_int_equal(shard_open(&c->loop, n->net, &sc, &hooks, &n->shard),
			 0);
	if (id <= n_members) {
		int rv = shard_bootstrap(n->shard, ids, addrs, n_members);
		if (rv != 0 && rv != RMQ_EEXISTS) {
			fail_msg("bootstrap node %u: %d", (unsigned)id, rv);
		}
	}
	assert_int_equal(shard_start(n->shard), 0);
	n->closed = false;
}

static void cl_open_members(struct cl *c, unsigned i, unsigned n_members)
{
	cl_open_id(c, i, i + 1, n_members);
}

static void cl_open(struct cl *c, unsigned i)
{
	cl_open_members(c, i, N);
}

static void cl_shard_closed_cb(struct shard *s, void *data)
{
	struct cnode *n = data;
	(void)s;
	n->closed = true;
}

static bool cl_closed_all(struct cl *c)
{
	for (unsigned i = 0; i < N; i++) {
		if (c->n[i].shard == NULL && !c->n[i].closed) {
			return false;
		}
	}
	return true;
}

static void cl_close(struct cl *c, unsigned i)
{
	struct cnode *n = &c->n[i];
	shard_close(n->shard, cl_shard_closed_cb, n);
	n->shard = NULL;
	assert_true(cl_wait(c, cl_closed_all));
	peer_net_close(n->net, uv_net_closed_cb);
	n->net = NULL;
}

static int cl_leader(struct cl *c)
{
	for (unsigned i = 0; i < N; i++) {
		if (c->n[i].shard != NULL &&
		    shard_role(c->n[i].shard) == SHARD_LEADER) {
			return (int)i;
		}
	}
	return -1;
}

static bool cl_has_leader(struct cl *c)
{
	return cl_leader(c) >= 0;
}

static void cl_apply_cb(void *data, int status, const struct fsm_result *r)
{
	struct cl *c = data;
	(void)r;
	if (status == 0) {
		c->applied++;
	}
}

static bool cl_all_applied(struct cl *c)
{
	return c->applied == c->proposed;
}

/* Publish @n entries of one message each through the leader. */
static void cl_publish(struct cl *c, unsigned n, uint64_t pseq0)
{
	assert_true(cl_wait(c, cl_has_leader));
	struct shard *l = c->n[cl_leader(c)].shard;
	for (unsigned i = 0; i < n; i++) {
		struct raft_buffer b =
			make_cmd("q", pseq0 == 1 && i == 0, "m", 1, pseq0 + i);
		Rmqc__Command *cmd = rmqc__command__unpack(
			NULL, codec_get_u32be((uint8_t *)b.base + 4),
			(uint8_t *)b.base + 8);
		assert_non_null(cmd);
		assert_int_equal(shard_propose(l, cmd, cl_apply_cb, c), 0);
		c->proposed++;
		rmqc__command__free_unpacked(cmd, NULL);
		raft_free(b.base);
	}
	assert_true(cl_wait(c, cl_all_applied));
}

static unsigned cl_lag;

static bool cl_lag_caught_up(struct cl *c)
{
	int l = cl_leader(c);
	/* The last entry may be a barrier, which the store does not see. */
	return l >= 0 && c->n[cl_lag].shard != NULL &&
	       shard_applied_index(c->n[cl_lag].shard) >=
		       shard_applied_index(c->n[l].shard) &&
	       store_index(shard_store(c->n[cl_lag].shard)) ==
		       store_index(shard_store(c->n[l].shard));
}

static void dump_store(struct store *st, char *out, size_t cap)
{
	struct store_txn *t;
	struct store_queue q;
	struct store_msg m;
	size_t len = 0;
	out[0] = '\0';
	assert_int_equal(store_begin(st, false, &t), 0);
	if (store_queue_get(t, "q", &q) == 0) {
		uint64_t from = 1;
		while (store_msg_next(t, q.qid, from, &m) == 0) {
			len += (size_t)snprintf(out + len, cap - len,
						"%llu=%.*s,",
						(unsigned long long)m.seq,
						(int)m.body_len, m.body);
			from = m.seq + 1;
		}
	}
	store_abort(t);
}

static void cl_setup(struct cl *c)
{
	int base = 24000 + (int)(getpid() % 2000) * 3;
	assert_int_equal(uv_loop_init(&c->loop), 0);
	uv_timer_init(&c->loop, &c->timer);
	c->timer.data = c;
	for (unsigned i = 0; i < N; i++) {
		snprintf(c->n[i].dir, sizeof c->n[i].dir, "/tmp/rmq-cl-XXXXXX");
		assert_non_null(mkdtemp(c->n[i].dir));
		snprintf(c->n[i].addr, sizeof c->n[i].addr, "127.0.0.1:%d",
			 base + (int)i);
	}
}

static void cl_teardown(struct cl *c)
{
	char cmd[256];
	for (unsigned i = 0; i < N; i++) {
		if (c->n[i].shard != NULL) {
			cl_close(c, i);
		}
	}
	uv_close((uv_handle_t *)&c->timer, NULL);
	uv_run(&c->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&c->loop), 0);
	for (unsigned i = 0; i < N; i++) {
		snprintf(cmd, sizeof cmd, "rm -rf %s", c->n[i].dir);
		assert_int_equal(system(cmd), 0);
	}
	free(c);
}

/* A replica down while the others snapshot past its log fetches the state
 * from a peer over the peer port and ends identical; restarted, it finds
 * the state in its own store and copies nothing. */
static void uv_install_fetches_state_then_restart_copies_nothing(void **state)
{
	(void)state;
	static char a[1 << 16], b[1 << 16];
	struct cl *c = calloc(1, sizeof *c);
	struct shard_stats st;

	cl_setup(c);
	for (unsigned i = 0; i < N; i++) {
		cl_open(c, i);
	}
	cl_publish(c, 10, 1);
	cl_lag = ((unsigned)cl_leader(c) + 1) % N;
	cl_close(c, cl_lag);
	cl_publish(c, 60, 11); /* several snapshots of 8 entries */
	/* Snapshots run in the background (the store's fsync first): go on
	 * until the leader has taken a few, so its log no longer reaches
	 * back to the lagging replica's. */
	uint64_t next = 71;
	for (unsigned k = 0; k < 40; k++) {
		struct shard_stats d;
		shard_stats(c->n[cl_leader(c)].shard, &d);
		if (d.snapshots >= 4) {
			break;
		}
		cl_publish(c, 8, next);
		next += 8;
	}

	cl_open(c, cl_lag);
	assert_true(cl_wait(c, cl_lag_caught_up));
	shard_stats(c->n[cl_lag].shard, &st);
	assert_int_equal(st.fetches, 1);
	dump_store(shard_store(c->n[cl_leader(c)].shard), a, sizeof a);
	dump_store(shard_store(c->n[cl_lag].shard), b, sizeof b);
	assert_non_null(strstr(a, "70=m-70,"));
	assert_string_equal(a, b);

	/* More entries, then a restart: the snapshot it loads is covered by
	 * its store. */
	cl_publish(c, 20, next);
	next += 20;
	assert_true(cl_wait(c, cl_lag_caught_up));
	cl_close(c, cl_lag);
	cl_open(c, cl_lag);
	assert_true(cl_wait(c, cl_lag_caught_up));
	shard_stats(c->n[cl_lag].shard, &st);
	assert_int_equal(st.fetches, 0);
	assert_int_equal(st.restores, 1);
	dump_store(shard_store(c->n[cl_leader(c)].shard), a, sizeof a);
	dump_store(shard_store(c->n[cl_lag].shard), b, sizeof b);
	char last[64];
	snprintf(last, sizeof last, "%llu=m-%llu,",
		 (unsigned long long)(next - 1),
		 (unsigned long long)(next - 1));
	assert_non_null(strstr(a, last));
	assert_string_equal(a, b);
	cl_teardown(c);
}

static int cl_changes;
static int cl_change_status;

static void cl_change_cb(void *data, int status)
{
	(void)data;
	cl_changes++;
	cl_change_status = status;
}

static bool cl_change_done(struct cl *c)
{
	(void)c;
	return cl_changes > 0;
}

/* A node that joins (membership: add as spare, then promote) starts with
 * an empty log and no configuration; its first message from the leader is
 * a snapshot, whose state it must fetch from the servers the snapshot's
 * configuration names, then it is promoted and holds what the others do. */
static void uv_joining_replica_fetches_state(void **state)
{
	(void)state;
	static char a[1 << 16], b[1 << 16];
	struct cl *c = calloc(1, sizeof *c);
	struct shard_stats st;

	cl_setup(c);
	cl_open_members(c, 0, 2);
	cl_open_members(c, 1, 2);
	cl_publish(c, 10, 1);
	uint64_t next = 11;
	for (unsigned k = 0; k < 40; k++) {
		struct shard_stats d;
		shard_stats(c->n[cl_leader(c)].shard, &d);
		if (d.snapshots >= 4) {
			break;
		}
		cl_publish(c, 8, next);
		next += 8;
	}

	cl_open_members(c, 2, 2); /* empty: it joins */
	struct shard *l = c->n[cl_leader(c)].shard;
	cl_changes = 0;
	assert_int_equal(shard_add(l, 3, c->n[2].addr, cl_change_cb, NULL), 0);
	assert_true(cl_wait(c, cl_change_done));
	assert_int_equal(cl_change_status, 0);
	cl_changes = 0;
	assert_int_equal(
		shard_assign(l, 3, SHARD_MEMBER_VOTER, cl_change_cb, NULL), 0);
	assert_true(cl_wait(c, cl_change_done));
	assert_int_equal(cl_change_status, 0);

	cl_lag = 2;
	cl_publish(c, 8, next);
	next += 8;
	assert_true(cl_wait(c, cl_lag_caught_up));
	shard_stats(c->n[2].shard, &st);
	assert_int_equal(st.fetches, 1);
	dump_store(shard_store(c->n[cl_leader(c)].shard), a, sizeof a);
	dump_store(shard_store(c->n[2].shard), b, sizeof b);
	char last[64];
	snprintf(last, sizeof last, "%llu=m-%llu,",
		 (unsigned long long)(next - 1),
		 (unsigned long long)(next - 1));
	assert_non_null(strstr(a, last));
	assert_string_equal(a, b);
	cl_teardown(c);
}

static int cl_slot_leads;

static bool cl_slot_is_leader(struct cl *c)
{
	return cl_leader(c) == cl_slot_leads;
}

static void cl_change(struct cl *c, int rv)
{
	assert_int_equal(rv, 0);
	assert_true(cl_wait(c, cl_change_done));
	assert_int_equal(cl_change_status, 0);
	cl_changes = 0;
}

/* The snapshot a leader sends carries the configuration at its index.
 * After nodes were replaced faster than the shard snapshots (the meta
 * shard of a chaos run with the membership nemesis), it may name only
 * nodes that are gone: a joining node must still find a peer to fetch
 * from, the leader that sent it. Here node 3 joins behind a snapshot of
 * {1, 2}, becomes the leader, nodes 1 and 2 leave, and node 4 joins
 * behind that same snapshot. */
static void
uv_joining_replica_fetches_from_leader_past_stale_config(void **state)
{
	(void)state;
	static char a[1 << 16], b[1 << 16];
	struct cl *c = calloc(1, sizeof *c);
	struct shard_stats st;
	char cmd[128];

	cl_setup(c);
	cl_open_members(c, 0, 2);
	cl_open_members(c, 1, 2);
	cl_publish(c, 10, 1);
	uint64_t next = 11;
	for (unsigned k = 0; k < 40; k++) {
		struct shard_stats d;
		shard_stats(c->n[cl_leader(c)].shard, &d);
		if (d.snapshots >= 2) {
			break;
		}
		cl_publish(c, 8, next);
		next += 8;
	}

	/* Node 3 joins by a fetch from 1 or 2, and takes the lead; it takes
	 * no snapshot of its own. */
	c->snapshot_threshold = 100000;
	cl_open_members(c, 2, 2);
	c->snapshot_threshold = 0;
	cl_changes = 0;
	struct shard *l = c->n[cl_leader(c)].shard;
	cl_change(c, shard_add(l, 3, c->n[2].addr, cl_change_cb, NULL));
	cl_change(c,
		  shard_assign(l, 3, SHARD_MEMBER_VOTER, cl_change_cb, NULL));
	cl_lag = 2;
	assert_true(cl_wait(c, cl_lag_caught_up));
	shard_stats(c->n[2].shard, &st);
	assert_int_equal(st.fetches, 1);
	assert_int_equal(shard_transfer(l, 3), 0);
	cl_slot_leads = 2;
	assert_true(cl_wait(c, cl_slot_is_leader));

	/* Nodes 1 and 2 leave; node 3's last snapshot is still the one it
	 * installed, whose configuration is {1, 2}. */
	l = c->n[2].shard;
	cl_change(c, shard_remove(l, 2, cl_change_cb, NULL));
	cl_change(c, shard_remove(l, 1, cl_change_cb, NULL));
	cl_close(c, 1);
	cl_close(c, 0);
	shard_stats(l, &st);
	assert_int_equal(st.snapshots, 0);

	/* Node 4, empty, in slot 0, at an address of its own. */
	snprintf(cmd, sizeof cmd, "rm -rf %s/*", c->n[0].dir);
	assert_int_equal(system(cmd), 0);
	snprintf(c->n[0].addr, sizeof c->n[0].addr, "127.0.0.1:%d",
		 atoi(strrchr(c->n[2].addr, ':') + 1) + 1);
	cl_open_id(c, 0, 4, 2);
	cl_change(c, shard_add(l, 4, c->n[0].addr, cl_change_cb, NULL));
	cl_change(c,
		  shard_assign(l, 4, SHARD_MEMBER_VOTER, cl_change_cb, NULL));
	cl_lag = 0;
	assert_true(cl_wait(c, cl_lag_caught_up));
	shard_stats(c->n[0].shard, &st);
	assert_int_equal(st.fetches, 1);
	dump_store(shard_store(l), a, sizeof a);
	dump_store(shard_store(c->n[0].shard), b, sizeof b);
	assert_true(strlen(a) > 0);
	assert_string_equal(a, b);
	cl_teardown(c);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN); /* as raftmqd: peers hang up */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
			replicate_publish_all_replicas_hold_same_messages,
			setup, teardown),
		cmocka_unit_test_setup_teardown(
			leader_change_retry_is_deduplicated, setup, teardown),
		cmocka_unit_test_setup_teardown(
			returning_follower_does_not_depose_leader, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			snapshot_install_lagging_follower_catches_up, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			install_in_progress_follower_stays_follower,
			setup_guard_all, teardown),
		cmocka_unit_test_setup_teardown(
			compacted_follower_takes_entries_sent_from_index_1,
			setup_guard_all, teardown),
		cmocka_unit_test_setup_teardown(
			snapshot_after_barrier_names_store_index, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			snapshot_install_follower_waits_for_write_before_election,
			setup_guard_all, teardown),
		cmocka_unit_test_setup_teardown(
			snapshot_install_answer_as_candidate_is_dropped,
			setup_guard_no_tick, teardown),
		cmocka_unit_test_setup_teardown(
			transfer_with_pre_vote_elects_target, setup, teardown),
		cmocka_unit_test_setup_teardown(
			demoted_spare_never_learns_standby_does, setup,
			teardown),
		cmocka_unit_test(restore_of_descriptor_ahead_of_store_fails),
		cmocka_unit_test(replay_after_reopen_skips_applied_entries),
		cmocka_unit_test(apply_publish_unknown_queue_is_business_error),
		cmocka_unit_test(apply_shard_records),
		cmocka_unit_test(catchup_appends_wait_only_behind_an_install),
		cmocka_unit_test(uv_restart_rebuilds_state_from_log),
		cmocka_unit_test(
			uv_install_fetches_state_then_restart_copies_nothing),
		cmocka_unit_test(uv_joining_replica_fetches_state),
		cmocka_unit_test(
			uv_joining_replica_fetches_from_leader_past_stale_config),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
