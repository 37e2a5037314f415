/* seqmap: see seqmap.h. */
#include "seqmap.h"

#include <stdbool.h>
#include <stdlib.h>

#include "raftmq_errors.h"

static size_t slot_of(uint64_t key, size_t cap)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	return (size_t)key & (cap - 1);
}

void seqmap_init(struct seqmap *m)
{
	m->slots = NULL;
	m->cap = 0;
	m->n = 0;
}

void seqmap_close(struct seqmap *m)
{
	free(m->slots);
	seqmap_init(m);
}

static int grow(struct seqmap *m)
{
	size_t cap = m->cap ? m->cap * 2 : 64;
	struct seqmap_slot *slots = calloc(cap, sizeof *slots);
	if (slots == NULL) {
		return RMQ_ENOMEM;
	}
	for (size_t i = 0; i < m->cap; i++) {
		if (m->slots[i].key != 0) {
			size_t j = slot_of(m->slots[i].key, cap);
			while (slots[j].key != 0) {
				j = (j + 1) & (cap - 1);
			}
			slots[j] = m->slots[i];
		}
	}
	free(m->slots);
	m->slots = slots;
	m->cap = cap;
	return 0;
}

int seqmap_put(struct seqmap *m, uint64_t key, void *value)
{
	if ((m->n + 1) * 4 > m->cap * 3 && grow(m) != 0) {
		return RMQ_ENOMEM;
	}
	size_t i = slot_of(key, m->cap);
	while (m->slots[i].key != 0 && m->slots[i].key != key) {
		i = (i + 1) & (m->cap - 1);
	}
	if (m->slots[i].key == 0) {
		m->n++;
	}
	m->slots[i].key = key;
	m->slots[i].value = value;
	return 0;
}

static size_t find(const struct seqmap *m, uint64_t key)
{
	if (m->cap == 0) {
		return SIZE_MAX;
	}
	size_t i = slot_of(key, m->cap);
	while (m->slots[i].key != 0) {
		if (m->slots[i].key == key) {
			return i;
		}
		i = (i + 1) & (m->cap - 1);
	}
	return SIZE_MAX;
}

void *seqmap_get(const struct seqmap *m, uint64_t key)
{
	size_t i = find(m, key);
	return i == SIZE_MAX ? NULL : m->slots[i].value;
}

void *seqmap_del(struct seqmap *m, uint64_t key)
{
	size_t i = find(m, key);
	if (i == SIZE_MAX) {
		return NULL;
	}
	void *value = m->slots[i].value;
	size_t mask = m->cap - 1;
	/* Backward-shift: move later entries of the run into the hole when
	 * their home slot is not between the hole and their position. */
	size_t j = i;
	for (;;) {
		m->slots[i].key = 0;
		for (;;) {
			j = (j + 1) & mask;
			if (m->slots[j].key == 0) {
				m->n--;
				return value;
			}
			size_t home = slot_of(m->slots[j].key, m->cap);
			bool stays = i <= j ? (i < home && home <= j)
					    : (i < home || home <= j);
			if (!stays) {
				break;
			}
		}
		m->slots[i] = m->slots[j];
		i = j;
	}
}
