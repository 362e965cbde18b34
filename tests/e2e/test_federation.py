"""Federation against real servers (RFC 6120 §13.7 certificates and §4.9 stream errors,
XEP-0178 SASL EXTERNAL, XEP-0220 Server Dialback): Isthmus as ours.test federates with Prosody
(peer.test) and ejabberd (ej.test), all three using certificates from one test CA (tests/e2e/
peers.py starts them once for this module).

Covered: the peers federate with each other (guards the setup itself); messages both ways with
each peer; presence subscriptions both ways and presence afterwards; vCard fetches both ways; a
remote error coming back; a forged dialback key and a stanza with a spoofed domain on a stream
authenticated with SASL EXTERNAL (rejected); a denied domain (refused both ways); unreachable,
silent and stopped peers (the sender gets an error); dialback-only federation with a certificate
nobody trusts. The tests that stop or restart servers come last."""

import asyncio
import xml.etree.ElementTree as ET
import base64
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import harness as h
import peers as P
from harness import check

TIMEOUT = 90
COMP = 'comp.ours.test'  # a component of ours, reachable from the peers (issue 5)
COMP_SECRET = 'fed-component-secret'
COMP_PORT = h.free_port()
S2S_WAIT = 20.0   # first delivery over a new s2s link: connect, TLS, authentication
CONNECT_TIMEOUT = 4  # [s2s] connect_timeout for ours.test in this module

work = None
ca = None
prosody = None
ej = None
ours = None
ours_error = None
silent = None
watch = None
closed_port = None
certs = {}
pool = {'prosody': [], 'ej': []}


