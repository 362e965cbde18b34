"""XEP-0313 message archive management (with XEP-0059 paging and XEP-0441 preferences), driven
over raw streams so every element and attribute is checked as sent. Also home of RawUser, the
small raw-stream client the offline and carbons tests share."""

import itertools
import os
import sqlite3
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta

import harness as h
from harness import check

NS_MAM = 'urn:xmpp:mam:2'
NS_RSM = 'http://jabber.org/protocol/rsm'
NS_FWD = 'urn:xmpp:forward:0'
NS_DELAY = 'urn:xmpp:delay'
NS_SID = 'urn:xmpp:sid:0'
NS_XDATA = 'jabber:x:data'
NS_DISCO = 'http://jabber.org/protocol/disco#info'
C = '{jabber:client}'

srv = None
_ids = itertools.count(1)


def esc(s):
    return s.replace('&', '&amp;').replace('<', '&lt;').replace("'", '&apos;')


class RawUser:
    """One logged-in resource on a raw stream. Elements read while waiting for something else
    are kept in self.inbox, so nothing is lost."""

    def __init__(self, server, jid, password, resource='r', presence=True, priority=None):
        self.raw, self.jid = h.authed_raw(server, h.localpart(jid), password, resource=resource)
        self.bare = jid
        self.inbox = []
        if presence:
            prio = '<priority>%d</priority>' % priority if priority is not None else ''
            self.raw.send('<presence>%s</presence>' % prio)
            self.ping()

    def close(self):
        """Ends the stream and waits for the server to end its side, so the session is gone
        when this returns."""
        try:
            self.raw.send('</stream:stream>')
            while True:
                self.inbox.append(self.raw.next(h.IO_TIMEOUT))
        except (OSError, h.StreamClosed):
            pass
        self.raw.close()

    def send(self, xml):
        self.raw.send(xml)

    def message(self, to, body, mtype='chat', extra='', mid=None):
        """Sends a message, then a ping on the same stream: when this returns the server has
        routed the message, so another user's messages() sees what it caused."""
        self.raw.send("<message to='%s' type='%s' id='%s'><body>%s</body>%s</message>"
                      % (to, mtype, mid or 'm%d' % next(_ids), esc(body), extra))
        self.ping()

    def iq(self, payload, itype='set', to=None):
        """Sends an iq; returns (reply iq, elements received before it)."""
        iid = 'iq%d' % next(_ids)
        self.raw.send("<iq type='%s' id='%s'%s>%s</iq>"
                      % (itype, iid, " to='%s'" % to if to else '', payload))
        before = []
        while True:
            el = self.raw.next()
            if el.tag == C + 'iq' and el.get('id') == iid:
                return el, before
            before.append(el)

    def ping(self):
        """A round trip: everything the server sent before the pong lands in inbox."""
        _, before = self.iq("<ping xmlns='urn:xmpp:ping'/>", 'get', to=h.DOMAIN)
        self.inbox.extend(before)

    def messages(self):
        """Takes the <message/> elements of the inbox (after a ping)."""
        self.ping()
        out = [e for e in self.inbox if e.tag == C + 'message']
        self.inbox = [e for e in self.inbox if e.tag != C + 'message']
        return out

    def next_message(self, pred=lambda m: True, timeout=h.IO_TIMEOUT):
        for i, e in enumerate(self.inbox):
            if e.tag == C + 'message' and pred(e):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            el = self.raw.next(max(0.1, deadline - time.monotonic()))
            if el.tag == C + 'message' and pred(el):
                return el
            self.inbox.append(el)


def body(m):
    b = m.find(C + 'body')
    return b.text if b is not None else None


def error_condition(el):
    return h.stanza_error(el)


def features_of(reply):
    return {f.get('var') for f in reply.iter('{%s}feature' % NS_DISCO)}


# --------------------------------------------------------------------------- MAM helpers


def form(**fields):
    out = ["<x xmlns='%s' type='submit'><field var='FORM_TYPE' type='hidden'><value>%s</value>"
           "</field>" % (NS_XDATA, NS_MAM)]
    for k, v in fields.items():
        values = v if isinstance(v, list) else [v]
        out.append("<field var='%s'>%s</field>" % (k.replace('_', '-'), ''.join(
            '<value>%s</value>' % esc(x) for x in values)))
    out.append('</x>')
    return ''.join(out)


