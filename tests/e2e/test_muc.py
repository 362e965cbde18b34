"""XEP-0045 multi-user chat on conference.localhost: room creation and configuration, joins and
their refusals (nick conflict, password, members-only, bans, max users), groupchat with XEP-0359
stanza ids, subject, private messages, nick changes, kick / ban / voice / affiliations, history on
join, temporary rooms ending with their last occupant, persistent rooms surviving a restart, and
destruction. Driven over raw streams (every attribute checked as sent) and, for the join
handshake as a real client library does it, with slixmpp's xep_0045."""

import itertools
import time
import xml.etree.ElementTree as ET

import harness as h
from harness import check
from test_mam import C, NS_DELAY, NS_SID, RawUser, body, error_condition, esc, features_of

MUC = 'conference.localhost'
NS_MUC = 'http://jabber.org/protocol/muc'
NS_USER = NS_MUC + '#user'
NS_ADMIN = NS_MUC + '#admin'
NS_OWNER = NS_MUC + '#owner'
NS_XDATA = 'jabber:x:data'
NS_INFO = 'http://jabber.org/protocol/disco#info'
NS_ITEMS = 'http://jabber.org/protocol/disco#items'
U = '{%s}' % NS_USER

srv = None
_rooms = itertools.count(1)


def config(**extra):
    over = {'muc': {'hosts': MUC}}
    for k, v in extra.items():
        over['muc'][k] = v
    return over


def setup_module():
    global srv
    srv = h.Server(config()).start()


def teardown_module():
    srv.stop()


def new_room():
    return 'room%d@%s' % (next(_rooms), MUC)


def codes(el):
    return {s.get('code') for s in el.iter(U + 'status')}


def item(el):
    return el.find('%sx/%sitem' % (U, U))


def is_presence(el, frm=None, ptype=None):
    return (el.tag == C + 'presence' and (frm is None or el.get('from') == frm)
            and el.get('type') == ptype)


def roomconfig(**fields):
    """A muc#roomconfig submit form; muc#roomconfig_ is added to each field name."""
    out = ["<x xmlns='%s' type='submit'><field var='FORM_TYPE'><value>%s#roomconfig</value>"
           "</field>" % (NS_XDATA, NS_MUC)]
    for k, v in fields.items():
        out.append("<field var='muc#roomconfig_%s'><value>%s</value></field>" % (k, esc(str(v))))
    return ''.join(out) + '</x>'


class Occ(RawUser):
    """A RawUser that speaks MUC."""

    def next_el(self, pred, timeout=h.IO_TIMEOUT):
        for i, e in enumerate(self.inbox):
            if pred(e):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            check(time.monotonic() < deadline, '%s: nothing matching within %ss; inbox %s'
                  % (self.jid, timeout, [ET.tostring(e)[:200] for e in self.inbox]))
            el = self.raw.next(max(0.1, deadline - time.monotonic()))
            if pred(el):
                return el
            self.inbox.append(el)

    def join(self, room, nick, x="<x xmlns='%s'/>" % NS_MUC):
        """Sends the join presence; returns (self-presence or error presence, everything received
        up to the subject message that ends a successful join, §7.2.16)."""
        self.ping()
        self.inbox = []
        self.send("<presence to='%s/%s'>%s</presence>" % (room, nick, x))
        got, mine = [], None
        while True:
            el = self.raw.next()
            got.append(el)
            if el.tag == C + 'presence' and el.get('type') == 'error':
                return el, got
            if el.tag == C + 'presence' and '110' in codes(el):
                mine = el
            if el.tag == C + 'message' and el.find(C + 'subject') is not None \
                    and el.find(C + 'body') is None:
                check(mine is not None, 'subject before self-presence')
                return mine, got

    def join_ok(self, room, nick, x="<x xmlns='%s'/>" % NS_MUC):
        p, got = self.join(room, nick, x)
        check(p.get('type') is None, '%s could not join %s: %s' % (nick, room, ET.tostring(p)))
        return p, got

    def join_error(self, room, nick, x="<x xmlns='%s'/>" % NS_MUC):
        p, _ = self.join(room, nick, x)
        check(p.get('type') == 'error', '%s joined %s but should not' % (nick, room))
        check(p.get('from') == '%s/%s' % (room, nick), 'error from %s' % p.get('from'))
        return error_condition(p)

    def say(self, room, text, extra=''):
        self.send("<message to='%s' type='groupchat' id='g%d'><body>%s</body>%s</message>"
                  % (room, next(_rooms), esc(text), extra))

    def groupchat(self, room, text):
        return self.next_el(lambda e: e.tag == C + 'message' and body(e) == text
                            and e.get('from', '').startswith(room + '/'))

    def error_message(self):
        return self.next_el(lambda e: e.tag == C + 'message' and e.get('type') == 'error')

    def admin(self, room, items, itype='set'):
        reply, before = self.iq("<query xmlns='%s'>%s</query>" % (NS_ADMIN, items), itype, room)
        self.inbox.extend(before)
        return reply

    def owner(self, room, payload='', itype='set'):
        reply, before = self.iq("<query xmlns='%s'>%s</query>" % (NS_OWNER, payload), itype, room)
        self.inbox.extend(before)
        return reply

    def create(self, room, nick, **cfg):
        """Creates a room (§10.1.1: locked, status 201) and submits its configuration."""
        p, _ = self.join_ok(room, nick)
        check({'110', '201'} <= codes(p), 'creation codes %s' % codes(p))
        r = self.owner(room, roomconfig(**cfg))
        check(r.get('type') == 'result', 'configuration refused: %s' % ET.tostring(r))
        return p

    def leave(self, room, nick):
        self.send("<presence to='%s/%s' type='unavailable'/>" % (room, nick))
        return self.next_el(lambda e: is_presence(e, '%s/%s' % (room, nick), 'unavailable'))


