/* Makes TFF's worker_binary listen on one address instead of every interface.
 *
 * TFF 0.87's worker (tensorflow_federated/cc/simulation/servers.cc) always
 * listens on "[::]:port", every interface, and has no flag to change that.
 * `python -m fedlab worker` preloads this library and sets FEDLAB_BIND_HOST;
 * a bind() to the wildcard address is rewritten to that address (an IPv4
 * address becomes its v4-mapped form on gRPC's dual-stack socket). fedlab
 * then reads /proc/net/tcp* to check the worker listens where it was told.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  static bind_fn real_bind = NULL;
  if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
  const char *host = getenv("FEDLAB_BIND_HOST");
  if (!host || !addr) return real_bind(fd, addr, len);
  struct in_addr v4;
  struct in6_addr v6;
  int host_is_v4 = inet_pton(AF_INET, host, &v4) == 1;
  int host_is_v6 = !host_is_v4 && inet_pton(AF_INET6, host, &v6) == 1;
  if (addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 a;
    memcpy(&a, addr, sizeof(a));
    if (memcmp(&a.sin6_addr, &in6addr_any, sizeof(in6addr_any)) != 0) return real_bind(fd, addr, len);
    if (host_is_v6) {
      a.sin6_addr = v6;
    } else if (host_is_v4) {
      memset(&a.sin6_addr, 0, sizeof(a.sin6_addr));
      a.sin6_addr.s6_addr[10] = 0xff;
      a.sin6_addr.s6_addr[11] = 0xff;
      memcpy(&a.sin6_addr.s6_addr[12], &v4, 4);
    } else {
      return real_bind(fd, addr, len);
    }
    return real_bind(fd, (const struct sockaddr *)&a, sizeof(a));
  }
  if (addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
    struct sockaddr_in a;
    memcpy(&a, addr, sizeof(a));
    if (a.sin_addr.s_addr != htonl(INADDR_ANY) || !host_is_v4) return real_bind(fd, addr, len);
    a.sin_addr = v4;
    return real_bind(fd, (const struct sockaddr *)&a, sizeof(a));
  }
  return real_bind(fd, addr, len);
}
