"""SASL on c2s (RFC 6120 §6): every mechanism over STARTTLS and direct TLS, channel bindings
(RFC 5929, RFC 9266, XEP-0440), PLAIN only after TLS, failures, the per-IP failure limit and the
unauthenticated-connection timeout."""

import time

import harness as h
from harness import check

srv = None


def setup_module():
    global srv
    srv = h.Server().start()


def teardown_module():
    srv.stop()


async def _slix_login(mech, direct_tls=False):
    jid, pw = srv.new_user('auth')
    c = await h.connect(srv, jid, pw, mechs=(mech,), direct_tls=direct_tls)
    check(c.boundjid.bare == jid, 'bound %s, expected %s' % (c.boundjid, jid))
    await c.sync()
    await c.close()


async def test_slixmpp_scram_sha1():
    await _slix_login('SCRAM-SHA-1')


async def test_slixmpp_scram_sha256():
    await _slix_login('SCRAM-SHA-256')


async def test_slixmpp_plain_over_starttls():
    await _slix_login('PLAIN')


async def test_slixmpp_scram_sha256_direct_tls():
    await _slix_login('SCRAM-SHA-256', direct_tls=True)


async def test_slixmpp_plain_direct_tls():
    await _slix_login('PLAIN', direct_tls=True)


def test_features_before_tls():
    """Before TLS: STARTTLS is offered and required, PLAIN is not (RFC 6120 §5.3.1, §13.8)."""
    raw = h.Raw(srv.port)
    try:
        feats = raw.open()
        tls = feats.find('{%s}starttls' % h.NS_TLS)
        check(tls is not None, 'no <starttls/> in features: %r' % raw.received)
        check(tls.find('{%s}required' % h.NS_TLS) is not None,
              'require_tls=true but <starttls/> lacks <required/>: %r' % raw.received)
        check('PLAIN' not in h.mechanisms(feats), 'PLAIN offered before TLS: %r' % raw.received)
        check(raw.stream_attrs.get('from') == srv.domain, 'stream from=%r'
              % raw.stream_attrs.get('from'))
        check(raw.stream_attrs.get('id'), 'stream header without id')
        check(raw.stream_attrs.get('version') == '1.0', 'stream version %r'
              % raw.stream_attrs.get('version'))
    finally:
        raw.close()


def _features_after_tls(direct):
    raw = h.Raw(srv.tls_port if direct else srv.port, direct_tls=direct)
    try:
        if not direct:
            raw.open()
            raw.starttls()
        feats = raw.open()
        mechs = h.mechanisms(feats)
        for m in ('SCRAM-SHA-1', 'SCRAM-SHA-256', 'SCRAM-SHA-1-PLUS', 'SCRAM-SHA-256-PLUS',
                  'PLAIN'):
            check(m in mechs, '%s not offered after TLS: %s' % (m, mechs))
        cbs = h.channel_bindings(feats)
        check('tls-exporter' in cbs and 'tls-server-end-point' in cbs,
              'XEP-0440 channel bindings offered: %s (%r)' % (cbs, raw.received))
        check(feats.find('{%s}starttls' % h.NS_TLS) is None, 'STARTTLS offered again over TLS')
    finally:
        raw.close()


def test_features_after_starttls():
    _features_after_tls(False)


def test_features_direct_tls():
    _features_after_tls(True)


def _raw_scram(mech, cb_type, direct=False, backend='ssl', **kw):
    """Logs in with our own SCRAM client, binds, and pings; returns (ok, condition)."""
    user, pw = srv.new_user('raw')
    raw = h.Raw(srv.tls_port if direct else srv.port, direct_tls=direct, tls_backend=backend)
    try:
        if not direct:
            raw.open()
            raw.starttls(backend)
        feats = raw.open()
        check(mech in h.mechanisms(feats), '%s not offered: %s' % (mech, h.mechanisms(feats)))
        ok, cond = h.scram_auth(raw, mech, h.localpart(user), pw, cb_type=cb_type, **kw)
        if not ok:
            return ok, cond
        raw.open()
        jid = raw.bind('cb')
        check(jid == user + '/cb', 'bound %s' % jid)
        raw.send("<iq type='get' id='p1' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>"
                 % srv.domain)
        el = raw.next()
        check(el.get('type') == 'result' and el.get('id') == 'p1', 'ping after login: %r'
              % raw.received)
        return True, None
    finally:
        raw.close()