def user(prefix, resource='r'):
    jid, pw = srv.new_user(prefix)
    return Occ(srv, jid, pw, resource=resource)


def bare(o):
    return o.jid.split('/')[0]


def disco(u, to, ns=NS_INFO):
    reply, before = u.iq("<query xmlns='%s'/>" % ns, 'get', to)
    u.inbox.extend(before)
    return reply


def test_disco_service():
    a = user('disco')
    r = disco(a, MUC)
    check(r.get('type') == 'result', 'disco#info on the service: %s' % ET.tostring(r))
    ident = r.find('{%s}query/{%s}identity' % (NS_INFO, NS_INFO))
    check(ident is not None and ident.get('category') == 'conference'
          and ident.get('type') == 'text', 'identity %s' % ET.tostring(r))
    check(NS_MUC in features_of(r), 'features %s' % features_of(r))
    host_items = disco(a, h.DOMAIN, NS_ITEMS)
    check(MUC in {i.get('jid') for i in host_items.iter('{%s}item' % NS_ITEMS)},
          'the host does not list its MUC service: %s' % ET.tostring(host_items))
    room = new_room()
    a.create(room, 'a', roomname='Listed room', publicroom=1)
    items = disco(a, MUC, NS_ITEMS)
    listed = {(i.get('jid'), i.get('name')) for i in items.iter('{%s}item' % NS_ITEMS)}
    check((room, 'Listed room') in listed, 'service items %s' % listed)
    info = disco(a, room)
    feats = features_of(info)
    check({NS_MUC, 'muc_public', 'muc_temporary', 'muc_open', 'muc_unmoderated',
           'muc_semianonymous', 'muc_unsecured', NS_SID} <= feats, 'room features %s' % feats)
    check(error_condition(disco(a, 'nosuchroom@' + MUC)) == 'item-not-found', 'missing room')
    a.close()


