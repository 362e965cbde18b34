"""Accounts: XEP-0077 in-band registration, password change and removal (slixmpp), and the
isthmusctl user commands, each checked by logging in (or failing to) over the wire."""

import asyncio
import os

import harness as h
from harness import check

srv = None
_n = [0]


def setup_module():
    global srv
    srv = h.Server().start()


def teardown_module():
    srv.stop()


def _name(prefix='reg'):
    _n[0] += 1
    return '%s%d-%d' % (prefix, _n[0], os.getpid())


async def _login_fails(server, jid, pw):
    try:
        c = await h.connect(server, jid, pw, presence=False)
    except h.LoginFailed as e:
        return str(e)
    await c.close()
    raise h.TestFailure('login as %s with password %r succeeded' % (jid, pw))


def _raw_register_iq(server, payload, typ='set'):
    """Sends one jabber:iq:register iq on a TLS stream before authentication (XEP-0077 §3.1)
    and returns the reply element."""
    raw = h.Raw(server.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send("<iq type='%s' id='reg1'><query xmlns='%s'>%s</query></iq>"
                 % (typ, h.NS_REGISTER, payload))
        el = raw.next()
        check(el.get('id') == 'reg1' or el.tag == '{%s}error' % h.NS_STREAM,
              'unexpected reply %r' % raw.received[-400:])
        return el
    finally:
        raw.close()


async def test_register_then_login():
    user = _name()
    r = await h.register(srv, user, 'fresh-pw-1')
    check(r['type'] == 'result', 'register: %s' % r)
    c = await h.connect(srv, '%s@%s/x' % (user, srv.domain), 'fresh-pw-1')
    await c.sync()
    await c.close()
    await _login_fails(srv, '%s@%s' % (user, srv.domain), 'wrong-pw')


def test_register_feature_advertised():
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        feats = raw.open()
        check(feats.find('{http://jabber.org/features/iq-register}register') is not None,
              'registration=true but no iq-register stream feature: %r' % raw.received)
    finally:
        raw.close()


def test_register_form():
    el = _raw_register_iq(srv, '', typ='get')
    check(el.get('type') == 'result', 'form request: %s' % h.ET.tostring(el))
    q = el.find('{%s}query' % h.NS_REGISTER)
    check(q is not None, 'no query in %s' % h.ET.tostring(el))
    check(q.find('{%s}username' % h.NS_REGISTER) is not None
          and q.find('{%s}password' % h.NS_REGISTER) is not None,
          'form lacks username/password: %s' % h.ET.tostring(el))


async def test_register_existing_user_conflict():
    user = _name()
    await h.register(srv, user, 'pw-one')
    el = await asyncio.to_thread(
        _raw_register_iq, srv, '<username>%s</username><password>pw-two</password>' % user)
    check(el.get('type') == 'error' and h.stanza_error(el) == 'conflict',
          'second registration of %s: %s' % (user, h.ET.tostring(el)))
    c = await h.connect(srv, '%s@%s' % (user, srv.domain), 'pw-one')  # untouched
    await c.close()


def test_register_invalid_username_refused():
    el = _raw_register_iq(srv, '<username>bad user@x</username><password>pw</password>')
    check(el.get('type') == 'error' and h.stanza_error(el) in
          ('jid-malformed', 'not-acceptable', 'bad-request'),
          'invalid username: %s' % h.ET.tostring(el))


def test_register_missing_password_refused():
    el = _raw_register_iq(srv, '<username>%s</username>' % _name())
    check(el.get('type') == 'error' and h.stanza_error(el) in ('not-acceptable', 'bad-request'),
          'registration without password: %s' % h.ET.tostring(el))


async def test_change_password():
    user = _name('chpw')
    jid = '%s@%s' % (user, srv.domain)
    await h.register(srv, user, 'old-pw')
    c = await h.connect(srv, jid + '/r', 'old-pw', plugins=('xep_0077',))
    r = await c['xep_0077'].change_password('new-pw', jid=srv.domain, timeout=h.IO_TIMEOUT)
    check(r['type'] == 'result', 'change_password: %s' % r)
    await c.close()
    c = await h.connect(srv, jid, 'new-pw', mechs=('SCRAM-SHA-1',))
    await c.close()
    c = await h.connect(srv, jid, 'new-pw', mechs=('SCRAM-SHA-256',))
    await c.close()
    await _login_fails(srv, jid, 'old-pw')


async def test_change_other_users_password_refused():
    """XEP-0077 §3.3: a user may change only their own password."""
    victim = _name('victim')
    await h.register(srv, victim, 'victim-pw')
    attacker_jid, attacker_pw = srv.new_user('att')
    c = await h.connect(srv, attacker_jid, attacker_pw, plugins=('xep_0077',))
    from slixmpp.exceptions import IqError
    iq = c.make_iq_set(ito=srv.domain)
    iq['register']['username'] = victim
    iq['register']['password'] = 'hijacked'
    try:
        await iq.send(timeout=h.IO_TIMEOUT)
        changed = True
    except IqError:
        changed = False
    await c.close()
    await _login_fails(srv, '%s@%s' % (victim, srv.domain), 'hijacked')
    c = await h.connect(srv, '%s@%s' % (victim, srv.domain), 'victim-pw')
    await c.close()
    check(not changed, 'server answered result to a password change for another user')


async def test_remove_account():
    user = _name('rm')
    jid = '%s@%s' % (user, srv.domain)
    await h.register(srv, user, 'rm-pw')
    c = await h.connect(srv, jid + '/r', 'rm-pw', plugins=('xep_0077',))
    try:
        r = await c['xep_0077'].cancel_registration(jid=srv.domain, timeout=h.IO_TIMEOUT)
        check(r['type'] == 'result', 'cancel_registration: %s' % r)
    except Exception as e:
        # XEP-0077 §3.2: the server may close the stream before the result arrives.
        from slixmpp.exceptions import IqError
        if isinstance(e, IqError):
            raise h.TestFailure('account removal refused: %s' % e.iq['error']['condition'])
    await c.close()
    await _login_fails(srv, jid, 'rm-pw')
    r = srv.ctl('user', 'list', srv.domain)
    check(jid not in r.stdout.split(), 'removed account still listed: %s' % r.stdout)


async def test_registration_disabled():
    with h.Server({'host ' + h.DOMAIN: {'registration': 'false'}}) as s:
        user = _name('off')
        el = await asyncio.to_thread(
            _raw_register_iq, s, '<username>%s</username><password>pw</password>' % user)
        if el.tag == '{%s}error' % h.NS_STREAM:
            # Without registration the iq is just a stanza before authentication.
            check(el.find('{%s}not-authorized' % h.NS_STREAMS) is not None,
                  'stream error %s' % h.ET.tostring(el))
        else:
            check(el.get('type') == 'error', 'registration=false but registration answered %s'
                  % h.ET.tostring(el))
            check(h.stanza_error(el) in ('not-allowed', 'service-unavailable', 'forbidden'),
                  'condition %s' % h.stanza_error(el))
        await _login_fails(s, '%s@%s' % (user, s.domain), 'pw')


async def test_isthmusctl_user_round_trip():
    jid = '%s@%s' % (_name('ctl'), srv.domain)
    r = srv.ctl('user', 'add', jid, stdin='first-pw\n')
    check(r.returncode == 0, 'user add: %d %s' % (r.returncode, r.stderr))
    r = srv.ctl('user', 'list')
    check(r.returncode == 0 and jid in r.stdout.split(), 'user list: %r' % r.stdout)
    r = srv.ctl('user', 'list', srv.domain)
    check(r.returncode == 0 and jid in r.stdout.split(), 'user list HOST: %r' % r.stdout)
    c = await h.connect(srv, jid, 'first-pw')  # the running server sees the new account
    await c.close()
    r = srv.ctl('user', 'add', jid, stdin='again\n')
    check(r.returncode != 0, 'adding an existing user succeeded')
    r = srv.ctl('user', 'passwd', jid, stdin='second-pw\n')
    check(r.returncode == 0, 'user passwd: %d %s' % (r.returncode, r.stderr))
    c = await h.connect(srv, jid, 'second-pw', mechs=('PLAIN',))
    await c.close()
    await _login_fails(srv, jid, 'first-pw')
    r = srv.ctl('user', 'del', jid)
    check(r.returncode == 0, 'user del: %d %s' % (r.returncode, r.stderr))
    r = srv.ctl('user', 'list')
    check(jid not in r.stdout.split(), 'deleted user still listed: %r' % r.stdout)
    await _login_fails(srv, jid, 'second-pw')
    r = srv.ctl('user', 'del', jid)
    check(r.returncode != 0, 'deleting a missing user succeeded')


def test_isthmusctl_rejects_bad_input():
    for args, stdin in ((('user', 'add', 'no-at-sign'), 'pw\n'),
                        (('user', 'add', 'x@not-a-configured-host.example'), 'pw\n'),
                        (('user', 'add', 'bad user@' + srv.domain), 'pw\n'),
                        (('user', 'add', _name() + '@' + srv.domain), ''),
                        (('user', 'passwd', 'nobody-here@' + srv.domain), 'pw\n'),
                        (('user', 'frobnicate'), None)):
        r = srv.ctl(*args, stdin=stdin)
        check(r.returncode != 0, 'isthmusctl %s succeeded: %s' % (' '.join(args), r.stdout))
        check('AddressSanitizer' not in r.stderr and 'runtime error:' not in r.stderr,
              'sanitizer report: %s' % r.stderr)


async def test_isthmusctl_import():
    names = ['%s@%s' % (_name('imp'), srv.domain) for _ in range(3)]
    r = srv.ctl('user', 'import', stdin=''.join('%s pw-%d\n' % (n, i)
                                                for i, n in enumerate(names)))
    check(r.returncode == 0, 'import: %d %s' % (r.returncode, r.stderr))
    listed = srv.ctl('user', 'list').stdout.split()
    for n in names:
        check(n in listed, '%s not listed after import' % n)
    c = await h.connect(srv, names[2], 'pw-2')
    await c.close()


async def test_accounts_survive_restart():
    with h.Server() as s:
        jid, pw = s.new_user('persist')
        user = _name('persistreg')
        await h.register(s, user, 'reg-pw')
        s.restart()
        c = await h.connect(s, jid, pw)
        await c.close()
        c = await h.connect(s, '%s@%s' % (user, s.domain), 'reg-pw')
        await c.close()


def test_registration_throttled_per_address():
    """[c2s] registration_interval: a second in-band registration from the same address within
    the interval is refused with policy-violation; the first one stands."""
    with h.Server({'c2s': {'registration_interval': '60'}}) as s:
        first = _raw_register_iq(s, '<username>%s</username><password>pw</password>' % _name())
        check(first.get('type') == 'result', 'first registration: %s' % h.ET.tostring(first))
        second = _raw_register_iq(s, '<username>%s</username><password>pw</password>' % _name())
        check(second.get('type') == 'error' and h.stanza_error(second) == 'policy-violation',
              'second registration: %s' % h.ET.tostring(second))
