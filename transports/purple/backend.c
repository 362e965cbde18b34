/* backend.c — an isthmus-purple backend process: one libpurple instance (libpurple allows one
 * per process and is not thread-safe) running a GLib main loop (some prpls call GLib directly:
 * prpl-irc drains its send queue only from a g_timeout_add_seconds timer), holding the legacy
 * accounts of up to purple_accounts_per_backend users, driven by the gateway process over the
 * socket given as --backend FD (proto.h).
 *
 * Commands (gateway → backend; JID = the XMPP user's bare JID, the account key):
 *   login JID PRPL USERNAME PASSWORD NSPLITS SPLIT... KEY VALUE...   (account options by key)
 *   logout JID
 *   im JID WHO TEXT                  typing JID WHO active|composing|paused
 *   status JID available|away|xa|dnd MESSAGE IDLE_SECONDS
 *   join JID ROOM                    leave JID ROOM           chat JID ROOM TEXT
 *   add_buddy JID WHO ALIAS GROUP    remove_buddy JID WHO     auth JID WHO 1|0
 *   answer ID VALUE                  (a request: the action number from 1, or the input text)
 *   submit ID VAR VALUE...           (a form answered; a field's values joined by LF)
 *   cancel ID                        (a request or form cancelled)
 * Events (backend → gateway):
 *   ready
 *   connected JID                    disconnected JID FATAL(0|1) AUTH(0|1) TEXT
 *   buddy JID WHO ALIAS GROUP        buddy_removed JID WHO
 *   presence JID WHO SHOW(online|away|xa|dnd|offline) MESSAGE IDLE_SECONDS
 *   im JID WHO TEXT                  typing JID WHO active|composing|paused
 *   chat_joined JID ROOM MYNICK      chat_left JID ROOM
 *   chat_user JID ROOM NICK join|leave
 *   chat_msg JID ROOM NICK TEXT      chat_topic JID ROOM WHO TOPIC
 *   auth JID WHO MESSAGE             notice JID TEXT
 *   request JID ID TEXT              (answer with "answer ID ..."; unanswered → last action)
 *   form JID ID TITLE INSTRUCTIONS TEXT FIELD...
 *                                    (a fields or choice request as an XEP-0004 form; TEXT the
 *                                    fallback body; each FIELD a record (pproto_record): VAR
 *                                    TYPE LABEL REQUIRED NVALUES VALUE... (OPTVALUE OPTLABEL)...;
 *                                    answer with submit/cancel ID, "answer ID N" for a choice;
 *                                    unanswered in 120 s → cancelled)
 *   icon JID WHO HEX                 (buddy icon bytes, hex, at most BACKEND_MAX_ICON bytes)
 *
 * Nothing is written to disk but libpurple's own files in a per-backend temporary user dir
 * (made and removed by the gateway, which also removes it after a crash; removed at exit too):
 * passwords are never remembered (remember_password off), logging is off. DNS lookups are in
 * backend_dns.c.
 * The certificates/ subdirectory is a link to a directory the gateway keeps (accepted server
 * certificates survive a backend restart). */
#include "backend.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <ftw.h>
#include <sys/select.h>
#include <netinet/in.h>

#include <glib.h>
#include <purple.h>

#include "proto.h"

#define BACKEND_UI_ID "isthmus"
#define BACKEND_REQUEST_TIMEOUT_S 120
#define BACKEND_MAX_ICON (64 * 1024)
#define BACKEND_RECONNECT_MAX_S 300
#define BACKEND_MAX_FORM_FIELDS 30 /* form fields sent (a submit line holds var+value pairs) */
/* options of one list field (a record: 5 + 4 values + 2 per option <= 64 fields) */
#define BACKEND_MAX_FORM_OPTIONS 27
#define BACKEND_MAX_FORM_TEXT 4096 /* bytes of one label, value or option text */

/* Our state per account (PurpleAccount.ui_data). */
struct bacct {
    char *jid;
    PurpleAccount *acct;
    guint reconnect_timer;
    unsigned retries;
    bool connected;
};

/* A pending request (request ui ops), also the handle libpurple gets. */
struct breq {
    unsigned id;
    PurpleRequestType type;
    void *user_data;
    GCallback ok_cb, cancel_cb;
    GCallback *actions;
    size_t n_actions;
    size_t refuse; /* the action taken when unanswered (1-based): Reject/Cancel/No, or the last */
    bool answering, closed;
    guint timer;
    PurpleRequestFields *fields;
    int *choices; /* a choice request's values, in the order shown (answers: 1-based index) */
    size_t n_choices;
};

/* A pending authorization request (account ui op). */
struct bauth {
    char *jid, *who;
    PurpleAccountRequestAuthorizationCb auth_cb, deny_cb;
    void *user_data;
};

static int ctl_fd = -1;
static GMainLoop *main_loop;
static char *rbuf;
static size_t rlen;
static GList *requests;
static GList *auths;
static unsigned next_request_id = 1;

/* ---- writing events ---- */

static void send_fields(const char *const *f, size_t n)
{
    size_t len;
    char *line = pproto_line(f, n, &len);
    if (getenv("ISTHMUS_PURPLE_TRACE"))
        fprintf(stderr, "purple backend: -> %.*s\n", (int)(len > 300 ? 300 : len - 1), line);
    if (len > PPROTO_MAX_LINE) {
        free(line);
        return;
    }
    size_t off = 0;
    while (off < len && ctl_fd >= 0) {
        ssize_t w = write(ctl_fd, line + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                /* the gateway is busy: it always reads, so wait for room */
                fd_set ws;
                FD_ZERO(&ws);
                FD_SET(ctl_fd, &ws);
                select(ctl_fd + 1, NULL, &ws, NULL, NULL);
                continue;
            }
            break;
        }
        off += (size_t)w;
    }
    free(line);
}

#define SEND(...)                                                                  \
    do {                                                                           \
        const char *f_[] = {__VA_ARGS__};                                          \
        send_fields(f_, sizeof f_ / sizeof f_[0]);                                 \
    } while (0)

static char *plain(const char *html)
{
    if (!html)
        return g_strdup("");
    char *s = purple_markup_strip_html(html);
    if (!g_utf8_validate(s, -1, NULL)) {
        char *v = g_utf8_make_valid(s, -1);
        g_free(s);
        s = v;
    }
    return s;
}

static struct bacct *bacct_of(PurpleAccount *a)
{
    return a ? a->ui_data : NULL;
}

static struct bacct *bacct_find(const char *jid)
{
    for (GList *l = purple_accounts_get_all(); l; l = l->next) {
        struct bacct *b = bacct_of(l->data);
        if (b && strcmp(b->jid, jid) == 0)
            return b;
    }
    return NULL;
}

static const char *conv_jid(PurpleConversation *conv)
{
    struct bacct *b = conv ? bacct_of(purple_conversation_get_account(conv)) : NULL;
    return b ? b->jid : NULL;
}

/* The name of a contact as the buddy list has it: the prpl's normal form (prpl-jabber names
 * IM conversations by full JID; its normal form is the bare JID). */
static const char *contact_name(PurpleAccount *a, const char *who)
{
    const char *n = purple_normalize(a, who);
    return n && *n ? n : who;
}

/* ---- buddies ---- */

static void send_presence(PurpleBuddy *buddy)
{
    struct bacct *b = bacct_of(purple_buddy_get_account(buddy));
    if (!b)
        return;
    PurplePresence *pr = purple_buddy_get_presence(buddy);
    const char *show = "offline";
    char *msg = g_strdup("");
    char idle[32] = "0";
    if (pr && purple_presence_is_online(pr)) {
        PurpleStatus *st = purple_presence_get_active_status(pr);
        PurpleStatusPrimitive prim = st ? purple_status_type_get_primitive(
                                              purple_status_get_type(st))
                                        : PURPLE_STATUS_AVAILABLE;
        switch (prim) {
        case PURPLE_STATUS_AWAY: show = "away"; break;
        case PURPLE_STATUS_EXTENDED_AWAY: show = "xa"; break;
        case PURPLE_STATUS_UNAVAILABLE: show = "dnd"; break;
        default: show = "online"; break;
        }
        const char *m = st ? purple_status_get_attr_string(st, "message") : NULL;
        if (m) {
            g_free(msg);
            msg = plain(m);
        }
        if (purple_presence_is_idle(pr)) {
            time_t since = purple_presence_get_idle_time(pr);
            long secs = since > 0 ? (long)(time(NULL) - since) : 0;
            snprintf(idle, sizeof idle, "%ld", secs > 0 ? secs : 0);
        }
    }
    SEND("presence", b->jid, purple_buddy_get_name(buddy), show, msg, idle);
    g_free(msg);
}

