/*
 * A C sensor for POSIX hosts (Raspberry Pi, any Linux) that posts one reading as CBOR over CoAP
 * into a Matrix room on the hub, using Debian's libcoap3 (apt-get install libcoap3-dev).
 *
 *   sensor_post HOST PORT ROOM TOKEN [TEMPERATURE]
 *   sensor_post 127.0.0.1 5683 '#kitchen:localhost' XXXXXXXXXXXXXXXX 21.5
 *
 * Without TEMPERATURE it reads the SoC temperature (/sys/class/thermal/thermal_zone0/temp, what a
 * Pi has without any wiring). Prints the event id; exit status 0 on 2.xx, 1 on a CoAP error or no
 * answer, 2 on bad usage. libcoap retransmits the confirmable POST by itself (RFC 7252 defaults).
 *
 * The payload {"t": <float>, "unit": "C"} is encoded by hand (a few lines; no CBOR library
 * needed), the float in single precision when that is exact, as the MicroPython sensor does.
 */
#include <coap3/coap.h>

#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- CBOR: heads, text strings, floats ---------------------------------------------------- */

static size_t cbor_head(uint8_t *p, uint8_t major, uint64_t n) {
  if (n < 24) { p[0] = (uint8_t)(major << 5 | n); return 1; }
  if (n < 0x100) { p[0] = major << 5 | 24; p[1] = (uint8_t)n; return 2; }
  if (n < 0x10000) { p[0] = major << 5 | 25; p[1] = n >> 8; p[2] = n & 0xff; return 3; }
  p[0] = major << 5 | 26;
  for (int i = 0; i < 4; i++) p[1 + i] = (uint8_t)(n >> (24 - 8 * i));
  return 5;
}

static size_t cbor_text(uint8_t *p, const char *s) {
  size_t len = strlen(s), n = cbor_head(p, 3, len);
  memcpy(p + n, s, len);
  return n + len;
}

static size_t cbor_float(uint8_t *p, double v) {
  float f = (float)v;
  if ((double)f == v) { /* exact in single precision (NaN is not, and goes out as a double) */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    p[0] = 0xfa;
    for (int i = 0; i < 4; i++) p[1 + i] = (uint8_t)(bits >> (24 - 8 * i));
    return 5;
  }
  uint64_t bits;
  memcpy(&bits, &v, 8);
  p[0] = 0xfb;
  for (int i = 0; i < 8; i++) p[1 + i] = (uint8_t)(bits >> (56 - 8 * i));
  return 9;
}

/* ---- the reading ------------------------------------------------------------------------ */

static int read_soc_temperature(double *celsius) {
  FILE *f = fopen("/sys/class/thermal/thermal_zone0/temp", "r");
  long milli;
  int ok = f && fscanf(f, "%ld", &milli) == 1;
  if (f) fclose(f);
  if (ok) *celsius = milli / 1000.0;
  return ok;
}

/* ---- the answer ------------------------------------------------------------------------- */

static int done;
static coap_pdu_code_t answer_code;
static char event_id[128];

/* The hub answers a send with the CBOR map {"event_id": "$..."}: find that one text value. */
static void parse_event_id(const uint8_t *data, size_t len) {
  static const uint8_t key[] = {0x68, 'e', 'v', 'e', 'n', 't', '_', 'i', 'd'};
  for (size_t i = 0; i + sizeof key + 2 <= len; i++) {
    if (memcmp(data + i, key, sizeof key) != 0) continue;
    const uint8_t *v = data + i + sizeof key;
    size_t n, hdr;
    if (v[0] >= 0x60 && v[0] < 0x78) { n = v[0] - 0x60; hdr = 1; }
    else if (v[0] == 0x78) { n = v[1]; hdr = 2; }
    else return;
    if (i + sizeof key + hdr + n > len || n >= sizeof event_id) return;
    memcpy(event_id, v + hdr, n);
    event_id[n] = 0;
    return;
  }
}

static coap_response_t on_response(coap_session_t *session, const coap_pdu_t *sent,
                                   const coap_pdu_t *received, const coap_mid_t mid) {
  (void)session; (void)sent; (void)mid;
  const uint8_t *data;
  size_t len;
  answer_code = coap_pdu_get_code(received);
  if (coap_get_data(received, &len, &data)) {
    if (COAP_RESPONSE_CLASS(answer_code) == 2) parse_event_id(data, len);
    else fprintf(stderr, "%d.%02d (%zu bytes of CBOR diagnostic)\n", COAP_RESPONSE_CLASS(answer_code),
                 answer_code & 0x1f, len);
  }
  done = 1;
  return COAP_RESPONSE_OK;
}

