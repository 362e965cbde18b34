"""Interoperability between two independent client stacks through the server: libstrophe
(tests/e2e/strophe_client.c) and slixmpp."""

import asyncio

import harness as h
from harness import check

srv = None


def setup_module():
    global srv
    check(h.STROPHE_CLIENT.exists(),
          '%s missing (make build/tests/strophe_client)' % h.STROPHE_CLIENT)
    # Offline storage off: these tests check RFC 6121 §8.5 routing itself, where a message
    # nobody can take is answered with service-unavailable (test_offline covers storage).
    srv = h.Server({'offline': {'max_messages': '0'}}).start()


def teardown_module():
    srv.stop()


async def _strophe(jid, pw, to, body):
    p = await asyncio.create_subprocess_exec(
        str(h.STROPHE_CLIENT), jid, pw, '127.0.0.1', str(srv.port), to, body,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    return p.returncode, out.decode(), err.decode()


async def test_strophe_and_slixmpp_exchange_messages():
    a_jid, a_pw = srv.new_user('strophe')
    b_jid, b_pw = srv.new_user('slix')
    bob = await h.connect(srv, b_jid + '/echo', b_pw)
    seen = []

    def echo(msg):
        # libstrophe enables stream management and leaves without acking the echo, so the
        # server bounces it back as unacknowledged (XEP-0198 §4.2) once offline storage is
        # off; an echo bot never answers errors.
        if msg['type'] == 'error':
            return
        seen.append(msg)
        bob.send_message(mto=msg['from'], mbody='echo: ' + msg['body'], mtype='chat')
    bob.add_event_handler('message', echo)
    rc, out, err = await _strophe(a_jid + '/strophe', a_pw, b_jid, 'hello from strophe \u00e9')
    check(rc == 0, 'strophe_client exit %d; stdout %r; stderr %r' % (rc, out, err))
    check(out.strip() == 'received: echo: hello from strophe \u00e9', 'strophe got %r' % out)
    check(len(seen) == 1, 'slixmpp saw %d messages: %s' % (len(seen), [str(m) for m in seen]))
    check(str(seen[0]['from']) == a_jid + '/strophe', 'from %s' % seen[0]['from'])
    check(seen[0]['body'] == 'hello from strophe \u00e9', 'body %r' % seen[0]['body'])
    await bob.close()


async def test_strophe_to_offline_user_gets_error():
    a_jid, a_pw = srv.new_user('strophe')
    b_jid, _ = srv.new_user('offline')
    rc, out, err = await _strophe(a_jid, a_pw, b_jid, 'anyone there?')
    check(rc == 1 and 'error message' in err, 'exit %d; stdout %r; stderr %r' % (rc, out, err))


async def test_strophe_wrong_password_fails():
    a_jid, a_pw = srv.new_user('strophe')
    rc, out, err = await _strophe(a_jid, a_pw + '-wrong', a_jid, 'x')
    check(rc == 1 and 'login failed' in err, 'exit %d; stdout %r; stderr %r' % (rc, out, err))
