"""XEP-0160 offline messages: stored with a XEP-0203 delay stamp while the recipient has no
available resource, delivered in order on its next non-negative initial presence, exactly once,
across restarts and a kill -9, bounded by [offline] max_messages."""

import xml.etree.ElementTree as ET

import harness as h
from harness import check
from test_mam import NS_DELAY, NS_DISCO, RawUser, body, error_condition, features_of

srv = None


def setup_module():
    global srv
    srv = h.Server().start()


def teardown_module():
    srv.stop()


def delays(m):
    return [d for d in m.findall('{%s}delay' % NS_DELAY)]


def chat_bodies(msgs):
    return [body(m) for m in msgs if body(m) is not None]


def test_disco_feature():
    a_jid, a_pw = srv.new_user('alice')
    a = RawUser(srv, a_jid, a_pw)
    reply, _ = a.iq("<query xmlns='%s'/>" % NS_DISCO, 'get', to=h.DOMAIN)
    check('msgoffline' in features_of(reply), 'features %s' % features_of(reply))
    a.close()


def test_delivered_in_order_with_delay_exactly_once():
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    a = RawUser(srv, a_jid, a_pw)
    for i in range(5):
        a.message(b_jid, 'offline %d' % i)
    a.message(b_jid + '/gone', 'to a resource that is not there', mtype='normal')
    check(a.messages() == [], 'sender got something back: %s'
          % [ET.tostring(m) for m in a.inbox])
    b = RawUser(srv, b_jid, b_pw)
    got = b.messages()
    check(chat_bodies(got) == ['offline %d' % i for i in range(5)] +
          ['to a resource that is not there'], 'delivered %s' % chat_bodies(got))
    for m in got:
        d = delays(m)
        check(len(d) == 1 and d[0].get('from') == h.DOMAIN and d[0].get('stamp', '').endswith('Z'),
              'delay stamp: %s' % ET.tostring(m))
        check(m.get('from') == a.jid, 'from %s' % m.get('from'))
    b.close()
    # Exactly once: a second login gets nothing more.
    b = RawUser(srv, b_jid, b_pw, resource='again')
    check(b.messages() == [], 'delivered twice: %s' % chat_bodies(b.inbox))
    # Online now: new messages arrive directly, without a delay.
    a.message(b_jid, 'live')
    m = b.next_message(lambda m: body(m) == 'live')
    check(delays(m) == [], 'live message has a delay: %s' % ET.tostring(m))
    a.close(), b.close()


def test_initial_presence_triggers_delivery():
    """Nothing before initial presence; a negative priority waits (XEP-0160 §2)."""
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    a = RawUser(srv, a_jid, a_pw)
    a.message(b_jid, 'waiting')
    a.ping()
    b = RawUser(srv, b_jid, b_pw, presence=False)
    check(b.messages() == [], 'delivered before presence')
    b.send('<presence><priority>-1</priority></presence>')
    check(b.messages() == [], 'delivered to a negative priority resource')
    b2 = RawUser(srv, b_jid, b_pw, resource='second')
    check(chat_bodies(b2.messages()) == ['waiting'], 'second resource')
    check(b.messages() == [], 'negative priority resource got it later')
    a.close(), b.close(), b2.close()


def test_chat_states_not_stored_no_store_refused():
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    a = RawUser(srv, a_jid, a_pw)
    a.send("<message to='%s' type='chat'><composing "
           "xmlns='http://jabber.org/protocol/chatstates'/></message>" % b_jid)
    check(a.messages() == [], 'chat state answered: %s' % [ET.tostring(m) for m in a.inbox])
    a.message(b_jid, 'ephemeral', extra="<no-store xmlns='urn:xmpp:hints'/>")
    err = a.next_message(lambda m: m.get('type') == 'error')
    check(error_condition(err) == 'service-unavailable', 'no-store: %s' % ET.tostring(err))
    a.message(b_jid, 'kept')
    b = RawUser(srv, b_jid, b_pw)
    got = b.messages()
    check(chat_bodies(got) == ['kept'] and len(got) == 1, 'delivered %s'
          % [ET.tostring(m) for m in got])
    a.close(), b.close()


