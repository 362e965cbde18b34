"""DNS for federation: our resolver (src/resolver.c, driven by build/tests/resolve_tool on our own
event loop) against a real DNS server, dnsmasq, serving a made-up zone on a free loopback port,
plus a UDP socket that never answers.

Covers RFC 6120 §3.2 (SRV, fallback to domain:5269, "." target), XEP-0368 (_xmpps-server merged
with _xmpp-server), RFC 2782 ordering (priorities exactly, weights statistically), A/AAAA
lookups, IDN domains (queried as A-labels), NXDOMAIN/NODATA, the time bound, and cancellation.
"""

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import harness as h
from harness import check

TIMEOUT = 90
TOOL = h.BUILD / 'tests' / 'resolve_tool'
DNSMASQ = shutil.which('dnsmasq') or '/usr/sbin/dnsmasq'
RESOLVER_TIMEOUT = 5.0  # RESOLVER_TIMEOUT_MS in include/isthmus/resolver.h

# dnsmasq's --srv-host takes NAME,TARGET,PORT,PRIORITY,WEIGHT; no target means ".".
SRV = [
    # Distinct priorities, listed out of order.
    '_xmpp-server._tcp.prio.test,c.prio.test,5271,30,0',
    '_xmpp-server._tcp.prio.test,a.prio.test,5269,10,0',
    '_xmpp-server._tcp.prio.test,b.prio.test,5270,20,0',
    # One priority, weights 3:1.
    '_xmpp-server._tcp.weight.test,light.weight.test,5269,10,1',
    '_xmpp-server._tcp.weight.test,heavy.weight.test,5269,10,3',
    # One priority, weights 0 and 9: the zero weight comes first 1 time in 10.
    '_xmpp-server._tcp.zero.test,nine.zero.test,5269,10,9',
    '_xmpp-server._tcp.zero.test,zero.zero.test,5269,10,0',
    # XEP-0368: both services, interleaved priorities.
    '_xmpps-server._tcp.merge.test,tls1.merge.test,5223,5,0',
    '_xmpp-server._tcp.merge.test,plain.merge.test,5269,10,0',
    '_xmpps-server._tcp.merge.test,tls2.merge.test,443,20,0',
    # Direct TLS only.
    '_xmpps-server._tcp.tlsonly.test,x.tlsonly.test,5223,0,0',
    # "." for xmpp-server: decidedly not available.
    '_xmpp-server._tcp.dot.test',
    # "." for xmpp-server but direct TLS offered.
    '_xmpp-server._tcp.dottls.test',
    '_xmpps-server._tcp.dottls.test,x.dottls.test,5223,0,0',
    # "." only for xmpps-server: says nothing about xmpp-server, so the fallback applies.
    '_xmpps-server._tcp.dotxmpps.test',
    # IDN: bücher.test as its A-label.
    '_xmpp-server._tcp.xn--bcher-kva.test,xmpp.xn--bcher-kva.test,5269,0,0',
]
# More records than fit a 512-byte UDP answer (c-ares retries over TCP) and more than
# RESOLVER_MAX_TARGETS (32): priorities 1..40.
SRV += ['_xmpp-server._tcp.many.test,host%02d.many.test,%d,%d,0' % (i, 6000 + i, i)
        for i in range(40, 0, -1)]

HOSTS = [
    'both.test,127.0.0.7,fd00::7',
    'v4only.test,127.0.0.8',
    'v6only.test,fd00::9',
    'xn--bcher-kva.test,127.0.0.10',
    'nosrv.test,127.0.0.11',
]
TXT = ['txtonly.test,hello']  # exists, but has no A or AAAA (NODATA)

dns = None        # the dnsmasq process
dns_port = None
silent = None     # a UDP socket that never answers
silent_port = None
tmpdir = None


def _free_udp_tcp_port():
    for _ in range(50):
        port = h.free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(('127.0.0.1', port))
            except OSError:
                continue
        return port
    raise h.TestFailure('no free port for dnsmasq')


def _dns_query(name, port, qtype=1, timeout=0.2):
    """One raw DNS query over UDP; returns the RCODE, or None without an answer."""
    qname = b''.join(bytes([len(label)]) + label.encode() for label in name.split('.')) + b'\0'
    header = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)  # id, RD, one question
    packet = header + qname + struct.pack('>HH', qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, ('127.0.0.1', port))
        try:
            data, _ = s.recvfrom(4096)
        except socket.timeout:
            return None
    if len(data) < 12 or data[:2] != b'\x12\x34':
        return None
    return data[3] & 0x0f


