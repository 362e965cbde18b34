"""Malformed and hostile input on c2s streams: each case must end in the exact RFC 6120 §4.9.3
stream error, the stream closed, and the server unharmed (the runner checks it is alive with a
clean log after every test)."""

import asyncio

import harness as h
from harness import check

srv = None
small = None  # max_stanza_size = SMALL_LIMIT
SMALL_LIMIT = 16384


def setup_module():
    global srv, small
    srv = h.Server().start()
    small = h.Server({'server': {'max_stanza_size': str(SMALL_LIMIT)}}).start()


def teardown_module():
    srv.stop()
    small.stop()


def _after_header(payload, condition, header_kw=None, server=None):
    """Opens a plain stream, sends payload, expects <condition/>."""
    raw = h.Raw((server or srv).port)
    try:
        raw.open(**(header_kw or {}))
        raw.send(payload)
        return raw.expect_stream_error(condition)
    finally:
        raw.close()


def _header_error(header, condition):
    """Sends a bad stream header; the server answers with its own header, then the error."""
    raw = h.Raw(srv.port)
    try:
        raw.send(header)
        el = raw.expect_stream_error(condition)
        check(raw.stream_attrs is not None, 'no stream header before the error')
        return el
    finally:
        raw.close()


def _authed(server, user_prefix='s'):
    user, pw = server.new_user(user_prefix)
    raw, jid = h.authed_raw(server, h.localpart(user), pw)
    return raw, jid


def test_not_well_formed_mismatched_tag():
    _after_header('<message><body>x</message>', 'not-well-formed')


def test_not_well_formed_garbage_instead_of_header():
    _header_error('hello, this is not XML\r\n\r\n', 'not-well-formed')


def test_not_well_formed_bad_utf8():
    _after_header(b"<message><body>\xff\xfe\xc3\x28</body></message>", 'not-well-formed')


def test_not_well_formed_unquoted_attribute():
    _after_header("<message to=bob@localhost><body>x</body></message>", 'not-well-formed')


def test_not_well_formed_after_auth_over_tls():
    raw, _ = _authed(srv)
    try:
        raw.send("<message><body>ok</body></message><iq type='get'><<<</iq>")
        raw.expect_stream_error('not-well-formed')
    finally:
        raw.close()


def test_doctype_restricted_xml():
    _header_error("<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY x 'boom'>]>"
                  + h.Raw.header()[len("<?xml version='1.0'?>"):], 'restricted-xml')


def test_doctype_after_tls_restricted_xml():
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw._reset()
        raw.send("<?xml version='1.0'?><!DOCTYPE lol SYSTEM 'file:///etc/passwd'>"
                 + raw.header()[len("<?xml version='1.0'?>"):])
        raw.expect_stream_error('restricted-xml')
    finally:
        raw.close()


def test_comment_restricted_xml():
    _after_header('<!-- a comment -->', 'restricted-xml')


def test_comment_inside_stanza_restricted_xml():
    _after_header('<message><!-- sneaky --><body>x</body></message>', 'restricted-xml')


def test_processing_instruction_restricted_xml():
    _after_header("<?evil data='1'?>", 'restricted-xml')


def test_undefined_entity_refused():
    """An entity reference other than the five predefined ones (XML 1.0 §4.1) cannot be
    resolved without a DTD: restricted-xml (RFC 6120 §11.1) or, strictly, not-well-formed."""
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.send('<message><body>&xxe;</body></message>')
        raw.expect_stream_error_any(('restricted-xml', 'not-well-formed'))
    finally:
        raw.close()


async def test_predefined_entities_and_char_refs_delivered():
    """The five predefined entities and character references are ordinary XML and must pass."""
    a_jid, a_pw = srv.new_user('ent')
    b_jid, b_pw = srv.new_user('ent')
    b = await h.connect(srv, b_jid + '/b', b_pw)

    def send():
        raw, _ = h.authed_raw(srv, h.localpart(a_jid), a_pw, resource='r')
        raw.send("<message to='%s' type='chat'><body>&lt;&amp;&gt;&quot;&apos;&#65;&#x42;"
                 "\u00e9\u4e2d</body></message>" % b.boundjid)
        raw.send("<iq type='get' id='sync' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>"
                 % srv.domain)
        el = raw.next()
        check(el.get('id') == 'sync' and el.get('type') == 'result', 'sync: %r'
              % raw.received[-300:])
        raw.close()
    await asyncio.to_thread(send)
    msg = await b.next_message()
    check(msg['body'] == '<&>"\'AB\u00e9\u4e2d', 'body %r' % msg['body'])
    await b.close()


