"""The IRC gateway (build/isthmus-irc) end to end: the server supervises it as the component
irc.localhost; IRC users are python3-irc clients (irc.client, each in a thread of its own) on an
ngircd started here on a free port; XMPP users are hand-driven streams (harness.Raw), so that
every status code, id and attribute is checked exactly.

What is covered (see the gateway's behaviour in transports/irc/*.h): discovery, XEP-0077
registration (form, edit, removal with roster cleanup), jabber:iq:gateway, channels as MUC rooms
(join, messages both ways with reflection and stanza-id, /me, private messages, topic, nick change,
kick), MAM on a room, an admin [bridge] relaying a channel into a MUC room with puppets, ngircd
killed and restarted (the gateway reconnects and rejoins), undecodable and over-long IRC lines
(through ngircd, and from a scripted IRC server that sends what ngircd would refuse), the gateway
run standalone against Prosody, and the admin ad-hoc commands.

Nothing here waits a fixed time for something to happen: every wait is for the one element or
IRC event expected, with generous limits (the suite also runs under ASan on a loaded machine)."""

import functools
import itertools
import os
import pwd
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import irc.buffer
import irc.client

import harness as h
import peers
from harness import check

HERE = Path(__file__).resolve().parent
NGIRCD = shutil.which('ngircd') or '/usr/sbin/ngircd'
GATEWAY_BIN = h.BUILD / 'isthmus-irc'

GW = 'irc.localhost'
NET = 'irc.test'            # the [irc-network] name (ngircd), used in JIDs
TLS_NET = 'secure.irc.test'  # ngircd's TLS port; its certificate names *.irc.test
WRONG_NET = 'wrongname.test'  # the same port under a name the certificate does not carry
OPTOUT_NET = 'optout.test'   # ... with tls_verify = false
FAKE_NET = 'fake.test'      # an [irc-network] served by FakeIrcServer
DEAD_NET = 'dead.test'      # an [irc-network] whose port refuses connections
MUC = 'conference.localhost'
BRIDGE_ROOM = 'bridged@' + MUC
BRIDGE_CHAN = '#bridged'
RELAYBOT = 'relaybot'
ADMIN = 'admin@localhost'
ADMIN_PW = 'admin-secret-pw'

C = '{jabber:client}'
NS_MUC = 'http://jabber.org/protocol/muc'
NS_MUC_USER = NS_MUC + '#user'
NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info'
NS_DISCO_ITEMS = 'http://jabber.org/protocol/disco#items'
NS_REGISTER = 'jabber:iq:register'
NS_GATEWAY = 'jabber:iq:gateway'
NS_COMMANDS = 'http://jabber.org/protocol/commands'
NS_DATA = 'jabber:x:data'
NS_ROSTER = 'jabber:iq:roster'
NS_SID = 'urn:xmpp:sid:0'
NS_MAM = 'urn:xmpp:mam:2'
NS_FORWARD = 'urn:xmpp:forward:0'
NS_RSM = 'http://jabber.org/protocol/rsm'

# Generous: an IRC connection, a JOIN and the NAMES sync go through three processes, under ASan
# on two loaded cores.
T = max(h.IO_TIMEOUT, 30.0)
RECONNECT_T = 120.0        # gateway backoff is 1, 2, 4 ... 60 s; ngircd is back within seconds
TIMEOUT = 150

srv = None
ngircd = None
fake_irc = None
_counter = itertools.count(1)
_opened = []               # IRC users, XMPP streams, fake servers of the running test


def uniq(prefix):
    """A short unique name (IRC nicks are at most 30 characters on our ngircd)."""
    return '%s%d' % (prefix, next(_counter))


def dump(el):
    return ET.tostring(el).decode(errors='replace')


def gateway_deaths(since):
    """Server log lines since offset since saying a supervised process died."""
    text = srv.log()[since:] if srv else ''
    return [l for l in text.splitlines()
            if 'killed by signal' in l or 'exited with status' in l]


def isolated(fn):
    """Closes every IRC user, XMPP stream and fake server the test opened, pass or fail, and
    fails the test when the supervised gateway died during it (the server restarts it, so this
    would go unnoticed otherwise)."""
    @functools.wraps(fn)
    def run():
        start = len(srv.log()) if srv else 0
        try:
            fn()
        except BaseException as e:
            deaths = gateway_deaths(start)
            if deaths and isinstance(e, AssertionError):
                raise h.TestFailure('%s\n(the gateway died during the test: %s)'
                                    % (e, deaths)) from e
            raise
        finally:
            while _opened:
                try:
                    _opened.pop().close()
                except Exception:
                    pass
        deaths = gateway_deaths(start)
        check(not deaths, 'the gateway died during the test: %s' % deaths)
    return run


# --------------------------------------------------------------------------- ngircd


class Daemon:
    """A foreground process started by argv (own session), stopped by its PID."""

    def __init__(self, name, argv, log_path, cwd):
        self.name, self.log_path, self.argv, self.cwd = name, log_path, argv, cwd
        self._out = None
        self.proc = None
        self.spawn()

    def spawn(self):
        self._out = open(self.log_path, 'ab')
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=self.cwd,
                                     start_new_session=True)

    def log(self):
        try:
            return Path(self.log_path).read_bytes().decode('utf-8', 'replace')
        except OSError:
            return ''

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        check(self.alive(), '%s exited with %s:\n%s' % (self.name, self.proc.returncode,
                                                         self.log()[-3000:]))

    def kill(self):
        """SIGKILL by PID (the crash the gateway must survive)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_out()

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Stops by PID; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_out()
        return self.proc.returncode

    def _close_out(self):
        if self._out:
            self._out.close()
            self._out = None


class Ngircd(Daemon):
    """ngircd (server name irc.test) on 127.0.0.1 and a free port, from peers/ngircd.conf.in."""

    def __init__(self, directory):
        self.dir = directory
        self.port = h.free_port()
        os.makedirs(os.path.join(directory, 'conf.d'), exist_ok=True)
        uid_lines = ''
        if os.getuid() == 0:
            # ngircd refuses to run as root; Debian's package has the irc user.
            try:
                pwd.getpwnam('irc')
                uid_lines = 'ServerUID = irc\n\tServerGID = irc'
            except KeyError:
                pass
        conf = os.path.join(directory, 'ngircd.conf')
        text = string.Template((HERE / 'peers' / 'ngircd.conf.in').read_text()).substitute(
            ip='127.0.0.1', port=self.port, dir=directory, uid_lines=uid_lines)
        # TLS on a second port, with a certificate for irc.test and *.irc.test from a test CA.
        self.tls_port = h.free_port()
        self.ca = peers.TestCA(os.path.join(directory, 'ca'))
        crt, key, _ = self.ca.issue(NET)
        for f in (crt, key):
            os.chmod(f, 0o644)  # read by ngircd as user irc; a throwaway test key
        os.chmod(os.path.join(directory, 'ca'), 0o755)
        text += '[SSL]\n\tCertFile = %s\n\tKeyFile = %s\n\tPorts = %d\n' % (
            crt, key, self.tls_port)
        Path(conf).write_text(text)
        os.chmod(directory, 0o755)
        os.chmod(conf, 0o644)
        t = subprocess.run([NGIRCD, '-f', conf, '-t'], capture_output=True, text=True, timeout=20)
        check(t.returncode == 0, 'ngircd rejected its config: %s%s' % (t.stdout, t.stderr))
        super().__init__('ngircd', [NGIRCD, '-n', '-f', conf],
                         os.path.join(directory, 'ngircd.log'), directory)
        self.wait_ready()

    def wait_ready(self):
        def ready():
            self.check_alive()
            return h.port_open(self.port)
        h.wait_until(ready, 20, 'ngircd to listen on %d' % self.port, 0.05)

    def restart(self):
        """A new ngircd on the same port (after kill())."""
        # The old listening socket is gone with the process; wait until the port can be bound.
        h.wait_until(lambda: _bindable(self.port), 20, 'port %d to be free again' % self.port)
        self.spawn()
        self.wait_ready()


def _bindable(port, ip='127.0.0.1'):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


# --------------------------------------------------------------------------- IRC users


class _LenientBuffer(irc.buffer.DecodingLineBuffer):
    errors = 'replace'


class IrcUser:
    """A python3-irc client in a thread of its own; every event is recorded for wait().

    Events are irc.client.Event (type, source NickMask, target, arguments). wait() returns the
    first recorded event matching pred that no earlier wait() returned, so the order in which
    a test waits does not have to be the order of arrival."""

    def __init__(self, nick, port=None, host='127.0.0.1'):
        self.nick = nick
        self.reactor = irc.client.IRC()
        self.conn = self.reactor.server()
        self.conn.buffer_class = _LenientBuffer
        self.events = []
        self.used = set()
        self.lock = threading.Lock()
        self.stopping = False
        self.reactor.add_global_handler('all_events', self._record, -100)
        self.conn.connect(host, port or ngircd.port, nick, ircname='Isthmus test user')
        self.thread = threading.Thread(target=self._run, name='irc-' + nick, daemon=True)
        self.thread.start()
        _opened.append(self)
        self.wait(lambda e: e.type == 'welcome', 'the IRC welcome')

    def _record(self, conn, event):
        if event.type != 'all_raw_messages':
            with self.lock:
                self.events.append(event)

    def _run(self):
        while not self.stopping:
            try:
                self.reactor.process_once(0.05)
            except Exception:
                if self.stopping:
                    return
                time.sleep(0.05)
            if not self.conn.is_connected():
                # Keep the thread for the recorded events; nothing more will come.
                time.sleep(0.05)

    def describe(self, n=20):
        with self.lock:
            evs = self.events[-n:]
        return ['%s %s %s %s' % (e.type, e.source, e.target, e.arguments) for e in evs]

    def mark(self):
        """An index to pass to wait(since=...) / events_since()."""
        with self.lock:
            return len(self.events)

    def events_since(self, since):
        with self.lock:
            return list(self.events[since:])

    def wait(self, pred, what, timeout=T, since=0):
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                evs = list(enumerate(self.events))
            for i, e in evs[since:]:
                if i not in self.used and pred(e):
                    self.used.add(i)
                    return e
            if time.monotonic() > deadline:
                raise h.TestFailure('IRC %s: timed out after %.0fs waiting for %s; last events: '
                                    '%s' % (self.nick, timeout, what, self.describe()))
            time.sleep(0.02)

    # -- conveniences

    def join(self, chan, expect_op=None):
        """JOINs chan and waits for the end of NAMES; returns the set of nicks (with prefixes)."""
        m = self.mark()
        self.conn.join(chan)
        self.wait(lambda e: e.type == 'join' and e.source.nick == self.conn.get_nickname()
                  and e.target.lower() == chan.lower(), 'our own JOIN of %s' % chan, since=m)
        self.wait(lambda e: e.type == 'endofnames' and e.arguments[:1]
                  and e.arguments[0].lower() == chan.lower(), 'the end of NAMES of %s' % chan,
                  since=m)
        names = set()
        for e in self.events_since(m):
            if e.type == 'namreply' and len(e.arguments) >= 3 \
                    and e.arguments[1].lower() == chan.lower():
                names.update(e.arguments[2].split())
        if expect_op is not None:
            check(('@' + self.conn.get_nickname()) in names,
                  'the first joiner of %s should be op: %s' % (chan, names))
        return names

    def say(self, target, text):
        self.conn.privmsg(target, text)

    def wait_msg(self, target, sender, pred, what, since=0, types=('pubmsg', 'privmsg')):
        """A PRIVMSG to target (channel or our nick) from sender matching pred(text)."""
        return self.wait(lambda e: e.type in types and e.source.nick.lower() == sender.lower()
                         and e.target.lower() == target.lower() and pred(e.arguments[0]),
                         what, since=since)

    def close(self):
        try:
            if self.conn.is_connected():
                self.conn.quit('bye')
        except Exception:
            pass
        self.stopping = True
        self.thread.join(5)
        try:
            self.conn.close()
        except Exception:
            pass


class RawIrc:
    """A plain-socket IRC client, for bytes python3-irc would not send (latin-1, long lines)."""

    def __init__(self, nick, port=None):
        self.nick = nick
        self.sock = socket.create_connection(('127.0.0.1', port or ngircd.port), timeout=T)
        self.buf = b''
        self.lines = []
        _opened.append(self)
        self.send(b'NICK %s' % nick.encode())
        self.send(b'USER %s 0 * :raw test' % nick.encode())
        self.wait(lambda l: l.split()[1:2] == [b'001'], 'the IRC welcome')

    def send(self, line):
        self.sock.sendall(line + b'\r\n')

    def wait(self, pred, what, timeout=T):
        deadline = time.monotonic() + timeout
        while True:
            while b'\r\n' in self.buf:
                line, self.buf = self.buf.split(b'\r\n', 1)
                self.lines.append(line)
                if line.startswith(b'PING'):
                    self.send(b'PONG' + line[4:])
                    continue
                if pred(line):
                    return line
            left = deadline - time.monotonic()
            check(left > 0, 'raw IRC %s: timed out waiting for %s; got %s'
                  % (self.nick, what, self.lines[-10:]))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            check(data, 'raw IRC %s: connection closed waiting for %s; got %s'
                  % (self.nick, what, self.lines[-10:]))
            self.buf += data

    def close(self):
        try:
            self.send(b'QUIT :bye')
        except OSError:
            pass
        self.sock.close()


class FakeIrcServer:
    """A scripted IRC server on a free port: it registers whoever connects (answers CAP LS with
    nothing, NICK/USER with 001-005/422), echoes JOINs with NAMES, answers PINGs, and lets the test
    inject raw bytes (what a real server would refuse to relay: over-long lines, NULs...)."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(('127.0.0.1', 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.clients = []        # [{'sock', 'nick', 'joined': set(), 'lines': []}]
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, name='fake-ircd', daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            cl = {'sock': s, 'nick': None, 'user': False, 'joined': set(), 'lines': [],
                  'registered': False, 'cap': False}
            with self.lock:
                self.clients.append(cl)
            threading.Thread(target=self._serve, args=(cl,), daemon=True).start()

    def _send(self, cl, data):
        try:
            cl['sock'].sendall(data)
        except OSError:
            pass

    def _serve(self, cl):
        buf = b''
        s = cl['sock']
        while not self.stopping:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                line = line.rstrip(b'\r').decode('utf-8', 'replace')
                with self.lock:
                    cl['lines'].append(line)
                self._handle(cl, line)

    def _handle(self, cl, line):
        parts = line.split(' ')
        cmd = parts[0].upper()
        srv_ = ':%s ' % FAKE_NET
        if cmd == 'CAP' and len(parts) > 1 and parts[1].upper() == 'LS':
            cl['cap'] = True   # registration waits for CAP END (IRCv3 capability negotiation)
            self._send(cl, (srv_ + 'CAP * LS :\r\n').encode())
        elif cmd == 'CAP' and len(parts) > 2 and parts[1].upper() == 'REQ':
            self._send(cl, (srv_ + 'CAP * NAK :%s\r\n' % line.split(' ', 2)[2].lstrip(':'))
                       .encode())
        elif cmd == 'CAP' and len(parts) > 1 and parts[1].upper() == 'END':
            cl['cap'] = False
        elif cmd == 'NICK' and len(parts) > 1:
            old = cl['nick']
            cl['nick'] = parts[1].lstrip(':')
            if cl['registered'] and old:
                self._send(cl, (':%s!u@fake NICK :%s\r\n' % (old, cl['nick'])).encode())
        elif cmd == 'USER':
            cl['user'] = True
        elif cmd == 'PING':
            self._send(cl, (srv_ + 'PONG %s :%s\r\n' % (FAKE_NET, line[5:].lstrip(':'))).encode())
        elif cmd == 'JOIN' and len(parts) > 1 and cl['registered']:
            for chan in parts[1].split(','):
                n = cl['nick']
                cl['joined'].add(chan.lower())
                self._send(cl, (':%s!u@fake JOIN %s\r\n' % (n, chan)
                                + srv_ + '331 %s %s :No topic is set\r\n' % (n, chan)
                                + srv_ + '353 %s = %s :%s @fakeop\r\n' % (n, chan, n)
                                + srv_ + '366 %s %s :End of NAMES list\r\n' % (n, chan)).encode())
        elif cmd == 'QUIT':
            self._send(cl, b'ERROR :Closing link\r\n')
            try:
                cl['sock'].shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if not cl['registered'] and cl['nick'] and cl['user'] and not cl['cap']:
            cl['registered'] = True
            n = cl['nick']
            self._send(cl, (srv_ + '001 %s :Welcome to the fake network\r\n' % n
                            + srv_ + '002 %s :Your host is %s\r\n' % (n, FAKE_NET)
                            + srv_ + '003 %s :This server was created today\r\n' % n
                            + srv_ + '004 %s %s fake-1 io ovntk\r\n' % (n, FAKE_NET)
                            + srv_ + '005 %s CHANTYPES=# PREFIX=(ov)@+ CASEMAPPING=rfc1459 '
                            'NICKLEN=30 :are supported by this server\r\n' % n
                            + srv_ + '422 %s :MOTD File is missing\r\n' % n).encode())

    def client_in(self, chan):
        """The connected client that JOINed chan, or None."""
        with self.lock:
            for cl in self.clients:
                if chan.lower() in cl['joined']:
                    return cl
        return None

    def inject(self, cl, data):
        self._send(cl, data)

    def close(self):
        self.stopping = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            for cl in self.clients:
                try:
                    cl['sock'].close()
                except OSError:
                    pass


