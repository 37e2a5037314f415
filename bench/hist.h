/* Latency histogram with log-linear buckets (HdrHistogram-like, two
 * significant digits): values below 256 are counted exactly; above, each
 * power of two is split into 128 buckets of equal width, so a reported
 * value is within 1/128 (< 0.8 %) of the recorded one. Any uint64_t can be
 * recorded; the struct is a flat array (about 58 KiB), no allocation.
 *
 * Threads: none of its own. A histogram is written by one thread at a time;
 * merge them after the writers have stopped. */
#ifndef RMQ_BENCH_HIST_H
#define RMQ_BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 7                      /* 128 buckets per octave */
#define HIST_SUB_COUNT (1u << HIST_SUB_BITS) /* 128 */
#define HIST_EXACT (2u * HIST_SUB_COUNT)     /* 0..255 counted exactly */
/* 256 exact buckets, then 128 per octave for msb 8..63 (shift 1..56). */
#define HIST_BUCKETS (HIST_EXACT + (64u - HIST_SUB_BITS - 1u) * HIST_SUB_COUNT)

struct hist {
	uint64_t counts[HIST_BUCKETS];
	uint64_t total;
	uint64_t min; /* UINT64_MAX while empty */
	uint64_t max;
	double sum;
};

void hist_init(struct hist *h);
void hist_record(struct hist *h, uint64_t v);
/* Add every count of @src to @dst. */
void hist_merge(struct hist *dst, const struct hist *src);

/* The value at percentile @p (0..100): the highest value equivalent to the
 * bucket holding the ceil(p/100 * total)-th smallest recording, clamped to
 * [min, max], so p = 100 gives the exact maximum and p = 0 the exact
 * minimum. 0 when the histogram is empty. */
uint64_t hist_percentile(const struct hist *h, double p);
/* Mean of the recorded values (exact), 0 when empty. */
double hist_mean(const struct hist *h);

/* Bucket arithmetic, exposed for the unit tests. */
unsigned hist_index(uint64_t v);
uint64_t hist_lowest(unsigned idx);  /* smallest value of bucket @idx */
uint64_t hist_highest(unsigned idx); /* largest value of bucket @idx */

#endif /* RMQ_BENCH_HIST_H */
