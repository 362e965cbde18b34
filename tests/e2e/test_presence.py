"""Presence subscriptions (RFC 6121 §3, Appendix A) and presence (§4): requests while online and
offline, approval, denial, cancellation from either side, pre-approval (§3.4), roster pushes on
state changes, probes (also after a restart), unavailable presence when a session ends (also on
an abrupt TCP close), directed presence, and no presence for non-subscribers.

Mostly raw streams (test_roster.Peer) so that each test can assert exactly which stanzas each
session got; two tests use slixmpp's own roster handling."""

import asyncio
import socket
import struct

import harness as h
from harness import check
from test_roster import C, IM_CFG, Peer, dump, others, presences, push_items, state

srv = None

AWAY = "<presence><show>away</show><status>at lunch</status></presence>"


def setup_module():
    global srv
    srv = h.Server(IM_CFG).start()


def teardown_module():
    srv.stop()


def users(n, server=None):
    return [(server or srv).new_user('p') for _ in range(n)]


def push_states(els):
    """[(contact, state)] of the roster pushes in els."""
    return [(i.get('jid'), state(i)) for i in push_items(els)]


def status_of(el):
    st = el.find(C + 'status')
    return st.text if st is not None else None


def only_presence(els, frm, type_, what):
    """els holds exactly one presence, from frm with type type_; returns it."""
    ps = [e for e in els if e.tag == C + 'presence']
    check(len(ps) == 1 and (ps[0].get('from'), ps[0].get('type')) == (frm, type_),
          '%s: expected one presence from %s type %s, got %s' % (what, frm, type_, dump(els)))
    return ps[0]


def expect_exactly(els, pushes, pres, what):
    """els is exactly the given roster pushes [(contact, state)] and presences [(from, type)]
    (each list in order), and nothing else."""
    check(push_states(els) == pushes and presences(els) == pres and not others(els),
          '%s:\n  expected pushes %s and presences %s\n  got %s'
          % (what, pushes, pres, dump(els)))


def subscribe(a, b):
    """a subscribes to b and b approves; both drained. Afterwards a's item for b is 'to' (or
    'both') and a has b's presence."""
    a.send("<presence to='%s' type='subscribe'/>" % b.bare)
    a.drain()
    b.drain()
    b.send("<presence to='%s' type='subscribed'/>" % a.bare)
    b.drain()
    a.drain()


# --------------------------------------------------------------------------- subscribing