# --------------------------------------------------------------------------- XMPP users


_resources = itertools.count(1)


def _login(raw, user, password, domain, mech):
    """STARTTLS, SASL, bind with the stream's to= set to domain (Raw.login always says
    localhost)."""
    raw.open(to=domain)
    raw.starttls()
    features = raw.open(to=domain)
    check(mech in h.mechanisms(features), '%s not offered: %s' % (mech, h.mechanisms(features)))
    ok, cond = h.scram_auth(raw, mech, user, password)
    check(ok, 'SASL %s failed: %s' % (mech, cond))
    raw.open(to=domain)
    return raw.bind('gwtest%d' % next(_resources))


class XUser:
    """An XMPP client stream (harness.Raw) that records every stanza; wait() returns the first
    unconsumed one matching pred. Roster pushes are acknowledged, other requests refused."""

    def __init__(self, bare, password, host='127.0.0.1', port=None, domain=h.DOMAIN,
                 mech='SCRAM-SHA-256', presence=True):
        self.raw = h.Raw(port or srv.port, host=host, timeout=T)
        self.jid = _login(self.raw, bare.split('@')[0], password, domain, mech)
        self.bare = self.jid.split('/')[0]
        self.domain = domain
        self.got = []
        self.used = set()
        self._ids = itertools.count(1)
        _opened.append(self)
        if presence:
            self.send('<presence/>')

    @classmethod
    def new(cls, prefix='x', **kw):
        bare, pw = srv.new_user(prefix)
        return cls(bare, pw, **kw)

    def send(self, xml):
        self.raw.send(xml)

    def _handle(self, el):
        if el.tag == C + 'iq' and el.get('type') in ('get', 'set'):
            if el.find('{%s}query' % NS_ROSTER) is not None and el.get('type') == 'set':
                self.send("<iq type='result' id='%s'/>" % xml_attr(el.get('id', '')))
            else:
                to = " to='%s'" % xml_attr(el.get('from')) if el.get('from') else ''
                self.send("<iq type='error' id='%s'%s><error type='cancel'>"
                          "<service-unavailable xmlns='%s'/></error></iq>"
                          % (xml_attr(el.get('id', '')), to, h.NS_STANZAS))
        self.got.append(el)

    def _pump(self, deadline):
        """Reads what arrives until deadline (at most); False when nothing came."""
        raw = self.raw
        if not raw.pending:
            if raw.eof or raw.stream_ended:
                raise h.TestFailure('%s: the stream was closed; last stanzas: %s'
                                    % (self.bare, self.describe()))
            try:
                raw._feed_once(min(deadline, time.monotonic() + 1.0))
            except h.TestFailure:
                return False  # a read timeout
        while raw.pending:
            self._handle(raw.pending.pop(0))
        return True

    def describe(self, n=12):
        return '\n  '.join(dump(e)[:600] for e in self.got[-n:])

    def mark(self):
        return len(self.got)

    def wait(self, pred, what, timeout=T, since=0):
        deadline = time.monotonic() + timeout
        i = since
        while True:
            while i < len(self.got):
                if i not in self.used and pred(self.got[i]):
                    self.used.add(i)
                    return self.got[i]
                i += 1
            if time.monotonic() > deadline:
                raise h.TestFailure('%s: timed out after %.0fs waiting for %s; last stanzas:\n  %s'
                                    % (self.bare, timeout, what, self.describe()))
            self._pump(deadline)

    def since(self, mark, pred=lambda e: True):
        return [e for e in self.got[mark:] if pred(e)]

    def iq(self, typ, to, payload, timeout=T):
        """Sends an iq and returns its answer (result or error)."""
        iid = 'q%d' % next(self._ids)
        to_attr = " to='%s'" % xml_attr(to) if to else ''
        self.send("<iq type='%s' id='%s'%s>%s</iq>" % (typ, iid, to_attr, payload))
        return self.wait(lambda e: e.tag == C + 'iq' and e.get('id') == iid
                         and e.get('type') in ('result', 'error'),
                         'the answer to iq %s %s to %s' % (typ, payload[:60], to), timeout)

    def iq_ok(self, typ, to, payload, timeout=T):
        r = self.iq(typ, to, payload, timeout)
        check(r.get('type') == 'result', 'iq %s %s to %s failed: %s' % (typ, payload[:80], to,
                                                                       dump(r)))
        return r

    def roster(self):
        r = self.iq_ok('get', None, "<query xmlns='%s'/>" % NS_ROSTER)
        return {i.get('jid'): i for i in r.iter('{%s}item' % NS_ROSTER)}

    def sync(self):
        """A round trip through our server (everything routed before it has been handled)."""
        self.iq_ok('get', self.domain, "<ping xmlns='urn:xmpp:ping'/>")

    def close(self):
        try:
            self.raw.send('</stream:stream>')
        except Exception:
            pass
        self.raw.close()


def xml_attr(s):
    return (s.replace('&', '&amp;').replace("'", '&apos;').replace('<', '&lt;')
            .replace('>', '&gt;'))


def xml_text(s):
    return s.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


# -- stanza predicates


def ptype(el):
    return el.get('type') or 'available'


def statuses(el):
    return {s.get('code') for s in el.findall('{%s}x/{%s}status' % (NS_MUC_USER, NS_MUC_USER))}


def muc_item(el):
    return el.find('{%s}x/{%s}item' % (NS_MUC_USER, NS_MUC_USER))


def is_presence(el, frm=None, typ=None):
    return el.tag == C + 'presence' and (frm is None or el.get('from') == frm) \
        and (typ is None or ptype(el) == typ)