def setup_module():
    global dns, dns_port, silent, silent_port, tmpdir
    check(TOOL.exists(), '%s missing (make %s)' % (TOOL, TOOL))
    check(os.path.exists(DNSMASQ), 'dnsmasq missing (Debian package dnsmasq-base)')
    tmpdir = tempfile.mkdtemp(prefix='isthmus-dns-')
    dns_port = _free_udp_tcp_port()
    args = [DNSMASQ, '--no-daemon', '--port=%d' % dns_port, '--listen-address=127.0.0.1',
            '--bind-interfaces', '--no-resolv', '--no-hosts', '--conf-file=/dev/null',
            '--pid-file=%s' % os.path.join(tmpdir, 'dnsmasq.pid'),
            # Answer for .test from the records below only: NXDOMAIN / NODATA otherwise.
            '--local=/test/']
    args += ['--srv-host=' + r for r in SRV]
    args += ['--host-record=' + r for r in HOSTS]
    args += ['--txt-record=' + r for r in TXT]
    log = open(os.path.join(tmpdir, 'dnsmasq.log'), 'wb')
    dns = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    h.wait_until(lambda: dns.poll() is not None or _dns_query('both.test', dns_port) == 0,
                 10, 'dnsmasq on port %d' % dns_port)
    check(dns.poll() is None, 'dnsmasq exited: %s' % _dnsmasq_log())
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(('127.0.0.1', 0))
    silent_port = silent.getsockname()[1]


def teardown_module():
    if silent:
        silent.close()
    if dns and dns.poll() is None:
        dns.terminate()
        try:
            dns.wait(5)
        except subprocess.TimeoutExpired:
            dns.kill()
            dns.wait()
    if tmpdir:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _dnsmasq_log():
    try:
        with open(os.path.join(tmpdir, 'dnsmasq.log'), 'rb') as f:
            return f.read().decode(errors='replace')[-2000:]
    except OSError:
        return ''


def tool(*args, ns='dns', timeout=30):
    """Runs resolve_tool; returns (output lines, seconds). Fails on a nonzero exit, a broken
    promise (VIOLATION) or a sanitizer report."""
    cmd = [str(TOOL)]
    if ns == 'dns':
        cmd += ['--ns', '127.0.0.1:%d' % dns_port]
    elif ns == 'silent':
        cmd += ['--ns', '127.0.0.1:%d' % silent_port]
    cmd += list(args)
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    elapsed = time.monotonic() - t0
    out = p.stdout.decode(errors='replace')
    err = p.stderr.decode(errors='replace')
    where = '%s: exit %d, stdout %r, stderr %r' % (' '.join(cmd), p.returncode, out[-1500:],
                                                    err[-1500:])
    check(not any(m in err for m in h.SANITIZER_MARKERS), 'sanitizer report: ' + where)
    check('VIOLATION' not in out, where)
    check(p.returncode == 0, where)
    check(dns.poll() is None, 'dnsmasq died: %s' % _dnsmasq_log())
    return out.splitlines(), elapsed


def targets(line):
    """'ok h,p,tls h2,p2,starttls' → [(h, p, 'tls'), ...]"""
    check(line.startswith('ok'), 'expected targets, got %r' % line)
    result = []
    for item in line.split()[1:]:
        host, port, mode = item.rsplit(',', 2)
        result.append((host, int(port), mode))
    return result


def one(*args, **kw):
    lines, _ = tool(*args, **kw)
    check(len(lines) == 1, 'expected one line, got %r' % lines)
    return lines[0]


# --------------------------------------------------------------------------- SRV


def test_srv_priorities_order_exactly():
    lines, _ = tool('--repeat', '20', 'xmpp', 'prio.test')
    check(len(lines) == 20, 'expected 20 answers, got %r' % lines)
    want = [('a.prio.test', 5269, 'starttls'), ('b.prio.test', 5270, 'starttls'),
            ('c.prio.test', 5271, 'starttls')]
    for line in lines:
        check(targets(line) == want, 'order %r, want %r' % (targets(line), want))