def test_full_lifecycle():
    """Three occupants: create, configure, join, messages, subject, PM, nick change, voice, kick,
    ban, affiliations, leave, and the temporary room's end."""
    a, b, c, d = user('alice'), user('bob'), user('carol'), user('dave')
    room = new_room()
    p, _ = a.join_ok(room, 'alice')
    check({'110', '201'} <= codes(p), 'creation codes %s' % codes(p))
    it = item(p)
    check(it.get('affiliation') == 'owner' and it.get('role') == 'moderator', ET.tostring(p))
    # §10.1.3: locked until configured.
    check(b.join_error(room, 'bob') == 'item-not-found', 'joined a locked room')
    form = a.owner(room, itype='get')
    fields = {f.get('var') for f in form.iter('{%s}field' % NS_XDATA)}
    check({'muc#roomconfig_roomname', 'muc#roomconfig_persistentroom',
           'muc#roomconfig_membersonly', 'muc#roomconfig_whois'} <= fields, 'form %s' % fields)
    r = a.owner(room, roomconfig(roomname='Lifecycle', whois='anyone'))
    check(r.get('type') == 'result', ET.tostring(r))
    check(error_condition(b.owner(room, itype='get')) == 'forbidden', 'non-owner got the form')

    p, got = b.join_ok(room, 'bob')
    check(any(is_presence(e, room + '/alice') for e in got), 'bob did not see alice: %s' % got)
    check(item(p).get('role') == 'participant' and item(p).get('affiliation') == 'none',
          ET.tostring(p))
    seen = a.next_el(lambda e: is_presence(e, room + '/bob'))
    check(item(seen).get('jid') == b.jid, 'non-anonymous room hides the jid: %s'
          % ET.tostring(seen))
    check(c.join_error(room, 'bob') == 'conflict', 'nick conflict')  # §7.2.9
    c.join_ok(room, 'carol')

    # §7.4 groupchat with a XEP-0359 stanza id; a spoofed one is removed.
    a.say(room, 'hello all', "<stanza-id xmlns='%s' id='fake' by='%s'/>" % (NS_SID, room))
    ids = set()
    for u in (a, b, c):
        m = u.groupchat(room, 'hello all')
        check(m.get('from') == room + '/alice' and m.get('to') == u.jid, ET.tostring(m))
        sids = [s for s in m.findall('{%s}stanza-id' % NS_SID) if s.get('by') == room]
        check(len(sids) == 1 and sids[0].get('id') != 'fake', 'stanza-id %s' % ET.tostring(m))
        ids.add(sids[0].get('id'))
    check(len(ids) == 1, 'stanza ids differ between occupants: %s' % ids)
    d.say(room, 'outsider')
    check(error_condition(d.error_message()) == 'not-acceptable', 'non-occupant spoke')

    # §8.1 subject: moderators only by default.
    a.send("<message to='%s' type='groupchat'><subject>Today</subject></message>" % room)
    for u in (a, b, c):
        m = u.next_el(lambda e: e.tag == C + 'message' and e.find(C + 'subject') is not None)
        check(m.find(C + 'subject').text == 'Today' and m.get('from') == room + '/alice',
              ET.tostring(m))
    b.send("<message to='%s' type='groupchat'><subject>Mine</subject></message>" % room)
    check(error_condition(b.error_message()) == 'forbidden', 'participant changed the subject')

    # §7.5 private messages.
    b.send("<message to='%s/carol' type='chat'><body>psst</body></message>" % room)
    m = c.next_el(lambda e: e.tag == C + 'message' and body(e) == 'psst')
    check(m.get('from') == room + '/bob' and m.find(U + 'x') is not None, ET.tostring(m))
    b.send("<message to='%s/nobody' type='chat'><body>?</body></message>" % room)
    check(error_condition(b.error_message()) == 'item-not-found', 'PM to a missing nick')
    d.send("<message to='%s/carol' type='chat'><body>hi</body></message>" % room)
    check(error_condition(d.error_message()) == 'not-acceptable', 'PM from a non-occupant')

    # §7.6 nick change: 303 with the new nick, then the new presence.
    c.send("<presence to='%s/carla'/>" % room)
    for u in (a, c):
        gone = u.next_el(lambda e: is_presence(e, room + '/carol', 'unavailable'))
        check('303' in codes(gone) and item(gone).get('nick') == 'carla', ET.tostring(gone))
        u.next_el(lambda e: is_presence(e, room + '/carla'))
    check('110' in codes(gone), 'self 303 without 110')

    # §8.3 / §8.4 voice.
    check(a.admin(room, "<item nick='bob' role='visitor'/>").get('type') == 'result', 'devoice')
    p = b.next_el(lambda e: is_presence(e, room + '/bob'))
    check(item(p).get('role') == 'visitor', ET.tostring(p))
    b.say(room, 'muted?')
    check(error_condition(b.error_message()) == 'forbidden', 'visitor spoke')
    check(a.admin(room, "<item nick='bob' role='participant'/>").get('type') == 'result', 'voice')
    b.say(room, 'back')
    a.groupchat(room, 'back')
    check(error_condition(b.admin(room, "<item nick='carla' role='none'/>")) == 'forbidden',
          'a participant kicked')
    check(error_condition(a.admin(room, "<item nick='ghost' role='none'/>")) == 'item-not-found',
          'kicked a ghost')

    # §8.2 kick.
    r = a.admin(room, "<item nick='carla' role='none'><reason>out</reason></item>")
    check(r.get('type') == 'result', ET.tostring(r))
    k = c.next_el(lambda e: is_presence(e, room + '/carla', 'unavailable'))
    check({'307', '110'} <= codes(k) and item(k).find(U + 'reason').text == 'out'
          and item(k).find(U + 'actor').get('nick') == 'alice', ET.tostring(k))
    k = b.next_el(lambda e: is_presence(e, room + '/carla', 'unavailable'))
    check('307' in codes(k), ET.tostring(k))

    # §9.1 ban: by JID, occupants removed with 301, rejoining refused.
    c.join_ok(room, 'carol')
    r = a.admin(room, "<item jid='%s' affiliation='outcast'/>" % bare(c))
    check(r.get('type') == 'result', ET.tostring(r))
    k = c.next_el(lambda e: is_presence(e, room + '/carol', 'unavailable'))
    check('301' in codes(k), ET.tostring(k))
    check(c.join_error(room, 'carol') == 'forbidden', 'banned user rejoined')  # §7.2.7
    out = a.admin(room, "<item affiliation='outcast'/>", 'get')
    check({i.get('jid') for i in out.iter('{%s}item' % NS_ADMIN)} == {bare(c)},
          'outcast list %s' % ET.tostring(out))
    check(error_condition(b.admin(room, "<item affiliation='outcast'/>", 'get')) == 'forbidden',
          'a participant read the ban list')

    # §9.3 / §10.3 affiliations: admin makes bob a moderator; admins cannot touch owners.
    check(a.admin(room, "<item jid='%s' affiliation='admin'/>" % bare(b)).get('type') == 'result',
          'grant admin')
    p = b.next_el(lambda e: is_presence(e, room + '/bob') and item(e).get('affiliation') == 'admin')
    check(item(p).get('role') == 'moderator', ET.tostring(p))
    check(error_condition(b.admin(room, "<item jid='%s' affiliation='outcast'/>" % bare(a)))
          == 'not-allowed', 'an admin banned the owner')
    check(error_condition(a.admin(room, "<item jid='%s' affiliation='member'/>" % bare(a)))
          == 'conflict', 'the last owner stepped down')  # §10.6

    # §7.14 leave; the temporary room ends with its last occupant.
    b.leave(room, 'bob')
    p = a.next_el(lambda e: is_presence(e, room + '/bob', 'unavailable'))
    check('110' not in codes(p), ET.tostring(p))
    a.leave(room, 'alice')
    check(error_condition(disco(d, room)) == 'item-not-found', 'temporary room survived')
    for u in (a, b, c, d):
        u.close()


