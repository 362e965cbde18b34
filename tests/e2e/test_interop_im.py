"""Rosters and subscriptions between two independent client stacks: libstrophe
(tests/e2e/strophe_client.c, add-contact mode) adds a slixmpp user as a contact the RFC 6121
way (roster set, subscribe), slixmpp's roster logic approves and subscribes back, and they chat."""

import asyncio

import harness as h
from harness import check
from test_roster import IM_CFG

srv = None


def setup_module():
    global srv
    check(h.STROPHE_CLIENT.exists(),
          '%s missing (make build/tests/strophe_client)' % h.STROPHE_CLIENT)
    srv = h.Server(IM_CFG).start()


def teardown_module():
    srv.stop()


async def _add_contact(jid, pw, contact, body):
    p = await asyncio.create_subprocess_exec(
        str(h.STROPHE_CLIENT), 'add-contact', jid, pw, '127.0.0.1', str(srv.port), contact, body,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    return p.returncode, out.decode().splitlines(), err.decode()


async def _until(pred, what, timeout=h.IO_TIMEOUT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise h.TestFailure('timed out waiting for %s' % what)
        await asyncio.sleep(0.02)


async def test_strophe_adds_slixmpp_contact_and_they_chat():
    s_jid, s_pw = srv.new_user('strophe')
    b_jid, b_pw = srv.new_user('slix')
    bob = await h.connect(srv, b_jid + '/slix', b_pw)
    await bob.get_roster()  # interested: slixmpp's roster follows the pushes
    # slixmpp defaults: auto_authorize (approve requests) and auto_subscribe (ask back).
    check(bob.roster[b_jid].auto_authorize is True and bob.roster[b_jid].auto_subscribe is True,
          'slixmpp roster defaults changed')
    seen = []

    def echo(msg):
        if msg['type'] == 'error':
            return
        seen.append(msg)
        bob.send_message(mto=msg['from'], mbody='echo: ' + msg['body'], mtype='chat')
    bob.add_event_handler('message', echo)

    rc, out, err = await _add_contact(s_jid + '/strophe', s_pw, b_jid, 'hi via roster \u00e9')
    check(rc == 0, 'strophe_client exit %d; stdout %r; stderr %r' % (rc, out, err))
    # The strophe side: its roster set and the pending request are pushed, bob approves
    # (subscribed + his presence), bob asks back and strophe approves, they chat.
    check(out[0] == 'push: %s none' % b_jid, 'first push: %r' % out)
    check('push: %s none+ask' % b_jid in out, 'pending-out push: %r' % out)
    check('subscribed: %s' % b_jid in out, 'no subscribed: %r' % out)
    check('available: %s/slix' % b_jid in out, 'no presence from bob: %r' % out)
    check('request: %s' % b_jid in out, 'bob did not subscribe back: %r' % out)
    check(out.index('push: %s none+ask' % b_jid) < out.index('subscribed: %s' % b_jid),
          'order: %r' % out)
    check('received: echo: hi via roster \u00e9' in out, 'no echo: %r' % out)
    items = [line for line in out if line.startswith('item: ')]
    check(items == ['item: %s both Contact Interop' % b_jid],
          'strophe\'s final roster: %r' % out)

    check(len(seen) == 1 and str(seen[0]['from']) == s_jid + '/strophe'
          and seen[0]['body'] == 'hi via roster \u00e9',
          'bob saw %r' % [(str(m['from']), m['body']) for m in seen])
    # Bob's roster as slixmpp maintains it from the server's pushes.
    await _until(lambda: bob.client_roster[s_jid]['subscription'] == 'both',
                 'both at bob (%s)' % bob.client_roster[s_jid]['subscription'])
    # strophe went away after the chat: bob got its unavailable presence.
    await _until(lambda: not bob.client_roster.presence(s_jid), 'strophe offline at bob')
    # A full roster fetch (no ver) agrees with the pushes.
    iq = bob.Iq()
    iq['type'] = 'get'
    iq.enable('roster')
    r = await iq.send(timeout=h.IO_TIMEOUT)
    items = r['roster']['items']
    check([str(j) for j in items] == [s_jid], 'bob roster fetch: %s' % r)
    check(items[s_jid]['subscription'] == 'both', 'bob roster fetch: %s' % r)
    await bob.close()


async def test_strophe_add_contact_offline_then_approved():
    """The request waits while the contact is offline (RFC 6121 §3.1.3); the contact approves
    at login; strophe, started again, finds 'to' and chats."""
    s_jid, s_pw = srv.new_user('strophe')
    b_jid, b_pw = srv.new_user('slix')
    # strophe adds an offline contact: it cannot complete (no approval), times out with exit 1
    # after having sent the request.
    rc, out, err = await _add_contact(s_jid, s_pw, b_jid, 'x')
    check(rc == 1 and 'push: %s none+ask' % b_jid in out and 'subscribed: %s' % b_jid not in out,
          'first run: %d %r %r' % (rc, out, err))
    got = asyncio.get_running_loop().create_future()
    bob = h.make_client(b_jid + '/slix', b_pw)
    # Manual approval this time (slixmpp: None = ask the application, False = refuse), and no
    # request back.
    bob.roster[b_jid].auto_authorize = None
    bob.roster[b_jid].auto_subscribe = False

    def on_subscribe(pres):
        if not got.done():
            got.set_result(str(pres['from']))
    bob.add_event_handler('presence_subscribe', on_subscribe)
    bob.connect(('127.0.0.1', srv.port), force_starttls=True)
    await asyncio.wait_for(asyncio.shield(bob.session), h.IO_TIMEOUT)
    await bob.get_roster()
    bob.send_presence()
    frm = await asyncio.wait_for(got, h.IO_TIMEOUT)
    check(frm == s_jid, 'request from %s' % frm)
    bob.send_presence(pto=s_jid, ptype='subscribed')
    await bob.sync()

    def echo(msg):
        if msg['type'] == 'error':
            return
        bob.send_message(mto=msg['from'], mbody='echo: ' + msg['body'], mtype='chat')
    bob.add_event_handler('message', echo)
    # Second run: the roster set is a no-op update, the subscribe is answered at once because
    # strophe already has 'to' (RFC 6121 §3.1.3 rule 2: the contact's server auto-replies).
    rc, out, err = await _add_contact(s_jid, s_pw, b_jid, 'second')
    check(rc == 0, 'second run: %d %r %r' % (rc, out, err))
    check('already subscribed: %s to' % b_jid in out, 'state at login: %r' % out)
    check('available: %s/slix' % b_jid in out, 'no presence from bob (probe): %r' % out)
    check('received: echo: second' in out, 'no echo: %r' % out)
    check('item: %s to Contact Interop' % b_jid in out, 'final roster: %r' % out)
    await bob.close()