def test_subscribe_while_contact_online():
    """RFC 6121 §3.1.1-§3.1.6 with both parties online and interested."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, resource='desk', roster=True, presence=True)
    bob = Peer(srv, b, bpw, resource='phone', roster=True, presence=AWAY)
    try:
        alice.send("<presence to='%s' type='subscribe' id='sub1'/>" % b)
        # §3.1.2: the user's server pushes the item with ask='subscribe' (state None + Pending Out).
        expect_exactly(alice.drain(), [(b, 'none+ask')], [], 'alice after subscribe')
        got = bob.drain()
        # §3.1.3: the request reaches the contact stamped with the user's bare JID; the contact's
        # roster gets no item (and so no push) until the contact approves.
        expect_exactly(got, [], [(a, 'subscribe')], 'bob receives the request')
        req = [e for e in got if e.tag == C + 'presence'][0]
        check(req.get('id') == 'sub1', 'request id not kept: %s' % dump(req))
        check(bob.items() == {}, 'bob\'s roster before approving: %s' % bob.items())
        check(alice.items() == {b: 'none+ask'}, 'alice roster: %s' % alice.items())

        bob.send("<presence to='%s' type='subscribed'/>" % a)
        # §3.1.5: the contact's server pushes subscription='from'.
        expect_exactly(bob.drain(), [(a, 'from')], [], 'bob after approving')
        got = alice.drain()
        # §3.1.6: push 'to', the subscribed notification, then bob's current presence (§3.1.5).
        expect_exactly(got, [(b, 'to')], [(b, 'subscribed'), (bob.jid, None)],
                       'alice after approval')
        pres = [e for e in got if e.get('from') == bob.jid][0]
        check(status_of(pres) == 'at lunch' and pres.findtext(C + 'show') == 'away',
              'bob\'s presence content: %s' % dump(pres))
        check(alice.items() == {b: 'to'} and bob.items() == {a: 'from'},
              'rosters: alice %s bob %s' % (alice.items(), bob.items()))

        # A new broadcast from bob reaches alice; one from alice does not reach bob (bob is not
        # subscribed to alice).
        bob.send('<presence><status>back</status></presence>')
        bob.drain()
        got = alice.drain()
        p = only_presence(got, bob.jid, None, 'bob\'s update')
        check(status_of(p) == 'back', 'update content: %s' % dump(p))
        alice.send('<presence><status>alice here</status></presence>')
        alice.drain()
        got = bob.drain()
        check(got == [], 'bob got alice\'s presence without a subscription: %s' % dump(got))
    finally:
        alice.close()
        bob.close()


def test_mutual_subscription_one_after_the_other():
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    try:
        subscribe(alice, bob)
        check(alice.items() == {b: 'to'} and bob.items() == {a: 'from'}, 'after first half')
        bob.send("<presence to='%s' type='subscribe'/>" % a)
        # Appendix A.2.1: From → From + Pending Out.
        expect_exactly(bob.drain(), [(a, 'from+ask')], [], 'bob subscribes back')
        got = alice.drain()
        check(presences(got) == [(b, 'subscribe')] and not others(got),
              'alice gets the request: %s' % dump(got))
        # Alice's visible item does not change while the request waits (Appendix A.3.1: To →
        # To + Pending In is not shown in the roster).
        check(all(s == (b, 'to') for s in push_states(got)), 'alice pushes: %s' % dump(got))
        alice.send("<presence to='%s' type='subscribed'/>" % b)
        expect_exactly(alice.drain(), [(b, 'both')], [], 'alice approves')
        expect_exactly(bob.drain(), [(a, 'both')], [(a, 'subscribed'), (alice.jid, None)],
                       'bob after approval')
        check(alice.items() == {b: 'both'} and bob.items() == {a: 'both'},
              'final: alice %s bob %s' % (alice.items(), bob.items()))
        # Both see each other's broadcasts now.
        alice.send('<presence><status>a2</status></presence>')
        alice.drain()
        check(status_of(only_presence(bob.drain(), alice.jid, None, 'bob sees alice')) == 'a2',
              'content')
        bob.send('<presence><status>b2</status></presence>')
        bob.drain()
        check(status_of(only_presence(alice.drain(), bob.jid, None, 'alice sees bob')) == 'b2',
              'content')
    finally:
        alice.close()
        bob.close()


def test_mutual_subscription_crossed_requests():
    """Both ask before either answers; then both approve (Appendix A: None + Pending Out/In)."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    try:
        alice.send("<presence to='%s' type='subscribe'/>" % b)
        alice.drain()
        bob.send("<presence to='%s' type='subscribe'/>" % a)
        got = bob.drain()
        check(presences(got) == [(a, 'subscribe')], 'bob gets alice\'s request: %s' % dump(got))
        check(push_states(got)[-1:] == [(a, 'none+ask')], 'bob pushes: %s' % dump(got))
        got = alice.drain()
        check(presences(got) == [(b, 'subscribe')], 'alice gets bob\'s request: %s' % dump(got))
        check(alice.items() == {b: 'none+ask'} and bob.items() == {a: 'none+ask'},
              'both pending out: %s %s' % (alice.items(), bob.items()))

        bob.send("<presence to='%s' type='subscribed'/>" % a)
        # A.2.2: None + Pending Out + Pending In → From + Pending Out.
        expect_exactly(bob.drain(), [(a, 'from+ask')], [], 'bob approves')
        expect_exactly(alice.drain(), [(b, 'to')], [(b, 'subscribed'), (bob.jid, None)],
                       'alice approved')
        alice.send("<presence to='%s' type='subscribed'/>" % b)
        expect_exactly(alice.drain(), [(b, 'both')], [], 'alice approves')
        expect_exactly(bob.drain(), [(a, 'both')], [(a, 'subscribed'), (alice.jid, None)],
                       'bob approved')
        check(alice.items() == {b: 'both'} and bob.items() == {a: 'both'},
              'final: %s %s' % (alice.items(), bob.items()))
    finally:
        alice.close()
        bob.close()