def test_history_on_join():
    a, b, c, d, e = user('hist'), user('hb'), user('hc'), user('hd'), user('he')
    room = new_room()
    a.create(room, 'a')
    for i in range(6):
        a.say(room, 'h%d' % i)
        a.groupchat(room, 'h%d' % i)
    a.send("<message to='%s' type='groupchat'><subject>S</subject></message>" % room)
    # The room has taken the subject once its echo is back (the joins below are other streams).
    a.next_el(lambda e: e.tag == C + 'message' and e.findtext(C + 'subject') == 'S')

    def history(got):
        return [m for m in got if m.tag == C + 'message' and body(m) is not None]
    _, got = b.join_ok(room, 'b', "<x xmlns='%s'><history maxstanzas='3'/></x>" % NS_MUC)
    hist = history(got)
    check([body(m) for m in hist] == ['h3', 'h4', 'h5'], 'maxstanzas=3: %s'
          % [body(m) for m in hist])
    for m in hist:
        dl = m.find('{%s}delay' % NS_DELAY)
        check(dl is not None and dl.get('from') == room and m.get('from') == room + '/a',
              ET.tostring(m))
    check(got[-1].find(C + 'subject').text == 'S', 'subject last: %s' % ET.tostring(got[-1]))
    _, got = c.join_ok(room, 'c', "<x xmlns='%s'><history maxchars='0'/></x>" % NS_MUC)
    check(history(got) == [], 'maxchars=0 sent history')
    _, got = d.join_ok(room, 'd', "<x xmlns='%s'><history seconds='3600'/></x>" % NS_MUC)
    check(len(history(got)) == 6, 'seconds=3600: %d' % len(history(got)))
    _, got = e.join_ok(room, 'e', "<x xmlns='%s'><history since='2999-01-01T00:00:00Z'/></x>"
                       % NS_MUC)
    check(history(got) == [], 'since in the future sent history')
    for u in (a, b, c, d, e):
        u.close()


