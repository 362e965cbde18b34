"""Edge cases of addressing, stanza semantics, SASL and TLS that a careless server gets wrong:
stringprep'd JIDs, error stanzas that must not bounce, iq shape rules, resource limits, TLS
versions and ALPN, non-ASCII credentials, ordering under load."""

import asyncio
import os
import ssl
import xml.etree.ElementTree as ET

import harness as h
from harness import check

srv = None
PING = "<ping xmlns='urn:xmpp:ping'/>"


def setup_module():
    global srv
    srv = h.Server().start()


def teardown_module():
    srv.stop()


def _session(prefix='rb', resource='r'):
    user, pw = srv.new_user(prefix)
    raw, jid = h.authed_raw(srv, h.localpart(user), pw, resource=resource)
    return raw, jid


def _ping(raw, ident='sync'):
    """A round trip; returns every element received before the ping result."""
    raw.send("<iq type='get' id='%s' to='%s'>%s</iq>" % (ident, srv.domain, PING))
    before = []
    while True:
        el = raw.next()
        if el.get('id') == ident and el.tag.endswith('}iq'):
            check(el.get('type') == 'result', 'ping: %s' % ET.tostring(el))
            return before
        before.append(el)


def _reply(raw, stanza, ident):
    raw.send(stanza)
    while True:
        el = raw.next()
        if el.get('id') == ident:
            return el


def test_iq_with_two_payloads_bad_request():
    """RFC 6120 §8.2.3: an iq get/set has exactly one payload child."""
    raw, _ = _session()
    try:
        el = _reply(raw, "<iq type='get' id='two' to='%s'>%s%s</iq>" % (srv.domain, PING, PING),
                    'two')
        check(el.get('type') == 'error' and h.stanza_error(el) == 'bad-request',
              'two payloads: %s' % ET.tostring(el))
        el = _reply(raw, "<iq type='get' id='none' to='%s'/>" % srv.domain, 'none')
        check(el.get('type') == 'error' and h.stanza_error(el) == 'bad-request',
              'no payload: %s' % ET.tostring(el))
    finally:
        raw.close()


def test_iq_result_and_error_to_server_not_answered():
    """RFC 6120 §8.2.3, §8.3.1: results and errors are never answered (no error loops)."""
    raw, _ = _session()
    try:
        raw.send("<iq type='result' id='r1' to='%s'/>" % srv.domain)
        raw.send("<iq type='error' id='e1' to='%s'><error type='cancel'><service-unavailable "
                 "xmlns='%s'/></error></iq>" % (srv.domain, h.NS_STANZAS))
        extra = _ping(raw)
        check(not extra, 'server answered a result/error iq: %s'
              % [ET.tostring(e) for e in extra])
    finally:
        raw.close()


def test_iq_without_to_handled_by_server():
    """RFC 6120 §10.3.3: no 'to' means the user's own account; the server answers a ping."""
    raw, jid = _session()
    try:
        el = _reply(raw, "<iq type='get' id='noto'>%s</iq>" % PING, 'noto')
        check(el.get('type') == 'result', 'ping without to: %s' % ET.tostring(el))
    finally:
        raw.close()


def test_iq_without_id_refused():
    raw, _ = _session()
    try:
        raw.send("<iq type='get' to='%s'>%s</iq>" % (srv.domain, PING))
        try:
            extra = _ping(raw)
        except h.StreamClosed:
            check(b'<stream:error>' in raw.received, 'closed without an error')
            return
        check(len(extra) == 1 and extra[0].get('type') == 'error',
              'iq without id: %s' % [ET.tostring(e) for e in extra])
    finally:
        raw.close()


def test_error_message_to_offline_user_not_bounced():
    """RFC 6120 §8.3.1: an error stanza MUST NOT be answered with another error."""
    raw, _ = _session()
    b_user, _ = srv.new_user('off')
    try:
        raw.send("<message to='%s' type='error' id='m1'><error type='cancel'>"
                 "<item-not-found xmlns='%s'/></error></message>" % (b_user, h.NS_STANZAS))
        extra = _ping(raw)
        check(not extra, 'error message was bounced: %s' % [ET.tostring(e) for e in extra])
    finally:
        raw.close()


