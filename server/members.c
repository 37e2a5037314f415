/* members: cluster membership, shard replicas and leader balance.
 *
 * The members of the cluster are the servers of the meta shard's Raft
 * configuration; the meta shard is on every member. Each data shard has a
 * replica set of replication_factor members, its placement, recorded in the
 * meta shard (PlaceOp). The state of a node is read from the Raft
 * configurations and the meta shard's records, so every step can be retried
 * by anyone:
 *
 *   meta config   data configs        shown as
 *   absent        absent              spare    (registered with --join)
 *   SPARE         any                 standby  (joining: catching up)
 *   VOTER         not voter of every  standby  (joining)
 *                 shard placed on it
 *   VOTER         voter of them all   voter
 *   STANDBY       any                 leaving  (node remove)
 *   absent        present somewhere   leaving  (last steps of a removal)
 *
 * Placement (meta leader, plan_placement(), one PlaceOp at a time): a
 * shard's replica set keeps only staying members (not leaving), is filled
 * up to replication_factor with the live members holding the fewest
 * replicas, and, after the member set changed, once every shard's
 * configuration matches its placement, one replica at a time moves from
 * the member holding the most replicas to the one holding the fewest until
 * they differ by at most one; then the member set is recorded as balanced
 * (the meta shard's own placement record). `shard move` rewrites one
 * placement; the balance leaves it alone until the members change again.
 *
 * Every data shard's leader, on its tick, moves its own configuration
 * towards the placement: it adds a missing replica (raft 0.15: as a spare),
 * promotes it to voter (raft catches it up first), and only then removes a
 * replica that is no longer placed (add first, then remove, so the
 * replication factor does not drop during a move). One change at a time per
 * shard. After each change it reports its configuration and leadership to
 * the meta shard (ShardStateOp: proposed directly on the meta leader, else
 * sent to it by the reporter thread), so that nodes which do not replicate
 * the shard know its leader and replicas (members_shard_view()).
 *
 * `node add N` (meta leader): raft_add(N) to the meta shard (a spare), then
 * the meta leader promotes it; the planner then moves replicas onto it.
 * `node remove N` (meta leader): N becomes a STANDBY of the meta shard (it
 * still gets the meta log, so a live N learns it is leaving and hands its
 * leaderships over); the planner replaces it in every placement, data
 * shard leaders remove it. Once no placement and no reported data shard
 * configuration lists N, the meta leader writes N's tombstone (a NodeOp
 * without addresses) and removes N from the meta shard. A dead node is
 * removed the same way: only the remaining voters take part.
 *
 * Leaders are spread by count of data shards led: the leader of a data
 * shard that leads at least two data shards more than another member (a
 * voter of the shard, heard from and caught up) hands that shard to it;
 * the meta shard's leader hands the meta shard to a member leading fewer
 * data shards than itself. One transfer per node every two seconds. A
 * restarted node thereby gets its share back without a command.
 *
 * canonical/raft 0.15 caveats: a server demoted and promoted again may
 * never catch up, so no member is ever demoted and re-promoted here (a
 * leaving node cannot be added back: it must be removed, wiped and joined
 * again; a replica moved away is removed from the configuration, never
 * demoted); transfers skip the pre-vote (a TimeoutNow starts a real
 * election), which the cluster tests exercise.
 *
 * Threads: the node's loop thread, and the reporter thread, which only
 * sends the reports it is handed (under members.mu) with node_rpc(). */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server.h"

#define MAX_CONF 64
#define BALANCE_EVERY_MS 2000
#define BALANCE_AFTER_START_MS 5000
#define PLAN_EVERY_MS 500
#define REPORT_EVERY_MS 500
#define REPORT_IO_TIMEOUT_S 2
#define MAX_IDS STORE_SHARD_MAX_IDS

/* A report for the reporter thread to send. */
struct report {
	bool pending;
	char addr[CONFIG_ADDR_LEN]; /* the meta leader's client address */
	uint64_t term;
	uint64_t leader;
	size_t n_voters, n_others;
	uint64_t voters[MAX_IDS];
	uint64_t others[MAX_IDS];
};

struct members {
	uint64_t last_balance_ms;
	uint64_t last_log_ms[NODE_MAX_SHARDS];
	bool tombstone_inflight;
	bool place_inflight; /* a PlaceOp of the planner */
	uint64_t last_plan_ms;

	bool state_inflight[NODE_MAX_SHARDS]; /* a ShardStateOp proposed here */
	uint64_t last_report_ms[NODE_MAX_SHARDS];
	/* The reporter thread; slots[] and stop under mu. */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	struct report slots[NODE_MAX_SHARDS];
};

/* An admin request waiting for a raft change, transfer or entry. */
struct admin_req {
	struct node *node;
	struct conn *conn; /* ref held */
	uint64_t req_id;
	Rmq__Request__BodyCase kind;
	uint64_t target;
	unsigned shard;
};

static uint64_t now_ms(void)
{
	return uv_hrtime() / 1000000;
}

/* ---- the reporter thread -------------------------------------------------- */

static void send_report(unsigned shard, const struct report *r)
{
	Rmq__Request req = RMQ__REQUEST__INIT;
	Rmq__ShardReportReq sr = RMQ__SHARD_REPORT_REQ__INIT;
	Rmq__Response *resp = NULL;
	int rv;

	sr.shard = shard;
	sr.term = r->term;
	sr.leader = r->leader;
	sr.n_voters = r->n_voters;
	sr.voters = (uint64_t *)r->voters;
	sr.n_others = r->n_others;
	sr.others = (uint64_t *)r->others;
	req.id = 1;
	req.body_case = RMQ__REQUEST__BODY_SHARD_REPORT;
	req.shard_report = &sr;
	rv = node_rpc(r->addr, &req, REPORT_IO_TIMEOUT_S, &resp);
	if (rv != 0 || resp->error != NULL) {
		/* The loop thread sends it again if the record stays behind. */
		LOGD("shard %u: report to %s failed: %s", shard, r->addr,
		     rv != 0 ? codec_strerror(rv)
			     : (resp->error->message != NULL
					? resp->error->message
					: ""));
	}
	if (resp != NULL) {
		rmq__response__free_unpacked(resp, NULL);
	}
}

static void *reporter_main(void *arg)
{
	struct members *m = arg;
	struct report r;

	pthread_mutex_lock(&m->mu);
	while (!m->stop) {
		unsigned i;
		for (i = 0; i < NODE_MAX_SHARDS && !m->slots[i].pending; i++) {
		}
		if (i == NODE_MAX_SHARDS) {
			pthread_cond_wait(&m->cv, &m->mu);
			continue;
		}
		r = m->slots[i];
		m->slots[i].pending = false;
		pthread_mutex_unlock(&m->mu);
		send_report(i, &r);
		pthread_mutex_lock(&m->mu);
	}
	pthread_mutex_unlock(&m->mu);
	return NULL;
}

int members_init(struct node *n)
{
	struct members *m = calloc(1, sizeof *m);
	if (m == NULL) {
		return RMQ_ENOMEM;
	}
	pthread_mutex_init(&m->mu, NULL);
	pthread_cond_init(&m->cv, NULL);
	if (pthread_create(&m->thread, NULL, reporter_main, m) != 0) {
		pthread_cond_destroy(&m->cv);
		pthread_mutex_destroy(&m->mu);
		free(m);
		return RMQ_ENOMEM;
	}
	m->thread_started = true;
	n->members = m;
	return 0;
}

