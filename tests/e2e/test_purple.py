"""The libpurple gateway (build/isthmus-purple) end to end, with real protocol plugins against
real local servers: the server supervises the gateway as purple.localhost (offering prpl-irc and
prpl-jabber); prpl-irc talks to an ngircd and prpl-jabber to a Prosody (peer.test on its own
loopback address), both started here. IRC users are python3-irc clients, XMPP users hand-driven
streams (the helpers of test_irc.py).

Covered: discovery and the registration form built from the plugins' options; registrations
checked with a real login (unreachable server, wrong password, bad number refused); an IRC and an
XMPP legacy account registered, the XMPP account's certificate prompt answered through a message
to the gateway; roster import (a contact already in the legacy roster appears in the user's
roster), presence both ways (buddy show/status; our show/status as the account's status),
messages both ways (both protocols), typing both ways, a buddy's avatar, an IRC channel and a
Prosody MUC room as rooms of the gateway; a backend killed with
SIGKILL mid-session (restarted, the users logged back in; a message the legacy server accepted
while the account was gone and messages sent afterwards arrive); a libpurple fields request
(prpl-jabber's configuration form of a new MUC room) as an XEP-0004 form, submitted (the room
gets the submitted name) and cancelled; prpl-jabber's SRV lookup answered by the backend's
resolver thread (a domain without records fails the registration check).

No fixed sleeps: every wait is for a specific stanza, IRC event or log line."""

import base64
import calendar
import hashlib
import os
import re
import shutil
import signal
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import harness as h
from harness import check
import test_irc as ti

GW = 'purple.localhost'
GATEWAY_BIN = h.BUILD / 'isthmus-purple'
PROSODY_IP = None  # 127.0.23.N, a free one: clear of the federation tests' Prosody
PEER = 'peer.test'
MUC = 'conference.peer.test'
C = '{jabber:client}'
NS_DATA = 'jabber:x:data'
NS_REGISTER = 'jabber:iq:register'
NS_DISCO_INFO = 'http://jabber.org/protocol/disco#info'
NS_ROSTER = 'jabber:iq:roster'
T = max(h.IO_TIMEOUT, 40.0)
TIMEOUT = 240

srv = None
ngircd = None
prosody = None
workdir = None


def dump(el):
    return ET.tostring(el).decode(errors='replace')


def _prosody():
    import peers

    class OwnProsody(peers.Prosody):
        def __init__(self, directory, ca):
            super().__init__(directory, ca, hosts={})
            self.ip = PROSODY_IP

        def write_config(self):
            super().write_config()
            with open(self.config_path, 'a') as f:
                f.write('\nComponent "%s" "muc"\n' % MUC)

    return OwnProsody


def _free_ip():
    for n in range(2, 250):
        ip = '127.0.23.%d' % n
        if all(ti._bindable(p, ip) for p in (5222, 5269)):
            return ip
    raise h.TestFailure('no free loopback address for Prosody')


def setup_module():
    try:
        _setup()
    except BaseException:
        teardown_module()
        raise


def _setup():
    global srv, ngircd, prosody, workdir, PROSODY_IP
    import peers
    PROSODY_IP = _free_ip()
    check(GATEWAY_BIN.exists(), '%s does not exist (run make)' % GATEWAY_BIN)
    check(os.path.exists(ti.NGIRCD), 'ngircd is needed (contrib/install-deps --test)')
    workdir = tempfile.mkdtemp(prefix='isthmus-purple-')
    ngircd = ti.Ngircd(os.path.join(workdir, 'ngircd'))
    ti.ngircd = ngircd
    ca = peers.TestCA(os.path.join(workdir, 'ca'))
    prosody = _prosody()(os.path.join(workdir, 'prosody'), ca)
    prosody.start()
    srv = h.Server({
        'component': {'listen': '127.0.0.1:%d' % h.free_port()},
        'gateway ' + GW: {'type': 'purple', 'roster': 'both', 'message': 'outgoing',
                          'restart_delay': '1',
                          'purple_protocols': 'prpl-irc, prpl-jabber',
                          'purple_accounts_per_backend': '50'},
    })
    srv.start()
    ti.srv = srv
    ti.gateway_ready(domain=GW, timeout=45)