def is_groupchat(el, frm=None, body=None):
    return el.tag == C + 'message' and el.get('type') == 'groupchat' \
        and (frm is None or el.get('from') == frm) \
        and (body is None or el.findtext(C + 'body') == body)


def body_of(el):
    return el.findtext(C + 'body')


def bare(jid):
    return (jid or '').split('/')[0]


def room_jid(chan, net=NET, gw=GW):
    """#chan%net@gw, lower-cased (IRC channel names are case-insensitive)."""
    return '%s%%%s@%s' % (chan.lower(), net, gw)


def join(x, room, nick, timeout=T):
    """Joins room as nick (XEP-0045 §7.2): waits for the self-presence (status 110) and then the
    subject, which ends the join. Returns (self presence, mark before the join)."""
    m = x.mark()
    x.send("<presence to='%s/%s'><x xmlns='%s'/></presence>" % (room, nick, NS_MUC))
    me = x.wait(lambda e: e.tag == C + 'presence' and bare(e.get('from')) == room
                and (e.get('type') == 'error' or '110' in statuses(e)),
                'the self-presence from %s' % room, timeout, since=m)
    check(me.get('type') != 'error', 'joining %s failed: %s' % (room, dump(me)))
    x.wait(lambda e: e.tag == C + 'message' and e.get('type') == 'groupchat'
           and bare(e.get('from')) == room and e.find(C + 'subject') is not None,
           'the subject that ends the join of %s' % room, timeout, since=m)
    return me, m


def gateway_ready(x=None, domain=GW, timeout=60):
    """Polls disco#info on the gateway until the component answers (the server bounces with an
    error while it is not connected)."""
    own = x is None
    if own:
        x = XUser.new('probe', presence=False)
    deadline = time.monotonic() + timeout
    try:
        while True:
            r = x.iq('get', domain, "<query xmlns='%s'/>" % NS_DISCO_INFO)
            if r.get('type') == 'result':
                return r
            if time.monotonic() > deadline:
                raise h.TestFailure('the gateway %s never answered disco#info: %s\n%s'
                                    % (domain, dump(r), srv.log_tail(40) if srv else ''))
            time.sleep(0.25)
    finally:
        if own:
            x.close()
            _opened.remove(x)


# --------------------------------------------------------------------------- module setup


def server_config(comp_port, irc_port, fake_port, dead_port, tls_port):
    return {
        'muc': {'hosts': MUC},
        'component': {'listen': '127.0.0.1:%d' % comp_port},
        'gateway ' + GW: {'type': 'irc', 'roster': 'both', 'message': 'outgoing',
                          'admins': ADMIN, 'irc_flood_burst': '1000',
                          'irc_flood_interval_ms': '1', 'restart_delay': '1'},
        'irc-network ' + NET: {'address': '127.0.0.1:%d' % irc_port, 'tls': 'false'},
        'irc-network ' + FAKE_NET: {'address': '127.0.0.1:%d' % fake_port, 'tls': 'false'},
        'irc-network ' + DEAD_NET: {'address': '127.0.0.1:%d' % dead_port, 'tls': 'false'},
        # The same ngircd over TLS: a name its certificate carries (verified against the test CA,
        # which the gateway trusts through SSL_CERT_FILE), a name it does not carry, and that
        # name again with verification switched off for the network.
        'irc-network ' + TLS_NET: {'address': '127.0.0.1:%d' % tls_port, 'tls': 'true'},
        'irc-network ' + WRONG_NET: {'address': '127.0.0.1:%d' % tls_port, 'tls': 'true'},
        'irc-network ' + OPTOUT_NET: {'address': '127.0.0.1:%d' % tls_port, 'tls': 'true',
                                      'tls_verify': 'false'},
        'bridge relay': {'gateway': GW, 'irc': '%s%%%s' % (BRIDGE_CHAN, NET),
                         'muc': BRIDGE_ROOM, 'nick': RELAYBOT},
    }


def setup_module():
    global srv, ngircd, fake_irc
    check(os.path.exists(NGIRCD), 'ngircd is needed (contrib/install-deps --test)')
    check(GATEWAY_BIN.exists(), '%s does not exist (run make)' % GATEWAY_BIN)
    d = tempfile.mkdtemp(prefix='isthmus-irc-ngircd-')
    ngircd = Ngircd(d)
    fake_irc = FakeIrcServer()
    # A port nothing listens on (given out by the kernel and released): connections are refused.
    srv = h.Server(server_config(h.free_port(), ngircd.port, fake_irc.port, h.free_port(),
                                 ngircd.tls_port))
    # The supervised gateway inherits the server's environment: OpenSSL's SSL_CERT_FILE makes it
    # trust the test CA instead of the system store.
    saved = os.environ.get('SSL_CERT_FILE')
    os.environ['SSL_CERT_FILE'] = str(ngircd.ca.ca_file)
    try:
        srv.start()
    finally:
        if saved is None:
            os.environ.pop('SSL_CERT_FILE', None)
        else:
            os.environ['SSL_CERT_FILE'] = saved
    srv.add_user(ADMIN, ADMIN_PW)
    gateway_ready(timeout=35)  # run.py gives setup_module 60 s in all


def _gateway_pids(log):
    return [int(l.split('started process ', 1)[1].split(':', 1)[0])
            for l in log.splitlines() if '[comp:%s] started process ' % GW in l]


def _pid_alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(') ', 1)[1][0] != 'Z'
    except (OSError, IndexError):
        return False


def teardown_module():
    try:
        if fake_irc:
            fake_irc.close()
        if srv:
            pids = _gateway_pids(srv.log())
            srv.stop()  # checks the log (the gateway's output is in it) for sanitizer reports
            h.wait_until(lambda: not any(_pid_alive(p) for p in pids), 10,
                         'the supervised gateway (pids %s) to stop with the server' % pids)
    finally:
        if ngircd:
            ngircd.stop()
            if not os.environ.get('ISTHMUS_KEEP'):
                shutil.rmtree(ngircd.dir, ignore_errors=True)


# --------------------------------------------------------------------------- discovery


@isolated
def test_disco_lists_the_gateway():
    x = XUser.new('disco')
    r = x.iq_ok('get', h.DOMAIN, "<query xmlns='%s'/>" % NS_DISCO_ITEMS)
    items = {i.get('jid') for i in r.iter('{%s}item' % NS_DISCO_ITEMS)}
    check(GW in items, 'disco#items on the server should list %s: %s' % (GW, dump(r)))
    info = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_DISCO_INFO)
    ids = {(i.get('category'), i.get('type')) for i in info.iter('{%s}identity' % NS_DISCO_INFO)}
    check(('gateway', 'irc') in ids, 'identity gateway/irc expected: %s' % dump(info))
    feats = {f.get('var') for f in info.iter('{%s}feature' % NS_DISCO_INFO)}
    for f in (NS_REGISTER, NS_GATEWAY, NS_COMMANDS):
        check(f in feats, 'feature %s missing from %s' % (f, dump(info)))


# --------------------------------------------------------------------------- registration


def form_fields(el):
    """{var: field element} of the first jabber:x:data form under el."""
    x = el.find('.//{%s}x' % NS_DATA)
    check(x is not None, 'no jabber:x:data form in %s' % dump(el))
    return {f.get('var'): f for f in x.findall('{%s}field' % NS_DATA)}


def field_value(f):
    return f.findtext('{%s}value' % NS_DATA) if f is not None else None


def reg_form(values):
    fields = "<field var='FORM_TYPE' type='hidden'><value>%s</value></field>" % NS_REGISTER
    for k, v in values.items():
        fields += "<field var='%s'><value>%s</value></field>" % (k, xml_text(v))
    return "<query xmlns='%s'><x xmlns='%s' type='submit'>%s</x></query>" % (
        NS_REGISTER, NS_DATA, fields)


def register(x, nick, password='', realname='Test User'):
    values = {'nick': nick, 'realname': realname}
    if password:
        values['password'] = password
    return x.iq('set', GW, reg_form(values))


def gw_in_roster(x):
    r = x.roster()
    return {j: i for j, i in r.items() if j == GW or j.endswith('@' + GW)}


@isolated
def test_register_edit_unregister():
    x = XUser.new('reg')
    x.roster()  # this resource is now interested: it gets roster pushes (RFC 6121 §2.1.6)
    q = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_REGISTER)
    query = q.find('{%s}query' % NS_REGISTER)
    check(query is not None, 'no register query in %s' % dump(q))
    check(query.find('{%s}registered' % NS_REGISTER) is None,
          'a new user must not be <registered/>: %s' % dump(q))
    fields = form_fields(query)
    for var in ('nick', 'password', 'realname'):
        check(var in fields, 'the registration form lacks %s: %s' % (var, dump(q)))
    check(fields['password'].get('type') == 'text-private',
          'the password field should be text-private: %s' % dump(fields['password']))
    for legacy in ('nick', 'password'):
        check(query.find('{%s}%s' % (NS_REGISTER, legacy)) is not None,
              'legacy <%s/> field missing (XEP-0077): %s' % (legacy, dump(q)))

    nick = uniq('regnick')
    m = x.mark()
    r = register(x, nick, password='nickserv-secret-1')
    check(r.get('type') == 'result', 'registration refused: %s' % dump(r))

    # XEP-0100 §4.1: the gateway gets into the roster: a roster push (XEP-0356, granted here) or
    # a subscription request from the gateway.
    got = x.wait(lambda e: (e.tag == C + 'iq' and e.get('type') == 'set'
                            and any(i.get('jid') == GW for i in e.iter('{%s}item' % NS_ROSTER)))
                 or is_presence(e, GW, 'subscribe'),
                 'a roster push of %s or its subscribe' % GW, since=m)
    if got.tag == C + 'iq':
        check(GW in x.roster(), 'the gateway should be in the roster after the push')

    q = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_REGISTER)
    query = q.find('{%s}query' % NS_REGISTER)
    check(query.find('{%s}registered' % NS_REGISTER) is not None,
          'a registered user gets <registered/>: %s' % dump(q))
    shown = query.findtext('{%s}nick' % NS_REGISTER) or field_value(form_fields(query).get('nick'))
    check(shown == nick, 'the registered nick %r should be shown, got %r: %s' % (nick, shown,
                                                                               dump(q)))
    check('nickserv-secret-1' not in dump(q), 'the password must not be echoed: %s' % dump(q))

    # Edit.
    nick2 = uniq('regedit')
    r = register(x, nick2)
    check(r.get('type') == 'result', 'editing the registration refused: %s' % dump(r))
    q = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_REGISTER)
    query = q.find('{%s}query' % NS_REGISTER)
    shown = query.findtext('{%s}nick' % NS_REGISTER) or field_value(form_fields(query).get('nick'))
    check(shown == nick2, 'the edited nick %r should be shown, got %r' % (nick2, shown))

    # A contact of the gateway in the roster (XEP-0100 §5.1), to see it go with the
    # registration.
    contact = 'bob%s%%%s@%s' % (uniq(''), NET, GW)
    m = x.mark()
    x.send("<presence to='%s' type='subscribe'/>" % contact)
    x.wait(lambda e: is_presence(e, contact, 'subscribed'), 'subscribed from %s' % contact,
           since=m)
    check(contact in x.roster(), 'the contact should be in the roster after subscribing')

    # Remove (XEP-0077 §3.2, XEP-0100 §4.3): result, and the roster is cleaned.
    r = x.iq('set', GW, "<query xmlns='%s'><remove/></query>" % NS_REGISTER)
    check(r.get('type') == 'result', 'unregistering refused: %s' % dump(r))
    h.wait_until(lambda: not gw_in_roster(x), T,
                 'the gateway and its contacts to leave the roster (still: %s)'
                 % list(gw_in_roster(x)), 0.3)
    q = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_REGISTER)
    check(q.find('{%s}query/{%s}registered' % (NS_REGISTER, NS_REGISTER)) is None,
          'no <registered/> after removal: %s' % dump(q))


