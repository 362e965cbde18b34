/* purple_gw.h — isthmus-purple's gateway driver (gateway.c). */
#ifndef ISTHMUS_PURPLE_GW_H
#define ISTHMUS_PURPLE_GW_H

#include "gw.h"

/* Sets the driver's callbacks; init then describes the installed protocol plugins and builds
 * d's registration form (d must outlive gw_main). */
void purple_gw_fill_driver(struct gw_driver *d);

#endif