void members_close(struct node *n)
{
	struct members *m = n->members;
	if (m == NULL) {
		return;
	}
	if (m->thread_started) {
		pthread_mutex_lock(&m->mu);
		m->stop = true;
		pthread_cond_signal(&m->cv);
		pthread_mutex_unlock(&m->mu);
		pthread_join(m->thread,
			     NULL); /* at most one report's timeout */
	}
	pthread_cond_destroy(&m->cv);
	pthread_mutex_destroy(&m->mu);
	free(m);
	n->members = NULL;
}

/* ---- reading the configurations ---------------------------------------- */

static bool meta_role(struct node *n, uint64_t id, enum shard_member_role *r)
{
	return shard_member_role(n->shards[0], id, r);
}

static bool is_tombstoned(struct node *n, uint64_t id)
{
	struct peer_info *p = node_peer(n, id, false);
	return p != NULL && p->removed;
}

/* A meta member that stays (voter, or spare being promoted). */
static bool is_staying_member(struct node *n, uint64_t id)
{
	enum shard_member_role r;
	return meta_role(n, id, &r) && r != SHARD_MEMBER_STANDBY;
}

static bool has_id(const uint64_t *ids, size_t k, uint64_t id)
{
	for (size_t i = 0; i < k; i++) {
		if (ids[i] == id) {
			return true;
		}
	}
	return false;
}

static bool same_set(const uint64_t *a, size_t na, const uint64_t *b, size_t nb)
{
	if (na != nb) {
		return false;
	}
	for (size_t i = 0; i < na; i++) {
		if (!has_id(b, nb, a[i])) {
			return false;
		}
	}
	return true;
}

/* The meta shard's record of data shard @i; false (and *r zeroed) if it
 * has none. */
static bool shard_record(struct node *n, unsigned i, struct store_shard *r)
{
	struct store_txn *t;
	int rv;

	memset(r, 0, sizeof *r);
	r->shard = i;
	if (store_begin(shard_store(n->shards[0]), false, &t) != 0) {
		return false;
	}
	rv = store_shard_get(t, i, r);
	store_abort(t);
	return rv == 0;
}

/* Staying members of the meta shard: voters (not joining, not leaving). */
static size_t staying_voters(struct node *n, uint64_t *ids, size_t max)
{
	struct shard_member m[MAX_CONF];
	size_t nm = shard_members(n->shards[0], m, MAX_CONF);
	size_t k = 0;
	for (size_t i = 0; i < nm && i < MAX_CONF && k < max; i++) {
		if (m[i].role == SHARD_MEMBER_VOTER) {
			ids[k++] = m[i].id;
		}
	}
	return k;
}

/* The replica set data shard @i should have: its placement, or, before
 * the planner placed it (a cluster bootstrapped by an earlier release),
 * every staying member. */
static size_t record_target(struct node *n, const struct store_shard *r,
			    uint64_t *ids)
{
	if (r->placed) {
		memcpy(ids, r->replicas, r->n_replicas * sizeof *ids);
		return r->n_replicas;
	}
	return staying_voters(n, ids, MAX_IDS);
}

/* As record_target(), reading data shard @i's record. */
static size_t shard_target(struct node *n, unsigned i, uint64_t *ids)
{
	struct store_shard r;
	shard_record(n, i, &r); /* zeroed, so not placed, if absent */
	return record_target(n, &r, ids);
}

void members_shard_view(struct node *n, unsigned i, struct shard_view *v)
{
	struct shard *s = n->shards[i];
	struct store_shard r;
	enum shard_member_role role;
	bool rec = i > 0 && shard_record(n, i, &r) && r.term > 0;
	uint64_t term = shard_term(s);

	memset(v, 0, sizeof *v);
	/* Our replica is the better source when it leads, or is a member
	 * in a later term than the record's. */
	if (!rec || shard_role(s) == SHARD_LEADER ||
	    (shard_member_role(s, n->cfg.id, &role) && term > r.term)) {
		struct shard_member m[MAX_CONF];
		size_t nm = shard_members(s, m, MAX_CONF);
		v->leader = shard_leader_id(s);
		v->term = term;
		v->local = true;
		for (size_t k = 0; k < nm && k < MAX_CONF; k++) {
			if (m[k].role == SHARD_MEMBER_VOTER &&
			    v->n_voters < MAX_IDS) {
				v->voters[v->n_voters++] = m[k].id;
			}
		}
		return;
	}
	v->leader = r.leader;
	v->term = r.term;
	v->n_voters = r.n_voters;
	memcpy(v->voters, r.voters, r.n_voters * sizeof *r.voters);
}

bool members_holds(struct node *n, unsigned i)
{
	uint64_t target[MAX_IDS];
	if (i == 0 || shard_role(n->shards[i]) == SHARD_LEADER) {
		return true;
	}
	/* Not our own configuration: a replica moved away may never have
	 * heard that it was removed. */
	size_t k = shard_target(n, i, target);
	return has_id(target, k, n->cfg.id);
}

/* Whether @id is placed on, or still in the configuration of, some data
 * shard (as far as the records and our own replicas tell). */
static bool in_any_data_shard(struct node *n, uint64_t id)
{
	enum shard_member_role role;
	struct store_shard r;
	for (unsigned i = 1; i < n->n_shards; i++) {
		if (shard_record(n, i, &r) &&
		    ((r.placed && has_id(r.replicas, r.n_replicas, id)) ||
		     has_id(r.voters, r.n_voters, id) ||
		     has_id(r.others, r.n_others, id))) {
			return true;
		}
		if (shard_role(n->shards[i]) == SHARD_LEADER &&
		    shard_member_role(n->shards[i], id, &role)) {
			return true;
		}
	}
	return false;
}

/* Whether @id is a voter of every data shard placed on it. */
static bool voter_where_placed(struct node *n, uint64_t id)
{
	uint64_t target[MAX_IDS];
	struct shard_view v;
	for (unsigned i = 1; i < n->n_shards; i++) {
		size_t k = shard_target(n, i, target);
		if (!has_id(target, k, id)) {
			continue;
		}
		members_shard_view(n, i, &v);
		if (!has_id(v.voters, v.n_voters, id)) {
			return false;
		}
	}
	return true;
}

/* Whether the configuration a data shard's record reports is its
 * placement. */
static bool record_settled(struct node *n, const struct store_shard *r)
{
	uint64_t target[MAX_IDS];
	size_t k = record_target(n, r, target);
	return r->term > 0 && r->n_others == 0 &&
	       same_set(r->voters, r->n_voters, target, k);
}

static const char *node_role_name(struct node *n, uint64_t id)
{
	enum shard_member_role r;
	if (!meta_role(n, id, &r)) {
		return in_any_data_shard(n, id) ? "leaving" : "spare";
	}
	switch (r) {
	case SHARD_MEMBER_STANDBY:
		return "leaving";
	case SHARD_MEMBER_SPARE:
		return "standby";
	default:
		return voter_where_placed(n, id) ? "voter" : "standby";
	}
}

/* ---- logging of background changes --------------------------------------- */

struct change_note {
	struct node *node;
	unsigned shard;
	char what[96];
};

static void change_done_cb(void *data, int status)
{
	struct change_note *c = data;
	if (status == 0) {
		LOGI("shard %u: %s: done", c->shard, c->what);
	} else {
		LOGW("shard %u: %s: %s (will retry)", c->shard, c->what,
		     codec_strerror(status));
	}
	free(c);
}

/* "<@verb> node <@id><@tail>" */
static struct change_note *note_new(struct node *n, unsigned shard,
				    const char *verb, uint64_t id,
				    const char *tail)
{
	struct change_note *c = calloc(1, sizeof *c);
	if (c != NULL) {
		c->node = n;
		c->shard = shard;
		snprintf(c->what, sizeof c->what, "%s node %" PRIu64 "%s", verb,
			 id, tail);
	}
	return c;
}

