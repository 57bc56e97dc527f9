/*
 * ocidisk-init: PID 1 for a container image booted as a VM (`--init`).
 *
 * Built statically by build.rs and placed at /.ocidisk/init; it needs no
 * file of the image. It reads /.ocidisk/config.json (written by ocidisk
 * from the image config) and does what docker does with it:
 *
 *   - mounts /proc, /sys, /dev (devtmpfs), /dev/pts, /dev/shm, /run, /tmp
 *     (and /var/tmp on a read-only root), skipping what the initrd already
 *     moved there; brings up lo; sets the hostname;
 *   - environment: the config's Env, then NAME=VALUE words (NAME in
 *     capitals) from the kernel command line; PATH defaults to docker's;
 *     HOME from the user's passwd entry;
 *   - runs Entrypoint + Cmd (words after `--` on the kernel command line
 *     replace Cmd) as User (uid, uid:gid, or names from the image's
 *     /etc/passwd and /etc/group, supplementary groups included) in
 *     WorkingDir (created if missing), PATH lookup as execvp;
 *   - reaps every zombie; forwards SIGTERM and SIGHUP, and turns SIGINT
 *     (ctrl-alt-del) into the config's StopSignal;
 *   - when the main process exits: kills what is left, syncs, prints
 *     "ocidisk-init: exit status N" and powers off. Any error prints one
 *     "ocidisk-init: ..." line and powers off with a non-zero status.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#define CONFIG "/.ocidisk/config.json"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define MAX_FILE (1 << 20)
#define MAX_ITEMS 4096
#define MAX_GROUPS 256

static void power_off(int status) __attribute__((noreturn));

static void vsay(const char *fmt, va_list ap) {
    fputs("ocidisk-init: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
}

/* One "ocidisk-init: ..." line on the console. */
static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

/* One clear line, then power off with status 1 (never return, never exit:
 * PID 1 exiting is a kernel panic). */
static void die(const char *fmt, ...) __attribute__((noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    power_off(1);
}

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static char *xstrdup(const char *s) {
    char *p = strdup(s);
    if (!p) die("out of memory");
    return p;
}

/* ---- a list of strings ---- */

struct list {
    char **v;
    size_t n;
    int present; /* the key was there and not null */
};

static void list_push(struct list *l, char *s) {
    if (l->n >= MAX_ITEMS) die("more than %d items in a list of %s", MAX_ITEMS, CONFIG);
    char **v = realloc(l->v, (l->n + 2) * sizeof *v);
    if (!v) die("out of memory");
    l->v = v;
    l->v[l->n++] = s;
    l->v[l->n] = NULL;
}

/* ---- the config: a JSON object of strings, numbers and string arrays ---- */

struct config {
    struct list entrypoint, cmd, env;
    char *user, *working_dir, *hostname;
    int stop_signal;
};

struct parser {
    const char *s, *end;
};

static void skip_ws(struct parser *p) {
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\n' || *p->s == '\r' || *p->s == '\t'))
        p->s++;
}

static void expect(struct parser *p, char c) {
    skip_ws(p);
    if (p->s >= p->end || *p->s != c) die("%s: expected '%c'", CONFIG, c);
    p->s++;
}

static void put_utf8(char **o, unsigned cp) {
    char *q = *o;
    if (cp < 0x80) {
        *q++ = (char)cp;
    } else if (cp < 0x800) {
        *q++ = (char)(0xC0 | (cp >> 6));
        *q++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *q++ = (char)(0xE0 | (cp >> 12));
        *q++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *q++ = (char)(0xF0 | (cp >> 18));
        *q++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *q++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (char)(0x80 | (cp & 0x3F));
    }
    *o = q;
}

static unsigned hex4(struct parser *p) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        if (p->s >= p->end || !isxdigit((unsigned char)*p->s)) die("%s: bad \\u escape", CONFIG);
        char c = *p->s++;
        v = v * 16 + (unsigned)(isdigit((unsigned char)c) ? c - '0' : (tolower((unsigned char)c) - 'a' + 10));
    }
    return v;
}

