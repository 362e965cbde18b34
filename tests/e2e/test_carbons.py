"""XEP-0280 message carbons: received and sent copies to the account's other carbons-enabled
resources, the §6.1 eligibility rules, <private/> and <no-copy/>, enabling and disabling."""

import xml.etree.ElementTree as ET

import harness as h
from harness import check
from test_mam import C, NS_DISCO, NS_FWD, NS_SID, RawUser, body, features_of

NS_CARBONS = 'urn:xmpp:carbons:2'

srv = None


def setup_module():
    global srv
    srv = h.Server().start()


def teardown_module():
    srv.stop()


def enable(u, on=True):
    reply, _ = u.iq("<%s xmlns='%s'/>" % ('enable' if on else 'disable', NS_CARBONS))
    check(reply.get('type') == 'result', 'carbons %s: %s' % (on, ET.tostring(reply)))


def carbon(m, direction):
    """The forwarded message inside a carbon copy, checking the wrapper (§7, §8)."""
    w = m.find('{%s}%s/{%s}forwarded/%smessage' % (NS_CARBONS, direction, NS_FWD, C))
    return w


def setup_users():
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    a = RawUser(srv, a_jid, a_pw, 'a')
    b1 = RawUser(srv, b_jid, b_pw, 'b1')
    b2 = RawUser(srv, b_jid, b_pw, 'b2')
    b3 = RawUser(srv, b_jid, b_pw, 'b3')
    for u in (b1, b2):
        enable(u)
    for u in (b1, b2, b3):
        u.messages()  # presence of the other resources
    return a, b1, b2, b3


def test_disco_feature():
    a, b1, b2, b3 = setup_users()
    reply, _ = a.iq("<query xmlns='%s'/>" % NS_DISCO, 'get', to=h.DOMAIN)
    check(NS_CARBONS in features_of(reply), 'features %s' % features_of(reply))
    for u in (a, b1, b2, b3):
        u.close()


def test_received_copy():
    a, b1, b2, b3 = setup_users()
    a.message(b1.jid, 'for b1')
    orig = b1.next_message(lambda m: body(m) == 'for b1')
    check(orig.find('{%s}received' % NS_CARBONS) is None, 'b1 got a wrapped copy')
    copy = b2.next_message(lambda m: m.find('{%s}received' % NS_CARBONS) is not None)
    check(copy.get('from') == b1.bare and copy.get('to') == b2.jid and
          copy.get('type') == 'chat', 'wrapper %s' % ET.tostring(copy))
    inner = carbon(copy, 'received')
    check(inner is not None and body(inner) == 'for b1' and inner.get('from') == a.jid and
          inner.get('to') == b1.jid, 'forwarded %s' % ET.tostring(copy))
    # The archive id travels with the copy (XEP-0313 §3.5).
    sid = inner.find('{%s}stanza-id' % NS_SID)
    check(sid is not None and sid.get('by') == b1.bare, 'stanza-id in copy: %s'
          % ET.tostring(inner))
    check(b1.messages() == [], 'b1 got a copy too: %s' % [ET.tostring(m) for m in b1.inbox])
    check(b3.messages() == [], 'carbons-disabled b3 got something')
    for u in (a, b1, b2, b3):
        u.close()


def test_sent_copy():
    a, b1, b2, b3 = setup_users()
    b3.message(a.bare, 'from b3 (carbons off)')
    b1.message(a.bare, 'from b1')
    a.next_message(lambda m: body(m) == 'from b1')
    got = b2.messages()
    sent = [carbon(m, 'sent') for m in got]
    check([body(s) for s in sent if s is not None] == ['from b3 (carbons off)', 'from b1'],
          'sent copies %s' % [ET.tostring(m) for m in got])
    check(sent[1].get('from') == b1.jid and sent[1].get('to') == a.bare, 'addresses %s'
          % ET.tostring(sent[1]))
    check(got[1].get('from') == b1.bare and got[1].get('to') == b2.jid, 'wrapper %s'
          % ET.tostring(got[1]))
    sid = sent[1].find('{%s}stanza-id' % NS_SID)
    check(sid is not None and sid.get('by') == b1.bare, 'sender archive id: %s'
          % ET.tostring(sent[1]))
    # b1 sent it and has carbons on, but never gets a copy of its own message (§8).
    b1_got = b1.messages()
    check([body(carbon(m, 'sent')) for m in b1_got if carbon(m, 'sent') is not None] ==
          ['from b3 (carbons off)'], 'b1 copies %s' % [ET.tostring(m) for m in b1_got])
    # The contact gets no trace of the sender's archive id (XEP-0313 §3.5).
    orig = a.next_message(lambda m: body(m) == 'from b3 (carbons off)')
    check(all(s.get('by') != b1.bare for s in orig.findall('{%s}stanza-id' % NS_SID)),
          'stanza-id leaked to the contact: %s' % ET.tostring(orig))
    for u in (a, b1, b2, b3):
        u.close()


def test_bare_jid_delivery_no_duplicates():
    """Resources that got the original by bare-JID rules get no copy (§7)."""
    a, b1, b2, b3 = setup_users()
    a.message(b1.bare, 'to all of bob')
    for u in (b1, b2, b3):
        got = u.messages()
        check([body(m) for m in got] == ['to all of bob'], '%s got %s'
              % (u.jid, [ET.tostring(m) for m in got]))
    # With a lower priority, b2 does not get the original, so it gets the copy.
    b2.send('<presence><priority>-5</priority></presence>')
    b2.ping()
    a.messages(), b1.messages(), b3.messages(), b2.messages()
    a.message(b1.bare, 'again')
    got = b2.messages()
    check(len(got) == 1 and body(carbon(got[0], 'received')) == 'again', 'b2 %s'
          % [ET.tostring(m) for m in got])
    for u in (a, b1, b2, b3):
        u.close()


def test_private_no_copy_and_ineligible():
    a, b1, b2, b3 = setup_users()
    a.message(b1.jid, 'secret', extra="<private xmlns='%s'/><no-copy xmlns='urn:xmpp:hints'/>"
              % NS_CARBONS)
    a.message(b1.jid, 'hint only', extra="<no-copy xmlns='urn:xmpp:hints'/>")
    a.message(b1.jid, 'headline', mtype='headline')
    b1.message(a.bare, 'private out', extra="<private xmlns='%s'/>" % NS_CARBONS)
    a.send("<message to='%s' type='normal'><received xmlns='urn:xmpp:receipts' id='x'/>"
           "</message>" % b1.jid)
    b1.next_message(lambda m: m.find('{urn:xmpp:receipts}received') is not None)
    got = b2.messages()
    check(len(got) == 1 and carbon(got[0], 'received') is not None and
          carbon(got[0], 'received').find('{urn:xmpp:receipts}received') is not None,
          'b2 copies %s' % [ET.tostring(m) for m in got])
    for u in (a, b1, b2, b3):
        u.close()


def test_disable_and_errors():
    a, b1, b2, b3 = setup_users()
    enable(b2, False)
    enable(b2, False)  # §10.1: twice is not an error
    a.message(b1.jid, 'after disable')
    b1.next_message(lambda m: body(m) == 'after disable')
    check(b2.messages() == [], 'disabled resource got a copy')
    # Enabling carbons for someone else's account is refused.
    reply, _ = a.iq("<enable xmlns='%s'/>" % NS_CARBONS, to=b1.bare)
    check(reply.get('type') == 'error', 'enable for another account: %s' % ET.tostring(reply))
    for u in (a, b1, b2, b3):
        u.close()
