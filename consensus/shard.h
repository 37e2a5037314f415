/* shard: one Raft group = one struct raft on raft_uv + its FSM + its store.
 *
 * A node opens one shard per group it replicates (shard 0 is the meta
 * shard, 1..N hold queues). All shards share the node's peer_net.
 * consensus/ is the only place that includes <raft.h>; callers see RMQ_E*
 * codes.
 *
 * Lifecycle: shard_open() → [shard_bootstrap() on a fresh node] →
 * shard_start() → shard_propose()... → shard_close(cb).
 *
 * Leadership: raft 0.15 has no state-change callback, so the owner calls
 * shard_poll() regularly (every loop iteration is fine; it is cheap), which
 * fires role_cb when the role or term changed. A new leader first commits a
 * barrier; shard_ready() turns true when every entry of earlier terms is
 * applied, and role_cb fires again then.
 *
 * Threads: the loop thread only. */
#ifndef RMQ_SHARD_H
#define RMQ_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "catchup.h"
#include "fsm.h"
#include "store.h"
#include "transport.h"

struct shard;

enum shard_role {
	SHARD_FOLLOWER = 0,   /* also candidate / unavailable */
	SHARD_LEADER_PENDING, /* leader, barrier not applied yet */
	SHARD_LEADER,         /* leader, state up to date: serve */
};

struct shard_config {
	uint32_t id;
	uint64_t node_id;
	const char *peer_address;
	const char *dir; /* holds raft/ and lmdb/; created if missing */
	unsigned election_timeout_ms;
	unsigned heartbeat_timeout_ms;
	uint64_t cluster_id; /* written into snapshot descriptors */
	/* Raft snapshots every snapshot_threshold entries and keeps
	 * snapshot_trailing entries before it in memory; with
	 * log_cache_bytes > 0 both shrink so that about log_cache_bytes of
	 * entries stay in memory (see shard.c, size_log). */
	unsigned snapshot_threshold;
	unsigned snapshot_trailing;
	size_t log_cache_bytes;
	size_t map_size;
	size_t segment_size; /* raft log segment; must hold the largest entry */
};

struct shard_hooks {
	void *data;
	/* Every applied entry, on every replica. */
	void (*applied)(void *data, struct shard *s,
			const struct fsm_result *r);
	/* Role or term changed. */
	void (*role)(void *data, struct shard *s, enum shard_role role,
		     uint64_t term);
	/* A snapshot from the leader replaced the shard's state. */
	void (*restored)(void *data, struct shard *s);
	/* Applying failed for good on this node (it is logged): the owner
	 * should stop the node so that others take over. Called from inside
	 * raft: defer the actual work. */
	void (*fatal)(void *data, struct shard *s);
	/* Optional: how long the FSM took to apply one entry (every
	 * replica), in nanoseconds. */
	void (*apply_time)(void *data, struct shard *s, uint64_t ns);
};

/* The election settings raftmq runs raft with (shard_open applies them;
 * tests apply them to raft_fixture servers). */
void shard_tune_raft(struct raft *r, const struct shard_config *c);

int shard_open(uv_loop_t *loop, struct peer_net *net,
	       const struct shard_config *c, const struct shard_hooks *h,
	       struct shard **out);

/* Bootstrap a fresh shard with members @ids / @addrs (voters). Returns 0,
 * or RMQ_EEXISTS if the shard already has state (then nothing changes). */
int shard_bootstrap(struct shard *s, const uint64_t *ids,
		    const char *const *addrs, size_t n);

int shard_start(struct shard *s);

typedef void (*shard_close_cb)(struct shard *s, void *data);
/* Close raft, then the store; @s is freed before @cb fires once, with
 * NULL as its first argument. */
void shard_close(struct shard *s, shard_close_cb cb, void *data);

/* Propose @cmd (borrowed). On 0, @cb fires exactly once: status 0 with the
 * FSM result once the entry is applied locally (result valid during the
 * call only), RMQ_ELEADERLOST (outcome unknown: it may still commit), or
 * another error (not committed). On error, @cb is never called. */
typedef void (*shard_apply_cb)(void *data, int status,
			       const struct fsm_result *r);
int shard_propose(struct shard *s, const Rmqc__Command *cmd, shard_apply_cb cb,
		  void *data);