@isolated
def test_register_with_legacy_fields():
    x = XUser.new('legreg')
    nick = uniq('legnick')
    r = x.iq('set', GW, "<query xmlns='%s'><nick>%s</nick><password>pw-legacy</password>"
             "</query>" % (NS_REGISTER, nick))
    check(r.get('type') == 'result', 'legacy registration refused: %s' % dump(r))
    q = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_REGISTER)
    check(q.find('{%s}query/{%s}registered' % (NS_REGISTER, NS_REGISTER)) is not None,
          '<registered/> expected: %s' % dump(q))
    r = x.iq('set', GW, "<query xmlns='%s'><remove/></query>" % NS_REGISTER)
    check(r.get('type') == 'result', 'unregistering refused: %s' % dump(r))


@isolated
def test_jabber_iq_gateway():
    x = XUser.new('gwq')
    r = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_GATEWAY)
    check(r.find('{%s}query/{%s}desc' % (NS_GATEWAY, NS_GATEWAY)) is not None
          and r.find('{%s}query/{%s}prompt' % (NS_GATEWAY, NS_GATEWAY)) is not None,
          'jabber:iq:gateway get should give desc and prompt (XEP-0100 §6.3): %s' % dump(r))
    r = x.iq_ok('set', GW, "<query xmlns='%s'><prompt>bob%%%s</prompt></query>"
                % (NS_GATEWAY, NET))
    jid = r.findtext('{%s}query/{%s}jid' % (NS_GATEWAY, NS_GATEWAY))
    check(jid == 'bob%%%s@%s' % (NET, GW), 'prompt bob%%%s should give bob%%%s@%s, got %r'
          % (NET, NET, GW, jid))


# --------------------------------------------------------------------------- channels


def channel_pair(prefix='ch'):
    """A fresh channel with an op IRC user in it, then an XMPP user joined to its room.
    Returns (irc user, xmpp user, channel, room JID, xmpp nick)."""
    chan = '#' + uniq(prefix)
    room = room_jid(chan)
    ircu = IrcUser(uniq('irc'))
    ircu.join(chan, expect_op=True)
    x = XUser.new('chan')
    xnick = uniq('xn')
    m0 = ircu.mark()
    me, m = join(x, room, xnick)
    # The op IRC user was listed before our self-presence, as a moderator (NAMES '@').
    occ = x.wait(lambda e: is_presence(e, '%s/%s' % (room, ircu.nick), 'available'),
                 'the presence of %s in %s' % (ircu.nick, room), since=m)
    item = muc_item(occ)
    check(item is not None and item.get('role') == 'moderator',
          'an IRC op should be a moderator: %s' % dump(occ))
    ircu.wait(lambda e: e.type == 'join' and e.source.nick == xnick
              and e.target.lower() == chan.lower(), '%s to JOIN %s' % (xnick, chan), since=m0)
    return ircu, x, chan, room, xnick


@isolated
def test_channel_join_and_messages_both_ways():
    ircu, x, chan, room, xnick = channel_pair()
    # IRC → XMPP
    ircu.say(chan, 'hello from irc')
    msg = x.wait(lambda e: is_groupchat(e, '%s/%s' % (room, ircu.nick), 'hello from irc'),
                 'the IRC line in the room')
    sid = msg.find('{%s}stanza-id' % NS_SID)
    check(sid is not None and sid.get('by') == room and sid.get('id'),
          'a groupchat from IRC should carry a stanza-id by the room: %s' % dump(msg))
    check(msg.find('{urn:xmpp:delay}delay') is None, 'a live message has no delay: %s'
          % dump(msg))
    # XMPP → IRC, with the reflection keeping our id (XEP-0045 §7.4)
    m = ircu.mark()
    x.send("<message to='%s' type='groupchat' id='gc-1'><body>hello from xmpp</body>"
           "<origin-id xmlns='%s' id='orig-1'/></message>" % (room, NS_SID))
    ircu.wait_msg(chan, xnick, lambda t: t == 'hello from xmpp', 'the XMPP line on IRC',
                  since=m)
    refl = x.wait(lambda e: is_groupchat(e, '%s/%s' % (room, xnick), 'hello from xmpp'),
                  'the reflection of our message')
    check(refl.get('id') == 'gc-1', 'the reflection should keep id gc-1: %s' % dump(refl))
    sid = refl.find('{%s}stanza-id' % NS_SID)
    check(sid is not None and sid.get('by') == room,
          'the reflection should carry a stanza-id by the room: %s' % dump(refl))
    # A multi-line body: one PRIVMSG per line.
    m = ircu.mark()
    x.send("<message to='%s' type='groupchat' id='gc-2'><body>line one\nline two</body>"
           "</message>" % room)
    ircu.wait_msg(chan, xnick, lambda t: t == 'line one', 'the first line', since=m)
    ircu.wait_msg(chan, xnick, lambda t: t == 'line two', 'the second line', since=m)
    # NOTICE from IRC to the channel is shown too.
    ircu.conn.notice(chan, 'a notice')
    x.wait(lambda e: e.tag == C + 'message' and e.get('from') == '%s/%s' % (room, ircu.nick)
           and 'a notice' in (body_of(e) or ''), 'the channel NOTICE')


test_channel_join_and_messages_both_ways.timeout = 120


@isolated
def test_channel_me_and_private_messages():
    ircu, x, chan, room, xnick = channel_pair('me')
    # /me from XMPP → CTCP ACTION
    m = ircu.mark()
    x.send("<message to='%s' type='groupchat'><body>/me waves</body></message>" % room)
    e = ircu.wait(lambda e: e.type == 'action' and irc.client.NickMask(e.source).nick == xnick
                  and e.target.lower() == chan.lower(), 'the ACTION on IRC', since=m)
    check(e.arguments[0] == 'waves', 'ACTION text: %r' % e.arguments)
    # ACTION from IRC → body "/me ..."
    ircu.conn.action(chan, 'dances')
    x.wait(lambda e: is_groupchat(e, '%s/%s' % (room, ircu.nick), '/me dances'),
           'the ACTION as "/me dances"')
    # private: IRC → XMPP, from nick%server@gw
    contact = '%s%%%s@%s' % (ircu.nick, NET, GW)
    ircu.say(xnick, 'psst from irc')
    pm = x.wait(lambda e: e.tag == C + 'message' and bare(e.get('from')) == contact
                and body_of(e) == 'psst from irc', 'the private message from %s' % contact)
    check(pm.get('type') == 'chat', 'a private IRC message is type chat: %s' % dump(pm))
    # private: XMPP → IRC to the contact JID
    m = ircu.mark()
    x.send("<message to='%s' type='chat'><body>psst from xmpp</body></message>" % contact)
    ircu.wait_msg(ircu.nick, xnick, lambda t: t == 'psst from xmpp',
                  'the private message on IRC', since=m, types=('privmsg',))
    # private through the room (XEP-0045 §7.5): chat to room/nick → PRIVMSG nick
    m = ircu.mark()
    x.send("<message to='%s/%s' type='chat'><body>muc pm</body></message>" % (room, ircu.nick))
    ircu.wait_msg(ircu.nick, xnick, lambda t: t == 'muc pm', 'the MUC private message on IRC',
                  since=m, types=('privmsg',))


test_channel_me_and_private_messages.timeout = 120


@isolated
def test_channel_topic_nick_change_and_kick():
    ircu, x, chan, room, xnick = channel_pair('tk')
    # TOPIC from IRC → <subject/> from room/nick
    ircu.conn.topic(chan, 'the new topic')
    s = x.wait(lambda e: e.tag == C + 'message' and e.findtext(C + 'subject') == 'the new topic',
               'the topic as a subject')
    check(s.get('type') == 'groupchat' and s.get('from') == '%s/%s' % (room, ircu.nick),
          'the subject should come from %s/%s as groupchat: %s' % (room, ircu.nick, dump(s)))
    # NICK → unavailable with 303 and the new nick, then available as the new nick (§7.6)
    old = ircu.nick
    new = uniq('renamed')
    m = x.mark()
    ircu.conn.nick(new)
    gone = x.wait(lambda e: is_presence(e, '%s/%s' % (room, old), 'unavailable'),
                  'the unavailable presence of %s' % old, since=m)
    item = muc_item(gone)
    check('303' in statuses(gone) and item is not None and item.get('nick') == new,
          'a nick change is unavailable with status 303 and nick=%s: %s' % (new, dump(gone)))
    back = x.wait(lambda e: is_presence(e, '%s/%s' % (room, new), 'available'),
                  'the presence of the new nick %s' % new, since=m)
    check(muc_item(back) is not None and muc_item(back).get('role') == 'moderator',
          'the renamed op keeps the moderator role: %s' % dump(back))
    ircu.nick = new
    # A message from the new nick comes from room/new.
    ircu.say(chan, 'after rename')
    x.wait(lambda e: is_groupchat(e, '%s/%s' % (room, new), 'after rename'),
           'a message from the new nick')
    # KICK of the XMPP user → self unavailable with 307 and 110, actor and reason
    m = x.mark()
    ircu.conn.kick(chan, xnick, 'out you go')
    k = x.wait(lambda e: is_presence(e, '%s/%s' % (room, xnick), 'unavailable'),
               'our unavailable presence after the KICK', since=m)
    check({'307', '110'} <= statuses(k), 'kicked: status 307 and 110 expected: %s' % dump(k))
    item = muc_item(k)
    actor = item.find('{%s}actor' % NS_MUC_USER) if item is not None else None
    check(actor is not None and actor.get('nick') == new,
          'the kick should name the actor %s: %s' % (new, dump(k)))
    check(item.findtext('{%s}reason' % NS_MUC_USER) == 'out you go',
          'the kick reason should be relayed: %s' % dump(k))


test_channel_topic_nick_change_and_kick.timeout = 120


@isolated
def test_xmpp_nick_change_and_leave():
    ircu, x, chan, room, xnick = channel_pair('nc')
    # XEP-0045 §7.6: presence to a new nick in the room → NICK on IRC
    newnick = uniq('xr')
    m = ircu.mark()
    mx = x.mark()
    x.send("<presence to='%s/%s'/>" % (room, newnick))
    ircu.wait(lambda e: e.type == 'nick' and e.source.nick == xnick and e.target == newnick,
              'NICK %s → %s on IRC' % (xnick, newnick), since=m)
    gone = x.wait(lambda e: is_presence(e, '%s/%s' % (room, xnick), 'unavailable'),
                  'our old nick leaving', since=mx)
    check({'303', '110'} <= statuses(gone), 'own nick change: 303 and 110: %s' % dump(gone))
    x.wait(lambda e: is_presence(e, '%s/%s' % (room, newnick), 'available')
           and '110' in statuses(e), 'our new nick', since=mx)
    # Leaving the room → PART
    m = ircu.mark()
    mx = x.mark()
    x.send("<presence to='%s/%s' type='unavailable'/>" % (room, newnick))
    ircu.wait(lambda e: e.type in ('part', 'quit') and e.source.nick == newnick,
              'the PART of %s' % newnick, since=m)
    x.wait(lambda e: is_presence(e, '%s/%s' % (room, newnick), 'unavailable'),
           'the self unavailable after leaving', since=mx)
    # IRC PART of the IRC user seen from another XMPP user
    x2 = XUser.new('chan2')
    n2 = uniq('xo')
    join(x2, room, n2)
    m2 = x2.mark()
    ircu.conn.send_raw('PART %s :leaving now' % chan)
    x2.wait(lambda e: is_presence(e, '%s/%s' % (room, ircu.nick), 'unavailable'),
            'the PART of %s as unavailable' % ircu.nick, since=m2)


