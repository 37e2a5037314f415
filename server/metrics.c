/* metrics: see metrics.h. */
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 100 us .. 10 s, three steps per decade. */
static const uint64_t bounds_ns[LAT_BUCKETS] = {
	100000ULL,     250000ULL,     500000ULL,     1000000ULL,
	2500000ULL,    5000000ULL,    10000000ULL,   25000000ULL,
	50000000ULL,   100000000ULL,  250000000ULL,  500000000ULL,
	1000000000ULL, 2500000000ULL, 5000000000ULL, 10000000000ULL,
};

uint64_t lat_bound_ns(unsigned i)
{
	return bounds_ns[i];
}

void lat_record(struct lat_hist *h, uint64_t ns)
{
	unsigned i = 0;
	while (i < LAT_BUCKETS && ns > bounds_ns[i]) {
		i++;
	}
	h->counts[i]++;
	h->total++;
	h->sum_ns += ns;
}

void sbuf_init(struct sbuf *b)
{
	memset(b, 0, sizeof *b);
}

void sbuf_free(struct sbuf *b)
{
	free(b->data);
	sbuf_init(b);
}

static bool reserve(struct sbuf *b, size_t more)
{
	if (b->failed) {
		return false;
	}
	if (b->len + more + 1 <= b->cap) {
		return true;
	}
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more + 1) {
		cap *= 2;
	}
	char *p = realloc(b->data, cap);
	if (p == NULL) {
		b->failed = true;
		return false;
	}
	b->data = p;
	b->cap = cap;
	return true;
}

void sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!reserve(b, 256)) {
		return;
	}
	va_start(ap, fmt);
	n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->failed = true;
		return;
	}
	if ((size_t)n >= b->cap - b->len) {
		if (!reserve(b, (size_t)n)) {
			return;
		}
		va_start(ap, fmt);
		vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
	}
	b->len += (size_t)n;
}

void sbuf_label_value(struct sbuf *b, const char *s)
{
	if (!reserve(b, 2 * strlen(s))) {
		return;
	}
	for (; *s != '\0'; s++) {
		switch (*s) {
		case '\\':
			b->data[b->len++] = '\\';
			b->data[b->len++] = '\\';
			break;
		case '"':
			b->data[b->len++] = '\\';
			b->data[b->len++] = '"';
			break;
		case '\n':
			b->data[b->len++] = '\\';
			b->data[b->len++] = 'n';
			break;
		default:
			b->data[b->len++] = *s;
			break;
		}
	}
	b->data[b->len] = '\0';
}

char *sbuf_take(struct sbuf *b, size_t *len)
{
	char *p = NULL;
	if (!b->failed && reserve(b, 0)) {
		b->data[b->len] = '\0';
		p = b->data;
		*len = b->len;
		b->data = NULL;
	}
	sbuf_free(b);
	return p;
}

void prom_help(struct sbuf *b, const char *name, const char *type,
	       const char *help)
{
	sbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void prom_u64(struct sbuf *b, const char *name, const char *labels, uint64_t v)
{
	if (labels[0] != '\0') {
		sbuf_printf(b, "%s{%s} %llu\n", name, labels,
			    (unsigned long long)v);
	} else {
		sbuf_printf(b, "%s %llu\n", name, (unsigned long long)v);
	}
}

void prom_double(struct sbuf *b, const char *name, const char *labels, double v)
{
	if (labels[0] != '\0') {
		sbuf_printf(b, "%s{%s} %.9g\n", name, labels, v);
	} else {
		sbuf_printf(b, "%s %.9g\n", name, v);
	}
}

void prom_hist(struct sbuf *b, const char *name, const char *labels,
	       const struct lat_hist *h)
{
	const char *sep = labels[0] != '\0' ? "," : "";
	uint64_t cum = 0;

	for (unsigned i = 0; i < LAT_BUCKETS; i++) {
		cum += h->counts[i];
		sbuf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels,
			    sep, (double)bounds_ns[i] / 1e9,
			    (unsigned long long)cum);
	}
	sbuf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
		    (unsigned long long)h->total);
	if (labels[0] != '\0') {
		sbuf_printf(b, "%s_sum{%s} %.9f\n%s_count{%s} %llu\n", name,
			    labels, (double)h->sum_ns / 1e9, name, labels,
			    (unsigned long long)h->total);
	} else {
		sbuf_printf(b, "%s_sum %.9f\n%s_count %llu\n", name,
			    (double)h->sum_ns / 1e9, name,
			    (unsigned long long)h->total);
	}
}
