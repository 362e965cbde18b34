"""XEP-0191 Blocking Command: the blocklist and its pushes, enforcement in both directions, JID
matching (full, bare, domain), and presence on block/unblock — driven by slixmpp clients."""

import asyncio
import xml.etree.ElementTree as ET

import harness as h
from harness import check

NS = 'urn:xmpp:blocking'
NS_ERRORS = 'urn:xmpp:blocking:errors'
NS_STANZAS = h.NS_STANZAS

srv = None


def setup_module():
    global srv
    srv = h.Server().start()


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


async def login(jid, pw, resource=None, **kw):
    c = await h.connect(srv, '%s/%s' % (jid, resource) if resource else jid, pw,
                        plugins=('xep_0191',), **kw)
    c.pushes = asyncio.Queue()
    c.presences = asyncio.Queue()
    c.add_event_handler('blocked', c.pushes.put_nowait)
    c.add_event_handler('unblocked', c.pushes.put_nowait)
    c.add_event_handler('presence', c.presences.put_nowait)
    return c


async def user(prefix, resource=None):
    jid, pw = srv.new_user(prefix)
    return await login(jid, pw, resource), jid, pw


async def send_iq(c, type_, payload, to=None):
    iq = c.Iq()
    iq['type'] = type_
    if to:
        iq['to'] = to
    iq.append(ET.fromstring(payload))
    return await iq.send(timeout=h.IO_TIMEOUT)


async def iq_error(c, type_, payload, to=None):
    """Sends an iq that must fail; returns its error condition."""
    from slixmpp.exceptions import IqError
    try:
        r = await send_iq(c, type_, payload, to)
    except IqError as e:
        return e.iq['error']['condition']
    raise h.TestFailure('expected an error for %s, got %s' % (payload, r))


async def blocklist(c):
    r = await send_iq(c, 'get', "<blocklist xmlns='%s'/>" % NS)
    bl = r.xml.find('{%s}blocklist' % NS)
    check(bl is not None, 'no <blocklist/> in %s' % r)
    return sorted(i.get('jid') for i in bl.findall('{%s}item' % NS))


async def block(c, *jids):
    items = ''.join("<item jid='%s'/>" % j for j in jids)
    await send_iq(c, 'set', "<block xmlns='%s'>%s</block>" % (NS, items))


async def unblock(c, *jids):
    items = ''.join("<item jid='%s'/>" % j for j in jids)
    await send_iq(c, 'set', "<unblock xmlns='%s'>%s</unblock>" % (NS, items))


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


def drain(q):
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


async def message_error(c):
    msg = await c.next_message(errors=True)
    return msg['error']['condition'], msg


async def ping(c, to):
    """(True, None) when to answered the ping, else (False, condition)."""
    from slixmpp.exceptions import IqError
    try:
        await c['xep_0199'].send_ping(to, timeout=h.IO_TIMEOUT)
        return True, None
    except IqError as e:
        return False, e.iq['error']['condition']


# --------------------------------------------------------------------------- tests


async def test_disco_feature():
    c, _, _ = await user('disco')
    features = (await c['xep_0030'].get_info(jid=srv.domain))['disco_info']['features']
    check(NS in features, 'no %s in %s' % (NS, features))
    await c.close()