def test_subscription_request_while_contact_offline():
    """§3.1.3: the request is stored and delivered when the contact next becomes available, at
    every login until answered."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    try:
        alice.send("<presence to='%s' type='subscribe'/>" % b)
        expect_exactly(alice.drain(), [(b, 'none+ask')], [], 'alice')

        bob = Peer(srv, b, bpw, roster=True)
        check(bob.items() == {}, 'pending request shows in the roster: %s' % bob.items())
        got = bob.drain()
        # Subscription requests go to available resources only (§2.2 implementation note).
        check(got == [], 'request delivered before initial presence: %s' % dump(got))
        bob.send('<presence/>')
        got = bob.drain()
        check(presences(got).count((a, 'subscribe')) == 1,
              'request at initial presence: %s' % dump(got))
        check(not push_items(got), 'pushes at login: %s' % dump(got))
        bob.close()
        alice.drain()

        # Not answered: delivered again at the next login.
        bob = Peer(srv, b, bpw, roster=True, presence=True)
        check(presences(bob.initial).count((a, 'subscribe')) == 1,
              'request at second login: %s' % dump(bob.initial))
        bob.send("<presence to='%s' type='subscribed'/>" % a)
        expect_exactly(bob.drain(), [(a, 'from')], [], 'bob approves')
        expect_exactly(alice.drain(), [(b, 'to')], [(b, 'subscribed'), (bob.jid, None)],
                       'alice approved')
        bob.close()
        # Answered: not delivered any more.
        bob = Peer(srv, b, bpw, roster=True, presence=True)
        check((a, 'subscribe') not in presences(bob.initial),
              'approved request delivered again: %s' % dump(bob.initial))
        bob.close()
    finally:
        alice.close()


def test_contact_denies_request():
    """§3.2: unsubscribed in answer to a request clears the user's pending-out state."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    try:
        alice.send("<presence to='%s' type='subscribe'/>" % b)
        alice.drain()
        bob.drain()
        bob.send("<presence to='%s' type='unsubscribed'/>" % a)
        # Bob never had an item for alice, so there is nothing to push to him (§3.2.1).
        expect_exactly(bob.drain(), [], [], 'bob denies')
        expect_exactly(alice.drain(), [(b, 'none')], [(b, 'unsubscribed')], 'alice denied')
        check(alice.items() == {b: 'none'} and bob.items() == {},
              'rosters: %s %s' % (alice.items(), bob.items()))
        bob.close()
        bob = Peer(srv, b, bpw, roster=True, presence=True)
        check((a, 'subscribe') not in presences(bob.initial),
              'denied request delivered again: %s' % dump(bob.initial))
        bob.close()
    finally:
        alice.close()


def test_user_unsubscribes():
    """§3.3: the subscriber cancels; both items lose the direction and the user gets
    unavailable presence from the contact's available resources."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    try:
        subscribe(alice, bob)
        alice.send("<presence to='%s' type='unsubscribe'/>" % b)
        got = alice.drain()
        check(push_states(got) == [(b, 'none')], 'alice push: %s' % dump(got))
        # §3.3.3: the contact's server sends unavailable presence from each available resource.
        check(presences(got) == [(bob.jid, 'unavailable')] and not others(got),
              'alice presences: %s' % dump(got))
        expect_exactly(bob.drain(), [(a, 'none')], [(a, 'unsubscribe')], 'bob')
        check(alice.items() == {b: 'none'} and bob.items() == {a: 'none'},
              'rosters: %s %s' % (alice.items(), bob.items()))
        bob.send('<presence><status>x</status></presence>')
        bob.drain()
        check(alice.drain() == [], 'alice still gets bob\'s presence')
    finally:
        alice.close()
        bob.close()


def test_contact_cancels_subscription():
    """§3.2: the contact revokes the user's subscription with unsubscribed."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    try:
        subscribe(alice, bob)
        bob.send("<presence to='%s' type='unsubscribed'/>" % a)
        expect_exactly(bob.drain(), [(a, 'none')], [], 'bob cancels')
        got = alice.drain()
        check(push_states(got) == [(b, 'none')], 'alice push: %s' % dump(got))
        check(sorted(presences(got)) == sorted([(bob.jid, 'unavailable'), (b, 'unsubscribed')])
              and not others(got), 'alice presences: %s' % dump(got))
        check(alice.items() == {b: 'none'} and bob.items() == {a: 'none'},
              'rosters: %s %s' % (alice.items(), bob.items()))
        bob.send('<presence><status>x</status></presence>')
        bob.drain()
        check(alice.drain() == [], 'alice still gets bob\'s presence')
    finally:
        alice.close()
        bob.close()


