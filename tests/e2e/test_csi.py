"""XEP-0352 client state indication: while inactive, availability presence (the latest per
sender) and chat-state-only messages wait; anything else flushes them first, in order; <active/>
flushes; stream management counts only what was sent; a resumed stream starts active."""

import harness as h
from harness import check
from test_sm import NS_SM, authenticated, bound, body_of, drop, resume, sm, text

NS_CSI = 'urn:xmpp:csi:0'
NS_CHATSTATES = 'http://jabber.org/protocol/chatstates'

srv = None


def setup_module():
    global srv
    srv = h.Server().start()


def teardown_module():
    srv.stop()


def available(c, resource_count):
    """Sends initial presence and reads the presence of each of the account's resources."""
    c.send('<presence/>')
    for _ in range(resource_count):
        c.expect('{jabber:client}presence')


def setup_account():
    """Two resources of one account (presence between them needs no roster) and a contact.
    Returns (a1, a2, b), a1 and a2 available and aware of each other."""
    a_user, a_pw = srv.new_user('alice')
    b_user, b_pw = srv.new_user('bob')
    a1 = bound(srv, a_user, a_pw, resource='phone')
    a2 = bound(srv, a_user, a_pw, resource='desk')
    b = bound(srv, b_user, b_pw)
    available(a1, 1)
    available(a2, 2)
    a1.expect('{jabber:client}presence')  # desk's initial presence
    a1.ping('sync')
    return a1, a2, b, (a_user, a_pw)


def set_state(c, state):
    c.send("<%s xmlns='%s'/>" % (state, NS_CSI))
    c.ping('state-' + state)  # processed before anything that follows


def chat_state(to):
    return ("<message to='%s' type='chat'><composing xmlns='%s'/></message>"
            % (to, NS_CHATSTATES))


def show_of(el):
    s = el.find('{jabber:client}show')
    return s.text if s is not None else None


def close_all(*conns):
    for c in conns:
        if c:
            c.close()


def test_feature_advertised_after_auth():
    user, pw = srv.new_user('csi')
    c = bound(srv, user, pw)
    close_all(c)
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        feats = raw.open()
        check(feats.find('{%s}csi' % NS_CSI) is None, 'CSI offered before authentication')
        ok, cond = h.scram_auth(raw, 'SCRAM-SHA-256', h.localpart(user), pw)
        check(ok, 'auth: %s' % cond)
        feats = raw.open()
        check(feats.find('{%s}csi' % NS_CSI) is not None, 'no <csi/> feature: %s' % text(feats))
    finally:
        raw.close()


def test_inactive_holds_presence_and_chat_states_until_a_body():
    a1, a2, b, _ = setup_account()
    try:
        set_state(a1, 'inactive')
        for show in ('away', 'xa', 'dnd'):
            a2.send('<presence><show>%s</show></presence>' % show)
        a2.sync('p')
        b.send(chat_state(a1.jid))
        b.sync('p')
        a1.raw.expect_silence(0.5)
        b.send("<message to='%s' type='chat' id='important'><body>wake up</body></message>"
               % a1.jid)
        # Held stanzas first, in order (only desk's latest presence), then the message.
        p = a1.expect('{jabber:client}presence')
        check(p.get('from') == a2.jid and show_of(p) == 'dnd', 'held presence: %s' % text(p))
        m = a1.expect('{jabber:client}message')
        check(m.find('{%s}composing' % NS_CHATSTATES) is not None and body_of(m) is None,
              'held chat state: %s' % text(m))
        m = a1.expect('{jabber:client}message')
        check(body_of(m) == 'wake up', 'the message itself: %s' % text(m))
        a1.raw.expect_silence(0.3)
    finally:
        close_all(a1, a2, b)


def test_message_with_body_passes_at_once():
    a1, a2, b, _ = setup_account()
    try:
        set_state(a1, 'inactive')
        b.send("<message to='%s' type='chat'><body>now</body></message>" % a1.jid)
        m = a1.expect('{jabber:client}message')
        check(body_of(m) == 'now', 'got %s' % text(m))
    finally:
        close_all(a1, a2, b)


def test_active_flushes():
    a1, a2, b, _ = setup_account()
    try:
        set_state(a1, 'inactive')
        a2.send('<presence><show>away</show></presence>')
        a2.sync('p')
        a1.raw.expect_silence(0.3)
        a1.send("<active xmlns='%s'/>" % NS_CSI)
        p = a1.expect('{jabber:client}presence')
        check(p.get('from') == a2.jid and show_of(p) == 'away', 'flushed: %s' % text(p))
        # Active again: presence flows at once.
        a2.send('<presence><show>chat</show></presence>')
        p = a1.expect('{jabber:client}presence')
        check(show_of(p) == 'chat', 'after active: %s' % text(p))
    finally:
        close_all(a1, a2, b)


def test_subscription_request_is_not_held():
    a1, a2, b, (a_user, _) = setup_account()
    try:
        set_state(a1, 'inactive')
        a2.send('<presence><show>away</show></presence>')
        a2.sync('p')
        b.send("<presence to='%s' type='subscribe'/>" % a_user)
        p = a1.expect('{jabber:client}presence')
        check(p.get('from') == a2.jid, 'held presence first: %s' % text(p))
        p = a1.expect('{jabber:client}presence')
        check(p.get('type') == 'subscribe', 'subscription request: %s' % text(p))
    finally:
        close_all(a1, a2, b)


def test_stream_management_counts_only_what_was_sent():
    a1, a2, b, _ = setup_account()
    try:
        a1.enable(resume=False)
        set_state(a1, 'inactive')            # the ping result is stanza 1
        a2.send('<presence><show>away</show></presence>')
        a2.sync('p')
        a1.ack(1)                            # fine: one stanza sent so far
        a1.send("<a xmlns='%s' h='2'/>" % NS_SM)  # the held presence was never sent
        err = a1.raw.expect_stream_error('undefined-condition')
        too_high = err.find('{%s}handled-count-too-high' % NS_SM)
        check(too_high is not None and too_high.get('send-count') == '1',
              'held stanza counted as sent: %s' % text(err))
    finally:
        close_all(a1, a2, b)


def test_resumed_stream_starts_active():
    a1, a2, b, (a_user, a_pw) = setup_account()
    a3 = None
    try:
        a1.enable()
        set_state(a1, 'inactive')
        a2.send('<presence><show>xa</show></presence>')
        a2.sync('p')
        drop(srv, a1)
        a3, el = resume(srv, a_user, a_pw, a1.sm_id, a1.h)
        check(el.tag == sm('resumed'), 'resume: %s' % text(el))
        p = a3.expect('{jabber:client}presence')
        check(p.get('from') == a2.jid and show_of(p) == 'xa',
              'XEP-0352 §5.2: held presence after resumption: %s' % text(p))
    finally:
        close_all(a1, a2, b, a3)


def test_nonza_before_bind_is_ignored_and_unknown_is_an_error():
    user, pw = srv.new_user('csi')
    c = bound(srv, user, pw)
    try:
        c.send("<bogus xmlns='%s'/>" % NS_CSI)
        c.raw.expect_stream_error('unsupported-stanza-type')
    finally:
        c.close()
    c, _ = authenticated(srv, user, pw)
    try:
        c.send("<inactive xmlns='%s'/>" % NS_CSI)
        c.raw.bind()
        c.ping('p')
        c.raw.expect_silence(0.2)
    finally:
        c.close()