def test_password_members_only_max_users():
    a, b, c, d = user('pw'), user('pb'), user('pc'), user('pd')
    room = new_room()
    a.create(room, 'a', passwordprotectedroom=1, roomsecret='sesame')
    check('muc_passwordprotected' in features_of(disco(b, room)), 'password feature')
    check(b.join_error(room, 'b') == 'not-authorized', 'joined without the password')  # §7.2.5
    check(b.join_error(room, 'b', "<x xmlns='%s'><password>nope</password></x>" % NS_MUC)
          == 'not-authorized', 'joined with a wrong password')
    b.join_ok(room, 'b', "<x xmlns='%s'><password>sesame</password></x>" % NS_MUC)

    # Members-only: bob, not a member, is sent away (322); carol needs membership (§7.2.6).
    r = a.owner(room, roomconfig(membersonly=1, passwordprotectedroom=0))
    check(r.get('type') == 'result', ET.tostring(r))
    k = b.next_el(lambda e: is_presence(e, room + '/b', 'unavailable'))
    check('322' in codes(k), ET.tostring(k))
    note = a.next_el(lambda e: e.tag == C + 'message' and '104' in codes(e))
    check(note.get('from') == room, ET.tostring(note))
    check(c.join_error(room, 'c') == 'registration-required', 'non-member joined')
    check(a.admin(room, "<item jid='%s' affiliation='member'/>" % bare(c)).get('type')
          == 'result', 'add member')
    c.join_ok(room, 'c')

    # §7.2.10 max users: the owner may still enter a full room, others get 503.
    r = a.owner(room, roomconfig(membersonly=0, maxusers=2))
    check(r.get('type') == 'result', ET.tostring(r))
    check(d.join_error(room, 'd') == 'service-unavailable', 'joined a full room')
    c.leave(room, 'c')
    d.join_ok(room, 'd')
    for u in (a, b, c, d):
        u.close()


async def test_slixmpp_join_with_history():
    """slixmpp's join handshake (occupants, self-presence, history, subject) against the room."""
    a = user('sa')
    room = new_room()
    a.create(room, 'owner')
    for i in range(4):
        a.say(room, 'm%d' % i)
        a.groupchat(room, 'm%d' % i)
    jid, pw = srv.new_user('sx')
    cl = await h.connect(srv, jid, pw, plugins=('xep_0045',))
    pres, subject, occupants, hist = await cl['xep_0045'].join_muc_wait(room, 'slix',
                                                                        maxstanzas=2,
                                                                        timeout=h.IO_TIMEOUT)
    check(pres['muc']['role'] == 'participant', 'role %s' % pres['muc']['role'])
    check([m['body'] for m in hist] == ['m2', 'm3'], 'history %s' % [m['body'] for m in hist])
    check('owner' in [p['from'].resource for p in occupants], 'occupants %s' % occupants)
    cl.send_message(mto=room, mbody='from slixmpp', mtype='groupchat')
    # The echo first: the raw client below blocks slixmpp's event loop while it waits.
    got = await cl.next_message(pred=lambda m: m['body'] == 'from slixmpp')
    check(got['from'] == room + '/slix', 'echo from %s' % got['from'])
    m = a.groupchat(room, 'from slixmpp')
    check(m.get('from') == room + '/slix', ET.tostring(m))
    await cl.close()
    a.close()