def test_stanzas_to_nonexistent_user():
    """RFC 6121 §8.5.1: no such account → service-unavailable (message and iq)."""
    raw, _ = _session()
    try:
        el = _reply(raw, "<message to='ghost-%d@%s' id='g1' type='chat'><body>x</body>"
                    "</message>" % (os.getpid(), srv.domain), 'g1')
        check(el.get('type') == 'error' and h.stanza_error(el) == 'service-unavailable',
              'message to ghost: %s' % ET.tostring(el))
        el = _reply(raw, "<iq to='ghost-%d@%s/r' id='g2' type='get'>%s</iq>"
                    % (os.getpid(), srv.domain, PING), 'g2')
        check(el.get('type') == 'error' and h.stanza_error(el) == 'service-unavailable',
              'iq to ghost: %s' % ET.tostring(el))
        _ping(raw)
    finally:
        raw.close()


def test_presence_to_nonexistent_user_silently_dropped():
    """RFC 6121 §8.5.1: presence to a missing account is silently ignored."""
    raw, _ = _session()
    try:
        raw.send("<presence to='ghost-%d@%s'/>" % (os.getpid(), srv.domain))
        extra = _ping(raw)
        check(not extra, 'presence to ghost answered: %s' % [ET.tostring(e) for e in extra])
    finally:
        raw.close()


def test_remote_domain_without_federation():
    raw, _ = _session()
    try:
        el = _reply(raw, "<message to='someone@remote.example' id='rm' type='chat'><body>x"
                    "</body></message>", 'rm')
        check(el.get('type') == 'error' and h.stanza_error(el) in
              ('remote-server-not-found', 'service-unavailable', 'remote-server-timeout'),
              'message to remote domain: %s' % ET.tostring(el))
    finally:
        raw.close()


def test_malformed_to_jid():
    raw, _ = _session()
    try:
        el = _reply(raw, "<message to='a@b@c/@' id='bad' type='chat'><body>x</body></message>",
                    'bad')
        check(el.get('type') == 'error' and h.stanza_error(el) == 'jid-malformed',
              'malformed to: %s' % ET.tostring(el))
        _ping(raw)
    finally:
        raw.close()


async def test_jid_case_folding():
    """Node and domain are case-insensitive (RFC 7622 / nodeprep): log in and address with
    other cases."""
    a_jid, a_pw = srv.new_user('CaseA')
    b_jid, b_pw = srv.new_user('caseb')
    a = await h.connect(srv, a_jid.upper().replace('LOCALHOST', 'LocalHost') + '/Res', a_pw)
    check(a.boundjid.bare == a_jid.lower(), 'bound %s for %s' % (a.boundjid, a_jid))
    b = await h.connect(srv, b_jid + '/b', b_pw)
    a.send_message(mto=b_jid.upper() + '/b', mbody='shouting', mtype='chat')
    msg = await b.next_message()
    check(msg['body'] == 'shouting', 'body %r' % msg['body'])
    check(str(msg['from']) == a_jid.lower() + '/Res', 'from %s (resource case must be kept)'
          % msg['from'])
    await a.close()
    await b.close()


def test_resource_too_long_refused():
    """RFC 7622 §3.1: a JID part is at most 1023 bytes; binding a longer resource fails."""
    user, pw = srv.new_user('long')
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        ok, cond = h.scram_auth(raw, 'SCRAM-SHA-256', h.localpart(user), pw)
        check(ok, 'auth %s' % cond)
        raw.open()
        raw.send("<iq type='set' id='b'><bind xmlns='%s'><resource>%s</resource></bind></iq>"
                 % (h.NS_BIND, 'r' * 1100))
        el = raw.next()
        check(el.get('type') == 'error' and h.stanza_error(el) in ('bad-request', 'not-allowed'),
              'long resource: %s' % ET.tostring(el)[:300])
        jid = raw.bind('fine')  # the stream stays usable
        check(jid == user + '/fine', 'bound %s' % jid)
    finally:
        raw.close()


