/* isthmus — the XMPP server. Usage: isthmus [-c FILE] [-t] */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "isthmus/c2s.h"
#include "isthmus/component.h"
#include "isthmus/conn.h"
#include "isthmus/jid.h"
#include "isthmus/log.h"
#include "isthmus/module.h"
#include "isthmus/s2s.h"
#include "isthmus/server.h"
#include "isthmus/tls.h"

#define SHUTDOWN_GRACE_MS 3000

static void usage(FILE *out)
{
    fprintf(out, "usage: isthmus [-c FILE] [-t]\n"
                 "  -c FILE  configuration file (default conf/isthmus.conf)\n"
                 "  -t       check the configuration and exit\n"
                 "  -V       print the version and exit\n");
}

static int mkdir_p(const char *path, mode_t mode)
{
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, mode) < 0 && errno != EEXIST) {
            free(p);
            return -1;
        }
        *s = '/';
    }
    int rc = mkdir(p, mode) < 0 && errno != EEXIST ? -1 : 0;
    free(p);
    return rc;
}

/* Host names in the config are checked for shape by config.c; here they get the same
 * preparation as every JID domain, so lookups compare like with like. */
static int prepare_hosts(struct config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->n_hosts; i++) {
        struct config_host *h = &cfg->hosts[i];
        char *d = jid_prep_domain(h->name);
        if (!d) {
            snprintf(err, errlen, "%s:%u: [host %s]: not a valid XMPP domain", cfg->path, h->line,
                     h->name);
            return -1;
        }
        free(h->name);
        h->name = d;
        const char *files[2] = {h->certificate, h->key};
        const char *keys[2] = {"certificate", "key"};
        for (int k = 0; k < 2; k++) {
            if (files[k] && access(files[k], R_OK) < 0) {
                snprintf(err, errlen, "%s:%u: [host %s] %s: cannot read %s: %s", cfg->path,
                         h->line, h->name, keys[k], files[k], strerror(errno));
                return -1;
            }
        }
    }
    return 0;
}

static void shutdown_timeout(struct ev_loop *loop, void *ud)
{
    (void)ud;
    log_warn(NULL, "shutdown: %zu streams did not close in time; dropping them",
             c2s_count() + s2s_count());
    c2s_abort_all();
    s2s_abort_all();
    component_abort_all();
    if (c2s_count() == 0 && s2s_count() == 0 && component_count() == 0)
        ev_stop(loop);
}

static void begin_shutdown(void)
{
    if (server.shutting_down)
        return;
    server.shutting_down = true;
    log_info(NULL, "shutting down (%zu streams open)", c2s_count() + s2s_count());
    c2s_shutdown();
    s2s_shutdown();
    component_shutdown();
    if (c2s_count() == 0 && s2s_count() == 0 && component_count() == 0)
        ev_stop(server.loop);
    else
        ev_timer_add(server.loop, SHUTDOWN_GRACE_MS, shutdown_timeout, NULL);
}

static void on_signal(struct ev_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)events;
    (void)ud;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            if (log_reopen() < 0)
                log_error(NULL, "cannot reopen the log file: %s", strerror(errno));
            else
                log_info(NULL, "log reopened");
        } else {
            begin_shutdown();
        }
    }
}

/* Storage first: nothing a peer sees may depend on a write that is not committed. */
static void flush_before_sleep(struct ev_loop *loop, void *ud)
{
    (void)loop;
    (void)ud;
    if (storage_flush(server.db) < 0)
        log_error(NULL, "storage: group commit failed; this iteration's writes are lost");
    conn_flush_all();
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int write_pidfile(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "%ld\n", (long)getpid());
    return fclose(f);
}

int main(int argc, char **argv)
{
    const char *conf = "conf/isthmus.conf";
    bool check_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
        case 'c':
            conf = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'V':
            printf("%s %s\n", ISTHMUS_NAME, ISTHMUS_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    char err[1024];
    if (config_load(conf, &server.cfg, err, sizeof err) < 0 ||
        prepare_hosts(&server.cfg, err, sizeof err) < 0) {
        fprintf(stderr, "isthmus: %s\n", err);
        config_fini(&server.cfg);
        return 1;
    }
    if (check_only) {
        printf("%s: configuration OK\n", conf);
        config_fini(&server.cfg);
        jid_cache_clear();
        return 0;
    }

    int rc = 1;
    if (log_open(server.cfg.log_file, (enum log_level)server.cfg.log_level) < 0) {
        fprintf(stderr, "isthmus: cannot open log file %s: %s\n", server.cfg.log_file,
                strerror(errno));
        config_fini(&server.cfg);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    raise_fd_limit();
    server.started = wall_time();

    if (mkdir_p(server.cfg.data_dir, 0700) < 0) {
        log_error(NULL, "cannot create data directory %s: %s", server.cfg.data_dir,
                  strerror(errno));
        goto out;
    }
    char *dbpath = xasprintf("%s/isthmus.db", server.cfg.data_dir);
    server.db = storage_open(dbpath, err, sizeof err);
    free(dbpath);
    if (!server.db) {
        log_error(NULL, "storage: %s", err);
        goto out;
    }
    storage_set_group_commit(server.db, true);
    if (tls_init(&server.cfg, err, sizeof err) < 0) {
        log_error(NULL, "TLS: %s", err);
        goto out;
    }
    server.loop = ev_loop_new();
    ev_set_before_sleep(server.loop, flush_before_sleep, NULL);
    ev_io_add(server.loop, sfd, EV_READ, on_signal, NULL);
    if (modules_init() < 0)
        goto out;
    if (c2s_init(err, sizeof err) < 0) {
        log_error(NULL, "%s", err);
        goto out;
    }
    if (s2s_init(err, sizeof err) < 0) {
        log_error(NULL, "%s", err);
        goto out;
    }
    if (component_init(err, sizeof err) < 0) {
        log_error(NULL, "%s", err);
        goto out;
    }
    if (server.cfg.pidfile && write_pidfile(server.cfg.pidfile) < 0) {
        log_error(NULL, "cannot write pidfile %s: %s", server.cfg.pidfile, strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < server.cfg.n_hosts; i++)
        log_info(NULL, "serving %s%s", server.cfg.hosts[i].name,
                 server.cfg.hosts[i].registration ? " (in-band registration on)" : "");
    log_info(NULL, "%s %s: server ready", ISTHMUS_NAME, ISTHMUS_VERSION);
    ev_run(server.loop);
    log_info(NULL, "stopped");
    rc = 0;
out:
    component_fini();
    s2s_fini();
    c2s_fini();
    modules_fini();
    if (server.loop) {
        ev_io_del(server.loop, sfd);
        ev_loop_free(server.loop);
    }
    close(sfd);
    tls_fini();
    storage_close(server.db);
    if (server.cfg.pidfile && rc == 0)
        unlink(server.cfg.pidfile);
    config_fini(&server.cfg);
    jid_cache_clear();
    log_close();
    return rc;
}
