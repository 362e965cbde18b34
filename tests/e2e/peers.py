"""Real federation peers for the end-to-end suite: a test CA, Prosody 0.12 as peer.test on
127.0.0.2, ejabberd 23.01 as ej.test on 127.0.0.3 and Isthmus as ours.test with s2s on
127.0.0.10:5269 (see /work/shared/peers.md for why each server has its own loopback address:
with no SRV record a server connects to the domain's A record on port 5269).

Name resolution never touches the machine's /etc/hosts or a real DNS server:
  * Prosody resolves through lua-unbound with a private hosts file (`hoststxt`) and a private
    resolv.conf naming 127.0.0.1, where nothing answers;
  * ejabberd resolves A records through libc, so it runs in a private mount namespace
    (`unshare -m`) with its own hosts file bind-mounted over /etc/hosts;
  * Isthmus gets [s2s] routes for the peers and a nameserver on 127.0.0.1.

Every process is started by this module and stopped by the PID it got (process group for the
kill fallback); stop_all() runs at exit too, so fixed ports are freed even when a test run dies.
"""

import asyncio
import atexit
import datetime
import os
import signal
import socket
import ssl
import string
import subprocess
from pathlib import Path

import harness as h
from harness import TestFailure, check, wait_until

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / 'peers'

OURS = 'ours.test'
OURS_IP = '127.0.0.10'
OURS_TWO = 'two.ours.test'    # a second [host] of ours (dialback piggybacking)
OURS_COMP = 'comp.ours.test'  # a component of ours (test_federation connects one)
OURS_MUC = 'conference.ours.test'  # our MUC service; the CA certificate for ours.test names *.ours.test
PROSODY_DOMAIN = 'peer.test'
PROSODY_IP = '127.0.0.2'
EJ_DOMAIN = 'ej.test'
EJ_IP = '127.0.0.3'
C2S_PORT = 5222
S2S_PORT = 5269
EJ_DIST_PORT = 4370

PROSODY = '/usr/bin/prosody'
PROSODYCTL = '/usr/bin/prosodyctl'
EJABBERDCTL = '/usr/sbin/ejabberdctl'

PEER_START_TIMEOUT = 60.0
PEER_STOP_TIMEOUT = 20.0

_live = []