def test_persistence_and_destroy():
    """A persistent room keeps its configuration, subject and affiliations across a restart;
    destroying it (§10.9) removes it for good."""
    s = h.Server(config()).start()
    try:
        def u(prefix):
            jid, pw = s.new_user(prefix)
            return Occ(s, jid, pw), (jid, pw)
        a, acred = u('keep')
        b, bcred = u('kb')
        c, ccred = u('kc')
        room = 'keep@' + MUC
        a.create(room, 'a', persistentroom=1, membersonly=1, roomname='Kept')
        a.admin(room, "<item jid='%s' affiliation='member'/>" % bcred[0])
        a.send("<message to='%s' type='groupchat'><subject>Survives</subject></message>" % room)
        a.next_el(lambda e: e.tag == C + 'message' and e.find(C + 'subject') is not None)
        for x in (a, b, c):
            x.close()
        s.restart()
        a, b, c = Occ(s, *acred), Occ(s, *bcred), Occ(s, *ccred)
        info = disco(b, room)
        check({'muc_persistent', 'muc_membersonly'} <= features_of(info), ET.tostring(info))
        ident = info.find('{%s}query/{%s}identity' % (NS_INFO, NS_INFO))
        check(ident.get('name') == 'Kept', 'name %s' % ident.get('name'))
        _, got = b.join_ok(room, 'b')
        check(got[-1].find(C + 'subject').text == 'Survives', ET.tostring(got[-1]))
        check(c.join_error(room, 'c') == 'registration-required', 'members-only lost')
        # The room stays when everyone leaves.
        b.leave(room, 'b')
        check(disco(c, room).get('type') == 'result', 'persistent room went away')
        # §10.9 destroy.
        a.join_ok(room, 'a')
        b.join_ok(room, 'b')
        check(error_condition(b.owner(room, "<destroy/>")) == 'forbidden', 'member destroyed')
        r = a.owner(room, "<destroy jid='elsewhere@%s'><reason>bye</reason></destroy>" % MUC)
        check(r.get('type') == 'result', ET.tostring(r))
        p = b.next_el(lambda e: is_presence(e, room + '/b', 'unavailable'))
        dst = p.find('%sx/%sdestroy' % (U, U))
        check(dst is not None and dst.get('jid') == 'elsewhere@' + MUC
              and dst.find(U + 'reason').text == 'bye', ET.tostring(p))
        check(error_condition(disco(c, room)) == 'item-not-found', 'destroyed room answers')
        for x in (a, b, c):
            x.close()
        s.restart()
        c = Occ(s, *ccred)
        check(error_condition(disco(c, room)) == 'item-not-found', 'destroyed room came back')
        c.close()
    finally:
        s.stop()


def test_departures_invitations_and_self_ping():
    """An occupant whose session ends leaves the room (its directed presence ends, RFC 6121
    §4.6); §7.8.2 mediated invitations; XEP-0410 self-ping; IQs relayed between occupants."""
    a, b, c = user('da'), user('db'), user('dc')
    room = new_room()
    a.create(room, 'a', membersonly=1)
    # Invitation by the owner into a members-only room makes the invitee a member.
    a.send("<message to='%s'><x xmlns='%s'><invite to='%s'><reason>come</reason></invite></x>"
           "</message>" % (room, NS_USER, bare(b)))
    inv = b.next_el(lambda e: e.tag == C + 'message' and e.get('from') == room)
    i = inv.find('%sx/%sinvite' % (U, U))
    check(i is not None and i.get('from') == bare(a) and i.find(U + 'reason').text == 'come',
          ET.tostring(inv))
    b.join_ok(room, 'b')
    # XEP-0410: a ping to one's own occupant JID is answered while joined...
    r, _ = b.iq("<ping xmlns='urn:xmpp:ping'/>", 'get', room + '/b')
    check(r.get('type') == 'result', 'self-ping: %s' % ET.tostring(r))
    r, _ = c.iq("<ping xmlns='urn:xmpp:ping'/>", 'get', room + '/b')
    check(error_condition(r) == 'not-acceptable', 'non-occupant ping: %s' % ET.tostring(r))
    # ...and a version request to another occupant reaches its real JID from our room JID.
    b.send("<iq type='get' id='v1' to='%s/a'><query xmlns='jabber:iq:version'/></iq>" % room)
    q = a.next_el(lambda e: e.tag == C + 'iq' and e.get('id') == 'v1')
    check(q.get('from') == room + '/b' and q.get('to') == a.jid, ET.tostring(q))
    a.send("<iq type='result' id='v1' to='%s/b'><query xmlns='jabber:iq:version'><name>x</name>"
           "</query></iq>" % room)
    ans = b.next_el(lambda e: e.tag == C + 'iq' and e.get('id') == 'v1')
    check(ans.get('type') == 'result' and ans.get('from') == room + '/a', ET.tostring(ans))
    # The session ends without a goodbye: the room learns it anyway.
    b.close()
    gone = a.next_el(lambda e: is_presence(e, room + '/b', 'unavailable'))
    check(item(gone).get('role') == 'none', ET.tostring(gone))
    r, _ = a.iq("<query xmlns='%s'/>" % NS_ITEMS, 'get', room)
    check([i.get('jid') for i in r.iter('{%s}item' % NS_ITEMS)] == [room + '/a'],
          'occupants after departure: %s' % ET.tostring(r))
    # A resource that joined without initial presence leaves no directed-presence trail; the
    # first groupchat bounced by its vanished session removes it (333) — the bounce arrives
    # while the broadcast is still under way.
    jid, pw = srv.new_user('ghost')
    g = Occ(srv, jid, pw, presence=False)
    a.admin(room, "<item jid='%s' affiliation='member'/>" % bare(g))
    g.join_ok(room, 'g')
    a.next_el(lambda e: is_presence(e, room + '/g'))
    g.close()
    a.say(room, 'anyone?')
    a.groupchat(room, 'anyone?')
    gone = a.next_el(lambda e: is_presence(e, room + '/g', 'unavailable'))
    check('333' in codes(gone), ET.tostring(gone))
    a.close(), c.close()


