"""The SMS gateway (build/isthmus-sms) end to end against a real Kannel: the server supervises two
SMS gateways, sms.localhost (provider kannel: bearerbox + smsbox started here from
peers/kannel.conf.in, with the fake SMSC driven by Kannel's own fakesmsc) and twilio.localhost
(provider twilio, whose REST API cannot be reached here: no internet, and no mock of it either —
only its inbound webhook and its signature check are exercised, and a send that fails).

What is covered: discovery; registration with a verification code sent by SMS (read from
fakesmsc's output), a wrong code, a number taken by another user (conflict); an XMPP message
sent as SMS (arrives at fakesmsc, from the user's number) and the DLR Kannel sends for it turned
into a XEP-0184 receipt; an SMS injected at fakesmsc delivered to the owner of the number; an SMS
for a number nobody registered dropped; jabber:iq:gateway; subscription to a contact; webhooks
without the secret / with a bad Twilio signature refused (403), unknown paths, bad methods,
oversized and malformed HTTP requests answered 4xx while the gateway keeps running; the Twilio
inbound webhook with a valid signature (computed here with hmac); a send whose provider does
not answer ends in a message error after the retries.

fakesmsc talks to the fake SMSC one client at a time and only sends the messages given on its
command line; to inject an SMS the running fakesmsc is stopped and a new one started with that
message (it then also receives the MT messages)."""

import base64
import functools
import hashlib
import hmac
import http.client
import itertools
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import harness as h
from harness import check

HERE = Path(__file__).resolve().parent
BEARERBOX = shutil.which('bearerbox') or '/usr/sbin/bearerbox'
SMSBOX = shutil.which('smsbox') or '/usr/sbin/smsbox'
FAKESMSC = '/usr/lib/kannel/test/fakesmsc'
GATEWAY_BIN = h.BUILD / 'isthmus-sms'

GW = 'sms.localhost'
TW = 'twilio.localhost'
SECRET = 'hook-secret-42'
TW_TOKEN = 'twilio-auth-token-1'
SMS_FROM = '+15550000'

C = '{jabber:client}'
NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info'
NS_REGISTER = 'jabber:iq:register'
NS_GATEWAY = 'jabber:iq:gateway'
NS_DATA = 'jabber:x:data'
NS_RECEIPTS = 'urn:xmpp:receipts'

T = max(h.IO_TIMEOUT, 30.0)
TIMEOUT = 120

srv = None
kannel = None
gw_port = None
tw_port = None
_counter = itertools.count(1)
_opened = []


def dump(el):
    return ET.tostring(el).decode(errors='replace')


def number():
    """A fresh US number +1555<pid-ish><n> (each test registers its own)."""
    return '+1555%03d%04d' % (os.getpid() % 1000, next(_counter))


def gateway_deaths(since):
    text = srv.log()[since:] if srv else ''
    return [l for l in text.splitlines() if 'killed by signal' in l or 'exited with status' in l]


def isolated(fn):
    @functools.wraps(fn)
    def run():
        start = len(srv.log()) if srv else 0
        try:
            fn()
        finally:
            while _opened:
                try:
                    _opened.pop().close()
                except Exception:
                    pass
        deaths = gateway_deaths(start)
        check(not deaths, 'a gateway died during the test: %s' % deaths)
    return run


# --------------------------------------------------------------------------- Kannel


class Proc:
    """A foreground process (own session, output to a file), stopped by its PID."""

    def __init__(self, name, argv, log_path, cwd):
        self.name, self.log_path = name, log_path
        self._out = open(log_path, 'ab')
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)

    def log(self):
        try:
            return Path(self.log_path).read_bytes().decode('utf-8', 'replace')
        except OSError:
            return ''

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._out:
            self._out.close()
            self._out = None


