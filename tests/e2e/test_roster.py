"""Rosters (RFC 6121 §2): get, set, update, remove, pushes to interested resources, errors,
the size limit and roster versioning (§2.6), driven over raw streams so every stanza the server
sends can be asserted exactly.

The Peer helper below is shared with test_presence.py. Its drain() is the synchronisation point:
it pings the server and returns every element that arrived before the pong. The server handles
one stanza at a time, so once a peer's own drain() returned, everything its earlier stanzas
caused has already been written to every other session, and another peer's drain() sees it."""

import itertools
import xml.etree.ElementTree as ET

import harness as h
from harness import check

NS_ROSTER = 'jabber:iq:roster'
NS_PING = 'urn:xmpp:ping'
C = '{jabber:client}'
R = '{%s}' % NS_ROSTER

_ids = itertools.count(1)

srv = None


# The suite's servers set [roster] max_items and [sm] max_unacked (libstrophe enables stream
# management) explicitly so that the other tests do not depend on the built-in defaults of
# sections absent from the config; test_default_config_allows_items checks the roster default.
IM_CFG = {'roster': {'max_items': '1000'}, 'sm': {'max_unacked': '1000'}}


def setup_module():
    global srv
    srv = h.Server(IM_CFG).start()


def teardown_module():
    srv.stop()


# --------------------------------------------------------------------------- helpers


def dump(els):
    if isinstance(els, ET.Element):
        return ET.tostring(els).decode()
    return '[%s]' % ', '.join(ET.tostring(e).decode() for e in els)


def is_push(el):
    return el.tag == C + 'iq' and el.get('type') == 'set' and el.find(R + 'query') is not None


def push_items(els):
    """The single <item/> of each roster push in els, in order."""
    out = []
    for el in els:
        if is_push(el):
            items = el.find(R + 'query').findall(R + 'item')
            check(len(items) == 1, 'a roster push carries exactly one item (RFC 6121 §2.1.6): %s'
                  % dump(el))
            out.append(items[0])
    return out


def state(item):
    """A roster item's subscription state in one string: 'none', 'to+ask', 'none+approved',
    'remove'..."""
    s = item.get('subscription', 'none')
    if item.get('ask') == 'subscribe':
        s += '+ask'
    elif item.get('ask') is not None:
        s += '+ask=%s' % item.get('ask')
    if item.get('approved') == 'true':
        s += '+approved'
    return s


def groups(item):
    return sorted((g.text or '') for g in item.findall(R + 'group'))


def presences(els):
    """(from, type) of each presence stanza in els, in order; type None for available."""
    return [(p.get('from'), p.get('type')) for p in els if p.tag == C + 'presence']


def others(els):
    """Everything in els that is neither a roster push nor a presence."""
    return [e for e in els if not is_push(e) and e.tag != C + 'presence']