/* Log a refused change at most every 5 s per shard. */
static void note_refused(struct node *n, unsigned shard, const char *what,
			 uint64_t id, int rv)
{
	uint64_t now = now_ms();
	if (now - n->members->last_log_ms[shard] < 5000) {
		return;
	}
	n->members->last_log_ms[shard] = now;
	LOGW("shard %u: cannot %s node %" PRIu64 " now: %s", shard, what, id,
	     codec_strerror(rv));
}

/* The best voter of @s other than us to lead it: a staying member, heard
 * from and caught up, leading the fewest shards; 0 if none. */
static uint64_t pick_leader(struct node *n, struct shard *s,
			    const unsigned *counts, const uint64_t *ids,
			    size_t n_ids)
{
	struct shard_member m[MAX_CONF];
	size_t k = shard_members(s, m, MAX_CONF);
	uint64_t best = 0;
	unsigned best_count = ~0u;
	for (size_t i = 0; i < k && i < MAX_CONF; i++) {
		unsigned c = 0;
		if (m[i].id == n->cfg.id || m[i].role != SHARD_MEMBER_VOTER ||
		    !is_staying_member(n, m[i].id) ||
		    !shard_peer_recent(s, m[i].id) ||
		    !shard_peer_caught_up(s, m[i].id)) {
			continue;
		}
		for (size_t j = 0; j < n_ids && counts != NULL; j++) {
			if (ids[j] == m[i].id) {
				c = counts[j];
			}
		}
		if (c < best_count || (c == best_count && m[i].id < best)) {
			best = m[i].id;
			best_count = c;
		}
	}
	return best;
}

/* ---- shard reconciliation (leader side) ------------------------------------ */

/* Propose the one meta shard op @op. @cb/@data as for shard_propose. */
static int propose_meta_op(struct node *n, Rmqc__Op *op, shard_apply_cb cb,
			   void *data)
{
	Rmqc__Command cmd = RMQC__COMMAND__INIT;
	cmd.ops = &op;
	cmd.n_ops = 1;
	return shard_propose(n->shards[0], &cmd, cb, data);
}

/* The peer address the meta shard's configuration has for @id. */
static bool meta_address(struct node *n, uint64_t id, char *out, size_t len)
{
	struct shard_member m[MAX_CONF];
	size_t nm = shard_members(n->shards[0], m, MAX_CONF);
	for (size_t k = 0; k < nm && k < MAX_CONF; k++) {
		if (m[k].id == id) {
			snprintf(out, len, "%s", m[k].address);
			return true;
		}
	}
	return false;
}

/* Move data shard @i's configuration one step towards its placement. */
static void reconcile_data_shard(struct node *n, unsigned i)
{
	struct shard *s = n->shards[i];
	struct shard_member conf[MAX_CONF];
	uint64_t target[MAX_IDS];
	size_t nt = shard_target(n, i, target);
	size_t nc = shard_members(s, conf, MAX_CONF);
	enum shard_member_role r;
	struct change_note *note;
	char addr[CONFIG_ADDR_LEN];
	int rv;

	if (nt == 0 || nc > MAX_CONF) {
		return;
	}
	/* Add first... */
	for (size_t k = 0; k < nt; k++) {
		if (!shard_member_role(s, target[k], &r)) {
			if (!meta_address(n, target[k], addr, sizeof addr)) {
				continue; /* not a member (yet): the planner */
			}
			note = note_new(n, i, "add", target[k], "");
			rv = note != NULL ? shard_add(s, target[k], addr,
						      change_done_cb, note)
					  : RMQ_ENOMEM;
			if (rv != 0) {
				free(note);
				note_refused(n, i, "add", target[k], rv);
			} else {
				LOGI("shard %u: adding node %" PRIu64 " (%s)",
				     i, target[k], addr);
			}
			return;
		}
		if (r != SHARD_MEMBER_VOTER) {
			note = note_new(n, i, "promote", target[k],
					" to voter");
			rv = note != NULL ? shard_assign(s, target[k],
							 SHARD_MEMBER_VOTER,
							 change_done_cb, note)
					  : RMQ_ENOMEM;
			if (rv != 0) {
				free(note);
				note_refused(n, i, "promote", target[k], rv);
			} else {
				LOGI("shard %u: catching node %" PRIu64
				     " up, then promoting it to voter",
				     i, target[k]);
			}
			return;
		}
	}
	/* ...then remove what is not placed here any more. */
	for (size_t k = 0; k < nc; k++) {
		if (has_id(target, nt, conf[k].id)) {
			continue;
		}
		if (conf[k].id == n->cfg.id) {
			uint64_t to = pick_leader(n, s, NULL, NULL, 0);
			if (shard_transfer(s, to) == 0) {
				LOGI("shard %u: replica moves away: handing "
				     "leadership to node %" PRIu64,
				     i, to);
			}
			return;
		}
		note = note_new(n, i, "remove", conf[k].id, "");
		rv = note != NULL
			     ? shard_remove(s, conf[k].id, change_done_cb, note)
			     : RMQ_ENOMEM;
		if (rv != 0) {
			free(note);
			note_refused(n, i, "remove", conf[k].id, rv);
		} else {
			LOGI("shard %u: removing node %" PRIu64, i, conf[k].id);
		}
		return;
	}
}

/* ---- reports of data shard configurations ---------------------------------- */

struct state_req {
	struct node *node;
	unsigned shard;
};

static void state_applied_cb(void *data, int status, const struct fsm_result *r)
{
	struct state_req *q = data;
	(void)status;
	(void)r;
	if (q->node->members != NULL) {
		q->node->members->state_inflight[q->shard] = false;
	}
	free(q);
}

static int propose_state(struct node *n, unsigned shard,
			 const struct report *rep, shard_apply_cb cb,
			 void *data)
{
	Rmqc__Op op = RMQC__OP__INIT;
	Rmqc__ShardStateOp so = RMQC__SHARD_STATE_OP__INIT;
	so.shard = shard;
	so.term = rep->term;
	so.leader = rep->leader;
	so.n_voters = rep->n_voters;
	so.voters = (uint64_t *)rep->voters;
	so.n_others = rep->n_others;
	so.others = (uint64_t *)rep->others;
	op.kind_case = RMQC__OP__KIND_SHARD_STATE;
	op.shard_state = &so;
	return propose_meta_op(n, &op, cb, data);
}

/* On the leader of data shard @i: if the meta shard's record of it is not
 * what this leader sees, report (at most every REPORT_EVERY_MS). */
