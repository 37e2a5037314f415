/* log: one line per event on stderr, with a UTC timestamp and level.
 * Callable from the loop thread (and, being one fprintf, any thread). */
#ifndef RMQ_LOG_H
#define RMQ_LOG_H

enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(int level);
int log_parse_level(const char *s); /* -1 if unknown */
void log_msg(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define LOGD(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define LOGI(...) log_msg(LOG_INFO, __VA_ARGS__)
#define LOGW(...) log_msg(LOG_WARN, __VA_ARGS__)
#define LOGE(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif /* RMQ_LOG_H */