/* A JSON string; NUL characters are refused (they cannot be in an argv). */
static char *parse_string(struct parser *p) {
    expect(p, '"');
    /* Escapes never make a string longer than its source (\uXXXX: 6 bytes
     * for at most 4, a surrogate pair 12 for 4). */
    char *out = xmalloc((size_t)(p->end - p->s) + 1), *o = out;
    while (p->s < p->end && *p->s != '"') {
        char c = *p->s++;
        if (c != '\\') {
            *o++ = c;
            continue;
        }
        if (p->s >= p->end) break;
        c = *p->s++;
        switch (c) {
        case '"': case '\\': case '/': *o++ = c; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp = hex4(p);
            if (cp >= 0xD800 && cp < 0xDC00 && p->end - p->s >= 6 && p->s[0] == '\\' && p->s[1] == 'u') {
                p->s += 2;
                unsigned lo = hex4(p);
                if (lo < 0xDC00 || lo >= 0xE000) die("%s: bad surrogate pair", CONFIG);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp == 0) die("%s: a NUL character in a string", CONFIG);
            put_utf8(&o, cp);
            break;
        }
        default: die("%s: bad escape \\%c", CONFIG, c);
        }
    }
    if (p->s >= p->end) die("%s: unterminated string", CONFIG);
    p->s++;
    *o = 0;
    return out;
}

static int parse_null(struct parser *p) {
    skip_ws(p);
    if (p->end - p->s >= 4 && memcmp(p->s, "null", 4) == 0) {
        p->s += 4;
        return 1;
    }
    return 0;
}

static void parse_list(struct parser *p, struct list *l) {
    if (parse_null(p)) return;
    l->present = 1;
    list_push(l, NULL);
    l->n = 0; /* an empty, NULL-terminated vector */
    expect(p, '[');
    skip_ws(p);
    if (p->s < p->end && *p->s == ']') {
        p->s++;
        return;
    }
    for (;;) {
        list_push(l, parse_string(p));
        skip_ws(p);
        if (p->s < p->end && *p->s == ',') {
            p->s++;
            continue;
        }
        expect(p, ']');
        return;
    }
}

static int parse_int(struct parser *p) {
    skip_ws(p);
    int v = 0, any = 0;
    while (p->s < p->end && isdigit((unsigned char)*p->s) && v < 100000) {
        v = v * 10 + (*p->s++ - '0');
        any = 1;
    }
    if (!any) die("%s: expected a number", CONFIG);
    return v;
}

