#!/usr/bin/python3
"""bench/ircgw.py — IRC gateway benchmark: build/isthmus-irc next to biboumi, same run, same
machine, no XMPP server in the measurement. See bench/README.md ("IRC gateway benchmark").

    /usr/bin/python3 bench/ircgw.py [--quick] [--n N] [--gateways isthmus,biboumi]
                                    [--window W] [--settle S] [--shared-channel] [--keep]

For each gateway this script
  - starts its own ngircd on 127.0.0.1:<free port> (no connection, per-IP, join or flood limits;
    as user irc when run as root), pinned to CPU 0 like the script itself;
  - plays the XMPP server's component port (XEP-0114): listens on 127.0.0.1:<free port>, answers
    the gateway's stream header with an id, checks <handshake/> = hex(SHA-1(id + secret)) and
    answers <handshake/>;
  - starts the gateway pinned to CPU 1, with the file limit raised here (inherited);
  - sends MUC join presences (XEP-0045 §7.2) from N distinct users u{i}@bench.test/r, at most W
    in flight, each of which makes the gateway open its own IRC connection and JOIN; a join is
    done when the gateway sends that user's self-presence (status 110) back on the stream;
  - at the steps 0, N/4, N/2, N waits S seconds, then reads VmRSS from /proc/PID/status and
    utime+stime from /proc/PID/stat.
Reported per gateway: RSS slope per IRC connection (least squares over the steps), joins/s
(connections opened and joined per second of joining), gateway CPU per connection (CPU time
spent while joining / connections), join latency (presence sent → self-presence) and failures;
then the ratios isthmus-irc / biboumi.

By default user i joins its own channel #bench{i}: with one channel shared by all, every join is
broadcast to every member already there and every connection keeps the whole member list, so the
cost grows as N² and is no longer a per-connection figure (--shared-channel measures that case,
all users in #bench).

biboumi 9 tries ports 6697/6670 (TLS) and then 6667 for an IRC server named in the JID; its only
per-server port setting is the per-user "configure" ad-hoc command stored in its SQLite table
ircserveroptions_. The script therefore lets biboumi create its database (one start against a
closed port), writes one row per bench user (ports_ = the ngircd port, tlsports_ empty, the other
columns at biboumi 9.0's defaults), then starts it for real: no fixed port is needed.
"""

import argparse
import hashlib
import os
import pwd
import resource
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import xml.parsers.expat
from xml.sax.saxutils import quoteattr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISTHMUS_IRC = os.path.join(ROOT, 'build', 'isthmus-irc')
BIBOUMI = shutil.which('biboumi') or '/usr/bin/biboumi'
NGIRCD = shutil.which('ngircd') or '/usr/sbin/ngircd'
IRC_IP = '127.0.0.1'
USER_DOMAIN = 'bench.test'
SECRET = 'ircgw-bench-secret'
GATEWAY_CPU = 1
SCRIPT_CPU = 0
CLK_TCK = os.sysconf('SC_CLK_TCK')
NS_MUC = 'http://jabber.org/protocol/muc'
STALL_S = 60          # no join finished for this long: the step gives up on the rest

NGIRCD_CONF = """\
# ngircd for bench/ircgw.py: loopback only, no DNS/ident/PAM, no limit a gateway benchmark
# would hit (every connection comes from 127.0.0.1).
[Global]
\tName = irc.bench.test
\tInfo = Isthmus IRC gateway benchmark
\tListen = {ip}
\tPorts = {port}
\tMotdPhrase = bench
\tPidFile = {dir}/ngircd.pid
{uid_lines}
[Limits]
\tMaxConnections = 0
\tMaxConnectionsIP = 0
\tMaxJoins = 0
\tMaxNickLength = 30
\tMaxPenaltyTime = 0
\tPingTimeout = 600
\tPongTimeout = 120
[Options]
\tDNS = no
\tIdent = no
\tPAM = no
\tIncludeDir = {dir}/conf.d
"""

ISTHMUS_CONF = """\
[server]
data_dir = {dir}/data
log_level = warn
[gateway {domain}]
type = irc
server = 127.0.0.1:{comp_port}
secret = {secret}
irc_flood_burst = 1000
[irc-network {irc_ip}]
address = {irc_ip}:{irc_port}
tls = false
"""