static void send_icon(PurpleBuddy *buddy)
{
    struct bacct *b = bacct_of(purple_buddy_get_account(buddy));
    PurpleBuddyIcon *icon = b ? purple_buddy_get_icon(buddy) : NULL;
    if (!icon)
        return;
    size_t len = 0;
    const guchar *data = purple_buddy_icon_get_data(icon, &len);
    if (!data || len == 0 || len > BACKEND_MAX_ICON)
        return;
    char *hex = g_malloc(len * 2 + 1);
    for (size_t i = 0; i < len; i++)
        snprintf(hex + i * 2, 3, "%02x", data[i]);
    SEND("icon", b->jid, purple_buddy_get_name(buddy), hex);
    g_free(hex);
}

static void send_buddy(PurpleBuddy *buddy)
{
    struct bacct *b = bacct_of(purple_buddy_get_account(buddy));
    if (!b || !b->connected)
        return;
    PurpleGroup *g = purple_buddy_get_group(buddy);
    const char *alias = purple_buddy_get_alias_only(buddy);
    SEND("buddy", b->jid, purple_buddy_get_name(buddy), alias ? alias : "",
         g ? purple_group_get_name(g) : "");
    send_presence(buddy);
    send_icon(buddy);
}

static void on_node_added(PurpleBlistNode *node, void *ud)
{
    (void)ud;
    if (PURPLE_BLIST_NODE_IS_BUDDY(node))
        send_buddy((PurpleBuddy *)node);
}

static void on_node_removed(PurpleBlistNode *node, void *ud)
{
    (void)ud;
    if (!PURPLE_BLIST_NODE_IS_BUDDY(node))
        return;
    PurpleBuddy *buddy = (PurpleBuddy *)node;
    struct bacct *b = bacct_of(purple_buddy_get_account(buddy));
    if (b && b->connected)
        SEND("buddy_removed", b->jid, purple_buddy_get_name(buddy));
}

static void on_buddy_status(PurpleBuddy *buddy, void *a, void *c)
{
    (void)a;
    (void)c;
    send_presence(buddy);
}

static void on_buddy_signed(PurpleBuddy *buddy, void *ud)
{
    (void)ud;
    send_presence(buddy);
}

static void on_buddy_icon(PurpleBuddy *buddy, void *ud)
{
    (void)ud;
    send_icon(buddy);
}

static void typing_event(PurpleAccount *a, const char *who, const char *state)
{
    struct bacct *b = bacct_of(a);
    if (b && who)
        SEND("typing", b->jid, contact_name(a, who), state);
}

static void on_typing(PurpleAccount *a, const char *who, void *ud)
{
    (void)ud;
    typing_event(a, who, "composing");
}

static void on_typed(PurpleAccount *a, const char *who, void *ud)
{
    (void)ud;
    typing_event(a, who, "paused");
}

static void on_typing_stopped(PurpleAccount *a, const char *who, void *ud)
{
    (void)ud;
    typing_event(a, who, "active");
}

static void on_chat_joined(PurpleConversation *conv, void *ud)
{
    (void)ud;
    const char *jid = conv_jid(conv);
    if (!jid)
        return;
    PurpleConvChat *chat = PURPLE_CONV_CHAT(conv);
    const char *nick = chat ? purple_conv_chat_get_nick(chat) : NULL;
    SEND("chat_joined", jid, purple_conversation_get_name(conv), nick ? nick : "");
}

static void on_chat_left(PurpleConversation *conv, void *ud)
{
    (void)ud;
    const char *jid = conv_jid(conv);
    if (jid)
        SEND("chat_left", jid, purple_conversation_get_name(conv));
}

static void on_chat_topic(PurpleConversation *conv, const char *who, const char *topic, void *ud)
{
    (void)ud;
    const char *jid = conv_jid(conv);
    if (!jid)
        return;
    char *t = plain(topic);
    SEND("chat_topic", jid, purple_conversation_get_name(conv), who ? who : "", t);
    g_free(t);
}

/* ---- conversation ui ops ---- */

static void ui_write_im(PurpleConversation *conv, const char *who, const char *message,
                        PurpleMessageFlags flags, time_t mtime)
{
    (void)who;
    (void)mtime;
    const char *jid = conv_jid(conv);
    if (!jid || !(flags & PURPLE_MESSAGE_RECV) || !message)
        return;
    char *t = plain(message);
    SEND("im", jid, contact_name(purple_conversation_get_account(conv),
                                 purple_conversation_get_name(conv)), t);
    g_free(t);
}

static void ui_write_chat(PurpleConversation *conv, const char *who, const char *message,
                          PurpleMessageFlags flags, time_t mtime)
{
    (void)mtime;
    const char *jid = conv_jid(conv);
    if (!jid || !message || !who || (flags & (PURPLE_MESSAGE_SYSTEM | PURPLE_MESSAGE_ERROR)))
        return;
    if (!(flags & (PURPLE_MESSAGE_SEND | PURPLE_MESSAGE_RECV)))
        return;
    char *t = plain(message);
    SEND("chat_msg", jid, purple_conversation_get_name(conv), who, t);
    g_free(t);
}

static void ui_chat_add_users(PurpleConversation *conv, GList *cbuddies, gboolean new_arrivals)
{
    (void)new_arrivals;
    const char *jid = conv_jid(conv);
    if (!jid)
        return;
    for (GList *l = cbuddies; l; l = l->next) {
        PurpleConvChatBuddy *cb = l->data;
        SEND("chat_user", jid, purple_conversation_get_name(conv),
             purple_conv_chat_cb_get_name(cb), "join");
    }
}

static void ui_chat_remove_users(PurpleConversation *conv, GList *users)
{
    const char *jid = conv_jid(conv);
    if (!jid)
        return;
    for (GList *l = users; l; l = l->next)
        SEND("chat_user", jid, purple_conversation_get_name(conv), l->data, "leave");
}

static void ui_chat_rename_user(PurpleConversation *conv, const char *old_name,
                                const char *new_name, const char *new_alias)
{
    (void)new_alias;
    const char *jid = conv_jid(conv);
    if (!jid)
        return;
    SEND("chat_user", jid, purple_conversation_get_name(conv), old_name, "leave");
    SEND("chat_user", jid, purple_conversation_get_name(conv), new_name, "join");
}

static PurpleConversationUiOps conv_ops = {
    .write_chat = ui_write_chat,
    .write_im = ui_write_im,
    .chat_add_users = ui_chat_add_users,
    .chat_rename_user = ui_chat_rename_user,
    .chat_remove_users = ui_chat_remove_users,
};

/* ---- connection ui ops ---- */

static gboolean reconnect_cb(gpointer ud)
{
    struct bacct *b = ud;
    b->reconnect_timer = 0;
    purple_account_connect(b->acct);
    return FALSE;
}

static void ui_connected(PurpleConnection *gc)
{
    struct bacct *b = bacct_of(purple_connection_get_account(gc));
    if (!b)
        return;
    b->connected = true;
    b->retries = 0;
    SEND("connected", b->jid);
    GSList *buddies = purple_find_buddies(b->acct, NULL);
    for (GSList *l = buddies; l; l = l->next)
        send_buddy(l->data);
    g_slist_free(buddies);
}

static void ui_report_disconnect_reason(PurpleConnection *gc, PurpleConnectionError reason,
                                        const char *text)
{
    struct bacct *b = bacct_of(purple_connection_get_account(gc));
    if (!b)
        return;
    b->connected = false;
    bool fatal = purple_connection_error_is_fatal(reason);
    bool auth = reason == PURPLE_CONNECTION_ERROR_AUTHENTICATION_FAILED ||
                reason == PURPLE_CONNECTION_ERROR_INVALID_USERNAME;
    SEND("disconnected", b->jid, fatal ? "1" : "0", auth ? "1" : "0", text ? text : "");
    if (!fatal && !b->reconnect_timer) {
        /* libpurple leaves reconnecting to the UI: 5 s, doubled per failure, up to 5 min */
        unsigned delay = 5u << (b->retries < 6 ? b->retries : 6);
        if (delay > BACKEND_RECONNECT_MAX_S)
            delay = BACKEND_RECONNECT_MAX_S;
        b->retries++;
        b->reconnect_timer = g_timeout_add_seconds(delay, reconnect_cb, b);
    }
}

static void ui_disconnected(PurpleConnection *gc)
{
    struct bacct *b = bacct_of(purple_connection_get_account(gc));
    if (b)
        b->connected = false;
}

