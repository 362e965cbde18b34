"""Process lifecycle: `isthmus -t` on good and bad configurations, and clean shutdown on
SIGTERM/SIGINT with clients connected (they see </stream:stream>, the exit status is 0)."""

import asyncio
import os
import signal
import subprocess
import tempfile
import shutil

import harness as h
from harness import check


def _check_config(text):
    d = tempfile.mkdtemp(prefix='isthmus-conf-')
    try:
        path = os.path.join(d, 'test.conf')
        with open(path, 'w') as f:
            f.write(text)
        r = subprocess.run([str(h.ISTHMUS), '-t', '-c', path], capture_output=True, text=True,
                           timeout=20)
        check('AddressSanitizer' not in r.stderr and 'runtime error:' not in r.stderr,
              'sanitizer report: %s' % r.stderr)
        return r, path
    finally:
        shutil.rmtree(d, ignore_errors=True)


GOOD = """; a comment
[server]
data_dir = data
log_level = info
max_stanza_size = 256K
hide_version = false
scram_iterations = 4096

[c2s]
listen = 127.0.0.1:5222
tls_listen = 127.0.0.1:5223
require_tls = true
auth_timeout = 30
auth_failures = 5
auth_failure_window = 60

[tls]
min_version = 1.2

[host localhost]
registration = true
"""


def _line_of(text, needle):
    """1-based number of the first line that starts with needle."""
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith(needle):
            return i
    raise AssertionError('test bug: %r not found' % needle)


def _bad(old, new, expect_section, expect_key):
    text = GOOD.replace(old, new, 1)
    check(text != GOOD, 'test bug: %r not in GOOD' % old)
    expect_line = _line_of(text, new.splitlines()[-1])
    r, path = _check_config(text)
    check(r.returncode == 1, 'isthmus -t exit %d for a bad config (%r); stderr %r'
          % (r.returncode, new, r.stderr))
    check('%s:%d:' % (path, expect_line) in r.stderr,
          'error does not name %s:%d: %r' % (path, expect_line, r.stderr))
    check('[%s]' % expect_section in r.stderr and expect_key in r.stderr,
          'error does not name [%s] %s: %r' % (expect_section, expect_key, r.stderr))
    check('configuration OK' not in r.stdout, 'bad config reported OK')


def test_config_check_good():
    r, _ = _check_config(GOOD)
    check(r.returncode == 0, 'isthmus -t exit %d: %s' % (r.returncode, r.stderr))
    check('configuration OK' in r.stdout + r.stderr, 'no "configuration OK": %r %r'
          % (r.stdout, r.stderr))


def test_config_check_unknown_key():
    _bad('auth_failures = 5\n', 'auth_failures = 5\nauth_falures = 7\n', 'c2s', 'auth_falures')


def test_config_check_bad_number():
    _bad('auth_timeout = 30', 'auth_timeout = soon', 'c2s', 'auth_timeout')


def test_config_check_bad_boolean():
    _bad('require_tls = true', 'require_tls = perhaps', 'c2s', 'require_tls')


def test_config_check_bad_log_level():
    _bad('log_level = info', 'log_level = chatty', 'server', 'log_level')


def test_config_check_bad_listen_address():
    _bad('listen = 127.0.0.1:5222', 'listen = 127.0.0.1:99999', 'c2s', 'listen')


def test_config_check_bad_tls_version():
    _bad('min_version = 1.2', 'min_version = 0.9', 'tls', 'min_version')


def test_config_check_missing_file():
    r = subprocess.run([str(h.ISTHMUS), '-t', '-c', '/nonexistent/isthmus.conf'],
                       capture_output=True, text=True, timeout=20)
    check(r.returncode != 0, 'missing config file accepted')
    check('/nonexistent/isthmus.conf' in r.stderr, 'error does not name the file: %r' % r.stderr)


def test_config_check_syntax_error():
    text = GOOD.replace('[tls]', '[tls', 1)
    r, path = _check_config(text)
    check(r.returncode == 1, 'unterminated section header accepted: %r' % r.stderr)
    line = _line_of(text, '[tls')
    check('%s:%d:' % (path, line) in r.stderr, 'error does not name line %d: %r'
          % (line, r.stderr))


def test_start_fails_cleanly_on_bad_config():
    """Starting (not just -t) with a bad config exits nonzero with the same kind of message."""
    d = tempfile.mkdtemp(prefix='isthmus-conf-')
    try:
        path = os.path.join(d, 'bad.conf')
        with open(path, 'w') as f:
            f.write(GOOD.replace('auth_timeout = 30', 'auth_timeout = -1'))
        r = subprocess.run([str(h.ISTHMUS), '-c', path], capture_output=True, text=True,
                           timeout=20)
        check(r.returncode != 0, 'server started with auth_timeout = -1')
        check('%s:%d:' % (path, _line_of(GOOD, 'auth_timeout')) in r.stderr,
              'no file:line in %r' % r.stderr)
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def _shutdown_with_clients(sig):
    srv = h.Server().start()
    try:
        jid, pw = srv.new_user('sd')
        c = await h.connect(srv, jid + '/slix', pw)
        raw_authed, _ = await asyncio.to_thread(h.authed_raw, srv, h.localpart(jid), pw, 'raw')
        raw_unauthed = h.Raw(srv.port)
        await asyncio.to_thread(raw_unauthed.open)
        srv.send_signal(sig)

        def closes(raw):
            # The server may say why (system-shutdown) before closing the stream.
            while True:
                try:
                    el = raw.next()
                except h.StreamClosed:
                    break
                if el.tag == '{%s}error' % h.NS_STREAM:
                    check(el.find('{%s}system-shutdown' % h.NS_STREAMS) is not None,
                          'shutdown stream error: %s' % h.ET.tostring(el))
            check(raw.stream_ended, 'connection closed without </stream:stream>: %r'
                  % raw.received[-300:])
        await asyncio.to_thread(closes, raw_authed)
        await asyncio.to_thread(closes, raw_unauthed)
        await asyncio.wait_for(asyncio.shield(c.closed), h.IO_TIMEOUT)
        rc = await asyncio.to_thread(srv.proc.wait, h.STOP_TIMEOUT)
        check(rc == 0, 'exit status %d after %s' % (rc, sig.name))
        raw_authed.close()
        raw_unauthed.close()
    finally:
        srv.stop()  # checks the exit status (already reaped) and scans the log


async def test_sigterm_with_clients_connected():
    await _shutdown_with_clients(signal.SIGTERM)


async def test_sigint_with_clients_connected():
    await _shutdown_with_clients(signal.SIGINT)