BIBOUMI_CONF = """\
hostname={domain}
password={secret}
xmpp_server_ip=127.0.0.1
port={comp_port}
db_name={dir}/biboumi.sqlite
log_file={dir}/biboumi.log
log_level={log_level}
identd_port=0
policy_directory={dir}
"""


def log(msg):
    print('== ' + msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def port_open(port, host='127.0.0.1'):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pinned(cpu):
    """preexec_fn: run the child on one CPU, in its own session (so a ^C here reaches it only
    through our cleanup)."""
    def fn():
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    return fn


def proc_alive(pid):
    """False once the process is gone or a zombie (PID 1 here reaps orphans late)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def rss_kb(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    """utime + stime of the process, in seconds (/proc/PID/stat fields 14 and 15)."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def own_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def listen_overflows():
    """The machine-wide TcpExt ListenOverflows counter: SYNs dropped because a listener's
    accept queue was full (ngircd's backlog is 10; a drop costs the connect a 1 s retransmit)."""
    try:
        with open('/proc/net/netstat') as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[0::2], lines[1::2]):
        if names.startswith('TcpExt:'):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get('ListenOverflows', 0))
    return 0


def loadavg():
    with open('/proc/loadavg') as f:
        return float(f.read().split()[0])


def fd_count(pid):
    try:
        return len(os.listdir('/proc/%d/fd' % pid))
    except OSError:
        return -1


def slope(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0


def pct(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * p / 100.0))]


class Daemon:
    """A foreground process started here and stopped by its PID (TERM, then KILL)."""

    def __init__(self, name, argv, log_path, cwd, cpu):
        self.name, self.log_path = name, log_path
        self.out = open(log_path, 'ab')
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT, cwd=cwd,
                                     preexec_fn=pinned(cpu), start_new_session=True)
        self.pid = self.proc.pid

    def alive(self):
        return self.proc.poll() is None and proc_alive(self.pid)

    def tail(self, n=1500):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read()[-n:].decode('utf-8', 'replace')
        except OSError:
            return ''

    def stop(self, wait=10, quiet=False):
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                if not quiet:
                    log('%s (pid %d) still running %d s after TERM; killing it'
                    % (self.name, self.pid, wait))
                self.proc.kill()
                self.proc.wait(5)
        self.out.close()


class BenchError(Exception):
    pass