static void report_shard(struct node *n, unsigned i)
{
	struct members *ms = n->members;
	struct shard *s = n->shards[i];
	struct shard_member m[MAX_CONF];
	struct store_shard r;
	struct report rep;
	size_t nm = shard_members(s, m, MAX_CONF);
	uint64_t now = now_ms();

	if (nm > MAX_CONF) {
		return;
	}
	memset(&rep, 0, sizeof rep);
	rep.term = shard_term(s);
	rep.leader = n->cfg.id;
	for (size_t k = 0; k < nm; k++) {
		if (m[k].role == SHARD_MEMBER_VOTER) {
			if (rep.n_voters < MAX_IDS) {
				rep.voters[rep.n_voters++] = m[k].id;
			}
		} else if (rep.n_others < MAX_IDS) {
			rep.others[rep.n_others++] = m[k].id;
		}
	}
	shard_record(n, i, &r);
	if (r.term == rep.term && r.leader == rep.leader &&
	    same_set(r.voters, r.n_voters, rep.voters, rep.n_voters) &&
	    same_set(r.others, r.n_others, rep.others, rep.n_others)) {
		return;
	}
	if (now < ms->last_report_ms[i] + REPORT_EVERY_MS) {
		return;
	}
	ms->last_report_ms[i] = now;
	if (shard_role(n->shards[0]) == SHARD_LEADER) {
		struct state_req *q;
		if (ms->state_inflight[i] ||
		    (q = calloc(1, sizeof *q)) == NULL) {
			return;
		}
		q->node = n;
		q->shard = i;
		if (propose_state(n, i, &rep, state_applied_cb, q) != 0) {
			free(q);
			return;
		}
		ms->state_inflight[i] = true;
		return;
	}
	uint64_t meta_leader = shard_leader_id(n->shards[0]);
	const char *addr =
		meta_leader != 0 ? node_client_address(n, meta_leader) : "";
	if (addr[0] == '\0') {
		return;
	}
	snprintf(rep.addr, sizeof rep.addr, "%s", addr);
	rep.pending = true;
	pthread_mutex_lock(&ms->mu);
	ms->slots[i] = rep;
	pthread_cond_signal(&ms->cv);
	pthread_mutex_unlock(&ms->mu);
}

static void tombstone_cb(void *data, int status, const struct fsm_result *r)
{
	struct node *n = data;
	(void)status;
	(void)r;
	if (n->members != NULL) {
		n->members->tombstone_inflight = false;
	}
}

/* Record in the meta shard that @id is removed (a NodeOp without
 * addresses). @cb/@data as for shard_propose. */
static int propose_tombstone(struct node *n, uint64_t id, shard_apply_cb cb,
			     void *data)
{
	Rmqc__Op op = RMQC__OP__INIT;
	Rmqc__NodeOp no = RMQC__NODE_OP__INIT;
	no.id = id;
	op.kind_case = RMQC__OP__KIND_NODE;
	op.node = &no;
	return propose_meta_op(n, &op, cb, data);
}

/* On the meta leader: promote joining nodes, finish removals. */
static void reconcile_meta(struct node *n)
{
	struct shard *s = n->shards[0];
	struct shard_member m[MAX_CONF];
	size_t nm = shard_members(s, m, MAX_CONF);
	struct change_note *note;
	int rv;

	if (nm > MAX_CONF) {
		return;
	}
	for (size_t k = 0; k < nm; k++) {
		if (m[k].role != SHARD_MEMBER_SPARE) {
			continue;
		}
		note = note_new(n, 0, "promote", m[k].id, " to voter");
		rv = note != NULL ? shard_assign(s, m[k].id, SHARD_MEMBER_VOTER,
						 change_done_cb, note)
				  : RMQ_ENOMEM;
		if (rv != 0) {
			free(note);
			note_refused(n, 0, "promote", m[k].id, rv);
		} else {
			LOGI("shard 0: catching node %" PRIu64
			     " up, then promoting it to voter",
			     m[k].id);
		}
		return;
	}
	for (size_t k = 0; k < nm; k++) {
		if (m[k].role != SHARD_MEMBER_STANDBY) {
			continue;
		}
		if (m[k].id == n->cfg.id) {
			uint64_t to = pick_leader(n, s, NULL, NULL, 0);
			if (shard_transfer(s, to) == 0) {
				LOGI("shard 0: leaving: handing leadership to "
				     "node %" PRIu64,
				     to);
			}
			return;
		}
		if (in_any_data_shard(n, m[k].id)) {
			continue; /* data shards first */
		}
		if (!is_tombstoned(n, m[k].id)) {
			if (!n->members->tombstone_inflight &&
			    propose_tombstone(n, m[k].id, tombstone_cb, n) ==
				    0) {
				n->members->tombstone_inflight = true;
			}
			return;
		}
		note = note_new(n, 0, "remove", m[k].id, "");
		rv = note != NULL
			     ? shard_remove(s, m[k].id, change_done_cb, note)
			     : RMQ_ENOMEM;
		if (rv != 0) {
			free(note);
			note_refused(n, 0, "remove", m[k].id, rv);
		} else {
			LOGI("shard 0: removing node %" PRIu64
			     " (gone from every data shard)",
			     m[k].id);
		}
		return;
	}
}

/* ---- placement (meta leader) ------------------------------------------------ */

static void place_cb(void *data, int status, const struct fsm_result *r)
{
	struct node *n = data;
	(void)status;
	(void)r;
	if (n->members != NULL) {
		n->members->place_inflight = false;
	}
}

static int propose_place(struct node *n, unsigned shard, const uint64_t *ids,
			 size_t k, shard_apply_cb cb, void *data)
{
	Rmqc__Op op = RMQC__OP__INIT;
	Rmqc__PlaceOp po = RMQC__PLACE_OP__INIT;
	po.shard = shard;
	po.n_replicas = k;
	po.replicas = (uint64_t *)ids;
	op.kind_case = RMQC__OP__KIND_PLACE;
	op.place = &po;
	return propose_meta_op(n, &op, cb, data);
}

static void place(struct node *n, unsigned shard, const uint64_t *ids, size_t k,
		  const char *why)
{
	char list[160];
	size_t used = 0;
	for (size_t j = 0; j < k && used < sizeof list; j++) {
		int w = snprintf(list + used, sizeof list - used, "%s%" PRIu64,
				 j ? "," : "", ids[j]);
		used += w > 0 ? (size_t)w : 0;
	}
	if (propose_place(n, shard, ids, k, place_cb, n) != 0) {
		return;
	}
	n->members->place_inflight = true;
	if (shard == 0) {
		LOGI("replica counts are even over members %s", list);
	} else {
		LOGI("shard %u: replicas on nodes %s (%s)", shard, list, why);
	}
}

struct plan {
	size_t n_members;
	uint64_t members[MAX_CONF]; /* staying voters of the meta shard */
	bool alive[MAX_CONF];
	unsigned load[MAX_CONF]; /* replicas placed on each */
};

static unsigned *plan_load(struct plan *p, uint64_t id)
{
	for (size_t j = 0; j < p->n_members; j++) {
		if (p->members[j] == id) {
			return &p->load[j];
		}
	}
	return NULL;
}

/* The live member not in @ids holding the fewest replicas, 0 if none. */
static uint64_t least_loaded(const struct plan *p, const uint64_t *ids,
			     size_t k)
{
	uint64_t best = 0;
	unsigned best_load = ~0u;
	for (size_t j = 0; j < p->n_members; j++) {
		if (p->alive[j] && !has_id(ids, k, p->members[j]) &&
		    p->load[j] < best_load) {
			best = p->members[j];
			best_load = p->load[j];
		}
	}
	return best;
}

/* Keep every placement on staying members, replication_factor of them
 * where there are enough live ones, and the replica counts even. */