def rsm(max=None, after=None, before=None):
    parts = []
    if max is not None:
        parts.append('<max>%d</max>' % max)
    if after is not None:
        parts.append('<after>%s</after>' % after)
    if before is not None:
        parts.append('<before>%s</before>' % before if before else '<before/>')
    return "<set xmlns='%s'>%s</set>" % (NS_RSM, ''.join(parts)) if parts else ''


class Page:
    def __init__(self, reply, results, qid):
        self.reply = reply
        self.type = reply.get('type')
        self.error = error_condition(reply) if self.type == 'error' else None
        self.items = []  # (archive id, stamp, forwarded message)
        for m in results:
            r = m.find('{%s}result' % NS_MAM)
            check(r is not None, 'not a MAM result: %s' % ET.tostring(m))
            check(r.get('queryid') == qid, 'queryid %r, expected %r' % (r.get('queryid'), qid))
            fwd = r.find('{%s}forwarded' % NS_FWD)
            delay = fwd.find('{%s}delay' % NS_DELAY)
            self.items.append((r.get('id'), delay.get('stamp'), fwd.find(C + 'message')))
        fin = reply.find('{%s}fin' % NS_MAM)
        self.complete = fin is not None and fin.get('complete') == 'true'
        s = fin.find('{%s}set' % NS_RSM) if fin is not None else None
        get = (lambda t: s.find('{%s}%s' % (NS_RSM, t)) if s is not None else None)
        self.first = get('first').text if get('first') is not None else None
        self.first_index = get('first').get('index') if get('first') is not None else None
        self.last = get('last').text if get('last') is not None else None
        self.count = int(get('count').text) if get('count') is not None else None

    @property
    def bodies(self):
        return [body(m) for _, _, m in self.items]

    @property
    def ids(self):
        return [i for i, _, _ in self.items]


def query(user, x='', s='', extra=''):
    qid = 'q%d' % next(_ids)
    reply, before = user.iq("<query xmlns='%s' queryid='%s'>%s%s%s</query>"
                            % (NS_MAM, qid, x, s, extra))
    results = [e for e in before if e.tag == C + 'message' and
               e.find('{%s}result' % NS_MAM) is not None]
    user.inbox.extend(e for e in before if e not in results)
    page = Page(reply, results, qid)
    if page.type == 'result':
        # RSM first/last name the page's oldest and newest items, flipped or not (§4.3.4).
        ids = page.ids[::-1] if '<flip-page/>' in extra else page.ids
        check(page.first == (ids[0] if ids else None),
              'rsm first %r vs results %r' % (page.first, ids))
        check(page.last == (ids[-1] if ids else None),
              'rsm last %r vs results %r' % (page.last, ids))
    return page


def setup_module():
    global srv
    srv = h.Server().start()


def teardown_module():
    srv.stop()


def pair(a_res='a', b_res='b'):
    a_jid, a_pw = srv.new_user('alice')
    b_jid, b_pw = srv.new_user('bob')
    return RawUser(srv, a_jid, a_pw, a_res), RawUser(srv, b_jid, b_pw, b_res)


# --------------------------------------------------------------------------- tests


def test_disco_on_account():
    """XEP-0313 §7: features on the user's bare JID."""
    a, b = pair()
    reply, _ = a.iq("<query xmlns='%s'/>" % NS_DISCO, 'get', to=a.bare)
    check(reply.get('type') == 'result', 'disco failed: %s' % ET.tostring(reply))
    feats = features_of(reply)
    check(NS_MAM in feats and NS_MAM + '#extended' in feats, 'features %s' % feats)
    a.close(), b.close()


def test_archive_both_ways_with_stanza_id():
    a, b = pair()
    a.message(b.bare, 'hello bob')
    got = b.next_message(lambda m: body(m) == 'hello bob')
    sids = got.findall('{%s}stanza-id' % NS_SID)
    check(len(sids) == 1 and sids[0].get('by') == b.bare, 'stanza-id: %s' % ET.tostring(got))
    b.message(a.jid, 'hi alice')
    a.next_message(lambda m: body(m) == 'hi alice')
    pb = query(b)
    check(pb.type == 'result' and pb.bodies == ['hello bob', 'hi alice'],
          "bob's archive: %s %s" % (pb.type, pb.bodies))
    check(pb.ids[0] == sids[0].get('id'), 'stanza-id %s is not the archive id %s'
          % (sids[0].get('id'), pb.ids[0]))
    check(pb.complete and pb.count == 2 and pb.first_index == '0', 'fin: complete=%s count=%s'
          % (pb.complete, pb.count))
    fwd = pb.items[0][2]
    check(fwd.get('from') == a.jid and fwd.get('to') == b.bare, 'forwarded addresses %s'
          % ET.tostring(fwd))
    pa = query(a)
    check(pa.bodies == ['hello bob', 'hi alice'], "alice's archive: %s" % pa.bodies)
    a.close(), b.close()