static PurpleConnectionUiOps conn_ops = {
    .connected = ui_connected,
    .disconnected = ui_disconnected,
    .report_disconnect_reason = ui_report_disconnect_reason,
};

/* ---- account ui ops: authorization requests → subscription requests ---- */

static void *ui_request_authorize(PurpleAccount *account, const char *remote_user, const char *id,
                                  const char *alias, const char *message, gboolean on_list,
                                  PurpleAccountRequestAuthorizationCb authorize_cb,
                                  PurpleAccountRequestAuthorizationCb deny_cb, void *user_data)
{
    (void)id;
    (void)alias;
    (void)on_list;
    struct bacct *b = bacct_of(account);
    if (!b || !remote_user)
        return NULL;
    struct bauth *a = g_new0(struct bauth, 1);
    a->jid = g_strdup(b->jid);
    a->who = g_strdup(remote_user);
    a->auth_cb = authorize_cb;
    a->deny_cb = deny_cb;
    a->user_data = user_data;
    auths = g_list_append(auths, a);
    char *m = plain(message);
    SEND("auth", b->jid, remote_user, m);
    g_free(m);
    return a;
}

static void bauth_free(struct bauth *a)
{
    auths = g_list_remove(auths, a);
    g_free(a->jid);
    g_free(a->who);
    g_free(a);
}

static void ui_close_account_request(void *ui_handle)
{
    if (g_list_find(auths, ui_handle))
        bauth_free(ui_handle);
}

static PurpleAccountUiOps account_ops = {
    .request_authorize = ui_request_authorize,
    .close_account_request = ui_close_account_request,
};

/* ---- request ui ops: prompts go to the user, and are never left hanging ---- */

/* The server an account connects to: its connect_server setting, else the part of the username
 * after the last '@' (without a /resource). g_free it. */
static char *account_host(PurpleAccount *a)
{
    const char *cs = purple_account_get_string(a, "connect_server", NULL);
    if (cs && *cs)
        return g_strdup(cs);
    const char *u = purple_account_get_username(a);
    const char *at = u ? strrchr(u, '@') : NULL;
    if (!at || !at[1])
        return NULL;
    return g_strndup(at + 1, strcspn(at + 1, "/"));
}

/* The users a request concerns (g_list_free the list): its account's; for a request without an
 * account (certificate prompts have none), the accounts still connecting whose server the prompt
 * names ("Accept certificate for HOST?"); when only one account is connecting, that one. Nobody
 * else sees (or may answer) it. */
static GList *request_targets(PurpleAccount *account, const char *text)
{
    struct bacct *b = bacct_of(account);
    if (b)
        return g_list_append(NULL, b);
    GList *connecting = NULL, *out = NULL;
    for (GList *l = purple_accounts_get_all(); l; l = l->next) {
        struct bacct *c = bacct_of(l->data);
        if (c && !c->connected)
            connecting = g_list_append(connecting, c);
    }
    bool one = connecting && !connecting->next;
    for (GList *l = connecting; l; l = l->next) {
        struct bacct *c = l->data;
        char *host = account_host(c->acct);
        if (one || (host && *host && strstr(text, host)))
            out = g_list_append(out, c);
        g_free(host);
    }
    g_list_free(connecting);
    return out;
}

static void request_recipients(PurpleAccount *account, const char *text, unsigned id)
{
    char ids[16];
    snprintf(ids, sizeof ids, "%u", id);
    GList *to = request_targets(account, text);
    for (GList *l = to; l; l = l->next)
        SEND("request", ((struct bacct *)l->data)->jid, ids, text);
    g_list_free(to);
}

static void breq_free(struct breq *r)
{
    requests = g_list_remove(requests, r);
    if (r->timer)
        g_source_remove(r->timer);
    g_free(r->actions);
    g_free(r->choices);
    g_free(r);
}

/* After answering: libpurple's record goes (unless the callback closed it already; then
 * ui_close_request only noted it), and so does ours. */
static void breq_finish(struct breq *r)
{
    if (!r->closed)
        purple_request_close(r->type, r);
    breq_free(r);
}

static void breq_answer(struct breq *r, const char *value)
{
    r->answering = true;
    if (r->type == PURPLE_REQUEST_ACTION && r->n_actions) {
        char *end = NULL;
        long i = value ? strtol(value, &end, 10) : 0;
        if (!value || end == value || i < 1 || (size_t)i > r->n_actions)
            i = (long)r->refuse; /* anything else: the refusing action */
        GCallback cb = r->actions[i - 1];
        if (cb)
            ((PurpleRequestActionCb)cb)(r->user_data, (int)(i - 1));
    } else if (r->type == PURPLE_REQUEST_INPUT) {
        if (value && r->ok_cb)
            ((PurpleRequestInputCb)r->ok_cb)(r->user_data, value);
        else if (r->cancel_cb)
            ((PurpleRequestInputCb)r->cancel_cb)(r->user_data, NULL);
    } else if (r->type == PURPLE_REQUEST_FIELDS) {
        if (r->cancel_cb)
            ((PurpleRequestFieldsCb)r->cancel_cb)(r->user_data, r->fields);
    } else if (r->type == PURPLE_REQUEST_CHOICE) {
        /* a plain reply: the number of a choice; anything else cancels */
        char *end = NULL;
        long i = value ? strtol(value, &end, 10) : 0;
        if (value && end != value && !*end && i >= 1 && (size_t)i <= r->n_choices) {
            if (r->ok_cb)
                ((PurpleRequestChoiceCb)r->ok_cb)(r->user_data, r->choices[i - 1]);
        } else if (r->cancel_cb) {
            ((PurpleRequestChoiceCb)r->cancel_cb)(r->user_data, r->n_choices ? r->choices[0] : 0);
        }
    } else {
        if (r->cancel_cb)
            ((PurpleRequestFileCb)r->cancel_cb)(r->user_data, NULL);
    }
    breq_finish(r);
}

static gboolean breq_timeout(gpointer ud)
{
    struct breq *r = ud;
    r->timer = 0;
    breq_answer(r, NULL);
    return FALSE;
}

static struct breq *breq_new(PurpleRequestType type, void *user_data, unsigned timeout_s)
{
    struct breq *r = g_new0(struct breq, 1);
    r->id = next_request_id++;
    r->type = type;
    r->user_data = user_data;
    r->timer = g_timeout_add_seconds(timeout_s, breq_timeout, r);
    requests = g_list_append(requests, r);
    return r;
}

static char *prompt_text(const char *title, const char *primary, const char *secondary)
{
    GString *s = g_string_new("");
    const char *parts[] = {title, primary, secondary};
    for (size_t i = 0; i < 3; i++) {
        if (!parts[i] || !*parts[i])
            continue;
        if ((i > 0 && parts[0] && strcmp(parts[i], parts[0]) == 0) ||
            (i > 1 && parts[1] && strcmp(parts[i], parts[1]) == 0))
            continue; /* prpls often repeat the title as the primary text */
        char *p = plain(parts[i]);
        if (s->len)
            g_string_append(s, "\n");
        g_string_append(s, p);
        g_free(p);
    }
    return g_string_free(s, FALSE);
}

static void *ui_request_action(const char *title, const char *primary, const char *secondary,
                               int default_action, PurpleAccount *account, const char *who,
                               PurpleConversation *conv, void *user_data, size_t action_count,
                               va_list actions)
{
    (void)default_action;
    (void)who;
    (void)conv;
    struct breq *r = breq_new(PURPLE_REQUEST_ACTION, user_data, BACKEND_REQUEST_TIMEOUT_S);
    r->actions = g_new0(GCallback, action_count ? action_count : 1);
    r->n_actions = action_count;
    char *text = prompt_text(title, primary, secondary);
    GString *s = g_string_new(text);
    g_free(text);
    g_string_append(s, "\nReply with the number of your choice:");
    for (size_t i = 0; i < action_count; i++) {
        const char *label = va_arg(actions, const char *);
        r->actions[i] = va_arg(actions, GCallback);
        char *l = purple_strreplace(label ? label : "", "_", "");
        g_string_append_printf(s, "\n%zu. %s", i + 1, l);
        static const char *const refusals[] = {"reject", "cancel", "deny", "no", "decline",
                                               NULL};
        for (size_t k = 0; refusals[k] && !r->refuse; k++)
            if (g_ascii_strcasecmp(l, refusals[k]) == 0)
                r->refuse = i + 1;
        g_free(l);
    }
    if (!r->refuse)
        r->refuse = action_count;
    g_string_append_printf(s, "\n(Unanswered in %d s, or any other reply: %zu.)",
                           BACKEND_REQUEST_TIMEOUT_S, r->refuse);
    request_recipients(account, s->str, r->id);
    g_string_free(s, TRUE);
    return r;
}

