"""Per-account profile data: vCards (XEP-0054) with avatar hashes in presence (XEP-0153), private
XML storage (XEP-0049) and last activity (XEP-0012), driven by slixmpp clients."""

import asyncio
import base64
import hashlib
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import harness as h
from harness import check

NS_VCARD = 'vcard-temp'
NS_UPDATE = 'vcard-temp:x:update'
NS_PRIVATE = 'jabber:iq:private'
NS_LAST = 'jabber:iq:last'
ITEM_LIMIT = 4096

srv = None


def setup_module():
    global srv
    srv = h.Server({'server': {'max_user_item_size': '4K'}}).start()


def teardown_module():
    srv.stop()


# --------------------------------------------------------------------------- helpers


async def until(pred, what, timeout=h.IO_TIMEOUT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise h.TestFailure('timed out waiting for %s' % what)
        await asyncio.sleep(0.02)


async def login(jid, pw, resource=None, presence=True):
    c = await h.connect(srv, '%s/%s' % (jid, resource) if resource else jid, pw,
                        presence=False)
    c.presences = asyncio.Queue()
    c.add_event_handler('presence', c.presences.put_nowait)
    if presence:
        c.send_presence()
        await c.sync()
    return c


async def user(prefix, resource=None, presence=True):
    jid, pw = srv.new_user(prefix)
    return await login(jid, pw, resource, presence), jid, pw


async def send_iq(c, type_, payload, to=None):
    iq = c.Iq()
    iq['type'] = type_
    if to:
        iq['to'] = to
    iq.append(payload if isinstance(payload, ET.Element) else ET.fromstring(payload))
    return await iq.send(timeout=h.IO_TIMEOUT)


async def iq_error(c, type_, payload, to=None):
    """Sends an iq that must fail; returns (condition, text)."""
    from slixmpp.exceptions import IqError
    try:
        r = await send_iq(c, type_, payload, to)
    except IqError as e:
        return e.iq['error']['condition'], e.iq['error']['text']
    raise h.TestFailure('expected an error, got %s' % r)


async def befriend(a, b):
    """Mutual presence subscription (slixmpp authorizes and subscribes back on its own)."""
    aj, bj = a.boundjid.bare, b.boundjid.bare
    await a.get_roster()
    await b.get_roster()
    a.send_presence(pto=bj, ptype='subscribe')
    await until(lambda: a.client_roster[bj]['subscription'] == 'both'
                and b.client_roster[aj]['subscription'] == 'both', 'mutual subscription')
    await a.sync()
    await b.sync()


async def next_presence(c, pred, what):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + h.IO_TIMEOUT
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise h.TestFailure('%s: no presence %s' % (c.boundjid, what))
        try:
            p = await asyncio.wait_for(c.presences.get(), left)
        except asyncio.TimeoutError:
            continue
        if pred(p):
            return p


def vcard_xml(fn, photo=None, extra=''):
    photo_el = ''
    if photo is not None:
        b64 = base64.b64encode(photo).decode()
        # Folded like vCard clients do (RFC 2426 §2.4.1); the hash is of the decoded bytes.
        folded = '\n'.join(b64[i:i + 76] for i in range(0, len(b64), 76))
        photo_el = '<PHOTO><TYPE>image/png</TYPE><BINVAL>%s</BINVAL></PHOTO>' % folded
    return "<vCard xmlns='%s'><FN>%s</FN>%s%s</vCard>" % (NS_VCARD, escape(fn), photo_el, extra)


async def get_vcard(c, to=None):
    r = await send_iq(c, 'get', "<vCard xmlns='%s'/>" % NS_VCARD, to)
    card = r.xml.find('{%s}vCard' % NS_VCARD)
    check(card is not None, 'no vCard in %s' % r)
    return card


def photo_of(p):
    """The <photo/> text of a presence's vcard-temp:x:update, '' when empty, None when absent."""
    x = p.xml.find('{%s}x' % NS_UPDATE)
    if x is None:
        return None
    photo = x.find('{%s}photo' % NS_UPDATE)
    if photo is None:
        return 'no-photo-element'
    return photo.text or ''


# --------------------------------------------------------------------------- disco


async def test_disco_features():
    c, jid, _ = await user('disco')
    host = (await c['xep_0030'].get_info(jid=srv.domain))['disco_info']['features']
    for f in (NS_VCARD, NS_PRIVATE, NS_LAST):
        check(f in host, '%s missing from host features %s' % (f, host))
    acct = (await c['xep_0030'].get_info(jid=jid))['disco_info']['features']
    for f in (NS_VCARD, NS_LAST):
        check(f in acct, '%s missing from account features %s' % (f, acct))
    await c.close()


# --------------------------------------------------------------------------- vCard


async def test_vcard_set_get_update():
    c, jid, pw = await user('card')
    cond, _ = await iq_error(c, 'get', "<vCard xmlns='%s'/>" % NS_VCARD)
    check(cond == 'item-not-found', 'vCard before any set: %s' % cond)
    await send_iq(c, 'set', vcard_xml('Juliet Capulet', extra='<NICKNAME>jc</NICKNAME>'))
    card = await get_vcard(c)
    check(card.findtext('{%s}FN' % NS_VCARD) == 'Juliet Capulet', 'FN: %s' % ET.tostring(card))
    check(card.findtext('{%s}NICKNAME' % NS_VCARD) == 'jc', 'NICKNAME lost')
    # A set replaces the whole card.
    await send_iq(c, 'set', vcard_xml('J. Capulet'), to=jid)
    card = await get_vcard(c, to=jid)
    check(card.findtext('{%s}FN' % NS_VCARD) == 'J. Capulet', 'update: %s' % ET.tostring(card))
    check(card.find('{%s}NICKNAME' % NS_VCARD) is None, 'old field survived the update')
    await c.close()
    # Stored, not cached in the session.
    c = await login(jid, pw)
    card = await get_vcard(c)
    check(card.findtext('{%s}FN' % NS_VCARD) == 'J. Capulet', 'after reconnect')
    await c.close()


async def test_vcard_of_another_user():
    a, aj, _ = await user('owner')
    b, bj, _ = await user('reader')
    await send_iq(a, 'set', vcard_xml('Owner & Co <ltd>'))
    r = await send_iq(b, 'get', "<vCard xmlns='%s'/>" % NS_VCARD, to=aj)
    check(r['from'] == aj, 'reply from %s' % r['from'])
    card = r.xml.find('{%s}vCard' % NS_VCARD)
    check(card is not None and card.findtext('{%s}FN' % NS_VCARD) == 'Owner & Co <ltd>',
          'other user read %s' % r)
    cond, _ = await iq_error(b, 'set', vcard_xml('Mallory'), to=aj)
    check(cond == 'forbidden', "setting someone else's vCard: %s" % cond)
    card = await get_vcard(a)
    check(card.findtext('{%s}FN' % NS_VCARD) == 'Owner & Co <ltd>', 'card changed by another')
    cond, _ = await iq_error(b, 'get', "<vCard xmlns='%s'/>" % NS_VCARD,
                             to='nobody-here@' + srv.domain)
    check(cond == 'service-unavailable', 'vCard of a missing account: %s' % cond)
    await a.close()
    await b.close()


async def test_vcard_size_limit():
    c, _, _ = await user('big')
    await send_iq(c, 'set', vcard_xml('small'))
    cond, text = await iq_error(c, 'set', vcard_xml('x' * (ITEM_LIMIT + 10)))
    check(cond == 'not-acceptable', 'oversized vCard: %s' % cond)
    check(text and str(ITEM_LIMIT) in text, 'error text does not name the limit: %r' % text)
    card = await get_vcard(c)
    check(card.findtext('{%s}FN' % NS_VCARD) == 'small', 'oversized vCard replaced the old one')
    await c.close()


async def test_avatar_hash_in_presence():
    a, aj, apw = await user('avatar')
    b, bj, _ = await user('friend')
    a2 = await login(aj, apw, 'second')
    await befriend(a, b)
    # No vCard yet: an empty <photo/> ("no avatar", XEP-0153 §3.1).
    a.send_presence(pstatus='no picture')
    p = await next_presence(b, lambda p: p['from'] == a.boundjid and p['status'] == 'no picture',
                            'without avatar')
    check(photo_of(p) == '', 'presence without avatar: %s' % p)
    image = bytes(range(256)) * 3
    digest = hashlib.sha1(image).hexdigest()
    await send_iq(a, 'set', vcard_xml('Avatar', photo=image))
    a.send_presence(pstatus='with picture')
    p = await next_presence(b, lambda p: p['from'] == a.boundjid and
                            p['status'] == 'with picture', 'with avatar at the contact')
    check(photo_of(p) == digest, 'contact saw photo %r, want %s' % (photo_of(p), digest))
    # RFC 6121 §4.2.2: the user's other resources get the same broadcast.
    p = await next_presence(a2, lambda p: p['from'] == a.boundjid and
                            p['status'] == 'with picture', 'with avatar at own resource')
    check(photo_of(p) == digest, 'own resource saw photo %r' % photo_of(p))
    # A client that speaks XEP-0153 itself is left alone.
    pres = a.make_presence(pstatus='client says')
    pres.append(ET.fromstring("<x xmlns='%s'/>" % NS_UPDATE))
    pres.send()
    p = await next_presence(b, lambda p: p['status'] == 'client says', 'client x:update')
    check(photo_of(p) == 'no-photo-element', 'client x:update rewritten: %s' % p)
    # Removing the photo from the vCard: the next presence says "no avatar".
    await send_iq(a, 'set', vcard_xml('Avatar'))
    a.send_presence(pstatus='removed')
    p = await next_presence(b, lambda p: p['status'] == 'removed', 'after photo removal')
    check(photo_of(p) == '', 'after removal: %r' % photo_of(p))
    for c in (a, a2, b):
        await c.close()


# --------------------------------------------------------------------------- private XML


def bookmarks(*names):
    confs = ''.join("<conference jid='%s@conference.example' autojoin='true'><nick>n</nick>"
                    "</conference>" % n for n in names)
    return "<storage xmlns='storage:bookmarks'>%s</storage>" % confs


def query(*children):
    return "<query xmlns='%s'>%s</query>" % (NS_PRIVATE, ''.join(children))


async def private_get(c, child, to=None):
    r = await send_iq(c, 'get', query(child), to)
    q = r.xml.find('{%s}query' % NS_PRIVATE)
    check(q is not None and len(q) == 1, 'private get result %s' % r)
    return q[0]


async def test_private_set_get_overwrite():
    c, jid, pw = await user('priv')
    empty = await private_get(c, "<storage xmlns='storage:bookmarks'/>")
    check(empty.tag == '{storage:bookmarks}storage' and len(empty) == 0,
          'nothing stored yet: %s' % ET.tostring(empty))
    await send_iq(c, 'set', query(bookmarks('room1', 'room2'),
                                  "<prefs xmlns='exodus:prefs'><nick>Hamlet</nick></prefs>"))
    got = await private_get(c, "<storage xmlns='storage:bookmarks'/>")
    rooms = [e.get('jid') for e in got.findall('{storage:bookmarks}conference')]
    check(rooms == ['room1@conference.example', 'room2@conference.example'], 'rooms %s' % rooms)
    check(got.find('{storage:bookmarks}conference/{storage:bookmarks}nick').text == 'n',
          'nested content lost: %s' % ET.tostring(got))
    prefs = await private_get(c, "<prefs xmlns='exodus:prefs'/>")
    check(prefs.findtext('{exodus:prefs}nick') == 'Hamlet', 'second element of one set')
    await send_iq(c, 'set', query(bookmarks('room3')))
    got = await private_get(c, "<storage xmlns='storage:bookmarks'/>")
    rooms = [e.get('jid') for e in got.findall('{storage:bookmarks}conference')]
    check(rooms == ['room3@conference.example'], 'overwrite: %s' % rooms)
    # Same name, other namespace: a different item.
    other = await private_get(c, "<storage xmlns='storage:rosternotes'/>")
    check(len(other) == 0, 'namespaces not kept apart: %s' % ET.tostring(other))
    await c.close()
    c = await login(jid, pw)
    prefs = await private_get(c, "<prefs xmlns='exodus:prefs'/>")
    check(prefs.findtext('{exodus:prefs}nick') == 'Hamlet', 'lost across sessions')
    await c.close()


async def test_private_refusals():
    a, aj, _ = await user('priv')
    b, bj, _ = await user('snoop')
    await send_iq(a, 'set', query(bookmarks('secret')))
    cond, _ = await iq_error(b, 'get', query("<storage xmlns='storage:bookmarks'/>"), to=aj)
    check(cond == 'forbidden', "reading another user's private data: %s" % cond)
    cond, _ = await iq_error(b, 'set', query(bookmarks('evil')), to=aj)
    check(cond == 'forbidden', "writing another user's private data: %s" % cond)
    got = await private_get(a, "<storage xmlns='storage:bookmarks'/>")
    check([e.get('jid') for e in got] == ['secret@conference.example'], 'data changed')
    cond, _ = await iq_error(a, 'get', query())
    check(cond == 'not-acceptable', 'get without a child: %s' % cond)
    cond, _ = await iq_error(a, 'set', query())
    check(cond == 'not-acceptable', 'set without a child: %s' % cond)
    cond, _ = await iq_error(a, 'set', query("<x xmlns='jabber:iq:private'/>"))
    check(cond == 'not-acceptable', 'reserved namespace jabber:iq:private: %s' % cond)
    cond, _ = await iq_error(a, 'get', query("<message xmlns='jabber:client'/>"))
    check(cond == 'not-acceptable', 'reserved namespace jabber:client: %s' % cond)
    cond, text = await iq_error(a, 'set', query(bookmarks(*['r%d' % i for i in range(100)])))
    check(cond == 'not-acceptable' and text and str(ITEM_LIMIT) in text,
          'oversized item: %s %r' % (cond, text))
    got = await private_get(a, "<storage xmlns='storage:bookmarks'/>")
    check([e.get('jid') for e in got] == ['secret@conference.example'],
          'a refused set changed the data')
    await a.close()
    await b.close()


# --------------------------------------------------------------------------- last activity


def seconds_of(r):
    q = r.xml.find('{%s}query' % NS_LAST)
    check(q is not None and q.get('seconds') is not None, 'no seconds in %s' % r)
    return int(q.get('seconds')), (q.text or '')


async def test_last_activity_of_server():
    c, _, _ = await user('uptime')
    r = await send_iq(c, 'get', "<query xmlns='%s'/>" % NS_LAST, to=srv.domain)
    secs, text = seconds_of(r)
    check(0 <= secs < 3600 and text == '', 'server uptime %d %r' % (secs, text))
    await c.close()


async def test_last_activity_online_offline_forbidden():
    a, aj, apw = await user('last')
    b, bj, _ = await user('friend')
    stranger, _, _ = await user('stranger')
    await befriend(a, b)
    ask = "<query xmlns='%s'/>" % NS_LAST
    # Online: 0 (XEP-0012 §3).
    secs, text = seconds_of(await send_iq(b, 'get', ask, to=aj))
    check(secs == 0 and text == '', 'online user: %d %r' % (secs, text))
    # Not subscribed to the user's presence: forbidden (§3, §8).
    cond, _ = await iq_error(stranger, 'get', ask, to=aj)
    check(cond == 'forbidden', 'stranger: %s' % cond)
    # Offline: time since logout and the status of the last unavailable presence.
    a.send_presence(ptype='unavailable', pstatus='Heading Home')
    await a.sync()
    await a.close()
    r = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + h.IO_TIMEOUT
    while True:  # the logout is recorded once the server has seen the stream end
        from slixmpp.exceptions import IqError
        try:
            r = await send_iq(b, 'get', ask, to=aj)
            secs, text = seconds_of(r)
            if text:
                break
        except IqError:
            pass
        check(loop.time() < deadline, 'no last activity after logout: %s' % r)
        await asyncio.sleep(0.05)
    check(0 <= secs < 60 and text == 'Heading Home', 'offline user: %d %r' % (secs, text))
    cond, _ = await iq_error(stranger, 'get', ask, to=aj)
    check(cond == 'forbidden', 'stranger after logout: %s' % cond)
    # The user asks about itself.
    a = await login(aj, apw, presence=False)
    secs, text = seconds_of(await send_iq(a, 'get', ask))
    check(text == 'Heading Home', 'own last activity while not available: %d %r' % (secs, text))
    for c in (a, b, stranger):
        await c.close()


async def test_last_activity_without_record():
    # Never logged out, not available: nothing to tell (ejabberd's answer).
    a, _, _ = await user('never', presence=False)
    cond, text = await iq_error(a, 'get', "<query xmlns='%s'/>" % NS_LAST)
    check(cond == 'service-unavailable' and text, 'no record: %s %r' % (cond, text))
    await a.close()