class Listener:
    """A TCP listener on 127.0.0.1 that accepts connections, counts them and never says a word
    (a peer that hangs after connect, or a tripwire that must never be dialled)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.stopping = True
        self.thread.join(2)
        for c in self.accepted:
            c.close()
        self.sock.close()


def _start_ours(cert=None, key=None, s2s=None, second_host=False):
    cert = cert or certs['ours'][0]
    key = key or certs['ours'][1]
    routes = {'closed.test': '127.0.0.1:%d' % closed_port,
              'silent.test': '127.0.0.1:%d' % silent.port,
              'denied.test': '127.0.0.1:%d' % watch.port}
    extra = {'deny': 'denied.test', 'connect_timeout': CONNECT_TIMEOUT}
    extra.update(s2s or {})
    return P.Ours(ca, cert, key, s2s=extra, routes=routes,
                  overrides=dict({'offline': {'max_messages': '0'},
                                  'component': {'listen': '127.0.0.1:%d' % COMP_PORT},
                                  'component ' + COMP: {'secret': COMP_SECRET}},
                                 **({'host ' + P.OURS_TWO: {'certificate': cert, 'key': key,
                                                            'registration': 'false'}}
                                    if second_host else {}))).start()


def setup_module():
    global work, ca, prosody, ej, ours, ours_error, silent, watch, closed_port
    work = Path(tempfile.mkdtemp(prefix='isthmus-fed-'))
    try:
        ca = P.TestCA(work / 'ca')
        certs['ours'] = ca.issue(P.OURS)
        certs['evil'] = ca.issue('evil.test')
        certs['denied'] = ca.issue('denied.test')
        prosody = P.Prosody(work / 'prosody', ca, secure_auth=True).start()
        ej = P.Ejabberd(work / 'ejabberd', ca).start()
        for i in range(8):
            pool['prosody'].append((prosody.add_user('p%d' % i, 'ppw%d' % i), 'ppw%d' % i))
        pool['ej'] = list(zip(ej.add_users(*[('e%d' % i, 'epw%d' % i) for i in range(6)]),
                              ['epw%d' % i for i in range(6)]))
        silent = Listener()
        watch = Listener()
        closed_port = h.free_port()
        try:
            ours = _start_ours()
        except BaseException as e:  # the peers' own test still runs
            ours_error = '%s: %s' % (type(e).__name__, e)
    except BaseException:
        try:
            teardown_module()
        except BaseException:
            pass
        raise


def teardown_module():
    errors = []
    if ours is not None:
        try:
            ours.stop()
        except BaseException as e:
            errors.append('isthmus: %s' % e)
    errors += P.stop_all()
    for lst in (silent, watch):
        if lst is not None:
            lst.close()
    if work is not None and not errors and not os.environ.get('ISTHMUS_KEEP'):
        shutil.rmtree(work, ignore_errors=True)
    check(not errors, 'teardown: %s (files in %s)' % ('; '.join(errors), work))


def need_ours():
    check(ours is not None and ours_error is None,
          'ours.test did not start: %s' % ours_error)
    check(ours.alive(), 'ours.test is not running:\n%s' % ours.log_tail())


def take(kind):
    check(pool[kind], 'no %s account left in the pool' % kind)
    return pool[kind].pop(0)


def bare(jid):
    return str(jid).split('/', 1)[0]


async def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise h.TestFailure('timed out after %.0fs waiting for %s' % (timeout, what))
        await asyncio.sleep(0.05)


async def expect_message(client, frm, body, timeout=S2S_WAIT):
    m = await client.next_message(timeout)
    check(str(m['from']) == frm and m['body'] == body,
          '%s expected %r from %s, got %r from %s' % (client.boundjid, body, frm, m['body'],
                                                     m['from']))
    return m


async def expect_bounce(client, to, conditions, bound):
    """client sends a message to `to`; an error message from `to` with one of conditions must
    come back within bound seconds (RFC 6120 §8.3.3: remote-server-not-found/-timeout)."""
    t0 = time.monotonic()
    client.send_message(mto=to, mbody='is anyone there?', mtype='chat')
    err = await client.next_message(bound, errors=True)
    elapsed = time.monotonic() - t0
    cond = err['error']['condition']
    check(bare(err['from']) == to and cond in conditions,
          'expected an error from %s with %s, got %s from %s' % (to, conditions, cond,
                                                                err['from']))
    return cond, elapsed


# --------------------------------------------------------------------------- the peers alone


async def test_peers_federate_with_each_other():
    """Prosody and ejabberd exchange messages over s2s: proves the CA, hosts files, resolvers
    and configs of the harness before anything depends on Isthmus."""
    p_jid, p_pw = take('prosody')
    e_jid, e_pw = take('ej')
    p = await P.connect(P.PROSODY_IP, p_jid + '/t', p_pw)
    e = await P.connect(P.EJ_IP, e_jid + '/t', e_pw)
    p.send_message(mto=e_jid, mbody='prosody to ejabberd', mtype='chat')
    await expect_message(e, p_jid + '/t', 'prosody to ejabberd')
    e.send_message(mto=p_jid, mbody='ejabberd to prosody', mtype='chat')
    await expect_message(p, e_jid + '/t', 'ejabberd to prosody')
    await p.close()
    await e.close()


# --------------------------------------------------------------------------- messages


async def _exchange(peer_ip, kind, tag):
    need_ours()
    r_jid, r_pw = take(kind)
    a_jid, a_pw = ours.new_user(tag)
    a = await h.connect(ours, a_jid + '/here', a_pw)
    r = await P.connect(peer_ip, r_jid + '/there', r_pw)
    a.send_message(mto=r_jid, mbody='hello %s \u00e9' % kind, mtype='chat')
    await expect_message(r, a_jid + '/here', 'hello %s \u00e9' % kind)
    r.send_message(mto=a_jid, mbody='hello ours', mtype='chat')
    await expect_message(a, r_jid + '/there', 'hello ours')
    # A second round uses the links already up, in both directions, full JIDs this time.
    for i in range(3):
        a.send_message(mto=r_jid + '/there', mbody='again %d' % i, mtype='chat')
    for i in range(3):
        await expect_message(r, a_jid + '/here', 'again %d' % i, 10)
    r.send_message(mto=a_jid + '/here', mbody='and back', mtype='chat')
    await expect_message(a, r_jid + '/there', 'and back', 10)
    await a.close()
    await r.close()


async def test_messages_with_prosody_both_ways():
    await _exchange(P.PROSODY_IP, 'prosody', 'msgp')


async def test_messages_with_ejabberd_both_ways():
    await _exchange(P.EJ_IP, 'ej', 'msge')


async def test_remote_error_comes_back():
    """A message to a user Prosody does not have: Prosody's error reply (RFC 6121 §8.5.2.2.1:
    service-unavailable for a nonexistent account) travels back over s2s to the sender."""
    need_ours()
    a_jid, a_pw = ours.new_user('err')
    a = await h.connect(ours, a_jid + '/r', a_pw)
    ghost = 'nobody-%d@%s' % (os.getpid(), P.PROSODY_DOMAIN)
    await expect_bounce(a, ghost, ('service-unavailable', 'item-not-found'), S2S_WAIT)
    await a.close()


async def test_prosody_user_joins_our_room():
    """Issue 5: a user of a federated server (Prosody) joins a room on our MUC service and the
    room's traffic crosses s2s both ways: presence, groupchat from each side."""
    need_ours()
    r_jid, r_pw = take('prosody')
    a_jid, a_pw = ours.new_user('mucfed')
    room = 'fedroom%d@%s' % (os.getpid(), P.OURS_MUC)
    a = await h.connect(ours, a_jid + '/here', a_pw, plugins=('xep_0045',))
    await asyncio.wait_for(a['xep_0045'].join_muc_wait(room, 'local', maxstanzas=0), S2S_WAIT)
    # XEP-0045 §10.1.2: the creator accepts the default configuration (an instant room).
    iq = a.make_iq_set(ito=room)
    iq.append(ET.fromstring("<query xmlns='http://jabber.org/protocol/muc#owner'>"
                            "<x xmlns='jabber:x:data' type='submit'/></query>"))
    await iq.send(timeout=h.IO_TIMEOUT)
    r = await P.connect(P.PROSODY_IP, r_jid + '/there', r_pw, plugins=('xep_0045',))
    got = {'a': asyncio.Queue(), 'r': asyncio.Queue()}
    a.add_event_handler('groupchat_message', lambda m: got['a'].put_nowait(
        (str(m['from']), m['body'])))
    r.add_event_handler('groupchat_message', lambda m: got['r'].put_nowait(
        (str(m['from']), m['body'])))
    await asyncio.wait_for(r['xep_0045'].join_muc_wait(room, 'remote', maxstanzas=0), S2S_WAIT)
    r.send_message(mto=room, mbody='hello from prosody', mtype='groupchat')
    for who in ('a', 'r'):
        frm, body = await asyncio.wait_for(got[who].get(), S2S_WAIT)
        check((frm, body) == (room + '/remote', 'hello from prosody'),
              '%s saw %r from %r' % (who, body, frm))
    a.send_message(mto=room, mbody='hello from ours', mtype='groupchat')
    for who in ('a', 'r'):
        frm, body = await asyncio.wait_for(got[who].get(), S2S_WAIT)
        check((frm, body) == (room + '/local', 'hello from ours'),
              '%s saw %r from %r' % (who, body, frm))
    await r.close()
    await a.close()