async def test_block_unblock_and_push_to_interested_resources():
    a1, a, pw = await user('alice', 'one')
    a2 = await login(a, pw, 'two')
    a3 = await login(a, pw, 'three')
    check(await blocklist(a1) == [], 'fresh blocklist not empty')
    check(await blocklist(a2) == [], 'fresh blocklist not empty')
    # a3 never asks for the blocklist: XEP-0191 §5.3 pushes only to resources that did.
    await block(a1, 'spam@example.net', 'Mallory@Example.ORG')
    check(await blocklist(a1) == ['mallory@example.org', 'spam@example.net'],
          'blocklist after block: %s' % await blocklist(a1))
    for c in (a1, a2):
        push = await asyncio.wait_for(c.pushes.get(), h.IO_TIMEOUT)
        check(push['type'] == 'set' and push['to'] == c.boundjid, 'push: %s' % push)
        jids = sorted(i.get('jid') for i in push.xml.findall('{%s}block/{%s}item' % (NS, NS)))
        check(jids == ['mallory@example.org', 'spam@example.net'], 'push items %s' % jids)
    await unblock(a2, 'spam@example.net')
    check(await blocklist(a1) == ['mallory@example.org'], 'after unblock: %s'
          % await blocklist(a1))
    for c in (a1, a2):
        push = await asyncio.wait_for(c.pushes.get(), h.IO_TIMEOUT)
        items = push.xml.findall('{%s}unblock/{%s}item' % (NS, NS))
        check([i.get('jid') for i in items] == ['spam@example.net'], 'unblock push %s' % push)
    await a3.sync()
    check(a3.pushes.empty(), 'a resource that never requested the blocklist got a push')
    # Unblock all: an empty <unblock/>, pushed as such.
    await block(a1, 'x@example.com')
    await unblock(a1)
    check(await blocklist(a2) == [], 'unblock-all left %s' % await blocklist(a2))
    pushes = [await asyncio.wait_for(a2.pushes.get(), h.IO_TIMEOUT) for _ in range(2)]
    last = pushes[-1].xml.find('{%s}unblock' % NS)
    check(last is not None and len(last) == 0, 'unblock-all push: %s' % pushes[-1])
    for c in (a1, a2, a3):
        await c.close()


async def test_blocklist_survives_reconnect():
    c, jid, pw = await user('persist')
    await block(c, 'someone@example.com')
    await c.close()
    c = await login(jid, pw)
    check(await blocklist(c) == ['someone@example.com'], 'blocklist lost across sessions')
    await c.close()


async def test_bad_requests():
    a, aj, _ = await user('bad')
    b, bj, _ = await user('other')
    check(await iq_error(a, 'set', "<block xmlns='%s'/>" % NS) == 'bad-request',
          'empty <block/> accepted')
    check(await iq_error(a, 'set', "<block xmlns='%s'><item jid='a@b@c'/></block>" % NS)
          == 'jid-malformed', 'malformed JID accepted')
    check(await iq_error(a, 'set', "<block xmlns='%s'><item/></block>" % NS) == 'bad-request',
          'item without jid accepted')
    check(await blocklist(a) == [], 'a refused block changed the list')
    check(await iq_error(b, 'get', "<blocklist xmlns='%s'/>" % NS, to=aj) == 'forbidden',
          "another user's blocklist was readable")
    check(await iq_error(b, 'set', "<block xmlns='%s'><item jid='%s'/></block>" % (NS, bj),
                         to=aj) == 'forbidden', "another user's blocklist was writable")
    await a.close()
    await b.close()


async def test_enforcement_both_directions():
    a, aj, _ = await user('alice')
    b, bj, _ = await user('bob')
    await block(a, bj)
    # Inbound message: not delivered, the sender gets service-unavailable (§5.3).
    b.send_message(mto=aj, mbody='let me in', mtype='chat')
    cond, _ = await message_error(b)
    check(cond == 'service-unavailable', 'blocked sender got %s' % cond)
    # Inbound IQ get to a full JID and to the bare JID (handled by the server): refused.
    ok, cond = await ping(b, a.boundjid.full)
    check(not ok and cond == 'service-unavailable', 'ping from blocked: %s %s' % (ok, cond))
    check(await iq_error(b, 'get', "<vCard xmlns='vcard-temp'/>", to=aj) ==
          'service-unavailable', 'bare-JID iq from a blocked entity answered')
    # Inbound directed presence: dropped silently.
    b.send_presence(pto=a.boundjid.full, pstatus='peekaboo')
    await b.sync()
    await a.sync()
    check(a.no_message(), 'a got a message from a blocked entity')
    check(not [p for p in drain(a.presences) if p['from'].bare == bj],
          'a got presence from a blocked entity')
    # Outbound: not-acceptable with <blocked/> (§5.3).
    a.send_message(mto=bj, mbody='you are blocked', mtype='chat')
    cond, msg = await message_error(a)
    check(cond == 'not-acceptable', 'outbound to blocked: %s' % cond)
    check(msg.xml.find('{jabber:client}error/{%s}blocked' % NS_ERRORS) is not None,
          'no <blocked/> in %s' % msg)
    ok, cond = await ping(a, b.boundjid.full)
    check(not ok and cond == 'not-acceptable', 'outbound iq to blocked: %s %s' % (ok, cond))
    await b.sync()
    check(b.no_message(), 'the blocked entity received something')
    # Unblocked: everything flows again.
    await unblock(a, bj)
    b.send_message(mto=aj, mbody='hello again', mtype='chat')
    msg = await a.next_message()
    check(msg['body'] == 'hello again', 'after unblock got %s' % msg)
    ok, cond = await ping(b, a.boundjid.full)
    check(ok, 'ping after unblock: %s' % cond)
    a.send_message(mto=bj, mbody='welcome back', mtype='chat')
    msg = await b.next_message()
    check(msg['body'] == 'welcome back', 'outbound after unblock got %s' % msg)
    await a.close()
    await b.close()


