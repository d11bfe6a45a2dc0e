/* vhw.datapath._core: the compiled data path's Python face (its types: _core.pyi).
 *
 *   reseal(...)    re-seal a piece of a disc's chunks as HDD blocks, without the GIL
 *   gcm_seal/open  one AES-256-GCM message as the core makes them (the published vectors pin them)
 *   Mount(...)     the decrypting FUSE file system of a console's titles: start, wait, revoke,
 *                  invalidate, stop
 *   sanitized()    whether this build carries AddressSanitizer (the suite's sanitizer run)
 *
 * Every argument is checked here for type and range; what it means (the catalog it came from) was
 * checked in Python before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "core.h"

/* -- reseal --------------------------------------------------------------------------------------- */

static PyObject *py_reseal(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"disc_key", "disc_ad", "hdd_key", "hdd_ad", "size", "chunk_size", "block_shift",
                            "first", "count", "sealed", "data", "tags", NULL};
    Py_buffer disc_key, disc_ad, hdd_key, hdd_ad, sealed, data, tags;
    unsigned long long size, first, count;
    Py_ssize_t chunk_size;
    unsigned int block_shift;
    struct vhw_reseal job;
    int64_t got;

    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*y*y*KnIKKy*w*w*", names, &disc_key, &disc_ad, &hdd_key,
                                     &hdd_ad, &size, &chunk_size, &block_shift, &first, &count, &sealed, &data, &tags))
        return NULL;
    if (disc_key.len != VHW_KEY_SIZE || hdd_key.len != VHW_KEY_SIZE || disc_ad.len > VHW_AD_MAX ||
        hdd_ad.len > VHW_AD_MAX || chunk_size <= 0 || vhw_gcm_init() != 0) {
        PyErr_SetString(PyExc_ValueError, "reseal: keys of 32 bytes and associated data of at most 256");
        got = VHW_RESEAL_ERROR;
        goto done;
    }
    job = (struct vhw_reseal){
        .disc = {disc_key.buf, disc_ad.buf, (size_t)disc_ad.len},
        .hdd = {hdd_key.buf, hdd_ad.buf, (size_t)hdd_ad.len},
        .size = size,
        .chunk_size = (size_t)chunk_size,
        .block_shift = block_shift,
        .first = first,
        .count = count,
    };
    Py_BEGIN_ALLOW_THREADS;
    got = vhw_reseal(&job, sealed.buf, (size_t)sealed.len, data.buf, (size_t)data.len, tags.buf, (size_t)tags.len);
    Py_END_ALLOW_THREADS;
    if (got == VHW_RESEAL_ERROR)
        PyErr_SetString(PyExc_ValueError, "reseal: the chunks, buffers or block size do not fit together");
done:
    PyBuffer_Release(&disc_key);
    PyBuffer_Release(&disc_ad);
    PyBuffer_Release(&hdd_key);
    PyBuffer_Release(&hdd_ad);
    PyBuffer_Release(&sealed);
    PyBuffer_Release(&data);
    PyBuffer_Release(&tags);
    if (got == VHW_RESEAL_ERROR)
        return NULL;
    return PyLong_FromLongLong(got);
}

/* -- one GCM message, as the core makes them (the published vectors pin it) ---------------------- */