class Peer:
    """One logged-in raw client stream. roster=True requests the roster (making the resource
    "interested", RFC 6121 §2.2); presence=True (or the XML of a presence stanza) sends initial
    presence, and self.initial keeps what arrived in answer to it."""

    def __init__(self, server, bare, password, resource=None, roster=False, presence=False):
        self.bare = bare
        self.raw, self.jid = h.authed_raw(server, h.localpart(bare), password, resource=resource)
        self.initial = []
        if roster:
            self.roster()
        if presence:
            self.send(presence if isinstance(presence, str) else '<presence/>')
            self.initial = self.drain()

    def send(self, xml):
        self.raw.send(xml)

    def close(self):
        self.raw.close()

    def _answer_push(self, el):
        # RFC 6121 §2.1.6: a client acknowledges each roster push.
        self.send("<iq type='result' id='%s'/>" % el.get('id'))

    def _read_until(self, pred, timeout):
        got = []
        while True:
            el = self.raw.next(timeout)
            if pred(el):
                return el, got
            if is_push(el):
                self._answer_push(el)
            got.append(el)

    def drain(self, timeout=h.IO_TIMEOUT):
        """Every element received before the answer to a fresh ping (pushes are acknowledged)."""
        pid = 'sync%d' % next(_ids)
        self.send("<iq type='get' id='%s' to='%s'><ping xmlns='%s'/></iq>"
                  % (pid, h.DOMAIN, NS_PING))
        pong, got = self._read_until(lambda e: e.tag == C + 'iq' and e.get('id') == pid, timeout)
        check(pong.get('type') == 'result', 'ping failed: %s' % dump(pong))
        return got

    def wait_for(self, pred, what, timeout=h.IO_TIMEOUT):
        """Reads until an element matching pred arrives; returns (it, elements before it)."""
        try:
            return self._read_until(pred, timeout)
        except h.TestFailure as e:
            raise h.TestFailure('%s: waiting for %s: %s' % (self.jid, what, e))

    def iq(self, type_, payload, to=None):
        """Sends an iq and returns (reply, other elements received before it)."""
        iid = 'iq%d' % next(_ids)
        self.send("<iq type='%s' id='%s'%s>%s</iq>"
                  % (type_, iid, " to='%s'" % to if to else '', payload))
        return self._read_until(lambda e: e.tag == C + 'iq' and e.get('id') == iid
                                and e.get('type') in ('result', 'error'), h.IO_TIMEOUT)

    def roster(self, ver=None):
        """Roster get; returns the result <iq/> (checked to be a result)."""
        attr = '' if ver is None else " ver='%s'" % ver
        r, _ = self.iq('get', "<query xmlns='%s'%s/>" % (NS_ROSTER, attr))
        check(r.get('type') == 'result', 'roster get failed: %s' % dump(r))
        return r

    def items(self):
        """Roster get; {contact: state} for the items."""
        q = self.roster().find(R + 'query')
        check(q is not None, 'roster result without query')
        return {i.get('jid'): state(i) for i in q.findall(R + 'item')}

    def roster_set(self, item_xml):
        """Roster set of raw <item/> XML; returns (reply, elements received before it)."""
        return self.iq('set', "<query xmlns='%s'>%s</query>" % (NS_ROSTER, item_xml))


def error_of(el):
    """(type, condition) of an error stanza."""
    check(el.get('type') == 'error', 'expected an error, got %s' % dump(el))
    err = el.find(C + 'error')
    check(err is not None, 'error stanza without <error/>: %s' % dump(el))
    return err.get('type'), h.stanza_error(el)


def expect_error(reply, etype, cond, what):
    got = error_of(reply)
    check(got == (etype, cond), '%s: expected %s/%s, got %s: %s'
          % (what, etype, cond, got, dump(reply)))


def check_push(el, to, what):
    check(is_push(el), '%s: not a roster push: %s' % (what, dump(el)))
    check(el.get('to') == to, '%s: push to %s, not %s' % (what, el.get('to'), to))
    # RFC 6121 §2.1.6: no 'from', or the user's bare JID.
    check(el.get('from') in (None, to.split('/')[0]), '%s: push from %s' % (what, el.get('from')))
    check(el.get('id'), '%s: push without id' % what)


def users(n, prefix='r'):
    return [srv.new_user(prefix) for _ in range(n)]


# --------------------------------------------------------------------------- tests


def test_default_config_allows_items():
    """Without a [roster] section the documented default (max_items 1000, config.h) applies:
    adding an item to an empty roster works."""
    plain = h.Server().start()
    try:
        a, pw = plain.new_user('dflt')
        b, _ = plain.new_user('c')
        p = Peer(plain, a, pw, roster=True)
        r, _ = p.roster_set("<item jid='%s'/>" % b)
        check(r.get('type') == 'result', 'first roster item refused with the default config '
              '(is [roster] max_items defaulted when the section is absent?): %s' % dump(r))
        p.close()
    finally:
        plain.stop()


