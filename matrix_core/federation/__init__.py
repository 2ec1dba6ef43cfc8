"""Federation transport: TLS listener, X-Matrix request signing, server discovery, server keys.

Pure modules (no I/O, no clock): `xmatrix` (Authorization header), `discovery` (which host and
port to talk to), `dns_srv` (SRV wire format), `keys` (key server documents and validity rules).
I/O at the edges: `tls`, `resolver`, `keyring`, `client`, `server`.

What the federation handlers use (all set on the Homeserver at start-up by the listener):
  hs.federation_client.request(destination, method, path, query=None, body=None) -> JSON
  hs.keyring.verify_json_for_server(server_name, obj, valid_at_ms)
  hs.federation_routes.add(method, "/_matrix/federation/v1/send/{txnId}", handler)
"""