def teardown_module():
    try:
        if srv and srv.alive():
            srv.stop()  # checks the log for sanitizer reports
    finally:
        try:
            if prosody:
                prosody.stop()
        finally:
            if ngircd:
                ngircd.stop()
            if workdir and not os.environ.get('ISTHMUS_KEEP'):
                shutil.rmtree(workdir, ignore_errors=True)


def isolated(fn):
    def run():
        try:
            fn()
        finally:
            while ti._opened:
                try:
                    ti._opened.pop().close()
                except Exception:
                    pass
    run.__name__ = fn.__name__
    return run


def field_values(form):
    return {f.get('var'): f for f in form.iter('{%s}field' % NS_DATA)}


def register(x, values):
    fields = ''.join("<field var='%s'><value>%s</value></field>"
                     % (ti.xml_attr(k), ti.xml_text(v)) for k, v in values.items())
    return x.iq('set', GW, "<query xmlns='%s'><x xmlns='%s' type='submit'>%s</x></query>"
                % (NS_REGISTER, NS_DATA, fields))


def register_send(x, values):
    """Sends a registration; returns the iq id (the answer comes after the real login)."""
    iid = 'reg%d' % next(x._ids)
    fields = ''.join("<field var='%s'><value>%s</value></field>"
                     % (ti.xml_attr(k), ti.xml_text(v)) for k, v in values.items())
    x.send("<iq type='set' id='%s' to='%s'><query xmlns='%s'><x xmlns='%s' type='submit'>%s"
           "</x></query></iq>" % (iid, GW, NS_REGISTER, NS_DATA, fields))
    return iid


def answer_prompts_until(x, done, what, timeout=None):
    """Waits until done() is true, answering libpurple's prompts (messages from the gateway:
    the certificate question) with 1 (Accept) meanwhile. Returns done()'s value."""
    deadline = time.monotonic() + (timeout or T * 2)
    answered = set()
    m = 0
    while True:
        r = done()
        if r is not None and r is not False:  # an Element without children is falsy
            return r
        for i, e in enumerate(x.got[m:], m):
            if i not in answered and e.tag == C + 'message' and e.get('from') == GW \
                    and 'Reply with the number' in (e.findtext(C + 'body') or ''):
                body = e.findtext(C + 'body')
                check('1. Accept' in body, 'the prompt: %s' % body)
                answered.add(i)
                x.send("<message to='%s' type='chat'><body>1</body></message>" % GW)
        check(time.monotonic() < deadline, 'timed out waiting for %s:\n%s\n%s'
              % (what, x.describe(), srv.log_tail(30)))
        x._pump(time.monotonic() + 0.5)  # waits for stanzas (at most 0.5 s)


def iq_answer(x, iid):
    return lambda: next((e for e in x.got if e.tag == C + 'iq' and e.get('id') == iid
                         and e.get('type') in ('result', 'error')), None)


def log_count(text):
    return srv.log().count(text)


def backend_pids():
    return [int(m.group(1)) for m in re.finditer(r'backend \d+ pid (\d+) started', srv.log())]


# ---------------------------------------------------------------------------