async def test_prosody_user_reaches_our_component():
    """Issue 5: a component hosted here (slixmpp ComponentXMPP on our XEP-0114 port) is
    reachable from a federated server: a Prosody user's message arrives over s2s and the
    component's reply goes back the same way."""
    import slixmpp
    need_ours()
    comp = slixmpp.ComponentXMPP(COMP, COMP_SECRET, '127.0.0.1', COMP_PORT)
    started = comp.loop.create_future()
    comp.add_event_handler('session_start', lambda _: started.done() or started.set_result(1))

    def echo(m):
        if m['type'] != 'error':
            comp.send_message(mto=m['from'], mfrom=m['to'], mbody='echo: ' + m['body'],
                              mtype='chat')
    comp.add_event_handler('message', echo)
    comp.connect()
    try:
        await asyncio.wait_for(started, h.IO_TIMEOUT)
        r_jid, r_pw = take('prosody')
        r = await P.connect(P.PROSODY_IP, r_jid + '/there', r_pw)
        r.send_message(mto='bot@' + COMP, mbody='ping over s2s', mtype='chat')
        await expect_message(r, 'bot@' + COMP, 'echo: ping over s2s')
        await r.close()
    finally:
        comp.disconnect(wait=1)
        await asyncio.sleep(0.2)
        comp.abort()


