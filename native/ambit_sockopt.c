/*
 * The few socket options Node cannot reach: the pre-DNAT destination of a captured connection
 * (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST) and IP_TRANSPARENT. originalDst and setTransparent take a file
 * descriptor that core/sockopt.ts gets from a net.Socket; transparentSocket makes one, because IP_TRANSPARENT
 * must be set before bind() and Node creates a socket's descriptor only inside connect().
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <node_api.h>

/* The netfilter headers define these, but including them next to <netinet/in.h> clashes on older libcs. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80 /* <linux/netfilter_ipv4.h> */
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80 /* <linux/netfilter_ipv6/ip6_tables.h> */
#endif
#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24 /* <linux/in.h>, Linux 4.2 */
#endif

#define NAPI_CALL(env, call)                                                                                 \
  do {                                                                                                        \
    if ((call) != napi_ok) {                                                                                  \
      throw_pending_napi_error(env, #call);                                                                   \
      return NULL;                                                                                            \
    }                                                                                                         \
  } while (0)

static void throw_pending_napi_error(napi_env env, const char *call) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  char message[256];
  snprintf(message, sizeof message, "ambit_sockopt: %s failed: %s", call,
           info != NULL && info->error_message != NULL ? info->error_message : "unknown N-API error");
  napi_throw_error(env, NULL, message);
}

/* Node names system errors by their errno symbol; these are the ones socket/setsockopt/getsockopt/bind return here. */
static const char *errno_name(int err) {
  switch (err) {
    case EACCES: return "EACCES";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EBADF: return "EBADF";
    case EFAULT: return "EFAULT";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOBUFS: return "ENOBUFS";
    case ENOENT: return "ENOENT";
    case ENOMEM: return "ENOMEM";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case ENOTCONN: return "ENOTCONN";
    case ENOTSOCK: return "ENOTSOCK";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EPERM: return "EPERM";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    default: return "EUNKNOWN";
  }
}

/* Shaped like Node's own system errors: code, errno (negative, as libuv reports it) and syscall. */
static void throw_errno(napi_env env, int err, const char *syscall, const char *option) {
  const char *code = errno_name(err);
  char text[256];
  snprintf(text, sizeof text, "%s(%s) failed: %s (%s)", syscall, option, strerror(err), code);
  napi_value message, code_value, error, errno_value, syscall_value;
  if (napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message) != napi_ok ||
      napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &code_value) != napi_ok ||
      napi_create_error(env, code_value, message, &error) != napi_ok ||
      napi_create_int32(env, -err, &errno_value) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value) != napi_ok ||
      napi_set_named_property(env, error, "errno", errno_value) != napi_ok ||
      napi_set_named_property(env, error, "syscall", syscall_value) != napi_ok) {
    napi_throw_error(env, code, text);
    return;
  }
  napi_throw(env, error);
}

/* Reads `value` as an integer in [min, max]; throws a TypeError naming `name` otherwise. */
static bool get_integer(napi_env env, napi_value value, const char *fn, const char *name, double min, double max,
                        double *out) {
  napi_valuetype type;
  double number = 0;
  if (napi_typeof(env, value, &type) == napi_ok && type == napi_number &&
      napi_get_value_double(env, value, &number) == napi_ok && number >= min && number <= max &&
      number == (double)(long long)number) {
    *out = number;
    return true;
  }
  char message[160];
  snprintf(message, sizeof message, "%s: %s must be an integer from %.0f to %.0f", fn, name, min, max);
  napi_throw_type_error(env, NULL, message);
  return false;
}

static bool get_fd(napi_env env, napi_value value, const char *fn, int *fd) {
  double number;
  if (!get_integer(env, value, fn, "fd", 0, INT_MAX, &number)) return false;
  *fd = (int)number;
  return true;
}

static bool get_family(napi_env env, napi_value value, const char *fn, int *family) {
  napi_valuetype type;
  double number = 0;
  if (napi_typeof(env, value, &type) == napi_ok && type == napi_number &&
      napi_get_value_double(env, value, &number) == napi_ok && (number == 4 || number == 6)) {
    *family = (int)number;
    return true;
  }
  char message[96];
  snprintf(message, sizeof message, "%s: family must be 4 or 6", fn);
  napi_throw_type_error(env, NULL, message);
  return false;
}

static bool get_args(napi_env env, napi_callback_info info, const char *fn, size_t expected, napi_value *args) {
  size_t count = expected;
  if (napi_get_cb_info(env, info, &count, args, NULL, NULL) != napi_ok) {
    throw_pending_napi_error(env, "napi_get_cb_info");
    return false;
  }
  if (count < expected) {
    char message[96];
    snprintf(message, sizeof message, "%s: expected %zu arguments, got %zu", fn, expected, count);
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  return true;
}

/* originalDst(fd, family) -> { address, port }: where the client meant to go before nat rewrote it. */
static napi_value original_dst(napi_env env, napi_callback_info info) {
  napi_value args[2];
  int fd, family;
  if (!get_args(env, info, "originalDst", 2, args) || !get_fd(env, args[0], "originalDst", &fd) ||
      !get_family(env, args[1], "originalDst", &family)) {
    return NULL;
  }

  char address[INET6_ADDRSTRLEN];
  uint16_t port;
  if (family == 4) {
    struct sockaddr_in destination;
    socklen_t length = sizeof destination;
    memset(&destination, 0, sizeof destination);
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &destination, &length) != 0) {
      throw_errno(env, errno, "getsockopt", "SO_ORIGINAL_DST");
      return NULL;
    }
    inet_ntop(AF_INET, &destination.sin_addr, address, sizeof address);
    port = ntohs(destination.sin_port);
  } else {
    struct sockaddr_in6 destination;
    socklen_t length = sizeof destination;
    memset(&destination, 0, sizeof destination);
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &destination, &length) != 0) {
      throw_errno(env, errno, "getsockopt", "IP6T_SO_ORIGINAL_DST");
      return NULL;
    }
    inet_ntop(AF_INET6, &destination.sin6_addr, address, sizeof address);
    port = ntohs(destination.sin6_port);
  }

  napi_value result, address_value, port_value;
  NAPI_CALL(env, napi_create_object(env, &result));
  NAPI_CALL(env, napi_create_string_utf8(env, address, NAPI_AUTO_LENGTH, &address_value));
  NAPI_CALL(env, napi_create_uint32(env, port, &port_value));
  NAPI_CALL(env, napi_set_named_property(env, result, "address", address_value));
  NAPI_CALL(env, napi_set_named_property(env, result, "port", port_value));
  return result;
}

