"""The email gateway (build/isthmus-mail) end to end: the server supervises it as the component
mail.localhost; the outside world is a real MTA (Postfix, accepting mail for mail.test into
Maildirs) and a real IMAP server (Dovecot, users alice and bob) started here in a temp dir
(peers.md §5), driven with Python's smtplib and imaplib; XMPP users are slixmpp clients.

Covered: discovery, registration (form; plain-text servers refused unless the admin allows
them), an XMPP message becoming a mail (non-ASCII subject and body, RFC 2047 / MIME checked by
reading the recipient's mailbox over IMAP), a mail becoming an XMPP message (non-ASCII, with
<subject/>, <thread/> and a delay stamp), a reply keeping the thread as In-Reply-To/References,
the gateway killed (SIGKILL) between two incoming mails and restarted by the server: nothing lost
and nothing delivered twice; and a mail server that never answers one user does not hold up
another user's mail. Every wait is for a specific event with generous limits."""

import asyncio
import email
import email.policy
import imaplib
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from email.message import EmailMessage
from pathlib import Path

import harness as h
import peers
from harness import check

GW = 'mail.localhost'
MAIL_DOMAIN = 'mail.test'
GATEWAY_BIN = h.BUILD / 'isthmus-mail'
POSTFIX = shutil.which('postfix') or '/usr/sbin/postfix'
DOVECOT = shutil.which('dovecot') or '/usr/sbin/dovecot'
NS_REGISTER = 'jabber:iq:register'
NS_DATA = 'jabber:x:data'
NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info'
NS_DELAY = 'urn:xmpp:delay'
MAIL_USERS = {'alice': 'alicepw', 'bob': 'bobpw', 'carol': 'carolpw'}

T = max(h.IO_TIMEOUT, 40.0)   # one poll round trip through three processes, under ASan
TIMEOUT = 240

srv = None
mail = None
slow = None


def dump(el):
    return ET.tostring(el).decode(errors='replace')


# --------------------------------------------------------------------------- Postfix + Dovecot


MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = mx.{domain}
mydomain = {domain}
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 192.0.2.1/32
smtpd_relay_restrictions = reject_unauth_destination
smtpd_recipient_restrictions = reject_unauth_destination
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {dir}/mail
virtual_mailbox_maps = texthash:{dir}/etc/vmailbox
virtual_uid_maps = static:8
virtual_gid_maps = static:8
virtual_minimum_uid = 8
default_transport = error:nothing leaves this test machine
relay_transport = error:nothing leaves this test machine
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtputf8_enable = yes
biff = no
alias_maps =
alias_database =
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

