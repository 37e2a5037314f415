/* seqmap: an open-addressing hash map from a message seq (non-zero u64) to
 * a pointer, with backward-shift deletion (no tombstones). Used for the
 * in-flight deliveries of a queue on its leader. Loop thread only. */
#ifndef RMQ_SEQMAP_H
#define RMQ_SEQMAP_H

#include <stddef.h>
#include <stdint.h>

struct seqmap_slot {
	uint64_t key; /* 0: empty */
	void *value;
};

struct seqmap {
	struct seqmap_slot *slots; /* owned */
	size_t cap;                /* power of two, or 0 */
	size_t n;
};

void seqmap_init(struct seqmap *m);
void seqmap_close(struct seqmap *m);
/* Insert or replace. RMQ_ENOMEM on failure (map unchanged). */
int seqmap_put(struct seqmap *m, uint64_t key, void *value);
void *seqmap_get(const struct seqmap *m, uint64_t key);
/* Remove @key and return its value, NULL if absent. */
void *seqmap_del(struct seqmap *m, uint64_t key);

#endif /* RMQ_SEQMAP_H */
