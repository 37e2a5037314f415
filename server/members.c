/* members: cluster membership, shard replicas and leader balance.
 *
 * The members of the cluster are the servers of the meta shard's Raft
 * configuration, and every member replicates every shard. The state of a
 * node is read from the Raft configurations themselves, so nothing here
 * needs a table of its own and every step can be retried by anyone:
 *
 *   meta config   data configs        shown as
 *   absent        absent              spare    (registered with --join)
 *   SPARE         any                 standby  (joining: catching up)
 *   VOTER         not voter in all    standby  (joining)
 *   VOTER         voter in all        voter
 *   STANDBY       any                 leaving  (node remove)
 *   absent        present somewhere   leaving  (last steps of a removal)
 *
 * `node add N` (meta leader): raft_add(N) to the meta shard (a spare), then
 * the meta leader promotes it (raft catches it up first). Every data
 * shard's leader, on its tick, moves its own configuration towards the
 * meta shard's: it adds every meta member missing from it, promotes it to
 * voter, and only then removes leaving nodes (add first, then remove, so
 * the replication factor does not drop during a replacement). One change
 * at a time per shard.
 *
 * `node remove N` (meta leader): N becomes a STANDBY of the meta shard
 * (it still gets the meta log, so a live N learns it is leaving and hands
 * its leaderships over). Data shard leaders remove it. Once the meta
 * leader's replicas of every data shard no longer list N, it writes N's
 * tombstone (a NodeOp without addresses) and removes N from the meta
 * shard. A data leader also removes a node that is in its configuration,
 * absent from the meta shard and tombstoned (the meta step ran first after
 * a lost data change). A dead node is removed the same way: only the
 * remaining voters take part.
 *
 * Leaders are spread by count of data shards led: the leader of a data
 * shard that leads at least two data shards more than another member (a
 * voter of the shard, heard from and caught up) hands that shard to it;
 * the meta shard's leader hands the meta shard to a member leading fewer
 * data shards than itself. One transfer per node every two seconds. A restarted node thereby gets its share back without a command,
 * and the member set may change under it.
 *
 * canonical/raft 0.15 caveats: a server demoted and promoted again may
 * never catch up, so no member is ever demoted and re-promoted here (a
 * leaving node cannot be added back: it must be removed, wiped and joined
 * again); transfers skip the pre-vote (a TimeoutNow starts a real
 * election), which the cluster tests exercise.
 *
 * Threads: the node's loop thread. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server.h"

#define MAX_CONF 64
#define BALANCE_EVERY_MS 2000
#define BALANCE_AFTER_START_MS 5000

struct members {
	uint64_t last_balance_ms;
	uint64_t last_log_ms[NODE_MAX_SHARDS];
	bool tombstone_inflight;
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

int members_init(struct node *n)
{
	n->members = calloc(1, sizeof *n->members);
	return n->members != NULL ? 0 : RMQ_ENOMEM;
}

void members_close(struct node *n)
{
	free(n->members);
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

/* Whether @id should leave the shards: a STANDBY of the meta shard, or
 * absent from it and tombstoned. */
static bool is_leaving(struct node *n, uint64_t id)
{
	enum shard_member_role r;
	if (meta_role(n, id, &r)) {
		return r == SHARD_MEMBER_STANDBY;
	}
	return is_tombstoned(n, id);
}

/* A meta member that stays (voter, or spare being promoted). */
static bool is_staying_member(struct node *n, uint64_t id)
{
	enum shard_member_role r;
	return meta_role(n, id, &r) && r != SHARD_MEMBER_STANDBY;
}

static bool in_any_data_shard(struct node *n, uint64_t id)
{
	enum shard_member_role r;
	for (unsigned i = 1; i < n->n_shards; i++) {
		if (shard_member_role(n->shards[i], id, &r)) {
			return true;
		}
	}
	return false;
}