# --------------------------------------------------------------------------- subscriptions


async def _subscribe_both_ways(peer_ip, kind):
    need_ours()
    r_jid, r_pw = take(kind)
    a_jid, a_pw = ours.new_user('sub')
    a = await h.connect(ours, a_jid + '/home', a_pw)
    r = await P.connect(peer_ip, r_jid + '/away', r_pw)
    seen = {'a': [], 'r': []}
    requests = {'a': [], 'r': []}
    every = {'a': [], 'r': []}
    for name, c in (('a', a), ('r', r)):
        c.add_event_handler('presence', lambda p, n=name: every[n].append(
            '%s from %s' % (p['type'], p['from'])))
        # Manual approval: slixmpp's automatic one also sends directed presence, which would
        # hide a server that forgets to send presence after approval (RFC 6121 §3.1.5).
        c.auto_authorize = None
        c.auto_subscribe = False
        c.add_event_handler('presence_available', lambda p, n=name: seen[n].append(
            (str(p['from']), p['status'])))
        c.add_event_handler('presence_subscribe', lambda p, n=name: requests[n].append(
            bare(p['from'])))
        # Requesting the roster makes the session interested in roster pushes (RFC 6121
        # §2.1.6), which is how each side learns its new subscription state.
        await c.get_roster(timeout=10)

    def sub(c, jid):
        return c.client_roster[jid]['subscription']

    async def until(pred, what):
        try:
            await wait_for(pred, S2S_WAIT, 'a condition')
        except h.TestFailure:
            raise h.TestFailure('timed out after %.0fs waiting for %s; presences at ours: %s; '
                                'at remote: %s' % (S2S_WAIT, what() if callable(what) else what,
                                                   every['a'], every['r']))

    # 1. ours → remote: the request reaches the remote user, who approves.
    a.send_presence(pto=r_jid, ptype='subscribe')
    await until(lambda: a_jid in requests['r'], 'the subscription request at %s' % r_jid)
    r.send_presence(pto=a_jid, ptype='subscribed')
    await until(lambda: sub(a, r_jid) == 'to', '%s roster item "to"' % r_jid)
    await until(lambda: any(f == r_jid + '/away' for f, _ in seen['a']),
                'presence of %s at our user after approval' % r_jid)
    # 2. remote → ours.
    r.send_presence(pto=a_jid, ptype='subscribe')
    await until(lambda: r_jid in requests['a'], 'the request at our user')
    a.send_presence(pto=r_jid, ptype='subscribed')
    await until(lambda: sub(a, r_jid) == 'both' and sub(r, a_jid) == 'both',
                lambda: 'subscription both on both sides (ours %s, remote %s)'
                % (sub(a, r_jid), sub(r, a_jid)))
    await until(lambda: any(f == a_jid + '/home' for f, _ in seen['r']),
                'presence of our user at %s after approval' % r_jid)
    # 3. Broadcasts now reach the subscriber on the other side.
    r.send_presence(pstatus='remote-fresh')
    await until(lambda: (r_jid + '/away', 'remote-fresh') in seen['a'],
                'broadcast presence of %s' % r_jid)
    a.send_presence(pstatus='ours-fresh')
    await until(lambda: (a_jid + '/home', 'ours-fresh') in seen['r'],
                'broadcast presence of our user at %s' % r_jid)
    # 4. Our server's stored roster says both, nothing pending (RFC 6121 §2.1.2).
    iq = a.Iq()
    iq['type'] = 'get'
    iq.enable('roster')
    res = await iq.send(timeout=10)
    items = {str(j): v for j, v in res['roster']['items'].items()}
    check(r_jid in items and items[r_jid]['subscription'] == 'both'
          and not items[r_jid].get('ask'),
          'roster get on ours.test: %s' % items)
    await a.close()
    await r.close()


async def test_subscription_both_ways_with_prosody():
    await _subscribe_both_ways(P.PROSODY_IP, 'prosody')


async def test_subscription_both_ways_with_ejabberd():
    await _subscribe_both_ways(P.EJ_IP, 'ej')