class Component:
    """The XMPP server's side of one XEP-0114 component stream, on a plain blocking socket
    polled with select. Counts self-presences (status 110) per bench user."""

    def __init__(self, listener, secret):
        self.listener = listener
        self.secret = secret
        self.sock = None
        self.domain = None
        self.stream_id = 'bench%08x' % int.from_bytes(os.urandom(4), 'big')
        self.authenticated = False
        self.closed = False
        self.depth = 0
        self.cur = None          # the depth-1 element being read: [name, attrs, flags]
        self.text = []
        self.joined = {}         # user index → time of its self-presence
        self.errors = {}         # user index → error condition/text
        self.stanzas = 0
        self.outbuf = b''
        self.parser = xml.parsers.expat.ParserCreate()
        self.parser.buffer_text = True
        self.parser.StartElementHandler = self._start
        self.parser.EndElementHandler = self._end
        self.parser.CharacterDataHandler = self._chars

    # -- expat callbacks
    def _start(self, name, attrs):
        self.depth += 1
        if self.depth == 1:
            if name != 'stream:stream':
                raise BenchError('component sent <%s> instead of a stream header' % name)
            self.domain = attrs.get('to')
            self.send("<?xml version='1.0'?><stream:stream xmlns:stream="
                      "'http://etherx.jabber.org/streams' xmlns='jabber:component:accept' "
                      "from=%s id=%s>" % (quoteattr(self.domain or ''), quoteattr(self.stream_id)))
        elif self.depth == 2:
            self.cur = [name, attrs, set()]
            self.text = []
        elif self.cur is not None:
            if name == 'status' and attrs.get('code') == '110':
                self.cur[2].add('110')
            elif name == 'error':
                self.cur[2].add('error')
            elif 'error' in self.cur[2] and self.depth == 4:
                self.cur[2].add('cond:' + name)

    def _chars(self, data):
        if self.depth == 2 or (self.cur and self.cur[0] == 'presence'):
            if sum(len(t) for t in self.text) < 2000:
                self.text.append(data)

    def _end(self, name):
        if self.depth == 2 and self.cur is not None:
            self._stanza(*self.cur)
            self.cur = None
        elif self.depth == 1:
            self.closed = True
        self.depth -= 1

    def _stanza(self, name, attrs, flags):
        self.stanzas += 1
        if name == 'handshake':
            want = hashlib.sha1((self.stream_id + self.secret).encode()).hexdigest()
            got = ''.join(self.text).strip().lower()
            if got != want:
                self.send('<stream:error><not-authorized xmlns='
                          "'urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>")
                raise BenchError('bad handshake from the gateway: %r' % got)
            self.send('<handshake/>')
            self.authenticated = True
            return
        if name == 'iq' and attrs.get('type') in ('get', 'set'):
            # We are no XMPP server: every request gets service-unavailable (RFC 6120 §8.3.3.19).
            self.send("<iq type='error' from=%s to=%s id=%s><error type='cancel'>"
                      "<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                      "</error></iq>" % (quoteattr(attrs.get('to', '')),
                                         quoteattr(attrs.get('from', '')),
                                         quoteattr(attrs.get('id', ''))))
            return
        if name != 'presence':
            return
        user = user_index(attrs.get('to', ''))
        if user is None:
            return
        if attrs.get('type') == 'error':
            conds = sorted(f[5:] for f in flags if f.startswith('cond:'))
            self.errors.setdefault(user, '%s %s' % (','.join(conds), ''.join(self.text)[:200]))
        elif '110' in flags and attrs.get('type') != 'unavailable':
            self.joined.setdefault(user, time.monotonic())

    # -- I/O
    def send(self, data):
        self.outbuf += data.encode() if isinstance(data, str) else data

    def flush(self):
        while self.outbuf:
            try:
                n = self.sock.send(self.outbuf)
            except BlockingIOError:
                return
            except OSError as e:
                raise BenchError('component stream: %s' % e)
            self.outbuf = self.outbuf[n:]

    def accept(self, timeout, alive):
        deadline = time.monotonic() + timeout
        self.listener.settimeout(0.2)
        while self.sock is None:
            if time.monotonic() > deadline:
                raise BenchError('the gateway did not connect to the component port')
            if not alive():
                raise BenchError('the gateway exited before connecting')
            try:
                self.sock, _ = self.listener.accept()
            except socket.timeout:
                continue
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not self.authenticated:
            if time.monotonic() > deadline:
                raise BenchError('no component handshake from the gateway')
            self.pump(0.2)

    def pump(self, timeout):
        """Reads (and answers) whatever arrives within timeout seconds; returns at the first
        read, or at the timeout."""
        self.flush()
        want_w = [self.sock] if self.outbuf else []
        r, w, _ = select.select([self.sock], want_w, [], timeout)
        if w:
            self.flush()
        if r:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as e:
                raise BenchError('component stream: %s' % e)
            if not data:
                raise BenchError('the gateway closed the component stream')
            try:
                self.parser.Parse(data, False)
            except xml.parsers.expat.ExpatError as e:
                raise BenchError('component stream not well-formed: %s' % e)
            self.flush()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.setblocking(True)
                self.sock.settimeout(1)
                self.sock.sendall(b'</stream:stream>')
            except OSError:
                pass
            self.sock.close()
            self.sock = None


def user_index(jid):
    """u{i}@bench.test/... → i, or None."""
    if not jid.startswith('u'):
        return None
    at = jid.find('@')
    if at < 2 or not jid[at + 1:].startswith(USER_DOMAIN):
        return None
    try:
        return int(jid[1:at])
    except ValueError:
        return None


def room_of(i, domain, shared):
    chan = '#bench' if shared else '#bench%d' % i
    return '%s%%%s@%s' % (chan, IRC_IP, domain)


def join_presence(i, domain, shared):
    return ("<presence from='u%d@%s/r' to='%s/u%d'><x xmlns='%s'/></presence>"
            % (i, USER_DOMAIN, room_of(i, domain, shared), i, NS_MUC))


# ---------------------------------------------------------------------------- peers