DOVECOT_CONF = """\
base_dir = {dir}/dovecot-run
state_dir = {dir}/dovecot-state
log_path = {dir}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 8
auth_username_format = %Ln
mail_location = maildir:{dir}/mail/%Ln
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {dir}/dovecot.passwd
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={dir}/mail/%Ln
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


class MailServers:
    """Postfix (SMTP for mail.test on 127.0.0.1:smtp_port, STARTTLS) and Dovecot (IMAP with
    STARTTLS on 127.0.0.1:imap_port) in one temp dir; certificates for 'localhost' from a test CA
    (ca_file), which the gateway is told to trust with mail_ca_file."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix='isthmus-mail-')
        os.chmod(self.dir, 0o755)  # postfix and mail must reach their parts (peers.md §5)
        d = Path(self.dir)
        self.ca = peers.TestCA(str(d / 'ca'))
        os.chmod(d / 'ca', 0o755)
        self.ca_file = str(self.ca.ca_file)
        cert, key, _ = self.ca.issue('localhost')
        for f in (cert, key):
            os.chmod(f, 0o644)  # a throwaway test key, read by postfix and dovecot
        self.smtp_port = h.free_port()
        self.imap_port = h.free_port()
        for sub in ('etc', 'queue', 'data', 'mail'):
            (d / sub).mkdir()
        os.chown(d / 'mail', 8, 8)
        os.chown(d / 'data', pwd_uid('postfix'), 0)
        (d / 'etc' / 'main.cf').write_text(MAIN_CF.format(dir=self.dir, domain=MAIL_DOMAIN,
                                                          cert=cert, key=key))
        (d / 'etc' / 'master.cf').write_text(MASTER_CF.format(port=self.smtp_port))
        (d / 'etc' / 'vmailbox').write_text(''.join(
            '%s@%s %s/\n' % (u, MAIL_DOMAIN, u) for u in MAIL_USERS))
        (d / 'dovecot.passwd').write_text(''.join(
            '%s:{PLAIN}%s\n' % (u, p) for u, p in MAIL_USERS.items()))
        (d / 'dovecot.conf').write_text(DOVECOT_CONF.format(dir=self.dir, cert=cert, key=key,
                                                            port=self.imap_port))
        self.etc = str(d / 'etc')
        r = subprocess.run([POSTFIX, '-c', self.etc, 'check'], capture_output=True, text=True,
                           timeout=60)
        check(r.returncode == 0, 'postfix check failed: %s%s' % (r.stdout, r.stderr))
        self._out = open(d / 'daemons.log', 'ab')
        self.postfix = subprocess.Popen([POSTFIX, '-c', self.etc, 'start-fg'],
                                        stdin=subprocess.DEVNULL, stdout=self._out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.dovecot = subprocess.Popen([DOVECOT, '-F', '-c', str(d / 'dovecot.conf')],
                                        stdin=subprocess.DEVNULL, stdout=self._out,
                                        stderr=subprocess.STDOUT, start_new_session=True)

        def ready():
            for name, p in (('postfix', self.postfix), ('dovecot', self.dovecot)):
                check(p.poll() is None, '%s exited with %s: %s' % (name, p.returncode,
                                                                   self.logs()))
            return h.port_open(self.smtp_port) and h.port_open(self.imap_port)
        try:
            h.wait_until(ready, 30, 'postfix and dovecot to listen', 0.05)
        except BaseException:
            self.stop()
            raise

    def logs(self):
        out = ''
        for f in ('daemons.log', 'maillog', 'dovecot.log'):
            try:
                text = (Path(self.dir) / f).read_text(errors='replace')
                out += '\n--- %s\n%s' % (f, text[-3000:])
            except OSError:
                pass
        return out

    def ssl_context(self):
        ctx = ssl.create_default_context(cafile=self.ca_file)
        return ctx

    def send(self, msg):
        """Delivers msg (an EmailMessage) by SMTP with STARTTLS, as an outside MTA would."""
        with smtplib.SMTP('localhost', self.smtp_port, timeout=T) as s:
            s.starttls(context=self.ssl_context())
            s.send_message(msg)

    def mailbox(self, user):
        """Every mail in user's INBOX as email.message.EmailMessage, in UID order (read with
        BODY.PEEK so nothing changes)."""
        with imaplib.IMAP4('localhost', self.imap_port, timeout=T) as m:
            m.starttls(ssl_context=self.ssl_context())
            m.login(user, MAIL_USERS[user])
            m.select('INBOX', readonly=True)
            typ, data = m.uid('SEARCH', None, 'ALL')
            check(typ == 'OK', 'UID SEARCH: %s %s' % (typ, data))
            out = []
            for uid in data[0].split():
                typ, parts = m.uid('FETCH', uid, '(BODY.PEEK[])')
                check(typ == 'OK', 'UID FETCH: %s %s' % (typ, parts))
                raw = parts[0][1]
                out.append(email.message_from_bytes(raw, policy=email.policy.default))
            return out

    def stop(self):
        subprocess.run([POSTFIX, '-c', self.etc, 'stop'], capture_output=True, timeout=30)
        for p in (self.postfix, self.dovecot):
            if p.poll() is None:
                if p is self.dovecot:
                    p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self._out.close()
        if not os.environ.get('ISTHMUS_KEEP'):
            shutil.rmtree(self.dir, ignore_errors=True)


def pwd_uid(name):
    import pwd
    return pwd.getpwnam(name).pw_uid


class SlowSmtp:
    """An SMTP server that greets and then never answers: a mail server that stalls."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.accepted = threading.Event()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            self.accepted.set()   # and say nothing at all: no greeting, the client waits

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(5)


# --------------------------------------------------------------------------- module setup


def setup_module():
    check(os.path.exists(POSTFIX) and os.path.exists(DOVECOT),
          'postfix and dovecot are needed (contrib/install-deps --test)')
    check(GATEWAY_BIN.exists(), '%s does not exist (run make)' % GATEWAY_BIN)
    try:
        _setup()
    except BaseException:
        teardown_module()  # run.py skips teardown when setup fails: stop postfix/dovecot here
        raise


def _setup():
    global srv, mail, slow
    mail = MailServers()
    slow = SlowSmtp()
    srv = h.Server({
        'component': {'listen': '127.0.0.1:%d' % h.free_port()},
        'gateway ' + GW: {'type': 'mail', 'roster': 'both', 'message': 'outgoing',
                          'restart_delay': '1', 'mail_poll_interval': '1',
                          'mail_workers': '2', 'mail_ca_file': mail.ca_file,
                          'mail_default_subject': 'From XMPP'},
    })
    srv.start()
    h.wait_until(lambda: 'component %s connected' % GW in srv.log(), T,
                 'the gateway to connect to the server')


def teardown_module():
    global mail, slow
    try:
        if srv:
            pids = gateway_pids()
            srv.stop()  # checks the log (the gateway's output is in it) for sanitizer reports
            h.wait_until(lambda: not any(pid_alive(p) for p in pids), 10,
                         'the supervised gateway (pids %s) to stop with the server' % pids)
    finally:
        if slow:
            slow.close()
            slow = None
        if mail:
            mail.stop()
            mail = None


def gateway_pids():
    return [int(l.split('started process ', 1)[1].split(':', 1)[0])
            for l in srv.log().splitlines() if '[comp:%s] started process ' % GW in l]


def gateway_pids_wait(n):
    h.wait_until(lambda: len(gateway_pids()) >= n, T, 'gateway process #%d to start' % n)
    return gateway_pids()


def pid_alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(') ', 1)[1][0] != 'Z'
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------- XMPP helpers


def reg_form(values):
    fields = "<field var='FORM_TYPE' type='hidden'><value>%s</value></field>" % NS_REGISTER
    for k, v in values.items():
        fields += "<field var='%s'><value>%s</value></field>" % (
            k, v.replace('&', '&amp;').replace('<', '&lt;'))
    return ET.fromstring("<query xmlns='%s'><x xmlns='%s' type='submit'>%s</x></query>"
                         % (NS_REGISTER, NS_DATA, fields))


def account(user, smtp_port=None, tls='starttls'):
    return {'email': '%s@%s' % (user, MAIL_DOMAIN), 'name': user.capitalize(),
            'imap_server': 'localhost:%d' % mail.imap_port,
            'smtp_server': 'localhost:%d' % (smtp_port or mail.smtp_port),
            'username': user, 'password': MAIL_USERS[user], 'tls': tls}


async def iq(c, typ, to, payload):
    """Sends an iq; returns (result iq or None, error condition or None)."""
    from slixmpp.exceptions import IqError
    q = c.Iq()
    q['type'] = typ
    q['to'] = to
    q.append(payload)
    try:
        r = await q.send(timeout=T)
        return r, None
    except IqError as e:
        return None, e.iq['error']['condition']


async def xmpp_user(prefix):
    jid, pw = srv.new_user(prefix)
    c = await h.connect(srv, jid, pw)
    return c


async def register(c, user, **kw):
    return await iq(c, 'set', GW, reg_form(account(user, **kw)))


def from_gw(msg):
    return msg['from'].bare == GW


def mail_jid(addr):
    return addr.replace('@', '\\40') + '@' + GW


async def registered(prefix, user, **kw):
    """A connected slixmpp client whose mailbox is user's, after the gateway said it is
    connected to it (its baseline: later mail is delivered)."""
    c = await xmpp_user(prefix)
    r, err = await register(c, user, **kw)
    check(err is None, 'registration refused: %s' % err)
    m = await c.next_message(T, pred=lambda m: from_gw(m) and 'Connected to your mailbox'
                             in m['body'])
    check(user in m['body'], 'welcome text: %s' % m['body'])
    return c


async def wait_mailbox(user, pred, what):
    """The mails in user's INBOX matching pred, once there are any (the IMAP reads run in a
    thread: the slixmpp loop keeps running meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + T
    while True:
        found = [m for m in await loop.run_in_executor(None, mail.mailbox, user) if pred(m)]
        if found:
            return found
        if time.monotonic() > deadline:
            raise h.TestFailure('timed out after %.0fs waiting for %s\n%s'
                                % (T, what, mail.logs()))
        await asyncio.sleep(0.2)


async def send_mail(msg):
    await asyncio.get_running_loop().run_in_executor(None, mail.send, msg)


def plain_body(m):
    part = m.get_body(preferencelist=('plain',))
    return part.get_content() if part is not None else None


# --------------------------------------------------------------------------- tests


async def test_disco_and_plaintext_refused():
    c = await xmpp_user('disco')
    r, err = await iq(c, 'get', GW, ET.fromstring("<query xmlns='%s'/>" % NS_DISCO_INFO))
    check(err is None, 'disco#info error %s' % err)
    ids = {(i.get('category'), i.get('type'))
           for i in r.xml.iter('{%s}identity' % NS_DISCO_INFO)}
    check(('gateway', 'smtp') in ids, 'identity gateway/smtp expected: %s' % dump(r.xml))
    r, err = await iq(c, 'get', GW, ET.fromstring("<query xmlns='%s'/>" % NS_REGISTER))
    fields = {f.get('var') for f in r.xml.iter('{%s}field' % NS_DATA)}
    for f in ('email', 'imap_server', 'smtp_server', 'username', 'password', 'tls'):
        check(f in fields, 'registration form lacks %s: %s' % (f, dump(r.xml)))
    # TLS is required unless the admin allows otherwise (mail_allow_plaintext is off here).
    r, err = await register(c, 'carol', tls='none')
    check(err == 'not-acceptable', 'tls=none registration: %s' % err)
    v = dict(account('carol'))
    v['email'] = 'not an address'
    r, err = await iq(c, 'set', GW, reg_form(v))
    check(err == 'not-acceptable', 'bad email: %s' % err)
    await c.close()


async def test_mail_both_ways_with_restart():
    c = await registered('alice', 'alice')
    # ---- XMPP → mail: alice writes to bob@mail.test
    subject = 'Grüße aus XMPP ☃'
    text = 'Hallo Bob,\nschöne Grüße — ünïcödé ✓\n'
    m = c.make_message(mto=mail_jid('bob@' + MAIL_DOMAIN), mbody=text, msubject=subject,
                       mtype='chat')
    m.send()
    got = await wait_mailbox('bob', lambda x: x['subject'] == subject,
                             'the mail in bob\'s INBOX')
    check(len(got) == 1, 'bob got %d copies' % len(got))
    out = got[0]
    check(out['from'].addresses[0].addr_spec == 'alice@' + MAIL_DOMAIN, 'From: %s' % out['from'])
    check(out['to'].addresses[0].addr_spec == 'bob@' + MAIL_DOMAIN, 'To: %s' % out['to'])
    check(plain_body(out).replace('\r\n', '\n').rstrip('\n') == text.rstrip('\n'),
          'body: %r' % plain_body(out))
    check(out.get_content_charset() == 'utf-8', 'charset %s' % out.get_content_charset())
    out_id = out['message-id']
    check(out_id and out_id.endswith('@%s>' % GW), 'Message-ID %s' % out_id)

    # ---- mail → XMPP: bob answers (In-Reply-To the mail above), non-ASCII both ways
    def bob_mail(n, reply_to=None):
        e = EmailMessage()
        e['From'] = 'Bob Büchner <bob@%s>' % MAIL_DOMAIN
        e['To'] = 'alice@' + MAIL_DOMAIN
        e['Subject'] = 'Antwort Nr. %d — Ärger über Öl' % n
        e['Message-ID'] = '<bob-%d-%s@%s>' % (n, os.getpid(), MAIL_DOMAIN)
        if reply_to:
            e['In-Reply-To'] = reply_to
            e['References'] = reply_to
        e.set_content('Liebe Alice,\nMail Nummer %d: ½ € ✓\n' % n)
        return e
    await send_mail(bob_mail(1, reply_to=out_id))
    bob = mail_jid('bob@' + MAIL_DOMAIN)
    got1 = await c.next_message(T, pred=lambda m: m['from'].bare == bob)
    check(got1['subject'] == 'Antwort Nr. 1 — Ärger über Öl', 'subject %r' % got1['subject'])
    check(got1['body'] == 'Liebe Alice,\nMail Nummer 1: ½ € ✓', 'body %r' % got1['body'])
    check(got1['thread'] == out_id.strip('<>'), 'thread %r, want %s' % (got1['thread'], out_id))
    delay = got1.xml.find('{%s}delay' % NS_DELAY)
    check(delay is not None and delay.get('stamp', '').endswith('Z'),
          'delay stamp: %s' % dump(got1.xml))

    # ---- a reply in that thread becomes In-Reply-To/References of the next mail
    r = c.make_message(mto=bob, mbody='Antwort auf Antwort', mtype='chat')
    r['thread'] = got1['thread']
    r.send()
    got = await wait_mailbox('bob', lambda x: x['subject'] == 'From XMPP',
                             'the reply in bob\'s INBOX')
    check(got[0]['in-reply-to'] == '<bob-1-%s@%s>' % (os.getpid(), MAIL_DOMAIN),
          'In-Reply-To %s' % got[0]['in-reply-to'])
    check(out_id in (got[0]['references'] or ''), 'References %s' % got[0]['references'])

    # ---- a recipient the mail server refuses (relaying is denied): a message error
    c.send_message(mto=mail_jid('nobody@elsewhere.test'), mbody='x', mtype='chat')
    err = await c.next_message(T, errors=True)
    check(err['error']['condition'] == 'recipient-unavailable' and '554' in err['error']['text'],
          'refused recipient: %s' % err)

    # ---- the gateway is killed between two incoming mails; the server restarts it
    pids = gateway_pids()
    os.kill(pids[-1], signal.SIGKILL)
    await send_mail(bob_mail(2))
    gateway_pids_wait(len(pids) + 1)
    got2 = await c.next_message(T, pred=lambda m: m['from'].bare == bob)
    check(got2['body'] == 'Liebe Alice,\nMail Nummer 2: ½ € ✓', 'after restart: %r'
          % got2['body'])
    await send_mail(bob_mail(3))
    got3 = await c.next_message(T, pred=lambda m: m['from'].bare == bob)
    check(got3['body'] == 'Liebe Alice,\nMail Nummer 3: ½ € ✓',
          'mail 3 expected next (a duplicate came first?): %r' % got3['body'])
    # An HTML-only mail with an attachment: the HTML as text, the attachment named.
    e = EmailMessage()
    e['From'] = 'bob@' + MAIL_DOMAIN
    e['To'] = 'alice@' + MAIL_DOMAIN
    e['Subject'] = 'HTML'
    e.set_content('<html><body><p>Erster Absatz &amp; mehr</p><p>Zweiter<br>Teil</p>'
                  '<script>x()</script></body></html>', subtype='html')
    e.add_attachment(b'0123456789', maintype='application', subtype='octet-stream',
                     filename='zahlen.bin')
    await send_mail(e)
    got4 = await c.next_message(T, pred=lambda m: m['from'].bare == bob)
    check(got4['body'] == 'Erster Absatz & mehr\n\nZweiter\nTeil\n\n'
          'Attachments: zahlen.bin (10 bytes)', 'HTML mail as %r' % got4['body'])
    # Nothing else queued: no duplicate of 1 to 4, no second welcome.
    await c.sync()
    left = []
    while not c.messages.empty():
        left.append(c.messages.get_nowait())
    check(not [x for x in left if x['from'].bare == bob],
          'duplicates: %s' % [x['body'] for x in left])
    check(not [x for x in left if 'Connected to your mailbox' in (x['body'] or '')],
          'the restarted gateway said hello again: %s' % [x['body'] for x in left])
    await c.close()


async def test_slow_server_does_not_stall_others():
    # carol's SMTP server never answers; her mail sits on a worker until curl gives up.
    carol = await registered('carol', 'carol', smtp_port=slow.port)
    carol.send_message(mto=mail_jid('bob@' + MAIL_DOMAIN), mbody='stuck', mtype='chat')
    loop = asyncio.get_running_loop()
    check(await loop.run_in_executor(None, slow.accepted.wait, T),
          'the gateway never connected to the slow server')
    # Meanwhile bob (another user, other worker) sends and receives.
    b = await registered('bob', 'bob')
    b.send_message(mto=mail_jid('alice@' + MAIL_DOMAIN), mbody='not stuck', mtype='chat',
                   msubject='quick')
    await wait_mailbox('alice', lambda x: x['subject'] == 'quick',
                       'bob\'s mail while carol is stuck')
    e = EmailMessage()
    e['From'] = 'alice@' + MAIL_DOMAIN
    e['To'] = 'bob@' + MAIL_DOMAIN
    e['Subject'] = 'also quick'
    e.set_content('hi bob')
    await send_mail(e)
    got = await b.next_message(T, pred=lambda m: m['from'].bare == mail_jid(
        'alice@' + MAIL_DOMAIN))
    check(got['subject'] == 'also quick', 'got %s' % got['subject'])
    await b.close()
    await carol.close()
