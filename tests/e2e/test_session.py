"""Sessions and routing (RFC 6120 §7, §8; RFC 6121 §8.5) and the server's own iq services
(XEP-0030, XEP-0199, XEP-0092, XEP-0202), driven by slixmpp clients."""

import asyncio
import re
import xml.etree.ElementTree as ET

import harness as h
from harness import check

srv = None


def setup_module():
    global srv
    # Offline storage off: these tests check RFC 6121 §8.5 routing itself, where a message
    # nobody can take is answered with service-unavailable (test_offline covers storage).
    srv = h.Server({'offline': {'max_messages': '0'}}).start()


def teardown_module():
    srv.stop()


async def _pair(res_a='a', res_b='b'):
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    a = await h.connect(srv, '%s/%s' % (a_jid, res_a) if res_a else a_jid, a_pw)
    b = await h.connect(srv, '%s/%s' % (b_jid, res_b) if res_b else b_jid, b_pw)
    return a, b


async def _iq_error(c, iq):
    from slixmpp.exceptions import IqError
    try:
        r = await iq.send(timeout=h.IO_TIMEOUT)
    except IqError as e:
        return e.iq['error']['type'], e.iq['error']['condition']
    raise h.TestFailure('expected an error, got %s' % r)


async def test_bind_chosen_resource():
    jid, pw = srv.new_user('bind')
    c = await h.connect(srv, jid + '/my-Resource 1', pw)
    check(str(c.boundjid) == jid + '/my-Resource 1', 'bound %s' % c.boundjid)
    await c.close()


async def test_bind_server_generated_resource():
    jid, pw = srv.new_user('bind')
    c1 = await h.connect(srv, jid, pw)
    c2 = await h.connect(srv, jid, pw)
    check(c1.boundjid.bare == jid and c1.boundjid.resource, 'bound %s' % c1.boundjid)
    check(c2.boundjid.resource and c2.boundjid.resource != c1.boundjid.resource,
          'two generated resources: %s %s' % (c1.boundjid, c2.boundjid))
    await c1.sync()
    await c1.close()
    await c2.close()