def start_ngircd(d):
    os.makedirs(os.path.join(d, 'conf.d'), exist_ok=True)
    port = free_port()
    uid_lines = ''
    if os.getuid() == 0:
        try:
            irc = pwd.getpwnam('irc')
            uid_lines = '\tServerUID = irc\n\tServerGID = irc'
            os.chown(d, irc.pw_uid, irc.pw_gid)   # for its PidFile, written after the switch
        except KeyError:
            pass
    conf = os.path.join(d, 'ngircd.conf')
    with open(conf, 'w') as f:
        f.write(NGIRCD_CONF.format(ip=IRC_IP, port=port, dir=d, uid_lines=uid_lines))
    os.chmod(d, 0o755)
    os.chmod(conf, 0o644)
    t = subprocess.run([NGIRCD, '-f', conf, '-t'], capture_output=True, text=True, timeout=20)
    if t.returncode != 0:
        raise BenchError('ngircd rejected its config: %s%s' % (t.stdout, t.stderr))
    p = Daemon('ngircd', [NGIRCD, '-n', '-f', conf], os.path.join(d, 'ngircd.log'), d,
               SCRIPT_CPU)
    deadline = time.monotonic() + 20
    while not port_open(port, IRC_IP):
        if not p.alive() or time.monotonic() > deadline:
            raise BenchError('ngircd did not start:\n' + p.tail())
        time.sleep(0.1)
    return p, port


def start_isthmus(d, comp_port, irc_port, domain):
    os.makedirs(os.path.join(d, 'data'), exist_ok=True)
    conf = os.path.join(d, 'isthmus-irc.conf')
    with open(conf, 'w') as f:
        f.write(ISTHMUS_CONF.format(dir=d, domain=domain, comp_port=comp_port, secret=SECRET,
                                    irc_ip=IRC_IP, irc_port=irc_port))
    return Daemon('isthmus-irc', [ISTHMUS_IRC, '-c', conf, '-n', domain],
                  os.path.join(d, 'isthmus-irc.log'), d, GATEWAY_CPU)


# biboumi 9.0 ircserveroptions_ defaults (src/database/database.hpp): verifycert_ 1,
# maxhistorylength_ 20, throttlelimit_ 10; the text columns empty.
BIBOUMI_ROW = ('INSERT INTO ircserveroptions_ (owner_, server_, pass_, tlsports_, ports_, '
               'username_, realname_, verifycert_, trustedfingerprint_, encodingout_, '
               'encodingin_, maxhistorylength_, address_, nick_, saslpassword_, throttlelimit_) '
               "VALUES (?, ?, '', '', ?, '', '', 1, '', '', '', 20, '', '', '', 10)")


def prepare_biboumi(d, n, irc_port, domain):
    """Lets biboumi create its schema (it exits when the XMPP port refuses), then stores for
    every bench user the per-server option "ports" = the ngircd port, no TLS ports."""
    cfg = os.path.join(d, 'biboumi-init.cfg')
    with open(cfg, 'w') as f:
        f.write(BIBOUMI_CONF.format(domain=domain, secret=SECRET, comp_port=free_port(), dir=d,
                                    log_level=2))
    subprocess.run([BIBOUMI, cfg], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, cwd=d, timeout=30)
    db = sqlite3.connect(os.path.join(d, 'biboumi.sqlite'))
    try:
        db.executemany(BIBOUMI_ROW, (('u%d@%s' % (i, USER_DOMAIN), IRC_IP, str(irc_port))
                                     for i in range(n)))
        db.commit()
    except sqlite3.Error as e:
        raise BenchError('cannot write biboumi per-server options: %s' % e)
    finally:
        db.close()


def start_biboumi(d, comp_port, irc_port, domain):
    cfg = os.path.join(d, 'biboumi.cfg')
    with open(cfg, 'w') as f:
        # log_level 2 = warning: the same verbosity as isthmus-irc's log_level = warn.
        f.write(BIBOUMI_CONF.format(domain=domain, secret=SECRET, comp_port=comp_port, dir=d,
                                    log_level=2))
    return Daemon('biboumi', [BIBOUMI, cfg], os.path.join(d, 'biboumi.out'), d, GATEWAY_CPU)


# ---------------------------------------------------------------------------- measurement

