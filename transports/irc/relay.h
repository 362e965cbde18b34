/* relay.h — admin-configured relays ([bridge NAME]): an IRC channel mirrored into a MUC room by
 * a relay bot on IRC and one puppet occupant per IRC nick in the room. */
#ifndef ISTHMUS_IRC_RELAY_H
#define ISTHMUS_IRC_RELAY_H

#include <stdbool.h>

#include "isthmus/jid.h"
#include "isthmus/stanza.h"

#include "gw.h"

int relay_init(struct gw *gw);         /* from driver init; -1 = config error */
void relay_online(struct gw *gw);      /* from driver online: component stream (re)connected */
bool relay_stanza(struct gw *gw, const struct stanza *st, const struct jid *from,
                  const struct jid *to); /* true = it was for a relay JID and was handled */
void relay_fini(struct gw *gw);

#endif