def test_stream_features_advertise_versioning_and_preapproval():
    """RFC 6121 §2.6.1 and §3.4.1: both features are announced after authentication."""
    (a, pw), = users(1)
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        ok, cond = h.scram_auth(raw, 'SCRAM-SHA-256', h.localpart(a), pw)
        check(ok, 'auth %s' % cond)
        feats = raw.open()
        check(feats.find('{urn:xmpp:features:rosterver}ver') is not None,
              'no rosterver feature: %s' % dump(feats))
        check(feats.find('{urn:xmpp:features:pre-approval}sub') is not None,
              'no pre-approval feature: %s' % dump(feats))
    finally:
        raw.close()


def test_get_empty_roster_with_version():
    (a, pw), = users(1)
    p = Peer(srv, a, pw, resource='r1')
    try:
        r = p.roster()
        check(r.get('to') == p.jid, 'result to %s' % r.get('to'))
        kids = list(r)
        check(len(kids) == 1 and kids[0].tag == R + 'query', 'result: %s' % dump(r))
        q = kids[0]
        check(list(q) == [], 'fresh account has items: %s' % dump(r))
        # RFC 6121 §2.6.3: a server that supports versioning includes 'ver' in every result.
        check(q.get('ver') not in (None, ''), 'no ver on empty roster: %s' % dump(r))
        # The same request to the user's own bare JID is the same request (RFC 6120 §10.3.3).
        r2, _ = p.iq('get', "<query xmlns='%s'/>" % NS_ROSTER, to=a)
        check(r2.get('type') == 'result' and r2.find(R + 'query').get('ver') == q.get('ver'),
              'roster get to own bare JID: %s' % dump(r2))
        check(p.drain() == [], 'unexpected stanzas')
    finally:
        p.close()


def test_set_update_remove_item():
    (a, pw), (b, _) = users(2)
    p = Peer(srv, a, pw, resource='r1', roster=True)
    try:
        # Set with a name and two groups; subscription/ask from the client are ignored
        # (RFC 6121 §2.1.2.5: only "remove" is meaningful in a set).
        r, before = p.roster_set("<item jid='%s' name='Bob B.' subscription='both' "
                                 "ask='subscribe'><group>Friends</group>"
                                 "<group>Work \u00e9</group></item>" % b)
        check(r.get('type') == 'result' and list(r) == [], 'set reply: %s' % dump(r))
        got = before + p.drain()
        pushes = [e for e in got if is_push(e)]
        check(len(got) == 1 and len(pushes) == 1, 'expected one push, got %s' % dump(got))
        check_push(pushes[0], p.jid, 'set')
        item = push_items(pushes)[0]
        check(item.get('jid') == b and item.get('name') == 'Bob B.' and state(item) == 'none'
              and groups(item) == ['Friends', 'Work \u00e9'], 'pushed item %s' % dump(item))
        q = p.roster().find(R + 'query')
        items = q.findall(R + 'item')
        check(len(items) == 1 and items[0].get('name') == 'Bob B.' and state(items[0]) == 'none'
              and groups(items[0]) == ['Friends', 'Work \u00e9'], 'roster: %s' % dump(q))

        # Update: a new name, one group; the old groups are replaced, not merged.
        r, before = p.roster_set("<item jid='%s' name='Robert'><group>Family</group></item>" % b)
        check(r.get('type') == 'result', 'update reply: %s' % dump(r))
        item = push_items(before + p.drain())
        check(len(item) == 1 and item[0].get('name') == 'Robert'
              and groups(item[0]) == ['Family'], 'update push: %s' % dump(item))
        items = p.roster().find(R + 'query').findall(R + 'item')
        check(len(items) == 1 and items[0].get('name') == 'Robert'
              and groups(items[0]) == ['Family'], 'after update: %s' % dump(items))

        # Update that drops name and groups.
        r, before = p.roster_set("<item jid='%s'/>" % b)
        check(r.get('type') == 'result', 'update reply: %s' % dump(r))
        before += p.drain()
        items = p.roster().find(R + 'query').findall(R + 'item')
        check(len(items) == 1 and items[0].get('name') is None and groups(items[0]) == [],
              'after clearing name and groups: %s' % dump(items))

        # Remove (RFC 6121 §2.5): result, a push with subscription='remove', empty roster.
        r, before = p.roster_set("<item jid='%s' subscription='remove'/>" % b)
        check(r.get('type') == 'result', 'remove reply: %s' % dump(r))
        got = before + p.drain()
        item = push_items(got)
        check(len(got) == 1 and len(item) == 1 and item[0].get('jid') == b
              and item[0].get('subscription') == 'remove' and list(item[0]) == [],
              'remove push: %s' % dump(got))
        check(p.items() == {}, 'roster after remove: %s' % p.items())
        # No subscription existed, so nothing was sent to the contact; nothing else arrived.
        check(p.drain() == [], 'unexpected stanzas after remove')
    finally:
        p.close()


