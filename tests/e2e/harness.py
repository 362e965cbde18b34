"""End-to-end harness for Isthmus: starts the real binary in a temp dir on free loopback ports,
waits for readiness (log line + accepting port, never a blind sleep), stops it with SIGTERM and
insists on exit status 0, and fails any test whose server log shows a sanitizer report.

Three kinds of peers drive the server:
  * slixmpp clients (an independent XMPP stack), see connect();
  * Raw: a blocking socket speaking hand-written XML, for malformed input and exact stream errors;
  * scram_auth(): our own SCRAM client, for the -PLUS mechanisms slixmpp cannot do (it only knows
    tls-unique, which is undefined for TLS 1.3; RFC 9266).
"""

import asyncio
import base64
import hashlib
import hmac
import itertools
import logging
import os
import select
import signal
import socket
import ssl
import subprocess
import tempfile
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / os.environ.get('ISTHMUS_BUILD', 'build')
ISTHMUS = BUILD / 'isthmus'
ISTHMUSCTL = BUILD / 'isthmusctl'
STROPHE_CLIENT = BUILD / 'tests' / 'strophe_client'
DOMAIN = 'localhost'

NS_STREAM = 'http://etherx.jabber.org/streams'
NS_STREAMS = 'urn:ietf:params:xml:ns:xmpp-streams'
NS_TLS = 'urn:ietf:params:xml:ns:xmpp-tls'
NS_SASL = 'urn:ietf:params:xml:ns:xmpp-sasl'
NS_BIND = 'urn:ietf:params:xml:ns:xmpp-bind'
NS_STANZAS = 'urn:ietf:params:xml:ns:xmpp-stanzas'
NS_REGISTER = 'jabber:iq:register'
NS_CB = 'urn:xmpp:sasl-cb:0'

SANITIZER_MARKERS = ('AddressSanitizer', 'runtime error:', 'LeakSanitizer')
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
IO_TIMEOUT = 10.0

if not os.environ.get('ISTHMUS_E2E_DEBUG'):
    logging.getLogger('slixmpp').setLevel(logging.CRITICAL)


class TestFailure(AssertionError):
    pass


def check(cond, msg):
    """Fails the current test with msg unless cond holds."""
    if not cond:
        raise TestFailure(msg)