static PyObject *gcm_call(PyObject *args, PyObject *kwargs, int encrypt) {
    static char *names[] = {"key", "nonce", "ad", "data", NULL};
    Py_buffer key, nonce, ad, data;
    PyObject *out = NULL;
    EVP_CIPHER_CTX *ctx = NULL;
    size_t len;
    int rc = -1;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*y*y*y*", names, &key, &nonce, &ad, &data))
        return NULL;
    if (key.len != VHW_KEY_SIZE || nonce.len != VHW_NONCE_SIZE || (!encrypt && data.len < VHW_TAG_SIZE) ||
        vhw_gcm_init() != 0) {
        PyErr_SetString(PyExc_ValueError, "gcm: a 32-byte key, a 12-byte nonce (and a tag to open)");
        goto done;
    }
    len = (size_t)data.len - (encrypt ? 0 : VHW_TAG_SIZE);
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(len + (encrypt ? VHW_TAG_SIZE : 0)));
    ctx = EVP_CIPHER_CTX_new();
    if (out == NULL || ctx == NULL)
        goto done;
    memcpy(PyBytes_AS_STRING(out), data.buf, len);
    if (vhw_gcm_key(ctx, key.buf, encrypt) == 0) {
        unsigned char *buf = (unsigned char *)PyBytes_AS_STRING(out);
        rc = encrypt ? vhw_gcm_seal(ctx, nonce.buf, ad.buf, (size_t)ad.len, buf, len, buf + len)
                     : vhw_gcm_open(ctx, nonce.buf, ad.buf, (size_t)ad.len, buf, len,
                                    (const unsigned char *)data.buf + len);
    }
    if (rc != 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_ValueError, encrypt ? "gcm: sealing failed" : "gcm: the tag does not verify");
    }
done:
    EVP_CIPHER_CTX_free(ctx);
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonce);
    PyBuffer_Release(&ad);
    PyBuffer_Release(&data);
    return out;
}

static PyObject *py_gcm_seal(PyObject *module, PyObject *args, PyObject *kwargs) {
    (void)module;
    return gcm_call(args, kwargs, 1);
}

static PyObject *py_gcm_open(PyObject *module, PyObject *args, PyObject *kwargs) {
    (void)module;
    return gcm_call(args, kwargs, 0);
}

/* -- Mount ---------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD struct vhw_mount *mount;
} MountObject;

static void mount_dealloc(MountObject *self) {
    if (self->mount != NULL) {
        struct vhw_mount *m = self->mount;
        self->mount = NULL;
        Py_BEGIN_ALLOW_THREADS;
        vhw_mount_free(m);
        Py_END_ALLOW_THREADS;
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* What a file tuple holds, kept until the mount is built. */
struct file_args {
    Py_buffer key;
    bool have_key;
    struct vhw_extent *extents;
};

static int parse_extents(PyObject *seq, struct vhw_file_spec *spec, struct file_args *fa) {
    PyObject *fast = PySequence_Fast(seq, "extents must be a sequence of (offset, length)");
    uint64_t logical = 0;
    Py_ssize_t n;

    if (fast == NULL)
        return -1;
    n = PySequence_Fast_GET_SIZE(fast);
    fa->extents = PyMem_Calloc(n ? (size_t)n : 1, sizeof *fa->extents);
    if (fa->extents == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long long offset, length;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "KK;an extent is (offset, length)", &offset,
                              &length)) {
            Py_DECREF(fast);
            return -1;
        }
        fa->extents[i] = (struct vhw_extent){offset, length, logical};
        if (length > UINT64_MAX - logical) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_ValueError, "extents too long");
            return -1;
        }
        logical += length;
    }
    Py_DECREF(fast);
    spec->extents = fa->extents;
    spec->n_extents = (size_t)n;
    return 0;
}