def test_remove_unknown_item_is_item_not_found():
    (a, pw), (b, _) = users(2)
    p = Peer(srv, a, pw, roster=True)
    try:
        r, before = p.roster_set("<item jid='%s' subscription='remove'/>" % b)
        # RFC 6121 §2.5.3
        expect_error(r, 'cancel', 'item-not-found', 'remove of an unknown item')
        check(before + p.drain() == [], 'a failed remove pushed: %s' % dump(before))
    finally:
        p.close()


def test_push_goes_only_to_interested_resources():
    """RFC 6121 §2.2: pushes go to every resource that requested the roster, and only those."""
    (a, pw), (b, _) = users(2)
    r1 = Peer(srv, a, pw, resource='one', roster=True)
    r2 = Peer(srv, a, pw, resource='two', roster=True, presence=True)
    r3 = Peer(srv, a, pw, resource='three', presence=True)  # available, never asked
    try:
        r2.drain()
        reply, before = r1.roster_set("<item jid='%s' name='B'/>" % b)
        check(reply.get('type') == 'result', 'set: %s' % dump(reply))
        got1 = before + r1.drain()
        got2 = r2.drain()
        got3 = r3.drain()
        check(len(got1) == 1, 'origin resource: %s' % dump(got1))
        check_push(got1[0], r1.jid, 'origin push')
        check(len(got2) == 1, 'second interested resource: %s' % dump(got2))
        check_push(got2[0], r2.jid, 'second push')
        check(state(push_items(got2)[0]) == 'none' and push_items(got2)[0].get('name') == 'B',
              'second push item: %s' % dump(got2))
        check(not [e for e in got3 if is_push(e)],
              'resource that never requested the roster got a push: %s' % dump(got3))
        # Once it asks, it is interested too.
        r3.roster()
        r1.roster_set("<item jid='%s' subscription='remove'/>" % b)
        r1.drain()
        got3 = r3.drain()
        check(len(push_items(got3)) == 1
              and push_items(got3)[0].get('subscription') == 'remove',
              'third resource after roster get: %s' % dump(got3))
    finally:
        for p in (r1, r2, r3):
            p.close()


def test_bad_requests():
    (a, pw), (b, _), (c, _) = users(3)
    p = Peer(srv, a, pw, roster=True)
    try:
        # RFC 6121 §2.3.3: more than one item.
        r, _ = p.roster_set("<item jid='%s'/><item jid='%s'/>" % (b, c))
        expect_error(r, 'modify', 'bad-request', 'two items')
        # RFC 6121 §2.3.3: no item at all.
        r, _ = p.roster_set('')
        expect_error(r, 'modify', 'bad-request', 'no item')
        # RFC 6121 §2.3.3: the same group twice.
        r, _ = p.roster_set("<item jid='%s'><group>G</group><group>G</group></item>" % b)
        expect_error(r, 'modify', 'bad-request', 'duplicate group')
        # RFC 6121 §2.1.2.3: the item's 'jid' is a bare JID. The RFC names no condition for a
        # full JID; bad-request is what the server documents (mod_roster.c).
        r, _ = p.roster_set("<item jid='%s/res'/>" % b)
        expect_error(r, 'modify', 'bad-request', 'full JID')
        # Not a JID at all.
        r, _ = p.roster_set("<item jid='a@b@c'/>")
        expect_error(r, 'modify', 'jid-malformed', 'malformed JID')
        r, _ = p.roster_set("<item name='no jid'/>")
        check(r.get('type') == 'error', 'item without jid accepted: %s' % dump(r))
        # RFC 6121 §2.3.3: an empty group name is not acceptable.
        r, _ = p.roster_set("<item jid='%s'><group/></item>" % b)
        check(r.get('type') == 'error' and h.stanza_error(r) in ('not-acceptable', 'bad-request'),
              'empty group: %s' % dump(r))
        # RFC 6121 §2.1.2.4 / §2.3.3: over-long names are refused with not-acceptable.
        r, _ = p.roster_set("<item jid='%s' name='%s'/>" % (b, 'n' * 5000))
        expect_error(r, 'modify', 'not-acceptable', 'long name')
        got = p.drain()
        check(got == [], 'failed sets pushed something: %s' % dump(got))
        check(p.items() == {}, 'failed sets changed the roster: %s' % p.items())
    finally:
        p.close()