test_xmpp_nick_change_and_leave.timeout = 120


@isolated
def test_room_disco_and_mam():
    ircu, x, chan, room, xnick = channel_pair('mam')
    info = x.iq_ok('get', room, "<query xmlns='%s'/>" % NS_DISCO_INFO)
    ids = {(i.get('category'), i.get('type')) for i in info.iter('{%s}identity' % NS_DISCO_INFO)}
    feats = {f.get('var') for f in info.iter('{%s}feature' % NS_DISCO_INFO)}
    check(('conference', 'text') in ids and NS_MUC in feats and NS_MAM in feats,
          'room disco#info: conference/text with muc and mam:2: %s' % dump(info))
    texts = ['archived %d' % i for i in range(3)]
    for t in texts:
        ircu.say(chan, t)
    for t in texts:
        x.wait(lambda e, t=t: is_groupchat(e, '%s/%s' % (room, ircu.nick), t), 'live ' + t)
    m = x.mark()
    r = x.iq_ok('set', room, "<query xmlns='%s' queryid='mq1'/>" % NS_MAM)
    check(r.find('{%s}fin' % NS_MAM) is not None, 'MAM result without <fin/>: %s' % dump(r))
    found = []
    for e in x.since(m, lambda e: e.tag == C + 'message'):
        res = e.find('{%s}result' % NS_MAM)
        if res is None or res.get('queryid') != 'mq1':
            continue
        fwd = res.find('{%s}forwarded/%smessage' % (NS_FORWARD, C))
        if fwd is not None:
            found.append(body_of(fwd))
    for t in texts:
        check(t in found, 'MAM on %s should return %r; got %s' % (room, t, found))
    # RSM paging: max=1 gives one message and a <set/> with <last/>.
    m = x.mark()
    r = x.iq_ok('set', room, "<query xmlns='%s' queryid='mq2'><set xmlns='%s'><max>1</max>"
                "</set></query>" % (NS_MAM, NS_RSM))
    page = [e for e in x.since(m, lambda e: e.tag == C + 'message')
            if e.find('{%s}result' % NS_MAM) is not None]
    check(len(page) == 1, 'RSM max=1 should give one message, got %d' % len(page))
    check(r.find('{%s}fin/{%s}set/{%s}last' % (NS_MAM, NS_RSM, NS_RSM)) is not None,
          'the <fin/> should carry an RSM <set/> with <last/>: %s' % dump(r))


test_room_disco_and_mam.timeout = 120


@isolated
def test_two_resources_share_one_connection():
    """A second resource joining a joined room gets the occupants, self-presence and subject at
    once, without a second IRC connection."""
    chan = '#' + uniq('res')
    room = room_jid(chan)
    ircu = IrcUser(uniq('irc'))
    ircu.join(chan)
    bare_, pw = srv.new_user('tworeso')
    a = XUser(bare_, pw)
    b = XUser(bare_, pw)
    nick = uniq('xt')
    join(a, room, nick)
    ircu.wait(lambda e: e.type == 'join' and e.source.nick == nick, 'the JOIN of %s' % nick)
    m = ircu.mark()
    join(b, room, nick)
    ircu.say(chan, 'to both')
    a.wait(lambda e: is_groupchat(e, '%s/%s' % (room, ircu.nick), 'to both'), 'a gets it')
    b.wait(lambda e: is_groupchat(e, '%s/%s' % (room, ircu.nick), 'to both'), 'b gets it')
    a.send("<message to='%s' type='groupchat' id='from-a'><body>from a</body></message>" % room)
    ircu.wait_msg(chan, nick, lambda t: t == 'from a', 'the line of resource a')
    b.wait(lambda e: is_groupchat(e, '%s/%s' % (room, nick), 'from a'),
           'the reflection on the other resource')
    joins = ['%s %s' % (e.source, e.target) for e in ircu.events_since(m)
             if e.type in ('join', 'part', 'quit') and e.source.nick != ircu.nick]
    check(not joins, 'the second resource must not JOIN (or PART) again: %s' % joins)


test_two_resources_share_one_connection.timeout = 120


def join_error(x, room, nick, password=None):
    """Sends a join and returns the error presence (fails if the join succeeds)."""
    m = x.mark()
    pw = '<password>%s</password>' % xml_text(password) if password else ''
    x.send("<presence to='%s/%s'><x xmlns='%s'>%s</x></presence>" % (room, nick, NS_MUC, pw))
    e = x.wait(lambda e: e.tag == C + 'presence' and bare(e.get('from')) == room
               and (e.get('type') == 'error' or '110' in statuses(e)),
               'the answer to our join of %s' % room, since=m)
    check(e.get('type') == 'error', 'joining %s should fail: %s' % (room, dump(e)))
    return e


@isolated
def test_join_failures():
    x = XUser.new('fail')
    # Connection refused by the IRC server.
    room = room_jid('#nowhere', net=DEAD_NET)
    e = join_error(x, room, uniq('xd'))
    cond = h.stanza_error(e)
    check(cond in ('remote-server-not-found', 'remote-server-timeout', 'service-unavailable'),
          'a refused IRC connection: remote-server-* expected: %s' % dump(e))
    check(e.find('%serror/{%s}text' % (C, h.NS_STANZAS)) is not None,
          'the error should explain itself in <text/>: %s' % dump(e))
    # Invite-only (473) → registration-required; a key (475) → not-authorized, then joining
    # with the key in <password/> (XEP-0045 §7.2.6) works.
    chan = '#' + uniq('inv')
    room = room_jid(chan)
    ircu = IrcUser(uniq('op'))
    ircu.join(chan, expect_op=True)
    m = ircu.mark()
    ircu.conn.mode(chan, '+i')
    ircu.wait(lambda e: e.type == 'mode' and '+i' in ' '.join(e.arguments), 'MODE +i', since=m)
    x2 = XUser.new('inv')
    nick = uniq('xi')
    e = join_error(x2, room, nick)
    check(h.stanza_error(e) == 'registration-required',
          'an invite-only channel: registration-required expected: %s' % dump(e))
    m = ircu.mark()
    ircu.conn.mode(chan, '-i+k sesame')
    ircu.wait(lambda e: e.type == 'mode' and 'k' in ' '.join(e.arguments), 'MODE +k', since=m)
    e = join_error(x2, room, nick)
    check(h.stanza_error(e) == 'not-authorized',
          'a channel with a key: not-authorized expected: %s' % dump(e))
    m = ircu.mark()
    me = x2.mark()
    x2.send("<presence to='%s/%s'><x xmlns='%s'><password>sesame</password></x></presence>"
            % (room, nick, NS_MUC))
    x2.wait(lambda e: is_presence(e, '%s/%s' % (room, nick), 'available')
            and '110' in statuses(e), 'the join with the key', since=me)
    ircu.wait(lambda e: e.type == 'join' and e.source.nick == nick, 'the JOIN with the key',
              since=m)
    # Banned (474) → forbidden.
    m = ircu.mark()
    ircu.conn.mode(chan, '-k+b sesame *!*@*')
    ircu.wait(lambda e: e.type == 'mode' and 'b' in ' '.join(e.arguments), 'MODE +b', since=m)
    x3 = XUser.new('ban')
    e = join_error(x3, room, uniq('xb'))
    check(h.stanza_error(e) == 'forbidden', 'a ban: forbidden expected: %s' % dump(e))


test_join_failures.timeout = 150


@isolated
def test_modes_subject_raw_commands_and_quit():
    ircu, x, chan, room, xnick = channel_pair('mo')
    # MODE +o → our presence with the moderator role.
    m = x.mark()
    ircu.conn.mode(chan, '+o ' + xnick)
    p = x.wait(lambda e: is_presence(e, '%s/%s' % (room, xnick), 'available')
               and muc_item(e) is not None and muc_item(e).get('role') == 'moderator',
               'our presence as a moderator after MODE +o', since=m)
    check('110' in statuses(p), 'our own presence carries 110: %s' % dump(p))
    # <subject/> from us → TOPIC (we are op now).
    m = ircu.mark()
    x.send("<message to='%s' type='groupchat'><subject>set from xmpp</subject></message>" % room)
    ircu.wait(lambda e: e.type == 'topic' and e.source.nick == xnick
              and e.arguments[-1:] == ['set from xmpp'], 'the TOPIC from XMPP', since=m)
    # MODE -o → back to participant.
    m = x.mark()
    ircu.conn.mode(chan, '-o ' + xnick)
    x.wait(lambda e: is_presence(e, '%s/%s' % (room, xnick), 'available')
           and muc_item(e) is not None and muc_item(e).get('role') != 'moderator',
           'our presence without the moderator role after MODE -o', since=m)
    # A message to server@gw is a raw IRC command.
    m = ircu.mark()
    x.send("<message to='%s@%s' type='chat'><body>PRIVMSG %s :raw hello</body></message>"
           % (NET, GW, ircu.nick))
    ircu.wait_msg(ircu.nick, xnick, lambda t: t == 'raw hello', 'the raw PRIVMSG', since=m,
                  types=('privmsg',))
    # Another IRC user's QUIT → unavailable with the quit message as status.
    other = IrcUser(uniq('qu'))
    other.join(chan)
    x.wait(lambda e: is_presence(e, '%s/%s' % (room, other.nick), 'available'),
           'the second IRC user joining')
    m = x.mark()
    other.conn.quit('gone fishing')
    q = x.wait(lambda e: is_presence(e, '%s/%s' % (room, other.nick), 'unavailable'),
               'the QUIT as unavailable', since=m)
    check('gone fishing' in (q.findtext(C + 'status') or ''),
          'the quit message should be the <status/>: %s' % dump(q))
    # Our stream closing (last resource gone): the server sends unavailable to the room (PART)
    # and to the gateway (QUIT): the channel sees us leave, and the IRC connection goes.
    m = ircu.mark()
    x.close()
    ircu.wait(lambda e: e.type in ('quit', 'part') and e.source.nick == xnick,
              'the PART or QUIT of %s after the stream closed' % xnick, since=m)

    def gone():
        mw = ircu.mark()
        ircu.conn.whois([xnick])
        e = ircu.wait(lambda e: e.type in ('nosuchnick', 'whoisuser', 'endofwhois')
                      and xnick in e.arguments[:1], 'the WHOIS answer', since=mw)
        if e.type == 'nosuchnick':
            return True
        ircu.wait(lambda e: e.type == 'endofwhois', 'the end of WHOIS', since=mw)
        time.sleep(0.3)  # poll interval, not a synchronisation
        return False
    h.wait_until(gone, T, 'the IRC connection of %s to be closed (QUIT)' % xnick)


test_modes_subject_raw_commands_and_quit.timeout = 120


