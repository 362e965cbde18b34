/* isthmusctl — administration: accounts, and the gateways the server runs. Passwords are read
 * from standard input (a prompt without echo on a terminal), never from the command line. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "isthmus/account.h"
#include "isthmus/config.h"
#include "isthmus/jid.h"
#include "isthmus/log.h"
#include "isthmus/storage.h"

static struct config cfg;
static struct storage *db;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: isthmusctl [-c FILE] user add JID       (password from stdin)\n"
            "       isthmusctl [-c FILE] user passwd JID    (password from stdin)\n"
            "       isthmusctl [-c FILE] user del JID\n"
            "       isthmusctl [-c FILE] user list [HOST]\n"
            "       isthmusctl [-c FILE] user import        (lines 'JID PASSWORD' on stdin)\n"
            "       isthmusctl [-c FILE] gateway NAME users\n"
            "       isthmusctl [-c FILE] gateway NAME info JID\n"
            "       isthmusctl [-c FILE] gateway NAME disconnect JID\n"
            "       isthmusctl [-c FILE] gateway NAME unregister JID\n");
}

static char *read_line(FILE *in)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, in);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    return line;
}

static char *read_password(void)
{
    if (!isatty(STDIN_FILENO))
        return read_line(stdin);
    struct termios old, quiet;
    tcgetattr(STDIN_FILENO, &old);
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)ECHO;
    fputs("Password: ", stderr);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    char *a = read_line(stdin);
    fputs("\nAgain: ", stderr);
    char *b = read_line(stdin);
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
    fputs("\n", stderr);
    if (!a || !b || strcmp(a, b) != 0) {
        fprintf(stderr, "isthmusctl: passwords do not match\n");
        free(a);
        free(b);
        return NULL;
    }
    free(b);
    return a;
}

/* Parses a bare JID on one of our hosts. */
static int parse_account(const char *s, struct jid *j)
{
    if (jid_parse(s, j) < 0 || !j->local || j->resource) {
        fprintf(stderr, "isthmusctl: '%s' is not a valid bare JID (user@host)\n", s);
        jid_fini(j);
        return -1;
    }
    for (size_t i = 0; i < cfg.n_hosts; i++) {
        char *h = jid_prep_domain(cfg.hosts[i].name);
        bool match = h && strcmp(h, j->domain) == 0;
        free(h);
        if (match)
            return 0;
    }
    fprintf(stderr, "isthmusctl: %s is not a host of this server (see [host] in %s)\n",
            j->domain, cfg.path);
    jid_fini(j);
    return -1;
}

static int report(int rc, const struct jid *j, const char *done)
{
    switch (rc) {
    case 0:
        printf("%s %s@%s\n", done, j->local, j->domain);
        return 0;
    case ACCOUNT_EXISTS:
        fprintf(stderr, "isthmusctl: %s@%s already exists\n", j->local, j->domain);
        return 1;
    case ACCOUNT_NOTFOUND:
        fprintf(stderr, "isthmusctl: %s@%s does not exist\n", j->local, j->domain);
        return 1;
    case ACCOUNT_BADPASS:
        fprintf(stderr, "isthmusctl: password refused (empty or not valid under SASLprep)\n");
        return 1;
    default:
        fprintf(stderr, "isthmusctl: storage error (see messages above)\n");
        return 1;
    }
}

static int cmd_add_or_passwd(const char *who, bool add)
{
    struct jid j;
    if (parse_account(who, &j) < 0)
        return 1;
    char *pw = read_password();
    if (!pw) {
        fprintf(stderr, "isthmusctl: no password given on standard input\n");
        jid_fini(&j);
        return 1;
    }
    int rc = add ? account_create(db, j.domain, j.local, pw, cfg.scram_iterations)
                 : account_set_password(db, j.domain, j.local, pw, cfg.scram_iterations);
    memset(pw, 0, strlen(pw));
    free(pw);
    rc = report(rc, &j, add ? "created" : "password changed for");
    jid_fini(&j);
    return rc;
}

static int cmd_del(const char *who)
{
    struct jid j;
    if (parse_account(who, &j) < 0)
        return 1;
    int rc = report(account_delete(db, j.domain, j.local), &j, "deleted");
    jid_fini(&j);
    return rc;
}

static int print_user(void *ud, const char *user)
{
    printf("%s@%s\n", user, (const char *)ud);
    return 0;
}

static int cmd_list(const char *host)
{
    for (size_t i = 0; i < cfg.n_hosts; i++) {
        char *h = jid_prep_domain(cfg.hosts[i].name);
        if (h && (!host || strcmp(host, h) == 0) && account_list(db, h, print_user, h) < 0) {
            free(h);
            return 1;
        }
        free(h);
    }
    return 0;
}

