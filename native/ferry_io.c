/*
 * ferry_io: the few Linux file primitives Node.js does not expose and the data
 * path needs. fallocate() modes (preallocate a staging area, punch holes for
 * TRIM, zero ranges for WRITE_ZEROES), the block-device ioctls that stand in for
 * them (BLKDISCARD, BLKZEROOUT), SEEK_DATA/SEEK_HOLE for allocation maps, the size
 * of a block device, a read-ahead hint and its opposite (pages not needed again), the count
 * of a range's cached pages (cachestat), and a read that never waits for the device
 * (preadv2 RWF_NOWAIT: served from the page cache or refused). Anything that can block
 * on the device runs on the libuv thread pool; the lseek calls are metadata lookups and
 * the non-waiting read only copies cached pages, so those run inline. A batch of
 * writes (a consumer applying many journal records to its target) goes to the pool as one
 * job that writes them in order: one hop for hundreds of records, and the event loop
 * never waits for a pwrite. An advisory whole-file lock (flock) keeps a second ferryd off a
 * data directory, staging area or disk one already serves; the kernel drops it when the
 * process dies, kill -9 included. And the one datagram systemd's readiness protocol needs
 * (sd_notify: READY=1 to $NOTIFY_SOCKET), which Node cannot send to a unix socket.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define CHECK(call)                                                       \
  do {                                                                    \
    if ((call) != napi_ok) {                                              \
      napi_throw_error(env, NULL, "ferry_io: N-API call failed: " #call); \
      return NULL;                                                        \
    }                                                                     \
  } while (0)

enum op { OP_ALLOCATE = 0, OP_PUNCH = 1, OP_ZERO = 2, OP_DISCARD = 3, OP_ZEROOUT = 4 };

typedef struct {
  napi_async_work work;
  napi_ref callback;
  int fd;
  int op;
  int64_t offset;
  int64_t length;
  int err;
} space_req;

static void space_execute(napi_env env, void *data) {
  (void)env;
  space_req *r = data;
  int rc = 0;
  uint64_t range[2] = {(uint64_t)r->offset, (uint64_t)r->length};
  switch (r->op) {
    case OP_ALLOCATE: rc = fallocate(r->fd, 0, r->offset, r->length); break;
    case OP_PUNCH: rc = fallocate(r->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r->offset, r->length); break;
    case OP_ZERO: rc = fallocate(r->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, r->offset, r->length); break;
    case OP_DISCARD: rc = ioctl(r->fd, BLKDISCARD, range); break;
    case OP_ZEROOUT: rc = ioctl(r->fd, BLKZEROOUT, range); break;
    default: rc = -1; errno = EINVAL;
  }
  r->err = rc == 0 ? 0 : errno;
}

static napi_value errno_error(napi_env env, int err, const char *syscall) {
  napi_value msg, code, error, num, sys;
  char text[160];
  snprintf(text, sizeof text, "%s: %s", syscall, strerror(err));
  const char *name = err == EOPNOTSUPP ? "EOPNOTSUPP" : err == ENOSPC ? "ENOSPC" : err == EINVAL ? "EINVAL"
                   : err == EBADF ? "EBADF" : err == ENOTTY ? "ENOTTY" : err == ENXIO ? "ENXIO"
                   : err == EIO ? "EIO" : err == EROFS ? "EROFS" : err == ENOSYS ? "ENOSYS"
                   : err == EWOULDBLOCK ? "EWOULDBLOCK" : err == ENOLCK ? "ENOLCK" : "EIO";
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &msg);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, msg, &error);
  napi_create_int32(env, -err, &num);
  napi_set_named_property(env, error, "errno", num);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sys);
  napi_set_named_property(env, error, "syscall", sys);
  return error;
}

static void space_complete(napi_env env, napi_status status, void *data) {
  space_req *r = data;
  napi_value cb, global, arg, result;
  napi_get_reference_value(env, r->callback, &cb);
  napi_get_global(env, &global);
  if (status != napi_ok) {
    arg = errno_error(env, ECANCELED, "fallocate");
  } else if (r->err != 0) {
    arg = errno_error(env, r->err, r->op >= OP_DISCARD ? "ioctl" : "fallocate");
  } else {
    napi_get_null(env, &arg);
  }
  napi_call_function(env, global, cb, 1, &arg, &result);
  napi_delete_reference(env, r->callback);
  napi_delete_async_work(env, r->work);
  free(r);
}

/* space(fd, op, offset, length, callback(err)) */
static napi_value space(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], name;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 5) {
    napi_throw_type_error(env, NULL, "space(fd, op, offset, length, callback)");
    return NULL;
  }
  space_req *r = calloc(1, sizeof *r);
  if (r == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  CHECK(napi_get_value_int32(env, argv[0], &r->fd));
  CHECK(napi_get_value_int32(env, argv[1], &r->op));
  CHECK(napi_get_value_int64(env, argv[2], &r->offset));
  CHECK(napi_get_value_int64(env, argv[3], &r->length));
  CHECK(napi_create_reference(env, argv[4], 1, &r->callback));
  CHECK(napi_create_string_utf8(env, "ferry_io.space", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, space_execute, space_complete, r, &r->work));
  CHECK(napi_queue_async_work(env, r->work));
  return NULL;
}