def test_both_reduced_from_either_side():
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    try:
        subscribe(alice, bob)
        subscribe(bob, alice)
        check(alice.items() == {b: 'both'} and bob.items() == {a: 'both'}, 'both')
        alice.send("<presence to='%s' type='unsubscribe'/>" % b)  # Both → From
        alice.drain()
        bob.drain()
        check(alice.items() == {b: 'from'} and bob.items() == {a: 'to'},
              'after unsubscribe: %s %s' % (alice.items(), bob.items()))
        # Bob still sees alice.
        alice.send('<presence><status>still</status></presence>')
        alice.drain()
        only_presence(bob.drain(), alice.jid, None, 'bob still subscribed')
        # Bob has no subscription to cancel from his side (Appendix A.3.4: an unsubscribed for
        # state From changes nothing and is not delivered).
        bob.send("<presence to='%s' type='unsubscribed'/>" % a)
        check(bob.drain() == [] and alice.drain() == [], 'unsubscribed without a subscription')
        check(alice.items() == {b: 'from'} and bob.items() == {a: 'to'}, 'unchanged')
        bob.send("<presence to='%s' type='unsubscribe'/>" % a)  # alice: From → None
        got = bob.drain()
        check(push_states(got) == [(a, 'none')]
              and presences(got) == [(alice.jid, 'unavailable')], 'bob: %s' % dump(got))
        expect_exactly(alice.drain(), [(b, 'none')], [(b, 'unsubscribe')], 'alice')
        check(alice.items() == {b: 'none'} and bob.items() == {a: 'none'},
              'after both: %s %s' % (alice.items(), bob.items()))
    finally:
        alice.close()
        bob.close()


def test_roster_remove_cancels_both_directions():
    """RFC 6121 §2.5.2: removing a 'both' item sends unsubscribe and unsubscribed; the contact
    ends with no subscription and both stop seeing each other."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    try:
        subscribe(alice, bob)
        subscribe(bob, alice)
        r, got = alice.roster_set("<item jid='%s' subscription='remove'/>" % b)
        check(r.get('type') == 'result', 'remove: %s' % dump(r))
        got += alice.drain()
        check(push_states(got) == [(b, 'remove')], 'alice pushes: %s' % dump(got))
        # Bob's server answers the unsubscribe with unavailable from bob's resources (§3.3.3).
        check(presences(got) == [(bob.jid, 'unavailable')] and not others(got),
              'alice presences: %s' % dump(got))
        got = bob.drain()
        check(push_states(got)[-1:] == [(a, 'none')], 'bob pushes: %s' % dump(got))
        check(sorted(presences(got)) == sorted([(a, 'unsubscribe'), (a, 'unsubscribed'),
                                                (alice.jid, 'unavailable')]),
              'bob presences: %s' % dump(got))
        check(alice.items() == {} and bob.items() == {a: 'none'},
              'rosters: %s %s' % (alice.items(), bob.items()))
        alice.send('<presence><status>x</status></presence>')
        alice.drain()
        bob.send('<presence><status>y</status></presence>')
        bob.drain()
        check(presences(alice.drain()) == [] and presences(bob.drain()) == [],
              'presence still flows after removal')
    finally:
        alice.close()
        bob.close()


def test_preapproval():
    """§3.4: the contact pre-approves; the user's later request is approved without reaching the
    contact."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=AWAY)
    try:
        bob.send("<presence to='%s' type='subscribed'/>" % a)
        # §3.4.1: the contact's server keeps the pre-approval on an item (created if needed with
        # subscription='none') carrying approved='true', pushes it, and does not route anything.
        expect_exactly(bob.drain(), [(a, 'none+approved')], [], 'bob pre-approves')
        check(bob.items() == {a: 'none+approved'}, 'bob roster: %s' % bob.items())
        check(alice.drain() == [], 'pre-approval reached alice')

        alice.send("<presence to='%s' type='subscribe'/>" % b)
        got = alice.drain()
        # The approval comes back at once (§3.4.1: the contact's server auto-replies).
        check(push_states(got) == [(b, 'none+ask'), (b, 'to')], 'alice pushes: %s' % dump(got))
        check(presences(got)[:1] == [(b, 'subscribed')]
              and set(presences(got)[1:]) <= {(bob.jid, None)} and not others(got),
              'alice presences: %s' % dump(got))
        got = bob.drain()
        expect_exactly(got, [(a, 'from')], [], 'bob: auto-approved, request not delivered')
        check(alice.items() == {b: 'to'} and bob.items() == {a: 'from'},
              'rosters: %s %s' % (alice.items(), bob.items()))
    finally:
        alice.close()
        bob.close()


