/* The decrypting, read-only FUSE file system of an HDD's installed titles (S31-S35), on libfuse3's
 * low-level API.
 *
 * Serving: a fixed pool of threads, each receiving a request, serving it and replying itself
 * (fuse_session_receive_buf, then fuse_session_process_buf). libfuse's own multi-threaded loop hands
 * requests between threads and, with its defaults, makes and ends threads as it goes; measured on
 * this kind of machine it served random misses more slowly than one thread (README, "Performance").
 *
 * Reading: a file's stream on the image is its blocks' ciphertext (4 KiB blocks by default), each
 * block where a plain file would have its data, page-aligned, then the blocks' GCM tags. A read fetches the
 * blocks it touches with one pread per extent they lie in, opens each in place against its tag, and
 * replies from the same buffer: no other copy. The tags are read 64 KiB at a time (4,096 tags, the
 * tags of 16 MiB of data) the first time a block among them is read, and kept: 0.4% of the data read.
 * A block whose tag does not verify is EIO for that read and a line in the log; nothing of it is
 * sent and the mount stays up.
 *
 * Keys: each file's stream key lies in one region of memory that is locked (never swapped),
 * left out of core dumps and wiped when the keys are revoked (the card left) and when the mount
 * ends. The threads' cipher contexts hold the expanded keys; revoking resets them, which has
 * OpenSSL cleanse them. A read holds the keys' read lock for as long as it decrypts; revoking takes
 * the write lock, so no read is half-way through a key being wiped.
 *
 * Stopping: as libfuse's own loop does, a thread may be cancelled only while it waits for a request
 * (its read of /dev/fuse); every request it took is answered first.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 314

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

#include "core.h"

#define CACHE_TIMEOUT 3600.0 /* seconds the kernel may trust entries and attributes: titles never change */
#define TAG_SPAN 4096        /* tags read at once: 64 KiB, the tags of 16 MiB of 4 KiB blocks */
#define MAX_REQUEST (1u << 20) /* FUSE's largest read: max_pages 256 */
#define PAGE 4096u

struct file {
    uint64_t size;
    unsigned shift;
    uint64_t blocks;
    uint64_t tags_at; /* where the tags start in the stream: after the ciphertext, as long as the plaintext */
    struct vhw_extent *extents;
    size_t n_extents;
    struct vhw_stream stream; /* .key points into the locked region */
    unsigned char ad[VHW_AD_MAX];
    char *label;
    pthread_mutex_t tag_lock;
    unsigned char *_Atomic *spans; /* TAG_SPAN tags each, read when first needed */
    size_t n_spans;
};

struct node {
    uint64_t parent;
    char *name;
    int64_t file;
    int64_t mtime_ns;
    bool readable;
    bool executable;
    uint64_t *children; /* inodes, sorted by name */
    size_t n_children;
    size_t subdirs;
};

struct worker {
    struct vhw_mount *m;
    pthread_t thread;
    bool started;
    EVP_CIPHER_CTX *ctx;
    const struct file *keyed; /* whose key ctx holds, or NULL */
    unsigned char *buf;       /* MAX_REQUEST bytes and two blocks more: a read not on block bounds */
    size_t buf_size;
};

struct vhw_mount {
    int fd;
    uint64_t nominal_size;
    struct node *nodes; /* nodes[inode], nodes[0] unused */
    size_t n_nodes;     /* inodes 1 .. n_nodes */
    struct file *files;
    size_t n_files;
    unsigned char *keys; /* the locked region */
    size_t keys_size;
    pthread_rwlock_t keys_lock;
    atomic_bool revoked;
    uid_t uid;
    gid_t gid;
    struct fuse_session *se;
    bool mounted;
    struct worker *workers;
    unsigned n_workers;
    pthread_mutex_t done_lock;
    pthread_cond_t done;
    unsigned running;
    bool stopped;
};

static __thread struct worker *self; /* the worker serving the current request */

/* -- the tree ------------------------------------------------------------------------------------ */

static const struct node *node_of(const struct vhw_mount *m, fuse_ino_t ino) {
    return ino >= 1 && ino <= m->n_nodes ? &m->nodes[ino] : NULL;
}

static bool readable(const struct vhw_mount *m, const struct node *n) {
    return n->readable && !atomic_load_explicit(&m->revoked, memory_order_acquire);
}