@isolated
def test_disco_and_registration_form():
    x = ti.XUser.new('pdisco')
    info = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_DISCO_INFO)
    ids = {(i.get('category'), i.get('type')) for i in info.iter('{%s}identity' % NS_DISCO_INFO)}
    check(any(c == 'gateway' for c, _ in ids), 'no gateway identity: %s' % dump(info))
    r = x.iq_ok('get', GW, "<query xmlns='%s'/>" % NS_REGISTER)
    form = r.find('{%s}query/{%s}x' % (NS_REGISTER, NS_DATA))
    check(form is not None, 'no registration form: %s' % dump(r))
    f = field_values(form)
    for var in ('protocol', 'username', 'password', 'prpl-irc.s.server', 'prpl-irc.o.port',
                'prpl-jabber.s.domain', 'prpl-jabber.o.connect_server',
                'prpl-jabber.o.connection_security'):
        check(var in f, 'registration form lacks %s: %s' % (var, sorted(f)))
    opts = {o.findtext('{%s}value' % NS_DATA) for o in f['protocol'].iter('{%s}option' % NS_DATA)}
    check(opts == {'prpl-irc', 'prpl-jabber'}, 'protocols offered: %s' % opts)
    check(f['prpl-irc.o.port'].findtext('{%s}value' % NS_DATA) == '6667',
          'the IRC port default: %s' % dump(f['prpl-irc.o.port']))
    # An unreachable legacy server: the real login fails (XEP-0100 §4.1)
    r = register(x, {'protocol': 'prpl-irc', 'username': 'someone',
                     'prpl-irc.s.server': '127.0.0.1', 'prpl-irc.o.port': str(h.free_port())})
    check(r.get('type') == 'error' and r.find('{jabber:client}error/{%s}remote-server-not-found'
                                              % h.NS_STANZAS) is not None,
          'an unreachable server was not refused: %s' % dump(r))
    # A bad value is refused (XEP-0100 §4.1 error)
    r = register(x, {'protocol': 'prpl-irc', 'username': 'someone',
                     'prpl-irc.o.port': 'not-a-number'})
    check(r.get('type') == 'error' and r.find('{jabber:client}error/{%s}not-acceptable'
                                              % h.NS_STANZAS) is not None,
          'a non-numeric port was accepted: %s' % dump(r))


def irc_login(prefix='pirc'):
    """A new XMPP user with a registered IRC account on ngircd, logged in."""
    x = ti.XUser.new(prefix)
    nick = ti.uniq('pn')
    r = register(x, {'protocol': 'prpl-irc', 'username': nick,
                     'prpl-irc.s.server': '127.0.0.1', 'prpl-irc.o.port': str(ngircd.port),
                     'prpl-irc.o.ratelimit-interval': '0',
                     'prpl-irc.o.ratelimit-burst': '100'})
    check(r.get('type') == 'result', 'IRC registration failed: %s' % dump(r))
    mark = log_count('%s: legacy account connected' % x.bare)
    x.send("<presence to='%s'/>" % GW)
    h.wait_until(lambda: log_count('%s: legacy account connected' % x.bare) > mark, T,
                 'the IRC account of %s to connect' % x.bare)
    return x, nick


@isolated
def test_irc_messages_both_ways():
    x, nick = irc_login()
    ircu = ti.IrcUser(ti.uniq('pi'))
    ircu.say(nick, 'hello from irc')
    contact = '%s@%s' % (ircu.nick.lower(), GW)
    m = x.wait(lambda e: e.tag == C + 'message' and ti.bare(e.get('from')) == contact
               and e.findtext(C + 'body') == 'hello from irc', 'the IRC private message')
    check(m.get('type') == 'chat', 'not a chat message: %s' % dump(m))
    x.send("<message to='%s' type='chat'><body>hello from xmpp</body></message>" % contact)
    ircu.wait(lambda e: e.type == 'privmsg' and e.arguments[0] == 'hello from xmpp'
              and e.source.nick == nick, 'the XMPP message on IRC')
    # subscribing to an IRC user adds a buddy (prpl-irc watches it with ISON): presence
    x.send("<presence to='%s' type='subscribe'/>" % contact)
    x.wait(lambda e: ti.is_presence(e, contact, 'subscribed'), 'the subscription approval')
    x.wait(lambda e: ti.is_presence(e, None, 'available') and ti.bare(e.get('from')) == contact,
           'the IRC user online')