static void *ui_request_input(const char *title, const char *primary, const char *secondary,
                              const char *default_value, gboolean multiline, gboolean masked,
                              gchar *hint, const char *ok_text, GCallback ok_cb,
                              const char *cancel_text, GCallback cancel_cb,
                              PurpleAccount *account, const char *who, PurpleConversation *conv,
                              void *user_data)
{
    (void)default_value;
    (void)multiline;
    (void)masked;
    (void)hint;
    (void)ok_text;
    (void)cancel_text;
    (void)who;
    (void)conv;
    struct breq *r = breq_new(PURPLE_REQUEST_INPUT, user_data, BACKEND_REQUEST_TIMEOUT_S);
    r->ok_cb = ok_cb;
    r->cancel_cb = cancel_cb;
    char *text = prompt_text(title, primary, secondary);
    char *s = g_strdup_printf("%s\nReply with the text (unanswered in %d s: cancelled).", text,
                              BACKEND_REQUEST_TIMEOUT_S);
    request_recipients(account, s, r->id);
    g_free(text);
    g_free(s);
    return r;
}

/* Files and folders are not forwarded: they are cancelled at once (from the
 * loop, not from inside the call that made them), and the user is told. */
static void *cancel_soon(PurpleRequestType type, const char *title, const char *primary,
                         const char *secondary, GCallback cancel_cb, PurpleAccount *account,
                         void *user_data, PurpleRequestFields *fields)
{
    struct breq *r = breq_new(type, user_data, 0);
    r->cancel_cb = cancel_cb;
    r->fields = fields;
    struct bacct *b = bacct_of(account);
    if (b) {
        char *text = prompt_text(title, primary, secondary);
        char *s = g_strdup_printf("%s\n(This prompt cannot be answered through the gateway; "
                                  "it was cancelled.)", text);
        SEND("notice", b->jid, s);
        g_free(text);
        g_free(s);
    }
    return r;
}

/* ---- fields and choice requests → XEP-0004 forms (the "form" event) ---- */

/* A form under construction: the records of its fields (each a proto.h record, see
 * form_field). */
struct bform {
    GPtrArray *recs;
};

static char *clip(const char *s)
{
    char *p = plain(s);
    if (strlen(p) > BACKEND_MAX_FORM_TEXT) {
        const char *e = p + BACKEND_MAX_FORM_TEXT;
        g_utf8_validate(p, BACKEND_MAX_FORM_TEXT, &e); /* cut at a character boundary */
        p[e - p] = '\0';
    }
    return p;
}

/* One field record: VAR TYPE LABEL REQUIRED(0|1) NVALUES VALUE... (OPTION_VALUE OPTION_LABEL)...
 * TYPE is the XEP-0004 §3.3 field type. opts: value, label pairs (n_opts strings). */
static void form_field(struct bform *fm, const char *var, const char *type, const char *label,
                       bool required, const char *const *values, size_t n_values,
                       const char *const *opts, size_t n_opts)
{
    if (fm->recs->len >= BACKEND_MAX_FORM_FIELDS)
        return;
    const char *f[PPROTO_MAX_FIELDS];
    char *own[PPROTO_MAX_FIELDS];
    size_t n = 0, n_own = 0;
    char nv[16];
    if (n_values > 4)
        n_values = 4;
    if (n_opts > BACKEND_MAX_FORM_OPTIONS * 2)
        n_opts = BACKEND_MAX_FORM_OPTIONS * 2;
    f[n++] = var;
    f[n++] = type;
    f[n++] = own[n_own++] = clip(label ? label : "");
    f[n++] = required ? "1" : "0";
    snprintf(nv, sizeof nv, "%zu", n_values);
    f[n++] = nv;
    for (size_t i = 0; i < n_values; i++)
        f[n++] = own[n_own++] = clip(values[i] ? values[i] : "");
    for (size_t i = 0; i + 1 < n_opts; i += 2) {
        f[n++] = opts[i];
        f[n++] = own[n_own++] = clip(opts[i + 1] ? opts[i + 1] : "");
    }
    g_ptr_array_add(fm->recs, pproto_record(f, n));
    for (size_t i = 0; i < n_own; i++)
        g_free(own[i]);
}

/* Sends "form JID ID TITLE INSTRUCTIONS TEXT FIELD..." to each user the request concerns
 * (TEXT: the fallback body for clients without forms). */
static void form_send(struct breq *r, PurpleAccount *account, const char *title,
                      const char *primary, const char *secondary, const char *fallback,
                      struct bform *fm)
{
    char ids[16];
    snprintf(ids, sizeof ids, "%u", r->id);
    char *t = clip(title ? title : "");
    char *instr = prompt_text(NULL, primary, secondary);
    char *text = prompt_text(title, primary, secondary);
    char *body = g_strdup_printf("%s\n%s\n(Unanswered in %d s: cancelled.)", text, fallback,
                                 BACKEND_REQUEST_TIMEOUT_S);
    const char *f[PPROTO_MAX_FIELDS];
    size_t n = 0;
    f[n++] = "form";
    f[n++] = "";
    f[n++] = ids;
    f[n++] = t;
    f[n++] = instr;
    f[n++] = body;
    for (guint i = 0; i < fm->recs->len && n < PPROTO_MAX_FIELDS; i++)
        f[n++] = g_ptr_array_index(fm->recs, i);
    GList *to = request_targets(account, text);
    for (GList *l = to; l; l = l->next) {
        f[1] = ((struct bacct *)l->data)->jid;
        send_fields(f, n);
    }
    if (!to)
        fprintf(stderr, "purple backend: request %u concerns nobody: %s\n", r->id, text);
    g_list_free(to);
    g_free(t);
    g_free(instr);
    g_free(text);
    g_free(body);
}

static void form_fields_of(struct bform *fm, PurpleRequestFields *fields)
{
    for (GList *g = purple_request_fields_get_groups(fields); g; g = g->next) {
        for (GList *l = purple_request_field_group_get_fields(g->data); l; l = l->next) {
            PurpleRequestField *fd = l->data;
            const char *id = purple_request_field_get_id(fd);
            const char *label = purple_request_field_get_label(fd);
            bool req = purple_request_field_is_required(fd);
            bool visible = purple_request_field_is_visible(fd);
            char num[32];
            const char *v[4];
            switch (purple_request_field_get_type(fd)) {
            case PURPLE_REQUEST_FIELD_STRING: {
                v[0] = purple_request_field_string_get_value(fd);
                if (!v[0])
                    v[0] = purple_request_field_string_get_default_value(fd);
                const char *type = !visible ? "hidden"
                                   : purple_request_field_string_is_masked(fd) ? "text-private"
                                   : purple_request_field_string_is_multiline(fd) ? "text-multi"
                                                                                  : "text-single";
                form_field(fm, id, type, label, req, v, v[0] ? 1 : 0, NULL, 0);
                break;
            }
            case PURPLE_REQUEST_FIELD_INTEGER:
                snprintf(num, sizeof num, "%d", purple_request_field_int_get_value(fd));
                v[0] = num;
                form_field(fm, id, visible ? "text-single" : "hidden", label, req, v, 1, NULL, 0);
                break;
            case PURPLE_REQUEST_FIELD_BOOLEAN:
                v[0] = purple_request_field_bool_get_value(fd) ? "1" : "0";
                form_field(fm, id, visible ? "boolean" : "hidden", label, req, v, 1, NULL, 0);
                break;
            case PURPLE_REQUEST_FIELD_CHOICE: {
                /* values: the choice's index (what libpurple stores) */
                const char *opts[BACKEND_MAX_FORM_OPTIONS * 2];
                char idx[BACKEND_MAX_FORM_OPTIONS][16];
                size_t k = 0;
                for (GList *c = purple_request_field_choice_get_labels(fd);
                     c && k < BACKEND_MAX_FORM_OPTIONS; c = c->next, k++) {
                    snprintf(idx[k], sizeof idx[k], "%zu", k);
                    opts[2 * k] = idx[k];
                    opts[2 * k + 1] = c->data;
                }
                snprintf(num, sizeof num, "%d", purple_request_field_choice_get_value(fd));
                v[0] = num;
                form_field(fm, id, "list-single", label, req, v, 1, opts, 2 * k);
                break;
            }
            case PURPLE_REQUEST_FIELD_LIST: {
                /* values: the items' texts (what libpurple selects by) */
                const char *opts[BACKEND_MAX_FORM_OPTIONS * 2];
                size_t k = 0, nv = 0;
                for (GList *c = purple_request_field_list_get_items(fd);
                     c && k < BACKEND_MAX_FORM_OPTIONS; c = c->next, k++) {
                    opts[2 * k] = opts[2 * k + 1] = c->data;
                    if (nv < 4 && purple_request_field_list_is_selected(fd, c->data))
                        v[nv++] = c->data;
                }
                form_field(fm, id,
                           purple_request_field_list_get_multi_select(fd) ? "list-multi"
                                                                          : "list-single",
                           label, req, v, nv, opts, 2 * k);
                break;
            }
            case PURPLE_REQUEST_FIELD_LABEL:
                v[0] = label;
                form_field(fm, id, "fixed", NULL, false, v, 1, NULL, 0);
                break;
            case PURPLE_REQUEST_FIELD_IMAGE:
                v[0] = "(an image the gateway cannot show)";
                form_field(fm, id, "fixed", label, false, v, 1, NULL, 0);
                break;
            case PURPLE_REQUEST_FIELD_ACCOUNT: {
                PurpleAccount *a = purple_request_field_account_get_value(fd);
                v[0] = a ? purple_account_get_username(a) : "";
                form_field(fm, id, "fixed", label, false, v, 1, NULL, 0);
                break;
            }
            default:
                break;
            }
        }
    }
}

