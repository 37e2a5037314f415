/* Log-linear latency histogram: see hist.h.
 *
 * Bucket layout: index v for v < 256. For larger v with its most
 * significant bit at position b (8..63), the shift m = b - 7 keeps the top
 * 8 bits: sub = v >> m lies in [128, 255], and the index is
 * 256 + (m - 1) * 128 + (sub - 128). The bucket spans [sub << m,
 * ((sub + 1) << m) - 1]. */
#include "hist.h"

#include <assert.h>
#include <math.h>
#include <string.h>

void hist_init(struct hist *h)
{
	memset(h, 0, sizeof *h);
	h->min = UINT64_MAX;
}

unsigned hist_index(uint64_t v)
{
	unsigned b, m;

	if (v < HIST_EXACT) {
		return (unsigned)v;
	}
	b = 63u - (unsigned)__builtin_clzll(v);
	m = b - HIST_SUB_BITS;
	return HIST_EXACT + (m - 1u) * HIST_SUB_COUNT +
	       (unsigned)((v >> m) - HIST_SUB_COUNT);
}

uint64_t hist_lowest(unsigned idx)
{
	unsigned m, sub;

	assert(idx < HIST_BUCKETS);
	if (idx < HIST_EXACT) {
		return idx;
	}
	m = (idx - HIST_EXACT) / HIST_SUB_COUNT + 1u;
	sub = (idx - HIST_EXACT) % HIST_SUB_COUNT + HIST_SUB_COUNT;
	return (uint64_t)sub << m;
}

uint64_t hist_highest(unsigned idx)
{
	unsigned m;

	assert(idx < HIST_BUCKETS);
	if (idx < HIST_EXACT) {
		return idx;
	}
	m = (idx - HIST_EXACT) / HIST_SUB_COUNT + 1u;
	return hist_lowest(idx) + ((uint64_t)1 << m) - 1u;
}

void hist_record(struct hist *h, uint64_t v)
{
	h->counts[hist_index(v)]++;
	h->total++;
	h->sum += (double)v;
	if (v < h->min) {
		h->min = v;
	}
	if (v > h->max) {
		h->max = v;
	}
}

void hist_merge(struct hist *dst, const struct hist *src)
{
	unsigned i;

	if (src->total == 0) {
		return;
	}
	for (i = 0; i < HIST_BUCKETS; i++) {
		dst->counts[i] += src->counts[i];
	}
	dst->total += src->total;
	dst->sum += src->sum;
	if (src->min < dst->min) {
		dst->min = src->min;
	}
	if (src->max > dst->max) {
		dst->max = src->max;
	}
}

uint64_t hist_percentile(const struct hist *h, double p)
{
	uint64_t rank, seen = 0, v;
	unsigned i;

	if (h->total == 0) {
		return 0;
	}
	if (p <= 0.0) {
		return h->min;
	}
	if (p >= 100.0) {
		return h->max;
	}
	rank = (uint64_t)ceil(p / 100.0 * (double)h->total);
	if (rank < 1) {
		rank = 1;
	}
	for (i = 0; i < HIST_BUCKETS; i++) {
		seen += h->counts[i];
		if (seen >= rank) {
			break;
		}
	}
	assert(i < HIST_BUCKETS); /* total is the sum of the counts */
	v = hist_highest(i);
	if (v > h->max) {
		v = h->max;
	}
	if (v < h->min) {
		v = h->min;
	}
	return v;
}

double hist_mean(const struct hist *h)
{
	return h->total == 0 ? 0.0 : h->sum / (double)h->total;
}