@isolated
def test_irc_channel_as_room():
    x, nick = irc_login('pchan')
    ircu = ti.IrcUser(ti.uniq('pc'))
    chan = '#' + ti.uniq('pch')
    ircu.join(chan)
    room = '%s@%s' % (chan, GW)
    ti.join(x, room, nick)
    ircu.wait(lambda e: e.type == 'join' and e.source.nick == nick, 'the gateway user joining')
    ircu.say(chan, 'hi room')
    x.wait(lambda e: ti.is_groupchat(e, room + '/' + ircu.nick, 'hi room'),
           'the channel message in the room')
    x.send("<message to='%s' type='groupchat'><body>hi channel</body></message>" % room)
    ircu.wait(lambda e: e.type == 'pubmsg' and e.arguments[0] == 'hi channel'
              and e.source.nick == nick, 'the room message on IRC')
    x.wait(lambda e: ti.is_groupchat(e, room + '/' + nick, 'hi channel'),
           'the reflection of our own message')
    x.send("<presence to='%s/%s' type='unavailable'/>" % (room, nick))
    ircu.wait(lambda e: e.type == 'part' and e.source.nick == nick, 'the gateway user leaving')


def xmpp_account():
    """carol@peer.test with dave@peer.test in her roster (both subscribed), an XMPP user of ours
    with carol registered through the gateway, logged in (the certificate prompt answered)."""
    carol, dave = ti.uniq('carol'), ti.uniq('dave')
    prosody.add_user(carol, 'carol-pw')
    prosody.add_user(dave, 'dave-pw')
    carol_jid, dave_jid = '%s@%s' % (carol, PEER), '%s@%s' % (dave, PEER)
    kw = dict(host=PROSODY_IP, port=5222, domain=PEER, mech='SCRAM-SHA-1')
    cx = ti.XUser(carol_jid, 'carol-pw', **kw)
    dx = ti.XUser(dave_jid, 'dave-pw', **kw)
    cx.iq_ok('set', None, "<query xmlns='%s'><item jid='%s' name='Dave'><group>Friends</group>"
             "</item></query>" % (NS_ROSTER, dave_jid))
    cx.send("<presence to='%s' type='subscribe'/>" % dave_jid)
    dx.wait(lambda e: e.tag == C + 'presence' and e.get('type') == 'subscribe',
            'carol\'s subscription request')
    dx.send("<presence to='%s' type='subscribed'/>" % carol_jid)
    cx.wait(lambda e: e.tag == C + 'presence' and ti.bare(e.get('from')) == dave_jid
            and e.get('type') in ('subscribed', None), 'dave\'s approval (or presence)')
    # and dave subscribed to carol (he sees when her legacy session goes away)
    dx.send("<presence to='%s' type='subscribe'/>" % carol_jid)
    cx.wait(lambda e: e.tag == C + 'presence' and e.get('type') == 'subscribe',
            'dave\'s subscription request')
    cx.send("<presence to='%s' type='subscribed'/>" % dave_jid)
    dx.wait(lambda e: e.tag == C + 'presence' and ti.bare(e.get('from')) == carol_jid
            and e.get('type') in ('subscribed', None), 'carol\'s approval (or presence)')
    cx.close()
    ti._opened.remove(cx)

    x = ti.XUser.new('pxmpp')
    values = {'protocol': 'prpl-jabber', 'username': carol, 'password': 'wrong-pw',
              'prpl-jabber.s.domain': PEER, 'prpl-jabber.s.resource': 'gw',
              'prpl-jabber.o.connect_server': PROSODY_IP,
              'prpl-jabber.o.port': '5222',
              'prpl-jabber.o.connection_security': 'opportunistic_tls'}
    # XEP-0100 §4.1: the registration is checked with a real login. Prosody's certificate is
    # not trusted by libpurple: the prompt comes as a message from the gateway, answered here.
    iid = register_send(x, values)
    r = answer_prompts_until(x, iq_answer(x, iid), 'the answer to registration %s' % iid)
    check(r.get('type') == 'error' and r.find('{jabber:client}error/{%s}not-authorized'
                                              % h.NS_STANZAS) is not None,
          'a wrong password was not refused with not-authorized: %s' % dump(r))
    values['password'] = 'carol-pw'
    iid = register_send(x, values)
    r = answer_prompts_until(x, iq_answer(x, iid), 'the answer to registration %s' % iid)
    check(r.get('type') == 'result', 'XMPP registration failed: %s' % dump(r))
    mark = log_count('%s: legacy account connected' % x.bare)
    x.send("<presence to='%s'/>" % GW)
    answer_prompts_until(x, lambda: log_count('%s: legacy account connected' % x.bare) > mark,
                         'the XMPP account to connect')
    return x, dx, carol_jid, dave_jid