# --------------------------------------------------------------------------- vCard


async def test_vcard_fetch_both_ways():
    """IQs cross in both directions (XEP-0054): each user reads the other's vCard."""
    need_ours()
    r_jid, r_pw = take('prosody')
    a_jid, a_pw = ours.new_user('vc')
    a = await h.connect(ours, a_jid + '/v', a_pw, plugins=('xep_0054',))
    r = await P.connect(P.PROSODY_IP, r_jid + '/v', r_pw, plugins=('xep_0054',))
    for c, fn in ((a, 'Ours Person'), (r, 'Peer Person')):
        card = c['xep_0054'].make_vcard()
        card['FN'] = fn
        card['NICKNAME'] = fn.split()[0].lower()
        await c['xep_0054'].publish_vcard(card, timeout=10)
    got = await a['xep_0054'].get_vcard(r_jid, local=False, timeout=S2S_WAIT)
    check(str(got['from']) == r_jid and got['vcard_temp']['FN'] == 'Peer Person',
          'our user fetched %s' % got)
    got = await r['xep_0054'].get_vcard(a_jid, local=False, timeout=S2S_WAIT)
    check(str(got['from']) == a_jid and got['vcard_temp']['FN'] == 'Ours Person',
          'remote user fetched %s' % got)
    await a.close()
    await r.close()


# --------------------------------------------------------------------------- hostile peers


def _raw_user():
    """A raw c2s session on ours.test with initial presence, drained."""
    jid, pw = ours.new_user('raw')
    raw = h.Raw(ours.port)
    raw.open(to=P.OURS)
    raw.starttls()
    raw.open(to=P.OURS)
    ok, cond = h.scram_auth(raw, 'SCRAM-SHA-256', h.localpart(jid), pw)
    check(ok, 'login of %s failed: %s' % (jid, cond))
    raw.open(to=P.OURS)
    full = raw.bind('r')
    raw.send('<presence/>')
    _drain(raw)
    return raw, full


def _drain(raw):
    """A ping round trip: returns what arrived before its result (e.g. the presence echo),
    so that nothing sent in answer to earlier stanzas can arrive later. (A quiet period is no
    proof: a loaded server may answer after it.)"""
    raw.send("<iq type='get' id='drain' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>" % P.OURS)
    got = []
    while True:
        el = raw.next()
        if el.tag == '{jabber:client}iq' and el.get('id') == 'drain':
            check(el.get('type') == 'result', 'ping: %s' % h.ET.tostring(el))
            return got
        got.append(el)


def test_forged_dialback_key_is_rejected():
    """XEP-0220 §2.3-2.4: a stream claiming peer.test presents a made-up key; we ask peer.test
    (the real Prosody), which says invalid, so the domain is not authorized and a stanza from it
    is refused (RFC 6120 §4.9.3.9 invalid-from, or not-authorized before authentication)."""
    need_ours()
    user, user_full = _raw_user()
    mark = len(prosody.log())
    s = P.RawS2S(P.PROSODY_DOMAIN)
    try:
        f = s.open_s2s()
        check(f.find('{%s}starttls' % h.NS_TLS) is not None, 'no STARTTLS offered: %s'
              % h.ET.tostring(f))
        s.starttls_with(ca.client_context(server_name=P.OURS))
        f = s.open_s2s()
        check(f.find('{%s}dialback' % P.NS_DIALBACK_FEATURE) is not None,
              'dialback not offered (XEP-0220 §2.1): %s' % h.ET.tostring(f))
        s.send("<db:result from='%s' to='%s'>%s</db:result>"
               % (P.PROSODY_DOMAIN, P.OURS, 'ab' * 32))
        verdict = None
        try:
            el = s.next(S2S_WAIT)
            if el.tag == '{%s}result' % P.NS_DIALBACK:
                verdict = el.get('type')
                check(verdict in ('invalid', 'error'),
                      'forged dialback key was answered %s' % h.ET.tostring(el))
            else:
                check(el.tag == '{%s}error' % h.NS_STREAM,
                      'unexpected reply to a forged key: %s' % h.ET.tostring(el))
                verdict = 'stream error'
        except h.StreamClosed:
            verdict = 'closed'
        if verdict in ('invalid', 'error'):
            s.send("<message from='mallory@%s' to='%s' type='chat'><body>forged</body>"
                   "</message>" % (P.PROSODY_DOMAIN, user_full))
            s.expect_stream_error(('invalid-from', 'not-authorized'), S2S_WAIT)
        user.expect_silence(1.5)
        # The verdict came from the authoritative server, not from a guess (XEP-0220 §2.3).
        h.wait_until(lambda: 'Asked to verify a dialback key that was incorrect'
                     in prosody.log()[mark:], h.IO_TIMEOUT,
                     'Prosody to be asked about the forged key')
    finally:
        s.close()
        user.close()