static void plan_placement(struct node *n)
{
	struct members *ms = n->members;
	struct plan p;
	uint64_t placed[NODE_MAX_SHARDS][MAX_IDS];
	size_t n_placed[NODE_MAX_SHARDS];
	struct store_shard rec[NODE_MAX_SHARDS];
	uint64_t now = now_ms();

	if (ms->place_inflight || now < ms->last_plan_ms + PLAN_EVERY_MS) {
		return;
	}
	ms->last_plan_ms = now;
	memset(&p, 0, sizeof p);
	p.n_members = staying_voters(n, p.members, MAX_CONF);
	if (p.n_members == 0) {
		return;
	}
	for (size_t j = 0; j < p.n_members; j++) {
		p.alive[j] = p.members[j] == n->cfg.id ||
			     shard_peer_recent(n->shards[0], p.members[j]);
	}

	size_t rf = n->cfg.replication_factor;
	if (rf > MAX_IDS) {
		rf = MAX_IDS;
	}
	for (unsigned i = 1; i < n->n_shards; i++) {
		shard_record(n, i, &rec[i]);
		n_placed[i] = record_target(n, &rec[i], placed[i]);
		for (size_t k = 0; k < n_placed[i]; k++) {
			unsigned *l = plan_load(&p, placed[i][k]);
			if (l != NULL) {
				(*l)++;
			}
		}
	}
	/* Repair: drop leaving nodes, fill up, trim. */
	for (unsigned i = 1; i < n->n_shards; i++) {
		uint64_t q[MAX_IDS];
		size_t k = 0;
		for (size_t j = 0; j < n_placed[i]; j++) {
			if (plan_load(&p, placed[i][j]) != NULL) {
				q[k++] = placed[i][j];
			}
		}
		while (k < rf) {
			uint64_t c = least_loaded(&p, q, k);
			if (c == 0) {
				break;
			}
			(*plan_load(&p, c))++;
			q[k++] = c;
		}
		while (k > rf) {
			/* Drop the most loaded replica that does not lead. */
			size_t worst = k;
			for (size_t j = 0; j < k; j++) {
				if (q[j] == rec[i].leader) {
					continue;
				}
				if (worst == k ||
				    *plan_load(&p, q[j]) >
					    *plan_load(&p, q[worst])) {
					worst = j;
				}
			}
			if (worst == k) {
				break;
			}
			(*plan_load(&p, q[worst]))--;
			q[worst] = q[--k];
		}
		if (!rec[i].placed || !same_set(q, k, placed[i], n_placed[i])) {
			place(n, i, q, k, "members changed");
			return;
		}
	}
	/* Balance, one move at a time, once every shard has settled, and
	 * only for a member set not balanced before: the meta shard's own
	 * record holds the last one (an operator's shard move stays where
	 * it was put until the members change). */
	struct store_shard balanced;
	shard_record(n, 0, &balanced);
	if (balanced.placed && p.n_members <= MAX_IDS &&
	    same_set(balanced.replicas, balanced.n_replicas, p.members,
		     p.n_members)) {
		return;
	}
	for (unsigned i = 1; i < n->n_shards; i++) {
		if (!record_settled(n, &rec[i])) {
			return;
		}
	}
	size_t hi = 0, lo = p.n_members;
	for (size_t j = 0; j < p.n_members; j++) {
		if (p.load[j] > p.load[hi]) {
			hi = j;
		}
		if (p.alive[j] &&
		    (lo == p.n_members || p.load[j] < p.load[lo])) {
			lo = j;
		}
	}
	if (lo == p.n_members || p.load[hi] < p.load[lo] + 2) {
		if (p.n_members <= MAX_IDS) {
			place(n, 0, p.members, p.n_members, "balanced");
		}
		return;
	}
	uint64_t from = p.members[hi], to = p.members[lo];
	unsigned pick = 0;
	for (unsigned i = 1; i < n->n_shards; i++) {
		if (!has_id(placed[i], n_placed[i], from) ||
		    has_id(placed[i], n_placed[i], to)) {
			continue;
		}
		/* Rather a shard that @from does not lead. */
		if (pick == 0 || rec[pick].leader == from) {
			pick = i;
		}
	}
	if (pick == 0) {
		return;
	}
	uint64_t q[MAX_IDS];
	size_t k = 0;
	for (size_t j = 0; j < n_placed[pick]; j++) {
		q[k++] = placed[pick][j] == from ? to : placed[pick][j];
	}
	char why[96];
	snprintf(why, sizeof why,
		 "balance: node %" PRIu64 " holds %u replicas, node %" PRIu64
		 " %u",
		 from, p.load[hi], to, p.load[lo]);
	place(n, pick, q, k, why);
}

/* ---- leader balance ------------------------------------------------------ */

static void balance_leaders(struct node *n)
{
	struct shard_member meta[MAX_CONF];
	uint64_t ids[MAX_CONF];
	unsigned counts[MAX_CONF];
	size_t nm, k = 0, me = MAX_CONF;
	uint64_t now = now_ms();

	if (now < n->started_ms + BALANCE_AFTER_START_MS ||
	    now < n->members->last_balance_ms + BALANCE_EVERY_MS) {
		return;
	}
	nm = shard_members(n->shards[0], meta, MAX_CONF);
	if (nm > MAX_CONF) {
		return;
	}
	for (size_t i = 0; i < nm; i++) {
		if (meta[i].role != SHARD_MEMBER_VOTER) {
			continue;
		}
		if (meta[i].id == n->cfg.id) {
			me = k;
		}
		ids[k] = meta[i].id;
		counts[k] = 0;
		k++;
	}
	if (me == MAX_CONF) {
		return; /* not a (staying) member */
	}
	/* Data shards carry the load: count their leaders only. */
	for (unsigned i = 1; i < n->n_shards; i++) {
		struct shard_view v;
		members_shard_view(n, i, &v);
		uint64_t l = v.leader;
		for (size_t j = 0; j < k; j++) {
			if (ids[j] == l) {
				counts[j]++;
			}
		}
	}
	for (unsigned i = 0; i < n->n_shards; i++) {
		struct shard *s = n->shards[i];
		if (shard_role(s) != SHARD_LEADER || shard_changing(s)) {
			continue;
		}
		uint64_t to = pick_leader(n, s, counts, ids, k);
		unsigned to_count = 0;
		for (size_t j = 0; j < k; j++) {
			if (ids[j] == to) {
				to_count = counts[j];
			}
		}
		/* A data shard moves to a node leading two fewer; the meta
		 * shard to a node leading fewer data shards than we do. */
		if (to == 0 || counts[me] < to_count + (i == 0 ? 1 : 2)) {
			continue;
		}
		if (shard_transfer(s, to) == 0) {
			LOGI("shard %u: handing leadership to node %" PRIu64
			     " (it leads %u data shards, this node %u)",
			     i, to, to_count, counts[me]);
			n->members->last_balance_ms = now;
			return; /* one at a time */
		}
	}
}

void members_tick(struct node *n)
{
	if (n->members == NULL) {
		return;
	}
	if (shard_role(n->shards[0]) == SHARD_LEADER) {
		plan_placement(n);
		if (!shard_changing(n->shards[0])) {
			reconcile_meta(n);
		}
	}
	for (unsigned i = 1; i < n->n_shards; i++) {
		if (shard_role(n->shards[i]) != SHARD_LEADER) {
			continue;
		}
		if (!shard_changing(n->shards[i])) {
			reconcile_data_shard(n, i);
		}
		report_shard(n, i);
	}
	balance_leaders(n);
}

void members_node_applied(struct node *n, uint64_t id, bool removed)
{
	(void)n;
	if (removed) {
		LOGI("node %" PRIu64 " is recorded as removed", id);
	}
}

/* ---- admin requests ------------------------------------------------------ */

static void reply_body(struct conn *c, uint64_t id,
		       Rmq__Response__BodyCase body, void *msg)
{
	Rmq__Response resp = RMQ__RESPONSE__INIT;
	resp.id = id;
	resp.body_case = body;
	switch (body) {
	case RMQ__RESPONSE__BODY_JOIN:
		resp.join = msg;
		break;
	case RMQ__RESPONSE__BODY_NODE_LIST:
		resp.node_list = msg;
		break;
	case RMQ__RESPONSE__BODY_NODE_ADD:
		resp.node_add = msg;
		break;
	case RMQ__RESPONSE__BODY_NODE_REMOVE:
		resp.node_remove = msg;
		break;
	case RMQ__RESPONSE__BODY_SHARD_TRANSFER:
		resp.shard_transfer = msg;
		break;
	case RMQ__RESPONSE__BODY_SHARD_REPORT:
		resp.shard_report = msg;
		break;
	default:
		resp.shard_move = msg;
		break;
	}
	conn_send_response(c, &resp);
}

