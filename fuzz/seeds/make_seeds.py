#!/usr/bin/env python3
"""Writes the seed inputs of Weft's fuzz targets into fuzz/work/<target>/ (not
committed); `bash bench/fuzz.sh cmin <target>` then merges them into the
committed, minimised fuzz/corpus/<target>/. Sources: docs/PROTOCOL.md's JSON
examples, weft-policy's test corpus, weft-wg's UAPI test bodies, and packets
and messages built here the way the crates' tests build them."""
import base64, json, os, re, struct, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK = os.path.join(ROOT, "fuzz", "work")

def put(target, name, data):
    d = os.path.join(WORK, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def ip4(a, b, proto, l4):
    total = 20 + len(l4)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, proto, 0, bytes(a), bytes(b)) + l4

def ip4_frag(a, b, proto, l4, off, more):
    total = 20 + len(l4)
    fl = (0x2000 if more else 0) | off
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 7, fl, 64, proto, 0, bytes(a), bytes(b)) + l4

def ip6(a, b, nh, l4):
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), nh, 64, bytes(a), bytes(b)) + l4

def tcp(sp, dp, flags, opts=b""):
    off = (20 + len(opts)) // 4
    return struct.pack("!HHIIBBHHH", sp, dp, 1000, 0, off << 4, flags, 65535, 0, 0) + opts

def udp(sp, dp, payload=b"ping"):
    return struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload

PEER4, ME4 = [100, 64, 0, 2], [100, 64, 0, 1]
PEER6 = [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0] + [0] * 9 + [2]
ME6 = PEER6[:15] + [1]
packets = {
    "v4_tcp_syn_22": ip4(PEER4, ME4, 6, tcp(40000, 22, 0x02, b"\x02\x04\x05\xb4")),
    "v4_tcp_synack": ip4(ME4, PEER4, 6, tcp(22, 40000, 0x12)),
    "v4_tcp_rst": ip4(PEER4, ME4, 6, tcp(40000, 22, 0x04)),
    "v4_udp_5000": ip4(PEER4, ME4, 17, udp(4000, 5000)),
    "v4_icmp_echo": ip4(PEER4, ME4, 1, bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"abcd"),
    "v4_icmp_unreach": ip4(PEER4, ME4, 1, bytes([3, 3, 0, 0, 0, 0, 0, 0]) + ip4(ME4, PEER4, 17, udp(5000, 4000))[:28]),
    "v4_sctp": ip4(PEER4, ME4, 132, struct.pack("!HHII", 4000, 5001, 0, 0)),
    "v4_frag_first": ip4_frag(PEER4, ME4, 17, udp(4000, 5000, b"x" * 16), 0, True),
    "v4_frag_later": ip4_frag(PEER4, ME4, 17, b"y" * 16, 3, False),
    "v6_tcp_syn": ip6(PEER6, ME6, 6, tcp(40000, 22, 0x02)),
    "v6_udp": ip6(PEER6, ME6, 17, udp(4000, 5005)),
    "v6_icmp6_echo": ip6(PEER6, ME6, 58, bytes([128, 0, 0, 0, 0, 1, 0, 1])),
    "v6_hopbyhop_udp": ip6(PEER6, ME6, 0, bytes([17, 0, 1, 4, 0, 0, 0, 0]) + udp(4000, 5000)),
    "v6_frag": ip6(PEER6, ME6, 44, bytes([17, 0, 0, 1, 0, 0, 0, 9]) + udp(4000, 5000)),
}
for name, p in packets.items():
    put("packet_filter", name, p)
    put("wg_transport", name, p)
put("wg_transport", "keepalive", b"")

# WireGuard messages: type, three zero bytes, body of the message's length.
for ty, n in [(1, 148), (2, 92), (3, 64), (4, 32), (4, 80)]:
    put("wg_decapsulate", f"type{ty}_{n}", bytes([ty, 0, 0, 0]) + bytes((i * 7) & 0xff for i in range(n - 4)))
put("wg_decapsulate", "transport_to_session", bytes([4, 0, 0, 0, 1, 1, 0, 0]) + bytes(8) + bytes(48))

K1 = "01" * 32
P2 = "ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59"
P3 = "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22"
uapi = {
    "full": f"private_key={K1}\nlisten_port=51820\nfwmark=51\nreplace_peers=true\npublic_key={P2}\nprotocol_version=1\npreshared_key={'ab' * 32}\nendpoint=[fd7a:115c:a1e0::2]:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=100.64.0.2/32\nallowed_ip=fd7a:115c:a1e0::2/128\n\n",
    "remove": f"public_key={P2}\nremove=true\n",
    "update_only": f"public_key={P3}\nupdate_only=true\nallowed_ip=-100.64.0.2/32\nendpoint=198.18.0.3:51820\n",
    "down": "private_key=\nlisten_port=0\n",
}
for name, body in uapi.items():
    put("wg_uapi", name, body)

MAGIC = bytes([0x54, 0x53, 0xF0, 0x9F, 0x92, 0xAC])
def addr(ip4_or_6, port):
    b = bytes(10) + b"\xff\xff" + bytes(ip4_or_6) if len(ip4_or_6) == 4 else bytes(ip4_or_6)
    return b + struct.pack("!H", port)
plain = {
    "ping": bytes([1, 0]) + bytes(range(12)) + bytes([9] * 32),
    "pong": bytes([2, 0]) + bytes(range(12)) + addr([198, 18, 0, 1], 41641),
    "cmm": bytes([3, 0]) + addr([198, 18, 0, 2], 51820) + addr(PEER6, 41641),
}
for name, p in plain.items():
    put("disco_message", "plain_" + name, p)
    put("disco_sealed", "udp_" + name, bytes([0]) + p)
    put("disco_sealed", "relay_" + name, bytes([1]) + p)