def test_external_stream_cannot_speak_for_another_domain():
    """XEP-0178: evil.test authenticates with a valid certificate (SASL EXTERNAL), may send as
    evil.test, but a stanza from peer.test on that stream is a stream error <invalid-from/>
    (RFC 6120 §4.9.3.9) and is not delivered."""
    need_ours()
    user, user_full = _raw_user()
    cert, key, _ = certs['evil']
    s = P.RawS2S('evil.test')
    try:
        s.open_s2s()
        # Our server must present the CA-issued certificate for ours.test (RFC 6125 DNS-ID).
        s.starttls_with(ca.client_context(cert, key, server_name=P.OURS))
        f = s.open_s2s()
        check('EXTERNAL' in h.mechanisms(f), 'SASL EXTERNAL not offered to a valid certificate:'
              ' %s' % h.ET.tostring(f))
        s.send("<auth xmlns='%s' mechanism='EXTERNAL'>%s</auth>"
               % (h.NS_SASL, base64.b64encode(b'evil.test').decode()))
        el = s.next()
        check(el.tag == '{%s}success' % h.NS_SASL, 'EXTERNAL failed: %s' % h.ET.tostring(el))
        s.open_s2s()
        s.send("<message from='eve@evil.test/x' to='%s' type='chat' id='ok1'>"
               "<body>legit</body></message>" % user_full)
        m = user.next(10)
        check(m.tag == '{jabber:client}message' and m.get('from') == 'eve@evil.test/x'
              and m.findtext('{jabber:client}body') == 'legit',
              'stanza from the authenticated domain: %s' % h.ET.tostring(m))
        s.send("<message from='mallory@%s' to='%s' type='chat' id='spoof1'>"
               "<body>spoofed</body></message>" % (P.PROSODY_DOMAIN, user_full))
        s.expect_stream_error('invalid-from')
        user.expect_silence(1.5)
    finally:
        s.close()
        user.close()


def _denied_inbound(user_full):
    """Runs a denied.test stream as far as the server lets it; returns how it was refused."""
    cert, key, _ = certs['denied']
    s = P.RawS2S('denied.test')
    try:
        s._reset()
        s.send("<?xml version='1.0'?><stream:stream xmlns='%s' xmlns:stream='%s' xmlns:db='%s' "
               "from='denied.test' to='%s' version='1.0'>"
               % (P.NS_SERVER, h.NS_STREAM, P.NS_DIALBACK, P.OURS))
        try:
            s.wait_header()
            el = s.next()
        except h.StreamClosed:
            return 'closed at the header'
        if el.tag == '{%s}error' % h.NS_STREAM:
            return 'stream error at the header'
        s.starttls_with(ca.client_context(cert, key, server_name=P.OURS))
        s._reset()
        s.send("<?xml version='1.0'?><stream:stream xmlns='%s' xmlns:stream='%s' xmlns:db='%s' "
               "from='denied.test' to='%s' version='1.0'>"
               % (P.NS_SERVER, h.NS_STREAM, P.NS_DIALBACK, P.OURS))
        try:
            s.wait_header()
            f = s.next()
        except h.StreamClosed:
            return 'closed after TLS'
        if f.tag == '{%s}error' % h.NS_STREAM:
            return 'stream error after TLS'
        if 'EXTERNAL' in h.mechanisms(f):
            s.send("<auth xmlns='%s' mechanism='EXTERNAL'>%s</auth>"
                   % (h.NS_SASL, base64.b64encode(b'denied.test').decode()))
            try:
                el = s.next()
            except h.StreamClosed:
                return 'closed at SASL'
            if el.tag != '{%s}success' % h.NS_SASL:
                return 'SASL %s' % el.tag.split('}')[1]
            s.open_s2s()
        s.send("<message from='dan@denied.test' to='%s' type='chat' id='d1'><body>denied"
               "</body></message>" % user_full)
        try:
            el = s.next(10)
        except h.StreamClosed:
            return 'closed at the first stanza'
        except h.TestFailure:
            raise h.TestFailure('denied.test authenticated (%s) and its stanza met no refusal'
                                % ('SASL EXTERNAL' if 'EXTERNAL' in h.mechanisms(f)
                                   else 'no authentication'))
        check(el.tag == '{%s}error' % h.NS_STREAM or el.get('type') == 'error',
              'a stanza from a denied domain got %s' % h.ET.tostring(el))
        return 'refused the stanza'
    finally:
        s.close()


