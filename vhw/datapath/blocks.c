/* AES-256-GCM over the blocks of a stream, with OpenSSL's libcrypto (EVP), and the install's
 * re-sealing of a disc's chunks as HDD blocks. The scheme is vhw.crypto.ChunkCipher's: block i of a
 * stream has the nonce 0^32 || be64(i) and the associated data prefix || be64(i); keys are derived
 * per stream in Python and used for that one stream only, so no nonce is used twice under a key. */
#include <string.h>

#include <openssl/evp.h>

#include "core.h"

static EVP_CIPHER *gcm; /* fetched once: an implicit fetch on every key change costs a lock */

int vhw_gcm_init(void) {
    if (gcm == NULL)
        gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    return gcm == NULL ? -1 : 0;
}

void vhw_gcm_cleanup(void) {
    EVP_CIPHER_free(gcm);
    gcm = NULL;
}

static void put_be64(unsigned char *out, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        out[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

int vhw_gcm_key(EVP_CIPHER_CTX *ctx, const unsigned char key[VHW_KEY_SIZE], int encrypt) {
    return EVP_CipherInit_ex(ctx, gcm, NULL, key, NULL, encrypt) == 1 ? 0 : -1;
}

/* Start one message: its nonce, then its associated data. */
static int start(EVP_CIPHER_CTX *ctx, const unsigned char nonce[VHW_NONCE_SIZE], const unsigned char *ad, size_t ad_len,
                 int encrypt) {
    int n;

    if (ad_len > INT32_MAX || EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, encrypt) != 1)
        return -1;
    return ad_len == 0 || EVP_CipherUpdate(ctx, NULL, &n, ad, (int)ad_len) == 1 ? 0 : -1;
}

int vhw_gcm_open(EVP_CIPHER_CTX *ctx, const unsigned char nonce[VHW_NONCE_SIZE], const unsigned char *ad,
                 size_t ad_len, unsigned char *buf, size_t len, const unsigned char tag[VHW_TAG_SIZE]) {
    int n = 0, m = 0;

    if (len > INT32_MAX || start(ctx, nonce, ad, ad_len, 0) != 0)
        return -1;
    if (len > 0 && EVP_CipherUpdate(ctx, buf, &n, buf, (int)len) != 1)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, VHW_TAG_SIZE, (void *)tag) != 1)
        return -1;
    return EVP_CipherFinal_ex(ctx, buf + n, &m) == 1 ? 0 : -1;
}

int vhw_gcm_seal(EVP_CIPHER_CTX *ctx, const unsigned char nonce[VHW_NONCE_SIZE], const unsigned char *ad,
                 size_t ad_len, unsigned char *buf, size_t len, unsigned char tag[VHW_TAG_SIZE]) {
    int n = 0, m = 0;

    if (len > INT32_MAX || start(ctx, nonce, ad, ad_len, 1) != 0)
        return -1;
    if (len > 0 && EVP_CipherUpdate(ctx, buf, &n, buf, (int)len) != 1)
        return -1;
    if (EVP_CipherFinal_ex(ctx, buf + n, &m) != 1)
        return -1;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, VHW_TAG_SIZE, tag) == 1 ? 0 : -1;
}

/* Unit ``index`` of stream ``s``: its nonce (0^32 || be64(index)) and associated data (prefix ||
 * be64(index)), as vhw.crypto.ChunkCipher makes them. */
static int unit(const struct vhw_stream *s, uint64_t index, unsigned char nonce[VHW_NONCE_SIZE],
                unsigned char ad[VHW_AD_MAX + 8]) {
    if (s->ad_len > VHW_AD_MAX)
        return -1;
    memset(nonce, 0, VHW_NONCE_SIZE);
    put_be64(nonce + 4, index);
    memcpy(ad, s->ad, s->ad_len);
    put_be64(ad + s->ad_len, index);
    return 0;
}

