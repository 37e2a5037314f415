/* raftmq-bench option parsing: see options.h. Accepts "--name value" and
 * "--name=value"; numbers must be whole (no trailing text). */
#include "options.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "raftmq_errors.h"

void options_init(struct bench_options *o)
{
	memset(o, 0, sizeof *o);
	o->broker = BENCH_RAFTMQ;
	o->mode = BENCH_MODE_DURATION;
	o->producers = 1;
	o->consumers = 1;
	o->queues = 1;
	o->size = 1024;
	o->window = 1000;
	o->prefetch = 1000;
	o->duration = 10.0;
	o->warmup = 1.0;
	o->drain = 10.0;
	o->progress = true;
	snprintf(o->queue_prefix, sizeof o->queue_prefix, "bench");
}

const char *options_broker_name(enum bench_broker b)
{
	switch (b) {
	case BENCH_RAFTMQ:
		return "raftmq";
	case BENCH_RABBITMQ:
		return "rabbitmq";
	case BENCH_NATS:
		return "nats";
	}
	return "?";
}

const char *options_mode_name(enum bench_mode m)
{
	switch (m) {
	case BENCH_MODE_DURATION:
		return "duration";
	case BENCH_MODE_COUNT:
		return "count";
	case BENCH_MODE_PRELOAD:
		return "preload";
	}
	return "?";
}

const char *options_default_servers(enum bench_broker b)
{
	switch (b) {
	case BENCH_RAFTMQ:
		return "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";
	case BENCH_RABBITMQ:
		return "127.0.0.1:5672";
	case BENCH_NATS:
		return "nats://127.0.0.1:4222";
	}
	return "";
}

void options_usage(FILE *f, const char *built, const char *missing)
{
	fprintf(f,
		"usage: raftmq-bench [OPTIONS]\n"
		"\n"
		"A load generator for raftmq, RabbitMQ quorum queues and NATS "
		"JetStream.\n"
		"Prints a progress line on stderr (when it is a terminal) and "
		"the results\n"
		"on stdout (a JSON object with --json).\n"
		"\n"
		"  --broker B         raftmq | rabbitmq | nats (default raftmq)\n"
		"                     built in: %s%s%s\n"
		"  --servers LIST     comma-separated; default per broker:\n"
		"                       raftmq   %s\n"
		"                       rabbitmq %s (queue i uses server i mod n)\n"
		"                       nats     %s\n"
		"  --producers N      publishing connections (default 1)\n"
		"  --consumers N      consuming connections (default 1; 0: "
		"publish only)\n"
		"  --queues N         queues (default 1); producer/consumer i "
		"uses queue i mod N\n"
		"  --size BYTES       message body size, suffix k or m for "
		"KiB/MiB (default 1024)\n"
		"  --window N         unconfirmed publishes per producer "
		"(default 1000; 1 = latency mode)\n"
		"  --prefetch N       unacked deliveries per consumer "
		"(default 1000)\n"
		"  --duration S       measure for S seconds (default 10)\n"
		"  --warmup S         first run S seconds unmeasured (default "
		"1; duration runs only)\n"
		"  --count N          publish N messages in all, consume them "
		"all\n"
		"  --preload N        publish N messages with no consumer, then "
		"consume the backlog\n"
		"  --drain S          consumers stop after S seconds without "
		"progress once\n"
		"                     publishing ended (default 10)\n"
		"  --server-pids P,.. sample these processes' VmRSS every second, "
		"report the max\n"
		"  --queue-prefix P   queue/stream names P-0, P-1, ... (default "
		"bench); deleted\n"
		"                     and declared again at start, deleted at "
		"the end\n"
		"  --json             print only the JSON object on stdout\n"
		"  --no-progress      no progress line\n"
		"  -h, --help         this text\n",
		built, missing[0] != '\0' ? "; not built: " : "", missing,
		options_default_servers(BENCH_RAFTMQ),
		options_default_servers(BENCH_RABBITMQ),
		options_default_servers(BENCH_NATS));
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return RMQ_EINVAL;
}

/* Whole unsigned number with an optional k/m (binary) suffix when
 * @suffixes; 0 or -1. */
static int parse_u64(const char *s, bool suffixes, uint64_t *out)
{
	unsigned long long v;
	uint64_t mult = 1;
	char *end;

	if (s[0] < '0' || s[0] > '9') {
		return -1;
	}
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0) {
		return -1;
	}
	if (suffixes && (*end == 'k' || *end == 'K')) {
		mult = 1024;
		end++;
	} else if (suffixes && (*end == 'm' || *end == 'M')) {
		mult = 1024 * 1024;
		end++;
	}
	if (*end != '\0' || (mult > 1 && v > UINT64_MAX / mult)) {
		return -1;
	}
	*out = (uint64_t)v * mult;
	return 0;
}