static void attributes(const struct vhw_mount *m, fuse_ino_t ino, struct stat *st) {
    const struct node *n = &m->nodes[ino];
    const bool r = readable(m, n);

    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = m->uid;
    st->st_gid = m->gid;
    st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = n->mtime_ns / 1000000000;
    st->st_atim.tv_nsec = st->st_mtim.tv_nsec = st->st_ctim.tv_nsec = n->mtime_ns % 1000000000;
    st->st_blksize = PAGE;
    if (n->file < 0) {
        st->st_mode = S_IFDIR | (r ? 0555 : 0111);
        st->st_nlink = 2 + n->subdirs;
    } else {
        st->st_mode = S_IFREG | (r ? (n->executable ? 0555 : 0444) : 0);
        st->st_nlink = 1;
        st->st_size = (off_t)m->files[n->file].size;
    }
    st->st_blocks = (st->st_size + 511) / 512;
}

static void reply_entry(fuse_req_t req, const struct vhw_mount *m, fuse_ino_t ino) {
    struct fuse_entry_param e;

    memset(&e, 0, sizeof e);
    e.ino = ino;
    e.attr_timeout = e.entry_timeout = CACHE_TIMEOUT;
    attributes(m, ino, &e.attr);
    fuse_reply_entry(req, &e);
}

static int by_name(const void *a, const void *b, void *arg) {
    const struct node *nodes = arg;
    return strcmp(nodes[*(const uint64_t *)a].name, nodes[*(const uint64_t *)b].name);
}

/* The child of ``dir`` called ``name``, or 0. */
static uint64_t child(const struct vhw_mount *m, const struct node *dir, const char *name) {
    size_t lo = 0, hi = dir->n_children;

    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        const int c = strcmp(name, m->nodes[dir->children[mid]].name);
        if (c == 0)
            return dir->children[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return 0;
}

/* -- reading the image ------------------------------------------------------------------------- */

/* ``len`` bytes of ``f``'s stream from ``logical``, through its extents; 0 or an errno. */
static int read_stream(const struct vhw_mount *m, const struct file *f, uint64_t logical, unsigned char *buf,
                       size_t len) {
    size_t lo = 0, hi = f->n_extents;

    while (hi - lo > 1) { /* the last extent that starts at or before ``logical`` */
        const size_t mid = lo + (hi - lo) / 2;
        if (f->extents[mid].logical <= logical)
            lo = mid;
        else
            hi = mid;
    }
    for (size_t i = lo; len > 0; i++) {
        const struct vhw_extent *e;
        uint64_t skip, n;

        if (i >= f->n_extents)
            return EIO;
        e = &f->extents[i];
        skip = logical - e->logical;
        if (logical < e->logical || skip >= e->length)
            return EIO;
        n = e->length - skip < len ? e->length - skip : len;
        while (n > 0) {
            const ssize_t got = pread(m->fd, buf, n, (off_t)(e->offset + skip));
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0)
                return got < 0 ? errno : EIO; /* (0: the image is shorter than its catalog says) */
            buf += got;
            skip += (uint64_t)got;
            logical += (uint64_t)got;
            len -= (size_t)got;
            n -= (uint64_t)got;
        }
    }
    return 0;
}

/* The tag of ``block``, reading its span of tags the first time; NULL when they cannot be read. */
static const unsigned char *tag_of(const struct vhw_mount *m, struct file *f, uint64_t block) {
    const size_t span = (size_t)(block / TAG_SPAN);
    unsigned char *tags = atomic_load_explicit(&f->spans[span], memory_order_acquire);

    if (tags == NULL) {
        pthread_mutex_lock(&f->tag_lock);
        tags = atomic_load_explicit(&f->spans[span], memory_order_relaxed);
        if (tags == NULL) {
            const uint64_t first = (uint64_t)span * TAG_SPAN;
            const uint64_t count = f->blocks - first < TAG_SPAN ? f->blocks - first : TAG_SPAN;
            tags = malloc(count * VHW_TAG_SIZE);
            if (tags != NULL && read_stream(m, f, f->tags_at + first * VHW_TAG_SIZE, tags, count * VHW_TAG_SIZE)) {
                free(tags);
                tags = NULL;
            }
            if (tags != NULL)
                atomic_store_explicit(&f->spans[span], tags, memory_order_release);
        }
        pthread_mutex_unlock(&f->tag_lock);
        if (tags == NULL)
            return NULL;
    }
    return tags + (block % TAG_SPAN) * VHW_TAG_SIZE;
}

