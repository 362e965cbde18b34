"""External components (XEP-0114 accept mode), supervised components and XEP-0356 privileges.

Raw component streams check the handshake and the exact stream errors; slixmpp's ComponentXMPP
(an independent implementation, with its xep_0356 plugin) exchanges messages with slixmpp
clients and manages a user's roster. The supervised test runs tests/e2e/peers/echo_component.py
under the server, kills it with SIGKILL and waits for the server to bring it back."""

import asyncio
import hashlib
import os
import re
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import harness as h
from harness import check

NS_COMP = 'jabber:component:accept'
NS_PRIV = 'urn:xmpp:privilege:2'
NS_DISCO_ITEMS = 'http://jabber.org/protocol/disco#items'
NS_ROSTER = 'jabber:iq:roster'
C = '{jabber:client}'
K = '{%s}' % NS_COMP

PRIV = 'priv.localhost'      # roster both, message outgoing
PLAIN = 'plain.localhost'    # no privileges
ECHO = Path(__file__).resolve().parent / 'peers' / 'echo_component.py'
SECRETS = {PRIV: 'priv-secret', PLAIN: 'plain-secret'}

srv = None
TIMEOUT = 60


def component_config(port, extra=None):
    cfg = {
        'component': {'listen': '127.0.0.1:%d' % port},
        'component ' + PRIV: {'secret': SECRETS[PRIV], 'roster': 'both', 'message': 'outgoing'},
        'component ' + PLAIN: {'secret': SECRETS[PLAIN]},
        'roster': {'max_items': '1000'},
    }
    cfg.update(extra or {})
    return cfg


def setup_module():
    global srv
    port = h.free_port()
    srv = h.Server(component_config(port))
    srv.comp_port = port
    srv.start()


def teardown_module():
    srv.stop()


# --------------------------------------------------------------------------- helpers


def dump(el):
    return ET.tostring(el).decode()


def comp_open(domain, port=None):
    """A raw component stream whose header has been answered; returns (raw, stream id)."""
    r = h.Raw(port or srv.comp_port)
    r.send("<?xml version='1.0'?><stream:stream xmlns='%s' xmlns:stream='%s' to='%s'>"
           % (NS_COMP, h.NS_STREAM, domain))
    attrs = r.wait_header()
    return r, attrs.get('id', '')


def comp_login(domain, secret=None):
    """A raw component stream after a successful handshake (XEP-0114 §3)."""
    r, sid = comp_open(domain)
    check(sid, 'the server must give the component a stream id')
    digest = hashlib.sha1((sid + (secret or SECRETS[domain])).encode()).hexdigest()
    r.send('<handshake>%s</handshake>' % digest)
    el = r.next()
    check(el.tag == K + 'handshake' and not list(el) and not (el.text or '').strip(),
          'expected an empty <handshake/>, got %s' % dump(el))
    return r


def comp_close(r):
    r.send('</stream:stream>')
    try:
        r.expect_close(5)
    except (h.TestFailure, h.StreamClosed):
        pass
    r.close()


def user_login(resource='r1'):
    jid, pw = srv.new_user('comp')
    u = h.Raw(srv.port)
    full = u.login(jid.split('@')[0], pw, resource=resource)
    return u, jid, full


def ping(raw, to=h.DOMAIN, ns=C):
    """A round trip: returns every element that arrived before the ping's result."""
    pid = 'ping%d' % time.monotonic_ns()
    raw.send("<iq type='get' id='%s' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>" % (pid, to))
    got = []
    while True:
        el = raw.next()
        if el.tag == ns + 'iq' and el.get('id') == pid:
            return got
        got.append(el)


def until_message(raw):
    """Reads until the first jabber:client <message/>; returns every element read, it last."""
    got = []
    while not got or got[-1].tag != C + 'message':
        got.append(raw.next())
    return got


def error_condition(el):
    err = el.find(C + 'error')
    if err is None:
        return None
    for c in err:
        if c.tag.startswith('{%s}' % h.NS_STANZAS) and not c.tag.endswith('}text'):
            return c.tag.split('}')[1]
    return None