@isolated
def test_nick_in_use_and_registered_nick():
    chan = '#' + uniq('col')
    room = room_jid(chan)
    ircu = IrcUser(uniq('col'))
    ircu.join(chan)
    # The MUC nick is taken on IRC: the gateway picks another one and says so (110 + 210).
    x = XUser.new('coll')
    m = ircu.mark()
    me, _ = join(x, room, ircu.nick)
    mine = me.get('from').split('/', 1)[1]
    check(mine != ircu.nick and {'110', '210'} <= statuses(me),
          'a taken nick: another nick with status 110 and 210: %s' % dump(me))
    ircu.wait(lambda e: e.type == 'join' and e.source.nick == mine, 'the JOIN as %s' % mine,
              since=m)
    # A registered user is connected with the registered nick, whatever the MUC nick.
    y = XUser.new('regjoin')
    regnick = uniq('rn')
    r = register(y, regnick)
    check(r.get('type') == 'result', 'registration refused: %s' % dump(r))
    m = ircu.mark()
    me, _ = join(y, room, uniq('mucnick'))
    check(me.get('from') == '%s/%s' % (room, regnick) and {'110', '210'} <= statuses(me),
          'a registered user joins as its registered nick %s (110 + 210): %s'
          % (regnick, dump(me)))
    ircu.wait(lambda e: e.type == 'join' and e.source.nick == regnick,
              'the JOIN as %s' % regnick, since=m)
    y.iq('set', GW, "<query xmlns='%s'><remove/></query>" % NS_REGISTER)


test_nick_in_use_and_registered_nick.timeout = 120


@isolated
def test_channel_list_as_disco_items():
    chan = '#' + uniq('lst')
    ircu = IrcUser(uniq('ls'))
    ircu.join(chan)
    ircu.conn.topic(chan, 'listed topic')
    ircu.wait(lambda e: e.type == 'topic', 'our TOPIC')
    x = XUser.new('list')
    r = x.iq_ok('get', '%s@%s' % (NET, GW), "<query xmlns='%s'/>" % NS_DISCO_ITEMS,
                timeout=RECONNECT_T)
    items = {i.get('jid'): i for i in r.iter('{%s}item' % NS_DISCO_ITEMS)}
    check(room_jid(chan) in items, 'LIST as disco#items should have %s: %s'
          % (room_jid(chan), dump(r)[:2000]))
    r = x.iq_ok('get', '%s@%s' % (NET, GW), "<query xmlns='%s'><set xmlns='%s'><max>1</max>"
                "</set></query>" % (NS_DISCO_ITEMS, NS_RSM))
    page = list(r.iter('{%s}item' % NS_DISCO_ITEMS))
    rsm = r.find('{%s}query/{%s}set' % (NS_DISCO_ITEMS, NS_RSM))
    check(len(page) == 1 and rsm is not None and rsm.findtext('{%s}count' % NS_RSM)
          and int(rsm.findtext('{%s}count' % NS_RSM)) >= len(items),
          'RSM max=1: one item and a <set/> with the count: %s' % dump(r))


# --------------------------------------------------------------------------- bridge


def wait_relaybot(ircu, since):
    """relaybot is in the channel: in NAMES, or it JOINs later."""
    def seen(e):
        if e.type == 'namreply' and len(e.arguments) >= 3 \
                and e.arguments[1].lower() == BRIDGE_CHAN:
            return any(n.lstrip('~&@%+') == RELAYBOT for n in e.arguments[2].split())
        return e.type == 'join' and e.source.nick == RELAYBOT
    return ircu.wait(seen, '%s in %s' % (RELAYBOT, BRIDGE_CHAN), timeout=RECONNECT_T,
                     since=since)


def puppet_pred(ircnick, typ='available'):
    def pred(e):
        if not is_presence(e, None, typ) or bare(e.get('from')) != BRIDGE_ROOM:
            return False
        nick = e.get('from').split('/', 1)[1] if '/' in e.get('from') else ''
        return ircnick.lower() in nick.lower()
    return pred


@isolated
def test_bridge_relays_both_ways_with_puppets():
    ircu = IrcUser(uniq('bri'))
    m = ircu.mark()
    ircu.join(BRIDGE_CHAN)
    wait_relaybot(ircu, m)
    x = XUser.new('bridge')
    xnick = uniq('bx')
    join(x, BRIDGE_ROOM, xnick)
    x.wait(lambda e: is_presence(e, '%s/%s' % (BRIDGE_ROOM, RELAYBOT), 'available'),
           'the relay bot in the room')
    pup = x.wait(puppet_pred(ircu.nick), 'a puppet occupant for %s' % ircu.nick)
    puppet = pup.get('from')
    # IRC → MUC from the puppet
    m0 = ircu.mark()
    ircu.say(BRIDGE_CHAN, 'hello bridge from irc')
    x.wait(lambda e: is_groupchat(e, puppet, 'hello bridge from irc'),
           'the IRC line from the puppet %s' % puppet)
    # MUC → IRC through relaybot, naming the sender
    m = ircu.mark()
    mx = x.mark()
    x.send("<message to='%s' type='groupchat' id='b-1'><body>hello bridge from xmpp</body>"
           "</message>" % BRIDGE_ROOM)
    line = ircu.wait_msg(BRIDGE_CHAN, RELAYBOT, lambda t: 'hello bridge from xmpp' in t,
                         'the MUC line relayed by %s' % RELAYBOT, since=m)
    check(xnick in line.arguments[0], 'the relayed line should name %s: %r'
          % (xnick, line.arguments[0]))
    # No echo: the IRC line did not come back to IRC (the bridge would have sent it before the
    # line above: the MUC broadcasts in order and the component stream is FIFO).
    echoes = [e for e in ircu.events_since(m0) if e.type == 'pubmsg'
              and 'hello bridge from irc' in e.arguments[0]]
    check(not echoes, 'the IRC line must not be echoed back to IRC: %s' % echoes)
    # No echo into the MUC: our line once, then a later IRC line, and nothing else in between.
    ircu.say(BRIDGE_CHAN, 'marker from irc')
    x.wait(lambda e: is_groupchat(e, puppet, 'marker from irc'), 'the marker line')
    ours = x.since(mx, lambda e: e.tag == C + 'message'
                   and body_of(e) and 'hello bridge from xmpp' in body_of(e))
    check(len(ours) == 1, 'our MUC line should appear once in the MUC: %s'
          % [dump(e) for e in ours])
    # /me both ways
    ircu.conn.action(BRIDGE_CHAN, 'waves at the bridge')
    x.wait(lambda e: is_groupchat(e, puppet, '/me waves at the bridge'),
           'the IRC ACTION as /me from the puppet')
    m = ircu.mark()
    x.send("<message to='%s' type='groupchat'><body>/me bows</body></message>" % BRIDGE_ROOM)
    ircu.wait(lambda e: irc.client.NickMask(e.source).nick == RELAYBOT
              and ((e.type == 'action' and 'bows' in e.arguments[0] and xnick in e.arguments[0])
                   or (e.type == 'pubmsg' and 'bows' in e.arguments[0]
                       and xnick in e.arguments[0])),
              'the /me relayed by %s' % RELAYBOT, since=m)
    # PART → the puppet leaves
    mx = x.mark()
    ircu.conn.send_raw('PART %s :bye bridge' % BRIDGE_CHAN)
    x.wait(lambda e: is_presence(e, puppet, 'unavailable'), 'the puppet %s to leave' % puppet,
           since=mx)


test_bridge_relays_both_ways_with_puppets.timeout = 150


# --------------------------------------------------------------------------- bad input


@isolated
def test_latin1_and_long_lines_through_ngircd():
    chan = '#' + uniq('enc')
    room = room_jid(chan)
    raw = RawIrc(uniq('raw'))
    raw.send(b'JOIN ' + chan.encode())
    raw.wait(lambda l: b' 366 ' in l, 'the end of NAMES')
    x = XUser.new('enc')
    xnick = uniq('xe')
    join(x, room, xnick)
    raw.wait(lambda l: l.startswith((':%s!' % xnick).encode()) and b' JOIN ' in l,
             'the XMPP user joining')
    frm = '%s/%s' % (room, raw.nick)
    raw.send(b'PRIVMSG ' + chan.encode() + b' :\xff\xfe latin-1 caf\xe9')
    msg = x.wait(lambda e: is_groupchat(e, frm) and 'latin-1' in (body_of(e) or ''),
                 'the latin-1 line')
    check(body_of(msg) == '\u00ff\u00fe latin-1 caf\u00e9',
          'latin-1 should be converted to UTF-8: %r' % body_of(msg))
    # The longest line ngircd takes (512 bytes with CRLF); relaying it with a prefix, ngircd
    # cuts it to 512 bytes and marks it "[CUT]": the gateway gets a full-size line.
    head = b'PRIVMSG ' + chan.encode() + b' :'
    start = ('long-%s-' % raw.nick) + 'é' * 100
    data = start.encode()
    data += b'z' * (510 - len(head) - len(data))
    raw.send(head + data)
    long_text = data.decode()
    got = x.wait(lambda e: is_groupchat(e, frm) and (body_of(e) or '').startswith(start),
                 'the %d-byte line' % len(data))
    text = body_of(got)
    if text.endswith('[CUT]'):
        text = text[:-5]
    check(long_text.startswith(text) and len(text.encode()) >= 400,
          'the long line should arrive whole up to where ngircd cut it: %r' % body_of(got))
    # XMPP → IRC: a long body without spaces is split, never inside a UTF-8 sequence.
    body = 'ü' * 600 + 'end'
    x.send("<message to='%s' type='groupchat'><body>%s</body></message>" % (room, body))
    pieces = []

    def collect(l):
        if l.startswith((':%s!' % xnick).encode()) and b' PRIVMSG ' in l:
            piece = l.split(b' :', 1)[1]
            pieces.append(piece.decode('utf-8'))  # raises on a split sequence
            return ''.join(pieces) == body or len(''.join(pieces)) >= len(body)
        return False
    raw.wait(collect, 'the long body in pieces')
    check(len(pieces) >= 2 and ''.join(pieces) == body,
          'the long body should arrive split and whole: %d pieces, %r...'
          % (len(pieces), ''.join(pieces)[:80]))
    check(srv.alive(), 'the server died')
    gateway_ready(x)


@isolated
def test_garbage_from_an_irc_server():
    """What ngircd would never relay, from a scripted server: over-long lines, NUL and control
    bytes, broken UTF-8, empty lines. The gateway must pass valid text on and stay up."""
    chan = '#' + uniq('junk')
    room = room_jid(chan, net=FAKE_NET)
    x = XUser.new('junk')
    xnick = uniq('xj')
    join(x, room, xnick)
    cl = h.wait_until(lambda: fake_irc.client_in(chan), T, 'the gateway to JOIN %s' % chan)
    frm = '%s/fakeop' % room
    pre = b':fakeop!o@fake PRIVMSG ' + chan.encode() + b' :'
    fake_irc.inject(cl, pre + b'\xff\xfe caf\xe9\r\n')
    fake_irc.inject(cl, pre + b'A' * 20000 + b'\r\n')
    fake_irc.inject(cl, pre + b'nul\x00here ctl\x01\x02\x07 end\r\n')
    fake_irc.inject(cl, b'\r\n\n\r\n   \r\n')
    fake_irc.inject(cl, pre + b'cut \xe2\x82\r\n')
    fake_irc.inject(cl, pre + b'utf8 ok \xc3\xa9\xe2\x82\xac\r\n')
    fake_irc.inject(cl, b':fakeop!o@fake PRIVMSG\r\n:fakeop!o@fake\r\n:\r\n:x 999\r\n')
    fake_irc.inject(cl, pre + b'after the noise\r\n')
    x.wait(lambda e: is_groupchat(e, frm, 'after the noise'), 'the line after the noise')
    bodies = [body_of(e) for e in x.got if is_groupchat(e, frm) and body_of(e) is not None]
    check('\u00ff\u00fe caf\u00e9' in bodies, 'latin-1 fallback: %r' % bodies)
    check('utf8 ok \u00e9\u20ac' in bodies, 'valid UTF-8 kept: %r' % bodies)
    longs = [b for b in bodies if b.startswith('AAAA')]
    check(all(len(b.encode()) <= 8191 for b in longs),
          'an over-long line must be cut (%s)' % [len(b) for b in longs])
    nul = [b for b in bodies if b.startswith('nul')]
    check(nul and '\x00' not in nul[0] and '\x07' not in nul[0] and nul[0].endswith('end'),
          'NUL/control bytes must be dropped: %r' % nul)
    check(any(b.startswith('cut ') for b in bodies), 'a truncated UTF-8 sequence line: %r'
          % bodies)
    # Both ways still work, and the gateway is still up.
    x.send("<message to='%s' type='groupchat'><body>still here</body></message>" % room)
    h.wait_until(lambda: any(('PRIVMSG %s :still here' % chan) in l for l in cl['lines']),
                 T, 'our line at the fake server')
    gateway_ready(x)
    check(srv.alive(), 'the server died')