def test_room_archive():
    """XEP-0313 on the room JID: the live stanza-id is the archive id; paging both ways; a
    members-only room's archive is closed to outsiders."""
    a, b = user('ma'), user('mb')
    room = new_room()
    a.create(room, 'a')
    check('urn:xmpp:mam:2' in features_of(disco(a, room)), 'room does not advertise MAM')
    live = []
    for i in range(5):
        a.say(room, 'arch%d' % i)
        m = a.groupchat(room, 'arch%d' % i)
        live.append([s.get('id') for s in m.findall('{%s}stanza-id' % NS_SID)
                     if s.get('by') == room][0])

    def query(u, extra, to=room):
        qid = 'q%d' % next(_rooms)
        reply, before = u.iq("<query xmlns='urn:xmpp:mam:2' queryid='%s'>%s</query>"
                             % (qid, extra), 'set', to)
        res = [e.find('{urn:xmpp:mam:2}result') for e in before if e.tag == C + 'message']
        res = [r for r in res if r is not None and r.get('queryid') == qid]
        u.inbox.extend(e for e in before if e.tag != C + 'message')
        msgs = [r.find('{urn:xmpp:forward:0}forwarded/%smessage' % C) for r in res]
        return reply, [r.get('id') for r in res], [body(m) for m in msgs]
    reply, ids, bodies = query(b, "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max></set>")
    check(reply.get('type') == 'result', ET.tostring(reply))
    fin = reply.find('{urn:xmpp:mam:2}fin')
    check(bodies == ['arch0', 'arch1'] and ids == live[:2] and fin.get('complete') == 'false',
          'first page %s %s %s' % (bodies, ids, ET.tostring(reply)))
    _, ids, bodies = query(b, "<set xmlns='http://jabber.org/protocol/rsm'><max>2</max>"
                              "<before/></set>")
    check(bodies == ['arch3', 'arch4'] and ids == live[3:], 'last page %s' % bodies)
    _, _, bodies = query(b, "<set xmlns='http://jabber.org/protocol/rsm'><after>%s</after></set>"
                         % live[2])
    check(bodies == ['arch3', 'arch4'], 'after %s' % bodies)
    r, _, _ = query(b, "<set xmlns='http://jabber.org/protocol/rsm'><after>nope</after></set>")
    check(error_condition(r) == 'item-not-found', 'unknown after id: %s' % ET.tostring(r))
    check(a.owner(room, roomconfig(membersonly=1)).get('type') == 'result', 'members-only')
    r, _, _ = query(b, '')
    check(error_condition(r) == 'forbidden', 'outsider read a members-only archive')
    a.close(), b.close()


