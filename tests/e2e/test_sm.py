"""XEP-0198 stream management: enabling, acks, resumption after a dropped connection, and what
happens to unacknowledged stanzas when a session ends. Raw streams keep exact 'h' counts; one
slixmpp client checks interoperability."""

import xml.etree.ElementTree as ET

import harness as h
from harness import check

NS_SM = 'urn:xmpp:sm:3'
NS_DELAY = 'urn:xmpp:delay'
NS_PING = 'urn:xmpp:ping'
STANZAS = tuple('{jabber:client}%s' % n for n in ('message', 'presence', 'iq'))

srv = None   # resume_timeout 300 (the default)
srv2 = None  # resume_timeout 2, max_unacked 10


def setup_module():
    global srv, srv2
    srv = h.Server().start()
    srv2 = h.Server({'sm': {'resume_timeout': '2', 'max_unacked': '10'}}).start()


def teardown_module():
    srv.stop()
    srv2.stop()


def sm(name):
    return '{%s}%s' % (NS_SM, name)


def text(el):
    return ET.tostring(el).decode()


class Sm:
    """A raw stream that counts the stanzas it handled (its 'h') and sets server <r/> aside."""

    def __init__(self, raw, jid=None):
        self.raw = raw
        self.jid = jid
        self.h = 0
        self.requests = 0
        self.sm_id = None

    def send(self, data):
        self.raw.send(data)

    def next(self, timeout=None):
        while True:
            el = self.raw.next(timeout)
            if el.tag == sm('r'):
                self.requests += 1
                continue
            if el.tag in STANZAS:
                self.h += 1
            return el

    def expect(self, tag, what=None):
        el = self.next()
        check(el.tag == tag, 'expected %s, got %s' % (what or tag, text(el)))
        return el

    def ping(self, ident):
        """A round trip to the server: everything sent before it has been processed."""
        self.send("<iq type='get' id='%s' to='%s'><ping xmlns='%s'/></iq>"
                  % (ident, h.DOMAIN, NS_PING))
        el = self.next()
        check(el.tag == '{jabber:client}iq' and el.get('id') == ident and
              el.get('type') == 'result', 'ping %s: %s' % (ident, text(el)))

    def sync(self, ident):
        """Like ping(), setting aside (and returning) whatever arrives before the result."""
        self.send("<iq type='get' id='%s' to='%s'><ping xmlns='%s'/></iq>"
                  % (ident, h.DOMAIN, NS_PING))
        others = []
        while True:
            el = self.next()
            if el.tag == '{jabber:client}iq' and el.get('id') == ident:
                return others
            others.append(el)

    def enable(self, resume=True):
        self.send("<enable xmlns='%s'%s/>" % (NS_SM, " resume='true'" if resume else ''))
        el = self.expect(sm('enabled'))
        self.sm_id = el.get('id')
        self.h = 0  # XEP-0198 §4: counting starts now
        return el

    def ack(self, h=None):
        self.send("<a xmlns='%s' h='%d'/>" % (NS_SM, self.h if h is None else h))

    def close(self):
        self.raw.close()


def bound(s, user, pw, resource=None):
    raw, jid = h.authed_raw(s, h.localpart(user), pw, resource=resource)
    return Sm(raw, jid)


def authenticated(s, user, pw):
    """A new stream after SASL (not bound): returns (Sm, stream features)."""
    raw = h.Raw(s.port)
    raw.open()
    raw.starttls()
    raw.open()
    ok, cond = h.scram_auth(raw, 'SCRAM-SHA-256', h.localpart(user), pw)
    check(ok, 'auth: %s' % cond)
    return Sm(raw), raw.open()


def resume(s, user, pw, previd, handled):
    """Authenticates a new stream and sends <resume/>; returns (Sm, the answer element)."""
    c, _ = authenticated(s, user, pw)
    c.send("<resume xmlns='%s' previd='%s' h='%d'/>" % (NS_SM, previd, handled))
    return c, c.next()


def message(to, body, ident):
    return ("<message to='%s' type='chat' id='%s'><body>%s</body></message>"
            % (to, ident, body))


def body_of(el):
    b = el.find('{jabber:client}body')
    return b.text if b is not None else None


def log_count(s, needle):
    return s.log().count(needle)


def wait_log(s, needle, before, timeout=10):
    h.wait_until(lambda: log_count(s, needle) > before, timeout, 'log line %r' % needle)