int vhw_block_open(EVP_CIPHER_CTX *ctx, const struct vhw_stream *s, uint64_t index, unsigned char *buf, size_t len,
                   const unsigned char tag[VHW_TAG_SIZE]) {
    unsigned char nonce[VHW_NONCE_SIZE], ad[VHW_AD_MAX + 8];

    if (unit(s, index, nonce, ad) != 0)
        return -1;
    return vhw_gcm_open(ctx, nonce, ad, s->ad_len + 8, buf, len, tag);
}

int vhw_block_seal(EVP_CIPHER_CTX *ctx, const struct vhw_stream *s, uint64_t index, unsigned char *buf, size_t len,
                   unsigned char tag[VHW_TAG_SIZE]) {
    unsigned char nonce[VHW_NONCE_SIZE], ad[VHW_AD_MAX + 8];

    if (unit(s, index, nonce, ad) != 0)
        return -1;
    return vhw_gcm_seal(ctx, nonce, ad, s->ad_len + 8, buf, len, tag);
}

/* Plaintext bytes of unit ``index`` of a stream of ``size`` bytes cut into units of ``unit``; every
 * stream has at least one unit, an empty one when the stream is empty. */
static uint64_t unit_length(uint64_t size, uint64_t unit, uint64_t index) {
    uint64_t start = index * unit;
    if (start >= size)
        return 0;
    return size - start < unit ? size - start : unit;
}

static uint64_t unit_count(uint64_t size, uint64_t unit) {
    return size == 0 ? 1 : (size + unit - 1) / unit;
}

int64_t vhw_reseal(const struct vhw_reseal *job, const unsigned char *in, size_t in_len, unsigned char *data,
                   size_t data_len, unsigned char *tags, size_t tags_len) {
    const uint64_t block = (uint64_t)1 << job->block_shift;
    const uint64_t chunks = unit_count(job->size, job->chunk_size);
    const uint64_t blocks = unit_count(job->size, block);
    EVP_CIPHER_CTX *disc = NULL, *hdd = NULL;
    int64_t result = VHW_RESEAL_ERROR;
    size_t at = 0, out = 0;

    /* the chunks must be whole blocks: a piece of chunks then starts on a block */
    if (job->block_shift < 12 || job->block_shift > 16 || job->chunk_size == 0 || job->chunk_size % block ||
        job->first >= chunks || job->count == 0 || job->count > chunks - job->first)
        return VHW_RESEAL_ERROR;
    disc = EVP_CIPHER_CTX_new();
    hdd = EVP_CIPHER_CTX_new();
    if (disc == NULL || hdd == NULL || vhw_gcm_key(disc, job->disc.key, 0) != 0 || vhw_gcm_key(hdd, job->hdd.key, 1) != 0)
        goto done;
    for (uint64_t i = job->first; i < job->first + job->count; i++) {
        const uint64_t plain = unit_length(job->size, job->chunk_size, i);
        const uint64_t first_block = i * (job->chunk_size / block);

        if (in_len - at < plain + VHW_TAG_SIZE || data_len - out < plain)
            goto done;
        /* the chunk's plaintext lands where its blocks' ciphertext goes */
        memcpy(data + out, in + at, plain);
        if (vhw_block_open(disc, &job->disc, i, data + out, plain, in + at + plain) != 0) {
            result = -1 - (int64_t)i;
            goto done;
        }
        for (uint64_t b = first_block; b < blocks; b++) {
            const uint64_t start = (b - first_block) * block;
            const uint64_t n = unit_length(job->size, block, b);
            const size_t tag_at = (size_t)(b - job->first * (job->chunk_size / block)) * VHW_TAG_SIZE;

            if (start >= plain && !(plain == 0 && b == first_block))
                break; /* (an empty file's one chunk is one empty block) */
            if (tag_at + VHW_TAG_SIZE > tags_len)
                goto done;
            if (vhw_block_seal(hdd, &job->hdd, b, data + out + start, n, tags + tag_at) != 0)
                goto done;
        }
        at += plain + VHW_TAG_SIZE;
        out += plain;
    }
    result = (int64_t)out;
done:
    EVP_CIPHER_CTX_free(disc); /* (OpenSSL cleanses the key schedules) */
    EVP_CIPHER_CTX_free(hdd);
    return result;
}