static void *ui_request_choice(const char *title, const char *primary, const char *secondary,
                               int default_value, const char *ok_text, GCallback ok_cb,
                               const char *cancel_text, GCallback cancel_cb,
                               PurpleAccount *account, const char *who, PurpleConversation *conv,
                               void *user_data, va_list choices)
{
    (void)ok_text;
    (void)cancel_text;
    (void)who;
    (void)conv;
    struct breq *r = breq_new(PURPLE_REQUEST_CHOICE, user_data, BACKEND_REQUEST_TIMEOUT_S);
    r->ok_cb = ok_cb;
    r->cancel_cb = cancel_cb;
    r->choices = g_new0(int, BACKEND_MAX_FORM_OPTIONS);
    const char *opts[BACKEND_MAX_FORM_OPTIONS * 2];
    char vals[BACKEND_MAX_FORM_OPTIONS][16];
    GString *fb = g_string_new("Reply with the number of your choice (or \"cancel\"):");
    const char *label;
    while ((label = va_arg(choices, const char *)) != NULL) {
        int value = va_arg(choices, int);
        if (r->n_choices >= BACKEND_MAX_FORM_OPTIONS)
            continue;
        size_t k = r->n_choices++;
        r->choices[k] = value;
        snprintf(vals[k], sizeof vals[k], "%d", value);
        opts[2 * k] = vals[k];
        opts[2 * k + 1] = label;
        char *l = plain(label);
        g_string_append_printf(fb, "\n%zu. %s", k + 1, l);
        g_free(l);
    }
    struct bform fm = {.recs = g_ptr_array_new_with_free_func(free)};
    char def[16];
    snprintf(def, sizeof def, "%d", default_value);
    const char *v[] = {def};
    form_field(&fm, "choice", "list-single", "Choice", true, v, 1, opts, 2 * r->n_choices);
    form_send(r, account, title, primary, secondary, fb->str, &fm);
    g_ptr_array_free(fm.recs, TRUE);
    g_string_free(fb, TRUE);
    return r;
}

static void *ui_request_fields(const char *title, const char *primary, const char *secondary,
                               PurpleRequestFields *fields, const char *ok_text, GCallback ok_cb,
                               const char *cancel_text, GCallback cancel_cb,
                               PurpleAccount *account, const char *who, PurpleConversation *conv,
                               void *user_data)
{
    (void)ok_text;
    (void)cancel_text;
    (void)who;
    (void)conv;
    struct breq *r = breq_new(PURPLE_REQUEST_FIELDS, user_data, BACKEND_REQUEST_TIMEOUT_S);
    r->ok_cb = ok_cb;
    r->cancel_cb = cancel_cb;
    r->fields = fields;
    struct bform fm = {.recs = g_ptr_array_new_with_free_func(free)};
    form_fields_of(&fm, fields);
    form_send(r, account, title, primary, secondary,
              "This prompt is a form (XEP-0004): answer it with a client that shows forms, or "
              "reply \"cancel\".", &fm);
    g_ptr_array_free(fm.recs, TRUE);
    return r;
}

static void *ui_request_file(const char *title, const char *filename, gboolean savedialog,
                             GCallback ok_cb, GCallback cancel_cb, PurpleAccount *account,
                             const char *who, PurpleConversation *conv, void *user_data)
{
    (void)filename;
    (void)savedialog;
    (void)ok_cb;
    (void)who;
    (void)conv;
    return cancel_soon(PURPLE_REQUEST_FILE, title, NULL, NULL, cancel_cb, account, user_data,
                       NULL);
}

static void *ui_request_folder(const char *title, const char *dirname, GCallback ok_cb,
                               GCallback cancel_cb, PurpleAccount *account, const char *who,
                               PurpleConversation *conv, void *user_data)
{
    (void)dirname;
    (void)ok_cb;
    (void)who;
    (void)conv;
    return cancel_soon(PURPLE_REQUEST_FOLDER, title, NULL, NULL, cancel_cb, account, user_data,
                       NULL);
}

static void ui_close_request(PurpleRequestType type, void *ui_handle)
{
    (void)type;
    struct breq *r = ui_handle;
    if (!g_list_find(requests, r))
        return;
    if (r->answering) {
        r->closed = true; /* breq_answer frees it */
        return;
    }
    breq_free(r);
}

static PurpleRequestUiOps request_ops = {
    .request_input = ui_request_input,
    .request_choice = ui_request_choice,
    .request_action = ui_request_action,
    .request_fields = ui_request_fields,
    .request_file = ui_request_file,
    .close_request = ui_close_request,
    .request_folder = ui_request_folder,
};

/* ---- notify ui ops: messages to the connecting/connected users of no account ---- */

static void *ui_notify_message(PurpleNotifyMsgType type, const char *title, const char *primary,
                               const char *secondary)
{
    (void)type;
    char *text = prompt_text(title, primary, secondary);
    fprintf(stderr, "purple backend: notice: %s\n", text);
    g_free(text);
    return NULL; /* no handle: libpurple calls the close callback at once */
}

static void *ui_notify_formatted(const char *title, const char *primary, const char *secondary,
                                 const char *text)
{
    (void)text;
    return ui_notify_message(PURPLE_NOTIFY_MSG_INFO, title, primary, secondary);
}

static void *ui_notify_userinfo(PurpleConnection *gc, const char *who,
                                PurpleNotifyUserInfo *user_info)
{
    (void)gc;
    (void)who;
    (void)user_info;
    return NULL;
}

static void *ui_notify_uri(const char *uri)
{
    (void)uri;
    return NULL;
}

static PurpleNotifyUiOps notify_ops = {
    .notify_message = ui_notify_message,
    .notify_formatted = ui_notify_formatted,
    .notify_userinfo = ui_notify_userinfo,
    .notify_uri = ui_notify_uri,
};

/* ---- event loop ui ops on GLib (as libpurple's example nullclient does) ---- */

#define PURPLE_GLIB_READ_COND (G_IO_IN | G_IO_HUP | G_IO_ERR)
#define PURPLE_GLIB_WRITE_COND (G_IO_OUT | G_IO_HUP | G_IO_ERR | G_IO_NVAL)

struct bio {
    PurpleInputFunction fn;
    guint id;
    gpointer data;
};

static gboolean io_invoke(GIOChannel *source, GIOCondition cond, gpointer data)
{
    struct bio *c = data;
    int cnd = 0;
    if (cond & PURPLE_GLIB_READ_COND)
        cnd |= PURPLE_INPUT_READ;
    if (cond & PURPLE_GLIB_WRITE_COND)
        cnd |= PURPLE_INPUT_WRITE;
    c->fn(c->data, g_io_channel_unix_get_fd(source), (PurpleInputCondition)cnd);
    return TRUE;
}

static guint io_add(gint fd, PurpleInputCondition cond, PurpleInputFunction fn, gpointer data)
{
    struct bio *c = g_new0(struct bio, 1);
    int gc = 0;
    if (cond & PURPLE_INPUT_READ)
        gc |= PURPLE_GLIB_READ_COND;
    if (cond & PURPLE_INPUT_WRITE)
        gc |= PURPLE_GLIB_WRITE_COND;
    c->fn = fn;
    c->data = data;
    GIOChannel *ch = g_io_channel_unix_new(fd);
    c->id = g_io_add_watch_full(ch, G_PRIORITY_DEFAULT, (GIOCondition)gc, io_invoke, c, g_free);
    g_io_channel_unref(ch);
    return c->id;
}