# --------------------------------------------------------------------------- admin


@isolated
def test_admin_users_command():
    u = XUser.new('listed')
    r = register(u, uniq('lnick'))
    check(r.get('type') == 'result', 'registration refused: %s' % dump(r))
    admin = XUser(ADMIN, ADMIN_PW)
    items = admin.iq_ok('get', GW, "<query xmlns='%s' node='%s'/>" % (NS_DISCO_ITEMS,
                                                                      NS_COMMANDS))
    nodes = {i.get('node') for i in items.iter('{%s}item' % NS_DISCO_ITEMS)}
    check('users' in nodes, 'an admin should see the users command: %s' % dump(items))
    r = admin.iq_ok('set', GW, "<command xmlns='%s' node='users' action='execute'/>"
                    % NS_COMMANDS)
    cmd = r.find('{%s}command' % NS_COMMANDS)
    check(cmd is not None and cmd.get('status') == 'completed',
          'the users command should complete: %s' % dump(r))
    check(u.bare in dump(r), 'the users command should list %s: %s' % (u.bare, dump(r)))
    # A non-admin: not listed, and forbidden when executed anyway.
    items = u.iq_ok('get', GW, "<query xmlns='%s' node='%s'/>" % (NS_DISCO_ITEMS, NS_COMMANDS))
    nodes = {i.get('node') for i in items.iter('{%s}item' % NS_DISCO_ITEMS)}
    check('users' not in nodes, 'a non-admin must not see the users command: %s' % dump(items))
    r = u.iq('set', GW, "<command xmlns='%s' node='users' action='execute'/>" % NS_COMMANDS)
    check(r.get('type') == 'error', 'a non-admin must not run the users command: %s' % dump(r))
    cond = h.stanza_error(r)
    check(cond in ('forbidden', 'not-authorized', 'item-not-found'),
          'error condition for a non-admin: %s' % dump(r))
    r = u.iq('set', GW, "<query xmlns='%s'><remove/></query>" % NS_REGISTER)
    check(r.get('type') == 'result', 'unregistering refused: %s' % dump(r))


def test_isthmusctl_gateway_commands():
    """`isthmusctl gateway NAME ...` reaches the running gateway through its control socket and
    does what the admin ad-hoc commands do, unregistering included (roster cleaned)."""
    u = XUser.new('ctl')
    r = register(u, uniq('cnick'))
    check(r.get('type') == 'result', 'registration refused: %s' % dump(r))
    h.wait_until(lambda: gw_in_roster(u), T, 'the gateway in the roster after registering', 0.3)
    res = srv.ctl('gateway', GW, 'users')
    check(res.returncode == 0 and u.bare in res.stdout,
          'isthmusctl gateway users should list %s: %r %r' % (u.bare, res.stdout, res.stderr))
    res = srv.ctl('gateway', GW, 'info', u.bare)
    check(res.returncode == 0 and 'registered' in res.stdout,
          'isthmusctl gateway info: %r %r' % (res.stdout, res.stderr))
    res = srv.ctl('gateway', GW, 'info', 'nobody-%s@localhost' % uniq('n'))
    check(res.returncode != 0 and 'item-not-found' in res.stderr,
          'info on an unknown user should fail: %r %r' % (res.stdout, res.stderr))
    res = srv.ctl('gateway', GW, 'frobnicate')
    check(res.returncode != 0, 'an unknown command should fail: %r' % res.stdout)
    res = srv.ctl('gateway', 'nosuch.localhost', 'users')
    check(res.returncode != 0 and 'no [gateway nosuch.localhost]' in res.stderr,
          'an unknown gateway should be named in the error: %r' % res.stderr)
    res = srv.ctl('gateway', GW, 'unregister', u.bare)
    check(res.returncode == 0, 'isthmusctl gateway unregister: %r %r' % (res.stdout, res.stderr))
    # §4.3: the gateway leaves the user's roster (an XEP-0356 roster push removes it).
    h.wait_until(lambda: not gw_in_roster(u), T,
                 'the gateway to leave the roster (still: %s)' % list(gw_in_roster(u)), 0.3)
    q = u.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_REGISTER)
    check(q.find('{%s}query/{%s}registered' % (NS_REGISTER, NS_REGISTER)) is None,
          'still registered after isthmusctl unregister: %s' % dump(q))
    res = srv.ctl('gateway', GW, 'users')
    check(u.bare not in res.stdout, 'still listed after unregister: %r' % res.stdout)


@isolated
def test_tls_verified_refused_and_opted_out():
    """IRC over TLS: the certificate must name the network (RFC 6125 against the network's name,
    not its address); a network whose certificate does not match is refused with a presence
    error; tls_verify = false is the per-network opt-out."""
    chan = '#' + uniq('tls')
    ircu = IrcUser(uniq('tlsop'))
    ircu.join(chan)
    x = XUser.new('tls')
    nick = uniq('tk')
    join(x, room_jid(chan, TLS_NET), nick)
    m = ircu.mark()
    x.send("<message to='%s' type='groupchat' id='tls1'><body>over TLS</body></message>"
           % room_jid(chan, TLS_NET))
    ircu.wait(lambda e: e.type == 'pubmsg' and e.arguments and e.arguments[0] == 'over TLS',
              'the message sent over TLS on IRC', since=m)
    # Wrong name: no IRC connection; the join fails with a presence error naming the reason.
    m = x.mark()
    wrong = room_jid(chan, WRONG_NET)
    x.send("<presence to='%s/%s'><x xmlns='%s'/></presence>" % (wrong, nick, NS_MUC))
    err = x.wait(lambda e: is_presence(e, None, 'error') and bare(e.get('from')) == wrong,
                 'a presence error for %s' % wrong, since=m)
    check('certificate' in dump(err).lower(),
          'the error should say the certificate is the problem: %s' % dump(err))
    # Opted out: the same certificate is accepted.
    optout = room_jid(chan, OPTOUT_NET)
    join(x, optout, uniq('to'))
    x.send("<presence to='%s/%s' type='unavailable'/>" % (optout, nick))


# --------------------------------------------------------------------------- ngircd restart


@isolated
def test_ngircd_killed_and_restarted():
    chan = '#' + uniq('rst')
    room = room_jid(chan)
    ircu = IrcUser(uniq('pre'))
    ircu.join(chan)
    mb = ircu.mark()
    bru = IrcUser(uniq('prb'))
    bru.join(BRIDGE_CHAN)
    wait_relaybot(bru, 0)
    x = XUser.new('rst')
    xnick = uniq('xk')
    join(x, room, xnick)
    xb = XUser.new('rstb')
    join(xb, BRIDGE_ROOM, uniq('xbk'))
    ircu.wait(lambda e: e.type == 'join' and e.source.nick == xnick, 'the XMPP user joining',
              since=mb)

    m = x.mark()
    ngircd.kill()
    for u in (ircu, bru):
        u.close()
        _opened.remove(u)
    # The connection dropped: our own occupant goes unavailable (with a status text).
    x.wait(lambda e: is_presence(e, '%s/%s' % (room, xnick), 'unavailable'),
           'our unavailable presence in %s after the IRC server died' % room, since=m)
    ngircd.restart()
    # The gateway reconnects (backoff) and re-JOINs: a self-presence with 110 again.
    back = x.wait(lambda e: is_presence(e, None, 'available') and bare(e.get('from')) == room
                  and '110' in statuses(e), 'our presence in %s again' % room,
                  timeout=RECONNECT_T, since=m)
    nick_now = back.get('from').split('/', 1)[1]
    # A new IRC user joining sees the gateway user in the channel.
    ircu2 = IrcUser(uniq('post'))
    m2 = ircu2.mark()
    names = ircu2.join(chan)
    if not any(n.lstrip('~&@%+') == nick_now for n in names):
        ircu2.wait(lambda e: e.type == 'join' and e.source.nick == nick_now,
                   '%s to JOIN %s again' % (nick_now, chan), since=m2)
    ircu2.say(chan, 'after restart')
    x.wait(lambda e: is_groupchat(e, '%s/%s' % (room, ircu2.nick), 'after restart'),
           'a message after the restart')
    x.send("<message to='%s' type='groupchat'><body>xmpp after restart</body></message>" % room)
    ircu2.wait_msg(chan, nick_now, lambda t: t == 'xmpp after restart',
                   'the XMPP line after the restart')
    # The relay bot is back in its channel too, and relays both ways.
    bru2 = IrcUser(uniq('pob'))
    mb2 = bru2.mark()
    bru2.join(BRIDGE_CHAN)
    wait_relaybot(bru2, mb2)
    pup = xb.wait(puppet_pred(bru2.nick), 'a puppet for %s after the restart' % bru2.nick,
                  timeout=RECONNECT_T)
    bru2.say(BRIDGE_CHAN, 'bridge after restart')
    xb.wait(lambda e: is_groupchat(e, pup.get('from'), 'bridge after restart'),
            'the bridged line after the restart')
    mb3 = bru2.mark()
    xb.send("<message to='%s' type='groupchat'><body>muc after restart</body></message>"
            % BRIDGE_ROOM)
    bru2.wait_msg(BRIDGE_CHAN, RELAYBOT, lambda t: 'muc after restart' in t,
                  'the MUC line relayed after the restart', since=mb3)


test_ngircd_killed_and_restarted.timeout = 300


# --------------------------------------------------------------------------- Prosody


PROSODY_GW = 'irc.peer.test'
# Not peers.PROSODY_IP: no federation is needed here, and an address of our own keeps this test
# clear of the federation tests' Prosody on 127.0.0.2:5222 (fixed ports).
PROSODY_IP = '127.0.0.22'
PROSODY_SECRET = 'irc-gw-secret'


def _prosody_class():
    import peers

    class ProsodyWithComponent(peers.Prosody):
        """peers.Prosody plus an XEP-0114 component port on its address and our gateway's
        domain declared as a component."""

        def __init__(self, directory, ca, comp_port):
            super().__init__(directory, ca, hosts={})
            self.ip = PROSODY_IP
            self.comp_port = comp_port

        def write_config(self):
            super().write_config()
            text = Path(self.config_path).read_text()
            check('component_ports = { }' in text, 'prosody template changed: no component_ports')
            text = text.replace('component_ports = { }',
                                'component_ports = { %d }\ncomponent_interfaces = { "%s" }'
                                % (self.comp_port, self.ip))
            text += '\nComponent "%s"\n    component_secret = "%s"\n' % (PROSODY_GW,
                                                                        PROSODY_SECRET)
            Path(self.config_path).write_text(text)

    return ProsodyWithComponent


def _free_on(ip):
    for _ in range(50):
        p = h.free_port()
        if _bindable(p, ip):
            return p
    raise h.TestFailure('no free port on %s' % ip)


