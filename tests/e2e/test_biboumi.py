"""biboumi 9 (a real XMPP⇄IRC gateway) as an XEP-0114 component of Isthmus, bridging to an
ngircd started here: a slixmpp user joins #test%127.0.0.1@biboumi.localhost and exchanges
messages with a plain-socket IRC client on ngircd (see /work/shared/peers.md §3 and §7 for the
facts these configs rest on).

ngircd listens on 127.0.0.1:6667 because biboumi reaches an IRC server named in the JID on its
default ports (6697, 6670, then 6667); those ports must be free."""

import asyncio
import os
import pwd
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

import harness as h
from harness import check

HERE = Path(__file__).resolve().parent
BIBOUMI = shutil.which('biboumi') or '/usr/bin/biboumi'
NGIRCD = shutil.which('ngircd') or '/usr/sbin/ngircd'
IRC_IP = '127.0.0.1'
IRC_PORT = 6667
DOMAIN = 'biboumi.localhost'
SECRET = 'biboumi-secret'
ROOM = '#test%%%s@%s' % (IRC_IP, DOMAIN)
TIMEOUT = 90


def _fill(template, dest, **values):
    text = string.Template((HERE / 'peers' / template).read_text()).substitute(**values)
    Path(dest).write_text(text)


class Peer:
    """A foreground daemon started by argv, stopped by its PID (TERM, then KILL)."""

    def __init__(self, name, argv, log_path, cwd):
        self.name, self.log_path = name, log_path
        self._out = open(log_path, 'ab')
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)

    def log(self):
        try:
            return Path(self.log_path).read_text(errors='replace')
        except OSError:
            return ''

    def check_alive(self, extra_log=''):
        check(self.proc.poll() is None, '%s exited with %s:\n%s%s' % (
            self.name, self.proc.returncode, self.log()[-2000:], extra_log))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