def test_second_bind_refused():
    raw, jid = _session(resource='one')
    try:
        raw.send("<iq type='set' id='b2'><bind xmlns='%s'><resource>two</resource></bind></iq>"
                 % h.NS_BIND)
        try:
            el = raw.next()
        except h.StreamClosed:
            return
        check(el.tag == '{%s}error' % h.NS_STREAM or el.get('type') == 'error',
              'second bind on one stream accepted: %s' % ET.tostring(el))
    finally:
        raw.close()


def test_sasl_abort():
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send("<auth xmlns='%s' mechanism='SCRAM-SHA-256'>%s</auth>"
                 % (h.NS_SASL, h._b64(b'n,,n=someone,r=abcdefghijklmnop')))
        el = raw.next()
        check(el.tag == '{%s}challenge' % h.NS_SASL, 'expected challenge: %s' % ET.tostring(el))
        raw.send("<abort xmlns='%s'/>" % h.NS_SASL)
        kind, cond, el = h._sasl_result(raw)
        check(kind == 'failure' and cond == 'aborted', 'abort: %s' % ET.tostring(el))
    finally:
        raw.close()


def test_sasl_authzid():
    """RFC 6120 §6.3.8: authzid equal to the account's bare JID is fine; another one is not."""
    user, pw = srv.new_user('authz')
    other, _ = srv.new_user('authz')
    for authzid, expect_ok in ((user, True), (other, False)):
        raw = h.Raw(srv.port)
        try:
            raw.open()
            raw.starttls()
            raw.open()
            raw.send("<auth xmlns='%s' mechanism='PLAIN'>%s</auth>"
                     % (h.NS_SASL, h._b64(authzid.encode() + b'\0' + h.localpart(user).encode()
                                          + b'\0' + pw.encode())))
            kind, cond, el = h._sasl_result(raw)
            if expect_ok:
                check(kind == 'success', 'authzid = own JID refused: %s' % ET.tostring(el))
            else:
                check(kind == 'failure' and cond == 'invalid-authzid',
                      'authzid of another user: %s' % ET.tostring(el))
        finally:
            raw.close()


def test_malformed_sasl_data():
    """Garbage base64 and broken SCRAM messages get a SASL failure, never a crash."""
    cases = ["<auth xmlns='%s' mechanism='SCRAM-SHA-1'>!!!not base64!!!</auth>",
             "<auth xmlns='%s' mechanism='SCRAM-SHA-1'>" + h._b64(b'garbage') + "</auth>",
             "<auth xmlns='%s' mechanism='SCRAM-SHA-256'>" + h._b64(b'n,,n=,r=') + "</auth>",
             "<auth xmlns='%s' mechanism='SCRAM-SHA-256'>" + h._b64(b'p=,,n=x,r=y') + "</auth>",
             "<auth xmlns='%s' mechanism='PLAIN'>" + h._b64(b'\0\0') + "</auth>",
             "<auth xmlns='%s' mechanism='PLAIN'>" + h._b64(b'no-nuls-at-all') + "</auth>",
             "<response xmlns='%s'>" + h._b64(b'c=biws,r=x,p=AAAA') + "</response>"]
    for case in cases:
        raw = h.Raw(srv.port)
        try:
            raw.open()
            raw.starttls()
            raw.open()
            raw.send(case % h.NS_SASL)
            try:
                el = raw.next()
            except h.StreamClosed:
                check(b'<stream:error>' in raw.received, '%s: closed silently' % case)
                continue
            check(el.tag in ('{%s}failure' % h.NS_SASL, '{%s}error' % h.NS_STREAM),
                  '%s: got %s' % (case, ET.tostring(el)))
        finally:
            raw.close()