def test_moderation_retracts_a_message():
    """XEP-0425: a moderator retracts a participant's message by its stanza-id; every occupant
    gets the retraction, the room history and archive no longer hold the message, and neither a
    participant nor an unknown id gets anywhere."""
    NS_MOD, NS_RETRACT = 'urn:xmpp:message-moderate:1', 'urn:xmpp:message-retract:1'
    a, b = user('moda'), user('modb')
    room = new_room()
    a.create(room, 'a')
    check(NS_MOD in features_of(disco(a, room)), 'room does not advertise moderation')
    b.join_ok(room, 'b')
    b.say(room, 'something rude')
    m = a.groupchat(room, 'something rude')
    b.groupchat(room, 'something rude')
    sid = [s.get('id') for s in m.findall('{%s}stanza-id' % NS_SID) if s.get('by') == room][0]

    def moderate(u, msg_id):
        reply, before = u.iq("<moderate xmlns='%s' id='%s'><retract xmlns='%s'/>"
                             "<reason>spam</reason></moderate>" % (NS_MOD, msg_id, NS_RETRACT),
                             'set', room)
        u.inbox.extend(before)
        return reply
    r = moderate(b, sid)
    check(error_condition(r) == 'forbidden', 'a participant moderated: %s' % ET.tostring(r))
    r = moderate(a, 'no-such-id')
    check(error_condition(r) == 'item-not-found', 'unknown id: %s' % ET.tostring(r))
    r = moderate(a, sid)
    check(r.get('type') == 'result', 'moderation refused: %s' % ET.tostring(r))
    for u in (a, b):
        ret = u.next_el(lambda e: e.tag == C + 'message' and
                        e.find('{%s}retract' % NS_RETRACT) is not None)
        el = ret.find('{%s}retract' % NS_RETRACT)
        check(el.get('id') == sid and ret.get('from') == room, ET.tostring(ret))
        by = el.find('{%s}moderated' % NS_MOD)
        check(by is not None and by.get('by') == room + '/a', ET.tostring(ret))
        check(el.findtext('{%s}reason' % NS_RETRACT) == 'spam', ET.tostring(ret))
    # A newcomer's history shows the retraction, not the message.
    c = user('modc')
    _, got = c.join_ok(room, 'c')
    bodies = [body(e) for e in got if e.tag == C + 'message']
    check('something rude' not in bodies, 'history still has the message: %s' % bodies)
    check(any(e.find('{%s}retract' % NS_RETRACT) is not None for e in got),
          'history lacks the retraction')
    # And the archive.
    reply, before = c.iq("<query xmlns='urn:xmpp:mam:2' queryid='mq'/>", 'set', room)
    archived = [ET.tostring(e) for e in before if e.tag == C + 'message']
    check(not any(b'something rude' in x for x in archived), 'archive still has it')
    check(any(NS_RETRACT.encode() in x for x in archived), 'archive lacks the retraction')
    a.close(), b.close(), c.close()


def test_bookmarks_let_a_client_rejoin():
    """XEP-0048 bookmarks in private XML storage (XEP-0049): a client stores its rooms with
    autojoin, and a later session of the same account reads them back and rejoins."""
    NS_PRIV, NS_BM = 'jabber:iq:private', 'storage:bookmarks'
    jid, pw = srv.new_user('bm')
    a = Occ(srv, jid, pw, resource='first')
    room = new_room()
    a.create(room, 'me')
    r, _ = a.iq("<query xmlns='%s'><storage xmlns='%s'><conference jid='%s' autojoin='true' "
                "name='Our room'><nick>me</nick></conference></storage></query>"
                % (NS_PRIV, NS_BM, room), 'set')
    check(r.get('type') == 'result', 'bookmark store refused: %s' % ET.tostring(r))
    a.leave(room, 'me')
    a.close()
    b = Occ(srv, jid, pw, resource='second')
    r, _ = b.iq("<query xmlns='%s'><storage xmlns='%s'/></query>" % (NS_PRIV, NS_BM), 'get')
    conf = r.find('{%s}query/{%s}storage/{%s}conference' % (NS_PRIV, NS_BM, NS_BM))
    check(conf is not None and conf.get('jid') == room and conf.get('autojoin') == 'true',
          'bookmarks: %s' % ET.tostring(r))
    nick = conf.findtext('{%s}nick' % NS_BM)
    p, _ = b.join_ok(conf.get('jid'), nick)
    check('110' in codes(p), 'rejoin from the bookmark failed: %s' % ET.tostring(p))
    b.close()


def test_direct_invitation_reaches_the_invitee():
    """XEP-0249 direct invitations go from user to user, not through the room; the server must
    deliver them intact (the jabber:x:conference payload with the room and its password)."""
    a, b = user('dia'), user('dib')
    room = new_room()
    a.create(room, 'a')
    a.send("<message to='%s' id='inv1'><x xmlns='jabber:x:conference' jid='%s' "
           "password='pw' reason='join us'/></message>" % (bare(b), room))
    m = b.next_el(lambda e: e.tag == C + 'message' and
                  e.find('{jabber:x:conference}x') is not None)
    x = m.find('{jabber:x:conference}x')
    check(m.get('from') == a.jid and x.get('jid') == room and x.get('password') == 'pw' and
          x.get('reason') == 'join us', ET.tostring(m))
    p, _ = b.join_ok(x.get('jid'), 'b')
    check('110' in codes(p), 'invitee could not join')
    a.close(), b.close()