@isolated
def test_gateway_against_prosody():
    import peers
    d = tempfile.mkdtemp(prefix='isthmus-irc-prosody-')
    ok = False
    prosody = gw = None
    try:
        ca = peers.TestCA(os.path.join(d, 'ca'))
        comp_port = _free_on(PROSODY_IP)
        prosody = _prosody_class()(os.path.join(d, 'prosody'), ca, comp_port)
        prosody.start()
        h.wait_until(lambda: h.port_open(comp_port, PROSODY_IP), 20,
                     'prosody component port')
        gwdir = os.path.join(d, 'gw')
        os.makedirs(gwdir)
        conf = os.path.join(gwdir, 'isthmus-irc.conf')
        Path(conf).write_text(
            '[server]\ndata_dir = %s\nlog_level = debug\n\n'
            '[gateway %s]\ntype = irc\nserver = %s:%d\nsecret = %s\n'
            'database = %s/gw.db\nkey_file = %s/gw.key\nirc_flood_burst = 1000\n'
            'irc_flood_interval_ms = 1\n\n'
            '[irc-network %s]\naddress = 127.0.0.1:%d\ntls = false\n'
            % (os.path.join(gwdir, 'data'), PROSODY_GW, PROSODY_IP, comp_port,
               PROSODY_SECRET, gwdir, gwdir, NET, ngircd.port))
        t = subprocess.run([str(GATEWAY_BIN), '-c', conf, '-n', PROSODY_GW, '-t'],
                           capture_output=True, text=True, timeout=30)
        check(t.returncode == 0, 'isthmus-irc -t rejected its standalone config: %s%s'
              % (t.stdout, t.stderr))
        gw = Daemon('isthmus-irc', [str(GATEWAY_BIN), '-c', conf, '-n', PROSODY_GW],
                    os.path.join(gwdir, 'gw.log'), gwdir)
        h.wait_until(lambda: gw.check_alive() or 'component %s connected' % PROSODY_GW
                     in gw.log(), T, 'the gateway to connect to Prosody')
        user = uniq('pu')
        prosody.add_user(user, 'prosody-pw')
        x = XUser('%s@%s' % (user, peers.PROSODY_DOMAIN), 'prosody-pw', host=PROSODY_IP,
                  port=peers.C2S_PORT, domain=peers.PROSODY_DOMAIN, mech='SCRAM-SHA-1')
        info = gateway_ready(x, PROSODY_GW, timeout=T)
        check(('gateway', 'irc') in {(i.get('category'), i.get('type'))
                                     for i in info.iter('{%s}identity' % NS_DISCO_INFO)},
              'disco#info through Prosody: %s' % dump(info))
        chan = '#' + uniq('pros')
        room = room_jid(chan, gw=PROSODY_GW)
        ircu = IrcUser(uniq('ipr'))
        ircu.join(chan)
        xnick = uniq('xp')
        m = ircu.mark()
        join(x, room, xnick)
        ircu.wait(lambda e: e.type == 'join' and e.source.nick == xnick,
                  '%s to JOIN via Prosody' % xnick, since=m)
        ircu.say(chan, 'hello prosody user')
        x.wait(lambda e: is_groupchat(e, '%s/%s' % (room, ircu.nick), 'hello prosody user'),
               'the IRC line through Prosody')
        m = ircu.mark()
        x.send("<message to='%s' type='groupchat' id='p-1'><body>hello from prosody</body>"
               "</message>" % room)
        ircu.wait_msg(chan, xnick, lambda t: t == 'hello from prosody',
                      'the Prosody user line on IRC', since=m)
        x.wait(lambda e: is_groupchat(e, '%s/%s' % (room, xnick), 'hello from prosody')
               and e.get('id') == 'p-1', 'the reflection through Prosody')
        # Private messages both ways through Prosody.
        contact = '%s%%%s@%s' % (ircu.nick, NET, PROSODY_GW)
        ircu.say(xnick, 'pm to prosody')
        x.wait(lambda e: e.tag == C + 'message' and bare(e.get('from')) == contact
               and body_of(e) == 'pm to prosody', 'the private message through Prosody')
        m = ircu.mark()
        x.send("<message to='%s' type='chat'><body>pm from prosody</body></message>" % contact)
        ircu.wait_msg(ircu.nick, xnick, lambda t: t == 'pm from prosody',
                      'the private message from Prosody', since=m, types=('privmsg',))
        x.close()
        _opened.remove(x)
        gw.check_alive()
        rc = gw.stop()
        log = gw.log()
        check(rc == 0, 'isthmus-irc should exit 0 on SIGTERM, got %s:\n%s' % (rc, log[-3000:]))
        for marker in h.SANITIZER_MARKERS:
            if marker in log:
                raise h.TestFailure('sanitizer report from isthmus-irc:\n%s'
                                    % log[max(0, log.index(marker) - 200):][:3000])
        ok = True
    finally:
        if gw:
            gw.stop()
        if prosody:
            prosody.stop()
        if ok and not os.environ.get('ISTHMUS_KEEP'):
            shutil.rmtree(d, ignore_errors=True)
        elif not ok:
            print('prosody/gateway files kept in %s' % d)


test_gateway_against_prosody.timeout = 180


# --------------------------------------------------------------------------- SASL EXTERNAL


def _run_command(x, node, fields=None):
    """Executes the ad-hoc command node on the gateway (XEP-0050); with fields, submits them in
    the form the first stage returned. Returns the <command/> of the last answer."""
    r = x.iq_ok('set', GW, "<command xmlns='%s' node='%s' action='execute'/>"
                % (NS_COMMANDS, node))
    cmd = r.find('{%s}command' % NS_COMMANDS)
    check(cmd is not None, 'no <command/> in %s' % dump(r))
    if fields is None:
        return cmd
    form = ''.join("<field var='%s'><value>%s</value></field>" % (k, xml_text(v))
                   for k, v in fields.items())
    r = x.iq_ok('set', GW, "<command xmlns='%s' node='%s' sessionid='%s'>"
                "<x xmlns='%s' type='submit'>%s</x></command>"
                % (NS_COMMANDS, node, xml_attr(cmd.get('sessionid') or ''), NS_DATA, form))
    cmd = r.find('{%s}command' % NS_COMMANDS)
    check(cmd is not None, 'no <command/> in %s' % dump(r))
    return cmd


def _certificate_fingerprints(x):
    import re
    cmd = _run_command(x, 'certificate')
    check(cmd.get('status') == 'completed', 'the certificate command should complete: %s'
          % dump(cmd))
    note = cmd.findtext('{%s}note' % NS_COMMANDS) or ''
    m256 = re.search(r'SHA-256: ([0-9a-f]{64})\b', note)
    m512 = re.search(r'SHA-512: ([0-9a-f]{128})\b', note)
    check(m256 and m512, 'SHA-256 and SHA-512 fingerprints (hex) expected: %r' % note)
    check(x.bare in note, 'the note should name the certificate (CN=%s): %r' % (x.bare, note))
    return m256.group(1), m512.group(1), note


@isolated
def test_certificate_command_and_sasl_external():
    """The "certificate" ad-hoc command makes the user's client certificate (once) and shows the
    fingerprints NickServ CERT ADD takes; with the "sasl_external" setting on, the user's
    connections present it over TLS (ngircd shows its fingerprint in WHOIS, RPL_WHOISCERTFP) and
    ask for SASL EXTERNAL where offered; ngircd offers no SASL, so registration goes on without,
    and a plaintext network is used without the certificate."""
    import hashlib
    import ssl
    x = XUser.new('cfp')
    items = x.iq_ok('get', GW, "<query xmlns='%s' node='%s'/>" % (NS_DISCO_ITEMS, NS_COMMANDS))
    nodes = {i.get('node') for i in items.iter('{%s}item' % NS_DISCO_ITEMS)}
    check('certificate' in nodes, 'the certificate command should be listed: %s' % dump(items))
    fp256, fp512, note = _certificate_fingerprints(x)
    check('SASL EXTERNAL is off' in note, 'the note should say EXTERNAL is off: %r' % note)
    again256, again512, _ = _certificate_fingerprints(x)
    check((again256, again512) == (fp256, fp512),
          'the certificate must be kept: %s/%s then %s/%s' % (fp256, fp512, again256, again512))

    # The file: DATA_DIR/irc.localhost-certs/<sha256 of the JID>.pem, private, and the
    # fingerprints are those of its certificate.
    name = hashlib.sha256(x.bare.encode()).hexdigest() + '.pem'
    found = list(Path(srv.dir).glob('**/%s-certs/%s' % (GW, name)))
    check(len(found) == 1, 'one certificate file %s expected under %s: %s' % (name, srv.dir,
                                                                             found))
    f = found[0]
    check(f.stat().st_mode & 0o777 == 0o600 and f.parent.stat().st_mode & 0o777 == 0o700,
          'the certificate file should be 0600 in a 0700 directory: %o %o'
          % (f.stat().st_mode, f.parent.stat().st_mode))
    der = ssl.PEM_cert_to_DER_cert(f.read_text().split('-----END CERTIFICATE-----')[0]
                                   + '-----END CERTIFICATE-----\n')
    check(hashlib.sha256(der).hexdigest() == fp256 and hashlib.sha512(der).hexdigest() == fp512,
          'the fingerprints shown should be those of %s' % f)

    cmd = _run_command(x, 'settings', {'sasl_external': 'true'})
    check(cmd.get('status') == 'completed', 'saving the setting failed: %s' % dump(cmd))
    form = _run_command(x, 'settings')
    check(field_value(form_fields(form).get('sasl_external')) in ('true', '1'),
          'the settings form should show sasl_external on: %s' % dump(form))
    _, _, note = _certificate_fingerprints(x)
    check('SASL EXTERNAL is on' in note, 'the note should say EXTERNAL is on: %r' % note)

    chan = '#' + uniq('cfp')
    ircu = IrcUser(uniq('cfpop'))
    ircu.join(chan)
    # Plaintext network: no certificate, no EXTERNAL; the join works as before.
    nick = uniq('cf')
    m = ircu.mark()
    join(x, room_jid(chan), nick)
    ircu.wait(lambda e: e.type == 'join' and e.source.nick == nick, '%s to JOIN' % nick,
              since=m)
    # TLS network: the certificate is presented; ngircd has no SASL, so registration goes on.
    nick2 = uniq('ct')
    m = ircu.mark()
    join(x, room_jid(chan, TLS_NET), nick2)
    ircu.wait(lambda e: e.type == 'join' and e.source.nick == nick2,
              '%s to JOIN over TLS' % nick2, since=m)
    x.send("<message to='%s' type='groupchat'><body>certfp hello</body></message>"
           % room_jid(chan, TLS_NET))
    ircu.wait_msg(chan, nick2, lambda t: t == 'certfp hello', 'the line sent over TLS')
    # ngircd tells a user its own certificate fingerprint in WHOIS (276, SHA-256): asked with
    # a raw command to the network's JID, answered from it.
    net_jid = '%s@%s' % (TLS_NET, GW)
    m = x.mark()
    x.send("<message to='%s' type='chat'><body>WHOIS %s</body></message>" % (net_jid, nick2))
    x.wait(lambda e: e.tag == C + 'message' and bare(e.get('from')) == net_jid
           and fp256 in (body_of(e) or '').lower(),
           'the WHOIS reply with our certificate fingerprint %s' % fp256, since=m)
    for room, n in ((room_jid(chan), nick), (room_jid(chan, TLS_NET), nick2)):
        x.send("<presence to='%s/%s' type='unavailable'/>" % (room, n))