static void read_config(struct config *c) {
    int fd = open(CONFIG, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("cannot open %s: %s (was this disk made with --init?)", CONFIG, strerror(errno));
    char *buf = xmalloc(MAX_FILE + 1);
    ssize_t n, len = 0;
    while ((n = read(fd, buf + len, MAX_FILE - len)) > 0) len += n;
    close(fd);
    if (n < 0) die("reading %s: %s", CONFIG, strerror(errno));
    struct parser p = {buf, buf + len};
    c->stop_signal = SIGTERM;
    expect(&p, '{');
    skip_ws(&p);
    if (p.s < p.end && *p.s == '}') return;
    for (;;) {
        char *key = parse_string(&p);
        expect(&p, ':');
        if (!strcmp(key, "entrypoint")) parse_list(&p, &c->entrypoint);
        else if (!strcmp(key, "cmd")) parse_list(&p, &c->cmd);
        else if (!strcmp(key, "env")) parse_list(&p, &c->env);
        else if (!strcmp(key, "user")) c->user = parse_null(&p) ? NULL : parse_string(&p);
        else if (!strcmp(key, "working_dir")) c->working_dir = parse_null(&p) ? NULL : parse_string(&p);
        else if (!strcmp(key, "hostname")) c->hostname = parse_null(&p) ? NULL : parse_string(&p);
        else if (!strcmp(key, "stop_signal")) c->stop_signal = parse_int(&p);
        else die("%s: unknown key \"%s\"", CONFIG, key);
        free(key);
        skip_ws(&p);
        if (p.s < p.end && *p.s == ',') {
            p.s++;
            continue;
        }
        expect(&p, '}');
        return;
    }
}

/* ---- the kernel command line: NAME=VALUE words and words after `--` ---- */

/* Split /proc/cmdline as the kernel does (double quotes group; single
 * quotes too, as a shell would), quotes removed. */
static void cmdline_words(struct list *words) {
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    char buf[8192];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return;
    buf[n] = 0;
    char *s = buf;
    for (;;) {
        while (*s && isspace((unsigned char)*s)) s++;
        if (!*s) return;
        char *w = xmalloc(strlen(s) + 1), *o = w;
        char quote = 0;
        while (*s && (quote || !isspace((unsigned char)*s))) {
            if (!quote && (*s == '"' || *s == '\'')) quote = *s++;
            else if (quote && *s == quote) { quote = 0; s++; }
            else *o++ = *s++;
        }
        *o = 0;
        list_push(words, w);
    }
}

static int env_name(const char *w) {
    const char *eq = strchr(w, '=');
    if (!eq || eq == w || !(isupper((unsigned char)w[0]) || w[0] == '_')) return 0;
    for (const char *c = w; c < eq; c++)
        if (!(isupper((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '_')) return 0;
    return 1;
}

/* Set NAME=VALUE in env (replacing NAME's entry). */
static void env_set(struct list *env, const char *kv) {
    size_t k = (size_t)(strchr(kv, '=') - kv);
    for (size_t i = 0; i < env->n; i++) {
        if (!strncmp(env->v[i], kv, k) && env->v[i][k] == '=') {
            env->v[i] = xstrdup(kv);
            return;
        }
    }
    list_push(env, xstrdup(kv));
}

static const char *env_get(struct list *env, const char *name) {
    size_t k = strlen(name);
    for (size_t i = 0; i < env->n; i++)
        if (!strncmp(env->v[i], name, k) && env->v[i][k] == '=') return env->v[i] + k + 1;
    return NULL;
}

/* ---- mounts ---- */

static int is_mountpoint(const char *path) {
    struct stat a, b;
    char parent[256];
    snprintf(parent, sizeof parent, "%s/..", path);
    if (stat(path, &a) || stat(parent, &b)) return 0;
    return a.st_dev != b.st_dev;
}

static void mount_one(const char *what, const char *where, const char *type, unsigned long flags,
                      const char *data, int optional) {
    if (is_mountpoint(where)) return;
    if (mkdir(where, 0755) && errno != EEXIST) {
        if (optional) return;
        die("cannot create %s for %s: %s", where, type, strerror(errno));
    }
    if (mount(what, where, type, flags, data)) {
        if (optional) return;
        die("cannot mount %s on %s: %s", type, where, strerror(errno));
    }
}

static void mount_all(int read_only_root) {
    const unsigned long nosuid = MS_NOSUID | MS_NODEV, noexec = nosuid | MS_NOEXEC;
    mount_one("proc", "/proc", "proc", noexec, NULL, 0);
    mount_one("sysfs", "/sys", "sysfs", noexec, NULL, 0);
    mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", 0);
    mount_one("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666", 1);
    mount_one("shm", "/dev/shm", "tmpfs", nosuid, "mode=1777", 1);
    mount_one("tmpfs", "/run", "tmpfs", nosuid, "mode=0755", read_only_root ? 0 : 1);
    mount_one("tmpfs", "/tmp", "tmpfs", nosuid, "mode=1777", read_only_root ? 0 : 1);
    if (read_only_root) mount_one("tmpfs", "/var/tmp", "tmpfs", nosuid, "mode=1777", 1);
}

static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr)) say("cannot bring up lo: %s", strerror(errno));
    }
    close(s);
}

/* ---- users ---- */

struct user {
    uid_t uid;
    gid_t gid;
    gid_t groups[MAX_GROUPS];
    int ngroups;
    char *name;
    char *home;
};