static void reply_ok(struct node *n, struct conn *c, uint64_t id,
		     Rmq__Request__BodyCase kind, uint64_t leader)
{
	Rmq__JoinResp j = RMQ__JOIN_RESP__INIT;
	Rmq__NodeAddResp a = RMQ__NODE_ADD_RESP__INIT;
	Rmq__NodeRemoveResp r = RMQ__NODE_REMOVE_RESP__INIT;
	Rmq__ShardTransferResp t = RMQ__SHARD_TRANSFER_RESP__INIT;
	Rmq__ShardReportResp sr = RMQ__SHARD_REPORT_RESP__INIT;
	Rmq__ShardMoveResp sm = RMQ__SHARD_MOVE_RESP__INIT;
	switch (kind) {
	case RMQ__REQUEST__BODY_JOIN:
		j.cluster_id = n->cluster_id;
		j.shards = n->cfg.shards;
		reply_body(c, id, RMQ__RESPONSE__BODY_JOIN, &j);
		break;
	case RMQ__REQUEST__BODY_NODE_ADD:
		reply_body(c, id, RMQ__RESPONSE__BODY_NODE_ADD, &a);
		break;
	case RMQ__REQUEST__BODY_NODE_REMOVE:
		reply_body(c, id, RMQ__RESPONSE__BODY_NODE_REMOVE, &r);
		break;
	case RMQ__REQUEST__BODY_SHARD_REPORT:
		reply_body(c, id, RMQ__RESPONSE__BODY_SHARD_REPORT, &sr);
		break;
	case RMQ__REQUEST__BODY_SHARD_MOVE:
		sm.done = false; /* accepted; the caller asks again */
		reply_body(c, id, RMQ__RESPONSE__BODY_SHARD_MOVE, &sm);
		break;
	default:
		t.leader = leader;
		reply_body(c, id, RMQ__RESPONSE__BODY_SHARD_TRANSFER, &t);
		break;
	}
}

/* NULL (the request answered with ENOMEM) if out of memory. */
static struct admin_req *admin_new(struct node *n, struct conn *c,
				   const Rmq__Request *req, uint64_t target,
				   unsigned shard)
{
	struct admin_req *a = calloc(1, sizeof *a);
	if (a == NULL) {
		conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
		return NULL;
	}
	a->node = n;
	a->conn = c;
	a->req_id = req->id;
	a->kind = req->body_case;
	a->target = target;
	a->shard = shard;
	conn_ref(c);
	return a;
}

static void admin_finish(struct admin_req *a, int status)
{
	if (conn_alive(a->conn)) {
		if (status == 0) {
			reply_ok(a->node, a->conn, a->req_id, a->kind,
				 shard_leader_id(a->node->shards[a->shard]));
		} else {
			conn_send_error(a->conn, a->req_id,
					status == RMQ_ETIMEDOUT ? RMQ_EUNAVAIL
								: status,
					NULL);
		}
	}
	conn_unref(a->conn);
	free(a);
}

static void admin_change_cb(void *data, int status)
{
	admin_finish(data, status);
}

static void admin_apply_cb(void *data, int status, const struct fsm_result *r)
{
	if (status == 0 &&
	    (r->skipped || r->cmd->n_ops < 1 || r->ops[0].status != 0)) {
		status = r->skipped ? RMQ_ELEADERLOST : r->ops[0].status;
	}
	admin_finish(data, status);
}

/* Start @a with @rv the result of the call that took it (0: its callback
 * will finish it); on error, answer now. */
static void admin_started(struct admin_req *a, int rv)
{
	if (rv != 0) {
		admin_finish(a, rv);
	}
}

static bool meta_leader_here(struct node *n, struct conn *c, uint64_t id)
{
	switch (shard_role(n->shards[0])) {
	case SHARD_LEADER:
		return true;
	case SHARD_LEADER_PENDING:
		conn_send_error(c, id, RMQ_EUNAVAIL,
				"meta leader is catching up, retry");
		return false;
	default: {
		Rmq__Response r = RMQ__RESPONSE__INIT;
		Rmq__Error e = RMQ__ERROR__INIT;
		uint64_t leader = shard_leader_id(n->shards[0]);
		e.code = RMQ__CODE__NOT_LEADER;
		e.message = "membership requests go to the meta shard's leader";
		e.leader_id = leader;
		e.leader_address =
			(char *)(leader ? node_client_address(n, leader) : "");
		r.id = id;
		r.error = &e;
		conn_send_response(c, &r);
		return false;
	}
	}
}

/* Whether the meta shard's configuration is changing (then answered). */
static bool meta_change_busy(struct node *n, struct conn *c, uint64_t id)
{
	if (!shard_changing(n->shards[0])) {
		return false;
	}
	conn_send_error(c, id, RMQ_EUNAVAIL,
			"another membership change is in progress, retry");
	return true;
}

static void handle_join(struct node *n, struct conn *c, const Rmq__Request *req)
{
	const Rmq__JoinReq *j = req->join;
	char msg[160];
	enum shard_member_role r;

	if (!meta_leader_here(n, c, req->id)) {
		return;
	}
	if (j->node_id == 0 || j->peer_address[0] == '\0' ||
	    j->client_address[0] == '\0' ||
	    strlen(j->peer_address) >= CONFIG_ADDR_LEN ||
	    strlen(j->client_address) >= CONFIG_ADDR_LEN ||
	    strlen(j->http_address) >= CONFIG_ADDR_LEN) {
		conn_send_error(c, req->id, RMQ_EINVAL,
				"join needs a node id and its addresses");
		return;
	}
	if (strcmp(j->cluster_name, n->cfg.cluster_name) != 0) {
		snprintf(msg, sizeof msg, "this is cluster %s, not %s",
			 n->cfg.cluster_name, j->cluster_name);
		conn_send_error(c, req->id, RMQ_EINVAL, msg);
		return;
	}
	if (meta_role(n, j->node_id, &r) || in_any_data_shard(n, j->node_id)) {
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " is still a member of the cluster: "
			 "remove it first (raftmq node remove %" PRIu64 ")",
			 j->node_id, j->node_id);
		conn_send_error(c, req->id, RMQ_EEXISTS, msg);
		return;
	}
	Rmqc__Op op = RMQC__OP__INIT;
	Rmqc__NodeOp no = RMQC__NODE_OP__INIT;
	no.id = j->node_id;
	no.peer_address = j->peer_address;
	no.client_address = j->client_address;
	no.http_address = j->http_address;
	op.kind_case = RMQC__OP__KIND_NODE;
	op.node = &no;
	struct admin_req *a = admin_new(n, c, req, j->node_id, 0);
	if (a == NULL) {
		return;
	}
	LOGI("node %" PRIu64 " (peer %s, client %s) registers as a spare",
	     j->node_id, j->peer_address, j->client_address);
	admin_started(a, propose_meta_op(n, &op, admin_apply_cb, a));
}