def _plus(mech, cb_type, direct=False):
    backend = 'openssl' if cb_type == 'tls-exporter' else 'ssl'
    ok, cond = _raw_scram(mech, cb_type, direct=direct, backend=backend)
    check(ok, '%s with %s failed: %s' % (mech, cb_type, cond))


def test_scram_sha1_plus_exporter_starttls():
    _plus('SCRAM-SHA-1-PLUS', 'tls-exporter')


def test_scram_sha256_plus_exporter_starttls():
    _plus('SCRAM-SHA-256-PLUS', 'tls-exporter')


def test_scram_sha1_plus_endpoint_starttls():
    _plus('SCRAM-SHA-1-PLUS', 'tls-server-end-point')


def test_scram_sha256_plus_endpoint_starttls():
    _plus('SCRAM-SHA-256-PLUS', 'tls-server-end-point')


def test_scram_sha256_plus_exporter_direct_tls():
    _plus('SCRAM-SHA-256-PLUS', 'tls-exporter', direct=True)


def test_scram_sha1_plus_endpoint_direct_tls():
    _plus('SCRAM-SHA-1-PLUS', 'tls-server-end-point', direct=True)


def test_scram_sha256_raw_no_binding():
    ok, cond = _raw_scram('SCRAM-SHA-256', None)
    check(ok, 'SCRAM-SHA-256 failed: %s' % cond)


def test_scram_plus_wrong_binding_data_fails():
    """A -PLUS exchange whose binding data is not this channel's must fail (RFC 5802 §6)."""
    ok, cond = _raw_scram('SCRAM-SHA-256-PLUS', 'tls-server-end-point', cb_data=b'\0' * 32)
    check(not ok, 'server accepted wrong channel-binding data')
    check(cond == 'not-authorized', 'condition %r, expected not-authorized' % cond)


def test_scram_unknown_binding_type_fails():
    """tls-unique is not offered (undefined for TLS 1.3): asking for it must fail."""
    ok, cond = _raw_scram('SCRAM-SHA-256-PLUS', 'tls-unique', cb_data=b'\1' * 12)
    check(not ok, 'server accepted channel binding type tls-unique it did not offer')


def test_scram_y_flag_when_server_binds_fails():
    """gs2 flag 'y' (client could bind but thinks the server can't) while the server offers
    -PLUS is a downgrade: the server MUST fail the exchange (RFC 5802 §6)."""
    ok, cond = _raw_scram('SCRAM-SHA-256', None, gs2_flag='y')
    check(not ok, "server accepted gs2 flag 'y' although it advertises -PLUS (downgrade)")


def test_scram_bad_proof_not_authorized():
    ok, cond = _raw_scram('SCRAM-SHA-1', None, tamper_proof=True)
    check(not ok, 'server accepted a wrong SCRAM proof')
    check(cond == 'not-authorized', 'condition %r, expected not-authorized' % cond)


def _raw_plain(user, pw):
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        return h.plain_auth(raw, user, pw)
    finally:
        raw.close()


def test_plain_wrong_password_not_authorized():
    user, pw = srv.new_user('pl')
    ok, cond = _raw_plain(h.localpart(user), pw + 'x')
    check(not ok and cond == 'not-authorized', 'PLAIN wrong password: %s %s' % (ok, cond))
    ok, cond = _raw_plain(h.localpart(user), pw)
    check(ok, 'PLAIN right password failed: %s' % cond)