def test_sasl_zero_length_initial_response():
    """RFC 6120 §6.4.2: '=' is a zero-length initial response (not an absent one); for PLAIN
    that is a malformed message, so the exchange fails instead of asking for more."""
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send("<auth xmlns='%s' mechanism='PLAIN'>=</auth>" % h.NS_SASL)
        kind, cond, el = h._sasl_result(raw)
        check(kind == 'failure', "PLAIN with '=' (empty initial response) answered %s"
              % ET.tostring(el))
    finally:
        raw.close()


def test_sasl_absent_initial_response_gets_empty_challenge():
    """RFC 6120 §6.4.2/§6.4.3: PLAIN without initial response → empty challenge, then the
    response carries the credentials."""
    user, pw = srv.new_user('noir')
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send("<auth xmlns='%s' mechanism='PLAIN'/>" % h.NS_SASL)
        kind, val, el = h._sasl_result(raw)
        check(kind == 'challenge' and val in ('', '='), 'no empty challenge: %s'
              % ET.tostring(el))
        raw.send("<response xmlns='%s'>%s</response>"
                 % (h.NS_SASL, h._b64(b'\0' + h.localpart(user).encode() + b'\0' + pw.encode())))
        kind, val, el = h._sasl_result(raw)
        check(kind == 'success', 'PLAIN via response: %s' % ET.tostring(el))
    finally:
        raw.close()


def test_scram_nonce_tampering_fails():
    """A client-final message whose nonce is not the server's must fail."""
    user, pw = srv.new_user('nonce')
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send("<auth xmlns='%s' mechanism='SCRAM-SHA-1'>%s</auth>"
                 % (h.NS_SASL, h._b64(('n,,n=%s,r=clientnonce123' % h.localpart(user)).encode())))
        el = raw.next()
        check(el.tag == '{%s}challenge' % h.NS_SASL, 'challenge: %s' % ET.tostring(el))
        raw.send("<response xmlns='%s'>%s</response>"
                 % (h.NS_SASL, h._b64(b'c=biws,r=clientnonce123forged,p=' + h._b64(b'x' * 20)
                                      .encode())))
        kind, cond, el = h._sasl_result(raw)
        check(kind == 'failure', 'forged nonce accepted: %s' % ET.tostring(el))
    finally:
        raw.close()


def test_starttls_twice_refused():
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send("<starttls xmlns='%s'/>" % h.NS_TLS)
        try:
            el = raw.next()
        except h.StreamClosed:
            return
        check(el.tag != '{%s}proceed' % h.NS_TLS, 'STARTTLS proceeded twice')
    finally:
        raw.close()


def test_direct_tls_alpn():
    """XEP-0368: the direct-TLS port negotiates ALPN xmpp-client."""
    raw = h.Raw(srv.tls_port, direct_tls=True)
    try:
        check(raw.sock.selected_alpn_protocol() == 'xmpp-client',
              'ALPN %r' % raw.sock.selected_alpn_protocol())
        raw.open()
    finally:
        raw.close()


def test_direct_tls_port_rejects_plaintext():
    raw = h.Raw(srv.tls_port)
    try:
        raw.send(raw.header())
        try:
            el = raw.next(timeout=5)
        except (h.StreamClosed, ET.ParseError):
            return
        raise h.TestFailure('plaintext stream accepted on the direct TLS port: %s'
                            % ET.tostring(el))
    except h.TestFailure as e:
        if 'timed out' not in str(e):
            raise
    finally:
        raw.close()


def _tls12_plus(mech, cb_type):
    from OpenSSL import SSL
    user, pw = srv.new_user('tls12')
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.send("<starttls xmlns='%s'/>" % h.NS_TLS)
        check(raw.next().tag == '{%s}proceed' % h.NS_TLS, 'no proceed')
        orig = SSL.Context.__init__

        def ctx12(self, method):
            orig(self, method)
            self.set_max_proto_version(SSL.TLS1_2_VERSION)
        SSL.Context.__init__ = ctx12
        try:
            raw._wrap('openssl')
        finally:
            SSL.Context.__init__ = orig
        check(raw.sock.version() == 'TLSv1.2', 'negotiated %s' % raw.sock.version())
        feats = raw.open()
        check(cb_type in h.channel_bindings(feats), '%s not offered over TLS 1.2: %s'
              % (cb_type, h.channel_bindings(feats)))
        ok, cond = h.scram_auth(raw, mech, h.localpart(user), pw, cb_type=cb_type)
        check(ok, '%s/%s over TLS 1.2: %s' % (mech, cb_type, cond))
    finally:
        raw.close()