static PurpleEventLoopUiOps loop_ops = {
    .timeout_add = g_timeout_add,
    .timeout_remove = g_source_remove,
    .input_add = io_add,
    .input_remove = g_source_remove,
    .timeout_add_seconds = g_timeout_add_seconds,
};

static void ui_init(void)
{
    purple_conversations_set_ui_ops(&conv_ops);
    purple_connections_set_ui_ops(&conn_ops);
    purple_accounts_set_ui_ops(&account_ops);
    purple_request_set_ui_ops(&request_ops);
    purple_notify_set_ui_ops(&notify_ops);
    backend_dns_init();
}

static PurpleCoreUiOps core_ops = {
    .ui_init = ui_init,
};

/* ---- commands ---- */

static const PurpleAccountOption *find_option(PurplePluginProtocolInfo *info, const char *key)
{
    for (GList *l = info ? info->protocol_options : NULL; l; l = l->next)
        if (strcmp(purple_account_option_get_setting(l->data), key) == 0)
            return l->data;
    return NULL;
}

static void cmd_login(char **f, size_t n)
{
    /* login JID PRPL USERNAME PASSWORD NSPLITS SPLIT... KEY VALUE... */
    if (n < 6)
        return;
    const char *jid = f[1], *prpl_id = f[2];
    PurplePlugin *prpl = purple_find_prpl(prpl_id);
    if (!prpl) {
        SEND("disconnected", jid, "1", "0", "This protocol plugin is not installed");
        return;
    }
    if (bacct_find(jid))
        return; /* already logged in */
    PurplePluginProtocolInfo *info = PURPLE_PLUGIN_PROTOCOL_INFO(prpl);
    size_t nsplits = (size_t)strtoul(f[5], NULL, 10);
    if (nsplits > n - 6)
        nsplits = n - 6;
    GString *name = g_string_new(f[3]);
    GList *sl = info->user_splits;
    for (size_t i = 0; i < nsplits; i++, sl = sl ? sl->next : NULL) {
        const char *v = f[6 + i];
        if (!sl)
            break;
        if (!*v)
            v = purple_account_user_split_get_default_value(sl->data);
        if (!v || !*v)
            continue;
        g_string_append_c(name, purple_account_user_split_get_separator(sl->data));
        g_string_append(name, v);
    }
    PurpleAccount *acct = purple_account_new(name->str, prpl_id);
    g_string_free(name, TRUE);
    purple_account_set_remember_password(acct, FALSE);
    purple_account_set_password(acct, f[4]);
    for (size_t i = 6 + nsplits; i + 1 < n; i += 2) {
        const PurpleAccountOption *o = find_option(info, f[i]);
        if (!o)
            continue;
        switch (purple_account_option_get_type(o)) {
        case PURPLE_PREF_BOOLEAN:
            purple_account_set_bool(acct, f[i], strcmp(f[i + 1], "1") == 0 ||
                                                    strcmp(f[i + 1], "true") == 0);
            break;
        case PURPLE_PREF_INT:
            purple_account_set_int(acct, f[i], (int)strtol(f[i + 1], NULL, 10));
            break;
        case PURPLE_PREF_STRING:
        case PURPLE_PREF_STRING_LIST:
            purple_account_set_string(acct, f[i], f[i + 1]);
            break;
        default:
            break;
        }
    }
    struct bacct *b = g_new0(struct bacct, 1);
    b->jid = g_strdup(jid);
    b->acct = acct;
    acct->ui_data = b;
    purple_accounts_add(acct);
    purple_account_set_status(acct, "available", TRUE, NULL);
    purple_account_set_enabled(acct, BACKEND_UI_ID, TRUE);
}

static void account_drop(struct bacct *b)
{
    if (b->reconnect_timer)
        g_source_remove(b->reconnect_timer);
    PurpleAccount *acct = b->acct;
    purple_account_set_enabled(acct, BACKEND_UI_ID, FALSE); /* disconnects */
    if (!purple_account_is_disconnected(acct))
        purple_account_disconnect(acct);
    acct->ui_data = NULL;
    for (GList *l = auths; l;) {
        GList *next = l->next;
        struct bauth *a = l->data;
        if (strcmp(a->jid, b->jid) == 0)
            bauth_free(a);
        l = next;
    }
    purple_accounts_delete(acct);
    g_free(b->jid);
    g_free(b);
}

static PurpleConnection *gc_of(const char *jid)
{
    struct bacct *b = bacct_find(jid);
    return b && b->connected ? purple_account_get_connection(b->acct) : NULL;
}

static char *to_html(const char *text)
{
    char *e = g_markup_escape_text(text, -1);
    char *h = purple_strreplace(e, "\n", "<br>");
    g_free(e);
    return h;
}

static void cmd_im(char **f, size_t n)
{
    PurpleConnection *gc = n >= 4 ? gc_of(f[1]) : NULL;
    if (!gc)
        return;
    PurpleAccount *acct = purple_connection_get_account(gc);
    PurpleConversation *conv =
        purple_find_conversation_with_account(PURPLE_CONV_TYPE_IM, f[2], acct);
    if (!conv)
        conv = purple_conversation_new(PURPLE_CONV_TYPE_IM, acct, f[2]);
    char *h = to_html(f[3]);
    purple_conv_im_send(PURPLE_CONV_IM(conv), h);
    g_free(h);
}

static void cmd_typing(char **f, size_t n)
{
    PurpleConnection *gc = n >= 4 ? gc_of(f[1]) : NULL;
    if (!gc)
        return;
    PurpleTypingState st = strcmp(f[3], "composing") == 0 ? PURPLE_TYPING
                           : strcmp(f[3], "paused") == 0  ? PURPLE_TYPED
                                                          : PURPLE_NOT_TYPING;
    serv_send_typing(gc, f[2], st);
}

static void cmd_status(char **f, size_t n)
{
    struct bacct *b = n >= 5 ? bacct_find(f[1]) : NULL;
    if (!b)
        return;
    PurpleStatusPrimitive prim = PURPLE_STATUS_AVAILABLE;
    if (strcmp(f[2], "away") == 0)
        prim = PURPLE_STATUS_AWAY;
    else if (strcmp(f[2], "xa") == 0)
        prim = PURPLE_STATUS_EXTENDED_AWAY;
    else if (strcmp(f[2], "dnd") == 0)
        prim = PURPLE_STATUS_UNAVAILABLE;
    PurpleStatusType *t = purple_account_get_status_type_with_primitive(b->acct, prim);
    if (!t && prim != PURPLE_STATUS_AVAILABLE)
        t = purple_account_get_status_type_with_primitive(b->acct, PURPLE_STATUS_AWAY);
    if (!t)
        t = purple_account_get_status_type_with_primitive(b->acct, PURPLE_STATUS_AVAILABLE);
    if (!t)
        return;
    if (purple_status_type_get_attr(t, "message"))
        purple_account_set_status(b->acct, purple_status_type_get_id(t), TRUE, "message",
                                  f[3], NULL);
    else
        purple_account_set_status(b->acct, purple_status_type_get_id(t), TRUE, NULL);
    long idle = n >= 5 ? strtol(f[4], NULL, 10) : 0;
    PurplePresence *pr = purple_account_get_presence(b->acct);
    if (pr)
        purple_presence_set_idle(pr, idle > 0, idle > 0 ? time(NULL) - idle : 0);
}

static PurpleConversation *chat_conv(const char *jid, const char *room)
{
    struct bacct *b = bacct_find(jid);
    if (!b)
        return NULL;
    return purple_find_conversation_with_account(PURPLE_CONV_TYPE_CHAT, room, b->acct);
}

static void cmd_join(char **f, size_t n)
{
    PurpleConnection *gc = n >= 3 ? gc_of(f[1]) : NULL;
    if (!gc)
        return;
    PurpleConversation *conv = chat_conv(f[1], f[2]);
    if (conv && !purple_conv_chat_has_left(PURPLE_CONV_CHAT(conv))) {
        /* already in: tell the gateway again (a second resource joining) */
        on_chat_joined(conv, NULL);
        GList *users = purple_conv_chat_get_users(PURPLE_CONV_CHAT(conv));
        ui_chat_add_users(conv, users, FALSE);
        return;
    }
    PurplePluginProtocolInfo *info = PURPLE_PLUGIN_PROTOCOL_INFO(purple_connection_get_prpl(gc));
    if (!info || !info->chat_info_defaults)
        return;
    GHashTable *comps = info->chat_info_defaults(gc, f[2]);
    if (!comps)
        return;
    serv_join_chat(gc, comps);
    g_hash_table_destroy(comps);
}