static PyObject *mount_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"image_fd", "nominal_size", "nodes", "files", NULL};
    PyObject *nodes_arg, *files_arg, *nodes = NULL, *files = NULL;
    struct vhw_node_spec *node_specs = NULL;
    struct vhw_file_spec *file_specs = NULL;
    struct file_args *fas = NULL;
    Py_ssize_t n_nodes = 0, n_files = 0;
    unsigned long long nominal;
    MountObject *self = NULL;
    const char *message = NULL;
    int fd;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iKOO", names, &fd, &nominal, &nodes_arg, &files_arg))
        return NULL;
    nodes = PySequence_Fast(nodes_arg, "nodes must be a sequence");
    files = PySequence_Fast(files_arg, "files must be a sequence");
    if (nodes == NULL || files == NULL)
        goto done;
    n_nodes = PySequence_Fast_GET_SIZE(nodes);
    n_files = PySequence_Fast_GET_SIZE(files);
    node_specs = PyMem_Calloc(n_nodes ? (size_t)n_nodes : 1, sizeof *node_specs);
    file_specs = PyMem_Calloc(n_files ? (size_t)n_files : 1, sizeof *file_specs);
    fas = PyMem_Calloc(n_files ? (size_t)n_files : 1, sizeof *fas);
    if (node_specs == NULL || file_specs == NULL || fas == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_nodes; i++) {
        struct vhw_node_spec *s = &node_specs[i];
        unsigned long long parent;
        long long file, mtime;
        int readable, executable;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(nodes, i),
                              "KyLLpp;a node is (parent, name, file, mtime_ns, readable, executable)", &parent,
                              &s->name, &file, &mtime, &readable, &executable))
            goto done;
        s->parent = parent;
        s->file = file;
        s->mtime_ns = mtime;
        s->readable = readable;
        s->executable = executable;
    }
    for (Py_ssize_t i = 0; i < n_files; i++) {
        struct vhw_file_spec *s = &file_specs[i];
        unsigned long long size;
        unsigned int shift;
        PyObject *extents;
        const char *ad;
        Py_ssize_t ad_len;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(files, i),
                              "KIOy*y#s;a file is (size, block_shift, extents, key, ad, label)", &size, &shift,
                              &extents, &fas[i].key, &ad, &ad_len, &s->label))
            goto done;
        fas[i].have_key = true;
        if (fas[i].key.len != VHW_KEY_SIZE) {
            PyErr_SetString(PyExc_ValueError, "a file's key must be 32 bytes");
            goto done;
        }
        s->size = size;
        s->block_shift = shift;
        s->key = fas[i].key.buf;
        s->ad = (const unsigned char *)ad;
        s->ad_len = (size_t)ad_len;
        if (parse_extents(extents, s, &fas[i]) != 0)
            goto done;
    }
    self = (MountObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto done;
    self->mount = vhw_mount_new(fd, nominal, node_specs, (size_t)n_nodes, file_specs, (size_t)n_files, &message);
    if (self->mount == NULL) {
        if (errno == EINVAL)
            PyErr_Format(PyExc_ValueError, "the mount's tree does not hold together: %s", message);
        else
            PyErr_Format(PyExc_OSError, "%s", message ? message : strerror(errno));
        Py_CLEAR(self);
    }
done:
    for (Py_ssize_t i = 0; fas != NULL && i < n_files; i++) {
        if (fas[i].have_key)
            PyBuffer_Release(&fas[i].key);
        PyMem_Free(fas[i].extents);
    }
    PyMem_Free(fas);
    PyMem_Free(node_specs);
    PyMem_Free(file_specs);
    Py_XDECREF(nodes);
    Py_XDECREF(files);
    return (PyObject *)self;
}

static struct vhw_mount *live(MountObject *self) {
    if (self->mount == NULL)
        PyErr_SetString(PyExc_ValueError, "the mount was closed");
    return self->mount;
}