static int parse_seconds(const char *s, double *out)
{
	char *end;
	double v;

	if ((s[0] < '0' || s[0] > '9') && s[0] != '.') {
		return -1;
	}
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || *end != '\0' || !isfinite(v) || v < 0 || v > 1e6) {
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_pids(struct bench_options *o, const char *s)
{
	const char *p = s;

	o->n_server_pids = 0;
	while (*p != '\0') {
		char *end;
		long v;

		if (*p < '0' || *p > '9' ||
		    o->n_server_pids == BENCH_MAX_PIDS) {
			return -1;
		}
		errno = 0;
		v = strtol(p, &end, 10);
		if (errno != 0 || v <= 0 || v > 0x3fffffff ||
		    (*end != ',' && *end != '\0')) {
			return -1;
		}
		o->server_pids[o->n_server_pids++] = (int)v;
		p = *end == ',' ? end + 1 : end;
	}
	return o->n_server_pids > 0 ? 0 : -1;
}

static bool prefix_ok(const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0 || n > 48) {
		return false;
	}
	for (i = 0; i < n; i++) {
		char ch = s[i];
		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '-' || ch == '_')) {
			return false;
		}
	}
	return true;
}

/* Cross-option rules, once everything is parsed. */
static int validate(struct bench_options *o, bool duration_set, bool warmup_set,
		    bool servers_set, char *err, size_t errlen)
{
	if (o->count > 0 && o->preload > 0) {
		return fail(err, errlen,
			    "--count and --preload exclude each other");
	}
	if (o->count > 0 || o->preload > 0) {
		if (duration_set) {
			return fail(
				err, errlen,
				"--duration excludes --count and --preload");
		}
		if (warmup_set) {
			return fail(err, errlen,
				    "--warmup applies to --duration runs only");
		}
		o->mode = o->count > 0 ? BENCH_MODE_COUNT : BENCH_MODE_PRELOAD;
		o->warmup = 0.0;
		o->duration = 0.0;
	} else if (o->duration <= 0.0) {
		return fail(err, errlen, "--duration must be above 0");
	}
	if (o->mode == BENCH_MODE_PRELOAD && o->consumers == 0) {
		return fail(err, errlen,
			    "--preload needs at least one consumer");
	}
	if (o->queues > o->producers) {
		return fail(err, errlen,
			    "--queues (%u) must not exceed --producers (%u)",
			    o->queues, o->producers);
	}
	if (o->consumers > 0 && o->consumers < o->queues) {
		return fail(
			err, errlen,
			"--consumers (%u) must be 0 or at least --queues (%u)",
			o->consumers, o->queues);
	}
	if (!servers_set) {
		snprintf(o->servers, sizeof o->servers, "%s",
			 options_default_servers(o->broker));
	}
	return 0;
}

/* Bounds-checked unsigned option into @dst. */
static int set_uint(const char *name, const char *val, uint64_t lo, uint64_t hi,
		    bool suffixes, uint64_t *dst, char *err, size_t errlen)
{
	uint64_t v;

	if (parse_u64(val, suffixes, &v) != 0 || v < lo || v > hi) {
		return fail(err, errlen,
			    "%s: want a whole number in %llu..%llu, not '%s'",
			    name, (unsigned long long)lo,
			    (unsigned long long)hi, val);
	}
	*dst = v;
	return 0;
}