static void handle_node_list(struct node *n, struct conn *c, uint64_t id)
{
	uint64_t ids[NODE_MAX_PEERS + MAX_CONF];
	size_t k = 0;
	struct shard_member m[MAX_CONF];

	if (!meta_leader_here(n, c, id)) {
		return;
	}
	/* Everyone in a configuration (ours, or as reported), then
	 * registered spares. */
	for (unsigned i = 0; i < n->n_shards; i++) {
		struct store_shard r;
		size_t nm = shard_members(n->shards[i], m, MAX_CONF);
		for (size_t j = 0; j < nm && j < MAX_CONF; j++) {
			if (!has_id(ids, k, m[j].id) &&
			    k < sizeof ids / sizeof ids[0]) {
				ids[k++] = m[j].id;
			}
		}
		if (i == 0 || !shard_record(n, i, &r)) {
			continue;
		}
		for (size_t j = 0; j < r.n_voters + r.n_others; j++) {
			uint64_t x = j < r.n_voters ? r.voters[j]
						    : r.others[j - r.n_voters];
			if (!has_id(ids, k, x) &&
			    k < sizeof ids / sizeof ids[0]) {
				ids[k++] = x;
			}
		}
	}
	for (size_t i = 0; i < n->n_peers; i++) {
		struct peer_info *p = &n->peers[i];
		if (!p->registered || p->removed ||
		    p->client_address[0] == '\0') {
			continue;
		}
		if (!has_id(ids, k, p->id) && k < sizeof ids / sizeof ids[0]) {
			ids[k++] = p->id;
		}
	}
	/* Sort by id. */
	for (size_t i = 1; i < k; i++) {
		for (size_t j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
			uint64_t t = ids[j];
			ids[j] = ids[j - 1];
			ids[j - 1] = t;
		}
	}
	Rmq__MemberInfo *mi = calloc(k + 1, sizeof *mi);
	Rmq__MemberInfo **mip = calloc(k + 1, sizeof *mip);
	uint32_t *shards = calloc((k + 1) * n->n_shards, sizeof *shards);
	if (mi == NULL || mip == NULL || shards == NULL) {
		conn_send_error(c, id, RMQ_ENOMEM, NULL);
		goto out;
	}
	for (size_t i = 0; i < k; i++) {
		struct peer_info *p = node_peer(n, ids[i], false);
		rmq__member_info__init(&mi[i]);
		mi[i].id = ids[i];
		mi[i].client_address = p != NULL ? p->client_address : "";
		mi[i].peer_address = p != NULL ? p->peer_address : "";
		mi[i].role = (char *)node_role_name(n, ids[i]);
		mi[i].shards = &shards[i * n->n_shards];
		for (unsigned s = 0; s < n->n_shards; s++) {
			struct shard_view v;
			members_shard_view(n, s, &v);
			if (has_id(v.voters, v.n_voters, ids[i])) {
				mi[i].shards[mi[i].n_shards++] = s;
			}
		}
		if (mi[i].peer_address[0] == '\0') {
			/* Not registered (yet): the address raft knows. */
			for (unsigned s = 0; s < n->n_shards; s++) {
				size_t nm = shard_members(n->shards[s], m,
							  MAX_CONF);
				for (size_t j = 0; j < nm && j < MAX_CONF;
				     j++) {
					if (m[j].id == ids[i] && p != NULL) {
						snprintf(p->peer_address,
							 sizeof p->peer_address,
							 "%s", m[j].address);
					}
				}
			}
		}
		mip[i] = &mi[i];
	}
	Rmq__NodeListResp l = RMQ__NODE_LIST_RESP__INIT;
	l.nodes = mip;
	l.n_nodes = k;
	reply_body(c, id, RMQ__RESPONSE__BODY_NODE_LIST, &l);
out:
	free(mi);
	free(mip);
	free(shards);
}

static void handle_node_add(struct node *n, struct conn *c,
			    const Rmq__Request *req)
{
	uint64_t id = req->node_add->node_id;
	enum shard_member_role r;
	char msg[200];

	if (!meta_leader_here(n, c, req->id)) {
		return;
	}
	if (meta_role(n, id, &r)) {
		if (r == SHARD_MEMBER_STANDBY) {
			snprintf(msg, sizeof msg,
				 "node %" PRIu64 " is being removed; wait for "
				 "that, wipe its data dir and join it again",
				 id);
			conn_send_error(c, req->id, RMQ_EINVAL, msg);
		} else if (strcmp(node_role_name(n, id), "voter") == 0) {
			snprintf(msg, sizeof msg,
				 "node %" PRIu64 " is already a member", id);
			conn_send_error(c, req->id, RMQ_EEXISTS, msg);
		} else {
			reply_ok(n, c, req->id, req->body_case,
				 0); /* joining */
		}
		return;
	}
	if (in_any_data_shard(n, id)) {
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " is leaving; wait until "
			 "`raftmq node remove %" PRIu64 " --wait` returns",
			 id, id);
		conn_send_error(c, req->id, RMQ_EINVAL, msg);
		return;
	}
	struct peer_info *p = node_peer(n, id, false);
	if (p == NULL || !p->registered || p->removed ||
	    p->peer_address[0] == '\0') {
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " has not registered: start it "
			 "with an empty data dir and --join",
			 id);
		conn_send_error(c, req->id, RMQ_ENOTFOUND, msg);
		return;
	}
	if (meta_change_busy(n, c, req->id)) {
		return;
	}
	struct admin_req *a = admin_new(n, c, req, id, 0);
	if (a == NULL) {
		return;
	}
	LOGI("shard 0: adding node %" PRIu64 " (%s)", id, p->peer_address);
	admin_started(a, shard_add(n->shards[0], id, p->peer_address,
				   admin_change_cb, a));
}

static void handle_node_remove(struct node *n, struct conn *c,
			       const Rmq__Request *req)
{
	uint64_t id = req->node_remove->node_id;
	struct shard_member m[MAX_CONF];
	enum shard_member_role r;
	char msg[200];

	if (!meta_leader_here(n, c, req->id)) {
		return;
	}
	if (!meta_role(n, id, &r)) {
		struct peer_info *p = node_peer(n, id, false);
		bool spare = p != NULL && p->registered && !p->removed;
		if (!spare && !in_any_data_shard(n, id)) {
			snprintf(msg, sizeof msg,
				 "node %" PRIu64 " is not in the cluster", id);
			conn_send_error(c, req->id, RMQ_ENOTFOUND, msg);
			return;
		}
		if (p != NULL && p->removed) {
			reply_ok(n, c, req->id, req->body_case, 0);
			return; /* data shard leaders finish it */
		}
		/* A spare, or the last steps of a removal: tombstone. */
		struct admin_req *a = admin_new(n, c, req, id, 0);
		if (a == NULL) {
			return;
		}
		admin_started(a, propose_tombstone(n, id, admin_apply_cb, a));
		return;
	}
	if (r == SHARD_MEMBER_STANDBY) {
		reply_ok(n, c, req->id, req->body_case, 0); /* under way */
		return;
	}
	size_t nm = shard_members(n->shards[0], m, MAX_CONF);
	size_t voters_left = 0;
	for (size_t i = 0; i < nm && i < MAX_CONF; i++) {
		if (m[i].id != id && m[i].role == SHARD_MEMBER_VOTER) {
			voters_left++;
		}
	}
	if (voters_left == 0) {
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " is the last voter: add another "
			 "node first",
			 id);
		conn_send_error(c, req->id, RMQ_EINVAL, msg);
		return;
	}
	if (id == n->cfg.id) {
		/* Not the leader itself: hand the meta shard over first. */
		uint64_t to = pick_leader(n, n->shards[0], NULL, NULL, 0);
		shard_transfer(n->shards[0], to);
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " leads the meta shard: handing it "
			 "to node %" PRIu64 ", retry",
			 id, to);
		conn_send_error(c, req->id, RMQ_EUNAVAIL, msg);
		return;
	}
	if (meta_change_busy(n, c, req->id)) {
		return;
	}
	struct admin_req *a = admin_new(n, c, req, id, 0);
	if (a == NULL) {
		return;
	}
	LOGI("shard 0: node %" PRIu64 " is leaving (meta standby)", id);
	admin_started(a, shard_assign(n->shards[0], id, SHARD_MEMBER_STANDBY,
				      admin_change_cb, a));
}