def drop(s, c):
    """Closes the TCP connection without closing the stream; waits until the server kept the
    session for resumption."""
    before = log_count(s, 'session kept')
    c.close()
    wait_log(s, 'session kept', before)


def failed_condition(el):
    check(el.tag == sm('failed'), 'expected <failed/>, got %s' % text(el))
    conds = [c.tag.split('}')[1] for c in el if c.tag.startswith('{%s}' % h.NS_STANZAS)]
    return conds[0] if conds else None


# --------------------------------------------------------------------------- enabling and acks


def test_feature_only_after_auth_and_enable_after_bind():
    user, pw = srv.new_user('sm')
    raw = h.Raw(srv.port)
    try:
        feats = raw.open()
        check(feats.find(sm('sm')) is None, 'SM offered before authentication')
        raw.starttls()
        feats = raw.open()
        check(feats.find(sm('sm')) is None, 'SM offered before authentication')
        ok, cond = h.scram_auth(raw, 'SCRAM-SHA-256', h.localpart(user), pw)
        check(ok, 'auth: %s' % cond)
        feats = raw.open()
        check(feats.find(sm('sm')) is not None, 'no <sm/> feature after auth: %s' % text(feats))
        c = Sm(raw)
        # XEP-0198 §3: not before binding.
        c.send("<enable xmlns='%s' resume='true'/>" % NS_SM)
        check(failed_condition(c.next()) == 'unexpected-request', 'enable before bind')
        c.jid = raw.bind()
        el = c.enable()
        check(el.get('resume') in ('true', '1') and el.get('id'), 'not resumable: %s' % text(el))
        check(el.get('max') == '300', 'max should be the configured timeout: %s' % text(el))
        # Once only.
        c.send("<enable xmlns='%s'/>" % NS_SM)
        check(failed_condition(c.next()) == 'unexpected-request', 'second enable accepted')
        c.send("<r xmlns='%s'/>" % NS_SM)
        a = c.expect(sm('a'))
        check(a.get('h') == '0', 'nothing sent yet, got %s' % text(a))
    finally:
        raw.close()


def test_enable_max_lowers_timeout_and_plain_enable():
    user, pw = srv.new_user('sm')
    c = bound(srv, user, pw)
    try:
        c.send("<enable xmlns='%s' resume='1' max='42'/>" % NS_SM)
        el = c.expect(sm('enabled'))
        check(el.get('max') == '42' and el.get('id'), 'client max not honoured: %s' % text(el))
    finally:
        c.close()
    c = bound(srv, user, pw)
    try:
        el = c.enable(resume=False)
        check(el.get('id') is None and el.get('resume') is None,
              'resumption offered though not requested: %s' % text(el))
    finally:
        c.close()


def test_r_and_a_exchange_and_handled_count_too_high():
    user, pw = srv.new_user('sm')
    c = bound(srv, user, pw)
    try:
        c.enable(resume=False)
        c.ping('p1')
        c.ping('p2')
        c.send("<r xmlns='%s'/>" % NS_SM)
        a = c.expect(sm('a'))
        check(a.get('h') == '2', 'server handled two stanzas, said %s' % text(a))
        # The server asks on its own for an ack of what it sent (two ping results).
        if not c.requests:
            el = c.raw.next(h.IO_TIMEOUT)
            check(el.tag == sm('r'), 'expected the server to request an ack, got %s' % text(el))
        c.ack()  # h = 2: fine
        c.ping('p3')
        c.ack(5)  # five, but only three were sent
        err = c.raw.expect_stream_error('undefined-condition')
        too_high = err.find('{%s}handled-count-too-high' % NS_SM)
        check(too_high is not None and too_high.get('h') == '5' and
              too_high.get('send-count') == '3', 'handled-count-too-high: %s' % text(err))
    finally:
        c.close()


def test_ack_without_sm_and_bad_h():
    user, pw = srv.new_user('sm')
    c = bound(srv, user, pw)
    try:
        c.send("<r xmlns='%s'/>" % NS_SM)
        c.raw.expect_stream_error('unsupported-stanza-type')
    finally:
        c.close()
    c = bound(srv, user, pw)
    try:
        c.enable(resume=False)
        c.send("<a xmlns='%s' h='-1'/>" % NS_SM)
        c.raw.expect_stream_error('invalid-xml')
    finally:
        c.close()


# --------------------------------------------------------------------------- resumption