def test_spoofed_stanza_id_removed():
    """XEP-0359 §3.1: a stanza-id by the recipient that the sender made up is removed."""
    a, b = pair()
    a.message(b.bare, 'forged', extra="<stanza-id xmlns='%s' by='%s' id='fake'/>"
              % (NS_SID, b.bare))
    got = b.next_message(lambda m: body(m) == 'forged')
    ids = [s.get('id') for s in got.findall('{%s}stanza-id' % NS_SID)]
    check(len(ids) == 1 and ids[0] != 'fake', 'stanza-ids %s' % ids)
    a.close(), b.close()


def test_chat_states_and_headlines_not_archived():
    a, b = pair()
    a.send("<message to='%s' type='chat'><composing "
           "xmlns='http://jabber.org/protocol/chatstates'/></message>" % b.bare)
    a.message(b.bare, 'news', mtype='headline')
    a.message(b.bare, 'private', extra="<no-permanent-store xmlns='urn:xmpp:hints'/>")
    a.message(b.bare, 'kept')
    b.next_message(lambda m: body(m) == 'kept')
    check(query(b).bodies == ['kept'], 'archived %s' % query(b).bodies)
    a.close(), b.close()


def test_query_by_with():
    a, b = pair()
    c_jid, c_pw = srv.new_user('carol')
    c = RawUser(srv, c_jid, c_pw, 'c')
    a.message(b.bare, 'from alice 1')
    c.message(b.bare, 'from carol')
    a.message(b.bare, 'from alice 2')
    b.message(c.bare, 'to carol')
    b.next_message(lambda m: body(m) == 'from alice 2')
    c.next_message(lambda m: body(m) == 'to carol')
    check(query(b, form(**{'with': a.bare})).bodies == ['from alice 1', 'from alice 2'],
          'with alice')
    pc = query(b, form(**{'with': c.bare}))
    check(pc.bodies == ['from carol', 'to carol'] and pc.count == 2, 'with carol: %s'
          % pc.bodies)
    # A full JID matches exactly that resource (§4.1.1).
    check(query(b, form(**{'with': a.jid})).bodies == ['from alice 1', 'from alice 2'],
          'with alice full JID')
    check(query(b, form(**{'with': a.bare + '/other'})).bodies == [], 'with another resource')
    a.close(), b.close(), c.close()


def test_query_by_time():
    a, b = pair()
    a.message(b.bare, 'early')
    b.next_message(lambda m: body(m) == 'early')
    # Archive time has one-second resolution: let the clock move on.
    time.sleep(1.2)
    a.message(b.bare, 'late 1')
    a.message(b.bare, 'late 2')
    b.next_message(lambda m: body(m) == 'late 2')
    items = query(b).items
    check(len(items) == 3, 'three items: %s' % items)
    early, late = items[0][1], items[1][1]
    check(early < late, 'stamps %s %s' % (early, late))
    check(query(b, form(start=late)).bodies == ['late 1', 'late 2'], 'start')
    check(query(b, form(end=early)).bodies == ['early'], 'end')
    check(query(b, form(start=early, end=early)).bodies == ['early'], 'start and end')
    # Time zone offsets are honoured (XEP-0082).
    t = datetime.strptime(late, '%Y-%m-%dT%H:%M:%SZ')
    plus2 = (t + timedelta(hours=2)).strftime('%Y-%m-%dT%H:%M:%S') + '+02:00'
    check(query(b, form(start=plus2)).bodies == ['late 1', 'late 2'], 'start with offset')
    t2 = datetime.strptime(items[2][1], '%Y-%m-%dT%H:%M:%SZ')
    minus = (t2 - timedelta(hours=5, minutes=30)).strftime('%Y-%m-%dT%H:%M:%S.250') + '-05:30'
    check(query(b, form(end=minus)).bodies == ['early', 'late 1', 'late 2'], 'end with offset')
    bad = query(b, form(start='yesterday'))
    check(bad.type == 'error' and bad.error == 'bad-request', 'bad date: %s' % bad.error)
    a.close(), b.close()