async def test_denied_domain_is_refused_both_ways():
    """[s2s] deny = denied.test: its stream is refused even with a valid certificate, and our
    user's message to it bounces without a connection being attempted."""
    need_ours()
    raw, full = _raw_user()
    try:
        how = _denied_inbound(full)
        raw.expect_silence(1.5)
    finally:
        raw.close()
    check(how, 'denied.test was not refused')
    a_jid, a_pw = ours.new_user('deny')
    a = await h.connect(ours, a_jid + '/r', a_pw)
    before = len(watch.accepted)
    a.send_message(mto='dan@denied.test', mbody='you are denied', mtype='chat')
    err = await a.next_message(10, errors=True)
    check(bare(err['from']) == 'dan@denied.test' and err['error']['condition'],
          'bounce from %s: %s' % (err['from'], err['error']['condition']))
    await asyncio.sleep(0.5)
    check(len(watch.accepted) == before, 'ours.test connected to the denied domain')
    await a.close()


# --------------------------------------------------------------------------- failures


async def test_unreachable_domain_bounces():
    """A route to a closed port: remote-server-not-found (or -timeout) comes back at once; a
    domain with no route and no DNS answer fails the same way (RFC 6120 §8.3.3.14/15)."""
    need_ours()
    a_jid, a_pw = ours.new_user('down')
    a = await h.connect(ours, a_jid + '/r', a_pw)
    conds = ('remote-server-not-found', 'remote-server-timeout')
    _, elapsed = await expect_bounce(a, 'x@closed.test', conds, CONNECT_TIMEOUT + 10)
    check(elapsed < CONNECT_TIMEOUT + 5, 'bounce took %.1fs' % elapsed)
    _, elapsed = await expect_bounce(a, 'x@nowhere.test', conds, CONNECT_TIMEOUT + 15)
    check(elapsed < CONNECT_TIMEOUT + 10, 'bounce for an unresolvable domain took %.1fs' % elapsed)
    await a.close()


async def test_silent_peer_times_out():
    """A peer that accepts TCP and never sends a stream header: queued stanzas bounce within
    connect_timeout (plus slack) instead of waiting forever."""
    need_ours()
    a_jid, a_pw = ours.new_user('silent')
    a = await h.connect(ours, a_jid + '/r', a_pw)
    conds = ('remote-server-timeout', 'remote-server-not-found')
    _, elapsed = await expect_bounce(a, 'x@silent.test', conds, CONNECT_TIMEOUT + 15)
    check(silent.accepted, 'ours.test never connected to silent.test')
    check(elapsed < CONNECT_TIMEOUT + 5, 'bounce took %.1fs (connect_timeout %d)'
          % (elapsed, CONNECT_TIMEOUT))
    await a.close()