def test_resume_after_dropped_connection_loses_nothing():
    a_user, a_pw = srv.new_user('alice')
    b_user, b_pw = srv.new_user('bob')
    a = bound(srv, a_user, a_pw, resource='phone')
    b = bound(srv, b_user, b_pw)
    a2 = None
    try:
        a.enable()
        a.ping('p1')                       # the server handled 1 stanza of ours
        b.send(message(a.jid, 'one', 'm1'))
        check(body_of(a.expect('{jabber:client}message')) == 'one', 'm1 not delivered')
        drop(srv, a)                       # m1 arrived but was never acknowledged
        b.send(message(a.jid, 'two', 'm2'))
        b.ping('b1')
        # Resume saying we handled only the ping result: m1 and m2 must come (again).
        a2, el = resume(srv, a_user, a_pw, a.sm_id, 1)
        check(el.tag == sm('resumed') and el.get('previd') == a.sm_id and el.get('h') == '1',
              'expected <resumed h=1/>, got %s' % text(el))
        bodies = [body_of(a2.expect('{jabber:client}message')) for _ in range(2)]
        check(bodies == ['one', 'two'], 'retransmitted %s' % bodies)
        check('resumed on' in srv.log(), 'log does not say the session resumed')
        # Same full JID, same session: new traffic reaches the new connection.
        b.send(message(a.jid, 'three', 'm3'))
        check(body_of(a2.expect('{jabber:client}message')) == 'three', 'm3 not delivered')
        a2.ping('p2')
        a2.send("<r xmlns='%s'/>" % NS_SM)
        ack = a2.expect(sm('a'))
        check(ack.get('h') == '2', 'inbound count continues across resumption: %s' % text(ack))
        # The sender never saw an error.
        b.raw.expect_silence(0.3)
        a2.send('</stream:stream>')
        a2.raw.expect_close()
    finally:
        for c in (a, b, a2):
            if c:
                c.close()


def test_resume_unknown_previd_then_bind():
    user, pw = srv.new_user('sm')
    c, _ = authenticated(srv, user, pw)
    try:
        c.send("<resume xmlns='%s' previd='no-such-session' h='0'/>" % NS_SM)
        el = c.next()
        check(failed_condition(el) == 'item-not-found', 'unknown previd: %s' % text(el))
        check(el.get('h') is None, 'h for a session never known: %s' % text(el))
        # XEP-0198 §5: the client may bind a resource now.
        jid = c.raw.bind()
        check(jid.startswith(user + '/'), 'bound %s' % jid)
    finally:
        c.close()


def test_resume_needs_the_same_account():
    a_user, a_pw = srv.new_user('alice')
    m_user, m_pw = srv.new_user('mallory')
    a = bound(srv, a_user, a_pw)
    m = a2 = None
    try:
        a.enable()
        drop(srv, a)
        m, el = resume(srv, m_user, m_pw, a.sm_id, 0)
        check(failed_condition(el) == 'item-not-found' and el.get('h') is None,
              "another account resumed or learnt of the session: %s" % text(el))
        a2, el = resume(srv, a_user, a_pw, a.sm_id, 0)
        check(el.tag == sm('resumed'), 'owner could not resume: %s' % text(el))
    finally:
        for c in (a, m, a2):
            if c:
                c.close()


def test_resume_twice_then_clean_close_ends_it():
    user, pw = srv.new_user('sm')
    a = bound(srv, user, pw)
    conns = [a]
    try:
        a.enable()
        a.ping('p1')
        drop(srv, a)
        a2, el = resume(srv, user, pw, a.sm_id, 1)
        conns.append(a2)
        check(el.tag == sm('resumed') and el.get('h') == '1', 'first resume: %s' % text(el))
        a2.ping('p2')
        drop(srv, a2)
        # The SM-ID stays the session's: a second drop resumes the same way.
        a3, el = resume(srv, user, pw, a.sm_id, 2)
        conns.append(a3)
        check(el.tag == sm('resumed') and el.get('h') == '2', 'second resume: %s' % text(el))
        before = log_count(srv, 'disconnected')
        a3.send('</stream:stream>')
        a3.raw.expect_close()
        wait_log(srv, 'disconnected', before)
        # XEP-0198 §7: a clean close ends the session; the final h is still told.
        a4, el = resume(srv, user, pw, a.sm_id, 2)
        conns.append(a4)
        check(failed_condition(el) == 'item-not-found' and el.get('h') == '2',
              'resumed a cleanly closed session: %s' % text(el))
    finally:
        for c in conns:
            c.close()