/* At most this many buffers in one batch (a journal consumer applies at most 512 records a step). */
#define BATCH_BUFFERS_MAX 4096

typedef struct {
  napi_async_work work;
  napi_ref callback;
  napi_ref buffers; /* keeps every buffer alive until the job completes */
  int fd;
  int *fds; /* one descriptor per buffer (a consistency group's members), or NULL: fd for all */
  uint32_t count;
  struct iovec *iov;
  int64_t *offsets;
  int err;
} batch_req;

/* Writes iov[from, to) at offsets[from] onward (contiguous), whole, retrying short writes. */
static int write_run(int fd, struct iovec *iov, uint32_t n, int64_t offset) {
  while (n > 0) {
    ssize_t w = pwritev(fd, iov, n > IOV_MAX ? IOV_MAX : (int)n, offset);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;
    offset += w;
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0 && w > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* In order: buffer i lands after buffers 0..i-1, so a later write over an earlier one wins.
   Runs of buffers that follow each other on the device go as one pwritev. */
static void batch_execute(napi_env env, void *data) {
  (void)env;
  batch_req *r = data;
  uint32_t i = 0;
  while (i < r->count) {
    uint32_t j = i + 1;
    int fd = r->fds != NULL ? r->fds[i] : r->fd;
    int64_t end = r->offsets[i] + (int64_t)r->iov[i].iov_len;
    while (j < r->count && r->offsets[j] == end && (r->fds == NULL || r->fds[j] == fd)) {
      end += (int64_t)r->iov[j].iov_len;
      j++;
    }
    int err = write_run(fd, r->iov + i, j - i, r->offsets[i]);
    if (err != 0) {
      r->err = err;
      return;
    }
    i = j;
  }
}

static void batch_complete(napi_env env, napi_status status, void *data) {
  batch_req *r = data;
  napi_value cb, global, arg, result;
  napi_get_reference_value(env, r->callback, &cb);
  napi_get_global(env, &global);
  if (status != napi_ok) arg = errno_error(env, ECANCELED, "pwritev");
  else if (r->err != 0) arg = errno_error(env, r->err, "pwritev");
  else napi_get_null(env, &arg);
  napi_call_function(env, global, cb, 1, &arg, &result);
  napi_delete_reference(env, r->callback);
  napi_delete_reference(env, r->buffers);
  napi_delete_async_work(env, r->work);
  free(r->iov);
  free(r->offsets);
  free(r->fds);
  free(r);
}

/* writeBatch(fd | fds[], buffers[], offsets[], callback(err)): each buffer whole at its offset, in order, on the
   pool; with an array of descriptors, buffer i goes to fds[i] (still in order across them). */
static napi_value write_batch(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], name;
  uint32_t count, ocount;
  bool is_array;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 4) {
    napi_throw_type_error(env, NULL, "writeBatch(fd, buffers, offsets, callback)");
    return NULL;
  }
  CHECK(napi_is_array(env, argv[1], &is_array));
  if (!is_array) {
    napi_throw_type_error(env, NULL, "writeBatch: buffers must be an array");
    return NULL;
  }
  CHECK(napi_get_array_length(env, argv[1], &count));
  CHECK(napi_get_array_length(env, argv[2], &ocount));
  if (count == 0 || count > BATCH_BUFFERS_MAX || ocount != count) {
    napi_throw_range_error(env, NULL, "writeBatch: 1 to 4096 buffers, one offset each");
    return NULL;
  }
  batch_req *r = calloc(1, sizeof *r);
  if (r != NULL) {
    r->iov = calloc(count, sizeof *r->iov);
    r->offsets = calloc(count, sizeof *r->offsets);
  }
  if (r == NULL || r->iov == NULL || r->offsets == NULL) {
    if (r != NULL) {
      free(r->iov);
      free(r->offsets);
    }
    free(r);
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  r->count = count;
  for (uint32_t i = 0; i < count; i++) {
    napi_value b, o;
    bool is_buffer;
    void *ptr;
    size_t len;
    int64_t off;
    if (napi_get_element(env, argv[1], i, &b) != napi_ok || napi_is_buffer(env, b, &is_buffer) != napi_ok || !is_buffer ||
        napi_get_buffer_info(env, b, &ptr, &len) != napi_ok || napi_get_element(env, argv[2], i, &o) != napi_ok ||
        napi_get_value_int64(env, o, &off) != napi_ok || off < 0 || len == 0) {
      free(r->iov);
      free(r->offsets);
      free(r);
      napi_throw_type_error(env, NULL, "writeBatch: each buffer is a non-empty Buffer with an offset >= 0");
      return NULL;
    }
    r->iov[i].iov_base = ptr;
    r->iov[i].iov_len = len;
    r->offsets[i] = off;
  }
  CHECK(napi_is_array(env, argv[0], &is_array));
  if (is_array) {
    uint32_t fcount;
    CHECK(napi_get_array_length(env, argv[0], &fcount));
    r->fds = fcount == count ? calloc(count, sizeof *r->fds) : NULL;
    for (uint32_t i = 0; r->fds != NULL && i < count; i++) {
      napi_value f;
      if (napi_get_element(env, argv[0], i, &f) != napi_ok || napi_get_value_int32(env, f, &r->fds[i]) != napi_ok || r->fds[i] < 0) {
        free(r->fds);
        r->fds = NULL;
      }
    }
    if (r->fds == NULL) {
      free(r->iov);
      free(r->offsets);
      free(r);
      napi_throw_type_error(env, NULL, "writeBatch: one descriptor >= 0 per buffer");
      return NULL;
    }
  } else {
    CHECK(napi_get_value_int32(env, argv[0], &r->fd));
  }
  CHECK(napi_create_reference(env, argv[1], 1, &r->buffers));
  CHECK(napi_create_reference(env, argv[3], 1, &r->callback));
  CHECK(napi_create_string_utf8(env, "ferry_io.writeBatch", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, batch_execute, batch_complete, r, &r->work));
  CHECK(napi_queue_async_work(env, r->work));
  return NULL;
}

/* seek(fd, offset, whence) -> offset, or -1 when there is no further data/hole (ENXIO). */
static napi_value seek(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], out;
  int fd, which;
  int64_t offset;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_value_int64(env, argv[1], &offset));
  CHECK(napi_get_value_int32(env, argv[2], &which));
  int whence = which == 0 ? SEEK_DATA : which == 1 ? SEEK_HOLE : SEEK_END;
  off_t r = lseek(fd, (off_t)offset, whence);
  if (r < 0) {
    if (errno == ENXIO) {
      CHECK(napi_create_int64(env, -1, &out));
      return out;
    }
    napi_throw(env, errno_error(env, errno, "lseek"));
    return NULL;
  }
  CHECK(napi_create_int64(env, (int64_t)r, &out));
  return out;
}