def test_bound_gives_service_unavailable():
    """XEP-0160 §2: a full queue answers service-unavailable."""
    s = h.Server({'offline': {'max_messages': '3'}}).start()
    try:
        a_jid, a_pw = s.new_user('alice')
        b_jid, b_pw = s.new_user('bob')
        a = RawUser(s, a_jid, a_pw)
        for i in range(5):
            a.message(b_jid, 'q%d' % i, mid='q%d' % i)
        errs = [m for m in a.messages() if m.get('type') == 'error']
        check([e.get('id') for e in errs] == ['q3', 'q4'], 'errors for %s'
              % [e.get('id') for e in errs])
        check(all(error_condition(e) == 'service-unavailable' for e in errs),
              'conditions %s' % [error_condition(e) for e in errs])
        b = RawUser(s, b_jid, b_pw)
        check(chat_bodies(b.messages()) == ['q0', 'q1', 'q2'], 'stored')
        b.close()
        # Delivered messages free the queue.
        a.message(b_jid, 'room again')
        check(a.messages() == [], 'refused after delivery')
        b = RawUser(s, b_jid, b_pw)
        check(chat_bodies(b.messages()) == ['room again'], 'after delivery')
        a.close(), b.close()
    finally:
        s.stop()


def test_survives_restart_and_kill():
    s = h.Server().start()
    try:
        a_jid, a_pw = s.new_user('alice')
        b_jid, b_pw = s.new_user('bob')
        a = RawUser(s, a_jid, a_pw)
        a.message(b_jid, 'before kill 1')
        a.message(b_jid, 'before kill 2')
        a.ping()  # stored (the server answers in order)
        a.close()
        s.kill()  # SIGKILL: no shutdown path runs
        s.start()
        a = RawUser(s, a_jid, a_pw)
        a.message(b_jid, 'after restart')
        a.ping()
        a.close()
        s.restart()
        b = RawUser(s, b_jid, b_pw)
        got = chat_bodies(b.messages())
        check(got == ['before kill 1', 'before kill 2', 'after restart'], 'delivered %s' % got)
        b.close()
        s.restart()
        b = RawUser(s, b_jid, b_pw)
        check(b.messages() == [], 'delivered again after restart: %s' % chat_bodies(b.inbox))
        b.close()
    finally:
        s.stop()


def test_many_messages_paced():
    """More than one batch, and more bytes than half the output buffer: all arrive, in order."""
    s = h.Server({'server': {'max_output_buffer': '64K'}}).start()
    try:
        a_jid, a_pw = s.new_user('alice')
        b_jid, b_pw = s.new_user('bob')
        a = RawUser(s, a_jid, a_pw)
        filler = 'x' * 2000
        for i in range(120):
            a.message(b_jid, '%03d %s' % (i, filler))
        a.ping()
        check(a.messages() == [], 'errors while storing')
        b = RawUser(s, b_jid, b_pw)
        got = []
        while len(got) < 120:
            got.append(body(b.next_message(lambda m: body(m) is not None)))
        check([g[:3] for g in got] == ['%03d' % i for i in range(120)], 'order %s'
              % [g[:3] for g in got][:10])
        check(b.messages() == [], 'extra messages')
        batches = s.log().count('offline: delivered')
        check(batches >= 3, 'delivered in %d batch(es)' % batches)
        a.close(), b.close()
    finally:
        s.stop()


def test_unacknowledged_offline_delivery_comes_back_once():
    """The at-most-once window (delivered, deleted, the client never read it) is closed by
    XEP-0198: the dead session's unacknowledged stanzas are re-routed into offline storage, kept
    once, with one delay stamp, and not archived twice."""
    from test_mam import query
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    a = RawUser(srv, a_jid, a_pw)
    a.message(b_jid, 'must not be lost')
    a.ping()
    b = RawUser(srv, b_jid, b_pw, resource='sm', presence=False)
    b.send("<enable xmlns='urn:xmpp:sm:3'/>")
    b.send('<presence/>')
    got = b.next_message(lambda m: body(m) == 'must not be lost')
    check(len(delays(got)) == 1, 'first delivery %s' % ET.tostring(got))
    b.raw.close()  # gone without acknowledging anything
    b = RawUser(srv, b_jid, b_pw, resource='next')
    got = b.next_message(lambda m: body(m) == 'must not be lost')
    d = delays(got)
    check(len(d) == 1 and d[0].get('from') == h.DOMAIN, 'redelivered %s' % ET.tostring(got))
    check(b.messages() == [], 'extra: %s' % [ET.tostring(m) for m in b.inbox])
    check(query(b).bodies == ['must not be lost'], 'archived %s' % query(b).bodies)
    b.close()
    b = RawUser(srv, b_jid, b_pw, resource='third')
    check(b.messages() == [], 'delivered a third time: %s' % chat_bodies(b.inbox))
    a.close(), b.close()