def test_raw_bind_and_legacy_session():
    """Binding over a raw stream; the legacy <session/> (RFC 3921) is answered if offered."""
    user, pw = srv.new_user('raw')
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        ok, cond = h.scram_auth(raw, 'SCRAM-SHA-1', h.localpart(user), pw)
        check(ok, 'auth: %s' % cond)
        feats = raw.open()
        check(feats.find('{%s}bind' % h.NS_BIND) is not None, 'no bind feature: %r'
              % raw.received)
        check(not h.mechanisms(feats), 'SASL offered again after auth')
        sess = feats.find('{urn:ietf:params:xml:ns:xmpp-session}session')
        jid = raw.bind()
        check(jid.startswith(user + '/') and len(jid) > len(user) + 1, 'bound %s' % jid)
        if sess is not None:
            raw.send("<iq type='set' id='s1'><session "
                     "xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
            el = raw.next()
            check(el.get('type') == 'result' and el.get('id') == 's1', 'session: %r'
                  % raw.received[-300:])
    finally:
        raw.close()


async def test_message_full_jid():
    a, b = await _pair()
    a.send_message(mto=b.boundjid, mbody='hello full', mtype='chat')
    msg = await b.next_message()
    check(msg['body'] == 'hello full', 'body %r' % msg['body'])
    check(msg['from'] == a.boundjid, 'from %s, expected %s' % (msg['from'], a.boundjid))
    check(msg['to'] == b.boundjid, 'to %s' % msg['to'])
    b.send_message(mto=a.boundjid, mbody='reply', mtype='chat')
    msg = await a.next_message()
    check(msg['body'] == 'reply' and msg['from'] == b.boundjid, 'reply %s' % msg)
    await a.close()
    await b.close()


async def test_message_bare_jid():
    a, b = await _pair()
    a.send_message(mto=b.boundjid.bare, mbody='hello bare', mtype='chat')
    msg = await b.next_message()
    check(msg['body'] == 'hello bare', 'body %r' % msg['body'])
    check(msg['from'] == a.boundjid, 'from %s' % msg['from'])
    await a.close()
    await b.close()


async def test_message_bare_jid_highest_priority():
    """RFC 6121 §8.5.2.1.1: a message to the bare JID goes to the highest-priority resource."""
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    a = await h.connect(srv, a_jid + '/a', a_pw)
    hi = await h.connect(srv, b_jid + '/hi', b_pw, presence=False)
    lo = await h.connect(srv, b_jid + '/lo', b_pw, presence=False)
    hi.send_presence(ppriority=5)
    lo.send_presence(ppriority=1)
    await hi.sync()
    await lo.sync()
    a.send_message(mto=b_jid, mbody='to the best', mtype='chat')
    msg = await hi.next_message()
    check(msg['body'] == 'to the best', 'hi got %r' % msg['body'])
    await lo.sync()
    await a.sync()
    check(lo.messages.empty(), 'lower-priority resource also got the message')
    for c in (a, hi, lo):
        await c.close()


async def test_message_offline_bare_jid_service_unavailable():
    a_jid, a_pw = srv.new_user('alice')
    b_jid, _ = srv.new_user('bob')
    a = await h.connect(srv, a_jid + '/a', a_pw)
    a.send_message(mto=b_jid, mbody='anyone?', mtype='chat')
    err = await a.next_message(errors=True)
    check(err['from'].bare == b_jid, 'error from %s' % err['from'])
    check(err['error']['condition'] == 'service-unavailable', 'condition %s'
          % err['error']['condition'])
    await a.close()


async def test_message_negative_priority_not_delivered():
    """RFC 6121 §8.5.2.1.1: resources with negative priority never get bare-JID messages."""
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    a = await h.connect(srv, a_jid + '/a', a_pw)
    b = await h.connect(srv, b_jid + '/neg', b_pw, presence=False)
    b.send_presence(ppriority=-1)
    await b.sync()
    a.send_message(mto=b_jid, mbody='not for negative', mtype='chat')
    err = await a.next_message(errors=True)
    check(err['error']['condition'] == 'service-unavailable', 'condition %s'
          % err['error']['condition'])
    await b.sync()
    check(b.messages.empty(), 'negative-priority resource got a bare-JID message')
    # ... but a full-JID message still reaches it.
    a.send_message(mto=b.boundjid, mbody='direct', mtype='chat')
    msg = await b.next_message()
    check(msg['body'] == 'direct', 'full-JID message: %r' % msg['body'])
    await a.close()
    await b.close()


async def test_message_to_unknown_full_jid():
    """A message to an offline full JID of a known user must not vanish silently into an error
    loop: the sender gets an error or (RFC 6121 §8.5.3.2.1) it is handled as bare — either way
    nothing crashes and the sender's session stays usable."""
    a_jid, a_pw = srv.new_user('alice')
    b_jid, _ = srv.new_user('bob')
    a = await h.connect(srv, a_jid + '/a', a_pw)
    a.send_message(mto=b_jid + '/gone', mbody='hello?', mtype='chat')
    err = await a.next_message(errors=True)
    check(err['error']['condition'] in ('service-unavailable', 'item-not-found',
                                        'recipient-unavailable'),
          'condition %s' % err['error']['condition'])
    await a.sync()
    await a.close()


async def test_spoofed_from_rewritten():
    """RFC 6120 §8.1.2.1: the server stamps the sender's full JID over a forged from."""
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    b = await h.connect(srv, b_jid + '/b', b_pw)

    def send_spoofed():
        raw, jid = h.authed_raw(srv, h.localpart(a_jid), a_pw, resource='spoof')
        raw.send("<presence/>")
        raw.send("<message to='%s' from='mallory@evil.example/x' type='chat'>"
                 "<body>forged</body></message>" % b.boundjid)
        raw.send("<iq type='get' id='sync' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>"
                 % srv.domain)
        while True:
            el = raw.next()
            if el.get('id') == 'sync':
                break
        raw.close()
        return jid
    jid = await asyncio.to_thread(send_spoofed)
    msg = await b.next_message()
    check(msg['body'] == 'forged', 'body %r' % msg['body'])
    check(str(msg['from']) == jid == a_jid + '/spoof',
          'from %s, expected %s (server must overwrite a spoofed from)' % (msg['from'], jid))
    await b.close()


async def test_ping_server():
    a, b = await _pair()
    r = await a['xep_0199'].send_ping(srv.domain, timeout=h.IO_TIMEOUT)
    check(r['type'] == 'result', 'ping: %s' % r)
    check(r['from'] == srv.domain, 'ping reply from %s' % r['from'])
    await a.close()
    await b.close()


async def test_iq_routed_to_full_jid():
    """An iq to another user's full JID reaches that client and its reply comes back."""
    a, b = await _pair()
    r = await a['xep_0199'].send_ping(b.boundjid, timeout=h.IO_TIMEOUT)
    check(r['type'] == 'result' and r['from'] == b.boundjid, 'ping to peer: %s' % r)
    await a.close()
    await b.close()


async def test_disco_info_server():
    jid, pw = srv.new_user('disco')
    c = await h.connect(srv, jid, pw)
    r = await c['xep_0030'].get_info(jid=srv.domain, local=False, timeout=h.IO_TIMEOUT)
    features = set(r['disco_info']['features'])
    for f in ('urn:xmpp:ping', 'jabber:iq:version', 'urn:xmpp:time',
              'http://jabber.org/protocol/disco#info', 'jabber:iq:register'):
        check(f in features, '%s missing from disco#info features %s' % (f, sorted(features)))
    idents = r['disco_info']['identities']
    check(any(i[0] == 'server' and i[1] == 'im' for i in idents),
          'no server/im identity: %s' % idents)
    r = await c['xep_0030'].get_items(jid=srv.domain, local=False, timeout=h.IO_TIMEOUT)
    check(r['type'] == 'result', 'disco#items: %s' % r)
    await c.close()


async def test_version():
    jid, pw = srv.new_user('ver')
    c = await h.connect(srv, jid, pw, plugins=('xep_0092',))
    r = await c['xep_0092'].get_version(srv.domain, timeout=h.IO_TIMEOUT)
    v = r['software_version']
    check(v['name'], 'no software name: %s' % r)
    check(v['version'], 'no version: %s' % r)
    await c.close()


async def test_time():
    import datetime
    jid, pw = srv.new_user('time')
    c = await h.connect(srv, jid, pw, plugins=('xep_0202',))
    r = await c['xep_0202'].get_entity_time(srv.domain, timeout=h.IO_TIMEOUT)
    utc_el = r.xml.find('{urn:xmpp:time}time/{urn:xmpp:time}utc')
    tzo_el = r.xml.find('{urn:xmpp:time}time/{urn:xmpp:time}tzo')
    check(utc_el is not None and tzo_el is not None, 'no utc/tzo: %s' % r)
    # XEP-0082 DateTime: CCYY-MM-DDThh:mm:ss[.sss]Z
    m = re.fullmatch(r'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z', utc_el.text or '')
    check(m, 'utc %r is not an XEP-0082 UTC DateTime' % utc_el.text)
    check(re.fullmatch(r'[+-]\d\d:\d\d|Z', tzo_el.text or ''), 'tzo %r' % tzo_el.text)
    utc = datetime.datetime.strptime(m.group(1), '%Y-%m-%dT%H:%M:%S').replace(
        tzinfo=datetime.timezone.utc)
    now = datetime.datetime.now(datetime.timezone.utc)
    check(abs((now - utc).total_seconds()) < 60, 'server time %s vs now %s' % (utc, now))
    await c.close()


async def test_unknown_iq_namespace_service_unavailable():
    jid, pw = srv.new_user('unk')
    c = await h.connect(srv, jid, pw)
    iq = c.make_iq_get(ito=srv.domain)
    iq.xml.append(ET.Element('{urn:example:nothing}query'))
    typ, cond = await _iq_error(c, iq)
    check(cond == 'service-unavailable' and typ == 'cancel', 'get: %s %s' % (typ, cond))
    iq = c.make_iq_set(ito=srv.domain)
    iq.xml.append(ET.Element('{urn:example:nothing}query'))
    typ, cond = await _iq_error(c, iq)
    check(cond == 'service-unavailable', 'set: %s %s' % (typ, cond))
    await c.sync()
    await c.close()


async def test_iq_to_bare_jid_of_other_user():
    """RFC 6121 §8.5.2.1.3: an unhandled iq to a user's bare JID is answered by the server
    on the user's behalf (service-unavailable), not delivered to a resource."""
    a, b = await _pair()
    iq = a.make_iq_get(ito=b.boundjid.bare)
    iq.xml.append(ET.Element('{urn:example:nothing}query'))
    typ, cond = await _iq_error(a, iq)
    check(cond == 'service-unavailable', 'iq to bare JID: %s %s' % (typ, cond))
    await a.close()
    await b.close()


async def test_same_resource_conflict():
    """RFC 6120 §7.7.2.2: the new session wins; the old one gets <conflict/>."""
    jid, pw = srv.new_user('dup')
    old = await h.connect(srv, jid + '/same', pw)
    new = await h.connect(srv, jid + '/same', pw)
    check(str(new.boundjid) == jid + '/same', 'new session bound %s' % new.boundjid)
    await asyncio.wait_for(asyncio.shield(old.closed), h.IO_TIMEOUT)
    check('conflict' in old.stream_errors, 'old session stream errors: %s' % old.stream_errors)
    await new.sync()
    b_jid, b_pw = srv.new_user('bob')
    b = await h.connect(srv, b_jid, b_pw)
    b.send_message(mto=jid + '/same', mbody='to the new one', mtype='chat')
    msg = await new.next_message()
    check(msg['body'] == 'to the new one', 'body %r' % msg['body'])
    await new.close()
    await b.close()


def test_same_resource_conflict_raw():
    """Same as above, asserting the exact stream error element on the old stream."""
    user, pw = srv.new_user('dupraw')
    old, _ = h.authed_raw(srv, h.localpart(user), pw, resource='r')
    new, jid = h.authed_raw(srv, h.localpart(user), pw, resource='r')
    try:
        check(jid == user + '/r', 'new bound %s' % jid)
        old.expect_stream_error('conflict')
        new.send("<iq type='get' id='p' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>" % srv.domain)
        check(new.next().get('type') == 'result', 'new session ping: %r' % new.received[-300:])
    finally:
        old.close()
        new.close()


def test_stanza_before_starttls_refused():
    """RFC 6120 §5.3.1: with TLS required the server MUST NOT process a stanza sent before TLS;
    it closes the stream with an error."""
    user, pw = srv.new_user('pre')
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.send("<message to='%s'><body>plaintext</body></message>" % user)
        raw.expect_stream_error_any(('not-authorized', 'policy-violation'))
    finally:
        raw.close()


def test_stanza_before_auth_refused():
    """After TLS but before SASL: a stanza gets <not-authorized/> (RFC 6120 §4.9.3.12)."""
    user, pw = srv.new_user('pre')
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send("<iq type='get' id='x' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>" % srv.domain)
        raw.expect_stream_error_any(('not-authorized', 'policy-violation'))
    finally:
        raw.close()


def test_stanza_before_bind_refused():
    """After SASL but before binding a resource there is no session to send from."""
    user, pw = srv.new_user('nobind')
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        ok, cond = h.scram_auth(raw, 'SCRAM-SHA-256', h.localpart(user), pw)
        check(ok, 'auth %s' % cond)
        raw.open()
        raw.send("<message to='%s'><body>unbound</body></message>" % user)
        try:
            el = raw.next(timeout=h.IO_TIMEOUT)
        except h.StreamClosed:
            return
        ok = (el.tag == '{%s}error' % h.NS_STREAM) or el.get('type') == 'error'
        check(ok, 'stanza before bind was not refused: %r' % raw.received[-400:])
    finally:
        raw.close()


async def test_hibernated_streams_wake_up():
    """Sessions silent for [c2s] hibernate_after free their XML parser; the next stanza must
    rebuild it transparently, on both ends of a conversation."""
    with h.Server({'c2s': {'hibernate_after': '1'}, 'server': {'log_level': 'debug'}}) as s:
        a_jid, a_pw = s.new_user('hib')
        b_jid, b_pw = s.new_user('hib')
        a = await h.connect(s, a_jid + '/a', a_pw)
        b = await h.connect(s, b_jid + '/b', b_pw)
        got = asyncio.Queue()
        b.add_event_handler('message', lambda m: got.put_nowait(m['body']))
        loop = asyncio.get_running_loop()

        async def naps_reach(n):
            # Hibernation is a timer of the server's; a loaded server takes longer than
            # hibernate_after, so wait for the log to say it happened rather than sleep.
            deadline = loop.time() + h.IO_TIMEOUT
            while s.log().count('XML parser released') < n:
                check(loop.time() < deadline, 'streams hibernated %d times, waited for %d'
                      % (s.log().count('XML parser released'), n))
                await asyncio.sleep(0.05)
        # a's stream sleeps, wakes to send, sleeps again; b only receives, so it sleeps once:
        # both streams hibernate before the first message, a's again before the second.
        for round_, naps in ((0, 2), (1, 3)):
            await naps_reach(naps)
            a.send_message(mto=b_jid + '/b', mbody='after nap %d' % round_, mtype='chat')
            body = await asyncio.wait_for(got.get(), h.IO_TIMEOUT)
            check(body == 'after nap %d' % round_, 'got %r' % body)
        naps = s.log().count('XML parser released')
        check(naps >= 3, 'streams hibernated %d times' % naps)
        await a.close()
        await b.close()