def test_preapproved_subscription_delivers_presence():
    """After a pre-approved request is auto-approved the user is subscribed, so she gets the
    contact's current presence right away, as after an explicit approval (RFC 6121 §3.1.5:
    "the contact's server MUST then also send current presence to the user from each of the
    contact's available resources"). §3.4 does not restate it for pre-approval; without it the
    user sees the contact offline until the contact's next broadcast or her next login."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=AWAY)
    try:
        bob.send("<presence to='%s' type='subscribed'/>" % a)
        bob.drain()
        alice.send("<presence to='%s' type='subscribe'/>" % b)
        got = alice.drain()
        check((bob.jid, None) in presences(got),
              'no presence from bob after the pre-approved subscription: %s' % dump(got))
        p = [e for e in got if e.get('from') == bob.jid][0]
        check(status_of(p) == 'at lunch', 'content: %s' % dump(p))
    finally:
        alice.close()
        bob.close()


def test_preapproval_of_existing_item_and_its_cancellation():
    (a, apw), (b, bpw) = users(2)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    try:
        r, got = bob.roster_set("<item jid='%s' name='Alice'/>" % a)
        check(r.get('type') == 'result', 'set: %s' % dump(r))
        bob.drain()
        bob.send("<presence to='%s' type='subscribed'/>" % a)
        expect_exactly(bob.drain(), [(a, 'none+approved')], [], 'pre-approve a roster item')
        # §3.4.2 / Appendix A.2.4: unsubscribed withdraws the pre-approval.
        bob.send("<presence to='%s' type='unsubscribed'/>" % a)
        got = bob.drain()
        check(push_states(got) == [(a, 'none')], 'withdrawn: %s' % dump(got))
        check(bob.items() == {a: 'none'}, 'roster: %s' % bob.items())
        alice = Peer(srv, a, apw, roster=True, presence=True)
        alice.send("<presence to='%s' type='subscribe'/>" % b)
        alice.drain()
        got = bob.drain()
        check(presences(got) == [(a, 'subscribe')],
              'after withdrawal the request needs approval again: %s' % dump(got))
        alice.close()
    finally:
        bob.close()


def test_pushes_and_requests_per_resource_kind():
    """Roster pushes go to interested resources, subscription requests and notifications to
    available ones (RFC 6121 §2.2 implementation note)."""
    (a, apw), (b, bpw) = users(2)
    a_both = Peer(srv, a, apw, resource='both', roster=True, presence=True)
    a_roster = Peer(srv, a, apw, resource='rosteronly', roster=True)
    a_avail = Peer(srv, a, apw, resource='availonly', presence=True)
    b_both = Peer(srv, b, bpw, resource='both', roster=True, presence=True)
    b_roster = Peer(srv, b, bpw, resource='rosteronly', roster=True)
    b_avail = Peer(srv, b, bpw, resource='availonly', presence=True)
    peers = (a_both, a_roster, a_avail, b_both, b_roster, b_avail)
    try:
        for p in peers:
            p.drain()
        a_both.send("<presence to='%s' type='subscribe'/>" % b)
        a_both.drain()
        expect_exactly(a_roster.drain(), [(b, 'none+ask')], [], 'alice roster-only resource')
        expect_exactly(a_avail.drain(), [], [], 'alice available-only resource')
        expect_exactly(b_roster.drain(), [], [], 'bob roster-only resource (not available)')
        expect_exactly(b_avail.drain(), [], [(a, 'subscribe')], 'bob available-only resource')
        expect_exactly(b_both.drain(), [], [(a, 'subscribe')], 'bob full resource')

        b_avail.send("<presence to='%s' type='subscribed'/>" % a)
        b_avail.drain()
        expect_exactly(b_both.drain(), [(a, 'from')], [], 'bob full resource after approval')
        expect_exactly(b_roster.drain(), [(a, 'from')], [], 'bob roster-only after approval')
        bob_avail = [(b_both.jid, None), (b_avail.jid, None)]
        got = a_both.drain()
        check(push_states(got) == [(b, 'to')] and not others(got)
              and sorted(presences(got)) == sorted([(b, 'subscribed')] + bob_avail),
              'alice full resource after approval: %s' % dump(got))
        expect_exactly(a_roster.drain(), [(b, 'to')], [], 'alice roster-only after approval')
        got = a_avail.drain()
        check(not push_items(got) and not others(got)
              and sorted(presences(got)) == sorted([(b, 'subscribed')] + bob_avail),
              'alice available-only after approval: %s' % dump(got))
    finally:
        for p in peers:
            p.close()


# --------------------------------------------------------------------------- presence


def test_probe_after_restart():
    """§4.3: after a restart nobody is online; when alice logs in, her server probes bob (she is
    subscribed to him) and bob's presence answers the probe."""
    local = h.Server(IM_CFG).start()
    try:
        (a, apw), (b, bpw) = users(2, local)
        alice = Peer(local, a, apw, roster=True, presence=True)
        bob = Peer(local, b, bpw, roster=True, presence=True)
        subscribe(alice, bob)
        check(alice.items() == {b: 'to'}, 'subscribed: %s' % alice.items())
        alice.close()
        bob.close()
        local.restart()

        bob = Peer(local, b, bpw, resource='phone', roster=True, presence=AWAY)
        # Bob is subscribed to nobody: only his own presence comes back (§4.2.2).
        check(presences(bob.initial) == [(bob.jid, None)],
              'bob initial: %s' % dump(bob.initial))
        alice = Peer(local, a, apw, resource='desk', roster=True, presence=True)
        check(sorted(presences(alice.initial)) == sorted([(alice.jid, None), (bob.jid, None)]),
              'alice initial: %s' % dump(alice.initial))
        p = [e for e in alice.initial if e.get('from') == bob.jid][0]
        check(status_of(p) == 'at lunch' and p.findtext(C + 'show') == 'away',
              'probe answer content: %s' % dump(p))
        check(p.get('to') in (alice.jid, a), 'probe answer to %s' % p.get('to'))
        # Alice's initial presence is not for bob: he is not subscribed to her.
        check(bob.drain() == [], 'bob got something')
        alice.close()
        bob.close()
    finally:
        local.stop()