static void on_nack(coap_session_t *session, const coap_pdu_t *sent, const coap_nack_reason_t reason,
                    const coap_mid_t mid) {
  (void)session; (void)sent; (void)mid;
  fprintf(stderr, "no answer (libcoap nack reason %d)\n", (int)reason);
  done = -1;
}

static void add_option(coap_optlist_t **list, uint16_t number, const char *value) {
  coap_insert_optlist(list, coap_new_optlist(number, strlen(value), (const uint8_t *)value));
}

int main(int argc, char **argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: %s HOST PORT ROOM TOKEN [TEMPERATURE]\n", argv[0]);
    return 2;
  }
  double temperature;
  if (argc == 6) temperature = strtod(argv[5], NULL);
  else if (!read_soc_temperature(&temperature)) {
    fprintf(stderr, "no TEMPERATURE given and no /sys/class/thermal/thermal_zone0/temp\n");
    return 2;
  }

  uint8_t payload[64];
  size_t plen = cbor_head(payload, 5, 2);
  plen += cbor_text(payload + plen, "t");
  plen += cbor_float(payload + plen, temperature);
  plen += cbor_text(payload + plen, "unit");
  plen += cbor_text(payload + plen, "C");

  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM}, *res;
  if (getaddrinfo(argv[1], argv[2], &hints, &res) != 0) {
    fprintf(stderr, "cannot resolve %s\n", argv[1]);
    return 1;
  }
  coap_address_t dst;
  coap_address_init(&dst);
  dst.size = res->ai_addrlen;
  memcpy(&dst.addr, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);

  coap_startup();
  coap_context_t *ctx = coap_new_context(NULL);
  coap_session_t *session = ctx ? coap_new_client_session(ctx, NULL, &dst, COAP_PROTO_UDP) : NULL;
  if (!session) {
    fprintf(stderr, "cannot open a CoAP session\n");
    return 1;
  }
  coap_register_response_handler(ctx, on_response);
  coap_register_nack_handler(ctx, on_nack);

  coap_pdu_t *pdu = coap_pdu_init(COAP_MESSAGE_CON, COAP_REQUEST_CODE_POST, coap_new_message_id(session),
                                  coap_session_max_pdu_size(session));
  uint8_t token[8];
  size_t tlen;
  coap_session_new_token(session, &tlen, token);
  coap_add_token(pdu, tlen, token);

  /* The seed's short path: /_m/c/a/v1/r/ROOM/s/TYPE?a=TOKEN. Options carry raw text: the alias
   * keeps its '#', no percent-encoding. */
  coap_optlist_t *options = NULL;
  const char *segments[] = {"_m", "c", "a", "v1", "r", argv[3], "s", "org.example.reading"};
  for (size_t i = 0; i < sizeof segments / sizeof *segments; i++) add_option(&options, COAP_OPTION_URI_PATH, segments[i]);
  char query[96];
  snprintf(query, sizeof query, "a=%s", argv[4]);
  add_option(&options, COAP_OPTION_URI_QUERY, query);
  uint8_t cf[4];
  coap_insert_optlist(&options, coap_new_optlist(COAP_OPTION_CONTENT_FORMAT,
                                                 coap_encode_var_safe(cf, sizeof cf, COAP_MEDIATYPE_APPLICATION_CBOR), cf));
  coap_add_optlist_pdu(pdu, &options);
  coap_delete_optlist(options);
  coap_add_data(pdu, plen, payload);

  if (coap_send(session, pdu) == COAP_INVALID_MID) {
    fprintf(stderr, "send failed\n");
    return 1;
  }
  while (!done) coap_io_process(ctx, 1000); /* the nack handler ends it after MAX_RETRANSMIT */

  coap_session_release(session);
  coap_free_context(ctx);
  coap_cleanup();
  if (done > 0 && COAP_RESPONSE_CLASS(answer_code) == 2 && event_id[0]) {
    printf("%s\n", event_id);
    return 0;
  }
  return 1;
}