class Kannel:
    """bearerbox + smsbox on free loopback ports, and one fakesmsc at a time."""

    def __init__(self, directory, mo_url):
        self.dir = directory
        self.admin_port, self.smsbox_port = h.free_port(), h.free_port()
        self.sendsms_port, self.fake_port = h.free_port(), h.free_port()
        conf = os.path.join(directory, 'kannel.conf')
        text = string.Template((HERE / 'peers' / 'kannel.conf.in').read_text()).substitute(
            admin_port=self.admin_port, admin_password='admin-pw', smsbox_port=self.smsbox_port,
            sendsms_port=self.sendsms_port, fake_port=self.fake_port, dir=directory,
            username='tester', password='foobar', mo_url=mo_url)
        Path(conf).write_text(text)
        self.fakes = []       # every fakesmsc started (their logs hold the MT messages)
        self.fake = None      # the running one
        self.used = set()
        self.bearerbox = Proc('bearerbox', [BEARERBOX, '-v', '1', conf],
                              os.path.join(directory, 'bearerbox.out'), directory)
        try:
            h.wait_until(lambda: self._alive(self.bearerbox) and h.port_open(self.smsbox_port),
                         20, 'bearerbox to listen on %d' % self.smsbox_port, 0.05)
            self.smsbox = Proc('smsbox', [SMSBOX, '-v', '1', conf],
                               os.path.join(directory, 'smsbox.out'), directory)
            h.wait_until(lambda: self._alive(self.smsbox) and h.port_open(self.sendsms_port),
                         20, 'smsbox to listen on %d' % self.sendsms_port, 0.05)
            self.start_fake([])
        except BaseException:
            self.stop()
            raise

    def _alive(self, p):
        check(p.alive(), '%s exited:\n%s' % (p.name, p.log()[-3000:]))
        return True

    def start_fake(self, messages):
        """Replaces the running fakesmsc by one that sends messages (each 'FROM TO text BODY')
        and then keeps receiving."""
        if self.fake:
            self.fake.stop()
        n = len(self.fakes)
        connected = self.bearerbox.log().count('Fakesmsc client connected')
        argv = [FAKESMSC, '-H', '127.0.0.1', '-r', str(self.fake_port), '-i', '0.1',
                '-m', str(len(messages))] + (messages or ['+1 +2 text unused'])
        self.fake = Proc('fakesmsc', argv, os.path.join(self.dir, 'fakesmsc%d.out' % n),
                         self.dir)
        self.fakes.append(self.fake)
        h.wait_until(lambda: self._alive(self.fake) and
                     self.bearerbox.log().count('Fakesmsc client connected') > connected,
                     20, 'fakesmsc to connect to the fake SMSC', 0.05)
        if messages:
            h.wait_until(lambda: 'sent message %d' % len(messages) in self.fake.log(), 20,
                         'fakesmsc to send its messages', 0.05)

    def stop_fake(self):
        """No fakesmsc: the fake SMSC has no client, MT messages wait in bearerbox."""
        if self.fake:
            self.fake.stop()
            self.fake = None

    def mt_messages(self):
        """[(key, 'FROM TO type text...')] of every MT message fakesmsc received."""
        out = []
        for i, f in enumerate(self.fakes):
            for j, m in enumerate(re.findall(r'Got message \d+: <(.*)>', f.log())):
                out.append(((i, j), m))
        return out

    def wait_mt(self, pred, what, timeout=T):
        """The first MT message matching pred not returned before."""
        found = []

        def look():
            for key, m in self.mt_messages():
                if key not in self.used and pred(m):
                    self.used.add(key)
                    found.append(m)
                    return True
            return False
        h.wait_until(look, timeout, '%s at fakesmsc (got: %s)'
                     % (what, [m for _, m in self.mt_messages()][-5:]), 0.05)
        return found[0]

    def stop(self):
        for p in [self.fake, getattr(self, 'smsbox', None), self.bearerbox]:
            if p:
                p.stop()


# --------------------------------------------------------------------------- XMPP users


_resources = itertools.count(1)


def xml_attr(s):
    return (s.replace('&', '&amp;').replace("'", '&apos;').replace('<', '&lt;')
            .replace('>', '&gt;'))


def xml_text(s):
    return s.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