# --------------------------------------------------------------------------- XEP-0114


def test_handshake_ok_without_privileges():
    r = comp_login(PLAIN)
    check(r.stream_attrs.get('from') == PLAIN, 'stream from should be the component: %s'
          % r.stream_attrs)
    r.expect_silence(0.3)  # no privileges configured: no XEP-0356 advertisement
    comp_close(r)


def test_handshake_uppercase_hex_accepted():
    r, sid = comp_open(PLAIN)
    r.send('<handshake>%s</handshake>'
           % hashlib.sha1((sid + SECRETS[PLAIN]).encode()).hexdigest().upper())
    el = r.next()
    check(el.tag == K + 'handshake', 'expected <handshake/>, got %s' % dump(el))
    comp_close(r)


def test_bad_secret_not_authorized():
    r, sid = comp_open(PLAIN)
    r.send('<handshake>%s</handshake>' % hashlib.sha1((sid + 'wrong').encode()).hexdigest())
    r.expect_stream_error('not-authorized')


def test_stanza_before_handshake_not_authorized():
    r, _ = comp_open(PLAIN)
    r.send("<message from='%s' to='x@localhost'><body>x</body></message>" % PLAIN)
    r.expect_stream_error('not-authorized')


def test_unknown_domain_host_unknown():
    r, _ = comp_open('nope.localhost')
    r.expect_stream_error('host-unknown')


def test_server_host_is_not_a_component():
    r, _ = comp_open(h.DOMAIN)
    r.expect_stream_error('host-unknown')


def test_wrong_namespace():
    r = h.Raw(srv.comp_port)
    r.send(h.Raw.header(to=PLAIN, ns='jabber:client'))
    r.expect_stream_error('invalid-namespace')


def test_conflict_second_connection():
    first = comp_login(PLAIN)
    second, sid = comp_open(PLAIN)
    second.send('<handshake>%s</handshake>'
                % hashlib.sha1((sid + SECRETS[PLAIN]).encode()).hexdigest())
    second.expect_stream_error('conflict')
    # The first connection still serves the domain.
    u, jid, full = user_login()
    u.send("<message to='bot@%s' id='c1' type='chat'><body>still there?</body></message>" % PLAIN)
    el = first.next()
    check(el.tag == K + 'message' and el.get('from') == full and el.get('to') == 'bot@' + PLAIN,
          'the first component should get the message: %s' % dump(el))
    comp_close(first)
    u.close()


def test_from_outside_domain_invalid_from():
    r = comp_login(PLAIN)
    r.send("<message from='evil.example' to='someone@localhost'><body>x</body></message>")
    r.expect_stream_error('invalid-from')


def test_from_lookalike_domain_invalid_from():
    r = comp_login(PLAIN)
    r.send("<message from='xplain.localhost' to='someone@localhost'><body>x</body></message>")
    r.expect_stream_error('invalid-from')


def test_raw_routing_both_directions_and_subdomains():
    comp = comp_login(PLAIN)
    u, jid, full = user_login()
    u.send("<presence/>")
    ping(u)
    # user → component (a subdomain of it too), renamed into the component namespace
    u.send("<message to='room@sub.%s' id='s1' type='chat'><body>to sub</body></message>" % PLAIN)
    el = comp.next()
    check(el.tag == K + 'message' and el.get('to') == 'room@sub.' + PLAIN
          and el.get('from') == full and el.findtext(K + 'body') == 'to sub',
          'message to a subdomain should reach the component: %s' % dump(el))
    # component → user, from a JID under a subdomain
    comp.send("<message from='nick@sub.%s' to='%s' id='s2' type='chat'><body>hello</body>"
              "</message>" % (PLAIN, full))
    # A ping on u's own stream does not order it after the component's stream: wait for the
    # message, then the round trip collects anything else it brought.
    got = until_message(u)
    got += ping(u)
    msgs = [e for e in got if e.tag == C + 'message']
    check(len(msgs) == 1 and msgs[0].get('from') == 'nick@sub.' + PLAIN
          and msgs[0].findtext(C + 'body') == 'hello',
          'the user should get the component message in jabber:client: %s'
          % [dump(e) for e in got])
    # an IQ from the user is answered by the component, and the answer goes back
    u.send("<iq to='%s' id='v1' type='get'><query xmlns='jabber:iq:version'/></iq>" % PLAIN)
    el = comp.next()
    check(el.tag == K + 'iq' and el.get('id') == 'v1', 'iq should reach the component: %s'
          % dump(el))
    comp.send("<iq from='%s' to='%s' id='v1' type='result'><query xmlns='jabber:iq:version'>"
              "<name>raw</name></query></iq>" % (PLAIN, full))
    el = u.next()
    check(el.tag == C + 'iq' and el.get('type') == 'result' and el.get('from') == PLAIN,
          'the component result should reach the user: %s' % dump(el))
    comp_close(comp)
    u.close()