/* setTransparent(fd, family, on): lets the socket bind to, and send from, an address that is not local. */
static napi_value set_transparent(napi_env env, napi_callback_info info) {
  napi_value args[3];
  int fd, family;
  if (!get_args(env, info, "setTransparent", 3, args) || !get_fd(env, args[0], "setTransparent", &fd) ||
      !get_family(env, args[1], "setTransparent", &family)) {
    return NULL;
  }
  bool on;
  if (napi_get_value_bool(env, args[2], &on) != napi_ok) {
    napi_throw_type_error(env, NULL, "setTransparent: on must be a boolean");
    return NULL;
  }
  int value = on ? 1 : 0;
  int status = family == 4 ? setsockopt(fd, SOL_IP, IP_TRANSPARENT, &value, sizeof value)
                           : setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &value, sizeof value);
  if (status != 0) {
    throw_errno(env, errno, "setsockopt", family == 4 ? "IP_TRANSPARENT" : "IPV6_TRANSPARENT");
  }
  return NULL;
}

/*
 * transparentSocket(address) -> fd: a non-blocking, close-on-exec TCP socket with IP_TRANSPARENT (or
 * IPV6_TRANSPARENT), bound to (address, any port), ready for connect(). The address need not be local: that is the
 * point, the agent connects to a pod from its client's address. The port is picked at connect()
 * (IP_BIND_ADDRESS_NO_PORT), so one client address can have as many connections as distinct destinations allow,
 * not one per ephemeral port. Every failure closes the socket before it throws.
 */
static napi_value transparent_socket(napi_env env, napi_callback_info info) {
  napi_value args[1];
  if (!get_args(env, info, "transparentSocket", 1, args)) return NULL;
  char address[INET6_ADDRSTRLEN + 1];
  size_t length = 0;
  napi_valuetype type;
  if (napi_typeof(env, args[0], &type) != napi_ok || type != napi_string ||
      napi_get_value_string_utf8(env, args[0], address, sizeof address, &length) != napi_ok ||
      length >= sizeof address - 1) {
    napi_throw_type_error(env, NULL, "transparentSocket: address must be an IPv4 or IPv6 address string");
    return NULL;
  }
  struct sockaddr_storage bound;
  socklen_t bound_length;
  memset(&bound, 0, sizeof bound);
  struct sockaddr_in *v4 = (struct sockaddr_in *)&bound;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&bound;
  if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    bound_length = sizeof *v4;
  } else if (inet_pton(AF_INET6, address, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    bound_length = sizeof *v6;
  } else {
    char message[96 + INET6_ADDRSTRLEN];
    snprintf(message, sizeof message, "transparentSocket: address \"%s\" is not an IPv4 or IPv6 address", address);
    napi_throw_type_error(env, NULL, message);
    return NULL;
  }

  int family = bound.ss_family;
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) {
    throw_errno(env, errno, "socket", family == AF_INET ? "AF_INET" : "AF_INET6");
    return NULL;
  }
  int on = 1;
  const char *syscall = "setsockopt";
  const char *option;
  int status;
  if (family == AF_INET) {
    option = "IP_TRANSPARENT";
    status = setsockopt(fd, SOL_IP, IP_TRANSPARENT, &on, sizeof on);
  } else {
    option = "IPV6_TRANSPARENT";
    status = setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &on, sizeof on);
  }
  if (status == 0) {
    option = "IP_BIND_ADDRESS_NO_PORT";
    status = setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &on, sizeof on);
  }
  if (status == 0) {
    syscall = "bind";
    option = address;
    status = bind(fd, (struct sockaddr *)&bound, bound_length);
  }
  if (status != 0) {
    int err = errno;
    close(fd);
    throw_errno(env, err, syscall, option);
    return NULL;
  }

  napi_value result;
  if (napi_create_int32(env, fd, &result) != napi_ok) {
    close(fd);
    throw_pending_napi_error(env, "napi_create_int32");
    return NULL;
  }
  return result;
}

/*
 * releaseFreeMemory(): hands the allocator's free pages back to the kernel (glibc malloc_trim). Buffers freed after
 * a burst of traffic otherwise stay resident, scattered between live allocations, for the life of the process.
 * Returns whether any memory was released.
 */
static napi_value release_free_memory(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  NAPI_CALL(env, napi_get_boolean(env, malloc_trim(0) != 0, &result));
  return result;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor functions[] = {
      {"originalDst", NULL, original_dst, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setTransparent", NULL, set_transparent, NULL, NULL, NULL, napi_enumerable, NULL},
      {"transparentSocket", NULL, transparent_socket, NULL, NULL, NULL, napi_enumerable, NULL},
      {"releaseFreeMemory", NULL, release_free_memory, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  NAPI_CALL(env, napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions));
  return exports;
}