/*
 * readCached(fd, buffer, bufOffset, length, position) -> bytes read from the page cache
 * (possibly fewer than asked, 0 at end of file), or -1 when it would wait (EAGAIN: the
 * first page is not cached) or fails in any other way: the caller then reads on the pool.
 */
static napi_value read_cached(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], out;
  int fd;
  int64_t buf_offset, length, position;
  void *data;
  size_t data_len;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 5) {
    napi_throw_type_error(env, NULL, "readCached(fd, buffer, bufOffset, length, position)");
    return NULL;
  }
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  CHECK(napi_get_buffer_info(env, argv[1], &data, &data_len));
  CHECK(napi_get_value_int64(env, argv[2], &buf_offset));
  CHECK(napi_get_value_int64(env, argv[3], &length));
  CHECK(napi_get_value_int64(env, argv[4], &position));
  if (buf_offset < 0 || length < 0 || position < 0 || (uint64_t)buf_offset + (uint64_t)length > data_len) {
    napi_throw_range_error(env, NULL, "readCached: range outside the buffer");
    return NULL;
  }
  struct iovec v = {(char *)data + buf_offset, (size_t)length};
  ssize_t n;
  do n = preadv2(fd, &v, 1, (off_t)position, RWF_NOWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) n = -1; /* the read on the pool retries and reports any real error */
  CHECK(napi_create_int64(env, (int64_t)n, &out));
  return out;
}