static const char *node_role_name(struct node *n, uint64_t id)
{
	enum shard_member_role r, dr;
	unsigned voter_in = 0;
	for (unsigned i = 1; i < n->n_shards; i++) {
		if (shard_member_role(n->shards[i], id, &dr) &&
		    dr == SHARD_MEMBER_VOTER) {
			voter_in++;
		}
	}
	if (!meta_role(n, id, &r)) {
		return in_any_data_shard(n, id) ? "leaving" : "spare";
	}
	switch (r) {
	case SHARD_MEMBER_STANDBY:
		return "leaving";
	case SHARD_MEMBER_SPARE:
		return "standby";
	default:
		return voter_in + 1 == n->n_shards ? "voter" : "standby";
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

/* Move data shard @i's configuration one step towards the meta shard's. */
static void reconcile_data_shard(struct node *n, unsigned i)
{
	struct shard *s = n->shards[i];
	struct shard_member meta[MAX_CONF], conf[MAX_CONF];
	size_t nm = shard_members(n->shards[0], meta, MAX_CONF);
	size_t nc = shard_members(s, conf, MAX_CONF);
	enum shard_member_role r;
	struct change_note *note;
	int rv;

	if (nm == 0 || nm > MAX_CONF || nc > MAX_CONF) {
		return;
	}
	/* Add first... */
	for (size_t k = 0; k < nm; k++) {
		if (meta[k].role == SHARD_MEMBER_STANDBY) {
			continue;
		}
		if (!shard_member_role(s, meta[k].id, &r)) {
			note = note_new(n, i, "add", meta[k].id, "");
			rv = note != NULL
				     ? shard_add(s, meta[k].id, meta[k].address,
						 change_done_cb, note)
				     : RMQ_ENOMEM;
			if (rv != 0) {
				free(note);
				note_refused(n, i, "add", meta[k].id, rv);
			} else {
				LOGI("shard %u: adding node %" PRIu64 " (%s)",
				     i, meta[k].id, meta[k].address);
			}
			return;
		}
		if (r != SHARD_MEMBER_VOTER) {
			note = note_new(n, i, "promote", meta[k].id,
					" to voter");
			rv = note != NULL ? shard_assign(s, meta[k].id,
							 SHARD_MEMBER_VOTER,
							 change_done_cb, note)
					  : RMQ_ENOMEM;
			if (rv != 0) {
				free(note);
				note_refused(n, i, "promote", meta[k].id, rv);
			} else {
				LOGI("shard %u: catching node %" PRIu64
				     " up, then promoting it to voter",
				     i, meta[k].id);
			}
			return;
		}
	}
	/* ...then remove. */
	for (size_t k = 0; k < nc; k++) {
		if (!is_leaving(n, conf[k].id)) {
			continue;
		}
		if (conf[k].id == n->cfg.id) {
			uint64_t to = pick_leader(n, s, NULL, NULL, 0);
			if (shard_transfer(s, to) == 0) {
				LOGI("shard %u: leaving: handing leadership to "
				     "node %" PRIu64,
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
	Rmqc__Command cmd = RMQC__COMMAND__INIT;
	Rmqc__Op op = RMQC__OP__INIT;
	Rmqc__Op *opp = &op;
	Rmqc__NodeOp no = RMQC__NODE_OP__INIT;
	no.id = id;
	op.kind_case = RMQC__OP__KIND_NODE;
	op.node = &no;
	cmd.ops = &opp;
	cmd.n_ops = 1;
	return shard_propose(n->shards[0], &cmd, cb, data);
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
		uint64_t l = shard_leader_id(n->shards[i]);
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
	if (shard_role(n->shards[0]) == SHARD_LEADER &&
	    !shard_changing(n->shards[0])) {
		reconcile_meta(n);
	}
	for (unsigned i = 1; i < n->n_shards; i++) {
		if (shard_role(n->shards[i]) == SHARD_LEADER &&
		    !shard_changing(n->shards[i])) {
			reconcile_data_shard(n, i);
		}
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
	default:
		t.leader = leader;
		reply_body(c, id, RMQ__RESPONSE__BODY_SHARD_TRANSFER, &t);
		break;
	}
}

static struct admin_req *admin_new(struct node *n, struct conn *c,
				   const Rmq__Request *req, uint64_t target,
				   unsigned shard)
{
	struct admin_req *a = calloc(1, sizeof *a);
	if (a == NULL) {
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
	Rmqc__Command cmd = RMQC__COMMAND__INIT;
	Rmqc__Op op = RMQC__OP__INIT;
	Rmqc__Op *opp = &op;
	Rmqc__NodeOp no = RMQC__NODE_OP__INIT;
	no.id = j->node_id;
	no.peer_address = j->peer_address;
	no.client_address = j->client_address;
	no.http_address = j->http_address;
	op.kind_case = RMQC__OP__KIND_NODE;
	op.node = &no;
	cmd.ops = &opp;
	cmd.n_ops = 1;
	struct admin_req *a = admin_new(n, c, req, j->node_id, 0);
	if (a == NULL) {
		conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
		return;
	}
	LOGI("node %" PRIu64 " (peer %s, client %s) registers as a spare",
	     j->node_id, j->peer_address, j->client_address);
	admin_started(a, shard_propose(n->shards[0], &cmd, admin_apply_cb, a));
}

static void handle_node_list(struct node *n, struct conn *c, uint64_t id)
{
	uint64_t ids[NODE_MAX_PEERS + MAX_CONF];
	size_t k = 0;
	struct shard_member m[MAX_CONF];

	if (!meta_leader_here(n, c, id)) {
		return;
	}
	/* Everyone in a configuration, then registered spares. */
	for (unsigned i = 0; i < n->n_shards; i++) {
		size_t nm = shard_members(n->shards[i], m, MAX_CONF);
		for (size_t j = 0; j < nm && j < MAX_CONF; j++) {
			bool seen = false;
			for (size_t x = 0; x < k; x++) {
				seen = seen || ids[x] == m[j].id;
			}
			if (!seen && k < sizeof ids / sizeof ids[0]) {
				ids[k++] = m[j].id;
			}
		}
	}
	for (size_t i = 0; i < n->n_peers; i++) {
		struct peer_info *p = &n->peers[i];
		bool seen = false;
		if (!p->registered || p->removed ||
		    p->client_address[0] == '\0') {
			continue;
		}
		for (size_t x = 0; x < k; x++) {
			seen = seen || ids[x] == p->id;
		}
		if (!seen && k < sizeof ids / sizeof ids[0]) {
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
			enum shard_member_role r;
			if (shard_member_role(n->shards[s], ids[i], &r) &&
			    r == SHARD_MEMBER_VOTER) {
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
	if (shard_changing(n->shards[0])) {
		conn_send_error(c, req->id, RMQ_EUNAVAIL,
				"another membership change is in progress, "
				"retry");
		return;
	}
	struct admin_req *a = admin_new(n, c, req, id, 0);
	if (a == NULL) {
		conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
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
			conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
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
	if (shard_changing(n->shards[0])) {
		conn_send_error(c, req->id, RMQ_EUNAVAIL,
				"another membership change is in progress, "
				"retry");
		return;
	}
	struct admin_req *a = admin_new(n, c, req, id, 0);
	if (a == NULL) {
		conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
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
		conn_send_error(c, req->id, RMQ_ENOMEM, NULL);
		return;
	}
	LOGI("shard %u: handing leadership to node %" PRIu64 " (requested)",
	     t->shard, t->to);
	admin_started(a, shard_transfer_notify(s, t->to, admin_transfer_cb, a));
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
		conn_send_error(
			c, req->id, RMQ_EINVAL,
			"shard move is not supported: every member "
			"replicates every shard (the replication factor is "
			"the number of members), so there is no other node "
			"to move a replica to; add or remove nodes instead");
		return true;
	default:
		return false;
	}
}