static int all_digits(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

/* Field `i` (0-based) of a ':'-separated line, into a new string. */
static char *field(const char *line, int i) {
    while (i-- > 0) {
        line = strchr(line, ':');
        if (!line) return NULL;
        line++;
    }
    size_t n = strcspn(line, ":\n");
    char *f = xmalloc(n + 1);
    memcpy(f, line, n);
    return f;
}

static void resolve_user(const char *spec, struct user *u) {
    char *s = xstrdup(spec && *spec ? spec : "0");
    char *gspec = strchr(s, ':');
    if (gspec) *gspec++ = 0;
    int found = 0;
    u->uid = 0;
    u->gid = 0;
    u->home = "/";
    FILE *f = fopen("/etc/passwd", "re");
    char line[4096];
    if (f) {
        while (fgets(line, sizeof line, f)) {
            char *name = field(line, 0), *uid = field(line, 2), *gid = field(line, 3), *home = field(line, 5);
            if (name && uid && gid && (all_digits(s) ? !strcmp(uid, s) : !strcmp(name, s))) {
                u->uid = (uid_t)strtoul(uid, NULL, 10);
                u->gid = (gid_t)strtoul(gid, NULL, 10);
                u->name = name;
                if (home && *home) u->home = home;
                found = 1;
                break;
            }
        }
        fclose(f);
    }
    if (!found) {
        if (!all_digits(s)) die("user \"%s\" not found in the image's /etc/passwd", s);
        u->uid = (uid_t)strtoul(s, NULL, 10);
    }
    if (gspec) {
        if (all_digits(gspec)) {
            u->gid = (gid_t)strtoul(gspec, NULL, 10);
        } else {
            int gfound = 0;
            f = fopen("/etc/group", "re");
            if (f) {
                while (fgets(line, sizeof line, f)) {
                    char *name = field(line, 0), *gid = field(line, 2);
                    if (name && gid && !strcmp(name, gspec)) {
                        u->gid = (gid_t)strtoul(gid, NULL, 10);
                        gfound = 1;
                        break;
                    }
                }
                fclose(f);
            }
            if (!gfound) die("group \"%s\" not found in the image's /etc/group", gspec);
        }
    }
    /* Supplementary groups: the primary one, then every group listing the
     * user by name (as docker and runc do). */
    u->groups[0] = u->gid;
    u->ngroups = 1;
    if (u->name && (f = fopen("/etc/group", "re"))) {
        while (fgets(line, sizeof line, f) && u->ngroups < MAX_GROUPS) {
            char *gid = field(line, 2), *members = field(line, 3);
            if (!gid || !members) continue;
            for (char *m = strtok(members, ","); m; m = strtok(NULL, ",")) {
                if (!strcmp(m, u->name)) {
                    gid_t g = (gid_t)strtoul(gid, NULL, 10);
                    int dup = 0;
                    for (int i = 0; i < u->ngroups; i++) dup |= u->groups[i] == g;
                    if (!dup) u->groups[u->ngroups++] = g;
                }
            }
        }
        fclose(f);
    }
}

static void mkdir_p(const char *path) {
    char *p = xstrdup(path);
    for (char *c = p + 1; *c; c++) {
        if (*c == '/') {
            *c = 0;
            mkdir(p, 0755);
            *c = '/';
        }
    }
    if (mkdir(p, 0755) && errno != EEXIST) die("cannot create working directory %s: %s", path, strerror(errno));
    free(p);
}

/* ---- running the process ---- */

/* execvp with the child's own PATH. Returns only on failure. */
static void exec_path(char **argv, char **envp, const char *path) {
    const char *file = argv[0];
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return;
    }
    int saved = ENOENT;
    for (const char *dir = path;; dir = strchr(dir, ':') + 1) {
        size_t n = strcspn(dir, ":");
        char full[4096];
        if (n + strlen(file) + 2 < sizeof full) {
            snprintf(full, sizeof full, "%.*s%s%s", (int)n, dir, n ? "/" : "", file);
            execve(full, argv, envp);
            if (errno == EACCES) saved = EACCES;
            else if (errno != ENOENT && errno != ENOTDIR) saved = errno;
        }
        if (!strchr(dir, ':')) break;
    }
    errno = saved;
}

static void power_off(int status) {
    /* Nothing but us may run on: kill, reap, sync, report, power off. */
    if (getpid() != 1) exit(status);
    kill(-1, SIGKILL);
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
    }
    sync();
    mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL);
    fprintf(stderr, "ocidisk-init: exit status %d\n", status);
    fflush(stderr);
    reboot(RB_POWER_OFF);
    for (;;) pause();
}

