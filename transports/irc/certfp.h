/* certfp.h — per-user TLS client certificates for SASL EXTERNAL (IRCv3 sasl-3.1 with a
 * certificate fingerprint, "CertFP": Libera.Chat's and OFTC's NickServ CERT ADD, ngircd's
 * RPL_WHOISCERTFP).
 *
 * Each XMPP user who turns on the "sasl_external" setting gets one self-signed certificate
 * (EC P-256, CN = the bare JID, valid 10 years), made on first need and kept: its fingerprint is
 * what the user registers with the network's services, so it must never change behind the
 * user's back. The file (PEM: certificate, then the unencrypted key) is
 * DIR/<hex SHA-256 of the JID>.pem, DIR being mode 0700 and the file 0600; it is written to a
 * temporary name and renamed, so a crash never leaves half a certificate behind. */
#ifndef ISTHMUS_IRC_CERTFP_H
#define ISTHMUS_IRC_CERTFP_H

#include <stddef.h>

#include "gw.h"

#define CERTFP_DAYS 3652       /* 10 years */
#define CERTFP_SHA256_HEX 65   /* 32 bytes as lower-case hex, NUL */
#define CERTFP_SHA512_HEX 129  /* 64 bytes as lower-case hex, NUL */

/* DIR/<sha256 hex of jid>.pem, malloc'd. */
char *certfp_path(const char *dir, const char *jid);

/* Makes sure jid has a usable certificate under dir (created with its directory when missing;
 * an existing file is loaded and its key checked against its certificate, never replaced).
 * Returns the file's path (malloc'd), or NULL with a reason in err. */
char *certfp_ensure(const char *dir, const char *jid, char *err, size_t errlen);

/* The SHA-256 and SHA-512 fingerprints (of the DER certificate, lower-case hex without colons,
 * as NickServ CERT ADD takes them) of the certificate in the PEM file at path. Either output
 * may be NULL. Returns 0, or -1 with err. */
int certfp_fingerprints(const char *path, char sha256[CERTFP_SHA256_HEX],
                        char sha512[CERTFP_SHA512_HEX], char *err, size_t errlen);

/* The gateway's certificate directory: DATA_DIR/<gateway domain>-certs (malloc'd). */
char *certfp_dir(struct gw *gw);

/* certfp_ensure for a user of this gateway. */
char *certfp_for_user(struct gw *gw, const char *jid, char *err, size_t errlen);

#endif