def test_rsm_paging_forward_and_backward():
    a, b = pair()
    for i in range(5):
        a.message(b.bare, 'n%d' % i)
    b.next_message(lambda m: body(m) == 'n4')
    p1 = query(b, s=rsm(max=2))
    check(p1.bodies == ['n0', 'n1'] and not p1.complete and p1.count == 5, 'page 1 %s %s'
          % (p1.bodies, p1.complete))
    p2 = query(b, s=rsm(max=2, after=p1.last))
    check(p2.bodies == ['n2', 'n3'] and not p2.complete, 'page 2 %s' % p2.bodies)
    p3 = query(b, s=rsm(max=2, after=p2.last))
    check(p3.bodies == ['n4'] and p3.complete, 'page 3 %s %s' % (p3.bodies, p3.complete))
    # Backward from the end: an empty <before/> is the last page (XEP-0059 §2.5).
    l1 = query(b, s=rsm(max=2, before=''))
    check(l1.bodies == ['n3', 'n4'] and not l1.complete and l1.first_index == '3',
          'last page %s index %s' % (l1.bodies, l1.first_index))
    l2 = query(b, s=rsm(max=2, before=l1.first))
    check(l2.bodies == ['n1', 'n2'] and not l2.complete, 'page before %s' % l2.bodies)
    l3 = query(b, s=rsm(max=2, before=l2.first))
    check(l3.bodies == ['n0'] and l3.complete, 'first page backwards %s %s'
          % (l3.bodies, l3.complete))
    # max=0: only the count (XEP-0059 §2.7).
    c = query(b, s=rsm(max=0))
    check(c.items == [] and c.count == 5, 'count only: %s %s' % (c.items, c.count))
    # Unknown ids: item-not-found (XEP-0313 §4.3.2).
    for s in (rsm(max=2, after='nope'), rsm(max=2, before='nope')):
        e = query(b, s=s)
        check(e.type == 'error' and e.error == 'item-not-found', 'unknown id: %s' % e.error)
    a.close(), b.close()


def test_extended_ids_flip_and_metadata():
    a, b = pair()
    for i in range(4):
        a.message(b.bare, 'x%d' % i)
    b.next_message(lambda m: body(m) == 'x3')
    ids = query(b).ids
    between = query(b, form(after_id=ids[0], before_id=ids[3]))
    check(between.bodies == ['x1', 'x2'], 'after-id/before-id %s' % between.bodies)
    one = query(b, form(ids=[ids[2], ids[0]]))
    check(sorted(one.bodies) == ['x0', 'x2'], 'ids field %s' % one.bodies)
    missing = query(b, form(ids=['nope']))
    check(missing.error == 'item-not-found', 'unknown id in ids: %s' % missing.error)
    flipped = query(b, s=rsm(max=2, before=''), extra='<flip-page/>')
    check(flipped.bodies == ['x3', 'x2'], 'flipped %s' % flipped.bodies)
    unknown = query(b, form(**{'{urn:example}nonsense': 'x'}))
    check(unknown.error == 'feature-not-implemented', 'unknown field: %s' % unknown.error)
    md, _ = b.iq("<metadata xmlns='%s'/>" % NS_MAM, 'get')
    start = md.find('{%s}metadata/{%s}start' % (NS_MAM, NS_MAM))
    end = md.find('{%s}metadata/{%s}end' % (NS_MAM, NS_MAM))
    check(start is not None and start.get('id') == ids[0] and end.get('id') == ids[3],
          'metadata %s' % ET.tostring(md))
    fields, _ = b.iq("<query xmlns='%s'/>" % NS_MAM, 'get')
    names = {f.get('var') for f in fields.iter('{%s}field' % NS_XDATA)}
    check({'with', 'start', 'end', 'after-id', 'before-id', 'ids'} <= names, 'form %s' % names)
    a.close(), b.close()


def test_other_users_archive_forbidden():
    a, b = pair()
    reply, _ = a.iq("<query xmlns='%s'/>" % NS_MAM, 'set', to=b.bare)
    check(error_condition(reply) == 'forbidden', 'query of another archive: %s'
          % ET.tostring(reply))
    a.close(), b.close()