class XUser:
    """An XMPP client stream (harness.Raw) recording every stanza; wait() returns the first
    unconsumed one matching pred. Roster pushes are acknowledged, other requests refused."""

    def __init__(self, bare, password):
        self.raw = h.Raw(srv.port, timeout=T)
        raw = self.raw
        raw.open()
        raw.starttls()
        raw.open()
        ok, cond = h.scram_auth(raw, 'SCRAM-SHA-256', bare.split('@')[0], password)
        check(ok, 'SASL failed: %s' % cond)
        raw.open()
        self.jid = raw.bind('smstest%d' % next(_resources))
        self.bare = bare
        self.got = []
        self.used = set()
        self._ids = itertools.count(1)
        _opened.append(self)
        self.send('<presence/>')

    @classmethod
    def new(cls, prefix='x'):
        bare, pw = srv.new_user(prefix)
        return cls(bare, pw)

    def send(self, xml):
        self.raw.send(xml)

    def _handle(self, el):
        if el.tag == C + 'iq' and el.get('type') in ('get', 'set'):
            if el.find('{jabber:iq:roster}query') is not None and el.get('type') == 'set':
                self.send("<iq type='result' id='%s'/>" % xml_attr(el.get('id', '')))
            else:
                to = " to='%s'" % xml_attr(el.get('from')) if el.get('from') else ''
                self.send("<iq type='error' id='%s'%s><error type='cancel'>"
                          "<service-unavailable xmlns='%s'/></error></iq>"
                          % (xml_attr(el.get('id', '')), to, h.NS_STANZAS))
        self.got.append(el)

    def _pump(self, deadline):
        raw = self.raw
        if not raw.pending:
            if raw.eof or raw.stream_ended:
                raise h.TestFailure('%s: the stream was closed; last stanzas: %s'
                                    % (self.bare, self.describe()))
            try:
                raw._feed_once(min(deadline, time.monotonic() + 1.0))
            except h.TestFailure:
                return
        while raw.pending:
            self._handle(raw.pending.pop(0))

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

    def iq(self, typ, to, payload, timeout=T):
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

    def sync(self):
        self.iq_ok('get', h.DOMAIN, "<ping xmlns='urn:xmpp:ping'/>")

    def close(self):
        try:
            self.raw.send('</stream:stream>')
        except Exception:
            pass
        self.raw.close()


def error_condition(el):
    e = el.find(C + 'error')
    if e is None:
        return None
    for c in e:
        if c.tag.startswith('{%s}' % h.NS_STANZAS) and not c.tag.endswith('}text'):
            return c.tag.split('}')[1]
    return None


def error_text(el):
    return el.findtext('%serror/{%s}text' % (C, h.NS_STANZAS)) or ''


def reg_form(values):
    fields = "<field var='FORM_TYPE' type='hidden'><value>%s</value></field>" % NS_REGISTER
    for k, v in values.items():
        fields += "<field var='%s'><value>%s</value></field>" % (k, xml_text(v))
    return "<query xmlns='%s'><x xmlns='%s' type='submit'>%s</x></query>" % (
        NS_REGISTER, NS_DATA, fields)


def gateway_ready(domain, timeout=60):
    x = XUser.new('probe')
    deadline = time.monotonic() + timeout
    try:
        while True:
            r = x.iq('get', domain, "<query xmlns='%s'/>" % NS_DISCO_INFO)
            if r.get('type') == 'result':
                return r
            if time.monotonic() > deadline:
                raise h.TestFailure('the gateway %s never answered disco#info: %s\n%s'
                                    % (domain, dump(r), srv.log_tail(40)))
            time.sleep(0.25)
    finally:
        x.close()
        _opened.remove(x)


def register_verified(x, typed, e164):
    """Registers typed (normalising to e164) on GW: the code comes by SMS to fakesmsc."""
    r = x.iq('set', GW, reg_form({'phone': typed}))
    check(r.get('type') == 'error' and error_condition(r) == 'not-acceptable'
          and e164 in error_text(r) and 'code' in error_text(r),
          'the first submission should send a code: %s' % dump(r))
    mt = kannel.wait_mt(lambda m: m.split(' ')[1:2] == [e164] and 'verification code' in m,
                        'the verification code for %s' % e164)
    check(mt.startswith(SMS_FROM + ' '), 'the code comes from sms_from: %r' % mt)
    code = re.search(r'code is (\d{6})', mt).group(1)
    r = x.iq('set', GW, reg_form({'phone': typed, 'code': code}))
    check(r.get('type') == 'result', 'registration with the right code refused: %s' % dump(r))
    return code