static PyObject *mount_start(MountObject *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"mountpoint", "options", "threads", NULL};
    struct vhw_mount *m = live(self);
    PyObject *where;
    const char *options;
    unsigned int threads;
    int rc;

    if (m == NULL || !PyArg_ParseTupleAndKeywords(args, kwargs, "O&sI", names, PyUnicode_FSConverter, &where,
                                                  &options, &threads))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    rc = vhw_mount_start(m, PyBytes_AS_STRING(where), options, threads);
    Py_END_ALLOW_THREADS;
    Py_DECREF(where);
    if (rc != 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *mount_wait(MountObject *self, PyObject *arg) {
    struct vhw_mount *m = live(self);
    double timeout;
    int ended;

    if (m == NULL)
        return NULL;
    timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (timeout < 0 || timeout > 86400) {
        PyErr_SetString(PyExc_ValueError, "timeout out of range");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    ended = vhw_mount_wait(m, timeout);
    Py_END_ALLOW_THREADS;
    return PyBool_FromLong(ended);
}

/* Call fn on a live mount without the interpreter's lock (it may wait for the kernel). */
static PyObject *unlocked(MountObject *self, void (*fn)(struct vhw_mount *)) {
    struct vhw_mount *m = live(self);
    if (m == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    fn(m);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

static PyObject *mount_revoke(MountObject *self, PyObject *unused) {
    (void)unused;
    return unlocked(self, vhw_mount_revoke);
}

static PyObject *mount_invalidate(MountObject *self, PyObject *unused) {
    (void)unused;
    return unlocked(self, vhw_mount_invalidate);
}

static PyObject *mount_stop(MountObject *self, PyObject *unused) {
    struct vhw_mount *m = self->mount;
    (void)unused;
    if (m != NULL) {
        self->mount = NULL;
        Py_BEGIN_ALLOW_THREADS;
        vhw_mount_free(m);
        Py_END_ALLOW_THREADS;
    }
    Py_RETURN_NONE;
}

static PyMethodDef mount_methods[] = {
    {"start", (PyCFunction)(void (*)(void))mount_start, METH_VARARGS | METH_KEYWORDS,
     "start(mountpoint, options, threads): mount and serve with that many threads"},
    {"wait", (PyCFunction)mount_wait, METH_O, "wait(timeout): True once the file system is unmounted"},
    {"revoke", (PyCFunction)mount_revoke, METH_NOARGS, "wipe every key; refuse every open and read from now on"},
    {"invalidate", (PyCFunction)mount_invalidate, METH_NOARGS, "have the kernel drop its cached pages of every node"},
    {"stop", (PyCFunction)mount_stop, METH_NOARGS, "end the threads, unmount, wipe the keys and free everything"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MountType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "vhw.datapath._core.Mount",
    .tp_basicsize = sizeof(MountObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Mount(image_fd, nominal_size, nodes, files): the titles' decrypting file system",
    .tp_new = mount_new,
    .tp_dealloc = (destructor)mount_dealloc,
    .tp_methods = mount_methods,
};

/* -- the module ---------------------------------------------------------------------------------- */

static PyObject *py_sanitized(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
#if defined(__SANITIZE_ADDRESS__)
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef functions[] = {
    {"reseal", (PyCFunction)(void (*)(void))py_reseal, METH_VARARGS | METH_KEYWORDS,
     "reseal(...): a piece of a disc's chunks as HDD blocks; the bytes written, or -1 - i: chunk i did not verify"},
    {"sanitized", py_sanitized, METH_NOARGS, "whether this build carries AddressSanitizer"},
    {"gcm_seal", (PyCFunction)(void (*)(void))py_gcm_seal, METH_VARARGS | METH_KEYWORDS,
     "gcm_seal(key, nonce, ad, data): ciphertext then tag, as the core seals (for the published vectors)"},
    {"gcm_open", (PyCFunction)(void (*)(void))py_gcm_open, METH_VARARGS | METH_KEYWORDS,
     "gcm_open(key, nonce, ad, data): the plaintext of ciphertext then tag, or ValueError"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, .m_name = "vhw.datapath._core", .m_doc = "vhw's compiled data path", .m_size = -1,
    .m_methods = functions,
};

PyMODINIT_FUNC PyInit__core(void) {
    PyObject *m;

    if (PyType_Ready(&MountType) < 0)
        return NULL;
    m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&MountType);
    if (PyModule_AddObject(m, "Mount", (PyObject *)&MountType) < 0) {
        Py_DECREF(&MountType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "TAG_SIZE", VHW_TAG_SIZE) < 0 ||
        PyModule_AddIntConstant(m, "AD_MAX", VHW_AD_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