def test_other_users_roster_is_forbidden():
    """RFC 6121 §2.1.5 / §2.3.3: a roster get or set addressed to another account."""
    (a, pw), (b, bpw), (c, _) = users(3)
    alice = Peer(srv, a, pw, roster=True)
    bob = Peer(srv, b, bpw, roster=True, presence=True)
    try:
        r, _ = alice.iq('get', "<query xmlns='%s'/>" % NS_ROSTER, to=b)
        expect_error(r, 'auth', 'forbidden', 'get of bob\'s roster')
        check(r.find(R + 'query') is None or list(r.find(R + 'query')) == [],
              'error leaks bob\'s roster: %s' % dump(r))
        r, _ = alice.iq('set', "<query xmlns='%s'><item jid='%s'/></query>" % (NS_ROSTER, c),
                        to=b)
        expect_error(r, 'auth', 'forbidden', 'set in bob\'s roster')
        got = bob.drain()
        check(got == [], 'bob received something: %s' % dump(got))
        check(bob.items() == {}, 'bob\'s roster changed: %s' % bob.items())
    finally:
        alice.close()
        bob.close()


def test_roster_size_limit():
    """[roster] max_items: the item past the limit is refused with not-allowed; existing items
    can still be edited and removed."""
    small = h.Server({'roster': {'max_items': '2'}}).start()
    try:
        a, pw = small.new_user('lim')
        contacts = [small.new_user('c')[0] for _ in range(4)]
        p = Peer(small, a, pw, roster=True, presence=True)
        for c in contacts[:2]:
            r, _ = p.roster_set("<item jid='%s'/>" % c)
            check(r.get('type') == 'result', 'add %s: %s' % (c, dump(r)))
        p.drain()
        r, _ = p.roster_set("<item jid='%s'/>" % contacts[2])
        expect_error(r, 'cancel', 'not-allowed', 'third item with max_items=2')
        check(p.drain() == [], 'refused add pushed something')
        check(sorted(p.items()) == sorted(contacts[:2]), 'roster: %s' % p.items())
        # Editing an existing item does not count as a new one.
        r, _ = p.roster_set("<item jid='%s' name='renamed'/>" % contacts[0])
        check(r.get('type') == 'result', 'edit at the limit: %s' % dump(r))
        # A subscription request would add an item: refused too, and nothing leaves.
        p.send("<presence to='%s' type='subscribe' id='sub1'/>" % contacts[3])
        got = p.drain()
        errs = [e for e in got if e.tag == C + 'presence' and e.get('type') == 'error']
        check(len(errs) == 1 and h.stanza_error(errs[0]) == 'not-allowed',
              'subscribe past the limit: %s' % dump(got))
        check(contacts[3] not in p.items(), 'item added past the limit')
        # After a removal there is room again.
        r, _ = p.roster_set("<item jid='%s' subscription='remove'/>" % contacts[1])
        check(r.get('type') == 'result', 'remove: %s' % dump(r))
        r, _ = p.roster_set("<item jid='%s'/>" % contacts[2])
        check(r.get('type') == 'result', 'add after remove: %s' % dump(r))
        p.close()
    finally:
        small.stop()