def run_gateway(name, work, args, steps):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    res = {'name': name}
    ircd = gw = comp = None
    listener = socket.socket()
    try:
        ircd, irc_port = start_ngircd(os.path.join(d, 'ngircd'))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(('127.0.0.1', 0))
        listener.listen(8)
        comp_port = listener.getsockname()[1]
        if name == 'isthmus':
            domain = 'irc.bench.test'
            gw = start_isthmus(d, comp_port, irc_port, domain)
        else:
            domain = 'biboumi.bench.test'
            prepare_biboumi(d, steps[-1], irc_port, domain)
            gw = start_biboumi(d, comp_port, irc_port, domain)
        comp = Component(listener, SECRET)
        comp.accept(30, gw.alive)
        if comp.domain != domain:
            raise BenchError('the gateway announced %r, expected %r' % (comp.domain, domain))
        log('%s: pid %d, component connected as %s; ngircd pid %d on %s:%d'
            % (name, gw.pid, domain, ircd.pid, IRC_IP, irc_port))

        def settle():
            end = time.monotonic() + args.settle
            while time.monotonic() < end:
                comp.pump(max(0.0, end - time.monotonic()))
                if not gw.alive():
                    raise BenchError('%s died:\n%s' % (name, gw.tail()))

        res['loadavg_before'] = loadavg()
        settle()
        samples = [(0, rss_kb(gw.pid), fd_count(gw.pid))]
        res['rss_base_kb'] = samples[0][1]
        log('%s: %5d connections  RSS %7d KB  fds %5d' % ((name,) + samples[0]))
        sent_at = {}
        steps_cpu = []
        idle_pct = 0.0
        latencies = []
        join_time = 0.0
        join_cpu = 0.0
        ircd_cpu = 0.0
        overflows = 0
        self_cpu = 0.0
        failed = 0
        done = 0
        for step in steps[1:]:
            cpu0, t0 = cpu_s(gw.pid), time.monotonic()
            icpu0, scpu0 = cpu_s(ircd.pid), own_cpu_s()
            ovf0 = listen_overflows()
            nxt = done
            last_progress = t0
            pending = set()
            while True:
                # Joins of this step that finished (self-presence or error).
                for i in [i for i in pending if i in comp.joined or i in comp.errors]:
                    pending.discard(i)
                    if i in comp.joined:
                        latencies.append(comp.joined[i] - sent_at[i])
                    last_progress = time.monotonic()
                while nxt < step and len(pending) < args.window:
                    comp.send(join_presence(nxt, domain, args.shared_channel))
                    sent_at[nxt] = time.monotonic()
                    pending.add(nxt)
                    nxt += 1
                if nxt == step and not pending:
                    break
                if time.monotonic() - last_progress > STALL_S:
                    log('%s: no join finished for %d s; %d still pending'
                        % (name, STALL_S, len(pending)))
                    break
                comp.pump(0.5)
                if not gw.alive():
                    raise BenchError('%s died:\n%s' % (name, gw.tail()))
            t1, cpu1 = time.monotonic(), cpu_s(gw.pid)
            join_time += t1 - t0
            join_cpu += cpu1 - cpu0
            ircd_cpu += cpu_s(ircd.pid) - icpu0
            self_cpu += own_cpu_s() - scpu0
            overflows += listen_overflows() - ovf0
            step_ok = sum(1 for i in range(done, step) if i in comp.joined)
            failed += (step - done) - step_ok
            log('%s: step %d: %d joined in %.2f s (%.0f/s), CPU %.2f s'
                % (name, step, step_ok, t1 - t0, (step - done) / max(t1 - t0, 1e-9),
                   cpu1 - cpu0))
            steps_cpu.append((step, step - done, step_ok, t1 - t0, cpu1 - cpu0))
            done = step
            idle0, it0 = cpu_s(gw.pid), time.monotonic()
            settle()
            idle_pct = 100.0 * (cpu_s(gw.pid) - idle0) / max(time.monotonic() - it0, 1e-9)
            samples.append((step, rss_kb(gw.pid), fd_count(gw.pid)))
            log('%s: %5d connections  RSS %7d KB  fds %5d' % ((name,) + samples[-1]))
        ok = len(comp.joined)
        xs = [s[0] for s in samples]
        ys = [s[1] for s in samples]
        latencies.sort()
        res.update({
            'samples': samples,
            'steps_cpu': steps_cpu,
            'idle_cpu_pct': idle_pct,
            'rss_kb_per_conn': slope(xs, ys),
            'rss_end_kb': ys[-1],
            'joins_per_s': ok / join_time if join_time else 0.0,
            'cpu_ms_per_conn': 1000.0 * join_cpu / ok if ok else 0.0,
            'cpu_ms_per_conn_last': (1000.0 * steps_cpu[-1][4] / steps_cpu[-1][2]
                                     if steps_cpu and steps_cpu[-1][2] else 0.0),
            'gw_cpu_pct': 100.0 * join_cpu / join_time if join_time else 0.0,
            'ircd_cpu_ms_per_conn': 1000.0 * ircd_cpu / ok if ok else 0.0,
            'listen_overflows': overflows,
            'client_cpu_pct': 100.0 * self_cpu / join_time if join_time else 0.0,
            'join_p50_ms': 1000.0 * pct(latencies, 50),
            'join_p99_ms': 1000.0 * pct(latencies, 99),
            'joined': ok,
            'failed': failed,
            'errors': len(comp.errors),
            'fds_end': samples[-1][2],
            'stanzas': comp.stanzas,
            'loadavg_after': loadavg(),
        })
        if comp.errors:
            first = sorted(comp.errors.items())[:3]
            log('%s: %d join errors, e.g. %s' % (name, len(comp.errors), first))
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        log('%s: FAILED: %s' % (name, e))
        if gw is not None:
            log('%s log tail:\n%s' % (name, gw.tail()))
        res['error'] = str(e)
    finally:
        if gw is not None:
            stop_gateway(gw, comp)
        if comp is not None:
            comp.close()
        if ircd is not None:
            # ngircd 26 closes ~100 connections/s when told to go down; nothing of it is kept.
            ircd.stop(2, quiet=True)
        listener.close()
    return res