static void cmd_leave(char **f, size_t n)
{
    PurpleConversation *conv = n >= 3 ? chat_conv(f[1], f[2]) : NULL;
    if (conv)
        purple_conversation_destroy(conv);
}

static void cmd_chat(char **f, size_t n)
{
    PurpleConversation *conv = n >= 4 ? chat_conv(f[1], f[2]) : NULL;
    if (!conv || purple_conv_chat_has_left(PURPLE_CONV_CHAT(conv)))
        return;
    char *h = to_html(f[3]);
    purple_conv_chat_send(PURPLE_CONV_CHAT(conv), h);
    g_free(h);
}

static void cmd_add_buddy(char **f, size_t n)
{
    struct bacct *b = n >= 5 ? bacct_find(f[1]) : NULL;
    if (!b || purple_find_buddy(b->acct, f[2]))
        return;
    PurpleGroup *g = purple_find_group(*f[4] ? f[4] : "Buddies");
    if (!g) {
        g = purple_group_new(*f[4] ? f[4] : "Buddies");
        purple_blist_add_group(g, NULL);
    }
    PurpleBuddy *buddy = purple_buddy_new(b->acct, f[2], *f[3] ? f[3] : NULL);
    purple_blist_add_buddy(buddy, NULL, g, NULL);
    if (b->connected)
        purple_account_add_buddy(b->acct, buddy);
}

static void cmd_remove_buddy(char **f, size_t n)
{
    struct bacct *b = n >= 3 ? bacct_find(f[1]) : NULL;
    PurpleBuddy *buddy = b ? purple_find_buddy(b->acct, f[2]) : NULL;
    if (!buddy)
        return;
    if (b->connected)
        purple_account_remove_buddy(b->acct, buddy, purple_buddy_get_group(buddy));
    purple_blist_remove_buddy(buddy);
}

static void cmd_auth(char **f, size_t n)
{
    if (n < 4)
        return;
    for (GList *l = auths; l; l = l->next) {
        struct bauth *a = l->data;
        if (strcmp(a->jid, f[1]) == 0 && strcmp(a->who, f[2]) == 0) {
            PurpleAccountRequestAuthorizationCb cb = strcmp(f[3], "1") == 0 ? a->auth_cb
                                                                            : a->deny_cb;
            void *ud = a->user_data;
            bauth_free(a);
            if (cb)
                cb(ud);
            return;
        }
    }
}

static void cmd_answer(char **f, size_t n)
{
    if (n < 3)
        return;
    unsigned id = (unsigned)strtoul(f[1], NULL, 10);
    for (GList *l = requests; l; l = l->next) {
        struct breq *r = l->data;
        if (r->id == id) {
            breq_answer(r, f[2]);
            return;
        }
    }
}

static struct breq *breq_find(const char *ids)
{
    unsigned id = (unsigned)strtoul(ids, NULL, 10);
    for (GList *l = requests; l; l = l->next)
        if (((struct breq *)l->data)->id == id)
            return l->data;
    return NULL;
}

/* Sets a field from a submitted value (XEP-0004 §3.3 forms as form_fields_of made them). */
static void field_set(PurpleRequestField *fd, const char *value)
{
    switch (purple_request_field_get_type(fd)) {
    case PURPLE_REQUEST_FIELD_STRING:
        purple_request_field_string_set_value(fd, value);
        break;
    case PURPLE_REQUEST_FIELD_INTEGER: {
        char *end;
        long v = strtol(value, &end, 10);
        if (end != value && v >= INT_MIN && v <= INT_MAX)
            purple_request_field_int_set_value(fd, (int)v);
        break;
    }
    case PURPLE_REQUEST_FIELD_BOOLEAN:
        purple_request_field_bool_set_value(fd, strcmp(value, "1") == 0 ||
                                                    strcmp(value, "true") == 0);
        break;
    case PURPLE_REQUEST_FIELD_CHOICE: {
        char *end;
        long v = strtol(value, &end, 10);
        long n = (long)g_list_length(purple_request_field_choice_get_labels(fd));
        if (end != value && v >= 0 && v < n)
            purple_request_field_choice_set_value(fd, (int)v);
        break;
    }
    case PURPLE_REQUEST_FIELD_LIST: {
        purple_request_field_list_clear_selected(fd);
        char **vals = g_strsplit(value, "\n", BACKEND_MAX_FORM_OPTIONS);
        for (char **v = vals; *v; v++)
            for (GList *c = purple_request_field_list_get_items(fd); c; c = c->next)
                if (strcmp(c->data, *v) == 0)
                    purple_request_field_list_add_selected(fd, *v);
        g_strfreev(vals);
        break;
    }
    default:
        break;
    }
}

/* submit ID VAR VALUE...: a form answered (multiple values of a field joined by LF). */
static void cmd_submit(char **f, size_t n)
{
    struct breq *r = n >= 2 ? breq_find(f[1]) : NULL;
    if (!r)
        return;
    fprintf(stderr, "purple backend: request %u submitted\n", r->id);
    if (r->type == PURPLE_REQUEST_CHOICE) {
        const char *v = NULL;
        for (size_t i = 2; i + 1 < n; i += 2)
            if (strcmp(f[i], "choice") == 0)
                v = f[i + 1];
        char num[32] = "";
        for (size_t k = 0; v && k < r->n_choices; k++) {
            char cv[16];
            snprintf(cv, sizeof cv, "%d", r->choices[k]);
            if (strcmp(cv, v) == 0)
                snprintf(num, sizeof num, "%zu", k + 1);
        }
        breq_answer(r, num); /* not one of the choices: cancelled */
        return;
    }
    if (r->type != PURPLE_REQUEST_FIELDS) {
        breq_answer(r, n >= 4 ? f[3] : NULL);
        return;
    }
    for (size_t i = 2; i + 1 < n; i += 2) {
        PurpleRequestField *fd = purple_request_fields_get_field(r->fields, f[i]);
        if (fd && purple_request_field_is_visible(fd))
            field_set(fd, f[i + 1]);
    }
    r->answering = true;
    if (purple_request_fields_all_required_filled(r->fields)) {
        if (r->ok_cb)
            ((PurpleRequestFieldsCb)r->ok_cb)(r->user_data, r->fields);
    } else {
        fprintf(stderr, "purple backend: request %u lacks a required field: cancelled\n", r->id);
        if (r->cancel_cb)
            ((PurpleRequestFieldsCb)r->cancel_cb)(r->user_data, r->fields);
    }
    breq_finish(r);
}

static void dispatch(char *line)
{
    char *f[PPROTO_MAX_FIELDS];
    size_t n = pproto_split(line, f, PPROTO_MAX_FIELDS);
    if (n == 0)
        return;
    if (strcmp(f[0], "login") == 0)
        cmd_login(f, n);
    else if (strcmp(f[0], "logout") == 0 && n >= 2) {
        struct bacct *b = bacct_find(f[1]);
        if (b)
            account_drop(b);
    } else if (strcmp(f[0], "im") == 0)
        cmd_im(f, n);
    else if (strcmp(f[0], "typing") == 0)
        cmd_typing(f, n);
    else if (strcmp(f[0], "status") == 0)
        cmd_status(f, n);
    else if (strcmp(f[0], "join") == 0)
        cmd_join(f, n);
    else if (strcmp(f[0], "leave") == 0)
        cmd_leave(f, n);
    else if (strcmp(f[0], "chat") == 0)
        cmd_chat(f, n);
    else if (strcmp(f[0], "add_buddy") == 0)
        cmd_add_buddy(f, n);
    else if (strcmp(f[0], "remove_buddy") == 0)
        cmd_remove_buddy(f, n);
    else if (strcmp(f[0], "auth") == 0)
        cmd_auth(f, n);
    else if (strcmp(f[0], "answer") == 0)
        cmd_answer(f, n);
    else if (strcmp(f[0], "submit") == 0)
        cmd_submit(f, n);
    else if (strcmp(f[0], "cancel") == 0 && n >= 2) {
        struct breq *r = breq_find(f[1]);
        if (r) {
            fprintf(stderr, "purple backend: request %u cancelled by the user\n", r->id);
            breq_answer(r, NULL);
        }
    }
}