def test_bounce_while_disconnected():
    u, jid, full = user_login()
    u.send("<presence/>")
    ping(u)
    u.send("<message to='bot@%s' id='b1' type='chat'><body>anyone?</body></message>" % PLAIN)
    u.send("<iq to='%s' id='b2' type='get'><query xmlns='jabber:iq:version'/></iq>" % PLAIN)
    u.send("<presence to='bot@%s'/>" % PLAIN)
    got = ping(u)
    msg = [e for e in got if e.tag == C + 'message']
    iq = [e for e in got if e.tag == C + 'iq']
    check(len(msg) == 1 and msg[0].get('type') == 'error' and msg[0].get('id') == 'b1'
          and error_condition(msg[0]) == 'remote-server-timeout',
          'message should bounce with remote-server-timeout: %s' % [dump(e) for e in got])
    check(len(iq) == 1 and iq[0].get('type') == 'error' and iq[0].get('id') == 'b2'
          and error_condition(iq[0]) == 'remote-server-timeout',
          'iq should bounce with remote-server-timeout: %s' % [dump(e) for e in got])
    check(len(got) == 2, 'presence to a disconnected component is dropped: %s'
          % [dump(e) for e in got])
    u.close()


def test_disco_items_lists_components():
    u, jid, full = user_login()
    u.send("<iq to='%s' id='d1' type='get'><query xmlns='%s'/></iq>" % (h.DOMAIN, NS_DISCO_ITEMS))
    el = u.next()
    items = {i.get('jid') for i in el.findall('{%s}query/{%s}item' % (NS_DISCO_ITEMS,
                                                                       NS_DISCO_ITEMS))}
    check(el.get('type') == 'result' and {PRIV, PLAIN} <= items,
          'disco#items should list the components: %s' % dump(el))
    u.close()


# --------------------------------------------------------------------------- slixmpp


def make_component(domain, plugins=()):
    import slixmpp
    comp = slixmpp.ComponentXMPP(domain, SECRETS[domain], '127.0.0.1', srv.comp_port)
    comp.messages = asyncio.Queue()
    comp.started = comp.loop.create_future()
    comp.privileged = comp.loop.create_future()
    for p in plugins:
        comp.register_plugin(p)
    comp.add_event_handler('session_start', lambda _: comp.started.done()
                           or comp.started.set_result(True))
    comp.add_event_handler('privileges_advertised', lambda *a: comp.privileged.done()
                           or comp.privileged.set_result(True))
    comp.add_event_handler('message', lambda m: m['type'] != 'error'
                           and comp.messages.put_nowait(m))
    comp.connect()
    return comp


async def stop_component(comp):
    comp.disconnect(wait=1)
    await asyncio.sleep(0.2)
    comp.abort()


