/* fsm: the replicated state machine of a shard.
 *
 * Applies one Command (command.proto) per raft entry to the shard's store in
 * a single LMDB write transaction that also records the raft index, so that
 * re-applying an entry after a restart is a no-op. Business outcomes (no
 * such queue, queue full, duplicate publish) go into the result; a non-zero
 * return is reserved for fatal local faults (store I/O failure, map full on
 * a replica), after which raft stops applying on this node.
 *
 * The FSM never reads a clock or a random number: every replica computes
 * the same state from the same log.
 *
 * Threads: loop thread only. */
#ifndef RMQ_FSM_H
#define RMQ_FSM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <raft.h>

#include "codec.h"
#include "store.h"

/* Outcome of one Op of the applied Command. */
struct fsm_op_result {
	int status;                       /* 0 or RMQ_E* business error */
	struct store_publish_result *pub; /* PublishOp: one per message */
	size_t n_pub;
	struct store_placement placement; /* DeclareOp */
	bool created;                     /* CreateQueueOp, DeclareOp */
};

/* Result of one applied entry; valid only until the next apply. */
struct fsm_result {
	bool skipped; /* index already applied before: nothing changed */
	uint64_t index;
	const Rmqc__Command *cmd;  /* the decoded command */
	struct fsm_op_result *ops; /* cmd->n_ops entries */
};

struct fsm;

/* Called after each entry is applied (on every replica), before raft's
 * apply callback on the leader. */
typedef void (*fsm_applied_cb)(void *data, const struct fsm_result *r);

int fsm_init(struct fsm **out, struct store *store, fsm_applied_cb cb,
	     void *data);
void fsm_close(struct fsm *f);

/* Apply @len bytes of a Command at raft @index. On 0, *result is valid
 * until the next call. */
int fsm_apply(struct fsm *f, uint64_t index, const uint8_t *buf, size_t len,
	      const struct fsm_result **result);

/* Encode @cmd into a raft_malloc'd entry buffer for raft_apply(): a small
 * header with the length, the packed command, padding to 8 bytes. */
int fsm_encode(const Rmqc__Command *cmd, void **out, size_t *out_len);

/* What a snapshot of a shard is: a small descriptor of the state in the
 * shard's store, not the state itself (see fsm.c). */
struct fsm_descriptor {
	uint32_t shard_id;
	uint64_t index;      /* applied index of the store it refers to */
	uint64_t node_id;    /* node whose store the snapshot was taken of */
	uint64_t cluster_id; /* 0 in tests that have no cluster id */
};
#define FSM_DESCRIPTOR_LEN 48
void fsm_descriptor_encode(const struct fsm_descriptor *d, uint8_t *buf);
/* 0: @buf is a valid descriptor; RMQ_EINVAL: it is no descriptor (e.g. a
 * full snapshot of an earlier release); RMQ_ECORRUPT: a damaged one. */
int fsm_descriptor_decode(const void *buf, size_t len,
			  struct fsm_descriptor *d);

/* Adapter exposing a struct fsm as canonical/raft's struct raft_fsm.
 * Snapshots are descriptors; restore succeeds only if the store already
 * holds the state (catchup.c fetches it before raft may persist a
 * descriptor the store is behind), or from a full snapshot of an earlier
 * release. @raft is the instance the adapter is installed in (apply reads
 * its last applied index to learn the entry's index). */
struct raft;
struct fsm_raft {
	struct raft_fsm rfsm;
	struct fsm *fsm;
	struct store *store;
	struct raft *raft;
	uint32_t shard_id;
	uint64_t node_id;    /* written into descriptors */
	uint64_t cluster_id; /* written into and checked in descriptors */
	/* Counters (tests, metrics): descriptors made, restores that found
	 * the state already in the store; bytes and count of applied
	 * entries, for sizing raft's in-memory log. */
	uint64_t snapshots;
	uint64_t restores;
	uint64_t applied_bytes;
	uint64_t applied_entries;
	/* Optional: after a snapshot replaced the store; after a fatal apply
	 * fault (raft will not apply on this node any more). */
	void (*restored_cb)(void *arg);
	void (*fatal_cb)(void *arg);
	void *cb_arg;
};
void fsm_raft_init(struct fsm_raft *fr, struct fsm *f, struct store *s,
		   struct raft *raft, uint32_t shard_id);

#endif /* RMQ_FSM_H */