static gboolean on_ctl(GIOChannel *ch, GIOCondition cond, gpointer ud)
{
    (void)ch;
    (void)cond;
    (void)ud;
    char tmp[65536];
    ssize_t r = recv(ctl_fd, tmp, sizeof tmp, MSG_DONTWAIT);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        return TRUE;
    if (r <= 0) {
        g_main_loop_quit(main_loop); /* the gateway is gone */
        return FALSE;
    }
    if (rlen + (size_t)r > PPROTO_MAX_LINE + 1) {
        fprintf(stderr, "purple backend: over-long command line, exiting\n");
        g_main_loop_quit(main_loop);
        return FALSE;
    }
    rbuf = g_realloc(rbuf, rlen + (size_t)r + 1);
    memcpy(rbuf + rlen, tmp, (size_t)r);
    rlen += (size_t)r;
    size_t next, len;
    while ((len = pproto_next_line(rbuf, rlen, &next)) != (size_t)-1) {
        rbuf[len] = '\0';
        char *line = g_strdup(rbuf);
        memmove(rbuf, rbuf + next, rlen - next);
        rlen -= next;
        dispatch(line);
        g_free(line);
    }
    return TRUE;
}

/* ---- setup ---- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static char *setup_dir(const char *certdir, const char *userdir)
{
    char tmpl[] = "/tmp/isthmus-purple-XXXXXX";
    if (userdir && *userdir) {
        if (mkdir(userdir, 0700) < 0 && errno != EEXIST)
            return NULL;
    } else if (!mkdtemp(tmpl)) {
        return NULL;
    }
    char *dir = g_strdup(userdir && *userdir ? userdir : tmpl);
    if (certdir && *certdir) {
        g_mkdir_with_parents(certdir, 0700);
        char *link = g_build_filename(dir, "certificates", NULL);
        if (symlink(certdir, link) < 0)
            fprintf(stderr, "purple backend: %s: %s\n", link, strerror(errno));
        g_free(link);
    }
    return dir;
}

static void purple_start(const char *dir)
{
    purple_util_set_user_dir(dir);
    purple_debug_set_enabled(FALSE);
    purple_core_set_ui_ops(&core_ops);
    purple_eventloop_set_ui_ops(&loop_ops);
}

static void prefs_off(void)
{
    purple_prefs_set_bool("/purple/logging/log_ims", FALSE);
    purple_prefs_set_bool("/purple/logging/log_chats", FALSE);
    purple_prefs_set_bool("/purple/logging/log_system", FALSE);
    purple_prefs_set_string("/purple/away/idle_reporting", "none");
    purple_prefs_set_bool("/purple/away/away_when_idle", FALSE);
}

int backend_main(int fd, const char *certdir, const char *userdir)
{
    ctl_fd = fd;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    char *dir = setup_dir(certdir, userdir);
    if (!dir) {
        fprintf(stderr, "purple backend: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    purple_start(dir);
    if (!purple_core_init(BACKEND_UI_ID)) {
        fprintf(stderr, "purple backend: libpurple failed to initialise\n");
        nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
        return 1;
    }
    purple_set_blist(purple_blist_new());
    prefs_off();
    void *h = purple_blist_get_handle();
    static int handle;
    purple_signal_connect(h, "blist-node-added", &handle, PURPLE_CALLBACK(on_node_added), NULL);
    purple_signal_connect(h, "blist-node-removed", &handle, PURPLE_CALLBACK(on_node_removed),
                          NULL);
    purple_signal_connect(h, "buddy-status-changed", &handle, PURPLE_CALLBACK(on_buddy_status),
                          NULL);
    purple_signal_connect(h, "buddy-idle-changed", &handle, PURPLE_CALLBACK(on_buddy_status),
                          NULL);
    purple_signal_connect(h, "buddy-signed-on", &handle, PURPLE_CALLBACK(on_buddy_signed), NULL);
    purple_signal_connect(h, "buddy-signed-off", &handle, PURPLE_CALLBACK(on_buddy_signed),
                          NULL);
    purple_signal_connect(h, "buddy-icon-changed", &handle, PURPLE_CALLBACK(on_buddy_icon), NULL);
    void *c = purple_conversations_get_handle();
    purple_signal_connect(c, "buddy-typing", &handle, PURPLE_CALLBACK(on_typing), NULL);
    purple_signal_connect(c, "buddy-typed", &handle, PURPLE_CALLBACK(on_typed), NULL);
    purple_signal_connect(c, "buddy-typing-stopped", &handle, PURPLE_CALLBACK(on_typing_stopped),
                          NULL);
    purple_signal_connect(c, "chat-joined", &handle, PURPLE_CALLBACK(on_chat_joined), NULL);
    purple_signal_connect(c, "chat-left", &handle, PURPLE_CALLBACK(on_chat_left), NULL);
    purple_signal_connect(c, "chat-topic-changed", &handle, PURPLE_CALLBACK(on_chat_topic), NULL);

    main_loop = g_main_loop_new(NULL, FALSE);
    GIOChannel *ch = g_io_channel_unix_new(fd);
    g_io_add_watch(ch, G_IO_IN | G_IO_HUP | G_IO_ERR, on_ctl, NULL);
    g_io_channel_unref(ch);
    SEND("ready");
    g_main_loop_run(main_loop);

    GList *all = g_list_copy(purple_accounts_get_all());
    for (GList *l = all; l; l = l->next) {
        struct bacct *b = bacct_of(l->data);
        if (b)
            account_drop(b);
    }
    g_list_free(all);
    purple_core_quit();
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    g_free(dir);
    g_free(rbuf);
    /* libpurple and GLib keep (and leak) global state; the leak checker of a sanitized build
     * must not judge them: leave without running atexit handlers. */
    fflush(NULL);
    _exit(0);
}

/* ---- --describe: the installed protocol plugins, their username parts and options ---- */

int backend_describe(const char *const *only, size_t n_only)
{
    char *dir = setup_dir(NULL, NULL);
    if (!dir)
        return 1;
    purple_start(dir);
    if (!purple_core_init(BACKEND_UI_ID)) {
        nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
        return 1;
    }
    ctl_fd = 1;
    for (GList *l = purple_plugins_get_protocols(); l; l = l->next) {
        PurplePlugin *p = l->data;
        const char *id = purple_plugin_get_id(p);
        bool want = n_only == 0;
        for (size_t i = 0; i < n_only; i++)
            if (strcmp(only[i], id) == 0)
                want = true;
        if (!want)
            continue;
        PurplePluginProtocolInfo *info = PURPLE_PLUGIN_PROTOCOL_INFO(p);
        SEND("prpl", id, purple_plugin_get_name(p));
        for (GList *s = info ? info->user_splits : NULL; s; s = s->next) {
            char sep[2] = {purple_account_user_split_get_separator(s->data), '\0'};
            const char *def = purple_account_user_split_get_default_value(s->data);
            SEND("split", id, purple_account_user_split_get_text(s->data), def ? def : "", sep);
        }
        for (GList *o = info ? info->protocol_options : NULL; o; o = o->next) {
            PurpleAccountOption *opt = o->data;
            const char *key = purple_account_option_get_setting(opt);
            const char *label = purple_account_option_get_text(opt);
            char num[32];
            const char *f[PPROTO_MAX_FIELDS] = {"option", id, "", key, label, ""};
            size_t n = 6;
            switch (purple_account_option_get_type(opt)) {
            case PURPLE_PREF_BOOLEAN:
                f[2] = "bool";
                f[5] = purple_account_option_get_default_bool(opt) ? "1" : "0";
                break;
            case PURPLE_PREF_INT:
                f[2] = "int";
                snprintf(num, sizeof num, "%d", purple_account_option_get_default_int(opt));
                f[5] = num;
                break;
            case PURPLE_PREF_STRING:
                f[2] = purple_account_option_get_masked(opt) ? "secret" : "string";
                f[5] = purple_account_option_get_default_string(opt);
                break;
            case PURPLE_PREF_STRING_LIST: {
                f[2] = "list";
                f[5] = purple_account_option_get_default_list_value(opt);
                for (GList *v = purple_account_option_get_list(opt); v && n + 2 <= 60;
                     v = v->next) {
                    PurpleKeyValuePair *kv = v->data;
                    f[n++] = kv->value;
                    f[n++] = kv->key;
                }
                break;
            }
            default:
                continue;
            }
            if (!f[5])
                f[5] = "";
            send_fields(f, n);
        }
    }
    SEND("end");
    purple_core_quit();
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    g_free(dir);
    fflush(NULL);
    _exit(0);
}