async def test_slixmpp_component_exchanges_messages():
    comp = make_component(PLAIN)
    await asyncio.wait_for(comp.started, h.IO_TIMEOUT)
    jid, pw = srv.new_user('cs')
    c = await h.connect(srv, jid, pw)
    c.send_message(mto='echo@' + PLAIN, mbody='ping from client', mtype='chat')
    m = await asyncio.wait_for(comp.messages.get(), h.IO_TIMEOUT)
    check(m['body'] == 'ping from client' and m['from'].bare == jid,
          'component got %s' % m)
    comp.send_message(mto=m['from'], mfrom='echo@' + PLAIN, mbody='pong from component',
                      mtype='chat')
    got = await c.next_message()
    check(got['body'] == 'pong from component' and got['from'] == 'echo@' + PLAIN,
          'client got %s' % got)
    await stop_component(comp)
    await c.close()


async def test_xep0356_roster_set_pushes_to_user():
    comp = make_component(PRIV, plugins=('xep_0356',))
    await asyncio.wait_for(comp.privileged, h.IO_TIMEOUT)
    granted = comp['xep_0356'].granted_privileges
    check(granted['roster'] == 'both' and granted['message'] == 'outgoing',
          'advertised privileges: %s' % granted)
    jid, pw = srv.new_user('pr')
    c = await h.connect(srv, jid, pw)
    await c.get_roster()  # this resource now receives roster pushes (RFC 6121 §2.1.6)
    pushed = c.loop.create_future()

    def on_update(iq):
        items = iq['roster']['items']
        if 'friend@example.org' in items and not pushed.done():
            pushed.set_result(items['friend@example.org'])
    c.add_event_handler('roster_update', on_update)
    await comp['xep_0356'].set_roster(jid, {'friend@example.org': {
        'name': 'Friend', 'subscription': 'none', 'groups': ['Pals']}}, timeout=h.IO_TIMEOUT)
    item = await asyncio.wait_for(pushed, h.IO_TIMEOUT)
    check(item['name'] == 'Friend' and list(item['groups']) == ['Pals'],
          'roster push: %s' % item)
    r = await comp['xep_0356'].get_roster(jid, timeout=h.IO_TIMEOUT)
    check('friend@example.org' in r['roster']['items'],
          'privileged roster get: %s' % r)
    # A privileged entity is not a client: the subscription it sets is kept (a gateway puts
    # its contacts in with subscription both), unlike a client's (RFC 6121 §2.1.2).
    both = c.loop.create_future()

    def on_both(iq):
        items = iq['roster']['items']
        if items.get('legacy@example.org', {}).get('subscription') == 'both' and not both.done():
            both.set_result(True)
    c.add_event_handler('roster_update', on_both)
    await comp['xep_0356'].set_roster(jid, {'legacy@example.org': {
        'name': 'Legacy', 'subscription': 'both', 'groups': []}}, timeout=h.IO_TIMEOUT)
    await asyncio.wait_for(both, h.IO_TIMEOUT)
    r = await comp['xep_0356'].get_roster(jid, timeout=h.IO_TIMEOUT)
    check(r['roster']['items']['legacy@example.org']['subscription'] == 'both',
          'the privileged subscription should be kept: %s' % r)
    await c.get_roster()
    check(c.client_roster['legacy@example.org']['subscription'] == 'both',
          'the user sees subscription both')
    # The user's own client still cannot set a subscription.
    await c.update_roster('mine@example.org', name='Mine', subscription='both')
    await c.get_roster()
    check(c.client_roster['mine@example.org']['subscription'] == 'none',
          'a client-set subscription must be ignored')
    await stop_component(comp)
    await c.close()


async def test_xep0356_privileged_message_sent_as_user():
    comp = make_component(PRIV, plugins=('xep_0356',))
    await asyncio.wait_for(comp.privileged, h.IO_TIMEOUT)
    a, pa = srv.new_user('pa')
    b, pb = srv.new_user('pb')
    cb = await h.connect(srv, b, pb)
    inner = comp.make_message(mto=b, mfrom=a, mbody='on behalf of a', mtype='chat')
    comp['xep_0356'].send_privileged_message(inner)
    got = await cb.next_message()
    check(got['body'] == 'on behalf of a' and got['from'] == a,
          'b should get the message as from a: %s' % got)
    await stop_component(comp)
    await cb.close()


