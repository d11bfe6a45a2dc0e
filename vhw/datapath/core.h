/* vhw's compiled data path: what its parts share.
 *
 * Two parts, both driven from Python (vhw/datapath/__init__.py), which derives every key, checks
 * every record of the HDD image and hands this side only what it needs:
 *
 *   blocks.c  AES-256-GCM over a stream's chunks or blocks (OpenSSL's libcrypto), and the
 *             install's re-sealing of a disc's chunks into HDD blocks;
 *   mount.c   the decrypting, read-only FUSE file system of the installed titles, served by a
 *             fixed pool of threads on libfuse3's low-level API.
 *
 * module.c binds both to Python. Nothing here parses bytes of a device file: the only bytes read
 * from the HDD image are sealed blocks and their tags, and a block is used only once its tag
 * verifies.
 */
#ifndef VHW_CORE_H
#define VHW_CORE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define VHW_KEY_SIZE 32   /* AES-256 */
#define VHW_TAG_SIZE 16   /* the full GCM tag */
#define VHW_NONCE_SIZE 12 /* GCM's native nonce: 4 zero bytes, then the block index (big-endian) */
#define VHW_AD_MAX 256    /* the associated data's prefix; the block index (8 bytes) follows it */

/* How one stream is sealed: its key and the prefix of every block's associated data. The nonce of
 * block i is 0^32 || be64(i) and its associated data prefix || be64(i) (vhw.crypto.ChunkCipher). */
struct vhw_stream {
    const unsigned char *key; /* VHW_KEY_SIZE bytes */
    const unsigned char *ad;  /* ad_len bytes, at most VHW_AD_MAX */
    size_t ad_len;
};

/* -- blocks.c ---------------------------------------------------------------------------------- */

/* Fetch AES-256-GCM from OpenSSL's default provider once; 0 on success. */
int vhw_gcm_init(void);
void vhw_gcm_cleanup(void);

/* Key ``ctx`` with ``key`` for decryption (encrypt = 0) or encryption (encrypt = 1). */
int vhw_gcm_key(EVP_CIPHER_CTX *ctx, const unsigned char key[VHW_KEY_SIZE], int encrypt);

/* One AES-256-GCM message in place, with this nonce and associated data (``ctx`` keyed): open
 * returns 0 when the tag verifies, -1 when it does not (the buffer then holds no plaintext a caller
 * may use); seal writes the tag. The published NIST vectors pin these (tests/test_vectors.py). */
int vhw_gcm_open(EVP_CIPHER_CTX *ctx, const unsigned char nonce[VHW_NONCE_SIZE], const unsigned char *ad,
                 size_t ad_len, unsigned char *buf, size_t len, const unsigned char tag[VHW_TAG_SIZE]);
int vhw_gcm_seal(EVP_CIPHER_CTX *ctx, const unsigned char nonce[VHW_NONCE_SIZE], const unsigned char *ad,
                 size_t ad_len, unsigned char *buf, size_t len, unsigned char tag[VHW_TAG_SIZE]);

/* Block (or chunk) ``index`` of stream ``s``, in place: vhw_gcm_open / _seal with the unit's nonce
 * and associated data. ``ctx`` is keyed for ``s``. */
int vhw_block_open(EVP_CIPHER_CTX *ctx, const struct vhw_stream *s, uint64_t index, unsigned char *buf, size_t len,
                   const unsigned char tag[VHW_TAG_SIZE]);
int vhw_block_seal(EVP_CIPHER_CTX *ctx, const struct vhw_stream *s, uint64_t index, unsigned char *buf, size_t len,
                   unsigned char tag[VHW_TAG_SIZE]);

/* The install's inner loop: open ``count`` chunks of a disc stream (sealed chunks of ``chunk_size``
 * bytes of plaintext, each followed by its tag, as the disc holds them: ``in`` from chunk ``first``
 * on) and seal their plaintext as HDD blocks of ``1 << block_shift`` bytes, the ciphertext into
 * ``data`` (block after block) and the tags into ``tags``. ``disc_size`` and ``hdd_size`` are the
 * file's plaintext size (the two streams hold the same file). Returns the number of ciphertext bytes
 * written to ``data``, or -1 - i when disc chunk i does not verify, or VHW_RESEAL_ERROR. */
#define VHW_RESEAL_ERROR INT64_MIN
struct vhw_reseal {
    struct vhw_stream disc;
    struct vhw_stream hdd;
    uint64_t size;        /* the file's plaintext bytes */
    size_t chunk_size;    /* the disc's chunks: 64 KiB */
    unsigned block_shift; /* the HDD's blocks: 4 KiB = 12 */
    uint64_t first;       /* the first disc chunk */
    uint64_t count;       /* disc chunks to re-seal */
};
int64_t vhw_reseal(const struct vhw_reseal *job, const unsigned char *in, size_t in_len, unsigned char *data,
                   size_t data_len, unsigned char *tags, size_t tags_len);

/* -- mount.c ------------------------------------------------------------------------------------ */

struct vhw_extent {
    uint64_t offset;  /* in the image */
    uint64_t length;
    uint64_t logical; /* where it starts in the file's stream (data blocks, then their tags) */
};

struct vhw_file_spec {
    uint64_t size; /* plaintext bytes */
    unsigned block_shift;
    const struct vhw_extent *extents; /* in stream order, ``logical`` filled in */
    size_t n_extents;
    const unsigned char *key; /* VHW_KEY_SIZE bytes: copied into locked memory */
    const unsigned char *ad;
    size_t ad_len;
    const char *label; /* "TITLE, file PATH", for the log */
};

struct vhw_node_spec {
    uint64_t parent; /* inode; the root (inode 1) is its own parent */
    const char *name;
    int64_t file; /* index into the files, or -1 for a folder */
    int64_t mtime_ns;
    int readable;   /* 0: another user's title, listed but never opened */
    int executable; /* a file's x bits */
};

struct vhw_mount;

/* A mount's tree, files and keys, ready to serve (nothing is mounted yet). NULL with errno set
 * (EINVAL: a spec that does not hold together; ENOMEM; EPERM or ENOMEM from mlock: the keys
 * cannot be kept out of swap). ``message`` then says why in a line. */
struct vhw_mount *vhw_mount_new(int image_fd, uint64_t nominal_size, const struct vhw_node_spec *nodes,
                                size_t n_nodes, const struct vhw_file_spec *files, size_t n_files,
                                const char **message);
/* Mount at ``mountpoint`` with FUSE ``options`` and start ``threads`` threads; 0 or -errno. */
int vhw_mount_start(struct vhw_mount *m, const char *mountpoint, const char *options, unsigned threads);
/* Wait up to ``timeout`` seconds for every thread to end (the file system was unmounted); 1 when
 * they have. */
int vhw_mount_wait(struct vhw_mount *m, double timeout);
/* Wipe every key and refuse every open and read from now on. */
void vhw_mount_revoke(struct vhw_mount *m);
/* Have the kernel drop its cached pages and attributes of every node. */
void vhw_mount_invalidate(struct vhw_mount *m);
/* End the threads, unmount. Safe to call twice. */
void vhw_mount_stop(struct vhw_mount *m);
/* Stop, wipe the keys and free everything. */
void vhw_mount_free(struct vhw_mount *m);

#endif