def test_srv_weights_are_honoured():
    runs = 600
    lines, _ = tool('--repeat', str(runs), 'xmpp', 'weight.test', timeout=60)
    check(len(lines) == runs, 'expected %d answers, got %d' % (runs, len(lines)))
    heavy_first = 0
    for line in lines:
        t = targets(line)
        check(sorted(x[0] for x in t) == ['heavy.weight.test', 'light.weight.test'],
              'targets %r' % t)
        heavy_first += t[0][0] == 'heavy.weight.test'
    # P(heavy first) = 3/4: expect 450, σ ≈ 10.6. The bounds (±50, 4.7σ) reject ignored
    # weights (300), reversed weights (150) and a fixed order (0 or 600).
    check(400 <= heavy_first <= 500, 'heavy first in %d of %d runs' % (heavy_first, runs))


def test_srv_zero_weight_has_a_small_chance():
    runs = 600
    lines, _ = tool('--repeat', str(runs), 'xmpp', 'zero.test', timeout=60)
    zero_first = sum(targets(line)[0][0] == 'zero.zero.test' for line in lines)
    # RFC 2782: a zero weight gets a very small chance; ours is 1/(total+1) = 1/10: expect 60,
    # σ ≈ 7.3. Rejects "never" (0), "always" (600) and uniform (300).
    check(len(lines) == runs, 'expected %d answers' % runs)
    check(25 <= zero_first <= 110, 'zero weight first in %d of %d runs' % (zero_first, runs))


def test_xmpps_and_xmpp_are_merged_by_priority():
    check(targets(one('xmpp', 'merge.test')) ==
          [('tls1.merge.test', 5223, 'tls'), ('plain.merge.test', 5269, 'starttls'),
           ('tls2.merge.test', 443, 'tls')], 'merge.test')
    # Direct TLS records only: no STARTTLS fallback is appended.
    check(targets(one('xmpp', 'tlsonly.test')) == [('x.tlsonly.test', 5223, 'tls')],
          'tlsonly.test')


def test_dot_target_means_not_available():
    line = one('xmpp', 'dot.test')
    check(line.startswith('error ') and '"."' in line, 'dot.test: %r' % line)
    # The "." applies to the service it is published for.
    check(targets(one('xmpp', 'dottls.test')) == [('x.dottls.test', 5223, 'tls')],
          'dottls.test')
    check(targets(one('xmpp', 'dotxmpps.test')) == [('dotxmpps.test', 5269, 'starttls')],
          'dotxmpps.test')


def test_no_srv_falls_back_to_domain_5269():
    # NXDOMAIN for the SRV names (the domain has an address only)...
    check(targets(one('xmpp', 'nosrv.test')) == [('nosrv.test', 5269, 'starttls')], 'nosrv')
    # ...and for a domain that does not exist at all: the address lookup then fails.
    check(targets(one('xmpp', 'nothere.test')) == [('nothere.test', 5269, 'starttls')],
          'nothere')


def test_many_records_over_tcp_capped_at_32():
    t = targets(one('xmpp', 'many.test'))
    want = [('host%02d.many.test' % i, 6000 + i, 'starttls') for i in range(1, 33)]
    check(t == want, 'got %r' % t)


def test_idn_domain_is_queried_as_a_label():
    for name in ('b\u00fccher.test', 'B\u00dcCHER.test', 'xn--bcher-kva.test'):
        check(targets(one('xmpp', name)) == [('xmpp.xn--bcher-kva.test', 5269, 'starttls')],
              name)
    check(one('addr', 'b\u00fccher.test') == 'ok 127.0.0.10:5269', 'addr of the IDN name')


# --------------------------------------------------------------------------- addresses


def test_addresses_a_and_aaaa():
    line = one('addr', 'both.test', '5270')
    check(line.startswith('ok ') and sorted(line.split()[1:]) ==
          ['127.0.0.7:5270', '[fd00::7]:5270'], 'both.test: %r' % line)
    check(one('addr', 'v4only.test') == 'ok 127.0.0.8:5269', 'v4only.test')
    check(one('addr', 'v6only.test', '1') == 'ok [fd00::9]:1', 'v6only.test')