def test_tls12_scram_plus_exporter():
    """RFC 9266: tls-exporter over TLS 1.2 (with the extended master secret OpenSSL uses)."""
    _tls12_plus('SCRAM-SHA-256-PLUS', 'tls-exporter')


def test_tls12_scram_plus_server_end_point():
    _tls12_plus('SCRAM-SHA-1-PLUS', 'tls-server-end-point')


def test_tls_min_version_13():
    with h.Server({'tls': {'min_version': '1.3'}}) as s:
        raw = h.Raw(s.port)
        try:
            raw.open()
            raw.send("<starttls xmlns='%s'/>" % h.NS_TLS)
            check(raw.next().tag == '{%s}proceed' % h.NS_TLS, 'no proceed')
            ctx = h._client_ssl_context(max_version=ssl.TLSVersion.TLSv1_2)
            try:
                ctx.wrap_socket(raw.sock, server_hostname=h.DOMAIN)
                raise h.TestFailure('TLS 1.2 handshake succeeded with min_version = 1.3')
            except (ssl.SSLError, OSError):
                pass
        finally:
            raw.close()
        raw = h.Raw(s.tls_port, direct_tls=True)
        try:
            check(raw.sock.version() == 'TLSv1.3', 'negotiated %s' % raw.sock.version())
        finally:
            raw.close()


async def test_non_ascii_credentials():
    """SASLprep (RFC 4013) on usernames and passwords: SCRAM and PLAIN agree."""
    n = os.getpid()
    jid = 'j\u00fcrgen-%d@%s' % (n, srv.domain)
    pw = 'p\u00e4ssw\u00f6rd \u2603'
    srv.add_user(jid, pw)
    for mech in ('SCRAM-SHA-1', 'SCRAM-SHA-256', 'PLAIN'):
        c = await h.connect(srv, jid + '/u', pw, mechs=(mech,))
        check(c.boundjid.bare == jid, 'bound %s' % c.boundjid)
        await c.close()
    user = h.localpart(jid)
    for mech in ('SCRAM-SHA-256', 'SCRAM-SHA-1-PLUS'):
        raw = h.Raw(srv.port)
        try:
            got = await asyncio.to_thread(raw.login, user, pw, mech, 'x')
            check(got == jid + '/x', 'bound %s' % got)
        finally:
            raw.close()


async def test_extension_payload_preserved():
    """Routed stanzas keep unknown extension elements, attributes and escaping intact."""
    a_jid, a_pw = srv.new_user('ext')
    b_jid, b_pw = srv.new_user('ext')
    a = await h.connect(srv, a_jid + '/a', a_pw)
    b = await h.connect(srv, b_jid + '/b', b_pw)
    msg = a.make_message(mto=b.boundjid, mbody='with payload', mtype='chat')
    x = ET.SubElement(msg.xml, '{urn:example:ext}data', {'q': 'a"b\'c<&>', 'n': '1'})
    inner = ET.SubElement(x, '{urn:example:ext}inner')
    inner.text = 'text & <more>'
    ET.SubElement(x, '{urn:example:other}leaf')
    msg.send()
    got = await b.next_message()
    data = got.xml.find('{urn:example:ext}data')
    check(data is not None, 'extension element dropped: %s' % got)
    check(data.get('q') == 'a"b\'c<&>' and data.get('n') == '1', 'attributes %s' % data.attrib)
    check(data.findtext('{urn:example:ext}inner') == 'text & <more>', 'inner text changed')
    check(data.find('{urn:example:other}leaf') is not None, 'namespaced leaf dropped')
    await a.close()
    await b.close()