# --------------------------------------------------------------------------- HTTP


def http_request(port, method, path, body=None, headers=None):
    c = http.client.HTTPConnection('127.0.0.1', port, timeout=T)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read().decode('utf-8', 'replace')
    finally:
        c.close()


def raw_http(port, data):
    """Sends raw bytes; returns the status line's code (or None when closed without one)."""
    with socket.create_connection(('127.0.0.1', port), timeout=T) as s:
        s.sendall(data)
        buf = b''
        while b'\r\n' not in buf:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    m = re.match(rb'HTTP/1\.[01] (\d{3})', buf)
    return int(m.group(1)) if m else None


def twilio_signature(url, params):
    data = url + ''.join(k + v for k, v in sorted(params.items()))
    mac = hmac.new(TW_TOKEN.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def twilio_post(path, params, signature=True, bad=False):
    url = 'http://127.0.0.1:%d%s' % (tw_port, path)
    headers = {'Content-Type': 'application/x-www-form-urlencoded'}
    if signature:
        sig = twilio_signature(url, params)
        headers['X-Twilio-Signature'] = ('A' + sig[1:]) if bad else sig
    return http_request(tw_port, 'POST', path, urllib.parse.urlencode(params), headers)


# --------------------------------------------------------------------------- module setup


def setup_module():
    global srv, kannel, gw_port, tw_port
    for p in (BEARERBOX, SMSBOX, FAKESMSC):
        check(os.path.exists(p), '%s is needed (kannel, kannel-extras)' % p)
    check(GATEWAY_BIN.exists(), '%s does not exist (run make)' % GATEWAY_BIN)
    gw_port, tw_port = h.free_port(), h.free_port()
    d = tempfile.mkdtemp(prefix='isthmus-sms-kannel-')
    mo_url = ('http://127.0.0.1:%d/kannel/mo?secret=%s&from=%%p&to=%%P&text=%%a'
              % (gw_port, SECRET))
    kannel = Kannel(d, mo_url)
    srv = h.Server({
        'component': {'listen': '127.0.0.1:%d' % h.free_port()},
        'gateway ' + GW: {
            'type': 'sms', 'restart_delay': '1', 'sms_provider': 'kannel',
            'sms_url': 'http://127.0.0.1:%d/cgi-bin/sendsms' % kannel.sendsms_port,
            'sms_username': 'tester', 'sms_password': 'foobar', 'sms_from': SMS_FROM,
            'sms_listen': '127.0.0.1:%d' % gw_port,
            'sms_public_url': 'http://127.0.0.1:%d' % gw_port, 'sms_secret': SECRET,
            'sms_default_country': '1', 'sms_max_parts': '3', 'sms_verify': 'true'},
        'gateway ' + TW: {
            'type': 'sms', 'restart_delay': '1', 'sms_provider': 'twilio',
            # Nothing listens there: sends fail (connection refused) and are retried.
            'sms_url': 'http://127.0.0.1:%d/2010-04-01/Accounts/AC1/Messages.json'
                       % h.free_port(),
            'sms_username': 'AC1', 'sms_password': TW_TOKEN,
            'sms_listen': '127.0.0.1:%d' % tw_port,
            'sms_public_url': 'http://127.0.0.1:%d' % tw_port, 'sms_verify': 'false'},
    })
    try:
        srv.start()
        gateway_ready(GW, 35)
        gateway_ready(TW, 20)
    except BaseException:
        teardown_module()
        raise


def teardown_module():
    global srv, kannel
    try:
        if srv:
            srv.stop()
    finally:
        srv = None
        if kannel:
            kannel.stop()
            if not os.environ.get('ISTHMUS_KEEP'):
                shutil.rmtree(kannel.dir, ignore_errors=True)
            kannel = None


# --------------------------------------------------------------------------- tests


@isolated
def test_disco_identity():
    x = XUser.new('disco')
    info = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_DISCO_INFO)
    ids = {(i.get('category'), i.get('type')) for i in info.iter('{%s}identity' % NS_DISCO_INFO)}
    check(('gateway', 'sms') in ids, 'identity gateway/sms expected: %s' % dump(info))
    r = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_REGISTER)
    fields = {f.get('var') for f in r.iter('{%s}field' % NS_DATA)}
    check({'phone', 'code'} <= fields, 'phone and code fields expected: %s' % dump(r))