static uint64_t block_length(const struct file *f, uint64_t block) {
    const uint64_t start = block << f->shift;
    const uint64_t size = (uint64_t)1 << f->shift;
    if (start >= f->size)
        return 0;
    return f->size - start < size ? f->size - start : size;
}

/* -- requests ------------------------------------------------------------------------------------ */

static void op_init(void *userdata, struct fuse_conn_info *conn) {
    (void)userdata;
    /* titles never change: no data invalidation on a changed mtime; no splice (a copy anyway) */
    conn->want &= ~(unsigned)(FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
                              FUSE_CAP_SPLICE_MOVE);
    if (conn->capable & FUSE_CAP_ASYNC_READ)
        conn->want |= FUSE_CAP_ASYNC_READ;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    const struct vhw_mount *m = fuse_req_userdata(req);
    const struct node *dir = node_of(m, parent);
    uint64_t ino;

    if (dir == NULL || dir->file >= 0) {
        fuse_reply_err(req, dir == NULL ? ENOENT : ENOTDIR);
        return;
    }
    if (strcmp(name, ".") == 0)
        ino = parent;
    else if (strcmp(name, "..") == 0)
        ino = dir->parent;
    else
        ino = child(m, dir, name);
    if (ino == 0)
        fuse_reply_err(req, ENOENT);
    else
        reply_entry(req, m, ino);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    (void)ino;
    (void)nlookup;
    fuse_reply_none(req); /* every node lives as long as the mount */
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
    (void)count;
    (void)forgets;
    fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    const struct vhw_mount *m = fuse_req_userdata(req);
    struct stat st;

    (void)fi;
    if (node_of(m, ino) == NULL) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    attributes(m, ino, &st);
    fuse_reply_attr(req, &st, CACHE_TIMEOUT);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    const struct vhw_mount *m = fuse_req_userdata(req);
    const struct node *n = node_of(m, ino);

    if (n == NULL)
        fuse_reply_err(req, ENOENT);
    else if (n->file >= 0)
        fuse_reply_err(req, ENOTDIR);
    else if (!readable(m, n))
        fuse_reply_err(req, EACCES);
    else
        fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    const struct vhw_mount *m = fuse_req_userdata(req);
    const struct node *dir = node_of(m, ino);
    char *buf;
    size_t used = 0;

    (void)fi;
    if (dir == NULL || dir->file >= 0 || off < 0) {
        fuse_reply_err(req, dir == NULL ? ENOENT : off < 0 ? EINVAL : ENOTDIR);
        return;
    }
    if (!readable(m, dir)) {
        fuse_reply_err(req, EACCES);
        return;
    }
    buf = malloc(size ? size : 1);
    if (buf == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    for (size_t i = (size_t)off; i < dir->n_children; i++) {
        struct stat st;
        size_t need;

        attributes(m, dir->children[i], &st);
        need = fuse_add_direntry(req, buf + used, size - used, m->nodes[dir->children[i]].name, &st, (off_t)i + 1);
        if (need > size - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_release_nothing(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    const struct vhw_mount *m = fuse_req_userdata(req);
    const struct node *n = node_of(m, ino);

    if (n == NULL)
        fuse_reply_err(req, ENOENT);
    else if (n->file < 0)
        fuse_reply_err(req, EISDIR);
    else if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & (O_TRUNC | O_APPEND)))
        fuse_reply_err(req, EROFS);
    else if (!readable(m, n)) /* another user's title, or the card left */
        fuse_reply_err(req, EACCES);
    else {
        fi->keep_cache = 1; /* installed titles never change: the kernel keeps its pages between opens */
        fuse_reply_open(req, fi);
    }
}

/* Decrypt blocks [first, last] of ``f`` into this worker's buffer; 0 or an errno. */
static int decrypt(struct vhw_mount *m, struct worker *w, struct file *f, uint64_t first, uint64_t last) {
    const size_t len = (size_t)(((last - first) << f->shift) + block_length(f, last));
    int err;

    if (len > w->buf_size)
        return EIO;
    if (w->keyed != f) {
        if (vhw_gcm_key(w->ctx, f->stream.key, 0) != 0)
            return EIO;
        w->keyed = f;
    }
    err = read_stream(m, f, first << f->shift, w->buf, len);
    if (err)
        return err;
    for (uint64_t b = first; b <= last; b++) {
        const unsigned char *tag = tag_of(m, f, b);
        if (tag == NULL)
            return EIO;
        if (vhw_block_open(w->ctx, &f->stream, b, w->buf + ((b - first) << f->shift), block_length(f, b), tag) != 0) {
            fprintf(stderr, "ERROR vhw.datapath: title %s: block %llu failed authentication (damaged HDD);"
                            " read refused\n", f->label, (unsigned long long)b);
            return EIO;
        }
    }
    return 0;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    struct vhw_mount *m = fuse_req_userdata(req);
    const struct node *n = node_of(m, ino);
    struct worker *w = self;
    struct file *f;
    uint64_t end, first, last;
    int err;

    (void)fi;
    if (n == NULL || n->file < 0 || off < 0 || w == NULL) {
        fuse_reply_err(req, n == NULL ? ENOENT : n->file < 0 ? EISDIR : EINVAL);
        return;
    }
    f = &m->files[n->file];
    if ((uint64_t)off >= f->size || size == 0) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    end = (uint64_t)off + size < f->size ? (uint64_t)off + size : f->size;
    first = (uint64_t)off >> f->shift;
    last = (end - 1) >> f->shift;
    pthread_rwlock_rdlock(&m->keys_lock);
    if (!readable(m, n))
        err = EACCES;
    else
        err = decrypt(m, w, f, first, last);
    pthread_rwlock_unlock(&m->keys_lock);
    if (err)
        fuse_reply_err(req, err);
    else
        fuse_reply_buf(req, (const char *)w->buf + ((uint64_t)off - (first << f->shift)),
                       (size_t)(end - (uint64_t)off));
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask) {
    const struct vhw_mount *m = fuse_req_userdata(req);
    const struct node *n = node_of(m, ino);

    if (n == NULL)
        fuse_reply_err(req, ENOENT);
    else if (mask & W_OK)
        fuse_reply_err(req, EACCES);
    else
        fuse_reply_err(req, readable(m, n) || mask == F_OK ? 0 : EACCES);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
    const struct vhw_mount *m = fuse_req_userdata(req);
    struct statvfs s;

    (void)ino;
    memset(&s, 0, sizeof s);
    s.f_bsize = s.f_frsize = PAGE;
    s.f_blocks = m->nominal_size / PAGE;
    s.f_files = m->n_nodes;
    s.f_namemax = 255;
    fuse_reply_statfs(req, &s); /* read-only: nothing free */
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
    (void)ino;
    (void)name;
    (void)size;
    fuse_reply_err(req, ENODATA);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    (void)ino;
    if (size == 0)
        fuse_reply_xattr(req, 0);
    else
        fuse_reply_buf(req, NULL, 0);
}

static const struct fuse_lowlevel_ops operations = {
    .init = op_init,
    .lookup = op_lookup,
    .forget = op_forget,
    .forget_multi = op_forget_multi,
    .getattr = op_getattr,
    .open = op_open,
    .read = op_read,
    .release = op_release_nothing,
    .opendir = op_opendir,
    .readdir = op_readdir,
    .releasedir = op_release_nothing,
    .access = op_access,
    .statfs = op_statfs,
    .getxattr = op_getxattr,
    .listxattr = op_listxattr,
};

/* -- the threads ----------------------------------------------------------------------------------- */

static void free_request_buffer(void *buf) {
    free(((struct fuse_buf *)buf)->mem);
}

static void *serve(void *arg) {
    struct worker *w = arg;
    struct vhw_mount *m = w->m;
    struct fuse_buf buf;
    sigset_t all;

    sigfillset(&all); /* signals go to the process's main thread, whose handlers stop the mount */
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    self = w;
    memset(&buf, 0, sizeof buf);
    pthread_cleanup_push(free_request_buffer, &buf);
    while (!fuse_session_exited(m->se)) {
        int got;

        pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL); /* only while waiting for a request */
        got = fuse_session_receive_buf(m->se, &buf);
        pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
        if (got == -EINTR || got == -EAGAIN)
            continue;
        if (got <= 0)
            break; /* unmounted (ENODEV makes libfuse mark the session exited), or an error */
        fuse_session_process_buf(m->se, &buf);
    }
    pthread_cleanup_pop(1);
    pthread_mutex_lock(&m->done_lock);
    m->running--;
    pthread_cond_broadcast(&m->done);
    pthread_mutex_unlock(&m->done_lock);
    return NULL;
}

int vhw_mount_start(struct vhw_mount *m, const char *mountpoint, const char *options, unsigned threads) {
    char *argv[] = {"vhw", "-o", (char *)options, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);

    if (m->se != NULL || threads == 0 || threads > 64)
        return -EINVAL;
    m->se = fuse_session_new(&args, &operations, sizeof operations, m);
    if (m->se == NULL)
        return -EINVAL;
    if (fuse_session_mount(m->se, mountpoint) != 0) {
        fuse_session_destroy(m->se);
        m->se = NULL;
        return -EIO;
    }
    m->mounted = true;
    m->workers = calloc(threads, sizeof *m->workers);
    if (m->workers == NULL)
        goto failed;
    m->n_workers = threads;
    for (unsigned i = 0; i < threads; i++) {
        struct worker *w = &m->workers[i];

        w->m = m;
        w->buf_size = MAX_REQUEST + 2 * ((size_t)1 << 16);
        w->ctx = EVP_CIPHER_CTX_new();
        if (w->ctx == NULL || posix_memalign((void **)&w->buf, PAGE, w->buf_size) != 0) {
            w->buf = NULL;
            goto failed;
        }
    }
    pthread_mutex_lock(&m->done_lock);
    for (unsigned i = 0; i < threads; i++) {
        if (pthread_create(&m->workers[i].thread, NULL, serve, &m->workers[i]) != 0) {
            pthread_mutex_unlock(&m->done_lock);
            goto failed;
        }
        m->workers[i].started = true;
        m->running++;
    }
    pthread_mutex_unlock(&m->done_lock);
    return 0;
failed:
    vhw_mount_stop(m);
    return -ENOMEM;
}

int vhw_mount_wait(struct vhw_mount *m, double timeout) {
    struct timespec until;
    int ended;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)timeout;
    until.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&m->done_lock);
    while (m->running > 0 && !m->stopped)
        if (pthread_cond_timedwait(&m->done, &m->done_lock, &until) == ETIMEDOUT)
            break;
    ended = m->running == 0 || m->stopped;
    pthread_mutex_unlock(&m->done_lock);
    return ended;
}