def test_resume_while_old_connection_is_up():
    a_user, a_pw = srv.new_user('alice')
    b_user, b_pw = srv.new_user('bob')
    a = bound(srv, a_user, a_pw, resource='laptop')
    b = bound(srv, b_user, b_pw)
    a2 = None
    try:
        a.enable()
        a2, el = resume(srv, a_user, a_pw, a.sm_id, 0)
        check(el.tag == sm('resumed'), 'resume: %s' % text(el))
        a.raw.expect_stream_error('conflict')  # XEP-0198 §5: the old stream is terminated
        b.send(message(a.jid, 'hello', 'm1'))
        check(body_of(a2.expect('{jabber:client}message')) == 'hello', 'not delivered')
    finally:
        for c in (a, b, a2):
            if c:
                c.close()


def test_resume_with_h_beyond_sent_fails():
    a_user, a_pw = srv.new_user('alice')
    b_user, b_pw = srv.new_user('bob')
    a = bound(srv, a_user, a_pw)
    b = bound(srv, b_user, b_pw)
    conns = [a, b]
    try:
        a.enable()
        b.send(message(a.jid, 'one', 'm1'))
        a.expect('{jabber:client}message')
        drop(srv, a)
        a2, el = resume(srv, a_user, a_pw, a.sm_id, 7)
        conns.append(a2)
        check(failed_condition(el) == 'undefined-condition' and el.get('h') == '0',
              'h beyond what was sent: %s' % text(el))
        # The session is still there for a correct attempt.
        a3, el = resume(srv, a_user, a_pw, a.sm_id, 0)
        conns.append(a3)
        check(el.tag == sm('resumed'), 'resume: %s' % text(el))
        check(body_of(a3.expect('{jabber:client}message')) == 'one', 'm1 not retransmitted')
    finally:
        for c in conns:
            c.close()


def test_resume_rejected_on_bound_stream():
    user, pw = srv.new_user('sm')
    c = bound(srv, user, pw)
    try:
        c.send("<resume xmlns='%s' previd='x' h='0'/>" % NS_SM)
        check(failed_condition(c.next()) == 'unexpected-request', 'resume after bind')
    finally:
        c.close()


# --------------------------------------------------------------------------- sessions that end


def fresh_login_messages(s, user, pw, count, resource='fresh'):
    """Logs in anew with available presence and returns the bodies of the first count
    messages (offline storage delivers them), with their delay elements."""
    c = bound(s, user, pw, resource=resource)
    try:
        c.send('<presence/>')
        got = []
        while len(got) < count:
            el = c.next()
            if el.tag == '{jabber:client}message':
                got.append((body_of(el), el.find('{%s}delay' % NS_DELAY)))
        return got
    finally:
        c.close()


def test_timeout_sends_unacked_messages_to_offline_storage():
    a_user, a_pw = srv2.new_user('alice')
    b_user, b_pw = srv2.new_user('bob')
    a = bound(srv2, a_user, a_pw, resource='phone')
    b = bound(srv2, b_user, b_pw)
    conns = [a, b]
    try:
        a.enable()
        b.send(message(a.jid, 'one', 'm1'))
        a.expect('{jabber:client}message')
        b.send("<iq type='get' id='q1' to='%s'><ping xmlns='%s'/></iq>" % (a.jid, NS_PING))
        a.expect('{jabber:client}iq')      # received, never answered nor acknowledged
        drop(srv2, a)
        b.send(message(a.jid, 'two', 'm2'))  # queued in the detached session
        before = log_count(srv2, 'not resumed in time')
        wait_log(srv2, 'not resumed in time', before)
        # XEP-0198 §5: the unanswered IQ request gets an error, as for an unavailable resource.
        err = b.next()
        check(err.tag == '{jabber:client}iq' and err.get('id') == 'q1' and
              err.get('type') == 'error' and h.stanza_error(err) == 'service-unavailable',
              'expected an error for the IQ, got %s' % text(err))
        got = fresh_login_messages(srv2, a_user, a_pw, 2)
        check([g[0] for g in got] == ['one', 'two'], 'offline messages: %s' % got)
        check(all(d is not None and d.get('stamp') for _, d in got),
              'redelivered messages carry no delay: %s' % got)
        # The session is gone; its final count is remembered.
        a2, el = resume(srv2, a_user, a_pw, a.sm_id, 0)
        conns.append(a2)
        check(failed_condition(el) == 'item-not-found' and el.get('h') == '0',
              'expired session: %s' % text(el))
    finally:
        for c in conns:
            c.close()