@isolated
def test_xmpp_roster_presence_messages_and_backend_crash():
    x, dx, carol_jid, dave_jid = xmpp_account()
    dave_contact = '%s@%s' % (dave_jid.replace('@', '\\40'), GW)
    # roster import: dave, already in carol's roster, appears in ours (XEP-0356 roster set;
    # pushes only reach resources that asked for the roster, so poll it)
    h.wait_until(lambda: dave_contact in x.roster(), T, 'dave in the roster')
    item = x.roster()[dave_contact]
    check(item.get('name') == 'Dave' and item.findtext('{%s}group' % NS_ROSTER) == 'Friends',
          'the roster item of dave: %s' % dump(item))
    if item.get('subscription') not in ('both', 'to'):
        # the server took the privileged roster set as a plain one: subscribe to the contact
        # (XEP-0100 §5.1); the gateway approves for the legacy contact at once
        x.send("<presence to='%s' type='subscribe'/>" % dave_contact)
        x.wait(lambda e: ti.is_presence(e, dave_contact, 'subscribed'),
               'the subscription approval')
    # presence: dave comes online (dx sent its initial presence before; send a new one)
    dx.send('<presence><status>here</status></presence>')
    x.wait(lambda e: ti.is_presence(e, None, 'available') and ti.bare(e.get('from')) ==
           dave_contact and e.findtext(C + 'status') == 'here', 'dave\'s presence')
    dx.send('<presence><show>away</show><status>lunch</status></presence>')
    x.wait(lambda e: ti.is_presence(e) and ti.bare(e.get('from')) == dave_contact
           and e.findtext(C + 'show') == 'away', 'dave away')
    # messages both ways
    dx.send("<message to='%s' type='chat'><body>hi carol</body></message>" % carol_jid)
    x.wait(lambda e: e.tag == C + 'message' and ti.bare(e.get('from')) == dave_contact
           and e.findtext(C + 'body') == 'hi carol', 'dave\'s message')
    x.send("<message to='%s' type='chat'><body>hi dave</body></message>" % dave_contact)
    dx.wait(lambda e: e.tag == C + 'message' and ti.bare(e.get('from')) == carol_jid
            and e.findtext(C + 'body') == 'hi dave', 'our message at dave')

    # our presence to the gateway → the legacy account's status
    dm = dx.mark()
    since = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() - 600))
    x.send("<presence to='%s'><show>dnd</show><status>busy here</status>"
           "<idle xmlns='urn:xmpp:idle:1' since='%s'/></presence>" % (GW, since))
    p = dx.wait(lambda e: ti.is_presence(e, carol_jid + '/gw') and e.findtext(C + 'show') ==
                'dnd' and e.findtext(C + 'status') == 'busy here', 'carol busy at dave',
                since=dm)
    # (prpl-jabber reports idle with XEP-0256 in a second presence)
    p = dx.wait(lambda e: ti.is_presence(e, carol_jid + '/gw')
                and e.find('{jabber:iq:last}query') is not None, 'carol idle at dave', since=dm)
    secs = int(p.find('{jabber:iq:last}query').get('seconds'))
    check(590 <= secs <= 900, 'carol idle for %d s' % secs)
    # and a buddy's idle time → XEP-0319
    dx.send("<presence><query xmlns='jabber:iq:last' seconds='300'/></presence>")
    p = x.wait(lambda e: ti.is_presence(e, None, 'available') and ti.bare(e.get('from')) ==
               dave_contact and e.find('{urn:xmpp:idle:1}idle') is not None, 'dave idle')
    idle_since = p.find('{urn:xmpp:idle:1}idle').get('since')
    ago = time.time() - calendar.timegm(time.strptime(idle_since, '%Y-%m-%dT%H:%M:%SZ'))
    check(290 <= ago <= 600, 'dave idle since %s (%d s ago)' % (idle_since, ago))
    dx.send('<presence/>')
    # dave's avatar (XEP-0153 on Prosody) → a vCard photo of the contact and its hash
    png = base64.b64decode('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8Dw'
                           'HwAFBQIAX8jx0gAAAABJRU5ErkJggg==')
    sha1 = hashlib.sha1(png).hexdigest()
    dx.iq_ok('set', None, "<vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png</TYPE><BINVAL>%s"
             "</BINVAL></PHOTO></vCard>" % base64.b64encode(png).decode())
    dx.send("<presence><x xmlns='vcard-temp:x:update'><photo>%s</photo></x></presence>" % sha1)
    x.wait(lambda e: ti.is_presence(e, None, 'available') and ti.bare(e.get('from')) ==
           dave_contact and e.findtext('{vcard-temp:x:update}x/{vcard-temp:x:update}photo')
           == sha1, 'dave\'s avatar hash')
    v = x.iq_ok('get', dave_contact, "<vCard xmlns='vcard-temp'/>")
    binval = v.findtext('{vcard-temp}vCard/{vcard-temp}PHOTO/{vcard-temp}BINVAL')
    check(binval and base64.b64decode(binval) == png, 'dave\'s vCard photo: %s' % dump(v))
    # typing notifications (XEP-0085) from the legacy side
    dx.send("<message to='%s' type='chat'><composing xmlns='%s'/></message>"
            % (carol_jid, 'http://jabber.org/protocol/chatstates'))
    x.wait(lambda e: e.tag == C + 'message' and ti.bare(e.get('from')) == dave_contact
           and e.find('{http://jabber.org/protocol/chatstates}composing') is not None,
           'dave typing')
    # and ours to the legacy side
    x.send("<message to='%s' type='chat'><composing xmlns='%s'/></message>"
           % (dave_contact, 'http://jabber.org/protocol/chatstates'))
    dx.wait(lambda e: e.tag == C + 'message' and ti.bare(e.get('from')) == carol_jid
            and e.find('{http://jabber.org/protocol/chatstates}composing') is not None,
            'carol typing at dave')

    # An IRC user on the same backend too
    ix, nick = irc_login('pcrash')
    ircu = ti.IrcUser(ti.uniq('pk'))

    # SIGKILL the backend mid-session
    pids = backend_pids()
    check(pids, 'no backend pid in the log')
    victim = pids[-1]
    marks = {u: log_count('%s: legacy account connected' % u) for u in (x.bare, ix.bare)}
    dm = dx.mark()
    os.kill(victim, signal.SIGKILL)
    # A message the legacy side accepts while the account is gone (Prosody keeps it offline, or
    # delivers it to the new session) is not lost.
    dx.wait(lambda e: ti.is_presence(e, carol_jid + '/gw', 'unavailable'),
            'carol\'s legacy session to end', since=dm)
    dx.send("<message to='%s' type='chat'><body>while you were away</body></message>"
            % carol_jid)
    h.wait_until(lambda: 'backend 0 pid %d' % victim in srv.log()
                 and 'killed by signal 9' in srv.log(), T, 'the gateway to see the crash')
    h.wait_until(lambda: all(log_count('%s: legacy account connected' % u) > n
                             for u, n in marks.items()), T * 2,
                 'both users to be logged back in')
    check(backend_pids()[-1] != victim, 'no new backend: %s' % backend_pids())
    # messages the legacy side sends after the restart arrive
    ircu.say(nick, 'after the crash')
    ix.wait(lambda e: e.tag == C + 'message' and e.findtext(C + 'body') == 'after the crash',
            'the IRC message after the restart')
    x.wait(lambda e: e.tag == C + 'message' and ti.bare(e.get('from')) == dave_contact
           and e.findtext(C + 'body') == 'while you were away',
           'the message sent to the legacy account during the restart')
    dx.send("<message to='%s' type='chat'><body>still there?</body></message>" % carol_jid)
    x.wait(lambda e: e.tag == C + 'message' and ti.bare(e.get('from')) == dave_contact
           and e.findtext(C + 'body') == 'still there?', 'dave\'s message after the restart')