def test_preferences():
    a, b = pair()
    c_jid, c_pw = srv.new_user('carol')
    c = RawUser(srv, c_jid, c_pw, 'c')
    reply, _ = b.iq("<prefs xmlns='%s'/>" % NS_MAM, 'get')
    p = reply.find('{%s}prefs' % NS_MAM)
    check(p is not None and p.get('default') == 'always' and
          p.find('{%s}always' % NS_MAM) is not None and p.find('{%s}never' % NS_MAM) is not None,
          'default prefs %s' % ET.tostring(reply))
    reply, _ = b.iq("<prefs xmlns='%s' default='never'><always><jid>%s</jid></always>"
                    "<never/></prefs>" % (NS_MAM, a.bare.upper()))
    p = reply.find('{%s}prefs' % NS_MAM)
    check(reply.get('type') == 'result' and p.get('default') == 'never' and
          [j.text for j in p.iter('{%s}jid' % NS_MAM)] == [a.bare],
          'applied prefs %s' % ET.tostring(reply))
    a.message(b.bare, 'archived')
    c.message(b.bare, 'not archived')
    b.message(c.bare, 'not archived either')
    b.next_message(lambda m: body(m) == 'not archived')
    b.next_message(lambda m: body(m) == 'archived')
    c.next_message(lambda m: body(m) == 'not archived either')
    check(query(b).bodies == ['archived'], 'with default never: %s' % query(b).bodies)
    reply, _ = b.iq("<prefs xmlns='%s' default='always'><always/><never><jid>%s</jid></never>"
                    "</prefs>" % (NS_MAM, a.bare))
    a.message(b.bare, 'never from alice')
    c.message(b.bare, 'carol now')
    b.next_message(lambda m: body(m) == 'carol now')
    check(query(b).bodies == ['archived', 'carol now'], 'never list: %s' % query(b).bodies)
    reply, _ = b.iq("<prefs xmlns='%s'/>" % NS_MAM, 'get')
    p = reply.find('{%s}prefs' % NS_MAM)
    check(p.get('default') == 'always' and [j.text for j in p.iter('{%s}jid' % NS_MAM)] ==
          [a.bare], 'stored prefs %s' % ET.tostring(reply))
    bad, _ = b.iq("<prefs xmlns='%s' default='sometimes'/>" % NS_MAM)
    check(error_condition(bad) == 'bad-request', 'bad default: %s' % ET.tostring(bad))
    a.close(), b.close(), c.close()


def test_roster_default_policy():
    """default='roster': only contacts in the roster are archived (XEP-0441 §2.1.1)."""
    a, b = pair()
    b.iq("<prefs xmlns='%s' default='roster'/>" % NS_MAM)
    a.message(b.bare, 'stranger')
    b.next_message(lambda m: body(m) == 'stranger')
    check(query(b).bodies == [], 'stranger archived: %s' % query(b).bodies)
    reply, _ = b.iq("<query xmlns='jabber:iq:roster'><item jid='%s'/></query>" % a.bare)
    check(reply.get('type') == 'result', 'roster set: %s' % ET.tostring(reply))
    a.message(b.bare, 'contact')
    b.next_message(lambda m: body(m) == 'contact')
    check(query(b).bodies == ['contact'], 'contact not archived: %s' % query(b).bodies)
    a.close(), b.close()


def test_expiry_deletes_old_messages():
    """[mam] expire_days: items older than that are deleted (at start and hourly). The age is
    made by moving stored timestamps back while the server is stopped."""
    s = h.Server({'mam': {'expire_days': '2'}}).start()
    stopped = False
    try:
        a_jid, a_pw = s.new_user('alice')
        b_jid, b_pw = s.new_user('bob')
        a, b = RawUser(s, a_jid, a_pw), RawUser(s, b_jid, b_pw)
        for t in ('old 1', 'old 2', 'recent'):
            a.message(b_jid, t)
        b.next_message(lambda m: body(m) == 'recent')
        check(len(query(b).items) == 3, 'three archived')
        a.close(), b.close()
        s.stop(remove=False)
        stopped = True
        db = sqlite3.connect(os.path.join(s.dir, 'data', 'isthmus.db'))
        with db:
            old = db.execute("UPDATE archive SET \"when\" = \"when\" - 3 * 86400 "
                             "WHERE store = 'archive' "
                             "AND instr(CAST(value AS TEXT), 'old ') > 0").rowcount
            check(old == 4, 'moved %d items back' % old)
            # One day old: kept.
            db.execute("UPDATE archive SET \"when\" = \"when\" - 86400 "
                       "WHERE store = 'archive' AND instr(CAST(value AS TEXT), 'recent') > 0")
        db.close()
        s.start()
        stopped = False
        check('mam: expired 4 archived message' in s.log(), 'no expiry logged:\n%s'
              % s.log_tail())
        b = RawUser(s, b_jid, b_pw)
        check(query(b).bodies == ['recent'], 'after expiry: %s' % query(b).bodies)
        a = RawUser(s, a_jid, a_pw)
        check(query(a).bodies == ['recent'], "alice's own copies: %s" % query(a).bodies)
        a.close(), b.close()
    finally:
        if not stopped:
            s.stop()