@isolated
def test_register_send_receive_receipt():
    x = XUser.new('sms')
    me = number()
    typed = '(%s) %s-%s' % (me[2:5], me[5:8], me[8:])   # a local US format
    # A wrong code is refused (and a code is sent first).
    r = x.iq('set', GW, reg_form({'phone': typed}))
    check(error_condition(r) == 'not-acceptable' and me in error_text(r),
          'a code should be sent to %s: %s' % (me, dump(r)))
    mt = kannel.wait_mt(lambda m: m.split(' ')[1:2] == [me] and 'verification code' in m,
                        'the verification code for %s' % me)
    code = re.search(r'code is (\d{6})', mt).group(1)
    wrong = '%06d' % ((int(code) + 1) % 1000000)
    r = x.iq('set', GW, reg_form({'phone': typed, 'code': wrong}))
    check(error_condition(r) == 'not-acceptable' and 'Wrong code' in error_text(r),
          'a wrong code must be refused: %s' % dump(r))
    r = x.iq('set', GW, reg_form({'phone': typed, 'code': code}))
    check(r.get('type') == 'result', 'the right code must be accepted: %s' % dump(r))

    # The number belongs to x now: another user cannot take it.
    y = XUser.new('other')
    r = y.iq('set', GW, reg_form({'phone': me}))
    check(error_condition(r) == 'conflict', 'a taken number is a conflict: %s' % dump(r))

    # XMPP → SMS, with a receipt from Kannel's delivery report (DLR type 1).
    peer = number()
    contact = '%s@%s' % (peer, GW)
    x.send("<message to='%s' type='chat' id='sms-1'><body>hello from xmpp</body>"
           "<request xmlns='%s'/></message>" % (contact, NS_RECEIPTS))
    mt = kannel.wait_mt(lambda m: m.split(' ')[1:2] == [peer], 'the SMS to %s' % peer)
    check(mt == '%s %s text hello from xmpp' % (me, peer),
          'the SMS must come from the user\'s number with the text: %r' % mt)
    rc = x.wait(lambda e: e.tag == C + 'message' and e.get('from') == contact
                and e.find('{%s}received' % NS_RECEIPTS) is not None, 'the receipt')
    check(rc.find('{%s}received' % NS_RECEIPTS).get('id') == 'sms-1',
          'the receipt names the message: %s' % dump(rc))

    # Non-GSM text goes as UCS-2.
    x.send("<message to='%s' type='chat' id='sms-2'><body>Привет</body></message>" % contact)
    mt = kannel.wait_mt(lambda m: m.split(' ')[1:2] == [peer], 'the UCS-2 SMS to %s' % peer)
    check(mt.split(' ')[2] == 'ucs-2', 'Cyrillic should go as UCS-2: %r' % mt)

    # SMS → XMPP.
    m0 = x.mark()
    kannel.start_fake(['%s %s text hi from the phone' % (peer, me)])
    msg = x.wait(lambda e: e.tag == C + 'message' and e.get('from') == contact
                 and e.findtext(C + 'body') is not None, 'the inbound SMS', since=m0)
    check(msg.get('type') == 'chat' and msg.findtext(C + 'body') == 'hi from the phone',
          'inbound SMS: %s' % dump(msg))

    # A UCS-2 SMS from the phone (Kannel's mo-recode makes it UTF-8).
    kannel.start_fake(['%s %s ucs2 %%04%%1F%%04%%40%%04%%38' % (peer, me)])
    msg = x.wait(lambda e: e.tag == C + 'message' and e.get('from') == contact
                 and e.findtext(C + 'body') is not None, 'the inbound UCS-2 SMS', since=m0)
    check(msg.findtext(C + 'body') == 'При', 'inbound UCS-2 SMS: %s' % dump(msg))

    # An SMS for a number nobody registered is dropped (logged), and goes to no one.
    nobody = number()
    log0 = len(srv.log())
    kannel.start_fake(['%s %s text for nobody' % (peer, nobody)])
    h.wait_until(lambda: ('for %s, which nobody registered' % nobody) in srv.log()[log0:], T,
                 'the gateway to log the dropped SMS')
    x.sync()
    check(not [e for e in x.got[m0:] if e.findtext(C + 'body') == 'for nobody'],
          'an SMS for an unregistered number was delivered: %s' % x.describe())

    # Unregistering frees the number.
    x.iq_ok('set', GW, "<query xmlns='%s'><remove/></query>" % NS_REGISTER)