async def test_offline_message_from_blocked_is_refused():
    a, aj, apw = await user('alice')
    b, bj, _ = await user('bob')
    await block(a, bj)
    await a.close()
    b.send_message(mto=aj, mbody='while you were away', mtype='chat')
    cond, _ = await message_error(b)
    check(cond == 'service-unavailable', 'message to offline blocker: %s' % cond)
    await b.close()


async def test_full_jid_and_domain_items():
    a, aj, _ = await user('alice')
    b1, bj, bpw = await user('bob', 'desk')
    b2 = await login(bj, bpw, 'phone')
    # A full-JID item blocks that resource only (§4).
    await block(a, bj + '/desk')
    b1.send_message(mto=aj, mbody='from desk', mtype='chat')
    cond, _ = await message_error(b1)
    check(cond == 'service-unavailable', 'blocked resource: %s' % cond)
    b2.send_message(mto=aj, mbody='from phone', mtype='chat')
    msg = await a.next_message()
    check(msg['body'] == 'from phone', 'other resource blocked too: %s' % msg)
    await unblock(a)
    # A domain item blocks every address at the domain.
    await block(a, srv.domain)
    b2.send_message(mto=aj, mbody='domain', mtype='chat')
    cond, _ = await message_error(b2)
    check(cond == 'service-unavailable', 'domain block: %s' % cond)
    await unblock(a, srv.domain)
    b2.send_message(mto=aj, mbody='after domain', mtype='chat')
    msg = await a.next_message()
    check(msg['body'] == 'after domain', 'after domain unblock: %s' % msg)
    # A subdomain item does not block the parent domain; the parent blocks the subdomain.
    await block(a, 'sub.' + srv.domain)
    b2.send_message(mto=aj, mbody='parent ok', mtype='chat')
    msg = await a.next_message()
    check(msg['body'] == 'parent ok', 'subdomain item blocked the parent: %s' % msg)
    a.send_message(mto='x@sub.' + srv.domain, mbody='to sub', mtype='chat')
    cond, _ = await message_error(a)
    check(cond == 'not-acceptable', 'message to blocked subdomain: %s' % cond)
    for c in (a, b1, b2):
        await c.close()


async def test_presence_on_block_and_unblock():
    a, aj, _ = await user('alice')
    b, bj, _ = await user('bob')
    await befriend(a, b)
    a.send_presence(pstatus='here')
    await next_presence(b, lambda p: p['from'] == a.boundjid and p['status'] == 'here',
                        'with status here')
    # §5.3: blocking sends unavailable presence to the contact.
    await block(a, bj)
    await next_presence(b, lambda p: p['from'] == a.boundjid and p['type'] == 'unavailable',
                        'unavailable after block')
    # While blocked, a's presence changes do not reach b, and b's do not reach a.
    await a.sync()
    drain(a.presences)
    drain(b.presences)
    a.send_presence(pstatus='secret')
    b.send_presence(pstatus='bob busy')
    # Each inbox is checked after a round trip of its own that follows the other's: a's
    # presence is handled before b's sync returns, and b's before a's second sync returns.
    await a.sync()
    await b.sync()
    await a.sync()
    check(not [p for p in drain(b.presences) if p['from'].bare == aj],
          'b saw presence of a while blocked')
    check(not [p for p in drain(a.presences) if p['from'].bare == bj],
          'a saw presence of b while blocked')
    # §5.4: unblocking sends the current presence.
    await unblock(a, bj)
    await next_presence(b, lambda p: p['from'] == a.boundjid and p['type'] == 'available'
                        and p['status'] == 'secret', 'current presence after unblock')
    await a.close()
    await b.close()