def test_probe_when_contact_offline():
    """§4.3.2: a subscribed user probing a contact with no available resource learns it is
    unavailable (from the contact's bare JID)."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    subscribe(alice, bob)
    alice.close()
    bob.close()
    alice = Peer(srv, a, apw, roster=True, presence=True)
    try:
        check(sorted(presences(alice.initial)) == sorted([(alice.jid, None), (b, 'unavailable')]),
              'alice initial: %s' % dump(alice.initial))
    finally:
        alice.close()


def _watched_pair():
    """alice subscribed to bob, both online; returns (alice, bob)."""
    (a, apw), (b, bpw) = users(2)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    subscribe(alice, bob)
    return alice, bob


def test_unavailable_on_stream_close():
    alice, bob = _watched_pair()
    try:
        bob.send('</stream:stream>')
        el, before = alice.wait_for(lambda e: e.tag == C + 'presence', 'bob\'s unavailable')
        check(before == [] and (el.get('from'), el.get('type')) == (bob.jid, 'unavailable'),
              'alice got %s then %s' % (dump(before), dump(el)))
        check(alice.drain() == [], 'more than one unavailable')
    finally:
        alice.close()
        bob.close()


def test_unavailable_on_abrupt_tcp_close():
    """A session that dies without closing its stream (TCP RST) still says goodbye (§4.5.2)."""
    alice, bob = _watched_pair()
    try:
        sock = bob.raw.sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        sock.close()
        el, before = alice.wait_for(lambda e: e.tag == C + 'presence', 'bob\'s unavailable')
        check(before == [] and (el.get('from'), el.get('type')) == (bob.jid, 'unavailable'),
              'alice got %s then %s' % (dump(before), dump(el)))
        check(alice.drain() == [], 'more than one unavailable')
    finally:
        alice.close()


def test_explicit_unavailable_and_back():
    alice, bob = _watched_pair()
    try:
        bob.send("<presence type='unavailable'><status>gone home</status></presence>")
        got = bob.drain()
        # §4.5.2: the user's own resources get it too, including the sender.
        check(presences(got) == [(bob.jid, 'unavailable')], 'bob: %s' % dump(got))
        p = only_presence(alice.drain(), bob.jid, 'unavailable', 'alice')
        check(status_of(p) == 'gone home', 'status kept: %s' % dump(p))
        # Back online: a fresh initial presence (§4.2), broadcast again.
        bob.send('<presence><status>back</status></presence>')
        bob.drain()
        check(status_of(only_presence(alice.drain(), bob.jid, None, 'alice')) == 'back', 'content')
    finally:
        alice.close()
        bob.close()


def test_directed_presence_to_non_contacts():
    """§4.6: directed presence reaches a non-contact (full JID, or the available resources of a
    bare JID); when the session ends they get unavailable presence. A subscriber who also got
    directed presence gets a single unavailable."""
    (a, apw), (b, bpw), (c, cpw), (d, dpw) = users(4)
    alice = Peer(srv, a, apw, roster=True, presence=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    carol = Peer(srv, c, cpw, resource='laptop', presence=True)
    dave1 = Peer(srv, d, dpw, resource='one', presence=True)
    dave2 = Peer(srv, d, dpw, resource='two', presence=True)
    dave_hidden = Peer(srv, d, dpw, resource='hidden')  # never available
    peers = (alice, bob, carol, dave1, dave2, dave_hidden)
    try:
        subscribe(bob, alice)  # bob is alice's subscriber
        for p in peers:
            p.drain()
        alice.send("<presence to='%s'><status>psst</status></presence>" % carol.jid)
        alice.send("<presence to='%s'><status>hi dave</status></presence>" % d)
        alice.send("<presence to='%s'><status>for bob</status></presence>" % b)
        alice.drain()
        p = only_presence(carol.drain(), alice.jid, None, 'carol')
        check(status_of(p) == 'psst', 'carol content: %s' % dump(p))
        for dv in (dave1, dave2):
            check(status_of(only_presence(dv.drain(), alice.jid, None, dv.jid)) == 'hi dave',
                  'dave content')
        check(dave_hidden.drain() == [], 'unavailable resource got directed presence')
        only_presence(bob.drain(), alice.jid, None, 'bob')
        # Directed presence does not subscribe anyone: a broadcast still reaches only bob.
        alice.send('<presence><status>broadcast</status></presence>')
        alice.drain()
        check(carol.drain() == [] and dave1.drain() == [], 'broadcast leaked to non-contacts')
        bob.drain()

        alice.send('</stream:stream>')
        for p in (carol, dave1, dave2, bob):
            el, before = p.wait_for(lambda e: e.tag == C + 'presence', 'alice\'s unavailable')
            check(before == [] and (el.get('from'), el.get('type')) == (alice.jid, 'unavailable'),
                  '%s got %s then %s' % (p.jid, dump(before), dump(el)))
            check(p.drain() == [], '%s: more than one unavailable' % p.jid)
        check(dave_hidden.drain() == [], 'unavailable resource got unavailable presence')
    finally:
        for p in peers:
            p.close()


def test_directed_unavailable_ends_directed_presence():
    (a, apw), (c, cpw) = users(2)
    alice = Peer(srv, a, apw, presence=True)
    carol = Peer(srv, c, cpw, presence=True)
    try:
        alice.send("<presence to='%s'/>" % carol.jid)
        alice.send("<presence to='%s' type='unavailable'/>" % carol.jid)
        alice.drain()
        got = carol.drain()
        check(presences(got) == [(alice.jid, None), (alice.jid, 'unavailable')],
              'carol: %s' % dump(got))
        alice.send('</stream:stream>')
        alice.raw.expect_close()
        check(carol.drain() == [], 'second unavailable after the directed one')
    finally:
        alice.close()
        carol.close()


def test_own_resources_see_each_other():
    """§4.2.2 and §4.4.2: a user's available resources get each other's presence (and their own);
    a resource that never sent presence gets none."""
    (a, apw), = users(1)
    one = Peer(srv, a, apw, resource='one', presence=True)
    idle = Peer(srv, a, apw, resource='idle', roster=True)
    try:
        check(presences(one.initial) == [(one.jid, None)], 'one initial: %s' % dump(one.initial))
        two = Peer(srv, a, apw, resource='two',
                   presence='<presence><status>two here</status></presence>')
        check(sorted(presences(two.initial)) == sorted([(one.jid, None), (two.jid, None)]),
              'two initial: %s' % dump(two.initial))
        p = only_presence(one.drain(), two.jid, None, 'one sees two')
        check(status_of(p) == 'two here', 'content: %s' % dump(p))
        two.send('<presence type="unavailable"/>')
        check(presences(two.drain()) == [(two.jid, 'unavailable')], 'two sees its unavailable')
        only_presence(one.drain(), two.jid, 'unavailable', 'one sees two leave')
        two.close()
        check(one.drain() == [], 'an unavailable resource said goodbye twice')
        check(idle.drain() == [], 'a resource that is not available got presence')
    finally:
        one.close()
        idle.close()


def test_presence_not_leaked_to_non_subscribers():
    """§4.3.2: a probe from someone not subscribed gets nothing; broadcasts reach subscribers
    only."""
    alice, bob = _watched_pair()  # alice → bob ('to'); bob has 'from'
    (m, mpw), = users(1)
    mallory = Peer(srv, m, mpw, roster=True, presence=True)
    try:
        # A stranger's probe (clients SHOULD NOT probe, §4.3.1, but the server must still not
        # reveal presence).
        mallory.send("<presence to='%s' type='probe'/>" % alice.bare)
        mallory.send("<presence to='%s' type='probe'/>" % bob.bare)
        mallory.send("<presence to='%s' type='probe'/>" % bob.jid)
        got = mallory.drain()
        check(got == [], 'stranger\'s probe answered: %s' % dump(got))
        # A pending request is not a subscription.
        mallory.send("<presence to='%s' type='subscribe'/>" % bob.bare)
        mallory.drain()
        bob.drain()
        mallory.send("<presence to='%s' type='probe'/>" % bob.bare)
        check(presences(mallory.drain()) == [], 'pending requester\'s probe answered')
        # Bob only has 'from' towards alice: his probe must not reveal her.
        bob.send("<presence to='%s' type='probe'/>" % alice.bare)
        check(presences(bob.drain()) == [], 'probe by a non-subscriber contact answered')
        # Broadcasts: bob's reaches alice only.
        bob.send('<presence><status>secret</status></presence>')
        bob.drain()
        only_presence(alice.drain(), bob.jid, None, 'alice')
        check(presences(mallory.drain()) == [], 'broadcast leaked to a stranger')
        # A probe from the subscriber herself is answered (§4.3.2).
        alice.send("<presence to='%s' type='probe'/>" % bob.bare)
        p = only_presence(alice.drain(), bob.jid, None, 'subscriber\'s probe')
        check(status_of(p) == 'secret', 'probe answer content: %s' % dump(p))
    finally:
        for p in (alice, bob, mallory):
            p.close()


# --------------------------------------------------------------------------- slixmpp


async def _until(pred, what, timeout=h.IO_TIMEOUT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise h.TestFailure('timed out waiting for %s' % what)
        await asyncio.sleep(0.02)


async def test_slixmpp_mutual_subscription_and_abrupt_disconnect():
    """slixmpp's own roster logic (auto-authorize and subscribe back) against the server."""
    (a, apw), (b, bpw) = users(2)
    alice = await h.connect(srv, a + '/slix', apw)
    bob = await h.connect(srv, b + '/slix', bpw)
    await alice.get_roster()
    await bob.get_roster()
    offline = asyncio.get_running_loop().create_future()

    def on_unavailable(pres):
        if pres['from'].bare == b and not offline.done():
            offline.set_result(str(pres['from']))
    alice.add_event_handler('presence_unavailable', on_unavailable)
    alice.send_presence_subscription(pto=b)
    await _until(lambda: alice.client_roster[b]['subscription'] == 'both'
                 and bob.client_roster[a]['subscription'] == 'both',
                 'both/both (alice %s, bob %s)' % (alice.client_roster[b]['subscription'],
                                                   bob.client_roster[a]['subscription']))
    await _until(lambda: 'slix' in alice.client_roster.presence(b), 'bob\'s presence at alice')
    await _until(lambda: 'slix' in bob.client_roster.presence(a), 'alice\'s presence at bob')
    check(alice.client_roster[b]['pending_out'] is False, 'alice still pending')
    bob.abort()  # no </stream:stream>: the connection just goes away
    frm = await asyncio.wait_for(offline, h.IO_TIMEOUT)
    check(frm == b + '/slix', 'unavailable from %s' % frm)
    await alice.close()