test_register_send_receive_receipt.timeout = 120


@isolated
def test_unregistered_user_cannot_send():
    x = XUser.new('unreg')
    x.send("<message to='%s@%s' type='chat' id='u1'><body>hi</body></message>"
           % (number(), GW))
    e = x.wait(lambda e: e.tag == C + 'message' and e.get('id') == 'u1', 'the error')
    check(e.get('type') == 'error' and error_condition(e) == 'registration-required',
          'registration-required expected: %s' % dump(e))


@isolated
def test_gateway_prompt_and_subscription():
    x = XUser.new('prompt')
    r = x.iq_ok('set', GW, "<query xmlns='%s'><prompt>(555) 123-4567</prompt></query>"
                % NS_GATEWAY)
    check(r.findtext('{%s}query/{%s}jid' % (NS_GATEWAY, NS_GATEWAY)) == '+15551234567@' + GW,
          'prompt → +E.164 JID: %s' % dump(r))
    r = x.iq('set', GW, "<query xmlns='%s'><prompt>not a number</prompt></query>" % NS_GATEWAY)
    check(r.get('type') == 'error', 'a bad prompt is an error: %s' % dump(r))
    # Subscribing to a contact (a registered user; the Twilio-style gateway needs no code).
    x.iq_ok('set', TW, reg_form({'phone': number()}))
    contact = '+15551234567@' + TW
    x.send("<presence to='%s' type='subscribe'/>" % contact)
    p = x.wait(lambda e: e.tag == C + 'presence' and e.get('from') == contact
               and e.get('type') == 'subscribed', 'subscribed from the contact')
    check(p is not None, 'subscribed expected')
    x.iq_ok('set', TW, "<query xmlns='%s'><remove/></query>" % NS_REGISTER)