def test_unknown_user_not_authorized():
    ok, cond = _raw_plain('nosuchuser', 'whatever')
    check(not ok and cond == 'not-authorized', 'PLAIN unknown user: %s %s' % (ok, cond))
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        ok, cond = h.scram_auth(raw, 'SCRAM-SHA-256', 'nosuchuser', 'whatever')
        check(not ok and cond == 'not-authorized', 'SCRAM unknown user: %s %s' % (ok, cond))
    finally:
        raw.close()


def test_invalid_mechanism():
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.starttls()
        raw.open()
        raw.send("<auth xmlns='%s' mechanism='DIGEST-MD5'/>" % h.NS_SASL)
        kind, cond, el = h._sasl_result(raw)
        check(kind == 'failure' and cond == 'invalid-mechanism', 'got %r' % raw.received)
    finally:
        raw.close()


def test_plain_before_tls_refused():
    """An <auth/> before STARTTLS on a require_tls listener must not log anyone in."""
    user, pw = srv.new_user('pre')
    raw = h.Raw(srv.port)
    try:
        raw.open()
        raw.send("<auth xmlns='%s' mechanism='PLAIN'>%s</auth>"
                 % (h.NS_SASL, h._b64(b'\0' + h.localpart(user).encode() + b'\0' + pw.encode())))
        try:
            el = raw.next()
        except h.StreamClosed:
            return
        check(el.tag != '{%s}success' % h.NS_SASL, 'PLAIN succeeded before TLS')
    finally:
        raw.close()


async def test_slixmpp_wrong_password():
    jid, pw = srv.new_user('wp')
    try:
        c = await h.connect(srv, jid, pw + 'wrong')
    except h.LoginFailed as e:
        check('not-authorized' in str(e), 'login failed, but not with not-authorized: %s' % e)
        return
    await c.close()
    raise h.TestFailure('login with a wrong password succeeded')


def test_auth_failure_rate_limit():
    """auth_failures=2: after two failed attempts from this IP, the third (even with the right
    password) is refused."""
    with h.Server({'c2s': {'auth_failures': '2', 'auth_failure_window': '60'}}) as s:
        user, pw = s.new_user('rl')
        for i in range(2):
            raw = h.Raw(s.port)
            try:
                raw.open()
                raw.starttls()
                raw.open()
                ok, cond = h.plain_auth(raw, h.localpart(user), 'bad%d' % i)
                check(not ok and cond == 'not-authorized', 'attempt %d: %s %s' % (i, ok, cond))
            finally:
                raw.close()
        raw = h.Raw(s.port)
        try:
            outcome = None
            try:
                raw.open()
                raw.starttls()
                raw.open()
                ok, cond = h.plain_auth(raw, h.localpart(user), pw)
                outcome = 'success' if ok else 'failure ' + cond
            except (h.StreamClosed, OSError) as e:
                outcome = 'refused (%s)' % type(e).__name__
            check(outcome != 'success', 'third attempt with the right password succeeded '
                  'despite auth_failures=2')
        finally:
            raw.close()


test_auth_failure_rate_limit.timeout = 30


def test_auth_timeout_connection_timeout():
    """auth_timeout=2: an idle unauthenticated stream gets <connection-timeout/>."""
    with h.Server({'c2s': {'auth_timeout': '2'}}) as s:
        raw = h.Raw(s.port)
        try:
            raw.open()
            t0 = time.monotonic()
            raw.expect_stream_error('connection-timeout', timeout=8)
            dt = time.monotonic() - t0
            check(dt >= 1.5, 'connection-timeout after %.1fs, before auth_timeout=2' % dt)
        finally:
            raw.close()
        # An authenticated session is not subject to the auth timeout.
        user, pw = s.new_user('at')
        raw, jid = h.authed_raw(s, h.localpart(user), pw)
        try:
            raw.expect_silence(3.5)
            raw.send("<iq type='get' id='k' to='%s'><ping xmlns='urn:xmpp:ping'/></iq>" % s.domain)
            el = raw.next()
            check(el.get('type') == 'result', 'ping after 3.5s idle: %r' % raw.received[-300:])
        finally:
            raw.close()


test_auth_timeout_connection_timeout.timeout = 30