def test_unprivileged_component_cannot_touch_rosters_or_send_as_users():
    comp = comp_login(PLAIN)
    u, jid, full = user_login()
    comp.send("<iq from='%s' to='%s' id='r1' type='get'><query xmlns='%s'/></iq>"
              % (PLAIN, jid, NS_ROSTER))
    el = comp.next()
    check(el.tag == K + 'iq' and el.get('type') == 'error'
          and el.find('%serror/{%s}forbidden' % (K, h.NS_STANZAS)) is not None,
          'roster get without the privilege must be forbidden: %s' % dump(el))
    comp.send("<message from='%s' to='%s' id='p1'><privilege xmlns='%s'>"
              "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' "
              "from='%s' to='%s' type='chat'><body>forged</body></message></forwarded>"
              "</privilege></message>" % (PLAIN, h.DOMAIN, NS_PRIV, jid, jid))
    el = comp.next()
    check(el.tag == K + 'message' and el.get('type') == 'error'
          and el.find('%serror/{%s}forbidden' % (K, h.NS_STANZAS)) is not None,
          'privileged message without the privilege must be forbidden: %s' % dump(el))
    # A privileged component may not send as a user of another server, or as a full JID.
    priv = comp_login(PRIV)
    el = priv.next()
    check(el.find('{%s}privilege' % NS_PRIV) is not None, 'advertisement: %s' % dump(el))
    priv.send("<message from='%s' to='%s' id='p2'><privilege xmlns='%s'>"
              "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' "
              "from='mallory@example.org' to='%s' type='chat'><body>x</body></message>"
              "</forwarded></privilege></message>" % (PRIV, h.DOMAIN, NS_PRIV, jid))
    el = priv.next()
    check(el.get('type') == 'error' and el.get('id') == 'p2',
          'sending as a foreign user must fail: %s' % dump(el))
    check(not [e for e in ping(u) if e.tag == C + 'message'],
          'no forged message may reach the user')
    comp_close(comp)
    comp_close(priv)
    u.close()


# --------------------------------------------------------------------------- supervised


def _pid_alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().split(') ')[1][0] != 'Z'
    except OSError:
        return False


async def _echo(c, domain, text):
    c.send_message(mto='bot@' + domain, mbody=text, mtype='chat')
    got = await c.next_message(timeout=h.IO_TIMEOUT)
    m = re.match(r'echo (\d+): (.*)', got['body'])
    check(m and m.group(2) == text, 'unexpected echo: %s' % got['body'])
    return int(m.group(1))


async def test_supervised_component_restarts_after_sigkill():
    port = h.free_port()
    dom = 'sup.localhost'
    s = h.Server({'component': {'listen': '127.0.0.1:%d' % port},
                  'component ' + dom: {'command': '/usr/bin/python3 %s' % ECHO,
                                       'restart_delay': '1'}})
    s.start()
    try:
        connected = 'component %s connected' % dom
        h.wait_until(lambda: s.log().count(connected) >= 1, 20, 'the component to connect')
        # The child prints once its own session started, i.e. after the server logged the
        # handshake: wait for the line rather than expect it already there.
        h.wait_until(lambda: 'echo component' in s.log(), h.IO_TIMEOUT,
                     'the child\'s stdout in our log')
        jid, pw = s.new_user('sv')
        c = await h.connect(s, jid, pw)
        pid1 = await _echo(c, dom, 'first')
        check(_pid_alive(pid1), 'the echo pid should be the running component')
        os.kill(pid1, signal.SIGKILL)
        h.wait_until(lambda: 'killed by signal 9' in s.log(), 10, 'the server to reap it')
        h.wait_until(lambda: s.log().count(connected) >= 2, 20, 'the restarted component')
        pid2 = await _echo(c, dom, 'second')
        check(pid2 != pid1 and _pid_alive(pid2), 'a new process should answer (%d, %d)'
              % (pid1, pid2))
        await c.close()
    finally:
        s.stop()
    h.wait_until(lambda: not _pid_alive(pid2), h.IO_TIMEOUT,
                 'the component to stop with the server')
