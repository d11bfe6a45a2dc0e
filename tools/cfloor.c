/* The ceiling of the compiled stack, for `make bench` (tools/bench.py builds and runs it): a FUSE
 * file system on libfuse3's low-level API served the way vhw's mount is (a fixed pool of threads,
 * each receiving, serving and replying itself; vhw/datapath/mount.c), holding one file, f.bin, the
 * size of a backing file, that does nothing but answer:
 *
 *   memory   with the bytes asked for, from memory (the FUSE round trip alone)
 *   pread    after a pread of exactly those bytes from the backing file (+ the disk: no decryption)
 *
 *   cc -O2 tools/cfloor.c $(pkg-config --cflags --libs fuse3) -o cfloor
 *   ./cfloor MODE BACKING MOUNTPOINT      (until unmounted; prints the request sizes it saw)
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 314

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

#define THREADS 4
#define MAX_REQUEST (1u << 20)

static int backing = -1;
static off_t size;
static int from_disk;
static unsigned long long requests, bytes_asked;
static pthread_mutex_t counting = PTHREAD_MUTEX_INITIALIZER;
static struct fuse_session *se;

static void attributes(fuse_ino_t ino, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_mode = ino == 1 ? S_IFDIR | 0555 : S_IFREG | 0444;
    st->st_nlink = ino == 1 ? 2 : 1;
    st->st_size = ino == 1 ? 0 : size;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    struct fuse_entry_param e;
    if (parent != 1 || strcmp(name, "f.bin") != 0) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    memset(&e, 0, sizeof e);
    e.ino = 2;
    e.attr_timeout = e.entry_timeout = 3600;
    attributes(2, &e.attr);
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct stat st;
    (void)fi;
    attributes(ino, &st);
    fuse_reply_attr(req, &st, 3600);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    if (ino != 2)
        fuse_reply_err(req, EISDIR);
    else
        fuse_reply_open(req, fi);
}

static __thread char *buffer;

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t n, off_t off, struct fuse_file_info *fi) {
    (void)ino;
    (void)fi;
    if (off >= size) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    if (n > (size_t)(size - off))
        n = (size_t)(size - off);
    if (n > MAX_REQUEST)
        n = MAX_REQUEST;
    pthread_mutex_lock(&counting);
    requests++;
    bytes_asked += n;
    pthread_mutex_unlock(&counting);
    if (from_disk && pread(backing, buffer, n, off) != (ssize_t)n) {
        fuse_reply_err(req, EIO);
        return;
    }
    fuse_reply_buf(req, buffer, n);
}

static const struct fuse_lowlevel_ops operations = {
    .lookup = op_lookup, .getattr = op_getattr, .open = op_open, .read = op_read,
};

static void *serve(void *unused) {
    struct fuse_buf buf;
    (void)unused;
    memset(&buf, 0, sizeof buf);
    buffer = aligned_alloc(4096, MAX_REQUEST);
    if (buffer == NULL)
        return NULL;
    memset(buffer, 'x', MAX_REQUEST);
    while (!fuse_session_exited(se)) {
        int got = fuse_session_receive_buf(se, &buf);
        if (got == -EINTR)
            continue;
        if (got <= 0)
            break;
        fuse_session_process_buf(se, &buf);
    }
    free(buf.mem);
    free(buffer);
    return NULL;
}

int main(int argc, char **argv) {
    char *fuse_argv[] = {argv[0], "-o", "ro,fsname=cfloor", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
    pthread_t threads[THREADS];
    struct stat st;

    if (argc != 4 || (strcmp(argv[1], "memory") != 0 && strcmp(argv[1], "pread") != 0)) {
        fprintf(stderr, "usage: cfloor memory|pread BACKING MOUNTPOINT\n");
        return 2;
    }
    from_disk = strcmp(argv[1], "pread") == 0;
    backing = open(argv[2], O_RDONLY);
    if (backing < 0 || fstat(backing, &st) != 0) {
        fprintf(stderr, "cfloor: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    size = st.st_size;
    se = fuse_session_new(&args, &operations, sizeof operations, NULL);
    if (se == NULL || fuse_session_mount(se, argv[3]) != 0) {
        fprintf(stderr, "cfloor: cannot mount at %s\n", argv[3]);
        return 1;
    }
    fuse_set_signal_handlers(se);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, serve, NULL);
    for (int i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    fuse_remove_signal_handlers(se);
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    fprintf(stderr, "cfloor %s: %llu requests, request sizes %llu bytes on average\n", argv[1], requests,
            requests ? bytes_asked / requests : 0);
    return 0;
}