int options_parse(struct bench_options *o, int argc, char *const argv[],
		  char *err, size_t errlen)
{
	bool duration_set = false, warmup_set = false, servers_set = false;
	int i;

	err[0] = '\0';
	for (i = 1; i < argc; i++) {
		const char *arg = argv[i], *val = NULL, *eq;
		char name[32];
		uint64_t v;
		int rv = 0;

		if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
			return OPTIONS_HELP;
		}
		if (strncmp(arg, "--", 2) != 0) {
			return fail(err, errlen, "unexpected argument '%s'",
				    arg);
		}
		eq = strchr(arg, '=');
		if (eq != NULL) {
			if ((size_t)(eq - arg) >= sizeof name) {
				return fail(err, errlen, "unknown option '%s'",
					    arg);
			}
			memcpy(name, arg, (size_t)(eq - arg));
			name[eq - arg] = '\0';
			val = eq + 1;
		} else {
			snprintf(name, sizeof name, "%s", arg);
		}

		/* Flags without a value. */
		if (strcmp(name, "--json") == 0 ||
		    strcmp(name, "--no-progress") == 0) {
			if (val != NULL) {
				return fail(err, errlen, "%s takes no value",
					    name);
			}
			if (strcmp(name, "--json") == 0) {
				o->json = true;
			} else {
				o->progress = false;
			}
			continue;
		}
		if (val == NULL) {
			if (i + 1 >= argc) {
				return fail(err, errlen, "%s needs a value",
					    name);
			}
			val = argv[++i];
		}

		if (strcmp(name, "--broker") == 0) {
			if (strcmp(val, "raftmq") == 0) {
				o->broker = BENCH_RAFTMQ;
			} else if (strcmp(val, "rabbitmq") == 0) {
				o->broker = BENCH_RABBITMQ;
			} else if (strcmp(val, "nats") == 0) {
				o->broker = BENCH_NATS;
			} else {
				return fail(
					err, errlen,
					"--broker: want raftmq, rabbitmq or nats, not '%s'",
					val);
			}
		} else if (strcmp(name, "--servers") == 0) {
			if (val[0] == '\0' ||
			    strlen(val) >= sizeof o->servers) {
				return fail(err, errlen,
					    "--servers: empty or too long");
			}
			snprintf(o->servers, sizeof o->servers, "%s", val);
			servers_set = true;
		} else if (strcmp(name, "--producers") == 0) {
			rv = set_uint(name, val, 1, BENCH_MAX_WORKERS, false,
				      &v, err, errlen);
			o->producers = (unsigned)v;
		} else if (strcmp(name, "--consumers") == 0) {
			rv = set_uint(name, val, 0, BENCH_MAX_WORKERS, false,
				      &v, err, errlen);
			o->consumers = (unsigned)v;
		} else if (strcmp(name, "--queues") == 0) {
			rv = set_uint(name, val, 1, BENCH_MAX_WORKERS, false,
				      &v, err, errlen);
			o->queues = (unsigned)v;
		} else if (strcmp(name, "--size") == 0) {
			rv = set_uint(name, val, BENCH_MIN_SIZE, BENCH_MAX_SIZE,
				      true, &v, err, errlen);
			o->size = (size_t)v;
		} else if (strcmp(name, "--window") == 0) {
			rv = set_uint(name, val, 1, BENCH_MAX_WINDOW, false, &v,
				      err, errlen);
			o->window = (unsigned)v;
		} else if (strcmp(name, "--prefetch") == 0) {
			rv = set_uint(name, val, 1, 65535, false, &v, err,
				      errlen);
			o->prefetch = (unsigned)v;
		} else if (strcmp(name, "--count") == 0) {
			rv = set_uint(name, val, 1, UINT64_MAX / 2, false,
				      &o->count, err, errlen);
		} else if (strcmp(name, "--preload") == 0) {
			rv = set_uint(name, val, 1, UINT64_MAX / 2, false,
				      &o->preload, err, errlen);
		} else if (strcmp(name, "--duration") == 0) {
			if (parse_seconds(val, &o->duration) != 0 ||
			    o->duration <= 0) {
				return fail(
					err, errlen,
					"--duration: want seconds above 0, not '%s'",
					val);
			}
			duration_set = true;
		} else if (strcmp(name, "--warmup") == 0) {
			if (parse_seconds(val, &o->warmup) != 0) {
				return fail(err, errlen,
					    "--warmup: want seconds, not '%s'",
					    val);
			}
			warmup_set = true;
		} else if (strcmp(name, "--drain") == 0) {
			if (parse_seconds(val, &o->drain) != 0) {
				return fail(err, errlen,
					    "--drain: want seconds, not '%s'",
					    val);
			}
		} else if (strcmp(name, "--server-pids") == 0) {
			if (parse_pids(o, val) != 0) {
				return fail(
					err, errlen,
					"--server-pids: want up to %d pids separated by commas, not '%s'",
					BENCH_MAX_PIDS, val);
			}
		} else if (strcmp(name, "--queue-prefix") == 0) {
			if (!prefix_ok(val)) {
				return fail(
					err, errlen,
					"--queue-prefix: 1..48 of [A-Za-z0-9_-], not '%s'",
					val);
			}
			snprintf(o->queue_prefix, sizeof o->queue_prefix, "%s",
				 val);
		} else {
			return fail(err, errlen, "unknown option '%s'", name);
		}
		if (rv != 0) {
			return rv;
		}
	}
	return validate(o, duration_set, warmup_set, servers_set, err, errlen);
}