def test_roster_versioning():
    """RFC 6121 §2.6: same ver → empty result; a change → a push with a new ver, and that ver is
    then current; an older ver → the full roster with the current ver."""
    (a, pw), (b, _), (c, _) = users(3)
    p = Peer(srv, a, pw, resource='v1')
    other = Peer(srv, a, pw, resource='v2')
    try:
        v0 = p.roster().find(R + 'query').get('ver')
        r = p.roster(ver=v0)
        check(r.get('type') == 'result' and list(r) == [],
              'same ver must give an empty result (RFC 6121 §2.6.3): %s' % dump(r))

        # The other resource asks with the current version: it is interested from now on even
        # though it got an empty result.
        r = other.roster(ver=v0)
        check(list(r) == [], 'other resource, same ver: %s' % dump(r))

        _, got = p.roster_set("<item jid='%s' name='B'/>" % b)
        got += p.drain()
        items = push_items(got)
        check(len(items) == 1, 'push after set: %s' % dump(got))
        v1 = [e for e in got if is_push(e)][0].find(R + 'query').get('ver')
        check(v1 and v1 != v0, 'push ver %r after %r' % (v1, v0))
        got = other.drain()
        check(len(push_items(got)) == 1
              and [e for e in got if is_push(e)][0].find(R + 'query').get('ver') == v1,
              'resource that asked with a ver gets the same push: %s' % dump(got))

        r = p.roster(ver=v1)
        check(list(r) == [], 'ver from the push is current: %s' % dump(r))
        r = p.roster(ver=v0)
        q = r.find(R + 'query')
        check(q is not None and q.get('ver') == v1
              and [i.get('jid') for i in q.findall(R + 'item')] == [b],
              'stale ver must get the roster with the current ver: %s' % dump(r))
        # RFC 6121 §2.6.3: an empty ver means "no cached copy".
        q = p.roster(ver='').find(R + 'query')
        check(q is not None and q.get('ver') == v1 and len(q.findall(R + 'item')) == 1,
              'empty ver: %s' % dump(q))

        _, got = p.roster_set("<item jid='%s'/>" % c)
        _, got2 = p.roster_set("<item jid='%s' subscription='remove'/>" % b)
        got += got2 + p.drain()
        vers = [e.find(R + 'query').get('ver') for e in got if is_push(e)]
        check(len(vers) == 2 and len(set(vers + [v0, v1])) == 4,
              'each change has its own ver: %s after %s, %s' % (vers, v0, v1))
        r = p.roster(ver=vers[-1])
        check(list(r) == [], 'last pushed ver is current: %s' % dump(r))
        q = p.roster(ver=v1).find(R + 'query')
        check([i.get('jid') for i in q.findall(R + 'item')] == [c] and q.get('ver') == vers[-1],
              'roster after add+remove: %s' % dump(q))
    finally:
        p.close()
        other.close()


def test_roster_survives_restart():
    """Roster items are stored: after a restart the same items and ver come back."""
    local = h.Server(IM_CFG).start()
    try:
        a, pw = local.new_user('persist')
        b, _ = local.new_user('c')
        p = Peer(local, a, pw, roster=True)
        r, _ = p.roster_set("<item jid='%s' name='Kept'><group>G1</group></item>" % b)
        check(r.get('type') == 'result', 'set: %s' % dump(r))
        p.drain()
        ver = p.roster().find(R + 'query').get('ver')
        p.close()
        local.restart()
        p = Peer(local, a, pw)
        check(list(p.roster(ver=ver)) == [], 'ver not kept across restart')
        q = p.roster().find(R + 'query')
        items = q.findall(R + 'item')
        check(len(items) == 1 and items[0].get('jid') == b and items[0].get('name') == 'Kept'
              and groups(items[0]) == ['G1'] and state(items[0]) == 'none',
              'roster after restart: %s' % dump(q))
        p.close()
    finally:
        local.stop()