@isolated
def test_xmpp_chat_room():
    """A MUC room on Prosody as a room of the gateway (prpl-jabber's chats)."""
    x, dx, carol_jid, dave_jid = xmpp_account()
    NS_MUC = 'http://jabber.org/protocol/muc'
    legacy_room = ti.uniq('lounge') + '@' + MUC
    dave = dave_jid.split('@')[0]
    carol = carol_jid.split('@')[0]
    # dave creates the room (an instant room, XEP-0045 §10.1.2)
    dx.send("<presence to='%s/%s'><x xmlns='%s'/></presence>" % (legacy_room, dave, NS_MUC))
    dx.wait(lambda e: ti.is_presence(e, '%s/%s' % (legacy_room, dave)) and
            '110' in ti.statuses(e), 'dave in the room')
    dx.iq_ok('set', legacy_room, "<query xmlns='%s#owner'><x xmlns='%s' type='submit'/></query>"
             % (NS_MUC, NS_DATA))
    room = '%s@%s' % (legacy_room.replace('@', '\\40'), GW)
    ti.join(x, room, carol)
    x.wait(lambda e: ti.is_presence(e, '%s/%s' % (room, dave), 'available'),
           'dave among the occupants')
    dx.wait(lambda e: ti.is_presence(e, '%s/%s' % (legacy_room, carol), 'available'),
            'carol joining')
    dx.send("<message to='%s' type='groupchat'><body>hello room</body></message>" % legacy_room)
    x.wait(lambda e: ti.is_groupchat(e, '%s/%s' % (room, dave), 'hello room'),
           'dave\'s room message')
    x.send("<message to='%s' type='groupchat'><body>hello dave</body></message>" % room)
    dx.wait(lambda e: ti.is_groupchat(e, '%s/%s' % (legacy_room, carol), 'hello dave'),
            'our room message at dave')
    x.send("<presence to='%s/%s' type='unavailable'/>" % (room, carol))
    dx.wait(lambda e: ti.is_presence(e, '%s/%s' % (legacy_room, carol), 'unavailable'),
            'carol leaving')