def wait_until(pred, timeout, what, interval=0.02):
    """Polls pred() until it is truthy (returned) or timeout seconds pass (TestFailure)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TestFailure('timed out after %.1fs waiting for %s' % (timeout, what))
        time.sleep(interval)


def free_port():
    """A port the kernel just gave out for 127.0.0.1 (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def port_open(port, host='127.0.0.1'):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the server


_live_servers = []
_user_counter = itertools.count(1)


def default_config():
    """Section → {key: value}; Server(overrides) merges into a copy of this."""
    return {
        'server': {'data_dir': 'data', 'log_level': 'debug', 'max_stanza_size': '262144',
                   'hide_version': 'false', 'scram_iterations': '4096'},
        'c2s': {'require_tls': 'true', 'auth_timeout': '30', 'auth_failures': '100',
                'auth_failure_window': '60',
                # Tests register many accounts from 127.0.0.1; test_register checks the throttle.
                'registration_interval': '0'},
        'tls': {'min_version': '1.2'},
        'host ' + DOMAIN: {'registration': 'true'},
    }


class Server:
    """One isthmus process in its own temp dir. Use as a context manager or start()/stop().

    overrides: {'c2s': {'auth_timeout': '2'}, ...} merged into default_config(); a value of None
    deletes the key. listen/tls_listen are always filled in with fresh ports."""

    def __init__(self, overrides=None, direct_tls=True):
        self.config = default_config()
        for section, kv in (overrides or {}).items():
            sec = self.config.setdefault(section, {})
            for k, v in kv.items():
                if v is None:
                    sec.pop(k, None)
                else:
                    sec[k] = str(v)
        self.direct_tls = direct_tls
        self.dir = None
        self.proc = None
        self.port = None
        self.tls_port = None
        self.domain = DOMAIN
        self._scan_offset = 0
        self._logf = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop(check_exit=exc_type is None)
        return False

    @property
    def config_path(self):
        return os.path.join(self.dir, 'isthmus.conf')

    @property
    def log_path(self):
        return os.path.join(self.dir, 'isthmus.log')

    def write_config(self):
        lines = []
        for section, kv in self.config.items():
            lines.append('[%s]' % section)
            lines.extend('%s = %s' % (k, v) for k, v in kv.items())
            lines.append('')
        with open(self.config_path, 'w') as f:
            f.write('\n'.join(lines))

    def start(self):
        check(ISTHMUS.exists(), '%s does not exist (run make)' % ISTHMUS)
        if self.dir is None:
            self.dir = tempfile.mkdtemp(prefix='isthmus-e2e-')
            self.port = free_port()
            self.config['c2s']['listen'] = '127.0.0.1:%d' % self.port
            if self.direct_tls:
                self.tls_port = free_port()
                self.config['c2s']['tls_listen'] = '127.0.0.1:%d' % self.tls_port
            else:
                self.config['c2s']['tls_listen'] = ''
            self.write_config()
        self.signalled = False
        start_offset = self._scan_offset = len(self.log())
        self._logf = open(self.log_path, 'ab')
        env = dict(os.environ)
        env.setdefault('UBSAN_OPTIONS', 'print_stacktrace=1')
        self.proc = subprocess.Popen([str(ISTHMUS), '-c', self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=subprocess.STDOUT, cwd=self.dir, env=env)
        _live_servers.append(self)

        def ready():
            if self.proc.poll() is not None:
                raise TestFailure('isthmus exited with %s before becoming ready:\n%s'
                                  % (self.proc.returncode, self.log_tail()))
            if 'server ready' not in self.log()[start_offset:]:
                return False
            return port_open(self.port) and (not self.tls_port or port_open(self.tls_port))
        try:
            wait_until(ready, READY_TIMEOUT, 'server ready')
        except TestFailure:
            self.kill()
            raise
        return self

    def log(self):
        try:
            with open(self.log_path, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def log_tail(self, n=25):
        return '\n'.join(self.log().splitlines()[-n:])

    def scan_log(self):
        """Fails when the log gained a sanitizer report since the last scan."""
        text = self.log()
        fresh = text[self._scan_offset:]
        self._scan_offset = len(text)
        for marker in SANITIZER_MARKERS:
            if marker in fresh:
                i = fresh.index(marker)
                raise TestFailure('sanitizer report in server log: %s'
                                  % fresh[max(0, i - 200):i + 1500])

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def _close(self):
        if self in _live_servers:
            _live_servers.remove(self)
        if self._logf:
            self._logf.close()
            self._logf = None

    def send_signal(self, sig):
        """Sends sig to the server; a later stop() still insists on exit status 0."""
        self.signalled = True
        self.proc.send_signal(sig)

    def restart(self):
        """A checked stop, then a start in the same directory (same ports, data, config)."""
        self.stop(remove=False)
        self.start()

    def stop(self, check_exit=True, remove=True, sig=signal.SIGTERM):
        """Sends sig (SIGTERM); the server must exit 0 within STOP_TIMEOUT and its log must be
        clean. The temp dir is removed unless remove=False or the check failed."""
        if self.proc is None:
            return
        rc = self.proc.poll()
        crashed_before = rc is not None and not self.signalled
        if rc is None:
            self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
                self.cleanup(keep=True)
                raise TestFailure('isthmus did not exit within %.0fs of SIGTERM; log in %s'
                                  % (STOP_TIMEOUT, self.dir))
        self._close()
        try:
            if check_exit:
                self.scan_log()
                check(not crashed_before, 'isthmus died on its own (status %s):\n%s'
                      % (rc, self.log_tail()))
                check(rc == 0, 'isthmus exited with status %s after SIGTERM:\n%s'
                      % (rc, self.log_tail()))
        except TestFailure:
            self.cleanup(keep=True)
            raise
        if remove:
            self.cleanup()

    def cleanup(self, keep=False):
        if self.dir and not keep and not os.environ.get('ISTHMUS_KEEP'):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- accounts

    def ctl(self, *args, stdin=None, timeout=20):
        """Runs isthmusctl -c CONFIG ARGS...; returns the CompletedProcess (text)."""
        check(ISTHMUSCTL.exists(), '%s does not exist (run make)' % ISTHMUSCTL)
        return subprocess.run([str(ISTHMUSCTL), '-c', self.config_path] + list(args),
                              input=stdin, capture_output=True, text=True, timeout=timeout)

    def add_user(self, jid, password):
        r = self.ctl('user', 'add', jid, stdin=password + '\n')
        check(r.returncode == 0, 'isthmusctl user add %s failed (%d): %s%s'
              % (jid, r.returncode, r.stdout, r.stderr))
        check('AddressSanitizer' not in r.stderr and 'runtime error:' not in r.stderr,
              'sanitizer report from isthmusctl: ' + r.stderr)

    def new_user(self, prefix='u', password=None):
        """Creates a fresh account; returns (bare JID, password)."""
        n = next(_user_counter)
        jid = '%s%d-%d@%s' % (prefix, n, os.getpid(), self.domain)
        password = password or 'pw-%d-secret' % n
        self.add_user(jid, password)
        return jid, password


def check_servers():
    """After each test: every running server is still alive and its log has no sanitizer lines."""
    for srv in list(_live_servers):
        srv.scan_log()
        if not srv.alive():
            raise TestFailure('isthmus died (status %s):\n%s' % (srv.proc.poll(), srv.log_tail()))


def stop_all_servers():
    for srv in list(_live_servers):
        try:
            srv.stop()
        except TestFailure:
            pass


# --------------------------------------------------------------------------- slixmpp clients

_clients = []


class LoginFailed(Exception):
    pass


def _make_client_class():
    import slixmpp

    class Client(slixmpp.ClientXMPP):
        """A slixmpp client that records what happens to it for the test to await."""

        def __init__(self, jid, password, mechs, channel_binding, plugins):
            super().__init__(jid, password)
            self.ssl_context.check_hostname = False
            self.ssl_context.verify_mode = ssl.CERT_NONE
            self.messages = asyncio.Queue()
            self.message_errors = asyncio.Queue()
            self.stream_errors = []
            self.auth_failures = []
            self.session = self.loop.create_future()
            self.session.add_done_callback(lambda f: f.cancelled() or f.exception())
            self.closed = self.loop.create_future()
            for p in ('xep_0030', 'xep_0199') + tuple(plugins):
                self.register_plugin(p)
            fm = self['feature_mechanisms']
            if mechs:
                fm.use_mechs = set(mechs)
            default_creds = fm.sasl_callback

            def creds(required, optional):
                r = default_creds(required, optional)
                # slixmpp can only bind to tls-unique; offering it (or the "y" flag that says
                # "I could bind") would make a correct server refuse (RFC 5802 §6).
                if not channel_binding and 'channel_binding' in r:
                    r['channel_binding'] = None
                return r
            fm.sasl_callback = creds
            self.add_event_handler('session_start', self._on_session)
            self.add_event_handler('failed_all_auth', self._on_failed_all)
            self.add_event_handler('failed_auth', lambda st: self.auth_failures.append(
                st['condition']))
            self.add_event_handler('stream_error', lambda e: self.stream_errors.append(
                e['condition']))
            self.add_event_handler('disconnected', self._on_disconnected)
            self.add_event_handler('connection_failed', self._on_disconnected)
            self.add_event_handler('message', self._on_message)
            self.add_event_handler('message_error', self.message_errors.put_nowait)

        def _on_message(self, msg):
            if msg['type'] != 'error':
                self.messages.put_nowait(msg)

        def _on_session(self, _):
            if not self.session.done():
                self.session.set_result(True)

        def _on_failed_all(self, _):
            if not self.session.done():
                self.session.set_exception(LoginFailed('authentication failed: %s'
                                                       % self.auth_failures))

        def _on_disconnected(self, reason):
            if not self.session.done():
                self.session.set_exception(LoginFailed('disconnected before session: %s %s'
                                                       % (reason, self.stream_errors)))
            if not self.closed.done():
                self.closed.set_result(reason)
            self.abort_reconnect()

        def abort_reconnect(self):
            # slixmpp retries failed connection attempts on its own; tests want one attempt.
            self._current_connection_attempt = None
            try:
                self.cancel_connection_attempt()
            except Exception:
                pass

        async def next_message(self, timeout=IO_TIMEOUT, pred=None, errors=False):
            """The next received <message/> with a body (matching pred if given); with
            errors=True the next type='error' message instead."""
            q = self.message_errors if errors else self.messages
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TestFailure('%s: no %smessage within %.0fs'
                                      % (self.boundjid, 'error ' if errors else '', timeout))
                try:
                    msg = await asyncio.wait_for(q.get(), left)
                except asyncio.TimeoutError:
                    continue
                if pred is None or pred(msg):
                    return msg

        async def sync(self):
            """A round trip to the server: everything sent before is processed after this."""
            await self['xep_0199'].send_ping(self.boundjid.domain, timeout=IO_TIMEOUT)

        def no_message(self):
            """True when nothing has been received (call after a sync())."""
            return self.messages.empty() and self.message_errors.empty()

        async def close(self):
            if not self.closed.done():
                self.disconnect(wait=1)
                try:
                    await asyncio.wait_for(asyncio.shield(self.closed), 5)
                except asyncio.TimeoutError:
                    self.abort()

    return Client


_Client = None


def make_client(jid, password, mechs=('SCRAM-SHA-256',), channel_binding=False, plugins=()):
    global _Client
    if _Client is None:
        _Client = _make_client_class()
    c = _Client(jid, password, mechs, channel_binding, plugins)
    _clients.append(c)
    return c


async def connect(srv, jid, password, *, mechs=('SCRAM-SHA-256',), direct_tls=False,
                  presence=True, plugins=(), channel_binding=False, timeout=IO_TIMEOUT):
    """Logs a slixmpp client in (STARTTLS, or direct TLS on srv.tls_port) and returns it once the
    session started; with presence=True it also sent initial presence, and the server has
    processed it. Raises LoginFailed when the login fails."""
    c = make_client(jid, password, mechs=mechs, channel_binding=channel_binding, plugins=plugins)
    if direct_tls:
        c.connect(('127.0.0.1', srv.tls_port), use_ssl=True)
    else:
        c.connect(('127.0.0.1', srv.port), force_starttls=True)
    try:
        await asyncio.wait_for(asyncio.shield(c.session), timeout)
    except asyncio.TimeoutError:
        c.abort_reconnect()
        c.abort()
        raise LoginFailed('no session within %.0fs (stream errors %s, auth failures %s)'
                          % (timeout, c.stream_errors, c.auth_failures))
    except LoginFailed:
        c.abort_reconnect()
        raise
    if presence:
        c.send_presence()
        await c.sync()
    return c


async def register(srv, username, password, timeout=IO_TIMEOUT):
    """XEP-0077 in-band registration with slixmpp: returns the iq result (or raises with the
    error condition). Registration is attempted after STARTTLS whether or not the server
    advertised the optional stream feature (XEP-0077 §8)."""
    from slixmpp.exceptions import IqError
    import slixmpp
    c = make_client('%s@%s' % (username, srv.domain), password, plugins=('xep_0077',))
    # slixmpp 1.8.3 queues every stanza but bind/session until the session starts, so its own
    # XEP-0077 pre-auth iq would never leave; this is the switch its test suite uses.
    c._always_send_everything = True
    result = c.loop.create_future()

    def force_feature(stanza):
        if isinstance(stanza, slixmpp.stanza.StreamFeatures) and 'starttls' in c.features \
                and 'mechanisms' not in c.features:
            stanza.enable('register')
        return stanza
    c.add_filter('in', force_feature)

    async def on_register(form):
        iq = c.Iq()
        iq['type'] = 'set'
        iq['register']['username'] = username
        iq['register']['password'] = password
        try:
            r = await iq.send(timeout=timeout)
            if not result.done():
                result.set_result(r)
        except IqError as e:
            if not result.done():
                result.set_exception(LoginFailed('registration refused: %s'
                                                 % e.iq['error']['condition']))
        except Exception as e:
            if not result.done():
                result.set_exception(e)
        c.disconnect(wait=1)
    c.add_event_handler('register', on_register)
    c.connect(('127.0.0.1', srv.port), force_starttls=True)
    done, _ = await asyncio.wait([result, c.closed], timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    c.abort_reconnect()
    if result.done():
        r = result.result()
        await c.close()
        return r
    c.abort()
    raise LoginFailed('registration did not complete (stream errors %s)' % c.stream_errors)


def cleanup_clients():
    """Drops every slixmpp client created by the last test (their loop is about to close)."""
    for c in _clients:
        try:
            c.abort_reconnect()
            c.abort()
        except Exception:
            pass
    _clients.clear()


# --------------------------------------------------------------------------- raw streams


class StreamClosed(Exception):
    pass


class _OpenSSLSock:
    """pyOpenSSL connection with the blocking recv/sendall the Raw client needs; used where the
    test needs RFC 5705 keying material (tls-exporter), which Python's ssl does not expose."""

    def __init__(self, sock, alpn=None):
        from OpenSSL import SSL
        self.SSL = SSL
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        if alpn:
            ctx.set_alpn_protos([p.encode() for p in alpn])
        self.sock = sock
        self.timeout = sock.gettimeout()
        sock.setblocking(True)
        self.conn = SSL.Connection(ctx, sock)
        self.conn.set_tlsext_host_name(DOMAIN.encode())
        self.conn.set_connect_state()
        self.conn.do_handshake()

    def sendall(self, data):
        self.conn.sendall(data)

    def recv(self, n):
        if not self.conn.pending():
            r, _, _ = select.select([self.sock], [], [], self.timeout)
            if not r:
                raise socket.timeout('timed out')
        try:
            return self.conn.recv(n)
        except (self.SSL.ZeroReturnError, self.SSL.SysCallError):
            return b''

    def settimeout(self, t):
        self.timeout = t

    def peer_cert_der(self):
        from OpenSSL import crypto
        return crypto.dump_certificate(crypto.FILETYPE_ASN1, self.conn.get_peer_certificate())

    def exporter(self):
        # RFC 9266 §2: 32 bytes, label "EXPORTER-Channel-Binding", empty context.
        # RFC 9266 §2: no context (use_context = 0; differs from an empty one in TLS 1.2).
        return self.conn.export_keying_material(b'EXPORTER-Channel-Binding', 32, None)

    def version(self):
        return self.conn.get_protocol_version_name()

    def close(self):
        try:
            self.conn.shutdown()
        except Exception:
            pass
        self.sock.close()


def _client_ssl_context(alpn=None, max_version=None):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version:
        ctx.maximum_version = max_version
    return ctx


class Raw:
    """A hand-driven XMPP client stream over a blocking socket.

    Received data goes through an XML pull parser; next() returns each top-level element (a
    child of <stream:stream>) and raises StreamClosed at </stream:stream> or EOF. self.received
    keeps every byte received on the current stream for error messages."""

    def __init__(self, port, host='127.0.0.1', direct_tls=False, tls_backend='ssl',
                 timeout=IO_TIMEOUT, alpn=('xmpp-client',)):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        self.tls = False
        self.eof = False
        self.send_failed = False
        if direct_tls:
            self._wrap(tls_backend, alpn)
        self._reset()

    def _reset(self):
        self.parser = ET.XMLPullParser(('start', 'end'))
        self.depth = 0
        self.pending = []
        self.stream_attrs = None
        self.stream_ended = False
        self.received = b''

    def _wrap(self, backend, alpn=None):
        if backend == 'openssl':
            self.sock = _OpenSSLSock(self.sock, alpn)
        else:
            ctx = _client_ssl_context(alpn)
            self.sock = ctx.wrap_socket(self.sock, server_hostname=DOMAIN)
        self.tls = True
        self.backend = backend

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            # The server may close while we are still writing (e.g. after a stream error for
            # the first part); what it sent before is still readable.
            self.send_failed = True

    def _feed_once(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestFailure('timed out waiting for data; received so far: %r'
                              % self.received[-800:])
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TestFailure('timed out waiting for data; received so far: %r'
                              % self.received[-800:])
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            data = b''
        if not data:
            self.eof = True
            return False
        self._ingest(data)
        return True

    def _ingest(self, data):
        self.received += data
        self.parser.feed(data)
        for ev, el in self.parser.read_events():
            if ev == 'start':
                self.depth += 1
                if self.depth == 1:
                    check(el.tag == '{%s}stream' % NS_STREAM,
                          'server opened with %s, not stream:stream' % el.tag)
                    self.stream_attrs = dict(el.attrib)
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.pending.append(el)
                elif self.depth == 0:
                    self.stream_ended = True

    def next(self, timeout=None):
        """The next top-level element; StreamClosed when the stream or connection ended."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.pending:
            if self.stream_ended or self.eof:
                raise StreamClosed()
            self._feed_once(deadline)
        return self.pending.pop(0)

    def expect_silence(self, seconds):
        """Nothing arrives (and the connection stays open) for the given time."""
        deadline = time.monotonic() + seconds
        while not self.pending:
            check(not self.eof and not self.stream_ended, 'stream closed during silence: %r'
                  % self.received[-400:])
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return
            except (ConnectionResetError, ssl.SSLError):
                data = b''
            if not data:
                self.eof = True
                continue
            self._ingest(data)
        raise TestFailure('expected silence, got %s' % ET.tostring(self.pending[0]))

    def wait_header(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.stream_attrs is None:
            if self.eof:
                raise StreamClosed()
            self._feed_once(deadline)
        return self.stream_attrs

    @staticmethod
    def header(to=DOMAIN, version='1.0', ns='jabber:client',
               stream_ns=NS_STREAM, extra=''):
        attrs = ["xmlns='%s'" % ns, "xmlns:stream='%s'" % stream_ns]
        if to is not None:
            attrs.append("to='%s'" % to)
        if version is not None:
            attrs.append("version='%s'" % version)
        return "<?xml version='1.0'?><stream:stream %s%s>" % (' '.join(attrs), extra)

    def open(self, **kw):
        """Sends a stream header and returns the <stream:features/> element."""
        self._reset()
        self.send(self.header(**kw))
        self.wait_header()
        el = self.next()
        check(el.tag == '{%s}features' % NS_STREAM, 'expected stream features, got %s'
              % ET.tostring(el))
        return el

    def starttls(self, backend='ssl'):
        self.send("<starttls xmlns='%s'/>" % NS_TLS)
        el = self.next()
        check(el.tag == '{%s}proceed' % NS_TLS, 'STARTTLS refused: %s' % ET.tostring(el))
        self._wrap(backend)

    def expect_stream_error(self, condition, timeout=None):
        """Reads until a stream error arrives; it must carry exactly
        <condition xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>, and the stream must then be
        closed (</stream:stream>) and the connection ended (RFC 6120 §4.9.1.1, §4.4)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                el = self.next(max(0.1, deadline - time.monotonic()))
            except StreamClosed:
                raise TestFailure('stream ended without a stream error (expected %s); got %r'
                                  % (condition, self.received[-800:]))
            if el.tag == '{%s}error' % NS_STREAM:
                break
        conds = [c.tag for c in el if c.tag.startswith('{%s}' % NS_STREAMS)
                 and c.tag != '{%s}text' % NS_STREAMS]
        allowed = (condition,) if isinstance(condition, str) else tuple(condition)
        check(len(conds) == 1 and conds[0] in ['{%s}%s' % (NS_STREAMS, c) for c in allowed],
              "expected <%s xmlns='%s'/>, got stream error %s"
              % ('/> or <'.join(allowed), NS_STREAMS, ET.tostring(el).decode()))
        self.expect_close(max(0.5, deadline - time.monotonic()))
        return el

    expect_stream_error_any = expect_stream_error

    def expect_close(self, timeout=None):
        """The server closes the stream (</stream:stream>) and then the TCP connection."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.stream_ended:
            if self.eof:
                raise TestFailure('connection closed without </stream:stream>; got %r'
                                  % self.received[-400:])
            self._feed_once(deadline)
        check(b'</stream:stream>' in self.received, 'no </stream:stream> in %r'
              % self.received[-400:])
        # The server may wait for our closing tag before it closes TCP (RFC 6120 §4.4).
        try:
            self.send('</stream:stream>')
        except OSError:
            pass
        while not self.eof:
            self._feed_once(deadline)

    # -- channel bindings

    def cb_data(self, cb_type):
        if cb_type == 'tls-exporter':
            check(self.backend == 'openssl', 'tls-exporter needs the openssl backend')
            return self.sock.exporter()
        if cb_type == 'tls-server-end-point':
            der = (self.sock.peer_cert_der() if self.backend == 'openssl'
                   else self.sock.getpeercert(True))
            return server_end_point(der)
        raise ValueError(cb_type)

    # -- authentication and binding

    def login(self, user, password, mech='SCRAM-SHA-256', resource=None, backend='ssl'):
        """STARTTLS (unless already TLS), SASL, stream restart, bind. Returns the bound JID."""
        if not self.tls:
            self.open()
            self.starttls(backend)
        features = self.open()
        check(mech in mechanisms(features), '%s not offered: %s' % (mech, mechanisms(features)))
        cb_type = None
        if mech.endswith('-PLUS'):
            cb_type = 'tls-exporter' if self.backend == 'openssl' and \
                'tls-exporter' in channel_bindings(features) else 'tls-server-end-point'
        if mech == 'PLAIN':
            ok, cond = plain_auth(self, user, password)
        else:
            ok, cond = scram_auth(self, mech, user, password, cb_type=cb_type)
        check(ok, 'SASL %s failed: %s' % (mech, cond))
        self.open()
        return self.bind(resource)

    def bind(self, resource=None):
        res = '<resource>%s</resource>' % resource if resource else ''
        self.send("<iq type='set' id='bind1'><bind xmlns='%s'>%s</bind></iq>" % (NS_BIND, res))
        el = self.next()
        check(el.get('type') == 'result', 'bind failed: %s' % ET.tostring(el))
        jid = el.find('{%s}bind/{%s}jid' % (NS_BIND, NS_BIND))
        check(jid is not None and jid.text, 'bind result without jid: %s' % ET.tostring(el))
        return jid.text


def mechanisms(features):
    return [m.text for m in features.findall('{%s}mechanisms/{%s}mechanism' % (NS_SASL, NS_SASL))]


def channel_bindings(features):
    return [c.get('type') for c in features.findall('{%s}sasl-channel-binding/{%s}channel-binding'
                                                   % (NS_CB, NS_CB))]


def server_end_point(der):
    """RFC 5929 §4.1: hash of the certificate with its signature hash (SHA-256 for MD5/SHA-1)."""
    from cryptography import x509
    cert = x509.load_der_x509_certificate(der)
    name = cert.signature_hash_algorithm.name if cert.signature_hash_algorithm else 'sha256'
    if name in ('md5', 'sha1'):
        name = 'sha256'
    return hashlib.new(name, der).digest()


def _b64(b):
    return base64.b64encode(b).decode()


def _sasl_result(raw):
    el = raw.next()
    local = el.tag.split('}')[-1]
    if el.tag == '{%s}failure' % NS_SASL:
        conds = [c.tag.split('}')[-1] for c in el if c.tag != '{%s}text' % NS_SASL]
        return local, (conds[0] if conds else ''), el
    return local, (el.text or ''), el


def plain_auth(raw, user, password):
    """RFC 4616 PLAIN. Returns (True, None) or (False, failure condition)."""
    raw.send("<auth xmlns='%s' mechanism='PLAIN'>%s</auth>"
             % (NS_SASL, _b64(b'\0' + user.encode() + b'\0' + password.encode())))
    kind, val, el = _sasl_result(raw)
    if kind == 'success':
        return True, None
    check(kind == 'failure', 'unexpected SASL reply %s' % ET.tostring(el))
    return False, val


def scram_auth(raw, mech, user, password, cb_type=None, gs2_flag=None, cb_data=None,
               tamper_proof=False):
    """RFC 5802 SCRAM client (SHA-1/SHA-256, optionally -PLUS). Returns (True, None) after the
    server's signature checked out, or (False, condition) on <failure/>.

    gs2_flag overrides the GS2 channel-binding flag ('n', 'y', 'p=TYPE'); cb_data overrides the
    binding data (to send a wrong one); tamper_proof flips a bit of the client proof."""
    hname = 'sha1' if mech.startswith('SCRAM-SHA-1') else 'sha256'
    plus = mech.endswith('-PLUS')
    if gs2_flag is None:
        gs2_flag = 'p=%s' % cb_type if plus else 'n'
    gs2_header = (gs2_flag + ',,').encode()
    if gs2_flag.startswith('p=') and cb_data is None:
        cb_data = raw.cb_data(cb_type or gs2_flag[2:])
    cnonce = _b64(os.urandom(18))
    first_bare = ('n=%s,r=%s' % (user.replace('=', '=3D').replace(',', '=2C'), cnonce)).encode()
    raw.send("<auth xmlns='%s' mechanism='%s'>%s</auth>" % (NS_SASL, mech,
                                                             _b64(gs2_header + first_bare)))
    kind, val, el = _sasl_result(raw)
    if kind == 'failure':
        return False, val
    check(kind == 'challenge', 'expected challenge, got %s' % ET.tostring(el))
    server_first = base64.b64decode(val)
    attrs = dict(kv.split(b'=', 1) for kv in server_first.split(b','))
    nonce = attrs[b'r']
    check(nonce.startswith(cnonce.encode()) and len(nonce) > len(cnonce),
          'server nonce does not extend ours: %r' % server_first)
    salt = base64.b64decode(attrs[b's'])
    iters = int(attrs[b'i'])
    check(iters >= 4096, 'iteration count %d < 4096 (RFC 7677)' % iters)
    cbind_input = gs2_header + (cb_data if gs2_flag.startswith('p=') else b'')
    without_proof = b'c=' + _b64(cbind_input).encode() + b',r=' + nonce
    salted = hashlib.pbkdf2_hmac(hname, password.encode(), salt, iters)
    client_key = hmac.new(salted, b'Client Key', hname).digest()
    stored_key = hashlib.new(hname, client_key).digest()
    auth_message = first_bare + b',' + server_first + b',' + without_proof
    signature = hmac.new(stored_key, auth_message, hname).digest()
    proof = bytearray(a ^ b for a, b in zip(client_key, signature))
    if tamper_proof:
        proof[0] ^= 1
    raw.send("<response xmlns='%s'>%s</response>"
             % (NS_SASL, _b64(without_proof + b',p=' + _b64(bytes(proof)).encode())))
    kind, val, el = _sasl_result(raw)
    if kind == 'failure':
        return False, val
    check(kind == 'success', 'expected success, got %s' % ET.tostring(el))
    server_key = hmac.new(salted, b'Server Key', hname).digest()
    expected = b'v=' + _b64(hmac.new(server_key, auth_message, hname).digest()).encode()
    check(base64.b64decode(val) == expected,
          'server signature mismatch: %r vs %r' % (base64.b64decode(val), expected))
    return True, None


def authed_raw(srv, user, password, resource=None, mech='SCRAM-SHA-256'):
    """A Raw stream logged in and bound; returns (raw, full JID)."""
    raw = Raw(srv.port)
    jid = raw.login(user, password, mech=mech, resource=resource)
    return raw, jid


def localpart(jid):
    return jid.split('@', 1)[0]


def stanza_error(el):
    """The defined condition of a stanza error element, or None."""
    err = el.find('error')
    if err is None:
        err = el.find('{jabber:client}error')
    if err is None:
        return None
    for c in err:
        if c.tag.startswith('{%s}' % NS_STANZAS) and not c.tag.endswith('}text'):
            return c.tag.split('}')[1]
    return None