void vhw_mount_revoke(struct vhw_mount *m) {
    pthread_rwlock_wrlock(&m->keys_lock);
    atomic_store_explicit(&m->revoked, true, memory_order_release);
    explicit_bzero(m->keys, m->keys_size);
    for (unsigned i = 0; i < m->n_workers; i++) {
        if (m->workers[i].ctx != NULL)
            EVP_CIPHER_CTX_reset(m->workers[i].ctx); /* (OpenSSL cleanses the key schedule) */
        m->workers[i].keyed = NULL;
    }
    pthread_rwlock_unlock(&m->keys_lock);
}

void vhw_mount_invalidate(struct vhw_mount *m) {
    if (m->se == NULL)
        return;
    for (uint64_t ino = 1; ino <= m->n_nodes; ino++)
        fuse_lowlevel_notify_inval_inode(m->se, ino, 0, 0); /* (ENOENT: the kernel never looked it up) */
}

void vhw_mount_stop(struct vhw_mount *m) {
    pthread_mutex_lock(&m->done_lock);
    if (m->stopped) {
        pthread_mutex_unlock(&m->done_lock);
        return;
    }
    m->stopped = true;
    pthread_cond_broadcast(&m->done);
    pthread_mutex_unlock(&m->done_lock);
    if (m->se != NULL)
        fuse_session_exit(m->se);
    for (unsigned i = 0; i < m->n_workers; i++)
        if (m->workers[i].started)
            pthread_cancel(m->workers[i].thread); /* (acted on only while it waits for a request) */
    for (unsigned i = 0; i < m->n_workers; i++) {
        struct worker *w = &m->workers[i];
        if (w->started)
            pthread_join(w->thread, NULL);
        w->started = false;
        EVP_CIPHER_CTX_free(w->ctx);
        w->ctx = NULL;
        free(w->buf);
        w->buf = NULL;
    }
    if (m->se != NULL) {
        if (m->mounted)
            fuse_session_unmount(m->se);
        fuse_session_destroy(m->se);
        m->se = NULL;
        m->mounted = false;
    }
}