def _is_prompt(e, words):
    return e.tag == C + 'message' and e.get('from') == GW \
        and words in (e.findtext(C + 'body') or '')


def _new_room_form(x, room, nick):
    """Joins a room that does not exist yet on Prosody: prpl-jabber asks (an action prompt,
    numbered) whether to configure it; answering "Configure Room" makes it fetch the room's
    configuration form (XEP-0045 §10.1.3), a libpurple fields request, which must reach us as an
    XEP-0004 form. Returns (the message, the form, the request id)."""
    m = x.mark()
    x.send("<presence to='%s/%s'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
           % (room, nick))
    p = x.wait(lambda e: _is_prompt(e, 'Reply with the number'), 'the new-room prompt', since=m)
    body = p.findtext(C + 'body')
    num = re.search(r'(\d+)\. Configure Room', body)
    check(num is not None, 'the new-room prompt: %s' % body)
    m = x.mark()
    x.send("<message to='%s' type='chat'><body>%s</body></message>" % (GW, num.group(1)))
    msg = x.wait(lambda e: e.tag == C + 'message' and e.get('from') == GW
                 and e.find('{%s}x' % NS_DATA) is not None, 'the room configuration form',
                 since=m)
    form = msg.find('{%s}x' % NS_DATA)
    check(form.get('type') == 'form' and msg.get('type') == 'normal', 'the form: %s' % dump(msg))
    f = field_values(form)
    check('isthmus-request' in f and f['isthmus-request'].get('type') == 'hidden',
          'no request id in the form: %s' % dump(msg))
    rid = f['isthmus-request'].findtext('{%s}value' % NS_DATA)
    check(msg.findtext(C + 'thread') == 'purple-request-' + rid, 'the thread: %s' % dump(msg))
    check('cancel' in (msg.findtext(C + 'body') or ''), 'the fallback body: %s' % dump(msg))
    return msg, form, rid