def test_addresses_nxdomain_and_nodata():
    line = one('addr', 'nx.test')
    check(line == 'error host nx.test not found', 'nx.test: %r' % line)
    line = one('addr', 'txtonly.test')
    check(line.startswith('error ') and 'no IPv4 or IPv6 address' in line,
          'txtonly.test: %r' % line)


def test_literals_need_no_dns():
    # The silent server would make any DNS query take seconds.
    cases = [(('xmpp', '[::1]'), 'ok ::1,5269,starttls'),
             (('xmpp', '127.0.0.1'), 'ok 127.0.0.1,5269,starttls'),
             (('addr', '[::1]', '5222'), 'ok [::1]:5222'),
             (('addr', '::1', '5222'), 'ok [::1]:5222'),
             (('addr', '127.0.0.3'), 'ok 127.0.0.3:5269')]
    for args, want in cases:
        lines, elapsed = tool(*args, ns='silent')
        check(lines == [want], '%r: %r' % (args, lines))
        check(elapsed < 1.5, '%r took %.1fs' % (args, elapsed))


def test_bad_names_are_errors():
    for args in (('xmpp', 'a..b'), ('xmpp', ''), ('xmpp', 'x' * 300 + '.test'),
                 ('xmpp', 'sp ace.test'), ('xmpp', 'a\x01b'), ('addr', 'a..b'),
                 ('addr', '[::1'), ('addr', '.')):
        lines, elapsed = tool(*args, ns='silent')
        check(len(lines) == 1 and lines[0].startswith('error '), '%r: %r' % (args, lines))
        check(elapsed < 1.5, '%r took %.1fs' % (args, elapsed))


def test_nameserver_must_be_an_address():
    p = subprocess.run([str(TOOL), '--ns', 'dns.example:53', 'xmpp', 'prio.test'],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    out, err = p.stdout.decode(), p.stderr.decode()
    check(p.returncode == 1 and out.startswith('init-error ') and 'not an IP address' in out,
          'exit %d, stdout %r, stderr %r' % (p.returncode, out, err[-1500:]))
    check(not any(m in err for m in h.SANITIZER_MARKERS), 'sanitizer report: %r' % err[-1500:])


# --------------------------------------------------------------------------- bounds, cancel


def test_unanswering_server_times_out_within_the_bound():
    procs = []
    for args in (('xmpp', 'prio.test'), ('addr', 'both.test')):
        cmd = [str(TOOL), '--ns', '127.0.0.1:%d' % silent_port] + list(args)
        procs.append((args, time.monotonic(),
                      subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for args, t0, p in procs:
        out, err = p.communicate(timeout=30)
        elapsed = time.monotonic() - t0
        out, err = out.decode(), err.decode()
        check(p.returncode == 0 and not any(m in err for m in h.SANITIZER_MARKERS),
              '%r: exit %d, stderr %r' % (args, p.returncode, err[-1500:]))
        check(out.startswith('error ') and ('Timeout' in out or 'timed out' in out),
              '%r: %r' % (args, out))
        # c-ares gives up after 1.5 s + 3 s; the query's own bound is 5 s.
        check(1.0 < elapsed < RESOLVER_TIMEOUT + 1.5, '%r answered after %.1fs' % (args, elapsed))


def test_cancel_suppresses_the_callback():
    # Cancelled at once, while the answer is on its way; an identical query still completes.
    for mode, name, want in (('xmpp', 'prio.test', 'ok a.prio.test,5269,starttls'),
                             ('addr', 'v4only.test', 'ok 127.0.0.8:5269'),
                             # Known at once (no DNS): the deferred callback is dropped too.
                             ('xmpp', '127.0.0.1', 'ok 127.0.0.1,5269,starttls')):
        lines, _ = tool('--cancel-after', '0', '--linger', '300', mode, name)
        check(len(lines) == 2 and lines[0].startswith(want) and lines[1] == 'cancelled',
              '%s %s: %r' % (mode, name, lines))
    # Cancelled in flight against a server that never answers; resolver_fini() then drops the
    # lookups still pending (under ASan this also checks that nothing leaks).
    for mode in ('xmpp', 'addr'):
        lines, elapsed = tool('--cancel-after', '200', '--linger', '300', '--no-control',
                              mode, 'prio.test', ns='silent')
        check(lines == ['cancelled'], '%s: %r' % (mode, lines))
        check(elapsed < 2.0, '%s: cancel took %.1fs' % (mode, elapsed))