def _port_free(ip, port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def _require_free(what, ip, *ports):
    for p in ports:
        check(_port_free(ip, p), '%s: %s:%d is in use (a leftover server from an earlier run?)'
              % (what, ip, p))


def _fill(template, dest, **values):
    text = string.Template((TEMPLATES / template).read_text()).substitute(**values)
    Path(dest).write_text(text)


def _log_tail(path, n=30):
    try:
        with open(path, 'rb') as f:
            lines = f.read().decode('utf-8', 'replace').splitlines()
        return '\n'.join(lines[-n:])
    except OSError:
        return '(no log at %s)' % path


def read_text(path):
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')
    except OSError:
        return ''


# --------------------------------------------------------------------------- certificates


class TestCA:
    """A throwaway certificate authority in dir: ca.crt is what every server trusts.

    issue(name) gives (cert, key, pem) paths for a leaf certificate whose subjectAltName holds
    dNSName entries for name and *.name (RFC 6125 DNS-IDs), usable as TLS server and client
    certificate (the initiating server of an s2s stream presents it as a client, XEP-0178)."""

    def __init__(self, directory):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'Isthmus Test CA')])
        now = datetime.datetime.utcnow()
        builder = (x509.CertificateBuilder()
                   .subject_name(self.name).issuer_name(self.name)
                   .public_key(self.key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                False, False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(
                       self.key.public_key()), critical=False))
        self.cert = builder.sign(self.key, hashes.SHA256())
        self.ca_file = self.dir / 'ca.crt'
        self.ca_file.write_bytes(self._pem_cert(self.cert))

    def _pem_cert(self, cert):
        from cryptography.hazmat.primitives import serialization
        return cert.public_bytes(serialization.Encoding.PEM)

    def _pem_key(self, key):
        from cryptography.hazmat.primitives import serialization
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def _leaf(self, name, sans, issuer_name, issuer_key, self_signed=False):
        x509, NameOID = self._x509, self._oid
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.utcnow()
        builder = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(subject if self_signed else issuer_name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.DNSName(s) for s in sans]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                                False, False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        signer = key if self_signed else issuer_key
        if not self_signed:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False)
        cert = builder.sign(signer, self._hashes.SHA256())
        return cert, key

    def _write(self, stem, cert, key):
        crt = self.dir / (stem + '.crt')
        kp = self.dir / (stem + '.key')
        pem = self.dir / (stem + '.pem')
        crt.write_bytes(self._pem_cert(cert))
        kp.write_bytes(self._pem_key(key))
        os.chmod(kp, 0o600)
        pem.write_bytes(self._pem_cert(cert) + self._pem_key(key))
        os.chmod(pem, 0o600)
        return str(crt), str(kp), str(pem)

    def issue(self, name):
        """(cert, key, cert+key pem) for name and *.name, signed by this CA."""
        cert, key = self._leaf(name, [name, '*.' + name], self.name, self.key)
        return self._write(name, cert, key)

    def self_signed(self, name):
        """(cert, key, pem) for name, signed by its own key: a certificate nobody trusts."""
        cert, key = self._leaf(name, [name, '*.' + name], None, None, self_signed=True)
        return self._write(name + '-untrusted', cert, key)

    def client_context(self, cert=None, key=None, server_name=None):
        """An ssl client context trusting only this CA (hostname checked when server_name is
        given), presenting cert/key if given."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(self.ca_file))
        ctx.check_hostname = server_name is not None
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx


# --------------------------------------------------------------------------- processes


class _Process:
    """Common start/stop bookkeeping: a Popen in its own session (process group), registered
    in _live until stopped."""

    name = 'peer'

    def __init__(self):
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv, out_path, env=None):
        self._out = open(out_path, 'ab')
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=self.dir,
                                     start_new_session=True, env=env)
        _live.append(self)

    def _reap(self, timeout):
        """Waits for the process to exit; SIGKILLs its process group after timeout."""
        try:
            self.proc.wait(timeout)
            ok = True
        except subprocess.TimeoutExpired:
            ok = False
        try:
            # Helpers (beam's erl_child_setup, inet_gethost) share the group; make sure none
            # outlives the peer.
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not ok:
            self.proc.wait(5)
        return ok

    def _forget(self):
        if self in _live:
            _live.remove(self)
        if getattr(self, '_out', None):
            self._out.close()
            self._out = None
        self.proc = None


class Prosody(_Process):
    """Prosody as peer.test on 127.0.0.2 (c2s 5222, s2s 5269)."""

    name = 'prosody'

    def __init__(self, directory, ca, secure_auth=True, hosts=None):
        super().__init__()
        self.dir = str(directory)
        self.domain = PROSODY_DOMAIN
        self.ip = PROSODY_IP
        self.ca = ca
        self.secure_auth = secure_auth
        self.hosts = hosts if hosts is not None else {OURS: OURS_IP, OURS_MUC: OURS_IP,
                                                       OURS_COMP: OURS_IP, OURS_TWO: OURS_IP,
                                                       EJ_DOMAIN: EJ_IP}
        os.makedirs(os.path.join(self.dir, 'data'), exist_ok=True)
        self.cert, self.key, _ = ca.issue(self.domain)

    @property
    def config_path(self):
        return os.path.join(self.dir, 'prosody.cfg.lua')

    @property
    def log_path(self):
        return os.path.join(self.dir, 'prosody.log')

    def log(self):
        return read_text(self.log_path)

    def write_config(self):
        _fill('prosody.cfg.lua.in', self.config_path, dir=self.dir, domain=self.domain,
              ip=self.ip, c2s_port=C2S_PORT, s2s_port=S2S_PORT,
              secure_auth='true' if self.secure_auth else 'false',
              cert=self.cert, key=self.key, cafile=str(self.ca.ca_file),
              certdir=str(self.ca.dir))
        with open(os.path.join(self.dir, 'hosts'), 'w') as f:
            f.write('127.0.0.1 localhost\n')
            for name, ip in self.hosts.items():
                f.write('%s %s\n' % (ip, name))
        with open(os.path.join(self.dir, 'resolv.conf'), 'w') as f:
            f.write('nameserver 127.0.0.1\n')

    def start(self, secure_auth=None):
        if secure_auth is not None:
            self.secure_auth = secure_auth
        _require_free('prosody', self.ip, C2S_PORT, S2S_PORT)
        self.write_config()
        self._spawn([PROSODY, '-F', '--config', self.config_path],
                    os.path.join(self.dir, 'prosody.stdout'))

        def ready():
            if self.proc.poll() is not None:
                raise TestFailure('prosody exited with %s:\n%s\n%s' % (
                    self.proc.returncode, _log_tail(os.path.join(self.dir, 'prosody.stdout')),
                    _log_tail(self.log_path)))
            return h.port_open(C2S_PORT, self.ip) and h.port_open(S2S_PORT, self.ip)
        try:
            wait_until(ready, PEER_START_TIMEOUT, 'prosody listening on %s' % self.ip, 0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self._reap(PEER_STOP_TIMEOUT)
        self._forget()

    def restart(self, secure_auth=None):
        self.stop()
        self.start(secure_auth)

    def add_user(self, user, password):
        r = subprocess.run([PROSODYCTL, '--config', self.config_path, 'register', user,
                            self.domain, password], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        check(r.returncode == 0, 'prosodyctl register %s failed (%d): %s%s'
              % (user, r.returncode, r.stdout, r.stderr))
        return '%s@%s' % (user, self.domain)


class Ejabberd(_Process):
    """ejabberd as ej.test on 127.0.0.3 (c2s 5222, s2s 5269), Erlang distribution on
    127.0.0.1:4370 (no epmd), run as root inside a private mount namespace whose /etc/hosts is
    our file."""

    name = 'ejabberd'

    def __init__(self, directory, ca, hosts=None):
        super().__init__()
        self.dir = str(directory)
        self.domain = EJ_DOMAIN
        self.ip = EJ_IP
        self.ca = ca
        self.hosts = hosts if hosts is not None else {OURS: OURS_IP, PROSODY_DOMAIN: PROSODY_IP}
        self.etc = os.path.join(self.dir, 'etc')
        for d in ('etc', 'spool', 'logs'):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        _, _, self.pem = ca.issue(self.domain)
        self.dist_port = EJ_DIST_PORT if _port_free('127.0.0.1', EJ_DIST_PORT) else h.free_port()
        self.cookie = 'isthmus%d' % os.getpid()

    @property
    def log_path(self):
        return os.path.join(self.dir, 'logs', 'ejabberd.log')

    def log(self):
        return read_text(self.log_path)

    def write_config(self):
        _fill('ejabberd.yml.in', os.path.join(self.etc, 'ejabberd.yml'), domain=self.domain,
              ip=self.ip, c2s_port=C2S_PORT, s2s_port=S2S_PORT, pem=self.pem,
              cafile=str(self.ca.ca_file))
        # ejabberdctl sources this after its own defaults (peers.md §2): run as the current
        # user, no epmd, the node reachable on 127.0.0.1 only, a cookie on the command line.
        with open(os.path.join(self.etc, 'ejabberdctl.cfg'), 'w') as f:
            f.write('ERLANG_NODE=isthmustest@localhost\n'
                    'ERL_OPTIONS="-setcookie %s -env ERL_CRASH_DUMP_BYTES 0"\n'
                    'ERL_DIST_PORT=%d\n'
                    'INET_DIST_INTERFACE=127.0.0.1\n'
                    'EJABBERD_CONFIG_PATH=%s\n'
                    'EJABBERD_PID_PATH=%s\n'
                    'SPOOL_DIR=%s\n'
                    'LOGS_DIR=%s\n'
                    'EXEC_CMD=as_current_user\n'
                    % (self.cookie, self.dist_port, os.path.join(self.etc, 'ejabberd.yml'),
                       os.path.join(self.dir, 'ejabberd.pid'), os.path.join(self.dir, 'spool'),
                       os.path.join(self.dir, 'logs')))
        # SRV lookups go through the Erlang resolver: no files, a nameserver nobody runs.
        with open(os.path.join(self.etc, 'inetrc'), 'w') as f:
            f.write('{resolv_conf, ""}.\n{hosts_file, ""}.\n{nameserver, {127,0,0,1}}.\n')
        # A/AAAA lookups go through libc: this file is bind-mounted over /etc/hosts.
        with open(os.path.join(self.etc, 'hosts'), 'w') as f:
            f.write('127.0.0.1 localhost\n')
            for name, ip in self.hosts.items():
                f.write('%s %s\n' % (ip, name))

    def _ctl_argv(self, *args):
        return [EJABBERDCTL, '--config-dir', self.etc, '--spool', os.path.join(self.dir, 'spool'),
                '--logs', os.path.join(self.dir, 'logs')] + list(args)

    def ctl(self, *args, timeout=60):
        return subprocess.run(self._ctl_argv(*args), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.dir)

    def start(self):
        check(os.geteuid() == 0, 'ejabberd needs root here (private mount namespace)')
        _require_free('ejabberd', self.ip, C2S_PORT, S2S_PORT)
        _require_free('ejabberd distribution', '127.0.0.1', self.dist_port)
        self.write_config()
        hosts = os.path.join(self.etc, 'hosts')
        argv = ['unshare', '-m', '--propagation', 'private', 'sh', '-c',
                'mount --bind "$1" /etc/hosts && shift && exec "$@"', 'sh', hosts] + \
            self._ctl_argv('foreground')
        self._spawn(argv, os.path.join(self.dir, 'ejabberd.stdout'))

        def ready():
            if self.proc.poll() is not None:
                raise TestFailure('ejabberd exited with %s:\n%s\n%s' % (
                    self.proc.returncode, _log_tail(os.path.join(self.dir, 'ejabberd.stdout')),
                    _log_tail(self.log_path)))
            return h.port_open(C2S_PORT, self.ip) and h.port_open(S2S_PORT, self.ip)
        try:
            wait_until(ready, PEER_START_TIMEOUT, 'ejabberd listening on %s' % self.ip, 0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.ctl('stop', timeout=30)
            except subprocess.TimeoutExpired:
                pass
            if not self._reap(PEER_STOP_TIMEOUT):
                self._forget()
                raise TestFailure('ejabberd did not stop within %.0fs; killed' % PEER_STOP_TIMEOUT)
        else:
            self._reap(0)
        self._forget()

    def add_users(self, *pairs):
        """Registers (user, password) pairs concurrently (each ejabberdctl is an Erlang node
        that takes about a second to start); returns the bare JIDs."""
        procs = [subprocess.Popen(self._ctl_argv('register', u, self.domain, p),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=self.dir, text=True)
                 for u, p in pairs]
        errors = []
        for (u, _), p in zip(pairs, procs):
            try:
                out, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            if p.returncode != 0:
                errors.append('%s: %d %s' % (u, p.returncode, out))
        check(not errors, 'ejabberdctl register failed: %s' % '; '.join(errors))
        return ['%s@%s' % (u, self.domain) for u, _ in pairs]


class Ours(h.Server):
    """Isthmus serving only ours.test with the given certificate, c2s on a free 127.0.0.1 port
    (as harness.Server does) and s2s on 127.0.0.10:5269, where the peers find ours.test.

    s2s: extra [s2s] keys merged over listen/routes/ca_file/nameserver (None deletes)."""

    def __init__(self, ca, cert, key, s2s=None, routes=None, overrides=None):
        super().__init__(overrides)
        self.config.pop('host ' + h.DOMAIN, None)
        self.config['host ' + OURS] = {'certificate': cert, 'key': key,
                                       'registration': 'false'}
        all_routes = {PROSODY_DOMAIN: '%s:%d' % (PROSODY_IP, S2S_PORT),
                      EJ_DOMAIN: '%s:%d' % (EJ_IP, S2S_PORT)}
        all_routes.update(routes or {})
        sec = {'listen': '%s:%d' % (OURS_IP, S2S_PORT),
               'routes': ', '.join('%s=%s' % kv for kv in all_routes.items()),
               'ca_file': str(ca.ca_file),
               # Nothing listens there: an unrouted domain fails at once, locally.
               'nameserver': '127.0.0.1:53',
               'connect_timeout': '5'}
        for k, v in (s2s or {}).items():
            if v is None:
                sec.pop(k, None)
            else:
                sec[k] = str(v)
        self.config['s2s'] = sec
        self.config['muc'] = {'hosts': OURS_MUC}
        self.domain = OURS

    def start(self):
        _require_free('isthmus s2s', OURS_IP, S2S_PORT)
        super().start()
        try:
            wait_until(lambda: h.port_open(S2S_PORT, OURS_IP), 10,
                       'isthmus s2s listener on %s:%d' % (OURS_IP, S2S_PORT))
        except TestFailure:
            self.stop(check_exit=False, remove=False)
            raise
        return self


def stop_all():
    """Stops every peer this module started (most recent first); errors are collected."""
    errors = []
    for p in reversed(list(_live)):
        try:
            p.stop()
        except BaseException as e:
            errors.append('%s: %s' % (p.name, e))
            p._forget()
    return errors


atexit.register(stop_all)


# --------------------------------------------------------------------------- clients


async def connect(ip, jid, password, *, plugins=(), mechs=('SCRAM-SHA-1', 'PLAIN'),
                  presence=True, timeout=h.IO_TIMEOUT):
    """A harness slixmpp client logged in to the server at ip:5222 (STARTTLS, no certificate
    check); with presence=True it has sent initial presence and the server processed it."""
    c = h.make_client(jid, password, mechs=mechs, plugins=plugins)
    c.connect((ip, C2S_PORT), force_starttls=True)
    try:
        await asyncio.wait_for(asyncio.shield(c.session), timeout)
    except asyncio.TimeoutError:
        c.abort_reconnect()
        c.abort()
        raise h.LoginFailed('%s: no session within %.0fs (stream errors %s, auth failures %s)'
                            % (jid, timeout, c.stream_errors, c.auth_failures))
    if presence:
        c.send_presence()
        await c.sync()
    return c


# --------------------------------------------------------------------------- raw s2s streams

NS_SERVER = 'jabber:server'
NS_DIALBACK = 'jabber:server:dialback'
NS_DIALBACK_FEATURE = 'urn:xmpp:features:dialback'


class RawS2S(h.Raw):
    """A hand-driven server-to-server stream (RFC 6120 jabber:server namespace) towards
    ours.test, for the tests a well-behaved peer cannot do (spoofed domains)."""

    def __init__(self, from_domain, host=OURS_IP, port=S2S_PORT, timeout=h.IO_TIMEOUT):
        super().__init__(port, host=host, timeout=timeout)
        self.from_domain = from_domain

    def open_s2s(self, to=OURS):
        """Sends an s2s stream header and returns the <stream:features/> element."""
        self._reset()
        self.send("<?xml version='1.0'?><stream:stream xmlns='%s' xmlns:stream='%s' "
                  "xmlns:db='%s' from='%s' to='%s' version='1.0'>"
                  % (NS_SERVER, h.NS_STREAM, NS_DIALBACK, self.from_domain, to))
        self.wait_header()
        el = self.next()
        check(el.tag == '{%s}features' % h.NS_STREAM, 'expected stream features, got %s'
              % h.ET.tostring(el))
        return el

    def starttls_with(self, ctx, server_name=OURS):
        """STARTTLS (RFC 6120 §5.4) wrapping the socket with the given client context."""
        self.send("<starttls xmlns='%s'/>" % h.NS_TLS)
        el = self.next()
        check(el.tag == '{%s}proceed' % h.NS_TLS, 'STARTTLS refused: %s' % h.ET.tostring(el))
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_name)
        self.tls = True
        self.backend = 'ssl'