int main(int argc, char **argv) {
    (void)argc;
    (void)argv;
    setvbuf(stderr, NULL, _IOLBF, 0);
    if (getpid() != 1) {
        fprintf(stderr, "ocidisk-init: this is a VM's init (PID 1): boot with init=/.ocidisk/init\n");
        return 2;
    }
    reboot(RB_DISABLE_CAD); /* ctrl-alt-del now sends us SIGINT */
    /* Every signal waits for sigwaitinfo below; the child gets a clean mask. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);

    struct statvfs vfs;
    int ro = statvfs("/", &vfs) == 0 && (vfs.f_flag & ST_RDONLY);
    mount_all(ro);

    struct config c;
    memset(&c, 0, sizeof c);
    read_config(&c);
    if (c.hostname && *c.hostname && sethostname(c.hostname, strlen(c.hostname)))
        say("cannot set the hostname: %s", strerror(errno));
    loopback_up();

    /* The command: Entrypoint + (Cmd, or the words after `--`). */
    struct list words = {0}, args = {0}, env = {0};
    cmdline_words(&words);
    size_t dashes = words.n;
    for (size_t i = 0; i < words.n; i++)
        if (!strcmp(words.v[i], "--")) {
            dashes = i;
            break;
        }
    for (size_t i = 0; i < c.entrypoint.n; i++) list_push(&args, c.entrypoint.v[i]);
    if (dashes < words.n)
        for (size_t i = dashes + 1; i < words.n; i++) list_push(&args, words.v[i]);
    else
        for (size_t i = 0; i < c.cmd.n; i++) list_push(&args, c.cmd.v[i]);
    if (args.n == 0) die("the image has no Entrypoint or Cmd, and the kernel command line has no \"-- COMMAND\"");

    for (size_t i = 0; i < c.env.n; i++)
        if (strchr(c.env.v[i], '=')) env_set(&env, c.env.v[i]);
    for (size_t i = 0; i < dashes; i++)
        if (env_name(words.v[i])) env_set(&env, words.v[i]);
    if (!env_get(&env, "PATH")) env_set(&env, "PATH=" DEFAULT_PATH);

    struct user u;
    memset(&u, 0, sizeof u);
    resolve_user(c.user, &u);
    if (!env_get(&env, "HOME")) {
        char *h = xmalloc(strlen(u.home) + 6);
        sprintf(h, "HOME=%s", u.home);
        env_set(&env, h);
    }
    if (!env_get(&env, "HOSTNAME") && c.hostname) {
        char *h = xmalloc(strlen(c.hostname) + 10);
        sprintf(h, "HOSTNAME=%s", c.hostname);
        env_set(&env, h);
    }
    const char *wd = c.working_dir && *c.working_dir ? c.working_dir : "/";
    mkdir_p(wd);

    pid_t child = fork();
    if (child < 0) die("fork: %s", strerror(errno));
    if (child == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
        setsid();
        ioctl(0, TIOCSCTTY, 1);
        if (setgroups((size_t)u.ngroups, u.groups) || setgid(u.gid) || setuid(u.uid)) {
            fprintf(stderr, "ocidisk-init: cannot become uid %u gid %u: %s\n", u.uid, u.gid, strerror(errno));
            _exit(126);
        }
        if (chdir(wd)) {
            fprintf(stderr, "ocidisk-init: cannot enter working directory %s: %s\n", wd, strerror(errno));
            _exit(126);
        }
        exec_path(args.v, env.v, env_get(&env, "PATH"));
        int e = errno;
        fprintf(stderr, "ocidisk-init: cannot run \"%s\": %s\n", args.v[0], strerror(e));
        _exit(e == ENOENT ? 127 : 126);
    }

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&all, &si);
        if (sig < 0) continue;
        if (sig == SIGCHLD) {
            int st;
            pid_t p;
            while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
                if (p == child) {
                    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                    power_off(code);
                }
            }
        } else if (sig == SIGINT) {
            kill(child, c.stop_signal);
        } else if (sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT || sig == SIGUSR1 || sig == SIGUSR2) {
            kill(child, sig);
        }
    }
}
