/* Pure helpers of libraftmq: growable buffers, server lists, addresses,
 * random ids. No I/O except reading /dev/urandom; callable from any
 * thread on distinct objects. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client_int.h"

int cutil_buf_reserve(struct buf *b, size_t extra)
{
	if (b->len + extra <= b->cap) {
		return 0;
	}
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + extra) {
		cap *= 2;
	}
	uint8_t *d = realloc(b->data, cap);
	if (d == NULL) {
		return RMQ_ENOMEM;
	}
	b->data = d;
	b->cap = cap;
	return 0;
}

static int u64vec_reserve(struct u64vec *v, size_t extra)
{
	if (v->n + extra <= v->cap) {
		return 0;
	}
	size_t cap = v->cap ? v->cap : 64;
	while (cap < v->n + extra) {
		cap *= 2;
	}
	uint64_t *d = realloc(v->v, cap * sizeof *d);
	if (d == NULL) {
		return RMQ_ENOMEM;
	}
	v->v = d;
	v->cap = cap;
	return 0;
}

int cutil_u64vec_push(struct u64vec *v, uint64_t x)
{
	int rv = u64vec_reserve(v, 1);
	if (rv != 0) {
		return rv;
	}
	v->v[v->n++] = x;
	return 0;
}

int cutil_u64vec_append(struct u64vec *v, const uint64_t *xs, size_t n)
{
	if (n == 0) {
		return 0;
	}
	int rv = u64vec_reserve(v, n);
	if (rv != 0) {
		return rv;
	}
	memcpy(v->v + v->n, xs, n * sizeof *xs);
	v->n += n;
	return 0;
}

void cutil_free_servers(char **v, int n)
{
	if (v == NULL) {
		return;
	}
	for (int i = 0; i < n; i++) {
		free(v[i]);
	}
	free(v);
}

int cutil_parse_servers(const char *list, char ***out)
{
	char **v = NULL;
	int n = 0;
	const char *p = list;

	if (list == NULL) {
		return RMQ_EINVAL;
	}
	while (*p != '\0') {
		const char *end = strchr(p, ',');
		if (end == NULL) {
			end = p + strlen(p);
		}
		const char *a = p;
		const char *b = end;
		while (a < b && isspace((unsigned char)*a)) {
			a++;
		}
		while (b > a && isspace((unsigned char)b[-1])) {
			b--;
		}
		if (b > a) {
			char host[RMQ_ADDR_MAX];
			int port;
			size_t len = (size_t)(b - a);
			char *s;
			char **nv;
			if (len >= RMQ_ADDR_MAX) {
				goto err_inval;
			}
			s = malloc(len + 1);
			if (s == NULL) {
				goto err_nomem;
			}
			memcpy(s, a, len);
			s[len] = '\0';
			if (cutil_split_addr(s, host, sizeof host, &port) !=
			    0) {
				free(s);
				goto err_inval;
			}
			nv = realloc(v, (size_t)(n + 1) * sizeof *v);
			if (nv == NULL) {
				free(s);
				goto err_nomem;
			}
			v = nv;
			v[n++] = s;
		}
		p = *end == ',' ? end + 1 : end;
	}
	if (n == 0) {
		goto err_inval;
	}
	*out = v;
	return n;

err_inval:
	cutil_free_servers(v, n);
	return RMQ_EINVAL;
err_nomem:
	cutil_free_servers(v, n);
	return RMQ_ENOMEM;
}

int cutil_split_addr(const char *addr, char *host, size_t hostsz, int *port)
{
	const char *colon;
	const char *h = addr;
	size_t hlen;
	char *end;
	long p;

	if (addr[0] == '[') {
		const char *close = strchr(addr, ']');
		if (close == NULL || close[1] != ':') {
			return RMQ_EINVAL;
		}
		h = addr + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(addr, ':');
		if (colon == NULL) {
			return RMQ_EINVAL;
		}
		hlen = (size_t)(colon - addr);
	}
	if (hlen == 0 || hlen >= hostsz) {
		return RMQ_EINVAL;
	}
	p = strtol(colon + 1, &end, 10);
	if (end == colon + 1 || *end != '\0' || p <= 0 || p > 65535) {
		return RMQ_EINVAL;
	}
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	*port = (int)p;
	return 0;
}

void cutil_random_hex(char *out, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char raw[64];
	size_t nb = n / 2 < sizeof raw ? n / 2 : sizeof raw;
	FILE *f = fopen("/dev/urandom", "rb");
	size_t got = 0;

	if (f != NULL) {
		got = fread(raw, 1, nb, f);
		fclose(f);
	}
	if (got < nb) {
		uint64_t x = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^
			     uv_hrtime();
		for (size_t i = 0; i < nb; i++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			raw[i] = (unsigned char)(x >> 56);
		}
	}
	for (size_t i = 0; i < nb; i++) {
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 15];
	}
	out[2 * nb] = '\0';
}