def _free(ip, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def start_ngircd(d):
    for p in (IRC_PORT, 6697, 6670):
        check(_free(IRC_IP, p), '%s:%d is in use; biboumi would use it' % (IRC_IP, p))
    os.makedirs(os.path.join(d, 'conf.d'), exist_ok=True)
    uid_lines = ''
    if os.getuid() == 0:
        # ngircd will not run as root; Debian's package creates the irc user.
        try:
            pwd.getpwnam('irc')
            uid_lines = 'ServerUID = irc\n\tServerGID = irc'
        except KeyError:
            pass
    conf = os.path.join(d, 'ngircd.conf')
    _fill('ngircd.conf.in', conf, ip=IRC_IP, port=IRC_PORT, dir=d, uid_lines=uid_lines)
    os.chmod(d, 0o755)
    os.chmod(conf, 0o644)
    t = subprocess.run([NGIRCD, '-f', conf, '-t'], capture_output=True, text=True, timeout=20)
    check(t.returncode == 0, 'ngircd rejected its config: %s%s' % (t.stdout, t.stderr))
    p = Peer('ngircd', [NGIRCD, '-n', '-f', conf], os.path.join(d, 'ngircd.log'), d)

    def ready():
        p.check_alive()
        return h.port_open(IRC_PORT, IRC_IP)
    h.wait_until(ready, 20, 'ngircd to listen')
    return p


def start_biboumi(d, comp_port):
    cfg = os.path.join(d, 'biboumi.cfg')
    _fill('biboumi.cfg.in', cfg, domain=DOMAIN, secret=SECRET, port=comp_port, dir=d)
    p = Peer('biboumi', [BIBOUMI, cfg], os.path.join(d, 'biboumi.out'), d)
    blog = Path(d) / 'biboumi.log'

    def ready():
        text = (blog.read_text(errors='replace') if blog.exists() else '') + p.log()
        p.check_alive(text[-2000:])
        return 'Authenticated with the XMPP server' in text
    h.wait_until(ready, 20, 'biboumi to authenticate with Isthmus')
    return p


class IrcClient:
    """A minimal RFC 1459 client on a blocking socket: register, join, send and wait for lines."""

    def __init__(self, nick):
        self.nick = nick
        self.sock = socket.create_connection((IRC_IP, IRC_PORT), timeout=h.IO_TIMEOUT)
        self.buf = b''
        self.lines = []
        self.send('NICK %s' % nick)
        self.send('USER %s 0 * :Isthmus test' % nick)
        self.wait(lambda l: l.split()[1:2] == ['001'], 'the IRC welcome')

    def send(self, line):
        self.sock.sendall(line.encode() + b'\r\n')

    def wait(self, pred, what, timeout=h.IO_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            while b'\r\n' in self.buf:
                raw, self.buf = self.buf.split(b'\r\n', 1)
                line = raw.decode('utf-8', 'replace')
                self.lines.append(line)
                if line.startswith('PING'):
                    self.send('PONG' + line[4:])
                    continue
                if pred(line):
                    return line
            left = deadline - time.monotonic()
            check(left > 0, 'IRC: timed out waiting for %s; got %s' % (what, self.lines[-15:]))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            check(data, 'IRC: connection closed waiting for %s; got %s' % (what, self.lines[-15:]))
            self.buf += data

    def close(self):
        try:
            self.send('QUIT :bye')
        except OSError:
            pass
        self.sock.close()


async def test_biboumi_bridges_xmpp_and_irc():
    check(os.path.exists(BIBOUMI) and os.path.exists(NGIRCD),
          'biboumi and ngircd are needed (contrib/install-deps --test)')
    d = tempfile.mkdtemp(prefix='isthmus-biboumi-')
    comp_port = h.free_port()
    srv = h.Server({'component': {'listen': '127.0.0.1:%d' % comp_port},
                    'component ' + DOMAIN: {'secret': SECRET}})
    ircd = bib = irc = None
    ok = False
    try:
        srv.start()
        ircd = start_ngircd(d)
        bib = start_biboumi(d, comp_port)
        check('component %s connected' % DOMAIN in srv.log(),
              'Isthmus should log the component: %s' % srv.log_tail())

        irc = IrcClient('ircbob')
        irc.send('JOIN #test')
        irc.wait(lambda l: ' JOIN ' in l and l.startswith(':ircbob!'), 'our own JOIN')

        jid, pw = srv.new_user('bib')
        c = await h.connect(srv, jid, pw, plugins=('xep_0045',))
        joined = c.loop.create_future()

        def on_presence(p):
            if p['from'] == '%s/alice' % ROOM and not joined.done():
                joined.set_result(p)
        c.add_event_handler('groupchat_presence', on_presence)
        c['xep_0045'].join_muc(ROOM, 'alice')
        pres = await asyncio.wait_for(joined, 30)
        check(pres['type'] != 'error', 'joining the IRC channel failed: %s' % pres)
        # The XMPP user shows up on IRC under its MUC nick. (IRC waits block: they run in a
        # thread so that slixmpp's loop keeps sending.)
        await asyncio.to_thread(irc.wait, lambda l: l.startswith(':alice!') and ' JOIN ' in l,
                                "alice's JOIN on IRC", timeout=20)

        c.send_message(mto=ROOM, mbody='hello from xmpp', mtype='groupchat')
        line = await asyncio.to_thread(
            irc.wait, lambda l: l.startswith(':alice!') and 'PRIVMSG #test' in l,
            'the XMPP message on IRC')
        check(line.endswith(':hello from xmpp'), 'IRC got %r' % line)

        irc.send('PRIVMSG #test :hello from irc')
        got = await c.next_message(
            timeout=20, pred=lambda m: m['type'] == 'groupchat' and m['body'] == 'hello from irc')
        check(got['from'] == '%s/ircbob' % ROOM, 'the IRC message should come from the IRC '
              'nick in the room: %s' % got['from'])
        await c.close()
        ok = True
    finally:
        if irc:
            irc.close()
        if bib:
            bib.stop()
        if ircd:
            ircd.stop()
        srv.stop(check_exit=ok)
        if ok and not os.environ.get('ISTHMUS_KEEP'):
            shutil.rmtree(d, ignore_errors=True)