async def test_message_order_under_load():
    """200 messages from each of three senders arrive complete and in per-sender order."""
    b_jid, b_pw = srv.new_user('sink')
    b = await h.connect(srv, b_jid + '/b', b_pw)
    senders = []
    for _ in range(3):
        jid, pw = srv.new_user('src')
        senders.append(await h.connect(srv, jid + '/s', pw))
    count = 200
    for i in range(count):
        for k, s in enumerate(senders):
            s.send_message(mto=b.boundjid, mbody='%d:%d' % (k, i), mtype='chat')
    seen = {k: [] for k in range(len(senders))}
    for _ in range(count * len(senders)):
        msg = await b.next_message(timeout=20)
        k, i = msg['body'].split(':')
        seen[int(k)].append(int(i))
    for k, got in seen.items():
        check(got == list(range(count)), 'sender %d order/loss: %s...' % (k, got[:20]))
    for c in senders + [b]:
        await c.close()


test_message_order_under_load.timeout = 90


async def test_large_message_delivered_to_slow_reader():
    """~200 kB messages are delivered whole even when the receiver is not reading for a while
    (the server buffers its writes instead of dropping or blocking the sender)."""
    a_jid, a_pw = srv.new_user('big')
    b_jid, b_pw = srv.new_user('big')
    a = await h.connect(srv, a_jid + '/a', a_pw)
    bob = h.Raw(srv.port)
    try:
        b_full = await asyncio.to_thread(bob.login, h.localpart(b_jid), b_pw, 'SCRAM-SHA-256',
                                         'slow')
        await asyncio.to_thread(bob.send, '<presence/>')
        body = ''.join(chr(0x41 + (i % 26)) for i in range(200 * 1024))
        for i in range(5):
            a.send_message(mto=b_full, mbody='%d%s' % (i, body), mtype='chat')
        await a.sync()  # the server took all five from the sender
        await asyncio.sleep(0.5)  # bob deliberately not reading: the server must buffer

        def read_all():
            got = []
            while len(got) < 5:
                el = bob.next(timeout=20)
                if el.tag.endswith('}message'):
                    got.append(el.findtext('{jabber:client}body'))
            return got
        got = await asyncio.to_thread(read_all)
        for i, g in enumerate(got):
            check(g == '%d%s' % (i, body), 'message %d corrupted (len %s)'
                  % (i, len(g) if g else None))
    finally:
        bob.close()
    await a.sync()
    await a.close()


test_large_message_delivered_to_slow_reader.timeout = 90


def test_many_idle_connections():
    """100 half-open connections in different states, then all dropped at once."""
    raws = []
    try:
        for i in range(100):
            r = h.Raw(srv.port)
            if i % 3 == 0:
                r.open()
            elif i % 3 == 1:
                r.send("<?xml version='1.0'?><stream:stream xmlns='jabber:cl")
            raws.append(r)
    finally:
        for r in raws:
            r.close()
    raw, _ = _session()
    try:
        _ping(raw)
    finally:
        raw.close()


def test_hide_version():
    with h.Server({'server': {'hide_version': 'true'}}) as s:
        user, pw = s.new_user('hv')
        raw, _ = h.authed_raw(s, h.localpart(user), pw)
        try:
            raw.send("<iq type='get' id='v' to='%s'><query xmlns='jabber:iq:version'/></iq>"
                     % s.domain)
            el = raw.next()
            refused = el.get('type') == 'error'
            if refused:
                check(h.stanza_error(el) == 'service-unavailable', 'version: %s'
                      % ET.tostring(el))
            else:
                check(el.findtext('{jabber:iq:version}query/{jabber:iq:version}version')
                      is None, 'hide_version = true still reveals %s' % ET.tostring(el))
            raw.send("<iq type='get' id='d' to='%s'><query "
                     "xmlns='http://jabber.org/protocol/disco#info'/></iq>" % s.domain)
            el = raw.next()
            feats = [f.get('var') for f in
                     el.iter('{http://jabber.org/protocol/disco#info}feature')]
            check(not (refused and 'jabber:iq:version' in feats),
                  'version refused but still listed in disco#info')
        finally:
            raw.close()