/* -- building and freeing ------------------------------------------------------------------------- */

static int fail(const char **message, const char *text) {
    *message = text;
    errno = EINVAL;
    return -1;
}

static bool valid_name(const char *name) {
    const size_t n = strnlen(name, 256);
    return n > 0 && n <= 255 && strchr(name, '/') == NULL && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

/* The stream of a file: its blocks' ciphertext (as long as its plaintext), then their tags
 * (vhw.crypto.BlockLayout). */
static int check_file(const struct vhw_file_spec *s, uint64_t image_size, const char **message) {
    uint64_t blocks, need, have = 0;

    if (s->block_shift < 12 || s->block_shift > 16 || s->ad_len > VHW_AD_MAX || s->n_extents == 0)
        return fail(message, "a file's block size, associated data or extents are out of range");
    blocks = s->size == 0 ? 1 : ((s->size - 1) >> s->block_shift) + 1;
    if (s->size > (UINT64_MAX >> 17) || blocks > (UINT64_MAX >> 17))
        return fail(message, "a file is too large");
    need = s->size + blocks * VHW_TAG_SIZE;
    for (size_t i = 0; i < s->n_extents; i++) {
        const struct vhw_extent *e = &s->extents[i];
        if (e->logical != have || e->length == 0 || e->offset > image_size || e->length > image_size - e->offset)
            return fail(message, "a file's extents are not in order or lie outside the image");
        have += e->length;
    }
    if (have < need)
        return fail(message, "a file's extents are shorter than its blocks and tags");
    return 0;
}

static int check_tree(const struct vhw_node_spec *nodes, size_t n_nodes, size_t n_files, const char **message) {
    if (n_nodes == 0 || n_nodes > (1u << 30) || nodes[0].parent != 1 || nodes[0].file != -1)
        return fail(message, "the tree has no root folder");
    for (size_t i = 1; i < n_nodes; i++) {
        const struct vhw_node_spec *n = &nodes[i];
        if (n->parent < 1 || n->parent > i || nodes[n->parent - 1].file != -1) /* parents come first */
            return fail(message, "a node's parent is not a folder listed before it");
        if (n->name == NULL || !valid_name(n->name))
            return fail(message, "a node's name is not a file name");
        if (n->file < -1 || n->file >= (int64_t)n_files || n->mtime_ns < 0)
            return fail(message, "a node names no file");
    }
    return 0;
}

struct vhw_mount *vhw_mount_new(int image_fd, uint64_t nominal_size, const struct vhw_node_spec *nodes,
                                size_t n_nodes, const struct vhw_file_spec *files, size_t n_files,
                                const char **message) {
    struct vhw_mount *m;

    *message = NULL;
    if (check_tree(nodes, n_nodes, n_files, message) != 0)
        return NULL;
    for (size_t i = 0; i < n_files; i++)
        if (check_file(&files[i], nominal_size, message) != 0)
            return NULL;
    if (vhw_gcm_init() != 0) {
        *message = "OpenSSL has no AES-256-GCM";
        errno = ENOSYS;
        return NULL;
    }
    m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    m->fd = image_fd;
    m->nominal_size = nominal_size;
    m->uid = getuid();
    m->gid = getgid();
    pthread_rwlock_init(&m->keys_lock, NULL);
    pthread_mutex_init(&m->done_lock, NULL);
    pthread_cond_init(&m->done, NULL);
    m->n_nodes = n_nodes;
    m->nodes = calloc(n_nodes + 1, sizeof *m->nodes);
    m->n_files = n_files;
    m->files = calloc(n_files ? n_files : 1, sizeof *m->files);
    m->keys_size = (n_files * VHW_KEY_SIZE + PAGE - 1) / PAGE * PAGE;
    if (m->keys_size == 0)
        m->keys_size = PAGE;
    m->keys = mmap(NULL, m->keys_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m->keys == MAP_FAILED) {
        m->keys = NULL;
        goto failed;
    }
    if (mlock(m->keys, m->keys_size) != 0) {
        *message = "cannot lock the keys in memory (see `ulimit -l`)";
        goto failed;
    }
    madvise(m->keys, m->keys_size, MADV_DONTDUMP);
    if (m->nodes == NULL || m->files == NULL)
        goto failed;
    for (size_t i = 0; i < n_files; i++) {
        const struct vhw_file_spec *s = &files[i];
        struct file *f = &m->files[i];

        f->size = s->size;
        f->shift = s->block_shift;
        f->blocks = s->size == 0 ? 1 : ((s->size - 1) >> s->block_shift) + 1;
        f->tags_at = f->size;
        pthread_mutex_init(&f->tag_lock, NULL);
        f->n_spans = (size_t)((f->blocks + TAG_SPAN - 1) / TAG_SPAN);
        f->spans = calloc(f->n_spans, sizeof *f->spans);
        f->extents = malloc(s->n_extents * sizeof *f->extents);
        f->label = strdup(s->label ? s->label : "?");
        if (f->spans == NULL || f->extents == NULL || f->label == NULL)
            goto failed;
        memcpy(f->extents, s->extents, s->n_extents * sizeof *f->extents);
        f->n_extents = s->n_extents;
        memcpy(m->keys + i * VHW_KEY_SIZE, s->key, VHW_KEY_SIZE);
        memcpy(f->ad, s->ad, s->ad_len);
        f->stream.key = m->keys + i * VHW_KEY_SIZE;
        f->stream.ad = f->ad;
        f->stream.ad_len = s->ad_len;
    }
    for (size_t i = 0; i < n_nodes; i++) {
        struct node *n = &m->nodes[i + 1];

        n->parent = nodes[i].parent;
        n->file = nodes[i].file;
        n->mtime_ns = nodes[i].mtime_ns;
        n->readable = nodes[i].readable != 0;
        n->executable = nodes[i].executable != 0;
        n->name = strdup(i == 0 ? "" : nodes[i].name);
        if (n->name == NULL)
            goto failed;
        if (i > 0) {
            m->nodes[n->parent].n_children++;
            m->nodes[n->parent].subdirs += n->file < 0;
        }
    }
    for (size_t i = 1; i <= n_nodes; i++) {
        struct node *n = &m->nodes[i];
        n->children = calloc(n->n_children ? n->n_children : 1, sizeof *n->children);
        if (n->children == NULL)
            goto failed;
        n->n_children = 0;
    }
    for (size_t i = 2; i <= n_nodes; i++) {
        struct node *parent = &m->nodes[m->nodes[i].parent];
        parent->children[parent->n_children++] = i;
    }
    for (size_t i = 1; i <= n_nodes; i++) {
        struct node *n = &m->nodes[i];
        qsort_r(n->children, n->n_children, sizeof *n->children, by_name, m->nodes);
        for (size_t j = 1; j < n->n_children; j++)
            if (strcmp(m->nodes[n->children[j - 1]].name, m->nodes[n->children[j]].name) == 0) {
                fail(message, "two nodes of one folder have the same name");
                goto failed;
            }
    }
    return m;
failed:
    if (*message == NULL) {
        *message = "out of memory";
        errno = ENOMEM;
    }
    {
        const int err = errno;
        vhw_mount_free(m);
        errno = err;
    }
    return NULL;
}

void vhw_mount_free(struct vhw_mount *m) {
    if (m == NULL)
        return;
    vhw_mount_stop(m);
    if (m->keys != NULL) {
        explicit_bzero(m->keys, m->keys_size);
        munlock(m->keys, m->keys_size);
        munmap(m->keys, m->keys_size);
    }
    for (size_t i = 0; m->files != NULL && i < m->n_files; i++) {
        struct file *f = &m->files[i];
        for (size_t s = 0; f->spans != NULL && s < f->n_spans; s++)
            free(atomic_load(&f->spans[s]));
        free(f->spans);
        free(f->extents);
        free(f->label);
        explicit_bzero(f->ad, sizeof f->ad);
        pthread_mutex_destroy(&f->tag_lock);
    }
    for (size_t i = 1; m->nodes != NULL && i <= m->n_nodes; i++) {
        free(m->nodes[i].name);
        free(m->nodes[i].children);
    }
    free(m->nodes);
    free(m->files);
    free(m->workers);
    pthread_rwlock_destroy(&m->keys_lock);
    pthread_mutex_destroy(&m->done_lock);
    pthread_cond_destroy(&m->done);
    free(m);
}