def test_non_resumable_session_redelivers_unacked():
    a_user, a_pw = srv.new_user('alice')
    b_user, b_pw = srv.new_user('bob')
    a = bound(srv, a_user, a_pw)
    b = bound(srv, b_user, b_pw)
    try:
        a.enable(resume=False)
        b.send(message(a.jid, 'acked', 'm0'))
        a.expect('{jabber:client}message')
        a.ping('p1')
        a.ack()                             # m0 and the ping result
        b.send(message(a.jid, 'unacked', 'm1'))
        a.expect('{jabber:client}message')
        before = log_count(srv, 'redelivering 1 unacknowledged')
        a.close()
        wait_log(srv, 'redelivering 1 unacknowledged', before)
        got = fresh_login_messages(srv, a_user, a_pw, 1)
        check(got[0][0] == 'unacked', 'offline: %s' % got)
    finally:
        a.close()
        b.close()


def test_too_many_unacked_ends_the_session():
    a_user, a_pw = srv2.new_user('alice')
    b_user, b_pw = srv2.new_user('bob')
    a = bound(srv2, a_user, a_pw)
    b = bound(srv2, b_user, b_pw)
    try:
        a.enable()
        for i in range(11):
            b.send(message(a.jid, 'n%d' % i, 'm%d' % i))
        a.raw.expect_stream_error('resource-constraint')
        got = fresh_login_messages(srv2, a_user, a_pw, 11)
        check([g[0] for g in got] == ['n%d' % i for i in range(11)], 'offline: %s' % got)
        b.raw.expect_silence(0.3)
    finally:
        a.close()
        b.close()


def test_binding_the_same_resource_replaces_a_detached_session():
    a_user, a_pw = srv.new_user('alice')
    b_user, b_pw = srv.new_user('bob')
    a = bound(srv, a_user, a_pw, resource='phone')
    b = bound(srv, b_user, b_pw)
    conns = [a, b]
    try:
        a.enable()
        drop(srv, a)
        b.send(message(a.jid, 'queued', 'm1'))
        b.sync('b1')
        # RFC 6120 §7.7.2.2: the new session wins; the waiting one ends and what it held is
        # redelivered (here: offline storage, nobody being available yet).
        got = fresh_login_messages(srv, a_user, a_pw, 1, resource='phone')
        check(got[0][0] == 'queued', 'redelivered: %s' % got)
        a2, el = resume(srv, a_user, a_pw, a.sm_id, 0)
        conns.append(a2)
        check(failed_condition(el) == 'item-not-found', 'replaced session resumed: %s' % text(el))
    finally:
        for c in conns:
            c.close()


def test_shutdown_sends_detached_sessions_messages_offline():
    s = h.Server().start()
    try:
        a_user, a_pw = s.new_user('alice')
        b_user, b_pw = s.new_user('bob')
        a = bound(s, a_user, a_pw)
        b = bound(s, b_user, b_pw)
        a.enable()
        b.send(message(a.jid, 'before shutdown', 'm1'))
        a.expect('{jabber:client}message')
        drop(s, a)
        b.close()
        s.restart()  # exits 0, clean log
        got = fresh_login_messages(s, a_user, a_pw, 1)
        check(got[0][0] == 'before shutdown', 'after restart: %s' % got)
    finally:
        s.stop()


# --------------------------------------------------------------------------- interoperability


async def test_slixmpp_stream_management():
    a_user, a_pw = srv.new_user('alice')
    b_user, b_pw = srv.new_user('bob')
    before = log_count(srv, 'stream management on (resumable)')
    a = await h.connect(srv, a_user + '/sm', a_pw, plugins=('xep_0198',))
    b = await h.connect(srv, b_user, b_pw)
    h.wait_until(lambda: log_count(srv, 'stream management on (resumable)') > before,
                 h.IO_TIMEOUT,
                 'slixmpp enabling resumable stream management')
    b.send_message(mto=a.boundjid, mbody='hi', mtype='chat')
    msg = await a.next_message()
    check(msg['body'] == 'hi', 'got %s' % msg)
    await a.sync()
    await a.close()
    await b.close()