/* Bulk creation in one transaction: "JID PASSWORD" per line (for migrations and benchmarks). */
static int cmd_import(void)
{
    unsigned lineno = 0, created = 0, failed = 0;
    char *line;
    storage_begin(db);
    while ((line = read_line(stdin))) {
        lineno++;
        char *sp = strchr(line, ' ');
        if (!*line || line[0] == '#') {
            free(line);
            continue;
        }
        struct jid j;
        if (!sp) {
            fprintf(stderr, "isthmusctl: stdin:%u: expected 'JID PASSWORD'\n", lineno);
            failed++;
        } else {
            *sp = '\0';
            if (parse_account(line, &j) < 0) {
                failed++;
            } else {
                int rc = account_create(db, j.domain, j.local, sp + 1, cfg.scram_iterations);
                if (rc == 0)
                    created++;
                else
                    failed += report(rc, &j, "");
                jid_fini(&j);
            }
        }
        memset(line, 0, strlen(line) + (sp ? strlen(sp + 1) + 1 : 0));
        free(line);
    }
    if (storage_commit(db) < 0)
        return 1;
    printf("imported %u accounts, %u failed\n", created, failed);
    return failed ? 1 : 0;
}

/* Asks the running gateway NAME over its control socket (data_dir/NAME.ctl): one line out, the
 * answer back until it closes. The gateway does the work, so XMPP-side effects (roster cleanup
 * on unregister, IRC QUIT on disconnect) happen as from its admin ad-hoc commands. */
static int cmd_gateway(const char *name, const char *cmd, const char *arg)
{
    char *domain = jid_prep_domain(name);
    if (!domain || !config_gateway_find(&cfg, domain)) {
        fprintf(stderr, "isthmusctl: %s: no [gateway %s]\n", cfg.path, name);
        free(domain);
        return 1;
    }
    char *path = xasprintf("%s/%s.ctl", cfg.data_dir, domain);
    free(domain);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = 1;
    if (strlen(path) >= sizeof sa.sun_path || fd < 0) {
        fprintf(stderr, "isthmusctl: %s: cannot use this socket path\n", path);
        goto out;
    }
    strcpy(sa.sun_path, path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "isthmusctl: %s: %s (is the gateway running?)\n", path, strerror(errno));
        goto out;
    }
    dprintf(fd, "%s%s%s\n", cmd, arg ? " " : "", arg ? arg : "");
    char buf[4096];
    ssize_t n;
    bool error = false, first = true;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        if (first && n >= 6 && memcmp(buf, "error:", 6) == 0)
            error = true;
        first = false;
        fwrite(buf, 1, (size_t)n, error ? stderr : stdout);
    }
    rc = error ? 1 : 0;
out:
    if (fd >= 0)
        close(fd);
    free(path);
    return rc;
}

int main(int argc, char **argv)
{
    const char *conf = "conf/isthmus.conf";
    int i = 1;
    if (i + 1 < argc && strcmp(argv[i], "-c") == 0) {
        conf = argv[i + 1];
        i += 2;
    }
    if (i < argc && (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    bool gateway = argc - i >= 3 && strcmp(argv[i], "gateway") == 0;
    if (!gateway && (argc - i < 2 || strcmp(argv[i], "user") != 0)) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i + 1];
    const char *arg = argc - i > 2 ? argv[i + 2] : NULL;
    char err[1024];
    if (config_load(conf, &cfg, err, sizeof err) < 0) {
        fprintf(stderr, "isthmusctl: %s\n", err);
        return 1;
    }
    if (gateway) {
        int grc = cmd_gateway(argv[i + 1], argv[i + 2], argc - i > 3 ? argv[i + 3] : NULL);
        config_fini(&cfg);
        jid_cache_clear();
        return grc;
    }
    log_open(NULL, LOG_WARN);
    mkdir(cfg.data_dir, 0700);
    char *path = xasprintf("%s/isthmus.db", cfg.data_dir);
    db = storage_open(path, err, sizeof err);
    free(path);
    int rc = 2;
    if (!db) {
        fprintf(stderr, "isthmusctl: %s\n", err);
        rc = 1;
    } else if (strcmp(cmd, "add") == 0 && arg) {
        rc = cmd_add_or_passwd(arg, true);
    } else if (strcmp(cmd, "passwd") == 0 && arg) {
        rc = cmd_add_or_passwd(arg, false);
    } else if (strcmp(cmd, "del") == 0 && arg) {
        rc = cmd_del(arg);
    } else if (strcmp(cmd, "list") == 0) {
        char *h = arg ? jid_prep_domain(arg) : NULL;
        rc = cmd_list(arg ? (h ? h : arg) : NULL);
        free(h);
    } else if (strcmp(cmd, "import") == 0) {
        rc = cmd_import();
    } else {
        usage(stderr);
    }
    storage_close(db);
    config_fini(&cfg);
    jid_cache_clear();
    return rc;
}
