#!/usr/bin/env bash
# Send one JSON object into a Matrix room over CoAP, the seed's way: JSON -> CBOR (Perl CBOR::XS)
# -> coap-client POST to the short path. Prints the new event id.
#
#   HUB=127.0.0.1:5683 ROOM='#kitchen:localhost' TOKEN=XXXXXXXXXXXXXXXX \
#     ./coap_send.sh '{"msgtype":"m.text", "body":"hello"}' [EVENT_TYPE]
#
# Needs: libcoap3-bin (coap-client-notls), libcbor-xs-perl, libjson-perl.
set -euo pipefail
: "${ROOM:?set ROOM to a room id or alias, e.g. #kitchen:localhost}" "${TOKEN:?set TOKEN to a device access token}"
HUB=${HUB:-127.0.0.1:5683}
JSON=${1:?usage: coap_send.sh JSON [EVENT_TYPE]}
TYPE=${2:-m.room.message}
ROOM_IN_URI=${ROOM//#/%23}   # '#' would start a URI fragment
URI="coap://$HUB/_m/c/a/v1/r/$ROOM_IN_URI/s/$TYPE?a=$TOKEN"
ERR=$(mktemp); trap 'rm -f "$ERR"' EXIT

# The seed's pipeline. `decode_json $_`, not the seed's bare `decode_json`: with Debian 12's
# JSON.pm the bare form gets no argument and perl exits 255.
echo "$JSON" | perl -MCBOR::XS -MJSON -pe '$_=encode_cbor decode_json $_' |
  coap-client-notls -m post -f - -o - "$URI" 2>"$ERR" |
  perl -MCBOR::XS -0777 -ne 'print decode_cbor($_)->{event_id}, "\n" if length'

# coap-client exits 0 even on 4.xx/5.xx; it prints the code on stderr.
if grep -Eq '^[45]\.[0-9]{2}' "$ERR"; then cat "$ERR" >&2; exit 1; fi
