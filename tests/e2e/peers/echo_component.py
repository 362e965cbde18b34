"""A tiny XEP-0114 component for the supervised-component tests: Isthmus starts it with
ISTHMUS_COMPONENT_DOMAIN / _SECRET / _HOST / _PORT in its environment. It answers every message
with "echo <pid>: <body>" and prints one line per event on stdout (the server logs it)."""

import asyncio
import logging
import os
import sys

import slixmpp


def main():
    domain = os.environ['ISTHMUS_COMPONENT_DOMAIN']
    comp = slixmpp.ComponentXMPP(domain, os.environ['ISTHMUS_COMPONENT_SECRET'],
                                 os.environ['ISTHMUS_COMPONENT_HOST'],
                                 int(os.environ['ISTHMUS_COMPONENT_PORT']))
    logging.basicConfig(level=logging.CRITICAL)

    def on_start(_):
        print('echo component %d ready as %s' % (os.getpid(), domain), flush=True)

    def on_message(msg):
        if msg['type'] == 'error' or not msg['body']:
            return
        msg.reply('echo %d: %s' % (os.getpid(), msg['body'])).send()

    def on_end(_):
        print('echo component %d disconnected' % os.getpid(), flush=True)
        asyncio.get_event_loop().stop()

    comp.add_event_handler('session_start', on_start)
    comp.add_event_handler('message', on_message)
    comp.add_event_handler('disconnected', on_end)
    comp.add_event_handler('connection_failed', on_end)
    comp.connect()
    comp.loop.run_forever()
    return 0


if __name__ == '__main__':
    sys.exit(main())