/* Ask raft to hand leadership to @node_id (0: the most up to date). */
int shard_transfer(struct shard *s, uint64_t node_id);
/* The same, and @cb fires once when it is over (on 0 only): status 0 if
 * @node_id (non-zero) now leads as far as we know, RMQ_ETIMEDOUT if not
 * after an election timeout, RMQ_ESHUTDOWN on close. */
typedef void (*shard_transfer_cb)(void *data, int status);
int shard_transfer_notify(struct shard *s, uint64_t node_id,
			  shard_transfer_cb cb, void *data);

/* ---- Membership (leader only) ----------------------------------------
 *
 * One configuration change at a time per shard: while one is in flight
 * (shard_changing()), or raft still has an uncommitted one, the calls
 * return RMQ_EUNAVAIL. On 0, @cb (may be NULL) fires exactly once with 0
 * once the new configuration is committed, or with an error (RMQ_E*:
 * leadership lost, the new voter did not catch up in time, shutdown); it
 * may fire during shard_close(). On error @cb is never called.
 *
 * canonical/raft 0.15: shard_add() adds @node_id as a spare (it gets no
 * entries); shard_assign(SHARD_MEMBER_VOTER) first replicates the log to it
 * in catch-up rounds and appends the configuration change only once a
 * round is shorter than an election timeout. Demoting a voter and
 * promoting it again later is avoided by the callers (0.15 may never
 * finish catching such a server up). */
enum shard_member_role {
	SHARD_MEMBER_STANDBY = 0, /* replicates the log, does not vote */
	SHARD_MEMBER_VOTER = 1,
	SHARD_MEMBER_SPARE = 2, /* neither */
};

struct shard_member {
	uint64_t id;
	enum shard_member_role role;
	char address[64];
};

typedef void (*shard_change_cb)(void *data, int status);
int shard_add(struct shard *s, uint64_t node_id, const char *peer_address,
	      shard_change_cb cb, void *data);
int shard_assign(struct shard *s, uint64_t node_id, enum shard_member_role role,
		 shard_change_cb cb, void *data);
int shard_remove(struct shard *s, uint64_t node_id, shard_change_cb cb,
		 void *data);
bool shard_changing(const struct shard *s);
/* The current configuration (the latest appended, committed or not);
 * returns how many servers it has (may exceed @max: only @max written). */
size_t shard_members(struct shard *s, struct shard_member *out, size_t max);
/* The role of @node_id in the current configuration; false if absent. */
bool shard_member_role(struct shard *s, uint64_t node_id,
		       enum shard_member_role *role);

/* Detect role changes (see above) and re-size raft's in-memory log. */
void shard_poll(struct shard *s);

uint32_t shard_id(const struct shard *s);
struct store *shard_store(struct shard *s);
enum shard_role shard_role(const struct shard *s);
uint64_t shard_leader_id(struct shard *s); /* 0 if unknown */
uint64_t shard_term(struct shard *s);
uint64_t shard_commit_index(struct shard *s);
uint64_t shard_applied_index(struct shard *s);
/* How far the shard is known to have committed: our commit index on the
 * leader; on a follower the highest commit index a leader announced to us
 * (raft's own commit index of a follower stops at its last stored entry,
 * so it trails the leader's while the follower catches up). The gap to
 * shard_applied_index() is how far behind this replica is. */
uint64_t shard_leader_commit_index(struct shard *s);
/* Voter ids of the current configuration; returns how many (<= max). */
size_t shard_replicas(struct shard *s, uint64_t *ids, size_t max);
/* Whether, as leader, we heard from @node_id within an election timeout. */
bool shard_peer_recent(struct shard *s, uint64_t node_id);
/* Whether @node_id's log matches ours up to our last index (leader only). */
bool shard_peer_caught_up(struct shard *s, uint64_t node_id);

/* Counters of the snapshot machinery, for tests and metrics. */
struct shard_stats {
	uint64_t snapshots; /* descriptors taken */
	uint64_t restores;  /* restores that found the state in the store */
	uint64_t fetches;   /* states fetched from a peer and swapped in */
	uint64_t served;    /* states served to peers */
	unsigned snapshot_threshold; /* as sized from log_cache_bytes */
	unsigned snapshot_trailing;
};
void shard_stats(struct shard *s, struct shard_stats *out);

#endif /* RMQ_SHARD_H */