def stop_gateway(gw, comp):
    """TERM, and keep reading the component stream while the gateway says goodbye (biboumi
    waits for its IRC QUITs and the stream close before it exits)."""
    if gw.proc.poll() is None:
        gw.proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + 10
        while gw.proc.poll() is None and time.monotonic() < end:
            if comp is not None and comp.sock is not None and not comp.closed:
                try:
                    comp.pump(0.1)
                except BenchError:
                    comp.close()
            else:
                time.sleep(0.1)
            if comp is not None and comp.closed and comp.sock is not None:
                comp.close()
    gw.stop(5)


def fmt(v):
    if isinstance(v, float):
        return '%.2f' % v
    return str(v)


def report(results, args, steps):
    order = [r for r in results if 'error' not in r]
    names = {'isthmus': 'isthmus-irc', 'biboumi': 'biboumi'}
    by = {r['name']: r for r in order}
    rows = [
        ('RSS per IRC connection (KB, slope)', 'rss_kb_per_conn'),
        ('gateway RSS at start (KB)', 'rss_base_kb'),
        ('gateway RSS at %d connections (KB)' % steps[-1], 'rss_end_kb'),
        ('joins/s (IRC connect + register + JOIN)', 'joins_per_s'),
        ('gateway CPU per connection (ms)', 'cpu_ms_per_conn'),
        ('gateway CPU per connection, %d→%d (ms)' % (steps[-2], steps[-1]),
         'cpu_ms_per_conn_last'),
        ('gateway CPU while joining (% of its core)', 'gw_cpu_pct'),
        ('gateway CPU at rest, %d connections (%%)' % steps[-1], 'idle_cpu_pct'),
        ('join latency p50 (ms)', 'join_p50_ms'),
        ('join latency p99 (ms)', 'join_p99_ms'),
        ('joined / failed', None),
        ('gateway fds at %d connections' % steps[-1], 'fds_end'),
        ('ngircd CPU per connection (ms)', 'ircd_cpu_ms_per_conn'),
        ('bench script CPU while joining (%)', 'client_cpu_pct'),
        ('listen queue overflows while joining', 'listen_overflows'),
        ('load average before / after', None),
    ]
    head = ['measure'] + [names[r['name']] for r in order]
    ratio = 'isthmus' in by and 'biboumi' in by
    if ratio:
        head.append('isthmus-irc/biboumi')
    print()
    print('# %s  %s  %d CPUs  N=%d steps=%s window=%d settle=%gs channel=%s'
          % (time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()), os.uname().release,
             os.cpu_count(), steps[-1], ','.join(map(str, steps)), args.window, args.settle,
             'shared #bench' if args.shared_channel else 'one per user'))
    versions = subprocess.run(['dpkg-query', '-W', '-f', '# ${Package} ${Version}\n',
                               'biboumi', 'ngircd'], capture_output=True, text=True).stdout
    print(versions, end='')
    for r in order:
        print('# %s RSS samples (connections:KB): %s' % (
            names[r['name']], ' '.join('%d:%d' % (s[0], s[1]) for s in r['samples'])))
        print('# %s joins per step (to:joined in s, CPU ms/conn): %s' % (
            names[r['name']], ' '.join('%d:%d in %.2fs, %.2f' % (
                s[0], s[2], s[3], 1000.0 * s[4] / s[2] if s[2] else 0.0)
                for s in r['steps_cpu'])))
    print()
    print('| ' + ' | '.join(head) + ' |')
    print('|' + '---|' * len(head))
    for title, key in rows:
        if key is None and title.startswith('load'):
            line = [title] + ['%.2f / %.2f' % (r['loadavg_before'], r['loadavg_after'])
                              for r in order]
            if ratio:
                line.append('-')
        elif key is None:
            line = [title] + ['%d/%d' % (r['joined'], r['failed']) for r in order]
            if ratio:
                line.append('-')
        else:
            line = [title] + [fmt(r[key]) for r in order]
            if ratio:
                b = by['biboumi'][key]
                line.append('%.2f' % (by['isthmus'][key] / b) if b else '-')
        print('| ' + ' | '.join(line) + ' |')
    for r in results:
        if 'error' in r:
            print('\n%s FAILED: %s' % (names[r['name']], r['error']))
    parts = []
    for key, label in (('rss_kb_per_conn', 'rss_kb_per_conn'), ('joins_per_s', 'joins_per_s'),
                       ('cpu_ms_per_conn', 'cpu_ms_per_conn')):
        vals = ' '.join('%s=%.2f' % (names[r['name']], r[key]) for r in order)
        if ratio and by['biboumi'][key]:
            vals += ' ratio=%.2f' % (by['isthmus'][key] / by['biboumi'][key])
        parts.append('%s: %s' % (label, vals))
    print('\nSUMMARY N=%d %s' % (steps[-1], '; '.join(parts)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=2000, help='IRC connections at the last step')
    ap.add_argument('--quick', action='store_true', help='N = 400, 1 s settle')
    ap.add_argument('--gateways', default='isthmus,biboumi')
    ap.add_argument('--window', type=int, default=8,
                    help='joins in flight (default 8: ngircd listens with a backlog of 10)')
    ap.add_argument('--settle', type=float, default=None,
                    help='seconds to wait before each RSS sample (default 3, quick 1)')
    ap.add_argument('--shared-channel', action='store_true',
                    help='every user joins #bench (N² fan-out) instead of #bench{i}')
    ap.add_argument('--keep', action='store_true', help='keep the work directory (logs)')
    args = ap.parse_args()
    n = 400 if args.quick else args.n
    if args.settle is None:
        args.settle = 1.0 if args.quick else 3.0
    if n < 4:
        ap.error('--n must be at least 4')
    steps = [0, n // 4, n // 2, n]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit('the open-files hard limit (%d) is below N + 200 = %d' % (hard, need))
    # Raised here, inherited by ngircd and the gateways (each holds one fd per connection).
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        os.sched_setaffinity(0, {SCRIPT_CPU})
    except OSError:
        pass

    gateways = [g.strip() for g in args.gateways.split(',') if g.strip()]
    for g in gateways:
        if g not in ('isthmus', 'biboumi'):
            sys.exit('unknown gateway %s (isthmus, biboumi)' % g)
    if not os.path.exists(NGIRCD):
        sys.exit('ngircd is not installed')
    work = tempfile.mkdtemp(prefix='isthmus-ircgw-bench.')
    os.chmod(work, 0o755)
    log('work directory %s; N=%d steps %s; gateway on CPU %d, ngircd and this script on CPU %d;'
        ' RLIMIT_NOFILE %d' % (work, n, steps, GATEWAY_CPU, SCRIPT_CPU, hard))
    results = []
    try:
        for g in gateways:
            binary = ISTHMUS_IRC if g == 'isthmus' else BIBOUMI
            if not os.access(binary, os.X_OK):
                log('%s: %s missing; skipped' % (g, binary))
                continue
            results.append(run_gateway(g, work, args, steps))
            time.sleep(1)
    finally:
        if args.keep:
            log('kept %s' % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if results:
        report(results, args, steps)
    return 0 if results and all('error' not in r for r in results) else 1


if __name__ == '__main__':
    sys.exit(main())