static void admin_transfer_cb(void *data, int status)
{
	admin_finish(data, status);
}

static void handle_shard_transfer(struct node *n, struct conn *c,
				  const Rmq__Request *req)
{
	const Rmq__ShardTransferReq *t = req->shard_transfer;
	enum shard_member_role r;
	char msg[160];

	if (t->shard >= n->n_shards) {
		snprintf(msg, sizeof msg, "no shard %u (shards 0..%u)",
			 t->shard, n->n_shards - 1);
		conn_send_error(c, req->id, RMQ_EINVAL, msg);
		return;
	}
	struct shard *s = n->shards[t->shard];
	if (shard_role(s) != SHARD_LEADER) {
		Rmq__Response resp = RMQ__RESPONSE__INIT;
		Rmq__Error e = RMQ__ERROR__INIT;
		uint64_t leader = shard_leader_id(s);
		e.code = shard_role(s) == SHARD_LEADER_PENDING
				 ? RMQ__CODE__UNAVAILABLE
				 : RMQ__CODE__NOT_LEADER;
		e.message = "not the shard's leader";
		e.leader_id = leader;
		e.leader_address =
			(char *)(leader ? node_client_address(n, leader) : "");
		resp.id = req->id;
		resp.error = &e;
		conn_send_response(c, &resp);
		return;
	}
	if (t->to == n->cfg.id) {
		reply_ok(n, c, req->id, req->body_case, n->cfg.id);
		return;
	}
	if (!shard_member_role(s, t->to, &r) || r != SHARD_MEMBER_VOTER ||
	    !is_staying_member(n, t->to)) {
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " is not a voter of shard %u", t->to,
			 t->shard);
		conn_send_error(c, req->id, RMQ_EINVAL, msg);
		return;
	}
	struct admin_req *a = admin_new(n, c, req, t->to, t->shard);
	if (a == NULL) {
		return;
	}
	LOGI("shard %u: handing leadership to node %" PRIu64 " (requested)",
	     t->shard, t->to);
	admin_started(a, shard_transfer_notify(s, t->to, admin_transfer_cb, a));
}

static void handle_shard_report(struct node *n, struct conn *c,
				const Rmq__Request *req)
{
	const Rmq__ShardReportReq *q = req->shard_report;
	struct report rep;

	if (!meta_leader_here(n, c, req->id)) {
		return;
	}
	if (q->shard == 0 || q->shard >= n->n_shards || q->n_voters > MAX_IDS ||
	    q->n_others > MAX_IDS) {
		conn_send_error(c, req->id, RMQ_EINVAL, "bad shard report");
		return;
	}
	memset(&rep, 0, sizeof rep);
	rep.term = q->term;
	rep.leader = q->leader;
	rep.n_voters = q->n_voters;
	for (size_t j = 0; j < q->n_voters; j++) {
		rep.voters[j] = q->voters[j];
	}
	rep.n_others = q->n_others;
	for (size_t j = 0; j < q->n_others; j++) {
		rep.others[j] = q->others[j];
	}
	struct admin_req *a = admin_new(n, c, req, 0, 0);
	if (a == NULL) {
		return;
	}
	admin_started(a, propose_state(n, q->shard, &rep, admin_apply_cb, a));
}

static void move_applied_cb(void *data, int status, const struct fsm_result *r)
{
	struct admin_req *a = data;
	if (a->node->members != NULL) {
		a->node->members->place_inflight = false;
	}
	admin_apply_cb(a, status, r);
}

static void handle_shard_move(struct node *n, struct conn *c,
			      const Rmq__Request *req)
{
	const Rmq__ShardMoveReq *m = req->shard_move;
	uint64_t target[MAX_IDS], q[MAX_IDS];
	struct store_shard rec;
	enum shard_member_role r;
	char msg[200];
	size_t k;

	if (m->shard == 0 || m->shard >= n->n_shards) {
		snprintf(msg, sizeof msg,
			 "no data shard %u (data shards 1..%u; the meta shard "
			 "is on every member)",
			 m->shard, n->n_shards - 1);
		conn_send_error(c, req->id, RMQ_EINVAL, msg);
		return;
	}
	if (!meta_leader_here(n, c, req->id)) {
		return;
	}
	shard_record(n, m->shard, &rec);
	k = record_target(n, &rec, target);
	if (has_id(target, k, m->to) && !has_id(target, k, m->from)) {
		/* Asked before (or --wait asking again): say where it is. */
		Rmq__ShardMoveResp sm = RMQ__SHARD_MOVE_RESP__INIT;
		sm.done = record_settled(n, &rec);
		reply_body(c, req->id, RMQ__RESPONSE__BODY_SHARD_MOVE, &sm);
		return;
	}
	if (!has_id(target, k, m->from)) {
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " holds no replica of shard %u",
			 m->from, m->shard);
		conn_send_error(c, req->id, RMQ_EINVAL, msg);
		return;
	}
	if (has_id(target, k, m->to)) {
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " already holds a replica of shard %u",
			 m->to, m->shard);
		conn_send_error(c, req->id, RMQ_EEXISTS, msg);
		return;
	}
	if (!meta_role(n, m->to, &r) || r != SHARD_MEMBER_VOTER) {
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " is not a member (see raftmq node "
			 "list; add it with raftmq node add)",
			 m->to);
		conn_send_error(c, req->id, RMQ_EINVAL, msg);
		return;
	}
	if (m->to != n->cfg.id && !shard_peer_recent(n->shards[0], m->to)) {
		snprintf(msg, sizeof msg,
			 "node %" PRIu64 " has not been heard from lately",
			 m->to);
		conn_send_error(c, req->id, RMQ_EUNAVAIL, msg);
		return;
	}
	if (n->members->place_inflight) {
		conn_send_error(c, req->id, RMQ_EUNAVAIL,
				"another placement change is in progress, "
				"retry");
		return;
	}
	for (size_t j = 0; j < k; j++) {
		q[j] = target[j] == m->from ? m->to : target[j];
	}
	struct admin_req *a = admin_new(n, c, req, m->to, 0);
	if (a == NULL) {
		return;
	}
	LOGI("shard %u: moving a replica from node %" PRIu64 " to node %" PRIu64
	     " (requested)",
	     m->shard, m->from, m->to);
	n->members->place_inflight = true;
	if (propose_place(n, m->shard, q, k, move_applied_cb, a) != 0) {
		n->members->place_inflight = false;
		admin_finish(a, RMQ_EUNAVAIL);
	}
}

bool members_request(struct node *n, struct conn *c, const Rmq__Request *req)
{
	switch (req->body_case) {
	case RMQ__REQUEST__BODY_JOIN:
		handle_join(n, c, req);
		return true;
	case RMQ__REQUEST__BODY_NODE_LIST:
		handle_node_list(n, c, req->id);
		return true;
	case RMQ__REQUEST__BODY_NODE_ADD:
		handle_node_add(n, c, req);
		return true;
	case RMQ__REQUEST__BODY_NODE_REMOVE:
		handle_node_remove(n, c, req);
		return true;
	case RMQ__REQUEST__BODY_SHARD_TRANSFER:
		handle_shard_transfer(n, c, req);
		return true;
	case RMQ__REQUEST__BODY_SHARD_MOVE:
		handle_shard_move(n, c, req);
		return true;
	case RMQ__REQUEST__BODY_SHARD_REPORT:
		handle_shard_report(n, c, req);
		return true;
	default:
		return false;
	}
}