def test_wrong_stream_namespace_invalid_namespace():
    _header_error(h.Raw.header(stream_ns='http://etherx.example.org/streams'),
                  'invalid-namespace')


def test_wrong_content_namespace_invalid_namespace():
    _header_error(h.Raw.header(ns='urn:example:not-a-client'), 'invalid-namespace')


def test_wrong_root_element():
    _header_error("<?xml version='1.0'?><stream xmlns='jabber:client' to='localhost' "
                  "version='1.0'>", 'invalid-namespace')


def test_unknown_host_host_unknown():
    _header_error(h.Raw.header(to='unknown.example'), 'host-unknown')


def test_unknown_host_after_tls_host_unknown():
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw._reset()
        raw.send(raw.header(to='other.example'))
        raw.expect_stream_error('host-unknown')
    finally:
        raw.close()


def test_unsupported_version():
    _header_error(h.Raw.header(version='2.0'), 'unsupported-version')


def test_header_sent_byte_by_byte():
    """A header that arrives one byte per segment still yields features (no framing bugs)."""
    raw = h.Raw(srv.port)
    try:
        raw.sock.setsockopt(h.socket.IPPROTO_TCP, h.socket.TCP_NODELAY, 1)
        for b in raw.header().encode():
            raw.send(bytes([b]))
        raw.wait_header()
        el = raw.next()
        check(el.tag == '{%s}features' % h.NS_STREAM, 'got %r' % raw.received)
    finally:
        raw.close()


def _big_message(size, to='nobody@localhost'):
    return "<message to='%s'><body>%s</body></message>" % (to, 'A' * size)


def test_oversized_stanza_before_auth_policy_violation():
    raw = h.Raw(small.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send(_big_message(SMALL_LIMIT * 2))
        raw.expect_stream_error('policy-violation')
    finally:
        raw.close()


def test_oversized_unterminated_stanza_policy_violation():
    """The limit applies while the stanza is still open: the server must not buffer forever."""
    raw = h.Raw(small.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send("<message><body>")
        raw.send('B' * (SMALL_LIMIT + 512))
        raw.expect_stream_error('policy-violation')
    finally:
        raw.close()


def test_oversized_stanza_after_auth_policy_violation():
    raw, _ = _authed(small)
    try:
        raw.send(_big_message(SMALL_LIMIT * 2))
        raw.expect_stream_error('policy-violation')
    finally:
        raw.close()


def test_oversized_attribute_policy_violation():
    raw, _ = _authed(small)
    try:
        raw.send("<message to='x@localhost' id='%s'/>" % ('i' * (SMALL_LIMIT * 2)))
        raw.expect_stream_error('policy-violation')
    finally:
        raw.close()


async def test_stanza_below_limit_delivered():
    a_jid, a_pw = small.new_user('lim')
    b_jid, b_pw = small.new_user('lim')
    a = await h.connect(small, a_jid + '/a', a_pw)
    b = await h.connect(small, b_jid + '/b', b_pw)
    body = 'x' * (SMALL_LIMIT // 2)
    a.send_message(mto=b.boundjid, mbody=body, mtype='chat')
    msg = await b.next_message()
    check(msg['body'] == body, 'body of %d bytes arrived as %d' % (len(body), len(msg['body'])))
    await a.close()
    await b.close()


def test_deep_nesting_survives():
    """Thousands of nested elements inside one stanza: an error or delivery, never a crash."""
    raw, jid = _authed(srv)
    try:
        depth = 5000
        raw.send("<message to='%s'>%s%s</message>" % (jid, '<a>' * depth, '</a>' * depth))
        raw.send("<iq type='get' id='after' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>"
                 % srv.domain)
        while True:
            try:
                el = raw.next()
            except h.StreamClosed:
                # A reset (we were still sending when the server closed) may eat the error.
                check(b'<stream:error>' in raw.received or raw.send_failed,
                      'stream closed without an error: %r' % raw.received[-300:])
                return
            if el.tag == '{%s}error' % h.NS_STREAM or el.get('id') == 'after':
                return
    finally:
        raw.close()


def test_abrupt_disconnect_mid_stanza():
    raw, _ = _authed(srv)
    raw.send("<message to='x@localhost'><body>half a sta")
    raw.close()
    raw = h.Raw(srv.port)
    raw.open()
    raw.close()


def test_close_stream_politely():
    """Our </stream:stream> is answered with the server's (RFC 6120 §4.4)."""
    raw, _ = _authed(srv)
    try:
        raw.send('</stream:stream>')
        raw.expect_close()
    finally:
        raw.close()