/* The (fd, offset, length) arguments of the page-cache calls below. */
static napi_status fd_range_args(napi_env env, napi_callback_info info, int *fd, int64_t *offset, int64_t *length) {
  size_t argc = 3;
  napi_value argv[3];
  napi_status status;
  if ((status = napi_get_cb_info(env, info, &argc, argv, NULL, NULL)) != napi_ok) return status;
  if ((status = napi_get_value_int32(env, argv[0], fd)) != napi_ok) return status;
  if ((status = napi_get_value_int64(env, argv[1], offset)) != napi_ok) return status;
  return napi_get_value_int64(env, argv[2], length);
}

/* posix_fadvise(fd, offset, length, advice) for the hints below; advisory, but an error is thrown. */
static napi_value advise(napi_env env, napi_callback_info info, int advice) {
  int fd;
  int64_t offset, length;
  CHECK(fd_range_args(env, info, &fd, &offset, &length));
  int rc = posix_fadvise(fd, offset, length, advice);
  if (rc != 0) napi_throw(env, errno_error(env, rc, "posix_fadvise"));
  return NULL;
}

/* willNeed(fd, offset, length): start read-ahead (NBD_CMD_CACHE). */
static napi_value will_need(napi_env env, napi_callback_info info) {
  return advise(env, info, POSIX_FADV_WILLNEED);
}

/* dontNeed(fd, offset, length): the range's pages are not needed again (POSIX_FADV_DONTNEED):
 * clean ones leave the page cache, dirty ones are written back first. */
static napi_value dont_need(napi_env env, napi_callback_info info) {
  return advise(env, info, POSIX_FADV_DONTNEED);
}

/* cachedPages(fd, offset, length): how many pages of the range the page cache holds (Linux 6.5
 * cachestat(2)), or -1 where the kernel cannot tell. */
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct ferry_cachestat_range { uint64_t off, len; };
struct ferry_cachestat { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; };
static napi_value cached_pages(napi_env env, napi_callback_info info) {
  napi_value out;
  int fd;
  int64_t offset, length;
  CHECK(fd_range_args(env, info, &fd, &offset, &length));
  struct ferry_cachestat_range range = {(uint64_t)offset, (uint64_t)length};
  struct ferry_cachestat cs;
  memset(&cs, 0, sizeof cs);
  long rc = syscall(__NR_cachestat, fd, &range, &cs, 0);
  CHECK(napi_create_int64(env, rc == 0 ? (int64_t)cs.nr_cache : -1, &out));
  return out;
}

/* lockExclusive(fd): flock(LOCK_EX | LOCK_NB); throws EWOULDBLOCK when another open file holds it. */
static napi_value lock_exclusive(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  CHECK(napi_get_value_int32(env, argv[0], &fd));
  int rc;
  do rc = flock(fd, LOCK_EX | LOCK_NB); while (rc != 0 && errno == EINTR);
  if (rc != 0) napi_throw(env, errno_error(env, errno, "flock"));
  return NULL;
}

/* notify(socketPath, message): one datagram to a unix socket ('@' at the start: abstract namespace). */
static napi_value notify(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  struct sockaddr_un sa;
  char msg[1024];
  size_t plen = 0, mlen = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  CHECK(napi_get_value_string_utf8(env, argv[0], sa.sun_path, sizeof sa.sun_path, &plen));
  CHECK(napi_get_value_string_utf8(env, argv[1], msg, sizeof msg, &mlen));
  if (plen == 0 || plen >= sizeof sa.sun_path - 1 || mlen >= sizeof msg - 1) {
    napi_throw(env, errno_error(env, EINVAL, "notify"));
    return NULL;
  }
  if (sa.sun_path[0] == '@') sa.sun_path[0] = 0;
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    napi_throw(env, errno_error(env, errno, "socket"));
    return NULL;
  }
  ssize_t n;
  do n = sendto(fd, msg, mlen, MSG_NOSIGNAL, (struct sockaddr *)&sa, len); while (n < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (n < 0) napi_throw(env, errno_error(env, err, "sendto"));
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"space", NULL, space, NULL, NULL, NULL, napi_default, NULL},
    {"seek", NULL, seek, NULL, NULL, NULL, napi_default, NULL},
    {"willNeed", NULL, will_need, NULL, NULL, NULL, napi_default, NULL},
    {"dontNeed", NULL, dont_need, NULL, NULL, NULL, napi_default, NULL},
    {"cachedPages", NULL, cached_pages, NULL, NULL, NULL, napi_default, NULL},
    {"readCached", NULL, read_cached, NULL, NULL, NULL, napi_default, NULL},
    {"writeBatch", NULL, write_batch, NULL, NULL, NULL, napi_default, NULL},
    {"lockExclusive", NULL, lock_exclusive, NULL, NULL, NULL, napi_default, NULL},
    {"notify", NULL, notify, NULL, NULL, NULL, napi_default, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