@isolated
def test_xmpp_fields_request_as_form():
    """A libpurple fields request (prpl-jabber's room configuration form) as an XEP-0004 form:
    submitted (the room gets the name we gave), and cancelled."""
    x, dx, carol_jid, dave_jid = xmpp_account()
    carol = carol_jid.split('@')[0]
    legacy_room = ti.uniq('formed') + '@' + MUC
    room = '%s@%s' % (legacy_room.replace('@', '\\40'), GW)
    msg, form, rid = _new_room_form(x, room, carol)
    f = field_values(form)
    name = f.get('muc#roomconfig_roomname')
    check(name is not None and name.get('type') == 'text-single',
          'the room name field: %s' % dump(form))
    types = {fl.get('type') for fl in f.values()}
    check('boolean' in types and ('list-single' in types or 'list-multi' in types),
          'field types mapped: %s' % types)
    x.send("<message to='%s' type='normal'><thread>purple-request-%s</thread>"
           "<x xmlns='%s' type='submit'><field var='isthmus-request'><value>%s</value></field>"
           "<field var='muc#roomconfig_roomname'><value>Formed Room</value></field></x>"
           "</message>" % (GW, rid, NS_DATA, rid))
    h.wait_until(lambda: 'request %s submitted' % rid in srv.log(), T, 'the submit')

    def named():
        r = dx.iq('get', legacy_room, "<query xmlns='%s'/>" % NS_DISCO_INFO)
        return r.get('type') == 'result' and any(
            i.get('name') == 'Formed Room' for i in r.iter('{%s}identity' % NS_DISCO_INFO))
    h.wait_until(named, T, 'the room named as submitted')

    # a cancelled form (another new room)
    legacy_room2 = ti.uniq('cancelled') + '@' + MUC
    room2 = '%s@%s' % (legacy_room2.replace('@', '\\40'), GW)
    msg, form, rid2 = _new_room_form(x, room2, carol)
    x.send("<message to='%s' type='normal'><x xmlns='%s' type='cancel'>"
           "<field var='isthmus-request'><value>%s</value></field></x></message>"
           % (GW, NS_DATA, rid2))
    h.wait_until(lambda: 'request %s cancelled by the user' % rid2 in srv.log(), T,
                 'the cancel')
    # a client without forms: the fallback body's "cancel"
    legacy_room3 = ti.uniq('plain') + '@' + MUC
    room3 = '%s@%s' % (legacy_room3.replace('@', '\\40'), GW)
    msg, form, rid3 = _new_room_form(x, room3, carol)
    x.send("<message to='%s' type='chat'><body>cancel</body></message>" % GW)
    h.wait_until(lambda: 'request %s cancelled by the user' % rid3 in srv.log(), T,
                 'the plain-text cancel')
    # an answer to a request no longer pending is refused
    m = x.mark()
    x.send("<message to='%s' type='normal' id='late'><x xmlns='%s' type='submit'>"
           "<field var='isthmus-request'><value>%s</value></field></x></message>"
           % (GW, NS_DATA, rid2))
    e = x.wait(lambda e: e.tag == C + 'message' and e.get('id') == 'late', 'the late answer',
               since=m)
    check(e.get('type') == 'error', 'a late answer was accepted: %s' % dump(e))


@isolated
def test_srv_lookup_on_a_thread():
    """prpl-jabber without connect_server looks up _xmpp-client._tcp.DOMAIN (SRV): our resolver
    thread answers it (no forked resolver), and a domain without records fails the check."""
    x = ti.XUser.new('psrv')
    r = register(x, {'protocol': 'prpl-jabber', 'username': 'someone', 'password': 'pw',
                     'prpl-jabber.s.domain': 'nosrv.invalid', 'prpl-jabber.s.resource': 'gw'})
    check(r.get('type') == 'error' and r.find('{jabber:client}error/{%s}remote-server-not-found'
                                              % h.NS_STANZAS) is not None,
          'a domain without a server was not refused: %s' % dump(r))
    check('SRV lookup for _xmpp-client._tcp.nosrv.invalid on a thread' in srv.log(),
          'our SRV lookup was not used:\n%s' % srv.log_tail(30))