@isolated
def test_webhooks_refuse_bad_requests():
    base = '/kannel/mo?from=%2B15550001&to=%2B15550002&text=x'
    st, _ = http_request(gw_port, 'GET', base)
    check(st == 403, 'no secret → 403, got %d' % st)
    st, _ = http_request(gw_port, 'GET', base + '&secret=wrong')
    check(st == 403, 'wrong secret → 403, got %d' % st)
    st, _ = http_request(gw_port, 'GET', '/kannel/dlr?type=1&ref=nothing&secret=' + SECRET)
    check(st == 200, 'a DLR for an unknown reference is acknowledged, got %d' % st)
    st, _ = http_request(gw_port, 'GET', '/kannel/mo?secret=%s&text=x' % SECRET)
    check(st == 400, 'missing from/to → 400, got %d' % st)
    st, _ = http_request(gw_port, 'GET', '/kannel/mo?secret=%s&text=%%zz' % SECRET)
    check(st == 400, 'a bad escape → 400, got %d' % st)
    st, _ = http_request(gw_port, 'GET', '/nowhere')
    check(st == 404, 'unknown path → 404, got %d' % st)
    st, _ = http_request(gw_port, 'PUT', '/kannel/mo', body='x')
    check(st == 405, 'PUT → 405, got %d' % st)
    # An oversized body: 413 at once and the connection closed (the client, still sending, may
    # see the reset caused by the unread data before the answer).
    try:
        st, _ = http_request(gw_port, 'POST', '/kannel/mo?secret=' + SECRET, body='x' * 100000,
                             headers={'Content-Type': 'text/plain'})
    except (ConnectionResetError, BrokenPipeError):
        st = 413
    check(st == 413, 'an oversized body → 413, got %d' % st)
    for junk in (b'GARBAGE\r\n\r\n', b'GET /kannel/mo\x00 HTTP/1.1\r\n\r\n',
                 b'GET /kannel/mo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n',
                 b'GET /kannel/mo HTTP/1.1\r\n' + b'X: ' + b'a' * 100000 + b'\r\n\r\n'):
        code = raw_http(gw_port, junk)
        check(code is None or 400 <= code < 500, 'malformed request %r → %s' % (junk[:30], code))
    # An HTTP version we do not speak: 505 (RFC 9110 §15.6.6).
    code = raw_http(gw_port, b'GET / HTTP/9.9\r\n\r\n')
    check(code in (None, 505) or 400 <= code < 500, 'HTTP/9.9 → %s' % code)
    # Twilio-style: no signature, a bad one, a valid one on the other gateway's paths.
    params = {'From': '+15550001', 'To': '+15550002', 'Body': 'x', 'MessageSid': 'SM1'}
    st, _ = twilio_post('/twilio/sms', params, signature=False)
    check(st == 403, 'no signature → 403, got %d' % st)
    st, _ = twilio_post('/twilio/sms', params, bad=True)
    check(st == 403, 'a bad signature → 403, got %d' % st)
    st, _ = twilio_post('/twilio/status?ref=unknown', {'MessageSid': 'SM1',
                                                      'MessageStatus': 'delivered'})
    check(st == 200, 'a signed status callback for an unknown reference → 200, got %d' % st)
    st, _ = http_request(tw_port, 'GET', '/twilio/sms')
    check(st == 405, 'GET on a Twilio webhook → 405, got %d' % st)
    st, _ = http_request(tw_port, 'GET', '/kannel/mo?secret=' + SECRET)
    check(st == 404, "the Kannel paths do not exist on a Twilio gateway, got %d" % st)
    # Both gateways still work.
    gateway_ready(GW, 10)
    gateway_ready(TW, 10)


@isolated
def test_twilio_inbound_and_failed_send():
    x = XUser.new('tw')
    me = number()
    r = x.iq('set', TW, reg_form({'phone': me}))   # sms_verify = false there
    check(r.get('type') == 'result', 'registration without verification: %s' % dump(r))
    peer = number()
    params = {'From': peer, 'To': me, 'Body': 'signed hello ✓', 'MessageSid': 'SM42'}
    st, body = twilio_post('/twilio/sms', params)
    check(st == 200 and '<Response' in body, 'a signed webhook is accepted: %d %r' % (st, body))
    msg = x.wait(lambda e: e.tag == C + 'message' and e.get('from') == '%s@%s' % (peer, TW)
                 and e.findtext(C + 'body') is not None, 'the Twilio inbound SMS')
    check(msg.findtext(C + 'body') == 'signed hello ✓', 'body: %s' % dump(msg))
    # A send to a provider that does not answer: retried, then a message error.
    x.send("<message to='%s@%s' type='chat' id='tw-1'><body>lost</body></message>" % (peer, TW))
    e = x.wait(lambda e: e.tag == C + 'message' and e.get('id') == 'tw-1', 'the send error',
               timeout=60)
    check(e.get('type') == 'error' and error_condition(e) == 'remote-server-timeout',
          'remote-server-timeout expected: %s' % dump(e))
    x.iq_ok('set', TW, "<query xmlns='%s'><remove/></query>" % NS_REGISTER)
test_twilio_inbound_and_failed_send.timeout = 120


def _gateway_pids(domain):
    return [int(l.split('started process ', 1)[1].split(':', 1)[0])
            for l in srv.log().splitlines() if '[comp:%s] started process ' % domain in l]