async def test_stopped_peer_bounces():
    """ejabberd goes away (its link to us closes); the next message to ej.test bounces with
    remote-server-not-found or -timeout within the connect timeout."""
    need_ours()
    e_jid, e_pw = take('ej')
    a_jid, a_pw = ours.new_user('gone')
    a = await h.connect(ours, a_jid + '/r', a_pw)
    e = await P.connect(P.EJ_IP, e_jid + '/t', e_pw)
    a.send_message(mto=e_jid, mbody='before', mtype='chat')
    await expect_message(e, a_jid + '/r', 'before')
    e.abort()
    ej.stop()
    # Our outgoing link to ej.test must have noticed the close before the next message is
    # routed (else it is written to a dead connection); the log says so.
    links = set(re.findall(r'\[(s2s\w*#\d+)\] %s -> %s authenticated'
                           % (re.escape(P.OURS), re.escape(P.EJ_DOMAIN)), ours.log()))
    check(links, 'no authenticated link %s -> %s in our log' % (P.OURS, P.EJ_DOMAIN))
    await wait_for(lambda: all('[%s] closed: ' % t in ours.log() for t in links), S2S_WAIT,
                   'our links to %s to close: %s' % (P.EJ_DOMAIN, sorted(links)))
    _, elapsed = await expect_bounce(a, e_jid, ('remote-server-not-found',
                                                'remote-server-timeout'), CONNECT_TIMEOUT + 15)
    check(elapsed < CONNECT_TIMEOUT + 5, 'bounce took %.1fs' % elapsed)
    await a.close()


async def test_dialback_only_federation():
    """Isthmus restarts with a self-signed certificate (require_valid_certificates = false) and
    Prosody with s2s_secure_auth = false: Prosody cannot authenticate ours.test by certificate,
    so the link ours → peer.test uses Server Dialback (XEP-0220), verified by Prosody connecting
    back to us; messages still flow both ways."""
    global ours, ours_error
    need_ours()
    ours.stop()
    ours = None
    prosody.restart(secure_auth=False)
    bad_cert, bad_key, _ = ca.self_signed(P.OURS)
    try:
        ours = _start_ours(bad_cert, bad_key, {'require_valid_certificates': 'false',
                                               'dialback': 'true'}, second_host=True)
    except BaseException as e:
        ours_error = str(e)
        raise
    mark = len(prosody.log())
    r_jid, r_pw = take('prosody')
    a_jid, a_pw = ours.new_user('db')
    a = await h.connect(ours, a_jid + '/r', a_pw)
    r = await P.connect(P.PROSODY_IP, r_jid + '/r', r_pw)
    a.send_message(mto=r_jid, mbody='over dialback', mtype='chat')
    await expect_message(r, a_jid + '/r', 'over dialback')
    r.send_message(mto=a_jid, mbody='dialback back', mtype='chat')
    await expect_message(a, r_jid + '/r', 'dialback back')
    plog = prosody.log()[mark:]
    check('Accepting SASL EXTERNAL identity from %s' % P.OURS not in plog,
          'Prosody accepted SASL EXTERNAL from ours.test with an untrusted certificate')
    check('asking %s if key' % P.OURS in plog,
          'Prosody never verified a dialback key with ours.test:\n%s' % plog[-3000:])
    check('dialback' in ours.log().lower(), 'our log does not mention dialback')
    # XEP-0220 §2.5 piggybacking: a user of our second host writes to the same peer; the
    # stream ours.test -> peer.test carries it after one more <db:result/>, which Prosody
    # verifies with two.ours.test; no second connection is opened.
    b_jid, b_pw = 'piggy-%d@%s' % (os.getpid(), P.OURS_TWO), 'pigpw'
    ours.add_user(b_jid, b_pw)
    b = await h.connect(ours, b_jid + '/r', b_pw)
    b.send_message(mto=r_jid, mbody='piggybacked', mtype='chat')
    await expect_message(r, b_jid + '/r', 'piggybacked')
    r.send_message(mto=b_jid, mbody='to the second host', mtype='chat')
    await expect_message(b, r_jid + '/r', 'to the second host')
    check('piggybacked on' in ours.log(), 'the second domain did not piggyback:\n%s'
          % ours.log_tail())
    check('asking %s if key' % P.OURS_TWO in prosody.log()[mark:],
          'Prosody never verified the piggybacked key with %s' % P.OURS_TWO)
    await b.close()
    await a.close()
    await r.close()