put("disco_message", "sealed", MAGIC + bytes([5] * 32) + bytes(24) + bytes(range(48)))

put("control_frames", "upgrade", "weft-control\n2\n" + base64.b64encode(bytes(range(96))).decode())
put("control_frames", "response", bytes([1, 0, 48]) + bytes(range(48)) + bytes([2, 0, 17]) + bytes(17))

# JSON examples of docs/PROTOCOL.md.
doc = open(os.path.join(ROOT, "docs", "PROTOCOL.md")).read()
for i, block in enumerate(re.findall(r"```json\n(.*?)```", doc, re.S)):
    put("control_json", f"protocol_md_{i}", block)

for kind in ("valid", "invalid"):
    d = os.path.join(ROOT, "crates", "weft-policy", "tests", "corpus", kind)
    for f in sorted(os.listdir(d)):
        put("policy", f"{kind}_{f}", open(os.path.join(d, f), "rb").read())

prefs = {"control_url": "http://127.0.0.1:8080", "want_running": True, "logged_out": False,
         "hostname": "laptop", "run_ssh": True, "shields_up": False, "accept_dns": True,
         "advertise_tags": ["tag:server"], "nickname": None}
put("localapi", "patch", json.dumps({"hostname": None, "shields_up": True, "advertise_tags": ["tag:a"]}))
put("localapi", "start", json.dumps({"prefs": prefs, "auth_key": "tskey-abc", "force_reauth": True}))
put("localapi", "ping", json.dumps({"ip": "100.64.0.2", "timeout_ms": 3000}))
put("localapi", "empty", "  \n")

state = {"version": 1, "machine_key": "privkey:" + "01" * 32, "current_profile": "ab12",
         "profiles": {"ab12": {"id": "ab12", "prefs": prefs, "node_key": "privkey:" + "02" * 32,
                               "control_key": "mkey:" + "03" * 32, "node_id": 7,
                               "user": {"id": 1, "login_name": "alice@example.com", "display_name": "Alice"},
                               "tailnet": "example.com", "created_ms": 1700000000000}}}
put("state_file", "registered", json.dumps(state, indent=2))
state["profiles"]["ab12"].update(node_key=None, control_key=None, node_id=None, user=None, tailnet=None)
put("state_file", "fresh", json.dumps(state))

for name in ["root", "alice", "ubuntu", "alice@example.com", "", "a" * 40, "root\u0000", "user name"]:
    put("ssh_login", "user_" + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=") or "empty", name)

# STUN (RFC 8489): a Binding request, and a success response with an
# XOR-MAPPED-ADDRESS (198.18.0.1:41641).
COOKIE = bytes([0x21, 0x12, 0xA4, 0x42])
TX = bytes(range(1, 13))
put("stun", "binding_request", struct.pack("!HH", 0x0001, 0) + COOKIE + TX)
xport = 41641 ^ 0x2112
xaddr = bytes(a ^ c for a, c in zip([198, 18, 0, 1], COOKIE))
attr = struct.pack("!HHBBH", 0x0020, 8, 0, 1, xport) + xaddr
put("stun", "binding_response", struct.pack("!HH", 0x0101, len(attr)) + COOKIE + TX + attr)

# DERP frames: type, u32 BE length, payload.
def derp(ty, payload):
    return struct.pack("!BI", ty, len(payload)) + payload
KEY = bytes([9] * 32)
put("relay_frames", "server_key", derp(0x01, b"DERP\xf0\x9f\x94\x91" + KEY))
put("relay_frames", "client_info", derp(0x02, KEY + bytes(24) + bytes(40)))
put("relay_frames", "send_recv", derp(0x04, KEY + b"hello") + derp(0x05, KEY + b"hello"))
put("relay_frames", "small", derp(0x06, b"") + derp(0x07, b"\x01") + derp(0x08, KEY + b"\x00")
    + derp(0x09, KEY) + derp(0x12, bytes(8)) + derp(0x13, bytes(8)) + derp(0x14, b"ok")
    + derp(0x15, bytes(8)) + derp(0x10, b"") + derp(0x11, KEY) + derp(0x0a, KEY + KEY + b"x"))

# DNS (RFC 1035): queries the MagicDNS resolver answers itself, forwards, or
# refuses; with EDNS (RFC 6891) and a compression pointer loop.
def dns_name(n):
    out = b""
    for label in n.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"
def dns_query(qid, name, qtype, edns=None):
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    q += dns_name(name) + struct.pack("!HH", qtype, 1)
    if edns:
        q += b"\x00" + struct.pack("!HHIH", 41, edns, 0, 0)
    return q
put("dns", "a_node", dns_query(0x1234, "beta.tail.weft.internal", 1))
put("dns", "aaaa_short", dns_query(0x2345, "beta", 28, edns=4096))
put("dns", "ptr_v4", dns_query(0x3456, "3.0.64.100.in-addr.arpa", 12))
put("dns", "extra", dns_query(0x4567, "grafana.ops.example", 1, edns=1232))
put("dns", "split", dns_query(0x5678, "db.corp.example", 1))
put("dns", "nxdomain", dns_query(0x6789, "nope.tail.weft.internal", 1))
put("dns", "pointer_loop", struct.pack("!HHHHHH", 0xabcd, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01")
ans = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0) + dns_name("www.example.org") + struct.pack("!HH", 1, 1)
ans += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([198, 18, 9, 9])
put("dns", "upstream_answer", ans)