def test_receipt_survives_a_gateway_restart():
    """The correlation of a sent SMS lives in the gateway's store: the gateway is killed after
    Kannel accepted the message and before the delivery report; the restarted gateway still
    turns the report into a receipt."""
    try:
        x = XUser.new('restart')
        me = number()
        register_verified(x, me, me)
        peer = number()
        contact = '%s@%s' % (peer, GW)
        kannel.stop_fake()       # Kannel keeps the MT queued: no delivery report yet
        log0 = len(srv.log())
        x.send("<message to='%s' type='chat' id='keep-1'><body>across a restart</body>"
               "<request xmlns='%s'/></message>" % (contact, NS_RECEIPTS))
        h.wait_until(lambda: 'SMS to %s accepted by the provider' % contact in srv.log()[log0:],
                     T, 'Kannel to accept the SMS')
        pids = _gateway_pids(GW)
        os.kill(pids[-1], signal.SIGKILL)
        h.wait_until(lambda: len(_gateway_pids(GW)) > len(pids), T,
                     'the server to restart the gateway')
        gateway_ready(GW, 60)
        kannel.start_fake([])    # the MT goes out, Kannel reports delivery to the new gateway
        mt = kannel.wait_mt(lambda m: m.split(' ')[1:2] == [peer], 'the SMS to %s' % peer)
        check(mt.endswith('across a restart'), 'MT: %r' % mt)
        rc = x.wait(lambda e: e.tag == C + 'message' and e.get('from') == contact
                    and e.find('{%s}received' % NS_RECEIPTS) is not None,
                    'the receipt after the restart', timeout=60)
        check(rc.find('{%s}received' % NS_RECEIPTS).get('id') == 'keep-1',
              'the receipt names the message: %s' % dump(rc))
        x.iq_ok('set', GW, "<query xmlns='%s'><remove/></query>" % NS_REGISTER)
    finally:
        if kannel and not kannel.fake:
            kannel.start_fake([])
        while _opened:
            try:
                _opened.pop().close()
            except Exception:
                pass
test_receipt_survives_a_gateway_restart.timeout = 150


@isolated
def test_failed_delivery_report_is_a_message_error():
    """A DLR saying the SMS was not delivered (type 16: rejected by the SMS centre) becomes a
    message error to the sender. The fake SMSC only ever reports success, so the report is made
    here, the way Kannel calls the dlr-url (with the secret and the gateway's reference, read
    from the gateway's debug log), while the SMS waits in Kannel with no fakesmsc connected."""
    try:
        x = XUser.new('dlrfail')
        me = number()
        register_verified(x, me, me)
        peer = number()
        contact = '%s@%s' % (peer, GW)
        kannel.stop_fake()
        log0 = len(srv.log())
        x.send("<message to='%s' type='chat' id='fail-1'><body>doomed</body>"
               "<request xmlns='%s'/></message>" % (contact, NS_RECEIPTS))
        found = []

        def ref_logged():
            m = re.search(r'SMS to %s, reference (\w+)' % re.escape(peer), srv.log()[log0:])
            if m:
                found.append(m.group(1))
            return bool(m)
        h.wait_until(ref_logged, T, 'the gateway to log the reference')
        h.wait_until(lambda: 'SMS to %s accepted by the provider' % contact in srv.log()[log0:],
                     T, 'Kannel to accept the SMS')
        st, _ = http_request(gw_port, 'GET', '/kannel/dlr?secret=%s&ref=%s&type=16'
                             % (SECRET, found[0]))
        check(st == 200, 'the DLR is acknowledged, got %d' % st)
        e = x.wait(lambda e: e.tag == C + 'message' and e.get('id') == 'fail-1',
                   'the message error')
        check(e.get('type') == 'error' and e.get('from') == contact
              and error_condition(e) == 'recipient-unavailable',
              'recipient-unavailable from the contact expected: %s' % dump(e))
        # The same reference again (Kannel's later reports): nothing more.
        st, _ = http_request(gw_port, 'GET', '/kannel/dlr?secret=%s&ref=%s&type=1'
                             % (SECRET, found[0]))
        check(st == 200, 'a late DLR is acknowledged, got %d' % st)
        x.sync()
        check(not [el for el in x.got if el.find('{%s}received' % NS_RECEIPTS) is not None],
              'no receipt after a failure: %s' % x.describe())
        x.iq_ok('set', GW, "<query xmlns='%s'><remove/></query>" % NS_REGISTER)
    finally:
        if kannel and not kannel.fake:
            kannel.start_fake([])
